//! Scale-out: stage 1 (ingest) publishes per-partition partial aggregates, stage 2
//! (judge) merges them — docs/SPEC.md §11.

pub mod partial;
pub mod ingest;
pub mod judge;
pub mod merge;
pub mod metrics;
