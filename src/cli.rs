//! Command line (SPEC §7). Exit codes: 0 success, 1 runtime failure, 2 usage or config error.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "guardrail",
    version,
    about = "Streaming guardrail engine for progressive delivery"
)]
pub struct Cli {
    /// Log format: human text (default on a terminal) or JSON lines.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The sidecar: Kafka in, commands out, HTTP on [http] listen.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Seconds to drain on SIGTERM/SIGINT before giving up.
        #[arg(long, default_value_t = 30)]
        grace: u64,
        /// both: the single instance (ingest and judge in one engine). ingest: stage 1,
        /// per-partition partial aggregates to the partials topic, any number of
        /// instances. judge: stage 2, merges partials per flag and window and judges,
        /// any number of instances (docs/SPEC.md §11).
        #[arg(long, default_value = "both", value_parser = ["both", "ingest", "judge"])]
        stage: String,
    },
    /// The whole loop on an embedded Kafka (librdkafka's mock cluster) with simulated traffic.
    Demo {
        /// Policy to use (default: the embedded config/guardrail.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The format of the product and error traffic: avro (guardrail's schemas),
        /// avro-confluent (behind an in-process Schema Registry), json (Segment- and
        /// Sentry-style), otlp (OpenTelemetry spans). The README shows each mapping.
        #[arg(long, default_value = "avro", value_parser = ["avro", "avro-confluent", "json", "otlp"])]
        format: String,
        /// Windows of simulated event time (15 minutes each).
        #[arg(long, default_value_t = 12)]
        windows: u32,
        /// Simulated user sessions per window.
        #[arg(long, default_value_t = 24_000)]
        sessions: u32,
        /// HTTP listen address (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: String,
        /// Keep serving HTTP this many seconds after the summary (0 exits at once).
        #[arg(long, default_value_t = 0)]
        linger: u64,
    },
    /// Runs the engine over Avro container files; writes JSON Lines.
    Replay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        product_events: Option<PathBuf>,
        #[arg(long)]
        error_events: Option<PathBuf>,
        #[arg(long)]
        support_signals: Option<PathBuf>,
        /// Commands as JSON Lines (default: stdout).
        #[arg(long)]
        commands_out: Option<PathBuf>,
        /// Window evaluations as JSON Lines (default: not written).
        #[arg(long)]
        evaluations_out: Option<PathBuf>,
        /// A self-contained HTML backtest report: plots per flag, cohort and metric.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Validates a config: exit 0, or exit 2 with every error.
    Check {
        #[arg(long)]
        config: PathBuf,
        /// Validate avro-confluent mappings against their `schema_file` only, without
        /// asking the Schema Registry for the subject's latest schema.
        #[arg(long)]
        offline: bool,
    },
    /// Applies flag-commands to an OpenFeature flagd flag file (and `apply approve`).
    Apply(ApplyArgs),
    /// Policies as versioned data on the policies topic: propose, approve, reject, list,
    /// show (SPEC §10). An approved version is judged with from the next window.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Injects a synthetic regression into one cohort of one flag on a live cluster and
    /// measures the loop: time to the command and to the change applied (JSON report).
    /// Exit 0 when a PAUSE/ROLLBACK/HOLD for the cohort arrived, 1 when none did.
    Gameday {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        flag: String,
        /// The cohort, as commands name it: name=value[,name=value] of the flag's cohort_by.
        #[arg(long)]
        cohort: String,
        /// METRIC=xFACTOR on treatment, e.g. error_rate=x3 (repeatable); METRIC is a
        /// guardrail metric's name or its unique ending.
        #[arg(long = "effect", required = true)]
        effects: Vec<String>,
        /// Longest injection (the game day fails if no command came by then).
        #[arg(long, default_value = "45m")]
        duration: String,
        /// After the command, how long to wait for the platform's applied record.
        #[arg(long, default_value = "5m")]
        applied_wait: String,
        /// Synthetic units (sessions) per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Treatment percent of the synthetic units: the percent the cohort is served
        /// (default: the flag's start_percent).
        #[arg(long)]
        percent: Option<f64>,
        /// Names the game day: the `gameday` attribute of every synthetic event.
        #[arg(long)]
        id: Option<String>,
    },
    /// Writes simulated traffic as Avro container files (for replay and benchmarks).
    Generate {
        /// Output directory: product-events.avro, error-events.avro, support-signals.avro.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 16)]
        windows: u32,
        #[arg(long, default_value_t = 12_000)]
        sessions: u32,
        /// Event time of the first window, epoch millis (default: aligned, ending now).
        #[arg(long)]
        start_ms: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// Validates a file of [[flags]] and [[metrics]] (TOML, or JSON for a .json path)
    /// exactly as `check` does and publishes a proposal per flag whose document differs
    /// from its active version. Prints one JSON line per flag; exit 2 on invalid input.
    Propose {
        /// The guardrail config: [kafka], [topics], [window] (the file's policies are
        /// checked with it).
        #[arg(long)]
        config: PathBuf,
        /// The proposed policies.
        #[arg(long)]
        file: PathBuf,
        /// Propose only this flag of the file (repeatable; default: every flag).
        #[arg(long = "flag")]
        flags: Vec<String>,
        /// Who proposes (recorded on the proposal and the audit trail).
        #[arg(long)]
        by: String,
        /// A link to the evidence behind it: a notebook, a replay report (repeatable).
        #[arg(long)]
        evidence: Vec<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Approves a pending proposal: it becomes the flag's active version, judged with
    /// from the next window boundary. The approver must not be the proposer.
    Approve {
        #[arg(long)]
        config: PathBuf,
        flag: String,
        version: String,
        #[arg(long)]
        by: String,
        #[arg(long)]
        comment: Option<String>,
        /// Let the proposer approve their own proposal (a one-person team).
        #[arg(long)]
        allow_self_approval: bool,
    },
    /// Rejects a pending proposal.
    Reject {
        #[arg(long)]
        config: PathBuf,
        flag: String,
        version: String,
        #[arg(long)]
        by: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Every flag's active version and the pending proposals (JSON lines).
    List {
        #[arg(long)]
        config: PathBuf,
    },
    /// A flag's active policy record, or one proposal's (JSON).
    Show {
        #[arg(long)]
        config: PathBuf,
        flag: String,
        /// A proposal's version (default: the active one).
        #[arg(long)]
        version: Option<String>,
    },
}

/// `guardrail apply --config F --flagd FILE`, or `guardrail apply approve ...`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ApplyArgs {
    #[command(subcommand)]
    pub action: Option<ApplyAction>,
    /// The guardrail config: [kafka], [topics], [apply] and the [[flags]] to manage.
    #[arg(long, required = true)]
    pub config: Option<PathBuf>,
    /// The flagd flag-definition file to edit (created if missing; written atomically).
    #[arg(long, required = true)]
    pub flagd: Option<PathBuf>,
    /// Consumer group on flag-commands (default: [apply] group_id, guardrail-apply).
    #[arg(long)]
    pub group_id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ApplyAction {
    /// Approves a command that requires approval (an ADVANCE under approval = "manual"):
    /// publishes {command_id, approved_by, approved_at} to [topics] approvals.
    Approve {
        #[arg(long)]
        config: PathBuf,
        /// The command's flag key.
        #[arg(long)]
        flag: String,
        /// Who approves (recorded in the flag's metadata and on guardrail-applied).
        #[arg(long)]
        by: String,
        /// The command_id to approve (logged by `apply` while it waits).
        command_id: String,
    },
}
