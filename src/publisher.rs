//! Publishes window outputs on a task of its own, in window-close order, so that a
//! window close never stalls ingestion for the broker's acknowledgements.
//!
//! Per batch of decisions (one window close): the commands are produced and
//! acknowledged first, then the evaluations. An evaluation on its topic therefore
//! implies that its command was acknowledged (restore relies on it). Batches are
//! published strictly one after another, so outputs keep their order across closes.
//!
//! The engine learns how far publishing got through [`Progress`]: it commits input
//! offsets only up to what was covered when every batch submitted before was
//! acknowledged (SPEC §6), and stops when a batch could not be published.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::app::CommandSink;
use crate::http::Shared;
use crate::kafka::Encoder;
use crate::records::{FlagCommand, WindowEvaluation};
use crate::rules::Judged;
use crate::telemetry::Metrics;

/// Window closes queued for publishing before `submit` waits (backpressure on the
/// engine loop instead of unbounded memory while the broker is slow or away).
const QUEUED_BATCHES: usize = 64;

/// How long the producer may retry one output before the engine gives up.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Batches published so far, or the error that stopped publishing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub acknowledged: u64,
    pub failed: Option<String>,
}

/// One window close's decisions, encoded, with the instant the window closed.
struct Batch {
    judged: Vec<Judged>,
    commands: Vec<(String, Vec<u8>)>,
    evaluations: Vec<(String, Vec<u8>)>,
    /// The evaluations again, keyed by flag and cohort for the state changelog.
    state: Vec<(Vec<u8>, Vec<u8>)>,
    audit: Vec<crate::audit::AuditRecord>,
    closed_at: Instant,
}

/// The state changelog's key: the flag key, a NUL byte, the cohort (neither contains
/// NUL), so that compaction keeps the newest state of every cohort.
pub fn state_key(flag_key: &str, cohort: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(flag_key.len() + 1 + cohort.len());
    k.extend_from_slice(flag_key.as_bytes());
    k.push(0);
    k.extend_from_slice(cohort.as_bytes());
    k
}

/// Where outputs go and who hears about them.
pub struct Outputs {
    pub producer: FutureProducer,
    pub commands_topic: String,
    pub evaluations_topic: String,
    /// The compacted state changelog, keyed by [`state_key`].
    pub state_topic: String,
    /// The audit trail (SPEC §10): an entry per command and per activation; `None`
    /// when the topic does not exist (an upgrade that has not created it yet).
    pub audit_topic: Option<String>,
    pub metrics: Metrics,
    pub shared: Arc<Shared>,
    pub sink: Option<CommandSink>,
    /// The judge stage: observes each window's time from its last partial to its
    /// outputs acknowledged (SPEC §11).
    pub partial_latency: Option<prometheus::Histogram>,
}

/// The engine's handle on the publishing task.
pub struct Publisher {
    tx: Option<mpsc::Sender<Batch>>,
    submitted: u64,
    progress: watch::Receiver<Progress>,
    task: Option<JoinHandle<()>>,
    encoder: Encoder,
    /// (flag, cohort, window start) already on the evaluations topic without their
    /// state records ([`crate::kafka::Restored::published`]): judged again after a
    /// restart, only their state is published.
    published: HashSet<(String, String, i64)>,
}

impl Publisher {
    pub fn start(outputs: Outputs, encoder: Encoder) -> Publisher {
        let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
        let (progress_tx, progress) = watch::channel(Progress::default());
        let task = tokio::spawn(publish_loop(outputs, rx, progress_tx));
        Publisher {
            tx: Some(tx),
            submitted: 0,
            progress,
            task: Some(task),
            encoder,
            published: HashSet::new(),
        }
    }

    /// Encodes and queues one window close's decisions; waits only while
    /// [`QUEUED_BATCHES`] closes are already queued.
    pub async fn submit(&mut self, judged: Vec<Judged>, closed_at: Instant) -> anyhow::Result<()> {
        self.submit_with(judged, Vec::new(), closed_at).await
    }

    /// Evaluations restore found published without their state records: when they
    /// are judged again, their command, audit entry and evaluation are not published
    /// a second time (the command and the audit entry went out before the evaluation).
    pub fn already_published(&mut self, keys: HashSet<(String, String, i64)>) {
        self.published = keys;
    }

    /// [`Publisher::submit`] with audit entries, published after the commands, in the
    /// same transaction under exactly-once.
    pub async fn submit_with(
        &mut self,
        mut judged: Vec<Judged>,
        mut audit: Vec<crate::audit::AuditRecord>,
        closed_at: Instant,
    ) -> anyhow::Result<()> {
        let mut again = vec![false; judged.len()];
        if !self.published.is_empty() {
            let mut dropped = HashSet::new();
            for (j, again) in judged.iter_mut().zip(&mut again) {
                let e = &j.evaluation;
                let key = (e.flag_key.clone(), e.cohort.clone(), e.window_start);
                if self.published.remove(&key) {
                    *again = true;
                    if let Some(c) = j.command.take() {
                        dropped.insert(c.command_id);
                    }
                }
            }
            audit.retain(|a| a.command_id.as_ref().is_none_or(|id| !dropped.contains(id)));
            // A flag's closes come in order: its entries older than this close will not
            // be judged again.
            let mut first: HashMap<&str, i64> = HashMap::new();
            for j in &judged {
                let e = &j.evaluation;
                let start = first.entry(e.flag_key.as_str()).or_insert(e.window_start);
                *start = (*start).min(e.window_start);
            }
            self.published
                .retain(|k| first.get(k.0.as_str()).is_none_or(|start| k.2 >= *start));
        }
        let commands = judged
            .iter()
            .filter_map(|j| j.command.as_ref())
            .map(|c| (c.flag_key.clone(), self.encoder.command(c)))
            .collect();
        // The state record carries everything restore needs, the sampled units of the
        // sample-ratio test included; the evaluation leaves those keys out (analysts
        // do not need them, and they are most of a record's size).
        let evaluations: Vec<(String, Vec<u8>)> = judged
            .iter()
            .zip(&again)
            .filter(|(_, again)| !**again)
            .map(|(j, _)| {
                let e = &j.evaluation;
                (
                    e.flag_key.clone(),
                    self.encoder.evaluation(&without_sample(e)),
                )
            })
            .collect();
        let state = judged
            .iter()
            .map(|j| {
                let e = &j.evaluation;
                (
                    state_key(&e.flag_key, &e.cohort),
                    self.encoder.evaluation(e),
                )
            })
            .collect();
        let batch = Batch {
            judged,
            commands,
            evaluations,
            state,
            audit,
            closed_at,
        };
        let sent = match &self.tx {
            Some(tx) => tx.send(batch).await.is_ok(),
            None => false,
        };
        if !sent {
            anyhow::bail!("the publisher stopped: {}", self.failure());
        }
        self.submitted += 1;
        Ok(())
    }

    /// Batches submitted so far; a commit snapshot taken now is safe once this many
    /// are acknowledged.
    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    pub fn acknowledged(&self) -> u64 {
        self.progress.borrow().acknowledged
    }

    /// The publishing error, if publishing stopped.
    pub fn check(&self) -> anyhow::Result<()> {
        match &self.progress.borrow().failed {
            Some(e) => Err(anyhow::anyhow!("{e}")),
            None => Ok(()),
        }
    }

    fn failure(&self) -> String {
        self.progress
            .borrow()
            .failed
            .clone()
            .unwrap_or_else(|| "publisher task ended".into())
    }

    /// Resolves when publishing makes progress or fails (for `select!`).
    pub async fn changed(&mut self) {
        if self.progress.changed().await.is_err() {
            // The task is gone: never resolve again rather than spin.
            std::future::pending::<()>().await;
        }
    }

    /// Waits until every submitted batch is acknowledged, or publishing failed.
    pub async fn settle(&mut self) -> anyhow::Result<()> {
        let target = self.submitted;
        let p = self
            .progress
            .wait_for(|p| p.acknowledged >= target || p.failed.is_some())
            .await
            .map_err(|_| anyhow::anyhow!("the publisher task ended"))?
            .clone();
        match p.failed {
            Some(e) => Err(anyhow::anyhow!("{e}")),
            None => Ok(()),
        }
    }

    /// Stops accepting batches and gives the task up to `wait` to publish what it has;
    /// then stops it (what it had not published was not committed either).
    pub async fn close(&mut self, wait: Duration) {
        self.tx = None;
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(wait, &mut task).await.is_err()
        {
            task.abort();
        }
    }
}

async fn publish_loop(
    out: Outputs,
    mut rx: mpsc::Receiver<Batch>,
    progress: watch::Sender<Progress>,
) {
    while let Some(batch) = rx.recv().await {
        match publish(&out, batch).await {
            Ok(()) => progress.send_modify(|p| p.acknowledged += 1),
            Err(e) => {
                tracing::error!(error = %e, "publishing window outputs failed");
                progress.send_modify(|p| p.failed = Some(e));
                return;
            }
        }
    }
}

async fn send_all<K: AsRef<[u8]>>(
    producer: &FutureProducer,
    topic: &str,
    records: &[(K, Vec<u8>)],
) -> Result<(), String> {
    let sends = records.iter().map(|(key, payload)| {
        producer.send(
            FutureRecord::to(topic).key(key.as_ref()).payload(payload),
            DELIVERY_TIMEOUT,
        )
    });
    for r in join_all(sends).await {
        r.map_err(|(e, _)| format!("producing to {topic}: {e}"))?;
    }
    Ok(())
}

async fn publish(out: &Outputs, b: Batch) -> Result<(), String> {
    send_all(&out.producer, &out.commands_topic, &b.commands).await?;
    let latency = b.closed_at.elapsed().as_secs_f64();
    for c in b.judged.iter().filter_map(|j| j.command.as_ref()) {
        out.metrics.decision_latency.observe(latency);
        out.metrics.command(c);
        tracing::info!(
            command_id = %c.command_id, flag = %c.flag_key, cohort = %c.cohort, action = c.action.as_str(),
            from = c.from_percent, to = c.to_percent, reason = %c.reason, evidence = %key_evidence(c),
            "command issued"
        );
        if let Some(s) = &out.sink {
            let _ = s.send(c.clone());
        }
    }
    if let Some(topic) = &out.audit_topic {
        let audit: Vec<(String, Vec<u8>)> = b
            .audit
            .iter()
            .map(|a| (a.flag.clone(), a.to_json()))
            .collect();
        send_all(&out.producer, topic, &audit).await?;
    }
    send_all(&out.producer, &out.evaluations_topic, &b.evaluations).await?;
    // State last: a cohort's state on the changelog implies its evaluation and command.
    send_all(&out.producer, &out.state_topic, &b.state).await?;
    out.metrics
        .produce_latency
        .with_label_values(&["outputs"])
        .observe(b.closed_at.elapsed().as_secs_f64());
    if let Some(h) = &out.partial_latency {
        h.observe(b.closed_at.elapsed().as_secs_f64());
    }
    for j in &b.judged {
        out.metrics.evaluation(&j.evaluation);
        out.shared.record(&j.evaluation, j.command.as_ref());
    }
    // The console shows them at once (the audit topic's copy, read back, has the same id).
    for a in &b.audit {
        out.shared.record_audit(a);
    }
    Ok(())
}

/// The evidence that drove a command, one `metric status t=… c=… p=… n=…/…` per metric.
pub fn key_evidence(c: &FlagCommand) -> String {
    c.evidence
        .iter()
        .filter(|e| e.breached || e.status == "significant")
        .map(|e| {
            format!(
                "{} {} t={:.6} c={} p={} n={}/{}",
                e.metric,
                e.status,
                e.treatment_value,
                e.control_value.map_or("-".into(), |v| format!("{v:.6}")),
                e.p_value.map_or("-".into(), |p| format!("{p:.3e}")),
                e.treatment_samples,
                e.control_samples
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// An evaluation without the sample-ratio test's sampled units and without the rolling
/// baselines' rings (see [`Publisher::submit`]): state, not evidence.
pub fn without_sample(e: &WindowEvaluation) -> std::borrow::Cow<'_, WindowEvaluation> {
    let is_ring =
        |b: &crate::records::BandState| crate::rules::baseline::band_guardrail(&b.metric).is_some();
    if !e
        .band
        .iter()
        .any(|b| (b.metric == crate::rules::srm::BAND_NAME && !b.control.is_empty()) || is_ring(b))
    {
        return std::borrow::Cow::Borrowed(e);
    }
    let mut e = e.clone();
    e.band.retain(|b| !is_ring(b));
    for b in &mut e.band {
        if b.metric == crate::rules::srm::BAND_NAME {
            b.control.clear();
        }
    }
    std::borrow::Cow::Owned(e)
}
