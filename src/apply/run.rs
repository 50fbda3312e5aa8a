//! The Kafka shell of `guardrail apply`: `flag-commands` in (its own group,
//! read_committed, manual commits), `flag-approvals` read whole from the beginning, the
//! flagd file written atomically, `guardrail-applied` out; and `apply approve`.
//!
//! Per batch of records: apply in memory → write the file (temp file in the same
//! directory, fsync, rename, fsync the directory) → publish the applied records and
//! wait for their acknowledgements → commit, per partition, the offset after the last
//! record read, or the offset of the oldest command still waiting for approval.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::{Applier, ApplyError, Approval, Outcome, Position};
use crate::clock::wall_ms;
use crate::config::{Config, KafkaConfig};
use crate::kafka::{OutputReader, client_config, producer_config};
use crate::policy::Policy;
use crate::publisher::state_key;

/// Records applied in one go before the file is written (catch-up after a restart).
const BATCH: usize = 500;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// What `guardrail apply` was told.
#[derive(Debug, Clone)]
pub struct Options {
    /// The flagd flag file to edit (created if missing).
    pub flagd: PathBuf,
    /// Its consumer group on `flag-commands` (default `[apply] group_id`).
    pub group_id: String,
}

/// What happened to the commands read, for logs, the summary and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub pending: AtomicU64,
    pub superseded: AtomicU64,
    pub skipped: AtomicU64,
    pub undecodable: AtomicU64,
    pub approvals: AtomicU64,
    pub file_writes: AtomicU64,
    pub commits: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn summary(&self) -> String {
        let g = Counters::get;
        format!(
            "applied {}, duplicates {}, waiting for approval {}, superseded {}, skipped {}, undecodable {}, approvals read {}, file writes {}",
            g(&self.applied),
            g(&self.duplicates),
            g(&self.pending),
            g(&self.superseded),
            g(&self.skipped),
            g(&self.undecodable),
            g(&self.approvals),
            g(&self.file_writes)
        )
    }
}

fn kafka(config: &Config) -> Result<&KafkaConfig, ApplyError> {
    config
        .kafka
        .as_ref()
        .ok_or_else(|| ApplyError::Config("apply needs the [kafka] section".into()))
}

/// Runs until `stop` turns true or an error: a file that cannot be written or a record
/// that cannot be published stops it before the offset is committed.
pub async fn run(
    config: &Config,
    policy: &Policy,
    opts: &Options,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ApplyError> {
    let k = kafka(config)?;
    let t = &config.topics;
    let text = match std::fs::read_to_string(&opts.flagd) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ApplyError::Config(format!("{}: {e}", opts.flagd.display()))),
    };
    let mut applier = Applier::new(&text, policy)
        .map_err(|e| ApplyError::Config(format!("{}: {e}", opts.flagd.display())))?;
    let reader = OutputReader::commands().map_err(|e| ApplyError::Config(e.to_string()))?;
    let producer: FutureProducer = producer_config(k).create()?;
    let commands = commands_consumer(k, &t.flag_commands, &opts.group_id)?;
    let approvals = approvals_consumer(k, &t.approvals, &opts.group_id)?;
    tracing::info!(
        file = %opts.flagd.display(), group = %opts.group_id, commands = %t.flag_commands,
        approvals = %t.approvals, applied = %t.applied, "apply started"
    );

    // One loop over the three sources, so that the order of a batch — apply, write,
    // publish, commit — reads in one place.
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
    loop {
        let mut outcomes = Vec::new();
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() { break; }
                continue;
            }
            m = commands.recv() => {
                let mut m = consumed(m, "flag-commands").await;
                let mut n = 0;
                while let Some(msg) = m.take() {
                    next.insert(msg.partition(), msg.offset() + 1);
                    if let Some(o) = command(&mut applier, &reader, &msg, &counters)? {
                        outcomes.push(o);
                    }
                    n += 1;
                    if n < BATCH
                        && let Ok(r) = tokio::time::timeout(Duration::ZERO, commands.recv()).await
                    {
                        m = consumed(r, "flag-commands").await;
                    }
                }
            }
            m = approvals.recv() => {
                let Some(m) = consumed(m, "flag-approvals").await else { continue };
                match m.payload().map(serde_json::from_slice::<Approval>) {
                    Some(Ok(a)) => {
                        Counters::bump(&counters.approvals);
                        tracing::info!(command_id = %a.command_id, by = %a.approved_by, "approval read");
                        if let Some((_, o)) = applier.approval(a, wall_ms())? {
                            outcomes.push(o);
                        }
                    }
                    _ => tracing::warn!(offset = m.offset(), partition = m.partition(), "unreadable approval record skipped"),
                }
            }
        }
        finish(
            &mut applier,
            opts,
            &producer,
            &t.applied,
            &outcomes,
            &counters,
        )
        .await?;
        commit(
            &commands,
            &t.flag_commands,
            &applier,
            &next,
            &mut committed,
            &counters,
        );
    }
    // A commit that failed after the last batch gets one more try.
    commit(
        &commands,
        &t.flag_commands,
        &applier,
        &next,
        &mut committed,
        &counters,
    );
    tracing::info!(summary = %counters.summary(), "apply stopped");
    Ok(())
}

/// The `flag-commands` consumer: its own group, read_committed, manual commits only.
fn commands_consumer(
    k: &KafkaConfig,
    topic: &str,
    group: &str,
) -> Result<StreamConsumer, ApplyError> {
    let consumer: StreamConsumer = client_config(
        k,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
        ],
    )
    .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// A consumed record, or `None` after logging a consumer error (librdkafka retries
/// broker and network errors itself; a short pause keeps a persistent one from spinning).
async fn consumed<'a>(
    r: Result<BorrowedMessage<'a>, rdkafka::error::KafkaError>,
    topic: &str,
) -> Option<BorrowedMessage<'a>> {
    match r {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(topic, error = %e, "consumer error");
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        }
    }
}

/// The approvals consumer: every partition from the beginning, no commits (approvals
/// of pending commands must be seen again after a restart).
fn approvals_consumer(
    k: &KafkaConfig,
    topic: &str,
    group: &str,
) -> Result<StreamConsumer, ApplyError> {
    let consumer: StreamConsumer = client_config(
        k,
        &[
            ("group.id", &format!("{group}.approvals")),
            ("enable.auto.commit", "false"),
            ("isolation.level", "read_committed"),
        ],
    )
    .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(ApplyError::Config(format!(
            "the approvals topic {topic:?} does not exist: create it ([topics] approvals)"
        )));
    }
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Decodes and applies one command record; logs and counts what became of it.
fn command(
    applier: &mut Applier,
    reader: &OutputReader,
    msg: &BorrowedMessage<'_>,
    counters: &Counters,
) -> Result<Option<Outcome>, ApplyError> {
    let at = Position {
        partition: msg.partition(),
        offset: msg.offset(),
    };
    let cmd: crate::records::FlagCommand = match reader.decode(msg.payload().unwrap_or_default()) {
        Ok(c) => c,
        Err(e) => {
            Counters::bump(&counters.undecodable);
            tracing::error!(partition = at.partition, offset = at.offset, error = %e, "command record skipped: cannot decode it");
            return Ok(None);
        }
    };
    let (id, flag, cohort, action) = (
        cmd.command_id.clone(),
        cmd.flag_key.clone(),
        cmd.cohort.clone(),
        cmd.action.as_str(),
    );
    let to = cmd.to_percent;
    let outcome = applier.command(cmd, at, wall_ms())?;
    match &outcome {
        Outcome::Applied(_) => {}
        Outcome::Duplicate(_) => {
            Counters::bump(&counters.duplicates);
            tracing::info!(command_id = %id, flag = %flag, cohort = %cohort, action, "already applied");
        }
        Outcome::Pending => {
            Counters::bump(&counters.pending);
            tracing::warn!(
                command_id = %id, flag = %flag, cohort = %cohort, action, to,
                "waiting for approval: guardrail apply approve --config <file> --flag {flag} {id} --by <name>"
            );
        }
        Outcome::Superseded => {
            Counters::bump(&counters.superseded);
            tracing::info!(command_id = %id, flag = %flag, cohort = %cohort, action, "superseded by a newer command of its cohort; not applied");
        }
        Outcome::Skipped(why) => {
            Counters::bump(&counters.skipped);
            tracing::warn!(command_id = %id, flag = %flag, cohort = %cohort, action, reason = %why, "command not applicable to the flagd file");
        }
    }
    Ok(Some(outcome))
}

/// Writes the file if it changed, then publishes the applied (and re-delivered) records.
async fn finish(
    applier: &mut Applier,
    opts: &Options,
    producer: &FutureProducer,
    topic: &str,
    outcomes: &[Outcome],
    counters: &Counters,
) -> Result<(), ApplyError> {
    if let Some(text) = applier.take_changed() {
        write_atomically(&opts.flagd, &text)?;
        Counters::bump(&counters.file_writes);
    }
    let mut records = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Applied(a) => {
                Counters::bump(&counters.applied);
                tracing::info!(
                    command_id = %a.command_id, flag = %a.flag_key, cohort = %a.cohort, action = %a.action,
                    percent = a.percent, approved_by = a.approved_by.as_deref().unwrap_or("-"),
                    file = %opts.flagd.display(), "applied"
                );
                records.push(a);
            }
            Outcome::Duplicate(a) => records.push(a),
            _ => {}
        }
    }
    let sends = records.iter().map(|a| {
        let key = state_key(&a.flag_key, &a.cohort);
        let value = serde_json::to_vec(a).unwrap_or_default();
        async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&value),
                    DELIVERY_TIMEOUT,
                )
                .await
        }
    });
    for r in futures::future::join_all(sends).await {
        r.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Commits each partition's position: after the last record read, or at the oldest
/// command waiting for approval (so a restart reads it again).
fn commit(
    consumer: &StreamConsumer,
    topic: &str,
    applier: &Applier,
    next: &BTreeMap<i32, i64>,
    committed: &mut BTreeMap<i32, i64>,
    counters: &Counters,
) {
    let mut target = next.clone();
    for (_, at) in applier.pending() {
        if let Some(o) = target.get_mut(&at.partition) {
            *o = (*o).min(at.offset);
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &target {
        if committed.get(p) != Some(o) {
            let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*o));
        }
    }
    if tpl.count() == 0 {
        return;
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => {
            Counters::bump(&counters.commits);
            committed.extend(target);
        }
        // Not fatal: the records are applied; a restart re-reads them as duplicates.
        Err(e) => tracing::warn!(error = %e, "committing offsets failed; will retry"),
    }
}

/// Replaces `path` with `text` atomically: a temp file in the same directory, fsync,
/// rename over the file (keeping its permissions), fsync of the directory.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "flags.json".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, meta.permissions())?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// `guardrail apply approve`: publishes an approval of `command_id` (key: flag key,
/// NUL, command id) and waits for the broker's acknowledgement.
pub async fn approve(
    config: &Config,
    flag_key: &str,
    command_id: &str,
    approved_by: &str,
) -> Result<Approval, ApplyError> {
    let k = kafka(config)?;
    let producer: FutureProducer = producer_config(k).create()?;
    let approval = Approval {
        command_id: command_id.to_string(),
        approved_by: approved_by.to_string(),
        approved_at: wall_ms(),
    };
    let key = state_key(flag_key, command_id);
    let value = serde_json::to_vec(&approval).unwrap_or_default();
    producer
        .send(
            FutureRecord::to(&config.topics.approvals)
                .key(&key)
                .payload(&value),
            DELIVERY_TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(approval)
}
