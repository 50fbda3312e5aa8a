//! The flagd flag-definition file (schema <https://flagd.dev/schema/v0/flags.json>) as
//! `guardrail apply` edits it, and the targeting rule it writes for a managed flag.
//!
//! The file is kept as its members' raw JSON text, in file order: a flag guardrail does
//! not manage (and every top-level member but `flags`, such as `$evaluators` and
//! `metadata`) is written back byte for byte. A managed flag is parsed when a command
//! first touches it and re-serialised; its unknown fields are kept.
//!
//! A managed flag's targeting is a JsonLogic `if` chain: one branch per cohort that has
//! a percent of its own (its `cohort_by` attributes matched with `==`), each a
//! `fractional` split `[treatment, percent], [control, 100 - percent]` bucketed on the
//! flag key and the randomisation unit (the targeting key for `user_id`); the fall-through
//! is the `*` percent. The treatment is always listed first, so raising a percent keeps
//! every unit that was in treatment there (flagd's buckets are cumulative).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::window::cohort::{ALL, OTHER, UNKNOWN};

pub const SCHEMA_URL: &str = "https://flagd.dev/schema/v0/flags.json";

/// The flag metadata key holding what guardrail applied to the flag, as a JSON string
/// ([`FlagState`]): flagd's metadata values are strings, numbers or booleans.
pub const STATE_KEY: &str = "guardrail.state";

/// Command ids remembered per cohort (older re-deliveries are caught by window order).
const RECENT_IDS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum FlagdError {
    #[error("not a flagd flag file: {0}")]
    Invalid(String),
    #[error("flag {flag:?}: {detail}")]
    Flag { flag: String, detail: String },
}

/// A JSON object's members as raw text, in order.
struct Ordered(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ordered, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = m.next_entry::<String, Box<RawValue>>()? {
                    members.push(member);
                }
                Ok(Ordered(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// One flag of the file: untouched text, or parsed because guardrail edited it.
#[derive(Debug)]
enum Entry {
    Raw(Box<RawValue>),
    Edited(Map<String, Value>),
}

/// A flagd flag file: top-level members and flags in file order.
#[derive(Debug)]
pub struct FlagdFile {
    /// Every top-level member; the one named `flags` is rendered from `flags`.
    top: Vec<(String, Box<RawValue>)>,
    flags: Vec<(String, Entry)>,
}

impl FlagdFile {
    /// An empty file: the `$schema` and no flags.
    pub fn new() -> FlagdFile {
        let raw = |v: &str| RawValue::from_string(v.to_string()).expect("literal JSON");
        FlagdFile {
            top: vec![
                ("$schema".into(), raw(&format!("\"{SCHEMA_URL}\""))),
                ("flags".into(), raw("{}")),
            ],
            flags: Vec::new(),
        }
    }

    /// Parses a file's text; empty text is an empty file.
    pub fn parse(text: &str) -> Result<FlagdFile, FlagdError> {
        if text.trim().is_empty() {
            return Ok(FlagdFile::new());
        }
        let Ordered(mut top) =
            serde_json::from_str(text).map_err(|e| FlagdError::Invalid(e.to_string()))?;
        let flags = match top.iter().find(|(k, _)| k == "flags") {
            Some((_, raw)) => {
                let Ordered(flags) = serde_json::from_str(raw.get()).map_err(|e| {
                    FlagdError::Invalid(format!(
                        "\"flags\" must be an object of flags by key ({e})"
                    ))
                })?;
                flags.into_iter().map(|(k, v)| (k, Entry::Raw(v))).collect()
            }
            None => {
                let empty = RawValue::from_string("{}".into()).expect("literal JSON");
                top.push(("flags".into(), empty));
                Vec::new()
            }
        };
        Ok(FlagdFile { top, flags })
    }

    /// A copy of the flag's definition (the file keeps its text); `None` if absent.
    pub fn get(&self, key: &str) -> Result<Option<Map<String, Value>>, FlagdError> {
        let Some((_, entry)) = self.flags.iter().find(|(k, _)| k == key) else {
            return Ok(None);
        };
        match entry {
            Entry::Edited(m) => Ok(Some(m.clone())),
            Entry::Raw(raw) => match serde_json::from_str(raw.get()) {
                Ok(Value::Object(m)) => Ok(Some(m)),
                _ => Err(FlagdError::Flag {
                    flag: key.into(),
                    detail: "its definition is not a JSON object".into(),
                }),
            },
        }
    }

    /// The flag's definition, parsed for editing; `None` if the file has no such flag.
    pub fn edit(&mut self, key: &str) -> Result<Option<&mut Map<String, Value>>, FlagdError> {
        let Some((_, entry)) = self.flags.iter_mut().find(|(k, _)| k == key) else {
            return Ok(None);
        };
        if let Entry::Raw(raw) = entry {
            let parsed = match serde_json::from_str(raw.get()) {
                Ok(Value::Object(m)) => m,
                _ => {
                    return Err(FlagdError::Flag {
                        flag: key.into(),
                        detail: "its definition is not a JSON object".into(),
                    });
                }
            };
            *entry = Entry::Edited(parsed);
        }
        match entry {
            Entry::Edited(m) => Ok(Some(m)),
            Entry::Raw(_) => unreachable!("converted above"),
        }
    }

    /// Adds a flag at the end of `flags`.
    pub fn insert(&mut self, key: &str, definition: Map<String, Value>) {
        self.flags
            .push((key.to_string(), Entry::Edited(definition)));
    }

    /// The file's text: two-space indentation; untouched members as they were.
    pub fn render(&self) -> String {
        let key = |k: &str| serde_json::to_string(k).unwrap_or_default();
        let mut out = String::from("{");
        for (i, (k, raw)) in self.top.iter().enumerate() {
            out.push_str(if i == 0 { "\n  " } else { ",\n  " });
            out.push_str(&key(k));
            out.push_str(": ");
            if k != "flags" {
                out.push_str(raw.get());
                continue;
            }
            if self.flags.is_empty() {
                out.push_str("{}");
                continue;
            }
            out.push('{');
            for (j, (name, entry)) in self.flags.iter().enumerate() {
                out.push_str(if j == 0 { "\n    " } else { ",\n    " });
                out.push_str(&key(name));
                out.push_str(": ");
                match entry {
                    Entry::Raw(raw) => out.push_str(raw.get()),
                    Entry::Edited(m) => {
                        let pretty = serde_json::to_string_pretty(m).unwrap_or_default();
                        out.push_str(&pretty.replace('\n', "\n    "));
                    }
                }
            }
            out.push_str("\n  }");
        }
        out.push_str("\n}\n");
        out
    }
}

impl Default for FlagdFile {
    fn default() -> Self {
        FlagdFile::new()
    }
}

/// What guardrail applied to one flag, kept in the flag's metadata ([`STATE_KEY`]) so
/// that the change and the record of it are written by the same rename.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlagState {
    /// By cohort name (`*` = all traffic).
    pub cohorts: BTreeMap<String, AppliedCohort>,
}

/// The newest command applied to one cohort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedCohort {
    /// Treatment percent this cohort is served.
    pub percent: f64,
    /// The newest command's action (HOLD included).
    pub action: String,
    pub command_id: String,
    /// `window_end` of the newest command that set the percent (ADVANCE, PAUSE,
    /// ROLLBACK, and the HOLD that pinned it): an older one is superseded.
    pub set_at_window: i64,
    /// `window_end` of the newest command recorded, HOLD included.
    pub seen_window: i64,
    /// Wall clock when applied, epoch millis.
    pub applied_at: i64,
    #[serde(default)]
    pub approved_by: Option<String>,
    /// The last command ids applied to this cohort, oldest first.
    #[serde(default)]
    pub recent: Vec<String>,
}

impl AppliedCohort {
    pub fn remember(&mut self, command_id: &str) {
        self.recent.push(command_id.to_string());
        let extra = self.recent.len().saturating_sub(RECENT_IDS);
        self.recent.drain(..extra);
    }
}

impl FlagState {
    /// The state in a flag's metadata (empty if none).
    pub fn read(flag: &Map<String, Value>) -> Result<FlagState, String> {
        match flag
            .get("metadata")
            .and_then(|m| m.get(STATE_KEY))
            .and_then(Value::as_str)
        {
            Some(text) => serde_json::from_str(text).map_err(|e| format!("{STATE_KEY}: {e}")),
            None => Ok(FlagState::default()),
        }
    }

    /// Writes the state into the flag's metadata, keeping its other entries.
    pub fn write(&self, flag: &mut Map<String, Value>) {
        let text = serde_json::to_string(self).unwrap_or_default();
        let metadata = flag
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !metadata.is_object() {
            *metadata = Value::Object(Map::new());
        }
        if let Value::Object(m) = metadata {
            m.insert(STATE_KEY.into(), Value::String(text));
        }
    }

    /// The percent served to all traffic: the `*` cohort's, else the flag's start.
    pub fn all_traffic(&self, start_percent: f64) -> f64 {
        self.cohorts.get(ALL).map_or(start_percent, |c| c.percent)
    }

    /// The percent a cohort is served now.
    pub fn percent_of(&self, cohort: &str, start_percent: f64) -> f64 {
        if self.rolled_back() {
            return 0.0;
        }
        match self.cohorts.get(cohort) {
            Some(c) => c.percent,
            None => self.all_traffic(start_percent),
        }
    }

    /// All traffic rolled back: every cohort is served the control.
    pub fn rolled_back(&self) -> bool {
        self.cohorts
            .get(ALL)
            .is_some_and(|c| c.action == "ROLLBACK")
    }
}

/// What decides a managed flag's targeting besides its state.
#[derive(Debug, Clone)]
pub struct Arms {
    pub treatment: String,
    pub control: String,
    /// The attributes cohorts are named by (`cohort_by`).
    pub cohort_by: Vec<String>,
    /// The evaluation-context field units are bucketed on: `targetingKey` for
    /// `unit = "user_id"`, else the attribute's name.
    pub bucket_by: String,
    pub start_percent: f64,
}

/// Integer `fractional` weights for a treatment percent: out of 100 for whole percents
/// (what every flagd version reads), else out of 10,000 (0.01% steps; relative weights,
/// flagd since 0.9 and the in-process providers since).
pub fn weights(percent: f64) -> (u64, u64) {
    let p = percent.clamp(0.0, 100.0);
    if p.fract() == 0.0 {
        (p as u64, 100 - p as u64)
    } else {
        let t = (p * 100.0).round() as u64;
        (t, 10_000 - t)
    }
}

fn split(arms: &Arms, percent: f64) -> Value {
    let (t, c) = weights(percent);
    json!({"fractional": [
        {"cat": [{"var": "$flagd.flagKey"}, {"var": arms.bucket_by}]},
        [arms.treatment, t],
        [arms.control, c],
    ]})
}

/// The JsonLogic condition matching a cohort's events, or `None` for a cohort no
/// condition names: `other` (cohorts beyond the cap) or an attribute not in `cohort_by`.
/// `name=unknown` is the engine's name for a missing attribute: it matches a missing
/// attribute or the value `unknown`.
pub fn cohort_condition(cohort: &str, cohort_by: &[String]) -> Option<Value> {
    if cohort == ALL || cohort == OTHER || cohort.is_empty() {
        return None;
    }
    let mut terms = Vec::new();
    for pair in cohort.split(',') {
        let (attr, value) = pair.split_once('=')?;
        if !cohort_by.iter().any(|a| a == attr) {
            return None;
        }
        let equals = json!({"==": [{"var": attr}, value]});
        terms.push(if value == UNKNOWN {
            json!({"or": [{"!": [{"var": attr}]}, equals]})
        } else {
            equals
        });
    }
    match terms.len() {
        0 => None,
        1 => terms.pop(),
        _ => Some(json!({ "and": terms })),
    }
}

/// The flag's targeting for its state: see the module docs.
pub fn targeting(state: &FlagState, arms: &Arms) -> Value {
    let fall_through = split(arms, state.percent_of(ALL, arms.start_percent));
    if state.rolled_back() {
        return fall_through;
    }
    let mut chain = Vec::new();
    for (cohort, applied) in &state.cohorts {
        if let Some(condition) = cohort_condition(cohort, &arms.cohort_by) {
            chain.push(condition);
            chain.push(split(arms, applied.percent));
        }
    }
    if chain.is_empty() {
        return fall_through;
    }
    chain.push(fall_through);
    json!({ "if": chain })
}

/// A new flag's definition: ENABLED, the config's two variants (booleans when they are
/// `on` and `off`, else strings equal to their names), the control as default.
pub fn new_flag(arms: &Arms) -> Map<String, Value> {
    let boolean = |v: &str| match v {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    };
    let variants = match (boolean(&arms.treatment), boolean(&arms.control)) {
        (Some(t), Some(c)) if t != c => {
            json!({ arms.treatment.clone(): t, arms.control.clone(): c })
        }
        _ => json!({ arms.treatment.clone(): arms.treatment, arms.control.clone(): arms.control }),
    };
    let mut m = Map::new();
    m.insert("state".into(), json!("ENABLED"));
    m.insert("variants".into(), variants);
    m.insert("defaultVariant".into(), json!(arms.control));
    m
}

/// Checks that an existing flag has both variants the config names.
pub fn check_variants(key: &str, flag: &Map<String, Value>, arms: &Arms) -> Result<(), FlagdError> {
    let variants = flag.get("variants").and_then(Value::as_object);
    for (role, name) in [("treatment", &arms.treatment), ("control", &arms.control)] {
        if !variants.is_some_and(|v| v.contains_key(name)) {
            return Err(FlagdError::Flag {
                flag: key.into(),
                detail: format!(
                    "has no variant {name:?} (the config's {role}): add it to the flagd file or fix [[flags]]"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
