//! The audit trail (SPEC §10): one JSON record per policy proposal, approval,
//! rejection, seeding and activation, and per command, on the `guardrail-audit` topic
//! (keyed by flag) and at `/api/flags/{key}/history`.
//!
//! Who writes what: `guardrail policy propose|approve|reject` write their records with
//! the policy record they describe; the engine writes `seeded` and `activated` when a
//! version becomes the one it judges with, and `command` for every command it
//! publishes (in the window close's transaction under exactly-once).

use serde::{Deserialize, Serialize};

use crate::records::FlagCommand;

/// Schema tag of [`AuditRecord`] (JSON).
pub const AUDIT_SCHEMA: &str = "guardrail.audit.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A policy version was proposed (`guardrail policy propose`).
    Proposed,
    /// A proposal was approved: it becomes the flag's active version.
    Approved,
    /// A proposal was rejected.
    Rejected,
    /// The config file's version was published as the flag's first active version.
    Seeded,
    /// The engine judges with this version from `effective_from` on.
    Activated,
    /// The engine published a command.
    Command,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Proposed => "proposed",
            AuditKind::Approved => "approved",
            AuditKind::Rejected => "rejected",
            AuditKind::Seeded => "seeded",
            AuditKind::Activated => "activated",
            AuditKind::Command => "command",
        }
    }
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// [`AUDIT_SCHEMA`].
    pub schema: String,
    /// Deterministic: `{kind}:{flag}:{version}` for policy entries (`:{window}` for an
    /// activation), the `command_id` for commands. Re-published entries repeat it.
    pub id: String,
    /// When it happened (epoch ms).
    pub time: i64,
    pub kind: AuditKind,
    pub flag: String,
    /// Who: a person (`--by`), or `guardrail` (the engine) for seeding, activations
    /// and commands.
    pub actor: String,
    /// The policy document's version (its digest, SPEC §10) this entry is about, or
    /// the one a command was decided under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The flag's decisive policy version (`policy_version` of evaluations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
    /// Activation: the first window (its start, epoch ms) judged under `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_from: Option<i64>,
    /// Commands: the cohort, action, percents, id and window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<i64>,
    /// One line for people: the command's reason, the proposal's comment, the cohorts
    /// an activation started afresh.
    pub summary: String,
    /// Links to the evidence: URLs given with `--evidence`, and for commands and
    /// activations `evaluation:{flag}/{cohort}/{window_end}` references into
    /// `guardrail-evaluations` and the flag's `/api/flags/{key}`.
    #[serde(default)]
    pub evidence: Vec<String>,
}

impl AuditRecord {
    /// A policy entry (`proposed`, `approved`, `rejected`, `seeded`).
    pub fn policy(
        kind: AuditKind,
        flag: &str,
        version: &str,
        actor: &str,
        time: i64,
        summary: String,
        evidence: Vec<String>,
    ) -> AuditRecord {
        AuditRecord {
            schema: AUDIT_SCHEMA.into(),
            id: format!("{}:{flag}:{version}", kind.as_str()),
            time,
            kind,
            flag: flag.into(),
            actor: actor.into(),
            version: Some(version.into()),
            policy_version: None,
            effective_from: None,
            cohort: None,
            action: None,
            from_percent: None,
            to_percent: None,
            command_id: None,
            window_end: None,
            summary,
            evidence,
        }
    }

    /// The entry of a published command.
    pub fn command(c: &FlagCommand, version: Option<&str>) -> AuditRecord {
        AuditRecord {
            schema: AUDIT_SCHEMA.into(),
            id: c.command_id.clone(),
            time: c.issued_at,
            kind: AuditKind::Command,
            flag: c.flag_key.clone(),
            actor: "guardrail".into(),
            version: version.map(str::to_string),
            policy_version: Some(c.policy_version.clone()),
            effective_from: None,
            cohort: Some(c.cohort.clone()),
            action: Some(c.action.as_str().to_string()),
            from_percent: Some(c.from_percent),
            to_percent: Some(c.to_percent),
            command_id: Some(c.command_id.clone()),
            window_end: Some(c.window_end),
            summary: c.reason.clone(),
            evidence: vec![
                format!("evaluation:{}/{}/{}", c.flag_key, c.cohort, c.window_end),
                format!("/api/flags/{}", c.flag_key),
            ],
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an audit record serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<AuditRecord, String> {
        let r: AuditRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.schema != AUDIT_SCHEMA {
            return Err(format!("schema {:?}, expected {AUDIT_SCHEMA:?}", r.schema));
        }
        Ok(r)
    }
}
