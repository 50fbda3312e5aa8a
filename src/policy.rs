//! The validated, compiled form of a config: metric matchers resolved to record
//! fields, flags with guardrails pointing at metric indices, durations in millis.
//! Built once by [`Policy::compile`], shared read-only by every stage.

use std::collections::{BTreeMap, HashMap};

use crate::config::{
    Config, ConfigError, ConfigErrors, FlagConfig, GuardrailConfig, MatchValue, MetricConfig,
    Selector, parse_duration,
};
use crate::ids::stable_hash_hex;
use crate::model::{Action, Channel, Outcome, Severity, Source};

/// A string-valued field of an input record that `match` may test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldRef {
    EventId,
    UserId,
    Journey,
    Step,
    Outcome,
    Service,
    ErrorClass,
    Fatal,
    Channel,
    Attribute(String),
}

/// A numeric field that `mean` and `quantile` metrics aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumField {
    LatencyMs,
    Value,
    StatusCode,
    Csat,
    Sentiment,
}

/// Selects the events of one source whose fields match every condition.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub source: Source,
    pub conditions: Vec<(FieldRef, Vec<String>)>,
}

#[derive(Debug, Clone)]
pub enum MetricKind {
    Rate {
        numerator: Matcher,
        denominator: Matcher,
    },
    Mean {
        matcher: Matcher,
        field: NumField,
    },
    Quantile {
        matcher: Matcher,
        field: NumField,
        quantile: f64,
    },
}

#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvanceWhen {
    Significant,
    Healthy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Increase,
    Decrease,
}

/// A metric that must not regress.
#[derive(Debug, Clone)]
pub struct Guardrail {
    /// Index into `Policy::metrics`.
    pub metric: usize,
    /// Index into the flag's `metric_ids` (its aggregate slot in a cell).
    pub slot: usize,
    pub max: Option<f64>,
    pub min: Option<f64>,
    pub max_relative_increase: Option<f64>,
    pub max_relative_decrease: Option<f64>,
    pub alpha: f64,
    pub windows: u32,
    pub min_samples: u64,
    pub severity: Severity,
    pub action: Action,
    /// Judge the relative bound with the band's sequential test (else per window).
    pub sequential: bool,
    /// A flag without control: the relative bound is tested against the cohort's
    /// previous this-many windows, pooled (`rules::baseline`).
    pub baseline: Option<u32>,
}

/// A metric that should improve before the ramp advances.
#[derive(Debug, Clone)]
pub struct SuccessMetric {
    pub metric: usize,
    pub slot: usize,
    pub direction: Direction,
    pub alpha: f64,
    pub windows: u32,
    pub min_samples: u64,
    pub margin: f64,
}

#[derive(Debug, Clone)]
pub struct Flag {
    pub key: String,
    pub owner: String,
    /// `production`, `staging`, ... (reported, not decisive).
    pub environment: Option<String>,
    /// When the flag should be gone (epoch ms); past it the flag is reported expired.
    pub expires_at_ms: Option<i64>,
    /// Cohorts with their own guardrail settings: the flag's guardrails, in the same
    /// order, with the cohort's overrides applied.
    pub cohort_guardrails: Vec<(String, Vec<Guardrail>)>,
    pub treatment: String,
    pub control: Option<String>,
    pub cohort_by: Vec<String>,
    /// The randomisation unit every test's variance is computed over.
    pub unit: FieldRef,
    /// Cohorts besides `*` (else `window.max_cohorts_per_flag`).
    pub max_cohorts: Option<usize>,
    pub ramp: Vec<f64>,
    pub start_percent: f64,
    pub manual_approval: bool,
    pub advance_when: AdvanceWhen,
    pub guardrails: Vec<Guardrail>,
    pub success: Vec<SuccessMetric>,
    /// Distinct metrics this flag aggregates, in slot order.
    pub metric_ids: Vec<usize>,
    /// Hash of what decides: the flag's policy and the metrics it uses, without the
    /// words around them (`owner`, `description`s). Editing those keeps every cohort's
    /// state; any other change starts the flag's cohorts afresh (restore says so).
    pub policy_version: String,
    /// The version builds before 0.2 computed for this same config (it hashed `owner`
    /// and `description` too): state published under it is still restored.
    pub legacy_policy_version: String,
}

impl Flag {
    /// The flag as cohort `cohort` is judged: with that cohort's guardrail overrides.
    pub fn for_cohort(&self, cohort: &str) -> std::borrow::Cow<'_, Flag> {
        match self.cohort_guardrails.iter().find(|(c, _)| c == cohort) {
            None => std::borrow::Cow::Borrowed(self),
            Some((_, guardrails)) => std::borrow::Cow::Owned(Flag {
                guardrails: guardrails.clone(),
                cohort_guardrails: Vec::new(),
                ..self.clone()
            }),
        }
    }

    /// Whether the flag is past its `expires_at` at `now` (epoch ms).
    pub fn expired(&self, now: i64) -> bool {
        self.expires_at_ms.is_some_and(|t| now >= t)
    }
}

/// Window timing, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct WindowSettings {
    pub size_ms: i64,
    pub allowed_lateness_ms: i64,
    pub idle_timeout_ms: i64,
    pub max_future_skew_ms: i64,
    pub max_partition_delay_ms: i64,
    pub max_cohorts_per_flag: usize,
    /// `[scale] partials_timeout`: the judge stage's wait for missing partials (SPEC §11).
    pub partials_timeout_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub window: WindowSettings,
    pub metrics: Vec<Metric>,
    pub flags: Vec<Flag>,
}

/// Fields of each source's record that `match` may name (besides `attributes.*`).
fn match_field(source: Source, name: &str) -> Option<FieldRef> {
    let field = match (source, name) {
        (_, "event_id") => FieldRef::EventId,
        (_, "user_id") => FieldRef::UserId,
        (Source::Product, "journey") => FieldRef::Journey,
        (Source::Product, "step") => FieldRef::Step,
        (Source::Product, "outcome") => FieldRef::Outcome,
        (Source::Errors, "service") => FieldRef::Service,
        (Source::Errors, "error_class") => FieldRef::ErrorClass,
        (Source::Errors, "fatal") => FieldRef::Fatal,
        (Source::Support, "channel") => FieldRef::Channel,
        (_, attr) => FieldRef::Attribute(attr.strip_prefix("attributes.")?.to_string()),
    };
    Some(field)
}

fn num_field(source: Source, name: &str) -> Option<NumField> {
    Some(match (source, name) {
        (Source::Product | Source::Errors, "latency_ms") => NumField::LatencyMs,
        (Source::Product, "value") => NumField::Value,
        (Source::Errors, "status_code") => NumField::StatusCode,
        (Source::Support, "csat") => NumField::Csat,
        (Source::Support, "sentiment") => NumField::Sentiment,
        _ => return None,
    })
}

fn numeric_fields(source: Source) -> &'static str {
    match source {
        Source::Product => "latency_ms, value",
        Source::Errors => "latency_ms, status_code",
        Source::Support => "csat, sentiment",
    }
}

/// Durations that must be longer than 0.
const MUST_BE_POSITIVE: [&str; 2] = ["window.size", "window.max_partition_delay"];

/// Collects errors while compiling; `err` records one and returns `None`.
struct Checker {
    errors: Vec<ConfigError>,
}

impl Checker {
    fn err<T>(&mut self, path: impl Into<String>, message: impl Into<String>) -> Option<T> {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
        None
    }

    fn duration(&mut self, path: &str, text: &str) -> i64 {
        match parse_duration(text) {
            Ok(d) if d.as_millis() > 0 || !MUST_BE_POSITIVE.contains(&path) => d.as_millis() as i64,
            Ok(_) => self.err(path, "must be longer than 0").unwrap_or(0),
            Err(e) => self.err(path, e).unwrap_or(0),
        }
    }

    fn source(&mut self, path: String, name: &str) -> Option<Source> {
        match Source::parse(name) {
            Some(s) => Some(s),
            None => self.err(
                path,
                format!("unknown source {name:?} (expected product, errors or support)"),
            ),
        }
    }

    fn matcher(
        &mut self,
        path: &str,
        source: Source,
        matches: &BTreeMap<String, MatchValue>,
    ) -> Matcher {
        let mut conditions = Vec::new();
        for (name, value) in matches {
            let p = format!("{path}.match.{name}");
            let Some(field) = match_field(source, name) else {
                self.err::<()>(
                    p,
                    format!(
                        "unknown field {name:?} for source {:?} (string, enum and boolean fields, or attributes.NAME)",
                        source.as_str()
                    ),
                );
                continue;
            };
            let values = value.values();
            if values.is_empty() {
                self.err::<()>(p.clone(), "empty list matches nothing");
            }
            let allowed: Option<&[&str]> = match field {
                FieldRef::Outcome => Some(&Outcome::SYMBOLS),
                FieldRef::Channel => Some(&Channel::SYMBOLS),
                FieldRef::Fatal => Some(&["true", "false"]),
                _ => None,
            };
            if let Some(allowed) = allowed {
                for v in &values {
                    if !allowed.contains(&v.as_str()) {
                        self.err::<()>(
                            p.clone(),
                            format!("{v:?} is not one of {}", allowed.join(", ")),
                        );
                    }
                }
            } else if matches!(value, MatchValue::Bool(_)) {
                self.err::<()>(
                    p.clone(),
                    "a boolean only matches the boolean field `fatal`",
                );
            }
            conditions.push((field, values));
        }
        Matcher { source, conditions }
    }

    fn selector(&mut self, path: &str, sel: &Selector) -> Option<Matcher> {
        let source = self.source(format!("{path}.source"), &sel.source)?;
        Some(self.matcher(path, source, &sel.matches))
    }

    fn metric(&mut self, i: usize, m: &MetricConfig) -> Option<Metric> {
        let path = format!("metrics[{i}]");
        let kind = match m.kind.as_str() {
            "rate" => {
                for (f, present) in [
                    ("quantile", m.quantile.is_some()),
                    ("field", m.field.is_some()),
                    ("source", m.source.is_some()),
                ] {
                    if present {
                        self.err::<()>(
                            format!("{path}.{f}"),
                            "not used by a rate metric (use numerator and denominator)",
                        );
                    }
                }
                let num = match &m.numerator {
                    Some(s) => self.selector(&format!("{path}.numerator"), s),
                    None => self.err(format!("{path}.numerator"), "required for type \"rate\""),
                };
                let den = match &m.denominator {
                    Some(s) => self.selector(&format!("{path}.denominator"), s),
                    None => self.err(format!("{path}.denominator"), "required for type \"rate\""),
                };
                MetricKind::Rate {
                    numerator: num?,
                    denominator: den?,
                }
            }
            kind @ ("mean" | "quantile") => {
                let quantile = if kind == "quantile" {
                    match m.quantile {
                        Some(q) if q > 0.0 && q < 1.0 => Some(q),
                        Some(q) => {
                            self.err(format!("{path}.quantile"), format!("{q} is not in (0, 1)"))
                        }
                        None => {
                            self.err(format!("{path}.quantile"), "required for type \"quantile\"")
                        }
                    }
                } else {
                    if m.quantile.is_some() {
                        self.err::<()>(format!("{path}.quantile"), "only for type \"quantile\"");
                    }
                    Some(0.0)
                };
                let source = match &m.source {
                    Some(s) => self.source(format!("{path}.source"), s),
                    None => self.err(
                        format!("{path}.source"),
                        format!("required for type {kind:?}"),
                    ),
                }?;
                let field = match &m.field {
                    Some(f) => match num_field(source, f) {
                        Some(nf) => Some(nf),
                        None => self.err(
                            format!("{path}.field"),
                            format!(
                                "{f:?} is not a numeric field of source {:?} (one of {})",
                                source.as_str(),
                                numeric_fields(source)
                            ),
                        ),
                    },
                    None => self.err(
                        format!("{path}.field"),
                        format!("required for type {kind:?}"),
                    ),
                };
                let matcher = self.matcher(&path, source, &m.matches);
                let (field, quantile) = (field?, quantile?);
                if kind == "quantile" {
                    MetricKind::Quantile {
                        matcher,
                        field,
                        quantile,
                    }
                } else {
                    MetricKind::Mean { matcher, field }
                }
            }
            other => {
                return self.err(
                    format!("{path}.type"),
                    format!("unknown metric type {other:?} (expected rate, mean or quantile)"),
                );
            }
        };
        Some(Metric {
            name: m.name.clone(),
            kind,
        })
    }
}

impl Policy {
    /// Validates every reference in the config and compiles it; returns all errors.
    pub fn compile(config: &Config) -> Result<Policy, ConfigErrors> {
        let mut c = Checker { errors: Vec::new() };
        let w = &config.window;
        let window = WindowSettings {
            size_ms: c.duration("window.size", &w.size),
            allowed_lateness_ms: c.duration("window.allowed_lateness", &w.allowed_lateness),
            idle_timeout_ms: c.duration("window.idle_timeout", &w.idle_timeout),
            max_future_skew_ms: c.duration("window.max_future_skew", &w.max_future_skew),
            max_partition_delay_ms: c
                .duration("window.max_partition_delay", &w.max_partition_delay),
            max_cohorts_per_flag: w.max_cohorts_per_flag,
            partials_timeout_ms: c
                .duration("scale.partials_timeout", &config.scale.partials_timeout),
        };
        if w.max_cohorts_per_flag == 0 {
            c.err::<()>("window.max_cohorts_per_flag", "must be at least 1");
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut metrics = Vec::new();
        for (i, m) in config.metrics.iter().enumerate() {
            if names.insert(m.name.as_str(), i).is_some() {
                c.err::<()>(
                    format!("metrics[{i}].name"),
                    format!("duplicate metric name {:?}", m.name),
                );
            }
            // Keep indices aligned with config order even when a metric is broken.
            metrics.push(c.metric(i, m).unwrap_or(Metric {
                name: m.name.clone(),
                kind: MetricKind::Mean {
                    matcher: Matcher {
                        source: Source::Product,
                        conditions: Vec::new(),
                    },
                    field: NumField::Value,
                },
            }));
        }
        let mut flags = Vec::new();
        let mut keys = HashMap::new();
        for (i, f) in config.flags.iter().enumerate() {
            if keys.insert(f.key.as_str(), i).is_some() {
                c.err::<()>(
                    format!("flags[{i}].key"),
                    format!("duplicate flag key {:?}", f.key),
                );
            }
            if let Some(flag) = compile_flag(&mut c, i, f, &names, config) {
                flags.push(flag);
            }
        }
        if c.errors.is_empty() {
            Ok(Policy {
                window,
                metrics,
                flags,
            })
        } else {
            Err(ConfigErrors(c.errors))
        }
    }

    pub fn flag(&self, key: &str) -> Option<&Flag> {
        self.flags.iter().find(|f| f.key == key)
    }
}

fn compile_flag(
    c: &mut Checker,
    i: usize,
    f: &FlagConfig,
    names: &HashMap<&str, usize>,
    config: &Config,
) -> Option<Flag> {
    let path = format!("flags[{i}]");
    if f.key.is_empty() {
        c.err::<()>(format!("{path}.key"), "must not be empty");
    }
    if f.control.as_deref() == Some(f.treatment.as_str()) {
        c.err::<()>(format!("{path}.control"), "must differ from treatment");
    }
    for (j, attr) in f.cohort_by.iter().enumerate() {
        if attr.is_empty() || attr.contains([',', '=']) || attr == "*" {
            c.err::<()>(
                format!("{path}.cohort_by[{j}]"),
                format!("{attr:?} is not an attribute name"),
            );
        }
    }
    let unit = match f.unit.as_deref() {
        None | Some("user_id") => FieldRef::UserId,
        Some(u) => match u.strip_prefix("attributes.").filter(|a| !a.is_empty()) {
            Some(a) => FieldRef::Attribute(a.to_string()),
            None => c
                .err(
                    format!("{path}.unit"),
                    format!("{u:?} is not a unit field (user_id or attributes.NAME)"),
                )
                .unwrap_or(FieldRef::UserId),
        },
    };
    if f.max_cohorts == Some(0) {
        c.err::<()>(format!("{path}.max_cohorts"), "must be at least 1");
    }
    if f.ramp.is_empty() {
        c.err::<()>(format!("{path}.ramp"), "must list at least one percent");
    }
    for (j, p) in f.ramp.iter().enumerate() {
        if !(*p > 0.0 && *p <= 100.0) {
            c.err::<()>(
                format!("{path}.ramp[{j}]"),
                format!("{p} is not in (0, 100]"),
            );
        }
        if j > 0 && *p <= f.ramp[j - 1] {
            c.err::<()>(
                format!("{path}.ramp[{j}]"),
                "ramp must be strictly ascending",
            );
        }
    }
    if !f.ramp.contains(&f.start_percent) {
        c.err::<()>(
            format!("{path}.start_percent"),
            format!("{} is not a step of the ramp", f.start_percent),
        );
    }
    let manual_approval = match f.approval.as_str() {
        "manual" => true,
        "auto" => false,
        other => c.err(
            format!("{path}.approval"),
            format!("{other:?} is not manual or auto"),
        )?,
    };
    let advance_when = match f.advance_when.as_str() {
        "significant" => AdvanceWhen::Significant,
        "healthy" => AdvanceWhen::Healthy,
        other => c.err(
            format!("{path}.advance_when"),
            format!("{other:?} is not significant or healthy"),
        )?,
    };
    if advance_when == AdvanceWhen::Significant && f.success.is_empty() && !f.guardrails.is_empty()
    {
        c.err::<()>(
            format!("{path}.advance_when"),
            "\"significant\" needs at least one [[flags.success]] metric (or use \"healthy\")",
        );
    }
    let mut metric_ids: Vec<usize> = Vec::new();
    let mut slot_of = |m: usize| match metric_ids.iter().position(|&x| x == m) {
        Some(s) => s,
        None => {
            metric_ids.push(m);
            metric_ids.len() - 1
        }
    };
    let resolve = |c: &mut Checker, p: String, name: &str| match names.get(name) {
        Some(&m) => Some(m),
        None => c.err(p, format!("unknown metric {name:?}")),
    };
    let mut guardrails = Vec::new();
    // Per cohort with an override: the flag's guardrails with the override applied.
    let mut by_cohort: Vec<(String, Vec<Guardrail>)> = Vec::new();
    for (j, g) in f.guardrails.iter().enumerate() {
        let gp = format!("{path}.guardrails[{j}]");
        let metric = resolve(c, format!("{gp}.metric"), &g.metric);
        check_common(c, &gp, g.alpha, g.windows);
        let has_reference = f.control.is_some() || g.baseline.is_some();
        let base = check_guardrail(c, &gp, g, has_reference);
        let (Some(metric), Some(base)) = (metric, base) else {
            continue;
        };
        let slot = slot_of(metric);
        let build = |g: &GuardrailConfig, (severity, action, sequential)| Guardrail {
            metric,
            slot,
            max: g.max,
            min: g.min,
            max_relative_increase: g.max_relative_increase,
            max_relative_decrease: g.max_relative_decrease,
            alpha: g.alpha,
            windows: g.windows,
            min_samples: g.min_samples,
            severity,
            action,
            sequential,
            baseline: g.baseline.as_ref().map(|b| b.windows),
        };
        check_baseline(c, &gp, g, f.control.is_some(), &config.metrics[metric]);
        guardrails.push(build(g, base));
        for (k, o) in g.cohorts.iter().enumerate() {
            let op = format!("{gp}.cohorts[{k}]");
            if let Err(e) = check_cohort_name(&o.cohort, &f.cohort_by) {
                c.err::<()>(format!("{op}.cohort"), e);
                continue;
            }
            if g.cohorts[..k].iter().any(|p| p.cohort == o.cohort) {
                c.err::<()>(
                    format!("{op}.cohort"),
                    format!("{:?} is overridden twice for this guardrail", o.cohort),
                );
                continue;
            }
            let merged = GuardrailConfig {
                max: o.max.or(g.max),
                min: o.min.or(g.min),
                max_relative_increase: o.max_relative_increase.or(g.max_relative_increase),
                max_relative_decrease: o.max_relative_decrease.or(g.max_relative_decrease),
                windows: o.windows.unwrap_or(g.windows),
                min_samples: o.min_samples.unwrap_or(g.min_samples),
                severity: o.severity.clone().unwrap_or_else(|| g.severity.clone()),
                action: o.action.clone().unwrap_or_else(|| g.action.clone()),
                cohorts: Vec::new(),
                ..g.clone()
            };
            check_common(c, &op, merged.alpha, merged.windows);
            if let Some(kind) = check_guardrail(c, &op, &merged, has_reference) {
                let at = match by_cohort.iter().position(|(name, _)| *name == o.cohort) {
                    Some(i) => i,
                    None => {
                        // The guardrails before this one, as they are.
                        let before = guardrails[..guardrails.len() - 1].to_vec();
                        by_cohort.push((o.cohort.clone(), before));
                        by_cohort.len() - 1
                    }
                };
                by_cohort[at].1.push(build(&merged, kind));
            }
        }
        // Cohorts without an override of this guardrail keep it as it is.
        for (_, list) in &mut by_cohort {
            if list.len() < guardrails.len() {
                list.push(guardrails[guardrails.len() - 1].clone());
            }
        }
    }
    let mut success = Vec::new();
    for (j, s) in f.success.iter().enumerate() {
        let sp = format!("{path}.success[{j}]");
        let metric = resolve(c, format!("{sp}.metric"), &s.metric);
        check_common(c, &sp, s.alpha, s.windows);
        if f.control.is_none() {
            c.err::<()>(
                sp.clone(),
                "a success metric is tested against control: set the flag's control",
            );
        }
        if !(s.min_relative_change >= 0.0 && s.min_relative_change < 1.0) {
            c.err::<()>(format!("{sp}.min_relative_change"), "must be in [0, 1)");
        }
        let direction = match s.direction.as_str() {
            "increase" => Some(Direction::Increase),
            "decrease" => Some(Direction::Decrease),
            other => c.err(
                format!("{sp}.direction"),
                format!("{other:?} is not increase or decrease"),
            ),
        };
        if let (Some(metric), Some(direction)) = (metric, direction) {
            success.push(SuccessMetric {
                metric,
                slot: slot_of(metric),
                direction,
                alpha: s.alpha,
                windows: s.windows,
                min_samples: s.min_samples,
                margin: s.min_relative_change,
            });
        }
    }
    let used: Vec<&MetricConfig> = metric_ids.iter().map(|&m| &config.metrics[m]).collect();
    let legacy = serde_json::to_string(&(f, &used, &config.window.size)).unwrap_or_default();
    // What decides, without the prose: owner and descriptions do not change a decision.
    let mut decisive = f.clone();
    decisive.owner.clear();
    decisive.description = None;
    decisive.expires_at = None;
    decisive.environment = None;
    let decisive_metrics: Vec<MetricConfig> = used
        .iter()
        .map(|m| MetricConfig {
            description: None,
            ..(*m).clone()
        })
        .collect();
    let fingerprint = serde_json::to_string(&(&decisive, &decisive_metrics, &config.window.size))
        .unwrap_or_default();
    let expires_at_ms = match &f.expires_at {
        None => None,
        Some(t) => {
            let full = if t.len() == 10 {
                format!("{t}T00:00:00Z")
            } else {
                t.clone()
            };
            match crate::ingest::map::rfc3339_ms(&full) {
                Some(ms) => Some(ms),
                None => c.err(
                    format!("{path}.expires_at"),
                    format!("{t:?} is neither an RFC 3339 time nor a date (YYYY-MM-DD)"),
                )?,
            }
        }
    };
    Some(Flag {
        key: f.key.clone(),
        owner: f.owner.clone(),
        environment: f.environment.clone(),
        expires_at_ms,
        cohort_guardrails: by_cohort,
        treatment: f.treatment.clone(),
        control: f.control.clone(),
        cohort_by: f.cohort_by.clone(),
        unit,
        max_cohorts: f.max_cohorts,
        ramp: f.ramp.clone(),
        start_percent: f.start_percent,
        manual_approval,
        advance_when,
        guardrails,
        success,
        metric_ids,
        policy_version: stable_hash_hex(fingerprint.as_bytes())[..12].to_string(),
        legacy_policy_version: stable_hash_hex(legacy.as_bytes())[..12].to_string(),
    })
}

/// A guardrail's `baseline` (SPEC §4 "Policy depth"): only without control, only with
/// a relative bound, and a window count the ring's memory bound allows.
fn check_baseline(
    c: &mut Checker,
    gp: &str,
    g: &GuardrailConfig,
    has_control: bool,
    metric: &MetricConfig,
) {
    use crate::rules::baseline::{MAX_QUANTILE_WINDOWS, MAX_WINDOWS, MIN_WINDOWS};
    let Some(b) = &g.baseline else {
        return;
    };
    if has_control {
        c.err::<()>(
            format!("{gp}.baseline"),
            "only for a flag without control (with control, relative bounds are tested against it)",
        );
    }
    if g.max_relative_increase.is_none() && g.max_relative_decrease.is_none() {
        c.err::<()>(
            format!("{gp}.baseline"),
            "a baseline is what a relative bound is tested against: set max_relative_increase or max_relative_decrease",
        );
    }
    let max = if metric.kind == "quantile" {
        MAX_QUANTILE_WINDOWS
    } else {
        MAX_WINDOWS
    };
    if !(MIN_WINDOWS..=max).contains(&b.windows) {
        let why = if metric.kind == "quantile" {
            " for a quantile metric (a histogram is kept per window)"
        } else {
            ""
        };
        c.err::<()>(
            format!("{gp}.baseline.windows"),
            format!("{} is not in [{MIN_WINDOWS}, {max}]{why}", b.windows),
        );
    }
}

/// A guardrail's bounds, severity, test and action (its own, or with a cohort's override
/// applied); errors under `gp`. `has_reference`: the flag has control or the guardrail
/// a baseline, so a relative bound can be tested.
fn check_guardrail(
    c: &mut Checker,
    gp: &str,
    g: &GuardrailConfig,
    has_reference: bool,
) -> Option<(Severity, Action, bool)> {
    if g.max.is_none()
        && g.min.is_none()
        && g.max_relative_increase.is_none()
        && g.max_relative_decrease.is_none()
    {
        c.err::<()>(
            gp.to_string(),
            "needs a bound: max, min, max_relative_increase or max_relative_decrease",
        );
    }
    for (name, v) in [
        ("max_relative_increase", g.max_relative_increase),
        ("max_relative_decrease", g.max_relative_decrease),
    ] {
        if let Some(v) = v {
            if !has_reference {
                c.err::<()>(
                    format!("{gp}.{name}"),
                    "a relative bound needs the flag's control variant, or a baseline (baseline = { windows = 8 }: the cohort's previous windows)",
                );
            }
            if !(v >= 0.0 && v.is_finite()) || (name == "max_relative_decrease" && v >= 1.0) {
                c.err::<()>(
                    format!("{gp}.{name}"),
                    format!("{v} is not a valid relative change"),
                );
            }
        }
    }
    let severity = match g.severity.as_str() {
        "critical" => Some(Severity::Critical),
        "warning" => Some(Severity::Warning),
        other => c.err(
            format!("{gp}.severity"),
            format!("{other:?} is not critical or warning"),
        ),
    };
    let sequential = match g.test.as_str() {
        "sequential" => Some(true),
        "per_window" => Some(false),
        other => c.err(
            format!("{gp}.test"),
            format!("{other:?} is not sequential or per_window"),
        ),
    };
    let action = match g.action.as_str() {
        "pause" => Some(Action::Pause),
        "rollback" => Some(Action::Rollback),
        other => c.err(
            format!("{gp}.action"),
            format!("{other:?} is not pause or rollback"),
        ),
    };
    Some((severity?, action?, sequential?))
}

/// A cohort name as the windows build it (§4): `*`, `other`, or `name=value` pairs of
/// exactly the flag's `cohort_by`, sorted by name, joined with commas.
fn check_cohort_name(cohort: &str, cohort_by: &[String]) -> Result<(), String> {
    if cohort == "*" || cohort == crate::window::cohort::OTHER {
        return Ok(());
    }
    if cohort_by.is_empty() {
        return Err(format!(
            "{cohort:?}: the flag has no cohort_by, so its only cohort is \"*\""
        ));
    }
    let mut want: Vec<&str> = cohort_by.iter().map(String::as_str).collect();
    want.sort_unstable();
    let names: Vec<&str> = cohort
        .split(',')
        .map(|pair| pair.split_once('=').map_or("", |(k, _)| k))
        .collect();
    if names != want || cohort.split(',').any(|p| p.ends_with('=')) {
        return Err(format!(
            "{cohort:?} is not a cohort of this flag: expected {} (sorted by name, joined with commas)",
            want.iter()
                .map(|n| format!("{n}=VALUE"))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    Ok(())
}

fn check_common(c: &mut Checker, path: &str, alpha: f64, windows: u32) {
    if !(alpha > 0.0 && alpha < 1.0) {
        c.err::<()>(format!("{path}.alpha"), format!("{alpha} is not in (0, 1)"));
    }
    if windows < 1 {
        c.err::<()>(format!("{path}.windows"), "must be at least 1");
    }
}

/// Loads, parses and compiles a config file; the one call `run`, `replay` and `check` make.
pub fn load(path: &std::path::Path) -> Result<(Config, Policy), ConfigErrors> {
    let config = Config::load(path)?;
    let policy = Policy::compile(&config);
    // Inputs are checked too, so that one run reports every error.
    let inputs = crate::ingest::input::compile(&config);
    match (policy, inputs) {
        (Ok(policy), Ok(_)) => Ok((config, policy)),
        (policy, inputs) => {
            let mut errors = policy.err().map(|e| e.0).unwrap_or_default();
            errors.extend(inputs.err().unwrap_or_default());
            Err(ConfigErrors(errors))
        }
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;
    use crate::config::Config;

    fn versions(text: &str) -> Vec<(String, String)> {
        let policy = Policy::compile(&Config::parse(text).unwrap()).unwrap();
        policy
            .flags
            .iter()
            .map(|f| (f.policy_version.clone(), f.legacy_policy_version.clone()))
            .collect()
    }

    const EXAMPLE: &str = include_str!("../config/guardrail.toml");

    #[test]
    fn prose_edits_keep_the_version_and_decisive_edits_change_it() {
        let base = versions(EXAMPLE);
        // Owner and descriptions (of the flag and of its metrics) are prose.
        let prose = EXAMPLE
            .replace(
                "owner = \"payments-squad\"",
                "owner = \"checkout-squad\"\ndescription = \"a typo fixed\"",
            )
            .replace(
                "name = \"checkout_error_rate\"   # checkout errors per started checkout",
                "name = \"checkout_error_rate\"\ndescription = \"errors per started checkout\"",
            );
        assert_ne!(prose, EXAMPLE, "the edits applied");
        let edited = versions(&prose);
        assert_eq!(
            edited[0].0, base[0].0,
            "owner/description edits keep the version"
        );
        assert_ne!(edited[0].1, base[0].1, "the pre-0.2 version hashed them");
        // A threshold decides.
        let stricter = EXAMPLE.replace(
            "max_relative_increase = 0.10 # vs control",
            "max_relative_increase = 0.05 # vs control",
        );
        assert_ne!(stricter, EXAMPLE);
        assert_ne!(versions(&stricter)[0].0, base[0].0);
        // The other flag is untouched by either edit.
        assert_eq!(versions(&stricter)[1], base[1]);
        // Expiry and environment are about the flag, not its decisions.
        let labelled = EXAMPLE.replace(
            "owner = \"payments-squad\"",
            "owner = \"payments-squad\"\nexpires_at = \"2027-03-31\"\nenvironment = \"production\"",
        );
        assert_ne!(labelled, EXAMPLE);
        assert_eq!(versions(&labelled)[0].0, base[0].0);
        // A cohort's own threshold decides.
        let overridden = EXAMPLE.replace(
            "max_relative_increase = 0.10 # vs control, one-sided test at alpha",
            "max_relative_increase = 0.10 # vs control, one-sided test at alpha\n  cohorts = [{ cohort = \"platform=ios\", max_relative_increase = 0.05 }]",
        );
        assert_ne!(overridden, EXAMPLE);
        assert_ne!(versions(&overridden)[0].0, base[0].0);
    }

    #[test]
    fn cohort_overrides_and_expiry_are_checked_with_their_paths() {
        let errors = |edit: &str| -> Vec<String> {
            let text = EXAMPLE.replace(
                "max_relative_increase = 0.10 # vs control, one-sided test at alpha",
                &format!(
                    "max_relative_increase = 0.10 # vs control, one-sided test at alpha\n  {edit}"
                ),
            );
            assert_ne!(text, EXAMPLE);
            match Policy::compile(&Config::parse(&text).unwrap()) {
                Ok(_) => Vec::new(),
                Err(e) => {
                    e.0.iter()
                        .map(|e| format!("{}: {}", e.path, e.message))
                        .collect()
                }
            }
        };
        assert!(
            errors(r#"cohorts = [{ cohort = "platform=ios", max = 0.05, severity = "warning" }]"#)
                .is_empty()
        );
        assert!(errors(r#"cohorts = [{ cohort = "*", windows = 1 }, { cohort = "other", action = "rollback" }]"#).is_empty());
        let e = errors(r#"cohorts = [{ cohort = "region=eu", max = 0.05 }]"#);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("flags[0].guardrails[0].cohorts[0].cohort: \"region=eu\" is not a cohort of this flag: expected platform=VALUE"), "{e:?}");
        let e = errors(
            r#"cohorts = [{ cohort = "platform=ios", severity = "fatal", windows = 0 }, { cohort = "platform=ios", max = 1.0 }]"#,
        );
        assert_eq!(
            e,
            vec![
                "flags[0].guardrails[0].cohorts[0].windows: must be at least 1".to_string(),
                "flags[0].guardrails[0].cohorts[0].severity: \"fatal\" is not critical or warning".to_string(),
                "flags[0].guardrails[0].cohorts[1].cohort: \"platform=ios\" is overridden twice for this guardrail".to_string(),
            ]
        );
        let unknown = EXAMPLE.replace(
            "max_relative_increase = 0.10 # vs control, one-sided test at alpha",
            "max_relative_increase = 0.10 # vs control, one-sided test at alpha\n  cohorts = [{ cohort = \"platform=ios\", bogus = 1 }]",
        );
        let e = Config::parse(&unknown).unwrap_err();
        assert!(e.0[0].path.contains("cohorts"), "{:?}", e.0);
        let bad_date = EXAMPLE.replace(
            "owner = \"payments-squad\"",
            "owner = \"payments-squad\"\nexpires_at = \"next spring\"",
        );
        let e = Policy::compile(&Config::parse(&bad_date).unwrap()).unwrap_err();
        assert_eq!(e.0[0].path, "flags[0].expires_at");
        let dated = EXAMPLE.replace(
            "owner = \"payments-squad\"",
            "owner = \"payments-squad\"\nexpires_at = \"2027-03-31\"",
        );
        let p = Policy::compile(&Config::parse(&dated).unwrap()).unwrap();
        let t = crate::ingest::map::rfc3339_ms("2027-03-31T00:00:00Z").unwrap();
        assert_eq!(p.flags[0].expires_at_ms, Some(t));
        assert!(!p.flags[0].expired(t - 1) && p.flags[0].expired(t));
        assert!(!p.flags[1].expired(i64::MAX));
    }

    /// The pre-0.2 versions of the example policy, as `guardrail check` printed them
    /// before this change: state published under them is still restored.
    #[test]
    fn legacy_versions_are_the_ones_earlier_builds_published() {
        // The example as 0.1 shipped it: no `max_cohorts`/`unit`, the error-rate
        // guardrail per window.
        let old: String = EXAMPLE
            .lines()
            .filter(|l| !l.starts_with("max_cohorts =") && !l.starts_with("unit ="))
            .map(|l| match l.trim_start().starts_with("action = \"pause\"") {
                true => format!("{l}\n  test = \"per_window\""),
                false => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let v = versions(&old);
        assert_eq!(v[0].1, "dd646e63266a");
        assert_eq!(v[1].1, "d5f73581b4b1");
    }
}
