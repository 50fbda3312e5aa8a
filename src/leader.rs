//! One judging instance per consumer group (SPEC §6, "One owner"): until scale-out
//! exists, a cohort's window mixes every input partition, so exactly one instance may
//! consume and judge. Every instance first joins a second group, `<group_id>.leader`,
//! on the state topic; the member that holds its partition 0 leads. The others are hot
//! standbys: they consume nothing, say so on `/readyz`, and take over — with a fresh
//! restore from the state changelog — when the leader's session ends.
//!
//! The lead group uses the cooperative-sticky assignor, so a standby joining does not
//! move partition 0 away from a healthy leader. A leader that loses partition 0 (its
//! session expired: a long pause, a network partition) stops with an error instead of
//! judging on: its replacement is already restoring, and the orchestrator restarts it
//! as a standby.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::kafka::{KafkaError, client_config};

/// The lead group of an input group.
pub fn lead_group(group_id: &str) -> String {
    format!("{group_id}.leader")
}

#[derive(Clone)]
struct LeadContext {
    topic: String,
    /// This process's token, committed with partition 0 when it takes the lead.
    marker: String,
    leading: Arc<AtomicBool>,
    /// The lead was held and is gone for good: another instance took it since.
    fatal: Arc<AtomicBool>,
    /// Ever led (a lost lead is then re-checked, not fresh).
    led: Arc<AtomicBool>,
    /// Shutting down: giving up the lead is the point, not news.
    stopping: Arc<AtomicBool>,
}

impl LeadContext {
    /// The token committed with partition 0 (`None` if it cannot be read now).
    fn committed_marker(&self, c: &BaseConsumer<Self>) -> Option<String> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, 0);
        let got = c.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
        let e = got.find_partition(&self.topic, 0)?;
        Some(e.metadata().to_string())
    }

    fn take_lead(&self, c: &BaseConsumer<Self>) {
        if self.led.load(Ordering::SeqCst) {
            // Back after a lost session (a broker outage, a pause): only if nobody
            // led in between may this process judge on with the state it holds.
            match self.committed_marker(c) {
                Some(m) if m == self.marker => {}
                Some(other) => {
                    tracing::error!(
                        other,
                        "another instance led the group while this one was away"
                    );
                    self.fatal.store(true, Ordering::SeqCst);
                    return;
                }
                None => {
                    self.fatal.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&self.topic, 0, Offset::Offset(0))
            .is_ok()
            && let Some(mut e) = tpl.find_partition(&self.topic, 0)
        {
            e.set_metadata(self.marker.clone());
        }
        if let Err(e) = c.commit(&tpl, CommitMode::Sync) {
            // Without the token a later instance could not tell that this one led.
            tracing::warn!("committing the lead token: {e}; retrying at the next rebalance");
            return;
        }
        self.led.store(true, Ordering::SeqCst);
        self.leading.store(true, Ordering::SeqCst);
        tracing::info!("this instance leads (partition 0 of the lead group)");
    }
}

impl ClientContext for LeadContext {}

impl ConsumerContext for LeadContext {
    fn post_rebalance(&self, c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        let has_zero = |tpl: &TopicPartitionList| {
            tpl.elements_for_topic(&self.topic)
                .iter()
                .any(|e| e.partition() == 0)
        };
        match r {
            Rebalance::Assign(tpl) => {
                // Nothing is read: the assignment itself is the lock.
                let _ = c.pause(tpl);
                if has_zero(tpl) {
                    self.take_lead(c);
                }
            }
            Rebalance::Revoke(tpl) => {
                if has_zero(tpl) && self.leading.swap(false, Ordering::SeqCst) {
                    if self.stopping.load(Ordering::Relaxed) {
                        tracing::info!("the lead is given up (shutting down)");
                    } else {
                        tracing::warn!("the lead is lost (session expired?): not judging");
                    }
                }
            }
            Rebalance::Error(e) => tracing::warn!("lead group rebalance: {e}"),
        }
    }
}

/// Membership in the lead group, kept by a thread of its own.
pub struct Lead {
    leading: Arc<AtomicBool>,
    fatal: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Lead {
    /// Joins the lead group on `topic` (the state changelog, which must exist).
    pub fn join(k: &KafkaConfig, topic: &str) -> Result<Lead, KafkaError> {
        let group = lead_group(&k.group_id);
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        let ctx = LeadContext {
            topic: topic.to_string(),
            marker: format!("{host}/{}/{}", std::process::id(), crate::clock::wall_ms()),
            leading: Arc::new(AtomicBool::new(false)),
            fatal: Arc::new(AtomicBool::new(false)),
            led: Arc::new(AtomicBool::new(false)),
            stopping: Arc::new(AtomicBool::new(false)),
        };
        let mut config = client_config(
            k,
            &[
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
            ],
        );
        config
            .set("group.id", &group)
            .set("partition.assignment.strategy", "cooperative-sticky");
        let consumer: BaseConsumer<LeadContext> = config.create_with_context(ctx.clone())?;
        consumer.subscribe(&[topic])?;
        let stop = ctx.stopping.clone();
        let thread = {
            let stop = stop.clone();
            let ctx = ctx.clone();
            std::thread::Builder::new()
                .name("guardrail-lead".into())
                .spawn(move || {
                    let mut last_check = std::time::Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        // Drives the group protocol; partitions are paused, so no
                        // message comes back (one that does is dropped).
                        let _ = consumer.poll(Duration::from_millis(100));
                        // A lost lead: has another instance taken it since?
                        let away = ctx.led.load(Ordering::SeqCst)
                            && !ctx.leading.load(Ordering::SeqCst)
                            && !ctx.fatal.load(Ordering::SeqCst);
                        if away && last_check.elapsed() >= Duration::from_secs(1) {
                            last_check = std::time::Instant::now();
                            if let Some(m) = ctx.committed_marker(&consumer)
                                && !m.is_empty()
                                && m != ctx.marker
                            {
                                tracing::error!(other = m, "another instance took the lead");
                                ctx.fatal.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                    // Leave the group at once: a standby takes over without waiting
                    // for the session to time out.
                    consumer.unsubscribe();
                    drop(consumer);
                })
                .map_err(|e| KafkaError::Restore(format!("starting the lead thread: {e}")))?
        };
        Ok(Lead {
            leading: ctx.leading,
            fatal: ctx.fatal,
            stop,
            thread: Some(thread),
        })
    }

    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// The lead was held, lost, and another instance has taken it since.
    pub fn lost(&self) -> bool {
        self.fatal.load(Ordering::SeqCst)
    }
}

impl Drop for Lead {
    /// Tells the thread to leave the group, without waiting for it: leaving blocks
    /// while the broker is unreachable, and shutdown must keep to its grace period.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.thread.take());
    }
}
