//! `guardrail apply`: a subscriber of `flag-commands` that applies each command to an
//! OpenFeature flagd flag-definition file (SPEC §9).
//!
//! [`Applier`] is the synchronous core: a command (or an approval) in, the file edited
//! in memory and what was applied out; [`run`] is its Kafka shell, which writes the
//! file atomically, publishes to `guardrail-applied` and only then commits offsets.
//!
//! - PAUSE and ROLLBACK set the cohort's percent to `to_percent` (PAUSE keeps the
//!   percent it had and pins it: later `*` ADVANCEs no longer move that cohort; a
//!   ROLLBACK serves it the control). ADVANCE sets `to_percent`. HOLD pins the cohort at
//!   the percent it is served and records the command. A ROLLBACK of `*` serves every
//!   cohort the control.
//! - Idempotent: what was applied is kept in the flag's metadata ([`flagd::STATE_KEY`]),
//!   written by the same rename as the change. A command whose id is recorded is a
//!   duplicate; one older (by `window_end`) than what its cohort already has is
//!   superseded. Neither changes the file.
//! - An ADVANCE with `requires_approval` waits for an [`Approval`] with its id; its offset
//!   is not committed meanwhile, so a restart reads it again. A later PAUSE or ROLLBACK
//!   of the cohort supersedes it. PAUSE, ROLLBACK and HOLD never wait.

pub mod flagd;
mod run;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::Action;
use crate::policy::{FieldRef, Policy};
use crate::records::FlagCommand;
use crate::window::cohort::ALL;
use flagd::{AppliedCohort, Arms, FlagState, FlagdError, FlagdFile};

pub use run::{Counters, Options, approve, run};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Flagd(#[from] FlagdError),
    #[error(
        "flag {0:?}: the config names no control variant and the flagd file has no defaultVariant to use as one"
    )]
    NoControl(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Config(String),
}

/// Where a command was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// A value of `flag-approvals` (JSON; key: flag key, NUL, command id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub command_id: String,
    pub approved_by: String,
    /// Epoch millis.
    pub approved_at: i64,
}

/// A value of `guardrail-applied` (JSON; key: flag key, NUL, cohort; compacted): what a
/// cohort is served now, and the command that made it so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub flag_key: String,
    pub cohort: String,
    /// Treatment percent the cohort is served.
    pub percent: f64,
    pub action: String,
    pub command_id: String,
    pub window_end: i64,
    /// Epoch millis.
    pub applied_at: i64,
    pub approved_by: Option<String>,
}

/// What became of one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Applied now (the file changed, HOLD aside).
    Applied(Applied),
    /// Applied before: the cohort's current record, to publish again.
    Duplicate(Applied),
    /// Waits for its approval.
    Pending,
    /// Older than what its cohort already has.
    Superseded,
    /// Not applicable to the file: why.
    Skipped(String),
}

/// A managed flag as the config describes it.
#[derive(Debug, Clone)]
struct Spec {
    treatment: String,
    control: Option<String>,
    cohort_by: Vec<String>,
    bucket_by: String,
    start_percent: f64,
}

/// The synchronous core of `guardrail apply`.
pub struct Applier {
    file: FlagdFile,
    specs: HashMap<String, Spec>,
    approvals: HashMap<String, Approval>,
    pending: Vec<(FlagCommand, Position)>,
    changed: bool,
}

impl Applier {
    /// `text` is the flagd file's current content (empty: a new file).
    pub fn new(text: &str, policy: &Policy) -> Result<Applier, FlagdError> {
        let specs = policy
            .flags
            .iter()
            .map(|f| {
                let bucket_by = match &f.unit {
                    FieldRef::Attribute(name) => name.clone(),
                    _ => "targetingKey".to_string(),
                };
                let spec = Spec {
                    treatment: f.treatment.clone(),
                    control: f.control.clone(),
                    cohort_by: f.cohort_by.clone(),
                    bucket_by,
                    start_percent: f.start_percent,
                };
                (f.key.clone(), spec)
            })
            .collect();
        Ok(Applier {
            file: FlagdFile::parse(text)?,
            specs,
            approvals: HashMap::new(),
            pending: Vec::new(),
            changed: false,
        })
    }

    /// Applies a command read at `at`, or holds it for its approval.
    pub fn command(
        &mut self,
        cmd: FlagCommand,
        at: Position,
        now: i64,
    ) -> Result<Outcome, ApplyError> {
        let Some(spec) = self.specs.get(&cmd.flag_key) else {
            return Ok(Outcome::Skipped("the flag is not in the config".into()));
        };
        if cmd.cohort != ALL && flagd::cohort_condition(&cmd.cohort, &spec.cohort_by).is_none() {
            return Ok(Outcome::Skipped(format!(
                "cohort {:?} is not a condition on {:?}",
                cmd.cohort, spec.cohort_by
            )));
        }
        let start = spec.start_percent;
        let state = match self.file.get(&cmd.flag_key)? {
            Some(flag) => FlagState::read(&flag).map_err(|detail| FlagdError::Flag {
                flag: cmd.flag_key.clone(),
                detail,
            })?,
            None => FlagState::default(),
        };
        if let Some(c) = state.cohorts.get(&cmd.cohort) {
            if c.recent.contains(&cmd.command_id) {
                return Ok(Outcome::Duplicate(record(&state, &cmd, c, start)));
            }
            let mark = if cmd.action == Action::Hold {
                c.seen_window
            } else {
                c.set_at_window
            };
            if cmd.window_end <= mark {
                return Ok(Outcome::Superseded);
            }
        }
        if cmd.action == Action::Advance && cmd.requires_approval {
            let Some(approval) = self.approvals.get(&cmd.command_id).cloned() else {
                if !self
                    .pending
                    .iter()
                    .any(|(p, _)| p.command_id == cmd.command_id)
                {
                    self.pending.push((cmd, at));
                }
                return Ok(Outcome::Pending);
            };
            return self.apply(&cmd, Some(approval.approved_by), now);
        }
        self.apply(&cmd, None, now)
    }

    /// Records an approval; applies the pending command it approves, if any.
    pub fn approval(
        &mut self,
        a: Approval,
        now: i64,
    ) -> Result<Option<(Position, Outcome)>, ApplyError> {
        let id = a.command_id.clone();
        let by = a.approved_by.clone();
        self.approvals.insert(id.clone(), a);
        let Some(i) = self.pending.iter().position(|(c, _)| c.command_id == id) else {
            return Ok(None);
        };
        let (cmd, at) = self.pending.remove(i);
        Ok(Some((at, self.apply(&cmd, Some(by), now)?)))
    }

    /// Commands waiting for approval: their offsets must not be committed.
    pub fn pending(&self) -> impl Iterator<Item = (&FlagCommand, Position)> {
        self.pending.iter().map(|(c, p)| (c, *p))
    }

    /// The file's new text, if it changed since the last call.
    pub fn take_changed(&mut self) -> Option<String> {
        std::mem::take(&mut self.changed).then(|| self.file.render())
    }

    /// The file's text now.
    pub fn render(&self) -> String {
        self.file.render()
    }

    fn arms(&self, key: &str, existing: Option<&Map<String, Value>>) -> Result<Arms, ApplyError> {
        let spec = &self.specs[key];
        let control = match (&spec.control, existing) {
            (Some(c), _) => c.clone(),
            (None, Some(flag)) => flag
                .get("defaultVariant")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| ApplyError::NoControl(key.into()))?,
            (None, None) => return Err(ApplyError::NoControl(key.into())),
        };
        Ok(Arms {
            treatment: spec.treatment.clone(),
            control,
            cohort_by: spec.cohort_by.clone(),
            bucket_by: spec.bucket_by.clone(),
            start_percent: spec.start_percent,
        })
    }

    fn apply(
        &mut self,
        cmd: &FlagCommand,
        approved_by: Option<String>,
        now: i64,
    ) -> Result<Outcome, ApplyError> {
        let key = cmd.flag_key.as_str();
        let existing = self.file.get(key)?;
        let arms = self.arms(key, existing.as_ref())?;
        if existing.is_none() {
            self.file.insert(key, flagd::new_flag(&arms));
        }
        let flag = self.file.edit(key)?.expect("present or inserted above");
        flagd::check_variants(key, flag, &arms)?;
        let mut state = FlagState::read(flag).map_err(|detail| FlagdError::Flag {
            flag: key.into(),
            detail,
        })?;
        let current = state.percent_of(&cmd.cohort, arms.start_percent);
        let c = state
            .cohorts
            .entry(cmd.cohort.clone())
            .or_insert_with(|| AppliedCohort {
                percent: current,
                action: String::new(),
                command_id: String::new(),
                set_at_window: i64::MIN,
                seen_window: i64::MIN,
                applied_at: now,
                approved_by: None,
                recent: Vec::new(),
            });
        if cmd.action != Action::Hold {
            c.percent = cmd.to_percent.clamp(0.0, 100.0);
            c.set_at_window = cmd.window_end;
        }
        c.seen_window = c.seen_window.max(cmd.window_end);
        c.action = cmd.action.as_str().to_string();
        c.command_id = cmd.command_id.clone();
        c.applied_at = now;
        c.approved_by = approved_by;
        c.remember(&cmd.command_id);
        let set_at = c.set_at_window;
        state.write(flag);
        flag.insert("targeting".into(), flagd::targeting(&state, &arms));
        self.changed = true;
        // A pending ADVANCE older than what the cohort now has will never apply.
        self.pending.retain(|(p, _)| {
            !(p.flag_key == cmd.flag_key && p.cohort == cmd.cohort && p.window_end <= set_at)
        });
        let c = &state.cohorts[&cmd.cohort];
        Ok(Outcome::Applied(record(&state, cmd, c, arms.start_percent)))
    }
}

/// The applied-state record of a command's cohort.
fn record(state: &FlagState, cmd: &FlagCommand, c: &AppliedCohort, start: f64) -> Applied {
    Applied {
        flag_key: cmd.flag_key.clone(),
        cohort: cmd.cohort.clone(),
        percent: state.percent_of(&cmd.cohort, start),
        action: c.action.clone(),
        command_id: c.command_id.clone(),
        window_end: c.seen_window,
        applied_at: c.applied_at,
        approved_by: c.approved_by.clone(),
    }
}

#[cfg(test)]
mod tests;
