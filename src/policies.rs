//! Policies as versioned data (SPEC §10): the compacted `guardrail-policies` topic
//! holds, per flag, its active policy document and every proposal, as JSON.
//!
//! A document is one flag's `[[flags]]` table and the `[[metrics]]` tables it uses,
//! in the config file's own structure. Its version is a digest of its canonical JSON,
//! so proposing the same document twice names the same version. Keys: the active
//! record of a flag is keyed by the flag key (compaction keeps the newest); a proposal,
//! and later its rejection, by `flag@version`.
//!
//! The config file seeds the topic: at start, `run` publishes the file's document of
//! every flag the topic has no active record for. From then on the topic is what the
//! engine judges with; `guardrail policy propose|approve|reject` change it, and the
//! engine activates an approved version at the next window boundary (`Engine::activate`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditKind, AuditRecord};
use crate::config::{Config, ConfigError, ConfigErrors, FlagConfig, KafkaConfig, MetricConfig};
use crate::kafka;

/// Schema tag of [`PolicyRecord`] (JSON).
pub const POLICY_SCHEMA: &str = "guardrail.policy.v1";

/// How long reading the policies topic to its end may take at start.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one publish may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// One flag's policy: its `[[flags]]` table and the `[[metrics]]` it uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub flags: Vec<FlagConfig>,
    #[serde(default)]
    pub metrics: Vec<MetricConfig>,
}

impl Document {
    pub fn flag(&self) -> &FlagConfig {
        &self.flags[0]
    }

    /// The document's version: 12 hex digits of a digest of its canonical JSON (keys
    /// sorted, `serde_json`'s default map), so that equal documents have equal versions.
    pub fn version(&self) -> String {
        let value = serde_json::to_value(self).expect("a document serialises");
        let canonical = serde_json::to_vec(&value).expect("a value serialises");
        crate::ids::stable_hash_hex(&canonical)[..12].to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    Proposal,
    Active,
    Rejected,
}

/// A record of the policies topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// [`POLICY_SCHEMA`].
    pub schema: String,
    pub kind: PolicyKind,
    pub flag: String,
    /// [`Document::version`] of `document`.
    pub version: String,
    pub document: Document,
    pub proposed_by: String,
    pub proposed_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_at: Option<i64>,
    /// The active version when this one was proposed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// The proposer's words, then the approver's or rejecter's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Links to the evidence behind the proposal (a notebook, a replay report).
    #[serde(default)]
    pub evidence: Vec<String>,
}

impl PolicyRecord {
    /// The record's key on the policies topic.
    pub fn key(&self) -> String {
        match self.kind {
            PolicyKind::Active => self.flag.clone(),
            PolicyKind::Proposal | PolicyKind::Rejected => {
                format!("{}@{}", self.flag, self.version)
            }
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a policy record serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<PolicyRecord, String> {
        let r: PolicyRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.schema != POLICY_SCHEMA {
            return Err(format!("schema {:?}, expected {POLICY_SCHEMA:?}", r.schema));
        }
        if r.document.flags.len() != 1 || r.document.flags[0].key != r.flag {
            return Err(format!(
                "the document of {:?} must hold exactly that one flag",
                r.flag
            ));
        }
        Ok(r)
    }
}

/// Every flag's document in `config`, in config order (metrics in config order too).
pub fn documents(config: &Config) -> Vec<Document> {
    config
        .flags
        .iter()
        .map(|f| {
            let used: Vec<&str> = f
                .guardrails
                .iter()
                .map(|g| g.metric.as_str())
                .chain(f.success.iter().map(|s| s.metric.as_str()))
                .collect();
            Document {
                flags: vec![f.clone()],
                metrics: config
                    .metrics
                    .iter()
                    .filter(|m| used.contains(&m.name.as_str()))
                    .cloned()
                    .collect(),
            }
        })
        .collect()
}

/// `base` with its flags and metrics replaced by `docs`' (in `docs` order; a metric
/// once, where it first appears). Two documents that define a metric differently are
/// an error: metrics are shared by name across flags.
pub fn assemble(base: &Config, docs: &[&Document]) -> Result<Config, ConfigErrors> {
    let mut config = base.clone();
    config.flags = docs.iter().map(|d| d.flag().clone()).collect();
    config.metrics = Vec::new();
    let mut defined: BTreeMap<String, (usize, serde_json::Value)> = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        for (j, m) in d.metrics.iter().enumerate() {
            let value = serde_json::to_value(m).expect("a metric serialises");
            match defined.get(&m.name) {
                None => {
                    defined.insert(m.name.clone(), (i, value));
                    config.metrics.push(m.clone());
                }
                Some((_, v)) if *v == value => {}
                Some((first, _)) => errors.push(ConfigError {
                    path: format!("flags[{i}] ({}).metrics[{j}]", d.flag().key),
                    message: format!(
                        "metric {:?} is defined differently by flag {:?}'s policy; metrics \
                         are shared by name: use another name or the same definition",
                        m.name,
                        docs[*first].flag().key
                    ),
                }),
            }
        }
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// What the policies topic holds: the active record per flag and every proposal.
#[derive(Debug, Default, Clone)]
pub struct Store {
    pub active: BTreeMap<String, PolicyRecord>,
    /// Per (flag, version): the newest proposal or rejection record.
    pub proposals: BTreeMap<(String, String), PolicyRecord>,
    /// Per partition, the offset the store was read up to (where following it goes on).
    pub ends: Vec<(i32, i64)>,
}

impl Store {
    /// Adds one record, read in topic order.
    pub fn add(&mut self, r: PolicyRecord) {
        match r.kind {
            PolicyKind::Active => {
                self.active.insert(r.flag.clone(), r);
            }
            PolicyKind::Proposal | PolicyKind::Rejected => {
                self.proposals
                    .insert((r.flag.clone(), r.version.clone()), r);
            }
        }
    }

    /// The documents to judge with: the active ones, flags of `config` first (in its
    /// order; a flag the topic has no active record for keeps the file's document),
    /// then flags only the topic knows, by key.
    pub fn effective<'a>(&'a self, config_docs: &'a [Document]) -> Vec<&'a Document> {
        let mut out: Vec<&Document> = config_docs
            .iter()
            .map(|d| self.active.get(&d.flag().key).map_or(d, |r| &r.document))
            .collect();
        for (key, r) in &self.active {
            if !config_docs.iter().any(|d| &d.flag().key == key) {
                out.push(&r.document);
            }
        }
        out
    }
}

/// Reads the policies topic to the end of every partition (read_committed).
/// `Ok(None)`: the topic does not exist. An unreadable record is an error: judging
/// with part of the policies would be judging with the wrong ones.
pub fn read_store(k: &KafkaConfig, topic: &str) -> Result<Option<Store>, String> {
    let read = kafka::read_to_end(k, topic, &format!("{}-policies", k.group_id), READ_TIMEOUT)?;
    let Some(kafka::TopicRecords { records, ends }) = read else {
        return Ok(None);
    };
    let mut store = Store {
        ends,
        ..Store::default()
    };
    for (partition, offset, payload) in records {
        let r = PolicyRecord::from_json(&payload)
            .map_err(|e| format!("{topic} partition {partition} offset {offset}: {e}"))?;
        store.add(r);
    }
    Ok(Some(store))
}

/// Whether `topic` exists (metadata without creating it).
pub fn topic_exists(k: &KafkaConfig, topic: &str) -> Result<bool, String> {
    let mut cfg = kafka::client_config(k, &[("allow.auto.create.topics", "false")]);
    cfg.set("group.id", format!("{}-policies", k.group_id));
    let consumer: BaseConsumer = cfg.create().map_err(|e| e.to_string())?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    Ok(md
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}

/// Publishes policy records, then their audit entries, and waits for both.
pub async fn publish(
    k: &KafkaConfig,
    policies_topic: &str,
    audit_topic: &str,
    records: &[PolicyRecord],
    audit: &[AuditRecord],
) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka::producer_config(k)
        .create()
        .context("creating the producer")?;
    for r in records {
        let key = r.key();
        let payload = r.to_json();
        producer
            .send(
                FutureRecord::to(policies_topic).key(&key).payload(&payload),
                PUBLISH_TIMEOUT,
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing to {policies_topic}: {e}"))?;
    }
    for a in audit {
        let payload = a.to_json();
        producer
            .send(
                FutureRecord::to(audit_topic).key(&a.flag).payload(&payload),
                PUBLISH_TIMEOUT,
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing to {audit_topic}: {e}"))?;
    }
    Ok(())
}

/// What `run` judges with at start (see [`seed_and_load`]).
pub struct Loaded {
    /// The file's config with the topic's active documents.
    pub config: Config,
    /// Those documents, as the topic holds them (their versions are the topic's).
    pub docs: Vec<Document>,
    /// Where following the policies topic goes on: what was read and seeded is known.
    pub ends: Vec<(i32, i64)>,
}

/// What `run` judges with at start: the file's config with the topic's active
/// documents, after seeding the topic with the file's documents it lacks; `None` when
/// the policies topic does not exist (the file's policies apply).
pub async fn seed_and_load(config: &Config, config_path: &str) -> anyhow::Result<Option<Loaded>> {
    let k = config.kafka.as_ref().context("[kafka] is required")?;
    let topics = &config.topics;
    let store = tokio::task::block_in_place(|| read_store(k, &topics.policies))
        .map_err(|e| anyhow::anyhow!("reading the policies topic: {e}; not starting with other policies than the approved ones"))?;
    let file_docs = documents(config);
    let Some(mut store) = store else {
        tracing::warn!(
            topic = %topics.policies,
            "the policies topic does not exist: judging with the config file's policies; \
             `guardrail policy` changes need the topic (docs/SPEC.md §10)"
        );
        return Ok(None);
    };
    let now = crate::clock::wall_ms();
    let mut seeds = Vec::new();
    let mut audit = Vec::new();
    for d in &file_docs {
        let key = &d.flag().key;
        let version = d.version();
        match store.active.get(key) {
            None => {
                seeds.push(PolicyRecord {
                    schema: POLICY_SCHEMA.into(),
                    kind: PolicyKind::Active,
                    flag: key.clone(),
                    version: version.clone(),
                    document: d.clone(),
                    proposed_by: format!("config file {config_path}").trim_end().to_string(),
                    proposed_at: now,
                    approved_by: Some("config file (seed)".into()),
                    approved_at: Some(now),
                    rejected_by: None,
                    rejected_at: None,
                    previous_version: None,
                    comment: Some("seeded from the config file".into()),
                    evidence: Vec::new(),
                });
                audit.push(AuditRecord::policy(
                    AuditKind::Seeded,
                    key,
                    &version,
                    "guardrail",
                    now,
                    format!("seeded from the config file {config_path}")
                        .trim_end()
                        .to_string(),
                    Vec::new(),
                ));
            }
            Some(active) if active.version != version => tracing::warn!(
                flag = %key,
                active = %active.version,
                file = %version,
                "the config file's policy of this flag differs from the approved one on the \
                 policies topic, which wins; `guardrail policy propose --file` proposes the file's"
            ),
            Some(_) => {}
        }
    }
    if !seeds.is_empty() {
        publish(k, &topics.policies, &topics.audit, &seeds, &audit)
            .await
            .context("seeding the policies topic")?;
        for s in seeds {
            tracing::info!(flag = %s.flag, version = %s.version, "seeded the policies topic");
            store.add(s);
        }
    }
    let effective = store.effective(&file_docs);
    let assembled = assemble(config, &effective).map_err(anyhow::Error::new)?;
    Ok(Some(Loaded {
        config: assembled,
        docs: effective.into_iter().cloned().collect(),
        ends: store.ends.clone(),
    }))
}

/// What the tail reader hands the engine.
#[derive(Debug)]
pub enum Control {
    Policy(Box<PolicyRecord>),
    Audit(Box<AuditRecord>),
}

/// Follows the policies topic from `policies_from` (the offsets start-up read it to)
/// and the audit topic from its beginning (no group, read_committed); a topic that does
/// not exist yet is looked for every 5 s.
pub fn spawn_control_reader(
    k: &KafkaConfig,
    policies_topic: String,
    policies_from: Vec<(i32, i64)>,
    audit_topic: String,
    tx: tokio::sync::mpsc::Sender<Control>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use std::sync::atomic::Ordering;
    let group = format!("{}-control-reader", k.group_id);
    let consumer: BaseConsumer = kafka::tail_reader_config(k, &group)
        .create()
        .context("creating the policies/audit consumer")?;
    let thread = std::thread::Builder::new()
        .name("guardrail-control".into())
        .spawn(move || {
            let stopped = || stop.load(Ordering::Relaxed) || tx.is_closed();
            let mut assigned: Vec<String> = Vec::new();
            let mut tpl = TopicPartitionList::new();
            let mut last_look = std::time::Instant::now() - Duration::from_secs(10);
            while !stopped() {
                if assigned.len() < 2 && last_look.elapsed() >= Duration::from_secs(5) {
                    last_look = std::time::Instant::now();
                    for topic in [&policies_topic, &audit_topic] {
                        if assigned.contains(topic) {
                            continue;
                        }
                        let n = consumer
                            .fetch_metadata(Some(topic), Duration::from_secs(1))
                            .ok()
                            .and_then(|m| {
                                m.topics()
                                    .iter()
                                    .find(|t| t.name() == topic.as_str() && t.error().is_none())
                                    .map(|t| t.partitions().len() as i32)
                            })
                            .unwrap_or(0);
                        if n > 0 {
                            for p in 0..n {
                                // Policies: from where start-up read them to (an older
                                // active record must not look like a new approval); a
                                // partition that was not there then, from its beginning.
                                let from = policies_from
                                    .iter()
                                    .find(|(q, _)| *q == p && topic == &policies_topic)
                                    .map_or(Offset::Beginning, |(_, o)| Offset::Offset(*o));
                                let _ = tpl.add_partition_offset(topic, p, from);
                            }
                            assigned.push(topic.clone());
                        }
                    }
                    if !assigned.is_empty()
                        && let Err(e) = consumer.incremental_assign(&tpl)
                    {
                        tracing::warn!(error = %e, "cannot read the policies/audit topics");
                        return;
                    }
                    tpl = TopicPartitionList::new();
                }
                if assigned.is_empty() {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                match consumer.poll(Duration::from_millis(200)) {
                    None => {}
                    Some(Err(e)) => tracing::debug!(error = %e, "policies/audit read"),
                    Some(Ok(m)) => {
                        let Some(payload) = m.payload() else { continue };
                        let control = if m.topic() == policies_topic {
                            match PolicyRecord::from_json(payload) {
                                Ok(r) => Control::Policy(Box::new(r)),
                                Err(e) => {
                                    tracing::warn!(topic = %m.topic(), offset = m.offset(), "unreadable policy record: {e}");
                                    continue;
                                }
                            }
                        } else {
                            match AuditRecord::from_json(payload) {
                                Ok(r) => Control::Audit(Box::new(r)),
                                Err(e) => {
                                    tracing::debug!(topic = %m.topic(), offset = m.offset(), "unreadable audit record: {e}");
                                    continue;
                                }
                            }
                        };
                        if tx.blocking_send(control).is_err() {
                            return;
                        }
                    }
                }
            }
        })?;
    Ok(thread)
}

/// Reads a proposal file: TOML (the config file's structure) or, for a `.json` path,
/// the same structure as JSON (a `policy show` document edited, say; `null` means
/// absent). Errors carry the path of each value at fault.
pub fn read_proposal_file(path: &std::path::Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    if path.extension().is_some_and(|e| e == "json") {
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("JSON syntax: {e}"),
            }])
        })?;
        let table = toml::Value::try_from(without_nulls(value)).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("not a config document: {e}"),
            }])
        })?;
        let text = toml::to_string(&table).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("not a config document: {e}"),
            }])
        })?;
        return Config::parse(&text);
    }
    Config::parse(&text)
}

fn without_nulls(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        v => v,
    }
}

/// What `propose` did for one flag.
#[derive(Debug, Clone, Serialize)]
pub struct Proposed {
    pub flag: String,
    pub version: String,
    /// `proposed`, `already proposed` (the same document is pending) or `unchanged`
    /// (it is the active version).
    pub status: String,
    pub previous_version: Option<String>,
}

/// Why a policy command failed: the proposal is invalid (exit 2), or the cluster
/// could not be read or written (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Cluster(String),
}

fn cluster(e: impl std::fmt::Display) -> PolicyError {
    PolicyError::Cluster(e.to_string())
}

/// The store, or an error naming the missing topic.
fn store_of(base: &Config) -> Result<(&KafkaConfig, Store), PolicyError> {
    let k = base
        .kafka
        .as_ref()
        .ok_or_else(|| PolicyError::Refused("the config has no [kafka] section".into()))?;
    let store = tokio::task::block_in_place(|| read_store(k, &base.topics.policies))
        .map_err(cluster)?
        .ok_or_else(|| {
            PolicyError::Cluster(format!(
                "the policies topic {} does not exist: create it (compacted, docs/SPEC.md §1)",
                base.topics.policies
            ))
        })?;
    Ok((k, store))
}

/// Checks `docs` (replacing the active documents of their flags) the way `check` does:
/// first the file alone, with its own paths (`flags[0].guardrails[1].max`), then the
/// whole set of policies the engine would judge with.
fn validate(
    base: &Config,
    file: &Config,
    docs: &[Document],
    store: &Store,
) -> Result<(), PolicyError> {
    // The file's flags and metrics at their own indices; metrics it uses but does not
    // define come from the active documents, after its own.
    let mut alone = base.clone();
    alone.flags = file.flags.clone();
    alone.metrics = file.metrics.clone();
    for r in store.active.values() {
        for m in &r.document.metrics {
            if !alone.metrics.iter().any(|x| x.name == m.name) {
                alone.metrics.push(m.clone());
            }
        }
    }
    crate::policy::Policy::compile(&alone).map_err(PolicyError::Invalid)?;
    let config_docs = documents(base);
    let mut all: Vec<&Document> = store
        .effective(&config_docs)
        .into_iter()
        .filter(|d| !docs.iter().any(|x| x.flag().key == d.flag().key))
        .collect();
    all.extend(docs.iter());
    let assembled = assemble(base, &all).map_err(PolicyError::Invalid)?;
    crate::policy::Policy::compile(&assembled).map_err(PolicyError::Invalid)?;
    Ok(())
}

/// `guardrail policy propose`: validates `file` and publishes a proposal per flag in
/// it (or in `only`) whose document is not already active.
pub async fn propose(
    base: &Config,
    file: &Config,
    only: &[String],
    by: &str,
    evidence: &[String],
    comment: Option<&str>,
) -> Result<Vec<Proposed>, PolicyError> {
    if file.flags.is_empty() {
        return Err(PolicyError::Refused(
            "the file has no [[flags]] to propose".into(),
        ));
    }
    for key in only {
        if !file.flags.iter().any(|f| &f.key == key) {
            return Err(PolicyError::Refused(format!(
                "flag {key:?} is not in the file"
            )));
        }
    }
    let (k, store) = store_of(base)?;
    // Metrics the file's flags use but do not define: the active definitions.
    let mut complete = file.clone();
    for r in store.active.values() {
        for m in &r.document.metrics {
            if !complete.metrics.iter().any(|x| x.name == m.name) {
                complete.metrics.push(m.clone());
            }
        }
    }
    let docs: Vec<Document> = documents(&complete)
        .into_iter()
        .filter(|d| only.is_empty() || only.contains(&d.flag().key))
        .collect();
    validate(base, file, &docs, &store)?;
    let now = crate::clock::wall_ms();
    let mut out = Vec::new();
    let mut records = Vec::new();
    let mut audit = Vec::new();
    for d in docs {
        let key = d.flag().key.clone();
        let version = d.version();
        let previous = store.active.get(&key).map(|r| r.version.clone());
        let status = if previous.as_deref() == Some(version.as_str()) {
            "unchanged"
        } else if store
            .proposals
            .get(&(key.clone(), version.clone()))
            .is_some_and(|p| p.kind == PolicyKind::Proposal)
        {
            "already proposed"
        } else {
            records.push(PolicyRecord {
                schema: POLICY_SCHEMA.into(),
                kind: PolicyKind::Proposal,
                flag: key.clone(),
                version: version.clone(),
                document: d,
                proposed_by: by.into(),
                proposed_at: now,
                approved_by: None,
                approved_at: None,
                rejected_by: None,
                rejected_at: None,
                previous_version: previous.clone(),
                comment: comment.map(str::to_string),
                evidence: evidence.to_vec(),
            });
            audit.push(AuditRecord::policy(
                AuditKind::Proposed,
                &key,
                &version,
                by,
                now,
                comment.unwrap_or("proposed").to_string(),
                evidence.to_vec(),
            ));
            "proposed"
        };
        out.push(Proposed {
            flag: key,
            version,
            status: status.into(),
            previous_version: previous,
        });
    }
    publish(
        k,
        &base.topics.policies,
        &base.topics.audit,
        &records,
        &audit,
    )
    .await
    .map_err(cluster)?;
    Ok(out)
}

/// `guardrail policy approve`: makes a pending proposal the flag's active version. The
/// approver must not be its proposer unless `allow_self` (four eyes); the proposal
/// must still validate against the policies active now.
pub async fn approve(
    base: &Config,
    flag: &str,
    version: &str,
    by: &str,
    comment: Option<&str>,
    allow_self: bool,
) -> Result<PolicyRecord, PolicyError> {
    let (k, store) = store_of(base)?;
    let proposal = pending(&store, flag, version)?;
    if let Some(active) = store.active.get(flag).filter(|a| a.version == version) {
        return Ok(active.clone());
    }
    let active_now = store.active.get(flag).map(|r| r.version.clone());
    if proposal.previous_version != active_now {
        return Err(PolicyError::Refused(format!(
            "{flag} {version} was proposed as a change of {} but {} is active now: \
             propose it again from the active version (`guardrail policy show`)",
            proposal.previous_version.as_deref().unwrap_or("nothing"),
            active_now.as_deref().unwrap_or("nothing")
        )));
    }
    if proposal.proposed_by == by && !allow_self {
        return Err(PolicyError::Refused(format!(
            "{by} proposed {flag} {version}: another person approves it (or pass \
             --allow-self-approval)"
        )));
    }
    let file = Config {
        flags: proposal.document.flags.clone(),
        metrics: proposal.document.metrics.clone(),
        ..Config::default()
    };
    validate(
        base,
        &file,
        std::slice::from_ref(&proposal.document),
        &store,
    )?;
    let now = crate::clock::wall_ms();
    let mut active = proposal.clone();
    active.kind = PolicyKind::Active;
    active.approved_by = Some(by.into());
    active.approved_at = Some(now);
    active.previous_version = store.active.get(flag).map(|r| r.version.clone());
    active.comment = join_comments(proposal.comment.as_deref(), comment);
    let entry = AuditRecord::policy(
        AuditKind::Approved,
        flag,
        version,
        by,
        now,
        format!(
            "approved {version} (proposed by {}{}){}",
            proposal.proposed_by,
            active
                .previous_version
                .as_deref()
                .map(|p| format!(", replacing {p}"))
                .unwrap_or_default(),
            comment.map(|c| format!(": {c}")).unwrap_or_default()
        ),
        proposal.evidence.clone(),
    );
    publish(
        k,
        &base.topics.policies,
        &base.topics.audit,
        std::slice::from_ref(&active),
        &[entry],
    )
    .await
    .map_err(cluster)?;
    Ok(active)
}

/// `guardrail policy reject`: closes a pending proposal.
pub async fn reject(
    base: &Config,
    flag: &str,
    version: &str,
    by: &str,
    comment: Option<&str>,
) -> Result<PolicyRecord, PolicyError> {
    let (k, store) = store_of(base)?;
    let proposal = pending(&store, flag, version)?;
    let now = crate::clock::wall_ms();
    let mut rejected = proposal.clone();
    rejected.kind = PolicyKind::Rejected;
    rejected.rejected_by = Some(by.into());
    rejected.rejected_at = Some(now);
    rejected.comment = join_comments(proposal.comment.as_deref(), comment);
    let entry = AuditRecord::policy(
        AuditKind::Rejected,
        flag,
        version,
        by,
        now,
        format!(
            "rejected {version} (proposed by {}){}",
            proposal.proposed_by,
            comment.map(|c| format!(": {c}")).unwrap_or_default()
        ),
        proposal.evidence.clone(),
    );
    publish(
        k,
        &base.topics.policies,
        &base.topics.audit,
        std::slice::from_ref(&rejected),
        &[entry],
    )
    .await
    .map_err(cluster)?;
    Ok(rejected)
}

/// The proposal `flag`@`version`, if it is still pending (or already the active one).
fn pending(store: &Store, flag: &str, version: &str) -> Result<PolicyRecord, PolicyError> {
    match store
        .proposals
        .get(&(flag.to_string(), version.to_string()))
    {
        Some(p) if p.kind == PolicyKind::Rejected => Err(PolicyError::Refused(format!(
            "{flag} {version} was rejected by {}",
            p.rejected_by.as_deref().unwrap_or("?")
        ))),
        Some(p) => Ok(p.clone()),
        None => Err(PolicyError::Refused(format!(
            "no proposal {version} for flag {flag:?} on the policies topic (`guardrail policy list`)"
        ))),
    }
}

fn join_comments(a: Option<&str>, b: Option<&str>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a} / {b}")),
        (a, b) => a.or(b).map(str::to_string),
    }
}

/// `guardrail policy list` and `show`: the store as the topic holds it now.
pub fn load_store(base: &Config) -> Result<Store, PolicyError> {
    store_of(base).map(|(_, s)| s)
}
