//! `guardrail replay`: the engine over Avro container files. Each file is one input
//! partition; the reader always advances the file that is furthest behind in event
//! time, so the per-partition watermark behaves as it does on Kafka and the decisions
//! equal what `run` decides on the same events. At the end every open window closes.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use apache_avro::Schema;

use crate::engine::{Engine, Ingested};
use crate::ingest::ocf::{OcfError, OcfReader};
use crate::model::Source;
use crate::policy::Policy;
use crate::rules::Judged;
use crate::window::watermark::PartitionKey;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {source}")]
    File { path: String, source: OcfError },
    #[error("{path}: writer schema: {message}")]
    Schema { path: String, message: String },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error("engine: {0}")]
    Engine(String),
}

/// What a replay read and decided.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReplaySummary {
    pub events: u64,
    pub rejected: u64,
    pub windows: u64,
    pub evaluations: u64,
    pub commands: u64,
}

struct Input {
    path: String,
    part: PartitionKey,
    source: Source,
    reader: OcfReader<File>,
    fingerprint: u64,
    max_time: i64,
    offset: i64,
    done: bool,
}

/// Replays the given files; `emit` receives every judged window (evaluation + command).
pub fn replay(
    policy: Arc<Policy>,
    files: &[(Source, PathBuf)],
    now: i64,
    mut emit: impl FnMut(Judged) -> Result<(), ReplayError>,
) -> Result<(ReplaySummary, Engine), ReplayError> {
    let mut engine = Engine::new(policy, false).map_err(ReplayError::Engine)?;
    let mut inputs = Vec::new();
    for (i, (source, path)) in files.iter().enumerate() {
        let p = path.display().to_string();
        let file = File::open(path).map_err(|e| ReplayError::File {
            path: p.clone(),
            source: e.into(),
        })?;
        let reader = OcfReader::new(file).map_err(|e| ReplayError::File {
            path: p.clone(),
            source: e,
        })?;
        let schema = Schema::parse_str(&reader.schema).map_err(|e| ReplayError::Schema {
            path: p.clone(),
            message: e.to_string(),
        })?;
        let schema_error = |message| ReplayError::Schema {
            path: p.clone(),
            message,
        };
        let fp = crate::avro::canonical::fingerprint_str(&reader.schema).map_err(schema_error)?;
        // One leaked schema per input file, for the life of the process (see SchemaRegistry).
        let schema: &'static Schema = Box::leak(Box::new(schema));
        let fingerprint = engine
            .registry_mut()
            .add_writer_schema(*source, schema, fp)
            .map_err(schema_error)?;
        inputs.push(Input {
            path: p,
            part: PartitionKey {
                input: source.index() as u16,
                partition: i as i32,
            },
            source: *source,
            reader,
            fingerprint,
            max_time: i64::MIN,
            offset: 0,
            done: false,
        });
    }
    // Every input holds the watermark back until it has delivered (or ended).
    for input in &inputs {
        engine.watermark_mut().register(input.part, now);
    }
    let mut summary = ReplaySummary::default();
    let mut emit_all =
        |judged: Vec<Judged>, summary: &mut ReplaySummary| -> Result<(), ReplayError> {
            for j in judged {
                summary.evaluations += 1;
                summary.commands += u64::from(j.command.is_some());
                emit(j)?;
            }
            Ok(())
        };
    let mut scratch = Vec::new();
    // Advance the input furthest behind in event time, one block at a time.
    while let Some(i) = inputs
        .iter()
        .enumerate()
        .filter(|(_, x)| !x.done)
        .min_by_key(|(_, x)| x.max_time)
        .map(|(i, _)| i)
    {
        let input = &mut inputs[i];
        let block = input.reader.next_block().map_err(|e| ReplayError::File {
            path: input.path.clone(),
            source: e,
        })?;
        let Some((count, mut data)) = block else {
            input.done = true;
            engine.finish_partition(input.part);
            continue;
        };
        for _ in 0..count {
            summary.events += 1;
            input.offset += 1;
            match engine.registry_mut().decode_next(
                input.source,
                input.fingerprint,
                &mut data,
                &mut scratch,
            ) {
                Ok(ev) => {
                    input.max_time = input.max_time.max(ev.timestamp);
                    if let Ingested::Rejected { .. } =
                        engine.ingest_event(input.part, input.offset, &ev, now)
                    {
                        summary.rejected += 1;
                    }
                }
                Err(e) => {
                    // Datums are not length-prefixed: the rest of this block is unreadable.
                    return Err(ReplayError::File {
                        path: input.path.clone(),
                        source: OcfError::Corrupt(if e.reason() == "schema" {
                            "datum does not match the writer schema"
                        } else {
                            "malformed datum"
                        }),
                    });
                }
            }
        }
        emit_all(engine.tick(now), &mut summary)?;
    }
    let judged = engine.finish(now);
    emit_all(judged, &mut summary)?;
    summary.windows = engine.counters().windows_closed;
    Ok((summary, engine))
}

/// Writes one JSON line.
pub fn json_line<T: serde::Serialize>(out: &mut dyn Write, value: &T) -> Result<(), ReplayError> {
    serde_json::to_writer(&mut *out, value).map_err(std::io::Error::other)?;
    out.write_all(b"\n")?;
    Ok(())
}
