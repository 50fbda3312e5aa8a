//! Scale-out: stage 1 (ingest) publishes per-partition partial aggregates, stage 2
//! (judge) merges them — docs/SPEC.md §11.

pub mod partial;
