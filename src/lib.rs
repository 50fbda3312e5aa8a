//! guardrail: a streaming guardrail engine for progressive delivery.
//!
//! # Layout
//!
//! Data flows one way, in this order:
//!
//! - [`config`] and [`policy`]: the TOML config, validated with a path per error, then
//!   compiled into the read-only [`policy::Policy`] every stage shares.
//! - [`ingest`]: Avro single-object decoding by schema fingerprint (with schema
//!   evolution), Avro container files for replay.
//! - [`window`]: tumbling event-time windows of per-(flag, variant, cohort) aggregates,
//!   the per-partition watermark, the cohort cap.
//! - [`rules`]: statistics (pure functions), judging each metric, streaks and the
//!   PAUSE / ROLLBACK / HOLD / ADVANCE decisions.
//! - [`records`] and [`ids`]: the output records, their JSON and Avro encodings, and
//!   deterministic command ids.
//! - [`engine`]: the synchronous core gluing the stages; [`replay`] is its file shell.
//! - [`sim`]: a seeded traffic simulator used by the demo, tests and benchmarks.
//! - [`apply`]: downstream of it all, a subscriber of `flag-commands` that applies them
//!   to an OpenFeature flagd flag file (`guardrail apply`).

pub mod app;
pub mod apply;
pub mod audit;
pub mod avro;
pub mod cli;
pub mod clock;
pub mod config;
mod consume;
pub mod demo;
pub mod engine;
pub mod gameday;
pub mod http;
pub mod ids;
pub mod ingest;
pub mod kafka;
pub mod leader;
pub mod model;
pub mod policies;
pub mod policy;
pub mod population;
pub mod publisher;
pub mod records;
pub mod replay;
pub mod report;
pub mod rules;
pub mod scale;
pub mod sim;
pub mod telemetry;
pub mod window;
