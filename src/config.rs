//! The TOML configuration (SPEC §4): raw serde types, and validation that reports
//! every error with its path (`flags[1].success[0].metric: unknown metric "x"`).
//!
//! Loading is two steps: each section (and each element of `[[metrics]]` and
//! `[[flags]]`) is deserialized on its own, so one typo does not hide the others;
//! then [`crate::policy::Policy::compile`] checks every cross reference.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One problem in a config file, with the dotted path of the value at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error found in a config; `check` prints them all.
#[derive(Debug, thiserror::Error)]
#[error("invalid config: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ConfigErrors(pub Vec<ConfigError>);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    pub kafka: Option<KafkaConfig>,
    pub topics: Topics,
    pub window: WindowConfig,
    pub http: HttpConfig,
    pub output: OutputConfig,
    /// `guardrail apply`, the flagd subscriber (SPEC §9).
    pub apply: ApplyConfig,
    /// `[scale]`: the two-stage deployment (SPEC §11).
    pub scale: ScaleConfig,
    pub metrics: Vec<MetricConfig>,
    pub flags: Vec<FlagConfig>,
    /// Input topics with their formats and mappings (SPEC §4.1). Empty: the three
    /// built-in Avro inputs of `[topics]`.
    pub inputs: Vec<InputConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Passed through to librdkafka unchanged (TLS, SASL, tuning).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// `at-least-once` (default): an idempotent producer, input offsets committed once
    /// the outputs they cover are acknowledged. `exactly-once`: outputs, DLQ records
    /// and input offsets committed in one Kafka transaction (a broker with
    /// transactions; see SPEC §6 for what is verified).
    #[serde(default)]
    pub delivery: Delivery,
    /// The producer's `transactional.id` under exactly-once. Keep it stable across
    /// restarts of one instance (a restart then fences its predecessor at once);
    /// default `<group_id>-<host name>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
}

fn default_group_id() -> String {
    "guardrail".into()
}

/// Delivery semantics of `run` (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    ExactlyOnce,
    #[default]
    AtLeastOnce,
}

impl KafkaConfig {
    /// The `transactional.id` under exactly-once: the configured one, or
    /// `<group_id>-<host name>` (the pod name under Kubernetes).
    pub fn transactional_id(&self) -> String {
        if let Some(id) = &self.transactional_id {
            return id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "guardrail".into());
        format!("{}-{host}", self.group_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    pub product_events: String,
    pub error_events: String,
    pub support_signals: String,
    pub flag_commands: String,
    pub evaluations: String,
    pub dlq: String,
    /// Decision state, compacted: the newest `WindowEvaluation` per (flag, cohort).
    pub state: String,
    /// Approvals of commands that require one (`guardrail apply approve`), read by
    /// `guardrail apply` (SPEC §9).
    pub approvals: String,
    /// What `guardrail apply` applied, compacted: the newest per (flag, cohort) (SPEC §9).
    pub applied: String,
    /// Policies as data, compacted: the active policy document per flag and every
    /// proposal (`guardrail policy`, SPEC §10).
    pub policies: String,
    /// The audit trail: proposals, approvals, rejections, activations, commands (SPEC §10).
    pub audit: String,
    /// Partial aggregates from the ingest stage to the judge stage, keyed by flag
    /// (`guardrail run --stage`, SPEC §11).
    pub partials: String,
}

impl Topics {
    /// The input topic of a source.
    pub fn input(&self, source: crate::model::Source) -> &str {
        match source {
            crate::model::Source::Product => &self.product_events,
            crate::model::Source::Errors => &self.error_events,
            crate::model::Source::Support => &self.support_signals,
        }
    }

    /// The source an input topic carries; `None` for any other topic. Three string
    /// compares beat hashing the topic name per message.
    pub fn source_of(&self, topic: &str) -> Option<crate::model::Source> {
        crate::model::Source::ALL
            .into_iter()
            .find(|s| self.input(*s) == topic)
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            product_events: "product-events".into(),
            error_events: "error-events".into(),
            support_signals: "support-signals".into(),
            flag_commands: "flag-commands".into(),
            evaluations: "guardrail-evaluations".into(),
            dlq: "guardrail-dlq".into(),
            state: "guardrail-state".into(),
            approvals: "flag-approvals".into(),
            applied: "guardrail-applied".into(),
            policies: "guardrail-policies".into(),
            audit: "guardrail-audit".into(),
            partials: "guardrail-partials".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    pub size: String,
    pub allowed_lateness: String,
    pub idle_timeout: String,
    pub max_future_skew: String,
    /// A partition whose event time trails the most advanced one by more than this,
    /// and does not catch up, stops holding the watermark back (SPEC §3).
    pub max_partition_delay: String,
    /// Cohorts per flag beyond the cap are aggregated under cohort `other`.
    pub max_cohorts_per_flag: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            size: "15m".into(),
            allowed_lateness: "2m".into(),
            idle_timeout: "30s".into(),
            max_future_skew: "5m".into(),
            max_partition_delay: "15m".into(),
            max_cohorts_per_flag: 64,
        }
    }
}

/// `[scale]`: settings of the two-stage deployment (`guardrail run --stage`, SPEC §11).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaleConfig {
    /// The judge closes a flag's window this long (wall time) after the window's first
    /// partial arrived even if some input partition has not reported it. Longer than an
    /// ingest instance's failover (session timeout, restart, re-read), or a killed
    /// instance's partitions are judged without.
    pub partials_timeout: String,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        ScaleConfig {
            partials_timeout: "120s".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:9464".into(),
        }
    }
}

/// `[apply]`: the flagd subscriber's own settings (its topics are in `[topics]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplyConfig {
    /// Its consumer group on `flag-commands`: not the engine's, whose offsets it must
    /// not move.
    pub group_id: String,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            group_id: "guardrail-apply".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Avro,
    Json,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    pub format: OutputFormat,
}

/// `[[inputs]]`: one input topic, its format and how its records map to events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    pub topic: String,
    /// `avro` (single-object, guardrail's schemas) | `avro-confluent` | `json` | `otlp`.
    pub format: String,
    /// What a record becomes: `product` | `errors` | `support` (not for `otlp`).
    pub record: Option<String>,
    /// `otlp`: `traces` (default) | `logs`.
    pub signal: Option<String>,
    /// `otlp`: `protobuf` (default) | `json`.
    pub encoding: Option<String>,
    /// `avro-confluent`: the Schema Registry.
    pub registry: Option<RegistryConfig>,
    /// `avro-confluent`: a schema file `check` validates the mapping against when it is
    /// run without the registry (`--offline`).
    pub schema_file: Option<String>,
    /// `avro-confluent` and `json`: how fields become the event.
    pub mapping: Option<MappingConfig>,
}

/// `[inputs.registry]`: where `avro-confluent` writer schemas come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// One URL or several separated by commas (tried in turn).
    pub url: String,
    pub username: Option<String>,
    /// Read from this environment variable (secrets stay out of the file).
    pub password_env: Option<String>,
    pub bearer_token_env: Option<String>,
    /// The time budget of one schema fetch, retries included.
    #[serde(default = "default_registry_timeout")]
    pub timeout: String,
    /// Fetched schemas are kept here too: known ids survive a registry outage at restart.
    pub cache_dir: Option<String>,
    /// The subject `check` validates the mapping against; default `<topic>-value`.
    pub subject: Option<String>,
}

fn default_registry_timeout() -> String {
    "30s".into()
}

/// `[inputs.mapping]`: the record's fields (paths) → the event's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    pub event_id: Option<FieldConfig>,
    pub timestamp: Option<FieldConfig>,
    /// The randomisation unit (the event's `user_id`).
    pub unit: Option<FieldConfig>,
    #[serde(default)]
    pub flags: Vec<FlagsConfig>,
    #[serde(default)]
    pub attributes: BTreeMap<String, FieldConfig>,
    /// Only records whose field at each path equals the value are read; others are
    /// counted as unmatched (`{ type = "track" }`).
    #[serde(default)]
    pub when: BTreeMap<String, String>,
    pub journey: Option<FieldConfig>,
    pub step: Option<FieldConfig>,
    pub outcome: Option<FieldConfig>,
    pub latency_ms: Option<FieldConfig>,
    pub value: Option<FieldConfig>,
    pub service: Option<FieldConfig>,
    pub error_class: Option<FieldConfig>,
    pub status_code: Option<FieldConfig>,
    pub fatal: Option<FieldConfig>,
    pub channel: Option<FieldConfig>,
    pub csat: Option<FieldConfig>,
    pub sentiment: Option<FieldConfig>,
    pub tags: Option<FieldConfig>,
}

/// A mapped field: a path (`"context.device.type"`) or a table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldConfig {
    Path(String),
    Spec(FieldSpec),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub path: Option<String>,
    /// A constant instead of a path.
    pub value: Option<String>,
    /// Record values → event values (`{ "Order Completed" = "COMPLETED" }`).
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// Used when the path is absent or null.
    pub default: Option<String>,
    /// Numbers are multiplied by this (`0.001` for microseconds to milliseconds).
    pub scale: Option<f64>,
    /// Timestamps: `epoch-ms` | `epoch-s` | `epoch-us` | `epoch-ns` | `rfc3339`.
    pub format: Option<String>,
}

/// One source of flag assignments (several may be given; their flags are joined).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagsConfig {
    /// An object `{flag: variant}`, or a list of objects (with `key` and `variant`).
    pub path: Option<String>,
    /// In a list's elements: the path of the flag key and of the variant.
    pub key: Option<String>,
    pub variant: Option<String>,
    /// With an object `path`: only its keys that start with this are flags, named
    /// without it (`prefix = "exp_"`: `exp_checkout_v2` is flag `checkout_v2`).
    pub prefix: Option<String>,
    /// One flag per field: flag key → path of its variant.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// A `match` value: one string, a list (any of), or a boolean for boolean fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MatchValue {
    One(String),
    AnyOf(Vec<String>),
    Bool(bool),
}

impl MatchValue {
    pub fn values(&self) -> Vec<String> {
        match self {
            MatchValue::One(s) => vec![s.clone()],
            MatchValue::AnyOf(v) => v.clone(),
            MatchValue::Bool(b) => vec![b.to_string()],
        }
    }
}

/// `{ source = "errors", match = { service = "checkout" } }`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    pub source: String,
    #[serde(rename = "match", default)]
    pub matches: BTreeMap<String, MatchValue>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub numerator: Option<Selector>,
    pub denominator: Option<Selector>,
    pub quantile: Option<f64>,
    pub source: Option<String>,
    pub field: Option<String>,
    #[serde(rename = "match", default)]
    pub matches: BTreeMap<String, MatchValue>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagConfig {
    pub key: String,
    pub owner: String,
    pub treatment: String,
    pub control: Option<String>,
    #[serde(default)]
    pub cohort_by: Vec<String>,
    pub ramp: Vec<f64>,
    pub start_percent: f64,
    #[serde(default = "default_approval")]
    pub approval: String,
    #[serde(default = "default_advance_when")]
    pub advance_when: String,
    #[serde(default)]
    pub guardrails: Vec<GuardrailConfig>,
    #[serde(default)]
    pub success: Vec<SuccessConfig>,
    pub description: Option<String>,
    /// The randomisation unit: `user_id` (the default) or `attributes.NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Cohorts judged besides `*` at most (the rest fold into `other`); also the size
    /// of the family the stop budget is split over. Default `window.max_cohorts_per_flag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cohorts: Option<usize>,
    /// When the flag should be gone (RFC 3339 time, or a date `YYYY-MM-DD`, midnight
    /// UTC): afterwards it is reported as expired (`/api/flags`, a metric, an alert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Where the flag's traffic comes from (`production`, `staging`, ...): reported with
    /// the flag and carried on its commands' owner line; it does not change a decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

fn default_approval() -> String {
    "manual".into()
}
fn default_advance_when() -> String {
    "significant".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailConfig {
    pub metric: String,
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub max_relative_increase: Option<f64>,
    pub max_relative_decrease: Option<f64>,
    #[serde(default = "default_guardrail_alpha")]
    pub alpha: f64,
    #[serde(default = "default_windows")]
    pub windows: u32,
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    #[serde(default = "default_severity")]
    pub severity: String,
    #[serde(default = "default_action")]
    pub action: String,
    /// `sequential` (mSPRT over the ramp band: valid at `alpha` however often it is
    /// judged) or `per_window` (a fixed test on each window: faster on a regression that
    /// starts mid-band, but the false-alarm rate grows with the number of windows).
    #[serde(default = "default_test")]
    pub test: String,
    /// Per-cohort overrides: stricter or looser bounds, another severity or action for
    /// the cohorts named (`auth=logged_in`), the rest inherited from this guardrail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cohorts: Vec<GuardrailOverride>,
    /// A flag without control: the relative bounds are tested against this baseline,
    /// the same cohort's own recent windows (SPEC §4 "Policy depth").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineConfig>,
}

/// `baseline = { windows = 8 }`: what a relative bound of a flag without control is
/// tested against — the same cohort's treatment traffic over its previous `windows`
/// closed windows, pooled (windows in which the guardrail breached left out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineConfig {
    /// How many previous windows are pooled; no decision on the relative bound until
    /// that many are in (warm-up).
    pub windows: u32,
}

/// A guardrail's settings for one cohort: the fields given replace the guardrail's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailOverride {
    /// A cohort as guardrail names it (`platform=ios`, `platform=ios,region=eu`, `*`).
    pub cohort: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_relative_increase: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_relative_decrease: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

fn default_test() -> String {
    "sequential".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuccessConfig {
    pub metric: String,
    pub direction: String,
    #[serde(default = "default_success_alpha")]
    pub alpha: f64,
    #[serde(default = "default_windows")]
    pub windows: u32,
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    /// The smallest relative improvement worth advancing for (test margin).
    #[serde(default)]
    pub min_relative_change: f64,
}

fn default_guardrail_alpha() -> f64 {
    0.01
}
fn default_success_alpha() -> f64 {
    0.05
}
fn default_windows() -> u32 {
    1
}
fn default_min_samples() -> u64 {
    100
}
fn default_severity() -> String {
    "critical".into()
}
fn default_action() -> String {
    "pause".into()
}

impl Config {
    /// Reads and parses a config file; structural errors only (see `Policy::compile`).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Config::parse(&text)
    }

    /// Parses TOML text, collecting an error per broken section or array element.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("TOML syntax: {}", e.message()),
            }])
        })?;
        let mut errors = Vec::new();
        let mut config = Config::default();
        for (key, value) in table {
            match key.as_str() {
                "kafka" => config.kafka = section(&key, value, &mut errors),
                "topics" => set(&mut config.topics, section(&key, value, &mut errors)),
                "window" => set(&mut config.window, section(&key, value, &mut errors)),
                "http" => set(&mut config.http, section(&key, value, &mut errors)),
                "output" => set(&mut config.output, section(&key, value, &mut errors)),
                "apply" => set(&mut config.apply, section(&key, value, &mut errors)),
                "scale" => set(&mut config.scale, section(&key, value, &mut errors)),
                "metrics" => config.metrics = elements(&key, value, &mut errors),
                "flags" => config.flags = elements(&key, value, &mut errors),
                "inputs" => config.inputs = elements(&key, value, &mut errors),
                other => errors.push(ConfigError {
                    path: other.to_string(),
                    message: "unknown section (expected kafka, topics, window, http, output, apply, scale, metrics, flags, inputs)".into(),
                }),
            }
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

impl Config {
    /// The input topics in input order (`PartitionKey::input`): the `[[inputs]]`, or
    /// when there are none the three built-in inputs of `[topics]`.
    pub fn input_topics(&self) -> Vec<String> {
        if self.inputs.is_empty() {
            crate::model::Source::ALL
                .iter()
                .map(|s| self.topics.input(*s).to_string())
                .collect()
        } else {
            self.inputs.iter().map(|i| i.topic.clone()).collect()
        }
    }

    /// The input an input topic is.
    pub fn input_of(&self, topic: &str) -> Option<u16> {
        if self.inputs.is_empty() {
            self.topics.source_of(topic).map(|s| s.index() as u16)
        } else {
            self.inputs
                .iter()
                .position(|i| i.topic == topic)
                .map(|i| i as u16)
        }
    }

    /// The topic of an input.
    pub fn input_topic(&self, input: u16) -> &str {
        if self.inputs.is_empty() {
            crate::model::Source::ALL
                .get(usize::from(input))
                .map_or("", |s| self.topics.input(*s))
        } else {
            self.inputs
                .get(usize::from(input))
                .map_or("", |i| i.topic.as_str())
        }
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// Deserializes one value, turning a serde error into a path-carrying `ConfigError`.
fn section<T: DeserializeOwned>(
    path: &str,
    value: toml::Value,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." || inner.is_empty() {
                path.to_string()
            } else if inner.starts_with('[') {
                format!("{path}{inner}")
            } else {
                format!("{path}.{inner}")
            };
            let message = e.into_inner().message().to_string();
            errors.push(ConfigError { path, message });
            None
        }
    }
}

/// Deserializes an array of tables element by element (`flags[2].ramp: ...`).
fn elements<T: DeserializeOwned>(
    path: &str,
    value: toml::Value,
    errors: &mut Vec<ConfigError>,
) -> Vec<T> {
    let toml::Value::Array(items) = value else {
        errors.push(ConfigError {
            path: path.to_string(),
            message: format!("expected an array of tables ([[{path}]])"),
        });
        return Vec::new();
    };
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| section(&format!("{path}[{i}]"), item, errors))
        .collect()
}

/// Parses a duration such as `15m`, `30s` or `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_one_error_per_broken_element() {
        let text = r#"
            [window]
            size = 15
            [[metrics]]
            name = "a"
            type = "rate"
            colour = "red"
            [[flags]]
            key = "f"
            [[flags]]
            key = "g"
            owner = "o"
            treatment = "on"
            ramp = "no"
            start_percent = 5
        "#;
        let errs = Config::parse(text).unwrap_err().0;
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        // Sections come in key order (TOML tables are sorted maps).
        assert_eq!(
            paths,
            vec![
                "flags[0]",
                "flags[1].ramp",
                "metrics[0].colour",
                "window.size"
            ]
        );
        assert!(
            errs[0].message.contains("missing field `owner`"),
            "{}",
            errs[0]
        );
        assert!(
            errs[2].message.contains("unknown field `colour`"),
            "{}",
            errs[2]
        );
    }

    #[test]
    fn unknown_section_is_refused() {
        let errs = Config::parse("[kafak]\nbrokers = \"x\"").unwrap_err().0;
        assert_eq!(errs[0].path, "kafak");
    }

    #[test]
    fn max_partition_delay_is_validated() {
        let compile = |window: &str| {
            let config = Config::parse(&format!("[window]\n{window}")).map_err(|e| e.0)?;
            crate::policy::Policy::compile(&config).map_err(|e| e.0)
        };
        let ok = compile("max_partition_delay = \"20m\"").unwrap();
        assert_eq!(ok.window.max_partition_delay_ms, 20 * 60_000);
        let default = compile("").unwrap();
        assert_eq!(default.window.max_partition_delay_ms, 15 * 60_000);
        for (text, message) in [
            ("max_partition_delay = \"0s\"", "must be longer than 0"),
            ("max_partition_delay = \"soon\"", "invalid duration"),
        ] {
            let errs = compile(text).unwrap_err();
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!(errs[0].path, "window.max_partition_delay");
            assert!(errs[0].message.contains(message), "{}", errs[0]);
        }
        // Unknown keys are still refused.
        let errs = compile("max_partition_dealy = \"15m\"").unwrap_err();
        assert_eq!(errs[0].path, "window.max_partition_dealy");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert!(parse_duration("15 parsecs").is_err());
    }
}
