//! Avro decoding of input records.
//!
//! Values arrive in Avro single-object encoding: `C3 01`, the 8-byte little-endian
//! CRC-64-AVRO (Rabin) fingerprint of the writer schema's Parsing Canonical Form, then
//! the datum. The [`SchemaRegistry`] knows every schema version shipped in `schemas/` by
//! fingerprint. The fingerprint is the specification's (Java's `SchemaNormalization`,
//! fastavro; see [`crate::avro::canonical`]); records framed with the apache-avro form
//! that builds before 0.2 wrote ([`legacy_fingerprint`]) are accepted too and counted.
//!
//! Two paths:
//! - the *current* version of a record is decoded by a hand-written reader that
//!   borrows strings from the input (no allocation for ≤ 4 flags, ≤ 8 attributes);
//!   tests check it against apache-avro on random records;
//! - an *older* version goes through apache-avro's schema resolution to the current
//!   reader schema, is re-encoded in the current version, then read by the fast path.
//!   Resolution is prepared once per writer schema, not per record.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{Schema, rabin::Rabin};
use smallvec::SmallVec;

use crate::avro::canonical;
use crate::model::{Body, Channel, EventRef, FlagRef, Outcome, Source};

/// Why a record could not be decoded; `reason()` is the DLQ reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("not Avro single-object encoded (expected C3 01 header)")]
    BadMagic,
    #[error("record shorter than the 10-byte single-object header")]
    Truncated,
    #[error("unknown writer schema fingerprint {}", describe_fingerprint(*.0))]
    UnknownSchema(u64),
    #[error("writer schema {fingerprint:016x} is a {found} record, expected {expected}")]
    WrongRecord {
        fingerprint: u64,
        found: &'static str,
        expected: &'static str,
    },
    #[error("malformed datum: {0}")]
    Malformed(&'static str),
    #[error("cannot resolve to the reader schema: {0}")]
    Resolution(String),
}

impl DecodeError {
    /// The DLQ reason: `schema` when the writer schema is not usable, `decode` otherwise.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::UnknownSchema(_)
            | DecodeError::WrongRecord { .. }
            | DecodeError::Resolution(_) => "schema",
            _ => "decode",
        }
    }
}

/// The schemas shipped with the binary: `(source, file name, text, is_current)`.
pub const SHIPPED: [(Source, &str, &str, bool); 4] = [
    (
        Source::Product,
        "product_event.avsc",
        include_str!("../../schemas/product_event.avsc"),
        true,
    ),
    (
        Source::Errors,
        "error_event.avsc",
        include_str!("../../schemas/error_event.avsc"),
        true,
    ),
    (
        Source::Support,
        "support_signal.avsc",
        include_str!("../../schemas/support_signal.avsc"),
        true,
    ),
    (
        Source::Product,
        "history/product_event.v1.avsc",
        include_str!("../../schemas/history/product_event.v1.avsc"),
        false,
    ),
];

pub const FLAG_COMMAND_SCHEMA: &str = include_str!("../../schemas/flag_command.avsc");
pub const WINDOW_EVALUATION_SCHEMA: &str = include_str!("../../schemas/window_evaluation.avsc");
/// Older `WindowEvaluation` versions, still read at restore: v1 (before
/// `input_positions`), v2 (before the evidence's intervals, units, alpha and freshness).
pub const WINDOW_EVALUATION_HISTORY: [&str; 2] = [
    include_str!("../../schemas/history/window_evaluation.v1.avsc"),
    include_str!("../../schemas/history/window_evaluation.v2.avsc"),
];
/// Older `FlagCommand` versions (v1: before the evidence's intervals, units, alpha and
/// freshness), read by [`crate::kafka::OutputReader::commands`].
pub const FLAG_COMMAND_HISTORY: [&str; 1] =
    [include_str!("../../schemas/history/flag_command.v1.avsc")];

/// The CRC-64-AVRO fingerprint of a schema's Parsing Canonical Form as the Avro
/// specification defines it: the value Java's `SchemaNormalization.parsingFingerprint64`
/// and fastavro compute. Single-object encoding writes it little-endian.
///
/// Computed from apache-avro's re-serialization of `schema`, which loses `"namespace":
/// ""` on a named type nested in a namespaced one; where the schema text is at hand
/// (files, container headers) [`crate::avro::canonical::fingerprint_str`] is exact.
pub fn fingerprint(schema: &Schema) -> Result<u64, String> {
    let json = serde_json::to_value(schema).map_err(|e| format!("schema to JSON: {e}"))?;
    crate::avro::canonical::fingerprint_json(&json)
}

/// The fingerprint that apache-avro's `canonical_form()` gives, which guardrail wrote
/// before 0.2: it keeps `{"type":"long"}` for a logical type instead of `"long"`, so it
/// differs from every other implementation's for schemas with logical types.
pub fn legacy_fingerprint(schema: &Schema) -> u64 {
    let fp = schema.fingerprint::<Rabin>();
    let mut b = [0u8; 8];
    b.copy_from_slice(&fp.bytes[..8]);
    u64::from_le_bytes(b)
}

/// A fingerprint as people meet it: the 64-bit value (Java's `parsingFingerprint64` as
/// unsigned hex) and the 8 header bytes as they are on the wire (fastavro's hex).
pub fn describe_fingerprint(fp: u64) -> String {
    let mut wire = String::with_capacity(16);
    for b in fp.to_le_bytes() {
        let _ = write!(wire, "{b:02x}");
    }
    format!("0x{fp:016x} (header bytes {wire})")
}

/// An older writer schema and the prepared resolution to the current one.
struct Historical {
    source: Source,
    reader: GenericDatumReader<'static>,
    writer: GenericDatumWriter<'static>,
}

/// Every schema version the engine accepts, by fingerprint.
pub struct SchemaRegistry {
    current: [u64; 3],
    current_schema: [&'static Schema; 3],
    historical: HashMap<u64, Historical>,
    /// Legacy (apache-avro form) fingerprint → the standard one, for shipped schemas.
    legacy: HashMap<u64, u64>,
    /// Records decoded through a legacy fingerprint, per source.
    legacy_records: [AtomicU64; 3],
}

/// A shipped schema parsed: its source, the schema, its fingerprint, its legacy
/// fingerprint, whether it is the source's current one.
type ParsedShipped = (Source, &'static Schema, u64, u64, bool);

/// The shipped schemas, parsed once per process: every engine (one per input partition
/// in the ingest stage, made again at each rebalance) shares them.
fn parsed_shipped() -> Result<&'static [ParsedShipped], String> {
    static PARSED: LazyLock<Result<Vec<ParsedShipped>, String>> = LazyLock::new(|| {
        SHIPPED
            .iter()
            .map(|&(source, name, text, is_current)| {
                let schema = Schema::parse_str(text).map_err(|e| format!("schemas/{name}: {e}"))?;
                // Leaked once per process: GenericDatumReader borrows its schemas for the
                // lifetime of every registry.
                let schema: &'static Schema = Box::leak(Box::new(schema));
                let fp =
                    canonical::fingerprint_str(text).map_err(|e| format!("schemas/{name}: {e}"))?;
                Ok((source, schema, fp, legacy_fingerprint(schema), is_current))
            })
            .collect()
    });
    PARSED.as_deref().map_err(Clone::clone)
}

impl SchemaRegistry {
    /// The registry of the shipped schemas. They are compiled into the binary and tested,
    /// so a failure here is a build defect; it is still reported rather than panicking.
    pub fn shipped() -> Result<SchemaRegistry, String> {
        let mut current = [0u64; 3];
        let mut current_schema: [Option<&'static Schema>; 3] = [None; 3];
        let mut older = Vec::new();
        let mut legacy = HashMap::new();
        for &(source, schema, fp, old, is_current) in parsed_shipped()? {
            if old != fp {
                legacy.insert(old, fp);
            }
            if is_current {
                current[source.index()] = fp;
                current_schema[source.index()] = Some(schema);
            } else {
                older.push((source, schema, fp));
            }
        }
        let current_schema = current_schema.map(|s| s.ok_or("missing current schema"));
        let current_schema = [current_schema[0]?, current_schema[1]?, current_schema[2]?];
        let mut registry = SchemaRegistry {
            current,
            current_schema,
            historical: HashMap::new(),
            legacy,
            legacy_records: Default::default(),
        };
        for (source, schema, fp) in older {
            registry.add_writer_schema(source, schema, fp)?;
        }
        Ok(registry)
    }

    /// Accepts another writer schema for `source` (an older version, or the schema of an
    /// Avro container file), resolved to the current reader schema. `fp` is the schema
    /// text's fingerprint ([`canonical::fingerprint_str`]).
    pub fn add_writer_schema(
        &mut self,
        source: Source,
        schema: &'static Schema,
        fp: u64,
    ) -> Result<u64, String> {
        if fp == self.current[source.index()] || self.historical.contains_key(&fp) {
            return Ok(fp);
        }
        let reader = GenericDatumReader::builder(schema)
            .reader_schema(self.current_schema[source.index()])
            .build()
            .map_err(|e| format!("cannot resolve writer schema to {}: {e}", source.as_str()))?;
        let writer = GenericDatumWriter::builder(self.current_schema[source.index()])
            .build()
            .map_err(|e| format!("cannot build writer for {}: {e}", source.as_str()))?;
        self.historical.insert(
            fp,
            Historical {
                source,
                reader,
                writer,
            },
        );
        Ok(fp)
    }

    /// The current (reader) schema of a source.
    pub fn current_schema(&self, source: Source) -> &'static Schema {
        self.current_schema[source.index()]
    }

    pub fn current_fingerprint(&self, source: Source) -> u64 {
        self.current[source.index()]
    }

    /// Records decoded so far through a legacy (pre-0.2, apache-avro form) fingerprint,
    /// per source in `Source::ALL` order.
    pub fn legacy_records(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.legacy_records[i].load(Ordering::Relaxed))
    }

    /// The fingerprints this registry accepts for `source`, for the message that goes
    /// with an unknown one.
    pub fn known_fingerprints(&self, source: Source) -> String {
        let mut out = format!(
            "{} current {}",
            source.as_str(),
            describe_fingerprint(self.current[source.index()])
        );
        let mut older: Vec<u64> = self
            .historical
            .iter()
            .filter(|(_, h)| h.source == source)
            .map(|(&fp, _)| fp)
            .collect();
        older.sort_unstable();
        for fp in older {
            let _ = write!(out, ", older {}", describe_fingerprint(fp));
        }
        let mut legacy: Vec<(u64, u64)> = self
            .legacy
            .iter()
            .filter(|&(_, std)| {
                *std == self.current[source.index()]
                    || self.historical.get(std).is_some_and(|h| h.source == source)
            })
            .map(|(&l, &s)| (l, s))
            .collect();
        legacy.sort_unstable();
        for (l, _) in legacy {
            let _ = write!(out, ", legacy {}", describe_fingerprint(l));
        }
        out
    }

    /// Decodes one single-object encoded record expected on `source`'s topic.
    /// `scratch` holds the re-encoded datum when the writer schema is an older version.
    pub fn decode<'r>(
        &self,
        source: Source,
        bytes: &'r [u8],
        scratch: &'r mut Vec<u8>,
    ) -> Result<EventRef<'r>, DecodeError> {
        if bytes.len() < 10 {
            return Err(if bytes.len() >= 2 && bytes[..2] != [0xC3, 0x01] {
                DecodeError::BadMagic
            } else {
                DecodeError::Truncated
            });
        }
        if bytes[..2] != [0xC3, 0x01] {
            return Err(DecodeError::BadMagic);
        }
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&bytes[2..10]);
        self.decode_datum(source, u64::from_le_bytes(fp), &bytes[10..], scratch)
    }

    /// Decodes a bare datum written with the schema of fingerprint `fp`.
    pub fn decode_datum<'r>(
        &self,
        source: Source,
        fp: u64,
        datum: &'r [u8],
        scratch: &'r mut Vec<u8>,
    ) -> Result<EventRef<'r>, DecodeError> {
        let mut input = datum;
        let ev = self.decode_next(source, fp, &mut input, scratch)?;
        if !input.is_empty() {
            return Err(DecodeError::Malformed("trailing bytes after the record"));
        }
        Ok(ev)
    }

    /// Decodes the next datum of `input` (a container file block holds datums back to
    /// back) and advances `input` past it.
    pub fn decode_next<'a: 'r, 's: 'r, 'r>(
        &self,
        source: Source,
        fp: u64,
        input: &mut &'a [u8],
        scratch: &'s mut Vec<u8>,
    ) -> Result<EventRef<'r>, DecodeError> {
        if fp == self.current[source.index()] {
            let whole: &'a [u8] = input;
            let (ev, used) = decode_prefix(source, whole)?;
            *input = &whole[used..];
            return Ok(ev);
        }
        if let Some(other) = self.current.iter().position(|&c| c == fp) {
            return Err(wrong_record(fp, Source::ALL[other], source));
        }
        if let Some(&standard) = self.legacy.get(&fp) {
            // Written by an earlier guardrail (or another apache-avro 0.22 writer).
            let ev = self.decode_next(source, standard, input, scratch)?;
            self.legacy_records[source.index()].fetch_add(1, Ordering::Relaxed);
            return Ok(ev);
        }
        let Some(h) = self.historical.get(&fp) else {
            return Err(DecodeError::UnknownSchema(fp));
        };
        if h.source != source {
            return Err(wrong_record(fp, h.source, source));
        }
        let value: Value = h
            .reader
            .read_value(input)
            .map_err(|e| DecodeError::Resolution(e.to_string()))?;
        scratch.clear();
        h.writer
            .write_value(&mut *scratch, value)
            .map_err(|e| DecodeError::Resolution(e.to_string()))?;
        decode_current(source, scratch)
    }
}

fn wrong_record(fingerprint: u64, found: Source, expected: Source) -> DecodeError {
    DecodeError::WrongRecord {
        fingerprint,
        found: found.as_str(),
        expected: expected.as_str(),
    }
}

/// Decodes a datum of the current schema version of `source`, exactly the whole slice.
pub fn decode_current(source: Source, datum: &[u8]) -> Result<EventRef<'_>, DecodeError> {
    let (ev, used) = decode_prefix(source, datum)?;
    if used != datum.len() {
        return Err(DecodeError::Malformed("trailing bytes after the record"));
    }
    Ok(ev)
}

/// Decodes a datum of the current schema version at the start of `datum`; returns it
/// and the number of bytes it took.
pub fn decode_prefix(source: Source, datum: &[u8]) -> Result<(EventRef<'_>, usize), DecodeError> {
    let mut r = Cursor::new(datum);
    let event_id = r.string()?;
    let timestamp = r.long()?;
    let mut flags = SmallVec::new();
    r.blocks(|r| {
        flags.push(FlagRef {
            key: r.string()?,
            variant: r.string()?,
        });
        Ok(())
    })?;
    let mut attributes = SmallVec::new();
    r.blocks(|r| {
        attributes.push((r.string()?, r.string()?));
        Ok(())
    })?;
    let user_id = r.optional(Cursor::string)?;
    let body = match source {
        Source::Product => Body::Product {
            journey: r.string()?,
            step: r.optional(Cursor::string)?,
            outcome: Outcome::from_index(r.index()?)
                .ok_or(DecodeError::Malformed("outcome symbol out of range"))?,
            latency_ms: r.optional(Cursor::double)?,
            value: r.optional(Cursor::double)?,
        },
        Source::Errors => Body::Error {
            service: r.string()?,
            error_class: r.string()?,
            status_code: r.optional(Cursor::int)?,
            fatal: r.boolean()?,
            latency_ms: r.optional(Cursor::double)?,
        },
        Source::Support => {
            let channel = Channel::from_index(r.index()?)
                .ok_or(DecodeError::Malformed("channel symbol out of range"))?;
            let csat = r.optional(Cursor::double)?;
            let sentiment = r.optional(Cursor::double)?;
            let mut tags = SmallVec::new();
            r.blocks(|r| {
                tags.push(r.string()?);
                Ok(())
            })?;
            Body::Support {
                channel,
                csat,
                sentiment,
                tags,
            }
        }
    };
    let ev = EventRef {
        event_id,
        timestamp,
        flags,
        attributes,
        user_id,
        body,
    };
    Ok((ev, r.pos))
}

/// A bounds-checked reader of Avro binary primitives (also the mapped reader's, in
/// [`crate::ingest::map::avro`]).
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn long(&mut self) -> Result<i64, DecodeError> {
        let mut value: u64 = 0;
        let mut shift = 0;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(DecodeError::Malformed("truncated varint"));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
            shift += 7;
            if shift > 63 {
                return Err(DecodeError::Malformed("varint longer than 10 bytes"));
            }
        }
    }

    pub(crate) fn int(&mut self) -> Result<i32, DecodeError> {
        i32::try_from(self.long()?).map_err(|_| DecodeError::Malformed("int out of range"))
    }

    pub(crate) fn index(&mut self) -> Result<usize, DecodeError> {
        usize::try_from(self.long()?).map_err(|_| DecodeError::Malformed("negative index"))
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(DecodeError::Malformed("length past the end of the record"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn string(&mut self) -> Result<&'a str, DecodeError> {
        let len = usize::try_from(self.long()?)
            .map_err(|_| DecodeError::Malformed("negative string length"))?;
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| DecodeError::Malformed("string is not UTF-8"))
    }

    pub(crate) fn double(&mut self) -> Result<f64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(f64::from_le_bytes(b))
    }

    pub(crate) fn boolean(&mut self) -> Result<bool, DecodeError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Malformed("boolean byte is not 0 or 1")),
        }
    }

    /// A `["null", T]` union.
    pub(crate) fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.long()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(DecodeError::Malformed("union branch out of range")),
        }
    }

    /// Array or map blocks: a count, negative when followed by a byte size, 0 ends.
    pub(crate) fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        loop {
            let mut count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                count = count
                    .checked_neg()
                    .ok_or(DecodeError::Malformed("block count overflow"))?;
                self.long()?;
            }
            // Each item takes at least one byte: refuse counts the record cannot hold.
            if count as u64 > (self.buf.len() - self.pos) as u64 {
                return Err(DecodeError::Malformed("block count larger than the record"));
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }

    /// A length (bytes, string): a non-negative long.
    pub(crate) fn len(&mut self) -> Result<usize, DecodeError> {
        usize::try_from(self.long()?).map_err(|_| DecodeError::Malformed("negative length"))
    }

    /// Like `blocks`, but a block that gives its byte size is jumped over whole.
    pub(crate) fn skip_blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                let size = self.len()?;
                self.take(size)?;
                continue;
            }
            if count as u64 > (self.buf.len() - self.pos) as u64 {
                return Err(DecodeError::Malformed("block count larger than the record"));
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }
}

#[cfg(test)]
mod tests;
