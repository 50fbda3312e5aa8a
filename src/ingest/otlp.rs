//! OpenTelemetry input: OTLP trace and log export requests as guardrail events.
//!
//! [`decode`] reads one `ExportTraceServiceRequest` or `ExportLogsServiceRequest`, as the
//! OpenTelemetry Collector's Kafka exporter writes them (`otlp_proto`: protobuf binary;
//! `otlp_json`: OTLP/JSON), and appends the events the preset mapping below derives from
//! it. Protobuf is read by a hand-written wire reader (no code generation): strings
//! borrow from the input, unknown fields are skipped whatever their wire type (forward
//! compatible), a known field with the wrong wire type is an error, and so is anything
//! truncated. OTLP/JSON follows the OTLP specification: lowerCamelCase keys (the
//! proto field names are accepted too), `traceId`/`spanId` as hex strings, enums as
//! integers (their names are accepted too), 64-bit integers as JSON strings or
//! numbers, `bytesValue` as base64 (skipped), unknown keys ignored. JSON strings borrow
//! from the input unless they contain escapes; those, and every number written as
//! text, live in the `strings` arena.
//!
//! Field numbers are those of opentelemetry-proto (`collector/trace/v1/trace_service.proto`,
//! `collector/logs/v1/logs_service.proto`, `trace/v1/trace.proto`, `logs/v1/logs.proto`,
//! `common/v1/common.proto`, `resource/v1/resource.proto`); the reference vectors in
//! `tests/data/byo/otlp.json` are made by the official Python package
//! (`scripts/otlp_vectors.py`).
//!
//! # Preset mapping
//!
//! **Spans.** A span yields events only if it carries at least one flag evaluation: a
//! span event named `feature_flag.evaluation` (current semantic conventions) or
//! `feature_flag` (older), with attribute `feature_flag.key` and variant
//! `feature_flag.result.variant` (older: `feature_flag.variant`; if neither,
//! `feature_flag.result.value` stringified). Span attributes `feature_flag.key` +
//! `feature_flag.result.variant` directly on the span count too. A span with flags yields:
//! - one Product EXPOSURE event carrying all the span's flags: journey = span name,
//!   timestamp = time of the first evaluation event (span start if from span
//!   attributes), event_id = `<traceId hex><spanId hex>:exposure`;
//! - one Product event with outcome COMPLETED, or FAILED when the span status code is
//!   ERROR (2): journey = span name, latency_ms = (end - start) ns / 1e6, timestamp =
//!   end time, event_id = `<traceId hex><spanId hex>`;
//! - one Error event per span event named `exception`: service = resource
//!   `service.name` (default "unknown_service"), error_class = `exception.type` (or
//!   "exception"), fatal = `exception.escaped` == true, status_code = span attribute
//!   `http.response.status_code` or `http.status_code` if integer, latency_ms = span
//!   duration, timestamp = that event's time, event_id = `<trace><span>:error:<n>`; if
//!   the status is ERROR and there is no exception event, one Error event with
//!   error_class = status message if non-empty else "ERROR".
//!
//! All events of a span carry the same flags, the same unit and the same attributes.
//! unit (EventRef.user_id) = `feature_flag.context.id` of the first evaluation, else
//! span/resource attribute `enduser.id`, else `user.id`, else None. attributes =
//! resource attributes then span attributes (span wins on a repeated key), only scalar
//! values: strings as-is, ints in decimal, bools "true"/"false", doubles in Rust's
//! shortest `{}` form; arrays/kvlists/bytes skipped. Timestamps ns → ms by floor
//! division.
//!
//! **Logs.** A log record yields an event only if it has attribute `feature_flag.key`:
//! if severity_number >= 17 (ERROR) or it has an `exception.type` attribute → an Error
//! event (service = resource service.name, error_class = exception.type or "log_error",
//! latency_ms None); otherwise a Product EXPOSURE event with journey = attribute
//! `event.name` (or the LogRecord field event_name, proto field 12) or
//! "feature_flag.evaluation". Flags, unit, attributes as for spans, from the log
//! record's attributes plus resource attributes. timestamp = time_unix_nano, or
//! observed_time_unix_nano when 0. event_id = `<traceId hex><spanId hex>:log:<index>`
//! or `log:<resource index>.<scope index>.<record index>` when there are no ids.
//!
//! **Details the rules above leave open**, decided here (and in the reference
//! implementation of `scripts/otlp_vectors.py`):
//! - An evaluation needs a non-empty key and a non-empty variant; one without either is
//!   not a flag (a span or log record with no other flag is skipped). Values are
//!   stringified like attributes; a non-scalar value counts as absent. The span-attribute
//!   evaluation uses the same variant fallbacks as events.
//! - Flag order: evaluation events in span order, then the span-attribute evaluation. A
//!   key already seen in the span is ignored (the first evaluation of a flag wins).
//! - unit: the first evaluation *that has* a `feature_flag.context.id` (the targeting
//!   key the flag was bucketed on) is used.
//! - An evaluation or exception event with time 0 (unset) takes the span start
//!   (evaluation) or end (exception) time. The status-only Error event has the span
//!   end time and event_id `<trace><span>:error:0`; `<n>` counts exception events from 0.
//! - latency_ms is None when end < start.
//! - Attribute merging keeps each key once, at its first position, with the last value
//!   (resource, then span or log record); lookups of a key repeated within one list
//!   take the last occurrence. Empty strings count as absent for key, variant, context
//!   id, unit, service.name, exception.type, event.name.
//! - Log Error events: status_code as for spans (from the log record's attributes),
//!   fatal = severity_number >= 21 (FATAL) or `exception.escaped` == true. A log
//!   record's ids count as present when both are non-empty and not all zero; `<index>`
//!   is the record's index in its ScopeLogs.
//! - Ids must be 16/8 bytes (32/16 hex digits in JSON) or empty, else the request is
//!   rejected; JSON hex is lower-cased.
//! - With no unit, events carry `user_id` None, and the window stage counts each
//!   event_id as its own unit: a span's EXPOSURE and outcome events then land in
//!   different units, and `log:<r>.<s>.<i>` ids repeat across requests. Policies that
//!   need per-unit statistics should make sure producers set `feature_flag.context.id`
//!   (OpenFeature's hook does) or `enduser.id`.
//!
//! **Validation.** On error nothing is appended to `out` (it is truncated back). A
//! protobuf span or log record is first scanned for a flag (an evaluation event name,
//! a `feature_flag.key` attribute key); one without is counted as skipped and not
//! parsed further, so the inside of its attributes and events is not validated (most
//! spans carry no flag, and skipping them cheaply is most of the decoder's speed).
//! Everything that is read is validated. A JSON document must be UTF-8 as a whole.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use smallvec::SmallVec;
use typed_arena::Arena;

use crate::model::{Body, EventRef, FlagRef, Outcome};

/// Which export request a payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Traces,
    Logs,
}

/// How the payload is encoded: the Kafka exporter's `otlp_proto` or `otlp_json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// What [`decode`] saw: `total` spans (or log records), `skipped` of them carrying no
/// flag evaluation and so yielding no event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    pub skipped: usize,
    pub total: usize,
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// A protobuf field could not be read: `field 1 of ResourceSpans at byte 3: truncated varint`.
    #[error("field {field} of {message} at byte {offset}: {problem}")]
    Field {
        message: &'static str,
        field: u32,
        offset: usize,
        problem: Problem,
    },
    /// A protobuf field tag could not be read.
    #[error("{message} at byte {offset}: {problem}")]
    Tag {
        message: &'static str,
        offset: usize,
        problem: Problem,
    },
    /// Not OTLP/JSON of the expected request (syntax, types), with line and column.
    #[error("OTLP/JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON text must be UTF-8.
    #[error("OTLP/JSON: invalid UTF-8 at byte {0}")]
    JsonUtf8(usize),
    /// An OTLP/JSON value that parsed but is not valid OTLP.
    #[error("OTLP/JSON {field}: {problem}")]
    JsonValue {
        field: &'static str,
        problem: Problem,
    },
}

/// The specific defect behind an [`OtlpError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    TruncatedVarint,
    VarintOverflow,
    TruncatedTag,
    /// A length-delimited or fixed-width field runs past the end of its message.
    Truncated {
        len: u64,
        left: usize,
    },
    WrongWireType {
        found: u8,
        expected: u8,
    },
    InvalidWireType(u8),
    FieldZero,
    UnbalancedGroup,
    InvalidUtf8,
    /// A trace or span id of the wrong size (bytes in protobuf, hex digits in JSON).
    IdLength {
        found: usize,
        expected: usize,
    },
    IdNotHex,
}

fn wire_name(wt: u8) -> &'static str {
    match wt {
        VARINT => "varint",
        I64 => "64-bit",
        LEN => "length-delimited",
        SGROUP => "start group",
        EGROUP => "end group",
        I32 => "32-bit",
        _ => "invalid",
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::TruncatedVarint => f.write_str("truncated varint"),
            Problem::VarintOverflow => f.write_str("varint longer than 64 bits"),
            Problem::TruncatedTag => f.write_str("truncated field tag"),
            Problem::Truncated { len, left } => write!(
                f,
                "{len} bytes run past the end of the message ({left} left)"
            ),
            Problem::WrongWireType { found, expected } => write!(
                f,
                "wire type {found} ({}), expected {expected} ({})",
                wire_name(*found),
                wire_name(*expected)
            ),
            Problem::InvalidWireType(wt) => write!(f, "invalid wire type {wt}"),
            Problem::FieldZero => f.write_str("field number 0"),
            Problem::UnbalancedGroup => f.write_str("unbalanced group"),
            Problem::InvalidUtf8 => f.write_str("invalid UTF-8"),
            Problem::IdLength { found, expected } => {
                write!(f, "id of length {found}, expected {expected} or empty")
            }
            Problem::IdNotHex => f.write_str("id is not hexadecimal"),
        }
    }
}

/// Decodes one OTLP export request (`ExportTraceServiceRequest` /
/// `ExportLogsServiceRequest`, as the OpenTelemetry Collector's Kafka exporter writes
/// them: `otlp_proto` or `otlp_json`) and appends the events it carries (see the module
/// doc for the mapping). Strings borrow from `bytes` where possible (protobuf always;
/// JSON when no escapes); others live in `strings`. On error nothing is appended.
pub fn decode<'a>(
    signal: Signal,
    encoding: Encoding,
    bytes: &'a [u8],
    strings: &'a Arena<String>,
    out: &mut Vec<EventRef<'a>>,
) -> Result<Skipped, OtlpError> {
    let start = out.len();
    let mut m = Mapper {
        strings,
        out,
        seen: Skipped::default(),
        scratch: Scratch::default(),
    };
    let r = match (signal, encoding) {
        (Signal::Traces, Encoding::Protobuf) => proto::traces(bytes, &mut m),
        (Signal::Logs, Encoding::Protobuf) => proto::logs(bytes, &mut m),
        (Signal::Traces, Encoding::Json) => json::traces(bytes, &mut m),
        (Signal::Logs, Encoding::Json) => json::logs(bytes, &mut m),
    };
    match r {
        Ok(()) => Ok(m.seen),
        Err(e) => {
            m.out.truncate(start);
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------------------
// The decoded view both encodings produce, and the preset mapping over it.

/// An attribute value; only scalars become event attributes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Val<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Double(f64),
    /// Array, kvlist, bytes, or unset.
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Kv<'a> {
    key: &'a str,
    val: Val<'a>,
}

type Attrs<'a> = SmallVec<[Kv<'a>; 8]>;

/// The last value of `key` (a key repeated in one list: last wins).
fn get<'a>(attrs: &[Kv<'a>], key: &str) -> Option<Val<'a>> {
    attrs.iter().rev().find(|kv| kv.key == key).map(|kv| kv.val)
}

#[derive(Debug, Clone, Copy)]
enum Id<'a> {
    /// Protobuf: raw bytes (length checked).
    Bytes(&'a [u8]),
    /// JSON: hex digits (length and digits checked), any case.
    Hex(&'a str),
}

impl Id<'_> {
    fn is_absent(&self) -> bool {
        match self {
            Id::Bytes(b) => b.iter().all(|&x| x == 0),
            Id::Hex(h) => h.bytes().all(|x| x == b'0'),
        }
    }

    fn write_hex(&self, s: &mut String) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        match self {
            Id::Bytes(b) => {
                for &x in *b {
                    s.push(HEX[(x >> 4) as usize] as char);
                    s.push(HEX[(x & 15) as usize] as char);
                }
            }
            Id::Hex(h) => {
                let start = s.len();
                s.push_str(h);
                s[start..].make_ascii_lowercase();
            }
        }
    }
}

const EV_EVAL: u8 = 1;
const EV_EVAL_OLD: u8 = 2;
const EV_EXCEPTION: u8 = 3;

/// The span events the mapping looks at; others are dropped while parsing.
fn event_kind(name: &str) -> Option<u8> {
    match name {
        "feature_flag.evaluation" => Some(EV_EVAL),
        "feature_flag" => Some(EV_EVAL_OLD),
        "exception" => Some(EV_EXCEPTION),
        _ => None,
    }
}

#[derive(Debug, Default)]
struct SpanEvent<'a> {
    time: u64,
    kind: u8,
    attrs: Attrs<'a>,
}

#[derive(Debug)]
struct SpanView<'a> {
    trace_id: Id<'a>,
    span_id: Id<'a>,
    name: &'a str,
    start: u64,
    end: u64,
    status_code: i32,
    status_message: &'a str,
    attrs: Attrs<'a>,
    events: SmallVec<[SpanEvent<'a>; 2]>,
}

impl<'a> SpanView<'a> {
    fn new() -> Self {
        SpanView {
            trace_id: Id::Bytes(&[]),
            span_id: Id::Bytes(&[]),
            name: "",
            start: 0,
            end: 0,
            status_code: 0,
            status_message: "",
            attrs: SmallVec::new(),
            events: SmallVec::new(),
        }
    }

    fn reset(&mut self) {
        self.trace_id = Id::Bytes(&[]);
        self.span_id = Id::Bytes(&[]);
        self.name = "";
        self.start = 0;
        self.end = 0;
        self.status_code = 0;
        self.status_message = "";
        self.attrs.clear();
        self.events.clear();
    }
}

#[derive(Debug)]
struct LogView<'a> {
    time: u64,
    observed: u64,
    severity: i32,
    event_name: &'a str,
    trace_id: Id<'a>,
    span_id: Id<'a>,
    attrs: Attrs<'a>,
}

impl<'a> LogView<'a> {
    fn new() -> Self {
        LogView {
            time: 0,
            observed: 0,
            severity: 0,
            event_name: "",
            trace_id: Id::Bytes(&[]),
            span_id: Id::Bytes(&[]),
            attrs: SmallVec::new(),
        }
    }

    fn reset(&mut self) {
        *self = LogView {
            attrs: std::mem::take(&mut self.attrs),
            ..LogView::new()
        };
        self.attrs.clear();
    }
}

type StrAttrs<'a> = SmallVec<[(&'a str, &'a str); 8]>;

/// A resource, prepared once for all its spans or log records.
struct Resource<'a> {
    service: &'a str,
    attrs: StrAttrs<'a>,
    /// `key_bit`s of `attrs`.
    filter: u64,
}

/// One bit of a 64-bit filter of the keys in a list, so that most keys are known to
/// be new without a scan.
#[inline]
fn key_bit(key: &str) -> u64 {
    let b = key.as_bytes();
    let byte = |i: usize| b.get(i).copied().unwrap_or(0) as u32;
    let h = (b.len() as u32)
        .wrapping_mul(0x9e37_79b9)
        .wrapping_add(byte(b.len().wrapping_sub(1)).wrapping_mul(0x85eb_ca6b))
        .wrapping_add(byte(b.len() / 2).wrapping_mul(0xc2b2_ae35));
    1 << (h >> 26)
}

/// Insert or replace: each key once, at its first position, with its last value.
/// `filter` holds the `key_bit`s of the keys in `attrs`.
#[inline]
fn merge<'a>(attrs: &mut StrAttrs<'a>, filter: &mut u64, key: &'a str, value: &'a str) {
    let bit = key_bit(key);
    if *filter & bit != 0
        && let Some(slot) = attrs.iter_mut().find(|(k, _)| *k == key)
    {
        slot.1 = value;
        return;
    }
    *filter |= bit;
    attrs.push((key, value));
}

/// One flag evaluation found in a span or log record.
struct Eval<'a> {
    flag: FlagRef<'a>,
    time: u64,
    context: Option<&'a str>,
}

#[derive(Default)]
struct Scratch<'a> {
    evals: SmallVec<[Eval<'a>; 4]>,
}

struct Mapper<'a, 'o> {
    strings: &'a Arena<String>,
    out: &'o mut Vec<EventRef<'a>>,
    seen: Skipped,
    scratch: Scratch<'a>,
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

fn ns_to_ms(ns: u64) -> i64 {
    (ns / 1_000_000) as i64
}

fn int_status(v: Option<Val<'_>>) -> Option<i32> {
    match v {
        Some(Val::Int(i)) => i32::try_from(i).ok(),
        _ => None,
    }
}

fn status_code(attrs: &[Kv<'_>]) -> Option<i32> {
    int_status(get(attrs, "http.response.status_code"))
        .or_else(|| int_status(get(attrs, "http.status_code")))
}

impl<'a> Mapper<'a, '_> {
    fn alloc(&self, s: String) -> &'a str {
        let arena: &'a Arena<String> = self.strings;
        arena.alloc(s).as_str()
    }

    /// A scalar as text: strings as-is, ints decimal, bools, doubles in Rust's `{}` form.
    fn scalar(&self, v: Val<'a>) -> Option<&'a str> {
        match v {
            Val::Str(s) => Some(s),
            Val::Int(i) => Some(self.alloc(i.to_string())),
            Val::Bool(b) => Some(if b { "true" } else { "false" }),
            Val::Double(d) => Some(self.alloc(d.to_string())),
            Val::Other => None,
        }
    }

    fn attr_str(&self, attrs: &[Kv<'a>], key: &str) -> Option<&'a str> {
        non_empty(get(attrs, key).and_then(|v| self.scalar(v)))
    }

    fn resource(&self, attrs: &[Kv<'a>]) -> Resource<'a> {
        let mut out = StrAttrs::new();
        let mut filter = 0;
        for kv in attrs {
            if let Some(v) = self.scalar(kv.val) {
                merge(&mut out, &mut filter, kv.key, v);
            }
        }
        let service = non_empty(
            out.iter()
                .rev()
                .find(|(k, _)| *k == "service.name")
                .map(|kv| kv.1),
        )
        .unwrap_or("unknown_service");
        Resource {
            service,
            attrs: out,
            filter,
        }
    }

    /// The flag of an evaluation's attributes, if it names a key and a variant.
    fn evaluation(&self, attrs: &[Kv<'a>], time: u64) -> Option<Eval<'a>> {
        let key = self.attr_str(attrs, "feature_flag.key")?;
        let variant = self
            .attr_str(attrs, "feature_flag.result.variant")
            .or_else(|| self.attr_str(attrs, "feature_flag.variant"))
            .or_else(|| self.attr_str(attrs, "feature_flag.result.value"))?;
        Some(Eval {
            flag: FlagRef { key, variant },
            time,
            context: self.attr_str(attrs, "feature_flag.context.id"),
        })
    }

    fn push_eval(evals: &mut SmallVec<[Eval<'a>; 4]>, e: Eval<'a>) {
        if !evals.iter().any(|x| x.flag.key == e.flag.key) {
            evals.push(e);
        }
    }

    /// Resource attributes, then the item's; the unit.
    fn attributes_and_unit(
        &self,
        res: &Resource<'a>,
        attrs: &[Kv<'a>],
        evals: &[Eval<'a>],
    ) -> (StrAttrs<'a>, Option<&'a str>) {
        let mut merged = StrAttrs::with_capacity(res.attrs.len() + attrs.len());
        merged.extend_from_slice(&res.attrs);
        let mut filter = res.filter;
        for kv in attrs {
            if let Some(v) = self.scalar(kv.val) {
                merge(&mut merged, &mut filter, kv.key, v);
            }
        }
        let lookup = |k: &str| non_empty(merged.iter().find(|(key, _)| *key == k).map(|kv| kv.1));
        let unit = evals
            .iter()
            .find_map(|e| e.context)
            .or_else(|| lookup("enduser.id"))
            .or_else(|| lookup("user.id"));
        (merged, unit)
    }

    /// Appends the events of one span: same flags, attributes and unit (moved into the
    /// last event, cloned for the others).
    fn emit(
        &mut self,
        events: SmallVec<[(&'a str, u64, Body<'a>); 4]>,
        mut flags: SmallVec<[FlagRef<'a>; 4]>,
        mut attributes: StrAttrs<'a>,
        user_id: Option<&'a str>,
    ) {
        let mut events = events.into_iter().peekable();
        while let Some((event_id, time, body)) = events.next() {
            let last = events.peek().is_none();
            self.out.push(EventRef {
                event_id,
                timestamp: ns_to_ms(time),
                flags: if last {
                    std::mem::take(&mut flags)
                } else {
                    flags.clone()
                },
                attributes: if last {
                    std::mem::take(&mut attributes)
                } else {
                    attributes.clone()
                },
                user_id,
                body,
            });
        }
    }

    /// A span or log record that carries no flag evaluation.
    fn unflagged(&mut self) {
        self.seen.total += 1;
        self.seen.skipped += 1;
    }

    fn span(&mut self, res: &Resource<'a>, span: &SpanView<'a>) {
        self.seen.total += 1;
        let mut evals = std::mem::take(&mut self.scratch.evals);
        evals.clear();
        for ev in &span.events {
            if ev.kind == EV_EVAL || ev.kind == EV_EVAL_OLD {
                let time = if ev.time == 0 { span.start } else { ev.time };
                if let Some(e) = self.evaluation(&ev.attrs, time) {
                    Self::push_eval(&mut evals, e);
                }
            }
        }
        if let Some(e) = self.evaluation(&span.attrs, span.start) {
            Self::push_eval(&mut evals, e);
        }
        if evals.is_empty() {
            self.seen.skipped += 1;
            self.scratch.evals = evals;
            return;
        }
        let flags: SmallVec<[FlagRef<'a>; 4]> = evals.iter().map(|e| e.flag).collect();
        let (attributes, unit) = self.attributes_and_unit(res, &span.attrs, &evals);

        let mut id = String::with_capacity(57);
        span.trace_id.write_hex(&mut id);
        span.span_id.write_hex(&mut id);
        let base_len = id.len();
        id.push_str(":exposure");
        let id = self.alloc(id);
        let base = &id[..base_len];

        let latency = (span.end >= span.start).then(|| (span.end - span.start) as f64 / 1e6);
        let failed = span.status_code == 2;
        let mut events: SmallVec<[(&'a str, u64, Body<'a>); 4]> = SmallVec::new();
        events.push((
            id,
            evals[0].time,
            Body::Product {
                journey: span.name,
                step: None,
                outcome: Outcome::Exposure,
                latency_ms: None,
                value: None,
            },
        ));
        events.push((
            base,
            span.end,
            Body::Product {
                journey: span.name,
                step: None,
                outcome: if failed {
                    Outcome::Failed
                } else {
                    Outcome::Completed
                },
                latency_ms: latency,
                value: None,
            },
        ));
        let status = status_code(&span.attrs);
        let mut n = 0usize;
        for ev in span.events.iter().filter(|e| e.kind == EV_EXCEPTION) {
            let class = self
                .attr_str(&ev.attrs, "exception.type")
                .unwrap_or("exception");
            let fatal = matches!(get(&ev.attrs, "exception.escaped"), Some(Val::Bool(true)));
            let time = if ev.time == 0 { span.end } else { ev.time };
            let body = Body::Error {
                service: res.service,
                error_class: class,
                status_code: status,
                fatal,
                latency_ms: latency,
            };
            events.push((self.alloc(format!("{base}:error:{n}")), time, body));
            n += 1;
        }
        if n == 0 && failed {
            let class = non_empty(Some(span.status_message)).unwrap_or("ERROR");
            let body = Body::Error {
                service: res.service,
                error_class: class,
                status_code: status,
                fatal: false,
                latency_ms: latency,
            };
            events.push((self.alloc(format!("{base}:error:0")), span.end, body));
        }
        self.emit(events, flags, attributes, unit);
        self.scratch.evals = evals;
    }

    fn log(&mut self, res: &Resource<'a>, log: &LogView<'a>, index: (usize, usize, usize)) {
        self.seen.total += 1;
        let Some(eval) = self.evaluation(&log.attrs, 0) else {
            self.seen.skipped += 1;
            return;
        };
        let evals = [eval];
        let flags: SmallVec<[FlagRef<'a>; 4]> = SmallVec::from_slice(&[evals[0].flag]);
        let (attributes, unit) = self.attributes_and_unit(res, &log.attrs, &evals);
        let time = if log.time == 0 {
            log.observed
        } else {
            log.time
        };
        let event_id = if log.trace_id.is_absent() || log.span_id.is_absent() {
            self.alloc(format!("log:{}.{}.{}", index.0, index.1, index.2))
        } else {
            let mut id = String::with_capacity(64);
            log.trace_id.write_hex(&mut id);
            log.span_id.write_hex(&mut id);
            id.push_str(":log:");
            id.push_str(&index.2.to_string());
            self.alloc(id)
        };
        let exception = self.attr_str(&log.attrs, "exception.type");
        let body = if log.severity >= 17 || exception.is_some() {
            Body::Error {
                service: res.service,
                error_class: exception.unwrap_or("log_error"),
                status_code: status_code(&log.attrs),
                fatal: log.severity >= 21
                    || matches!(get(&log.attrs, "exception.escaped"), Some(Val::Bool(true))),
                latency_ms: None,
            }
        } else {
            let journey = self
                .attr_str(&log.attrs, "event.name")
                .or(non_empty(Some(log.event_name)))
                .unwrap_or("feature_flag.evaluation");
            Body::Product {
                journey,
                step: None,
                outcome: Outcome::Exposure,
                latency_ms: None,
                value: None,
            }
        };
        self.out.push(EventRef {
            event_id,
            timestamp: ns_to_ms(time),
            flags,
            attributes,
            user_id: unit,
            body,
        });
    }
}

// ---------------------------------------------------------------------------------------
// Protobuf.

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const SGROUP: u8 = 3;
const EGROUP: u8 = 4;
const I32: u8 = 5;

mod proto {
    use super::*;

    /// A cursor over one message's bytes; `base` is the message's offset in the payload.
    #[derive(Clone, Copy)]
    pub(super) struct Reader<'a> {
        buf: &'a [u8],
        pos: usize,
        base: usize,
        msg: &'static str,
        field_at: usize,
    }

    pub(super) type R<T> = Result<T, OtlpError>;

    impl<'a> Reader<'a> {
        pub(super) fn new(buf: &'a [u8], base: usize, msg: &'static str) -> Self {
            Reader {
                buf,
                pos: 0,
                base,
                msg,
                field_at: 0,
            }
        }

        fn err(&self, field: u32, problem: Problem) -> OtlpError {
            OtlpError::Field {
                message: self.msg,
                field,
                offset: self.base + self.field_at,
                problem,
            }
        }

        #[inline]
        fn varint(&mut self) -> Result<u64, Problem> {
            let buf = self.buf;
            let mut pos = self.pos;
            let Some(&first) = buf.get(pos) else {
                return Err(Problem::TruncatedVarint);
            };
            pos += 1;
            if first < 0x80 {
                self.pos = pos;
                return Ok(first as u64);
            }
            let mut v = (first & 0x7f) as u64;
            let mut shift = 7;
            loop {
                let Some(&b) = buf.get(pos) else {
                    return Err(Problem::TruncatedVarint);
                };
                pos += 1;
                if shift == 63 && b > 1 {
                    return Err(Problem::VarintOverflow);
                }
                v |= ((b & 0x7f) as u64) << shift;
                if b < 0x80 {
                    self.pos = pos;
                    return Ok(v);
                }
                shift += 7;
            }
        }

        /// The next field's number and wire type, or None at the end of the message.
        #[inline]
        pub(super) fn tag(&mut self) -> R<Option<(u32, u8)>> {
            if self.pos >= self.buf.len() {
                return Ok(None);
            }
            self.field_at = self.pos;
            let t = self.varint().map_err(|p| OtlpError::Tag {
                message: self.msg,
                offset: self.base + self.field_at,
                problem: if p == Problem::TruncatedVarint {
                    Problem::TruncatedTag
                } else {
                    p
                },
            })?;
            let field = t >> 3;
            let wt = (t & 7) as u8;
            if field == 0 || field > u32::MAX as u64 {
                return Err(OtlpError::Tag {
                    message: self.msg,
                    offset: self.base + self.field_at,
                    problem: Problem::FieldZero,
                });
            }
            Ok(Some((field as u32, wt)))
        }

        #[inline]
        fn expect(&self, field: u32, wt: u8, expected: u8) -> R<()> {
            if wt == expected {
                Ok(())
            } else {
                Err(self.err(
                    field,
                    Problem::WrongWireType {
                        found: wt,
                        expected,
                    },
                ))
            }
        }

        #[inline]
        fn take(&mut self, field: u32, n: u64) -> R<&'a [u8]> {
            let left = self.buf.len() - self.pos;
            if n > left as u64 {
                return Err(self.err(field, Problem::Truncated { len: n, left }));
            }
            let s = &self.buf[self.pos..self.pos + n as usize];
            self.pos += n as usize;
            Ok(s)
        }

        /// A length-delimited field's bytes, and their offset in the payload.
        #[inline]
        pub(super) fn bytes(&mut self, field: u32, wt: u8) -> R<(&'a [u8], usize)> {
            self.expect(field, wt, LEN)?;
            let n = self.varint().map_err(|p| self.err(field, p))?;
            let at = self.base + self.pos;
            Ok((self.take(field, n)?, at))
        }

        #[inline]
        pub(super) fn message(&mut self, field: u32, wt: u8, msg: &'static str) -> R<Reader<'a>> {
            let (b, at) = self.bytes(field, wt)?;
            Ok(Reader::new(b, at, msg))
        }

        #[inline]
        pub(super) fn string(&mut self, field: u32, wt: u8) -> R<&'a str> {
            let (b, _) = self.bytes(field, wt)?;
            std::str::from_utf8(b).map_err(|_| self.err(field, Problem::InvalidUtf8))
        }

        #[inline]
        pub(super) fn uint(&mut self, field: u32, wt: u8) -> R<u64> {
            self.expect(field, wt, VARINT)?;
            self.varint().map_err(|p| self.err(field, p))
        }

        #[inline]
        pub(super) fn fixed64(&mut self, field: u32, wt: u8) -> R<u64> {
            self.expect(field, wt, I64)?;
            let b = self.take(field, 8)?;
            Ok(u64::from_le_bytes(b.try_into().unwrap()))
        }

        /// Skips a field this reader does not use, whatever its wire type.
        #[inline]
        pub(super) fn skip(&mut self, field: u32, wt: u8) -> R<()> {
            match wt {
                VARINT => self.varint().map(drop).map_err(|p| self.err(field, p)),
                I64 => self.take(field, 8).map(drop),
                LEN => self.bytes(field, wt).map(drop),
                I32 => self.take(field, 4).map(drop),
                _ => self.skip_rare(field, wt),
            }
        }

        /// Groups (deprecated, never written by OTLP encoders) and invalid wire types.
        #[cold]
        fn skip_rare(&mut self, field: u32, wt: u8) -> R<()> {
            match wt {
                SGROUP => {
                    let at = self.field_at;
                    let mut depth = 1usize;
                    while depth > 0 {
                        let Some((f, w)) = self.tag()? else {
                            self.field_at = at;
                            return Err(self.err(field, Problem::UnbalancedGroup));
                        };
                        match w {
                            SGROUP => depth += 1,
                            EGROUP => depth -= 1,
                            _ => self.skip(f, w)?,
                        }
                    }
                    Ok(())
                }
                EGROUP => Err(self.err(field, Problem::UnbalancedGroup)),
                _ => Err(self.err(field, Problem::InvalidWireType(wt))),
            }
        }
    }

    /// An id of `n` bytes, or empty.
    fn id<'a>(r: &mut Reader<'a>, field: u32, wt: u8, n: usize) -> R<Id<'a>> {
        let (b, _) = r.bytes(field, wt)?;
        if !b.is_empty() && b.len() != n {
            return Err(r.err(
                field,
                Problem::IdLength {
                    found: b.len(),
                    expected: n,
                },
            ));
        }
        Ok(Id::Bytes(b))
    }

    /// `AnyValue`: the oneof's last member wins.
    fn any_value<'a>(mut r: Reader<'a>) -> R<Val<'a>> {
        let mut v = Val::Other;
        while let Some((f, wt)) = r.tag()? {
            match f {
                1 => v = Val::Str(r.string(f, wt)?),
                2 => v = Val::Bool(r.uint(f, wt)? != 0),
                3 => v = Val::Int(r.uint(f, wt)? as i64),
                4 => v = Val::Double(f64::from_bits(r.fixed64(f, wt)?)),
                5..=7 => {
                    r.bytes(f, wt)?;
                    v = Val::Other;
                }
                8 => {
                    r.uint(f, wt)?;
                    v = Val::Other;
                }
                _ => r.skip(f, wt)?,
            }
        }
        Ok(v)
    }

    /// The usual encoding of an `AnyValue`, a single scalar field filling the message;
    /// None for anything else (then the general reader decides, errors included).
    #[inline]
    fn any_value_fast(b: &[u8]) -> Option<Val<'_>> {
        match b {
            [] => Some(Val::Other),
            [0x0a, n, s @ ..] if *n < 0x80 && (*n as usize) == s.len() => {
                std::str::from_utf8(s).ok().map(Val::Str)
            }
            [0x10, x] if *x < 0x80 => Some(Val::Bool(*x != 0)),
            [0x18, v @ ..] if !v.is_empty() && v.len() <= 10 => {
                let (last, init) = v.split_last()?;
                if *last >= 0x80 || init.iter().any(|&x| x < 0x80) || (v.len() == 10 && *last > 1) {
                    return None;
                }
                let i = v
                    .iter()
                    .rev()
                    .fold(0u64, |acc, &x| (acc << 7) | (x & 0x7f) as u64);
                Some(Val::Int(i as i64))
            }
            [0x21, d @ ..] => Some(Val::Double(f64::from_bits(u64::from_le_bytes(
                d.try_into().ok()?,
            )))),
            _ => None,
        }
    }

    /// `KeyValue` appended to `attrs`.
    #[inline]
    fn key_value<'a>(r: Reader<'a>, attrs: &mut Attrs<'a>) -> R<()> {
        // Fast path: `0a <len> key 12 <len> value` with one-byte lengths, as encoders
        // write it.
        let b = r.buf;
        if let [0x0a, klen @ 0..0x80, rest @ ..] = b
            && let Some((key, [0x12, vlen @ 0..0x80, value @ ..])) =
                rest.split_at_checked(*klen as usize)
            && (*vlen as usize) == value.len()
        {
            let klen = *klen as usize;
            // A string value: its framing bytes are ASCII, so the whole KeyValue is UTF-8
            // exactly when key and value are, and one check does for both.
            if let [0x0a, n @ 0..0x80, s @ ..] = value
                && (*n as usize) == s.len()
                && let Ok(all) = std::str::from_utf8(b)
                && let (Some(key), Some(s)) = (all.get(2..2 + klen), all.get(b.len() - s.len()..))
            {
                attrs.push(Kv {
                    key,
                    val: Val::Str(s),
                });
                return Ok(());
            }
            if let Ok(key) = std::str::from_utf8(key)
                && let Some(val) = any_value_fast(value)
            {
                attrs.push(Kv { key, val });
                return Ok(());
            }
        }
        key_value_slow(r, attrs)
    }

    fn key_value_slow<'a>(mut r: Reader<'a>, attrs: &mut Attrs<'a>) -> R<()> {
        let mut key = "";
        let mut val = Val::Other;
        while let Some((f, wt)) = r.tag()? {
            match f {
                1 => key = r.string(f, wt)?,
                2 => {
                    let v = any_value(r.message(f, wt, "AnyValue")?)?;
                    if v != Val::Other {
                        val = v;
                    }
                }
                _ => r.skip(f, wt)?,
            }
        }
        attrs.push(Kv { key, val });
        Ok(())
    }

    /// `Resource`: its attributes appended (a repeated resource field merges).
    fn resource<'a>(mut r: Reader<'a>, attrs: &mut Attrs<'a>) -> R<()> {
        while let Some((f, wt)) = r.tag()? {
            match f {
                1 => key_value(r.message(f, wt, "KeyValue")?, attrs)?,
                _ => r.skip(f, wt)?,
            }
        }
        Ok(())
    }

    /// Whether a KeyValue's key is `key`; its value is not read.
    #[inline]
    fn key_is(mut r: Reader<'_>, key: &[u8]) -> R<bool> {
        // Fast path: `0a <len> key 12 <len> value`.
        if let [0x0a, klen @ 0..0x80, rest @ ..] = r.buf
            && let Some((k, [0x12, vlen @ 0..0x80, value @ ..])) =
                rest.split_at_checked(*klen as usize)
            && (*vlen as usize) == value.len()
        {
            return Ok(k == key);
        }
        let mut found = false;
        while let Some((f, wt)) = r.tag()? {
            match f {
                1 => found = r.bytes(f, wt)?.0 == key,
                _ => r.skip(f, wt)?,
            }
        }
        Ok(found)
    }

    /// Whether a KeyValue names a flag: only then is an item parsed in full.
    #[inline]
    fn names_a_flag(kv: Reader<'_>) -> R<bool> {
        key_is(kv, b"feature_flag.key")
    }

    /// The kind of a span event the mapping uses; other events are not read further.
    fn span_event_kind(mut r: Reader<'_>) -> R<Option<u8>> {
        let mut name: &[u8] = b"";
        while let Some((f, wt)) = r.tag()? {
            match f {
                2 => name = r.bytes(f, wt)?.0,
                _ => r.skip(f, wt)?,
            }
        }
        // The names are ASCII, so a match is valid UTF-8.
        Ok(std::str::from_utf8(name).ok().and_then(event_kind))
    }

    fn span_event<'a>(
        mut r: Reader<'a>,
        kind: u8,
        events: &mut SmallVec<[SpanEvent<'a>; 2]>,
    ) -> R<()> {
        let mut time = 0;
        let mut attrs = Attrs::new();
        while let Some((f, wt)) = r.tag()? {
            match f {
                1 => time = r.fixed64(f, wt)?,
                3 => key_value(r.message(f, wt, "KeyValue")?, &mut attrs)?,
                _ => r.skip(f, wt)?,
            }
        }
        events.push(SpanEvent { time, kind, attrs });
        Ok(())
    }

    fn status<'a>(mut r: Reader<'a>, s: &mut SpanView<'a>) -> R<()> {
        while let Some((f, wt)) = r.tag()? {
            match f {
                2 => s.status_message = r.string(f, wt)?,
                3 => s.status_code = r.uint(f, wt)? as i32,
                _ => r.skip(f, wt)?,
            }
        }
        Ok(())
    }

    /// Where a span's attributes and used events are, before they are parsed.
    #[derive(Default)]
    pub(super) struct Pending<'a> {
        attrs: SmallVec<[Reader<'a>; 16]>,
        events: SmallVec<[(u8, Reader<'a>); 4]>,
    }

    /// Reads a span into `s`, returning false without parsing its attributes and events
    /// when it carries no flag evaluation (neither an evaluation event nor a
    /// `feature_flag.key` attribute): most spans do not, and are skipped cheaply.
    fn span<'a>(mut r: Reader<'a>, s: &mut SpanView<'a>, p: &mut Pending<'a>) -> R<bool> {
        s.reset();
        p.attrs.clear();
        p.events.clear();
        let mut flagged = false;
        while let Some((f, wt)) = r.tag()? {
            match f {
                1 => s.trace_id = id(&mut r, f, wt, 16)?,
                2 => s.span_id = id(&mut r, f, wt, 8)?,
                5 => s.name = r.string(f, wt)?,
                7 => s.start = r.fixed64(f, wt)?,
                8 => s.end = r.fixed64(f, wt)?,
                9 => {
                    let kv = r.message(f, wt, "KeyValue")?;
                    flagged = flagged || names_a_flag(kv)?;
                    p.attrs.push(kv);
                }
                11 => {
                    let ev = r.message(f, wt, "Span.Event")?;
                    if let Some(kind) = span_event_kind(ev)? {
                        flagged = flagged || kind != EV_EXCEPTION;
                        p.events.push((kind, ev));
                    }
                }
                15 => status(r.message(f, wt, "Status")?, s)?,
                _ => r.skip(f, wt)?,
            }
        }
        if !flagged {
            return Ok(false);
        }
        for a in &p.attrs {
            key_value(*a, &mut s.attrs)?;
        }
        for (kind, ev) in &p.events {
            span_event(*ev, *kind, &mut s.events)?;
        }
        Ok(true)
    }

    /// The resource and the scope-level messages of a ResourceSpans/ResourceLogs, in
    /// either order on the wire.
    fn resource_and_scopes<'a>(
        mut r: Reader<'a>,
        m: &Mapper<'a, '_>,
        scope_msg: &'static str,
    ) -> R<(Resource<'a>, SmallVec<[Reader<'a>; 4]>)> {
        let mut attrs = Attrs::new();
        let mut scopes = SmallVec::new();
        while let Some((f, wt)) = r.tag()? {
            match f {
                1 => resource(r.message(f, wt, "Resource")?, &mut attrs)?,
                2 => scopes.push(r.message(f, wt, scope_msg)?),
                _ => r.skip(f, wt)?,
            }
        }
        Ok((m.resource(&attrs), scopes))
    }

    pub(super) fn traces<'a>(buf: &'a [u8], m: &mut Mapper<'a, '_>) -> R<()> {
        let mut top = Reader::new(buf, 0, "ExportTraceServiceRequest");
        let mut view = SpanView::new();
        let mut pending = Pending::default();
        while let Some((f, wt)) = top.tag()? {
            if f != 1 {
                top.skip(f, wt)?;
                continue;
            }
            let rs = top.message(f, wt, "ResourceSpans")?;
            let (res, scopes) = resource_and_scopes(rs, m, "ScopeSpans")?;
            for mut ss in scopes {
                while let Some((f, wt)) = ss.tag()? {
                    if f == 2 {
                        if span(ss.message(f, wt, "Span")?, &mut view, &mut pending)? {
                            m.span(&res, &view);
                        } else {
                            m.unflagged();
                        }
                    } else {
                        ss.skip(f, wt)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads a log record into `l`; false (attributes not parsed) when it has no
    /// `feature_flag.key` attribute.
    fn log_record<'a>(mut r: Reader<'a>, l: &mut LogView<'a>, p: &mut Pending<'a>) -> R<bool> {
        l.reset();
        p.attrs.clear();
        let mut flagged = false;
        while let Some((f, wt)) = r.tag()? {
            match f {
                1 => l.time = r.fixed64(f, wt)?,
                11 => l.observed = r.fixed64(f, wt)?,
                2 => l.severity = r.uint(f, wt)? as i32,
                6 => {
                    let kv = r.message(f, wt, "KeyValue")?;
                    flagged = flagged || names_a_flag(kv)?;
                    p.attrs.push(kv);
                }
                9 => l.trace_id = id(&mut r, f, wt, 16)?,
                10 => l.span_id = id(&mut r, f, wt, 8)?,
                12 => l.event_name = r.string(f, wt)?,
                _ => r.skip(f, wt)?,
            }
        }
        if !flagged {
            return Ok(false);
        }
        for a in &p.attrs {
            key_value(*a, &mut l.attrs)?;
        }
        Ok(true)
    }

    pub(super) fn logs<'a>(buf: &'a [u8], m: &mut Mapper<'a, '_>) -> R<()> {
        let mut top = Reader::new(buf, 0, "ExportLogsServiceRequest");
        let mut view = LogView::new();
        let mut pending = Pending::default();
        let mut ri = 0;
        while let Some((f, wt)) = top.tag()? {
            if f != 1 {
                top.skip(f, wt)?;
                continue;
            }
            let rl = top.message(f, wt, "ResourceLogs")?;
            let (res, scopes) = resource_and_scopes(rl, m, "ScopeLogs")?;
            for (si, mut sl) in scopes.into_iter().enumerate() {
                let mut li = 0;
                while let Some((f, wt)) = sl.tag()? {
                    if f == 2 {
                        if log_record(sl.message(f, wt, "LogRecord")?, &mut view, &mut pending)? {
                            m.log(&res, &view, (ri, si, li));
                        } else {
                            m.unflagged();
                        }
                        li += 1;
                    } else {
                        sl.skip(f, wt)?;
                    }
                }
            }
            ri += 1;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// OTLP/JSON.

mod json {
    use super::*;
    use serde::de::{self, Deserializer, IgnoredAny, Visitor};

    type R<T> = Result<T, OtlpError>;

    /// A 64-bit unsigned integer (timestamps): JSON string or number.
    #[derive(Default, Clone, Copy)]
    pub(super) struct U64(pub u64);
    /// A 64-bit signed integer (intValue): JSON string or number.
    #[derive(Clone, Copy)]
    pub(super) struct I64(pub i64);
    /// A double: JSON number, or a string ("NaN", "Infinity", "-Infinity", or a number).
    #[derive(Clone, Copy)]
    pub(super) struct F64(pub f64);
    /// An enum: integer, or its name.
    #[derive(Default, Clone, Copy)]
    pub(super) struct Enum(pub i32);

    macro_rules! int_visitor {
        ($ty:ident, $inner:ty, $what:literal) => {
            impl<'de> Deserialize<'de> for $ty {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    struct V;
                    impl<'de> Visitor<'de> for V {
                        type Value = $ty;
                        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                            f.write_str($what)
                        }
                        fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                            <$inner>::try_from(v)
                                .map($ty)
                                .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
                        }
                        fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                            <$inner>::try_from(v)
                                .map($ty)
                                .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
                        }
                        fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                            // Exponent notation (1.5e18) is valid proto3 JSON for integers.
                            let i = v as $inner;
                            if v.fract() == 0.0 && i as f64 == v {
                                Ok($ty(i))
                            } else {
                                Err(E::invalid_value(de::Unexpected::Float(v), &self))
                            }
                        }
                        fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                            v.parse::<$inner>()
                                .map($ty)
                                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
                        }
                    }
                    d.deserialize_any(V)
                }
            }
        };
    }
    int_visitor!(U64, u64, "an unsigned 64-bit integer (string or number)");
    int_visitor!(I64, i64, "a 64-bit integer (string or number)");

    impl<'de> Deserialize<'de> for F64 {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = F64;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a double (number, \"NaN\", \"Infinity\" or \"-Infinity\")")
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<F64, E> {
                    Ok(F64(v as f64))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<F64, E> {
                    Ok(F64(v as f64))
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<F64, E> {
                    Ok(F64(v))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<F64, E> {
                    match v {
                        "NaN" => Ok(F64(f64::NAN)),
                        "Infinity" => Ok(F64(f64::INFINITY)),
                        "-Infinity" => Ok(F64(f64::NEG_INFINITY)),
                        _ => v
                            .parse::<f64>()
                            .ok()
                            .filter(|x| x.is_finite())
                            .map(F64)
                            .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self)),
                    }
                }
            }
            d.deserialize_any(V)
        }
    }

    /// Enum names of the enums the mapping reads (Status.code, LogRecord.severity_number).
    fn enum_by_name(s: &str) -> Option<i32> {
        Some(match s {
            "STATUS_CODE_UNSET" => 0,
            "STATUS_CODE_OK" => 1,
            "STATUS_CODE_ERROR" => 2,
            "SEVERITY_NUMBER_UNSPECIFIED" => 0,
            _ => {
                let rest = s.strip_prefix("SEVERITY_NUMBER_")?;
                let (level, n) = match rest.find(|c: char| c.is_ascii_digit()) {
                    Some(i) => (&rest[..i], rest[i..].parse::<i32>().ok()?),
                    None => (rest, 1),
                };
                let base = match level {
                    "TRACE" => 1,
                    "DEBUG" => 5,
                    "INFO" => 9,
                    "WARN" => 13,
                    "ERROR" => 17,
                    "FATAL" => 21,
                    _ => return None,
                };
                if !(1..=4).contains(&n) {
                    return None;
                }
                base + n - 1
            }
        })
    }

    impl<'de> Deserialize<'de> for Enum {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Enum;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("an enum value (integer or name)")
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Enum, E> {
                    i32::try_from(v)
                        .map(Enum)
                        .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Enum, E> {
                    i32::try_from(v)
                        .map(Enum)
                        .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Enum, E> {
                    // Unknown names read as 0, as unknown values would be kept as-is.
                    Ok(Enum(enum_by_name(v).unwrap_or(0)))
                }
            }
            d.deserialize_any(V)
        }
    }

    /// A string that borrows when it has no escapes (serde's `Cow` only does so for a
    /// field of type `Cow` itself, not inside an `Option`).
    pub(super) struct Text<'a>(pub Cow<'a, str>);

    impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Text<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                    Ok(Text(Cow::Borrowed(v)))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                    Ok(Text(Cow::Owned(v.to_owned())))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                    Ok(Text(Cow::Owned(v)))
                }
            }
            d.deserialize_str(V)
        }
    }

    #[derive(Deserialize)]
    pub(super) struct TracesRequest<'a> {
        #[serde(borrow, default, rename = "resourceSpans", alias = "resource_spans")]
        resource_spans: Vec<ResourceSpans<'a>>,
    }

    #[derive(Deserialize)]
    struct ResourceSpans<'a> {
        #[serde(borrow, default)]
        resource: Option<Resource<'a>>,
        #[serde(borrow, default, rename = "scopeSpans", alias = "scope_spans")]
        scope_spans: Vec<ScopeSpans<'a>>,
    }

    #[derive(Deserialize)]
    struct Resource<'a> {
        #[serde(borrow, default)]
        attributes: Vec<KeyValue<'a>>,
    }

    #[derive(Deserialize)]
    struct ScopeSpans<'a> {
        #[serde(borrow, default)]
        spans: Vec<Span<'a>>,
    }

    #[derive(Deserialize)]
    struct Span<'a> {
        #[serde(borrow, default, rename = "traceId", alias = "trace_id")]
        trace_id: Cow<'a, str>,
        #[serde(borrow, default, rename = "spanId", alias = "span_id")]
        span_id: Cow<'a, str>,
        #[serde(borrow, default)]
        name: Cow<'a, str>,
        #[serde(default, rename = "startTimeUnixNano", alias = "start_time_unix_nano")]
        start: U64,
        #[serde(default, rename = "endTimeUnixNano", alias = "end_time_unix_nano")]
        end: U64,
        #[serde(borrow, default)]
        attributes: Vec<KeyValue<'a>>,
        #[serde(borrow, default)]
        events: Vec<Event<'a>>,
        #[serde(borrow, default)]
        status: Option<Status<'a>>,
    }

    #[derive(Deserialize)]
    struct Event<'a> {
        #[serde(default, rename = "timeUnixNano", alias = "time_unix_nano")]
        time: U64,
        #[serde(borrow, default)]
        name: Cow<'a, str>,
        #[serde(borrow, default)]
        attributes: Vec<KeyValue<'a>>,
    }

    #[derive(Deserialize)]
    struct Status<'a> {
        #[serde(borrow, default)]
        message: Cow<'a, str>,
        #[serde(default)]
        code: Enum,
    }

    #[derive(Deserialize)]
    struct KeyValue<'a> {
        #[serde(borrow, default)]
        key: Cow<'a, str>,
        #[serde(borrow, default)]
        value: Option<AnyValue<'a>>,
    }

    #[derive(Deserialize)]
    struct AnyValue<'a> {
        #[serde(borrow, default, rename = "stringValue", alias = "string_value")]
        string: Option<Text<'a>>,
        #[serde(default, rename = "boolValue", alias = "bool_value")]
        boolean: Option<bool>,
        #[serde(default, rename = "intValue", alias = "int_value")]
        int: Option<I64>,
        #[serde(default, rename = "doubleValue", alias = "double_value")]
        double: Option<F64>,
        #[serde(default, rename = "arrayValue", alias = "array_value")]
        _array: Option<IgnoredAny>,
        #[serde(default, rename = "kvlistValue", alias = "kvlist_value")]
        _kvlist: Option<IgnoredAny>,
        #[serde(default, rename = "bytesValue", alias = "bytes_value")]
        _bytes: Option<IgnoredAny>,
    }

    #[derive(Deserialize)]
    pub(super) struct LogsRequest<'a> {
        #[serde(borrow, default, rename = "resourceLogs", alias = "resource_logs")]
        resource_logs: Vec<ResourceLogs<'a>>,
    }

    #[derive(Deserialize)]
    struct ResourceLogs<'a> {
        #[serde(borrow, default)]
        resource: Option<Resource<'a>>,
        #[serde(borrow, default, rename = "scopeLogs", alias = "scope_logs")]
        scope_logs: Vec<ScopeLogs<'a>>,
    }

    #[derive(Deserialize)]
    struct ScopeLogs<'a> {
        #[serde(borrow, default, rename = "logRecords", alias = "log_records")]
        log_records: Vec<LogRecord<'a>>,
    }

    #[derive(Deserialize)]
    struct LogRecord<'a> {
        #[serde(default, rename = "timeUnixNano", alias = "time_unix_nano")]
        time: U64,
        #[serde(
            default,
            rename = "observedTimeUnixNano",
            alias = "observed_time_unix_nano"
        )]
        observed: U64,
        #[serde(default, rename = "severityNumber", alias = "severity_number")]
        severity: Enum,
        #[serde(borrow, default)]
        attributes: Vec<KeyValue<'a>>,
        #[serde(borrow, default, rename = "traceId", alias = "trace_id")]
        trace_id: Cow<'a, str>,
        #[serde(borrow, default, rename = "spanId", alias = "span_id")]
        span_id: Cow<'a, str>,
        #[serde(borrow, default, rename = "eventName", alias = "event_name")]
        event_name: Cow<'a, str>,
    }

    impl<'a> Mapper<'a, '_> {
        fn text(&self, s: Cow<'a, str>) -> &'a str {
            match s {
                Cow::Borrowed(b) => b,
                Cow::Owned(o) => self.alloc(o),
            }
        }

        fn id(&self, s: Cow<'a, str>, bytes: usize, field: &'static str) -> R<Id<'a>> {
            let s = self.text(s);
            if !s.is_empty() && s.len() != 2 * bytes {
                return Err(OtlpError::JsonValue {
                    field,
                    problem: Problem::IdLength {
                        found: s.len(),
                        expected: 2 * bytes,
                    },
                });
            }
            if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(OtlpError::JsonValue {
                    field,
                    problem: Problem::IdNotHex,
                });
            }
            Ok(Id::Hex(s))
        }

        fn attrs(&self, kvs: Vec<KeyValue<'a>>, attrs: &mut Attrs<'a>) {
            for kv in kvs {
                let val = match kv.value {
                    None => Val::Other,
                    Some(AnyValue {
                        string: Some(s), ..
                    }) => Val::Str(self.text(s.0)),
                    Some(AnyValue {
                        boolean: Some(b), ..
                    }) => Val::Bool(b),
                    Some(AnyValue { int: Some(i), .. }) => Val::Int(i.0),
                    Some(AnyValue {
                        double: Some(d), ..
                    }) => Val::Double(d.0),
                    Some(_) => Val::Other,
                };
                attrs.push(Kv {
                    key: self.text(kv.key),
                    val,
                });
            }
        }

        fn json_resource(&self, r: Option<Resource<'a>>) -> super::Resource<'a> {
            let mut attrs = Attrs::new();
            if let Some(r) = r {
                self.attrs(r.attributes, &mut attrs);
            }
            self.resource(&attrs)
        }
    }

    /// The whole document checked at once: serde_json then need not check each string.
    fn utf8(buf: &[u8]) -> R<&str> {
        std::str::from_utf8(buf).map_err(|e| OtlpError::JsonUtf8(e.valid_up_to()))
    }

    pub(super) fn traces<'a>(buf: &'a [u8], m: &mut Mapper<'a, '_>) -> R<()> {
        let req: TracesRequest<'a> = serde_json::from_str(utf8(buf)?)?;
        let mut view = SpanView::new();
        for rs in req.resource_spans {
            let res = m.json_resource(rs.resource);
            for ss in rs.scope_spans {
                for sp in ss.spans {
                    view.reset();
                    view.trace_id = m.id(sp.trace_id, 16, "traceId")?;
                    view.span_id = m.id(sp.span_id, 8, "spanId")?;
                    view.name = m.text(sp.name);
                    view.start = sp.start.0;
                    view.end = sp.end.0;
                    if let Some(st) = sp.status {
                        view.status_code = st.code.0;
                        view.status_message = m.text(st.message);
                    }
                    m.attrs(sp.attributes, &mut view.attrs);
                    for ev in sp.events {
                        if let Some(kind) = event_kind(&ev.name) {
                            let mut attrs = Attrs::new();
                            m.attrs(ev.attributes, &mut attrs);
                            view.events.push(SpanEvent {
                                time: ev.time.0,
                                kind,
                                attrs,
                            });
                        }
                    }
                    m.span(&res, &view);
                }
            }
        }
        Ok(())
    }

    pub(super) fn logs<'a>(buf: &'a [u8], m: &mut Mapper<'a, '_>) -> R<()> {
        let req: LogsRequest<'a> = serde_json::from_str(utf8(buf)?)?;
        let mut view = LogView::new();
        for (ri, rl) in req.resource_logs.into_iter().enumerate() {
            let res = m.json_resource(rl.resource);
            for (si, sl) in rl.scope_logs.into_iter().enumerate() {
                for (li, lr) in sl.log_records.into_iter().enumerate() {
                    view.reset();
                    view.time = lr.time.0;
                    view.observed = lr.observed.0;
                    view.severity = lr.severity.0;
                    view.event_name = m.text(lr.event_name);
                    view.trace_id = m.id(lr.trace_id, 16, "traceId")?;
                    view.span_id = m.id(lr.span_id, 8, "spanId")?;
                    m.attrs(lr.attributes, &mut view.attrs);
                    m.log(&res, &view, (ri, si, li));
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Encoders for the demo and benchmarks.

/// A scalar attribute value for [`SpanSpec`].
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
}

/// One flag evaluation, written as a `feature_flag.evaluation` span event at span start.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagSpec {
    pub key: String,
    pub variant: String,
    /// `feature_flag.context.id`: the unit the flag was evaluated for.
    pub context_id: Option<String>,
}

/// A span to encode. Consecutive spans with the same service and resource attributes
/// share one ResourceSpans (one ScopeSpans, scope `guardrail`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpanSpec {
    /// `service.name` of the resource.
    pub service: String,
    /// Further resource attributes.
    pub resource_attributes: Vec<(String, AttrValue)>,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Status code ERROR (else UNSET), with `status_message`.
    pub error: bool,
    pub status_message: String,
    /// An `exception` span event at end time with this `exception.type`.
    pub exception_type: Option<String>,
    pub flags: Vec<FlagSpec>,
    pub attributes: Vec<(String, AttrValue)>,
}

mod wire {
    use super::*;

    pub(super) fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub(super) fn tag(out: &mut Vec<u8>, field: u32, wt: u8) {
        varint(out, ((field as u64) << 3) | wt as u64);
    }

    pub(super) fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        tag(out, field, LEN);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    pub(super) fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
        tag(out, field, I64);
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub(super) fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
        tag(out, field, VARINT);
        varint(out, v);
    }

    /// A nested message written by `f`.
    pub(super) fn message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
        let mut inner = Vec::new();
        f(&mut inner);
        bytes(out, field, &inner);
    }

    pub(super) fn key_value(out: &mut Vec<u8>, field: u32, key: &str, v: &AttrValue) {
        message(out, field, |kv| {
            bytes(kv, 1, key.as_bytes());
            message(kv, 2, |any| match v {
                AttrValue::Str(s) => bytes(any, 1, s.as_bytes()),
                AttrValue::Bool(b) => uint(any, 2, *b as u64),
                AttrValue::Int(i) => uint(any, 3, *i as u64),
                AttrValue::Double(d) => fixed64(any, 4, d.to_bits()),
            });
        });
    }
}

/// Groups consecutive spans that share service and resource attributes.
fn resource_groups(spans: &[SpanSpec]) -> impl Iterator<Item = &[SpanSpec]> {
    spans.chunk_by(|a, b| a.service == b.service && a.resource_attributes == b.resource_attributes)
}

fn str_attr(k: &str, v: &str) -> (String, AttrValue) {
    (k.to_string(), AttrValue::Str(v.to_string()))
}

fn flag_attrs(f: &FlagSpec) -> Vec<(String, AttrValue)> {
    let mut a = vec![
        str_attr("feature_flag.key", &f.key),
        str_attr("feature_flag.result.variant", &f.variant),
    ];
    if let Some(c) = &f.context_id {
        a.push(str_attr("feature_flag.context.id", c));
    }
    a
}

/// Spans as a protobuf `ExportTraceServiceRequest`.
pub fn encode_traces(spans: &[SpanSpec]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spans.len() * 400);
    for group in resource_groups(spans) {
        let first = &group[0];
        wire::message(&mut out, 1, |rs| {
            wire::message(rs, 1, |res| {
                wire::key_value(
                    res,
                    1,
                    "service.name",
                    &AttrValue::Str(first.service.clone()),
                );
                for (k, v) in &first.resource_attributes {
                    wire::key_value(res, 1, k, v);
                }
            });
            wire::message(rs, 2, |ss| {
                wire::message(ss, 1, |scope| wire::bytes(scope, 1, b"guardrail"));
                for s in group {
                    wire::message(ss, 2, |sp| encode_span(sp, s));
                }
            });
        });
    }
    out
}

fn encode_span(out: &mut Vec<u8>, s: &SpanSpec) {
    wire::bytes(out, 1, &s.trace_id);
    wire::bytes(out, 2, &s.span_id);
    wire::bytes(out, 5, s.name.as_bytes());
    wire::uint(out, 6, 2); // SPAN_KIND_SERVER
    wire::fixed64(out, 7, s.start_ns);
    wire::fixed64(out, 8, s.end_ns);
    for (k, v) in &s.attributes {
        wire::key_value(out, 9, k, v);
    }
    for f in &s.flags {
        wire::message(out, 11, |ev| {
            wire::fixed64(ev, 1, s.start_ns);
            wire::bytes(ev, 2, b"feature_flag.evaluation");
            for (k, v) in flag_attrs(f) {
                wire::key_value(ev, 3, &k, &v);
            }
        });
    }
    if let Some(t) = &s.exception_type {
        wire::message(out, 11, |ev| {
            wire::fixed64(ev, 1, s.end_ns);
            wire::bytes(ev, 2, b"exception");
            wire::key_value(ev, 3, "exception.type", &AttrValue::Str(t.clone()));
        });
    }
    if s.error {
        wire::message(out, 15, |st| {
            if !s.status_message.is_empty() {
                wire::bytes(st, 2, s.status_message.as_bytes());
            }
            wire::uint(st, 3, 2);
        });
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    Id::Bytes(b).write_hex(&mut s);
    s
}

fn json_attrs(attrs: &[(String, AttrValue)]) -> serde_json::Value {
    use serde_json::json;
    attrs
        .iter()
        .map(|(k, v)| {
            let value = match v {
                AttrValue::Str(s) => json!({ "stringValue": s }),
                AttrValue::Bool(b) => json!({ "boolValue": b }),
                AttrValue::Int(i) => json!({ "intValue": i.to_string() }),
                AttrValue::Double(d) if d.is_nan() => json!({ "doubleValue": "NaN" }),
                AttrValue::Double(d) if d.is_infinite() => {
                    json!({ "doubleValue": if *d > 0.0 { "Infinity" } else { "-Infinity" } })
                }
                AttrValue::Double(d) => json!({ "doubleValue": d }),
            };
            json!({ "key": k, "value": value })
        })
        .collect()
}

/// Spans as an OTLP/JSON `ExportTraceServiceRequest`.
pub fn encode_traces_json(spans: &[SpanSpec]) -> Vec<u8> {
    use serde_json::json;
    let resource_spans: Vec<_> = resource_groups(spans)
        .map(|group| {
            let first = &group[0];
            let mut res = vec![str_attr("service.name", &first.service)];
            res.extend(first.resource_attributes.iter().cloned());
            let spans: Vec<_> = group
                .iter()
                .map(|s| {
                    let mut events: Vec<_> = s
                        .flags
                        .iter()
                        .map(|f| {
                            json!({
                                "timeUnixNano": s.start_ns.to_string(),
                                "name": "feature_flag.evaluation",
                                "attributes": json_attrs(&flag_attrs(f)),
                            })
                        })
                        .collect();
                    if let Some(t) = &s.exception_type {
                        events.push(json!({
                            "timeUnixNano": s.end_ns.to_string(),
                            "name": "exception",
                            "attributes": json_attrs(&[str_attr("exception.type", t)]),
                        }));
                    }
                    let mut span = json!({
                        "traceId": hex(&s.trace_id),
                        "spanId": hex(&s.span_id),
                        "name": s.name,
                        "kind": 2,
                        "startTimeUnixNano": s.start_ns.to_string(),
                        "endTimeUnixNano": s.end_ns.to_string(),
                        "attributes": json_attrs(&s.attributes),
                        "events": events,
                    });
                    if s.error {
                        span["status"] = json!({ "message": s.status_message, "code": 2 });
                    }
                    span
                })
                .collect();
            json!({
                "resource": { "attributes": json_attrs(&res) },
                "scopeSpans": [{ "scope": { "name": "guardrail" }, "spans": spans }],
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "resourceSpans": resource_spans })).expect("JSON of plain values")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// Made by scripts/otlp_vectors.py with the official opentelemetry-proto package.
    const VECTORS: &str = include_str!("../../tests/data/byo/otlp.json");

    fn requests() -> &'static [Value] {
        static REQUESTS: std::sync::LazyLock<Vec<Value>> = std::sync::LazyLock::new(|| {
            let doc: Value = serde_json::from_str(VECTORS).unwrap();
            doc["requests"].as_array().unwrap().clone()
        });
        &REQUESTS
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn signal(r: &Value) -> Signal {
        match r["signal"].as_str().unwrap() {
            "traces" => Signal::Traces,
            "logs" => Signal::Logs,
            s => panic!("signal {s}"),
        }
    }

    /// An event in the vectors' JSON shape.
    fn to_json(e: &EventRef<'_>) -> Value {
        let body = match &e.body {
            Body::Product {
                journey,
                step,
                outcome,
                latency_ms,
                value,
            } => json!({
                "kind": "product", "journey": journey, "step": step, "outcome": outcome.as_str(),
                "latency_ms": latency_ms, "value": value,
            }),
            Body::Error {
                service,
                error_class,
                status_code,
                fatal,
                latency_ms,
            } => json!({
                "kind": "error", "service": service, "error_class": error_class,
                "status_code": status_code, "fatal": fatal, "latency_ms": latency_ms,
            }),
            Body::Support { .. } => json!({ "kind": "support" }),
        };
        json!({
            "event_id": e.event_id,
            "timestamp": e.timestamp,
            "flags": e.flags.iter().map(|f| [f.key, f.variant]).collect::<Vec<_>>(),
            "attributes": e.attributes.iter().map(|(k, v)| [*k, *v]).collect::<Vec<_>>(),
            "user_id": e.user_id,
            "body": body,
        })
    }

    fn check(r: &Value, what: &str, encoding: Encoding, bytes: &[u8]) {
        let name = r["name"].as_str().unwrap();
        let arena = Arena::new();
        let mut out = Vec::new();
        let seen = decode(signal(r), encoding, bytes, &arena, &mut out)
            .unwrap_or_else(|e| panic!("{name} {what}: {e}"));
        let expected = r["events"].as_array().unwrap();
        assert_eq!(out.len(), expected.len(), "{name} {what}: event count");
        for (i, (e, x)) in out.iter().zip(expected).enumerate() {
            let got = to_json(e);
            for field in [
                "event_id",
                "timestamp",
                "flags",
                "attributes",
                "user_id",
                "body",
            ] {
                assert_eq!(
                    got[field], x[field],
                    "{name} {what}: event {i} field {field}"
                );
            }
        }
        assert_eq!(
            seen.total as u64,
            r["total"].as_u64().unwrap(),
            "{name} {what}: total"
        );
        assert_eq!(
            seen.skipped as u64,
            r["skipped"].as_u64().unwrap(),
            "{name} {what}: skipped"
        );
    }

    #[test]
    fn reference_vectors_protobuf() {
        for r in requests() {
            check(
                r,
                "protobuf",
                Encoding::Protobuf,
                &unhex(r["protobuf_hex"].as_str().unwrap()),
            );
        }
    }

    #[test]
    fn reference_vectors_json() {
        for r in requests() {
            check(
                r,
                "otlp_json",
                Encoding::Json,
                r["otlp_json"].as_str().unwrap().as_bytes(),
            );
            if let Some(ascii) = r["otlp_json_ascii"].as_str() {
                check(r, "otlp_json_ascii", Encoding::Json, ascii.as_bytes());
            }
        }
    }

    #[test]
    fn vectors_cover_the_cases() {
        let all = requests();
        let events: Vec<&Value> = all
            .iter()
            .flat_map(|r| r["events"].as_array().unwrap())
            .collect();
        let has = |f: &dyn Fn(&Value) -> bool| events.iter().any(|e| f(e));
        assert!(has(&|e| e["body"]["outcome"] == "FAILED"));
        assert!(has(&|e| e["body"]["outcome"] == "COMPLETED"));
        assert!(has(&|e| e["body"]["error_class"] == "ERROR"));
        assert!(has(&|e| e["body"]["error_class"] == "log_error"));
        assert!(has(&|e| e["body"]["fatal"] == true));
        assert!(has(&|e| e["flags"].as_array().unwrap().len() >= 2));
        assert!(has(&|e| e["user_id"].is_null()));
        assert!(has(&|e| e["event_id"]
            .as_str()
            .unwrap()
            .starts_with("log:")));
        assert!(all.iter().any(|r| r["otlp_json_ascii"].is_string()));
    }

    /// Protobuf strings borrow from the input; JSON ones too when unescaped.
    #[test]
    fn strings_borrow_from_the_input() {
        let r = &requests()[0];
        let proto = unhex(r["protobuf_hex"].as_str().unwrap());
        let text = r["otlp_json"].as_str().unwrap().as_bytes();
        for (encoding, bytes) in [(Encoding::Protobuf, &proto[..]), (Encoding::Json, text)] {
            let arena = Arena::new();
            let mut out = Vec::new();
            decode(Signal::Traces, encoding, bytes, &arena, &mut out).unwrap();
            let inside = |s: &str| bytes.as_ptr_range().contains(&s.as_ptr()) || s.is_empty();
            for e in &out {
                if let Body::Product { journey, .. } = e.body {
                    assert!(inside(journey), "{encoding:?} journey {journey:?} copied");
                }
                for f in &e.flags {
                    assert!(inside(f.key), "{encoding:?} flag key copied");
                }
                for (k, v) in &e.attributes {
                    assert!(inside(k));
                    if *k == "service.name" || *k == "http.request.method" {
                        assert!(inside(v));
                    }
                    if *k == "s.escapes" {
                        assert_eq!(inside(v), encoding == Encoding::Protobuf);
                    }
                }
            }
        }
    }

    /// A cut at a top-level field boundary is a valid shorter request; anywhere else
    /// it is an error, never a panic. Every strict prefix of JSON is an error.
    #[test]
    fn truncation_is_an_error() {
        for r in requests() {
            let name = r["name"].as_str().unwrap();
            let proto = unhex(r["protobuf_hex"].as_str().unwrap());
            let bounds: Vec<usize> = r["protobuf_boundaries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as usize)
                .collect();
            // The large vector: a sample of cuts, to keep debug test time down.
            let step = if proto.len() > 10_000 { 37 } else { 1 };
            for n in (0..proto.len()).step_by(step).chain(bounds.iter().copied()) {
                let arena = Arena::new();
                let mut out = Vec::new();
                let res = decode(signal(r), Encoding::Protobuf, &proto[..n], &arena, &mut out);
                assert_eq!(
                    res.is_ok(),
                    bounds.contains(&n),
                    "{name} protobuf cut at {n}: {res:?}"
                );
                if res.is_err() {
                    assert!(out.is_empty());
                }
            }
            let text = r["otlp_json"].as_str().unwrap().as_bytes();
            let step = match text.len() {
                0..5_000 => 1,
                5_000..50_000 => 7,
                _ => 101,
            };
            for n in (0..text.len()).step_by(step) {
                let arena = Arena::new();
                let mut out = Vec::new();
                let res = decode(signal(r), Encoding::Json, &text[..n], &arena, &mut out);
                assert!(res.is_err(), "{name} JSON cut at {n}");
            }
        }
    }

    fn err_text(signal: Signal, encoding: Encoding, bytes: &[u8]) -> String {
        let arena = Arena::new();
        let mut out = Vec::new();
        decode(signal, encoding, bytes, &arena, &mut out)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn error_messages() {
        use Encoding::*;
        use Signal::*;
        // ResourceSpans of 5 bytes with 1 left.
        assert_eq!(
            err_text(Traces, Protobuf, &[0x0a, 0x05, 0x0a]),
            "field 1 of ExportTraceServiceRequest at byte 0: 5 bytes run past the end of the message (1 left)"
        );
        // scope_spans whose length varint is cut.
        assert_eq!(
            err_text(Traces, Protobuf, &[0x0a, 0x02, 0x12, 0xff]),
            "field 2 of ResourceSpans at byte 2: truncated varint"
        );
        // A cut tag.
        assert_eq!(
            err_text(Traces, Protobuf, &[0x0a, 0x01, 0x80]),
            "ResourceSpans at byte 2: truncated field tag"
        );
        // Span.name (5) as a varint.
        let span = [0x28, 0x01];
        let ss = [&[0x12, span.len() as u8][..], &span].concat();
        let rs = [&[0x12, ss.len() as u8][..], &ss].concat();
        let req = [&[0x0a, rs.len() as u8][..], &rs].concat();
        assert_eq!(
            err_text(Traces, Protobuf, &req),
            "field 5 of Span at byte 6: wire type 0 (varint), expected 2 (length-delimited)"
        );
        // A 3-byte trace id.
        let span = [0x0a, 0x03, 1, 2, 3];
        let ss = [&[0x12, span.len() as u8][..], &span].concat();
        let rs = [&[0x12, ss.len() as u8][..], &ss].concat();
        let req = [&[0x0a, rs.len() as u8][..], &rs].concat();
        assert_eq!(
            err_text(Traces, Protobuf, &req),
            "field 1 of Span at byte 6: id of length 3, expected 16 or empty"
        );
        // Invalid UTF-8 in a key.
        let kv = [0x0a, 0x01, 0xff];
        let res = [&[0x0a, kv.len() as u8][..], &kv].concat();
        let rs = [&[0x0a, res.len() as u8][..], &res].concat();
        let req = [&[0x0a, rs.len() as u8][..], &rs].concat();
        assert_eq!(
            err_text(Logs, Protobuf, &req),
            "field 1 of KeyValue at byte 6: invalid UTF-8"
        );
        assert_eq!(
            err_text(Traces, Protobuf, &[0x0f]),
            "field 1 of ExportTraceServiceRequest at byte 0: wire type 7 (invalid), expected 2 (length-delimited)"
        );
        assert_eq!(
            err_text(Traces, Protobuf, &[0x1f]),
            "field 3 of ExportTraceServiceRequest at byte 0: invalid wire type 7"
        );
        assert_eq!(
            err_text(Traces, Protobuf, &[0x00]),
            "ExportTraceServiceRequest at byte 0: field number 0"
        );
        assert_eq!(
            err_text(Traces, Protobuf, &[0x1c]),
            "field 3 of ExportTraceServiceRequest at byte 0: unbalanced group"
        );
        assert_eq!(
            err_text(Traces, Protobuf, &[0x1b, 0x08, 0x01]),
            "field 3 of ExportTraceServiceRequest at byte 0: unbalanced group"
        );
        // An unknown group with nested fields and groups is skipped.
        let group = [0x1b, 0x08, 0x01, 0x23, 0x12, 0x00, 0x24, 0x1c];
        let arena = Arena::new();
        let mut out = Vec::new();
        assert_eq!(
            decode(Traces, Protobuf, &group, &arena, &mut out).unwrap(),
            Skipped::default()
        );
        assert_eq!(
            err_text(
                Traces,
                Protobuf,
                &[
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
                ]
            ),
            "field 1 of ExportTraceServiceRequest at byte 0: wire type 0 (varint), expected 2 (length-delimited)"
        );
        assert_eq!(
            err_text(
                Traces,
                Protobuf,
                &[
                    0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
                ]
            ),
            "field 2 of ExportTraceServiceRequest at byte 0: varint longer than 64 bits"
        );
        assert_eq!(
            err_text(
                Traces,
                Json,
                br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"abc"}]}]}]}"#
            ),
            "OTLP/JSON traceId: id of length 3, expected 32 or empty"
        );
        assert_eq!(
            err_text(Logs, Json, br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"spanId":"zz00000000000000"}]}]}]}"#),
            "OTLP/JSON spanId: id is not hexadecimal"
        );
        assert!(
            err_text(
                Traces,
                Json,
                br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":"-1"}]}]}]}"#
            )
            .starts_with(
                "OTLP/JSON: invalid value: string \"-1\", expected an unsigned 64-bit integer"
            )
        );
        assert!(err_text(Traces, Json, b"[").starts_with("OTLP/JSON: "));
    }

    #[test]
    fn errors_leave_out_untouched() {
        let r = &requests()[0];
        let proto = unhex(r["protobuf_hex"].as_str().unwrap());
        let arena = Arena::new();
        let mut out = Vec::new();
        decode(Signal::Traces, Encoding::Protobuf, &proto, &arena, &mut out).unwrap();
        let n = out.len();
        // The first resource is fine (its events get appended), the cut is in the second.
        let cut = r["protobuf_boundaries"][1].as_u64().unwrap() as usize + 10;
        assert!(
            decode(
                Signal::Traces,
                Encoding::Protobuf,
                &proto[..cut],
                &arena,
                &mut out
            )
            .is_err()
        );
        assert_eq!(out.len(), n);
    }

    #[test]
    fn json_accepts_numbers_names_and_proto_field_names() {
        let text = br#"{"resource_spans":[{"resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"svc"}},
            {"key":"n","value":{"intValue":7}},
            {"key":"d","value":{"doubleValue":"-Infinity"}},
            {"key":"e","value":{"doubleValue":"1.25"}}]},
          "scope_spans":[{"spans":[{
            "trace_id":"0AF7651916CD43DD8448EB211C80319C","spanId":"B7AD6B7169203331",
            "name":"op","startTimeUnixNano":1000000000,"end_time_unix_nano":"3500000000",
            "status":{"code":"STATUS_CODE_ERROR"},
            "attributes":[{"key":"feature_flag.key","value":{"stringValue":"f"}},
                          {"key":"feature_flag.result.variant","value":{"stringValue":"on"}},
                          {"key":"http.status_code","value":{"intValue":"404"}}],
            "someFutureField":{"x":[1,2,{"y":null}]}}]}]}],
          "unknown":1}"#;
        let arena = Arena::new();
        let mut out = Vec::new();
        let seen = decode(Signal::Traces, Encoding::Json, text, &arena, &mut out).unwrap();
        assert_eq!(
            seen,
            Skipped {
                skipped: 0,
                total: 1
            }
        );
        assert_eq!(out.len(), 3);
        let id = "0af7651916cd43dd8448eb211c80319cb7ad6b7169203331";
        assert_eq!(out[0].event_id, format!("{id}:exposure"));
        assert_eq!(out[0].timestamp, 1000);
        assert_eq!(out[1].event_id, id);
        assert_eq!(
            out[1].body,
            Body::Product {
                journey: "op",
                step: None,
                outcome: Outcome::Failed,
                latency_ms: Some(2500.0),
                value: None
            }
        );
        assert_eq!(out[2].event_id, format!("{id}:error:0"));
        assert_eq!(
            out[2].body,
            Body::Error {
                service: "svc",
                error_class: "ERROR",
                status_code: Some(404),
                fatal: false,
                latency_ms: Some(2500.0)
            }
        );
        assert_eq!(out[0].attribute("n"), Some("7"));
        assert_eq!(out[0].attribute("d"), Some("-inf"));
        assert_eq!(out[0].attribute("e"), Some("1.25"));

        let logs = br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[
            {"severityNumber":"SEVERITY_NUMBER_FATAL2","observedTimeUnixNano":"2000000",
             "attributes":[{"key":"feature_flag.key","value":{"stringValue":"f"}},
                           {"key":"feature_flag.variant","value":{"stringValue":"v"}}]},
            {"severityNumber":"SEVERITY_NUMBER_WARN","eventName":"ev",
             "attributes":[{"key":"feature_flag.key","value":{"stringValue":"f"}},
                           {"key":"feature_flag.variant","value":{"stringValue":"w"}}]}]}]}]}"#;
        let mut out = Vec::new();
        decode(Signal::Logs, Encoding::Json, logs, &arena, &mut out).unwrap();
        assert_eq!(out[0].event_id, "log:0.0.0");
        assert_eq!(out[0].timestamp, 2);
        assert!(matches!(
            out[0].body,
            Body::Error {
                fatal: true,
                error_class: "log_error",
                service: "unknown_service",
                ..
            }
        ));
        assert!(matches!(
            out[1].body,
            Body::Product {
                journey: "ev",
                outcome: Outcome::Exposure,
                ..
            }
        ));
    }

    /// KeyValues written value first, or with lengths of two-byte varints, take the
    /// general path (and the flag pre-filter must see them too).
    #[test]
    fn unusual_key_value_layouts() {
        let long = "v".repeat(200);
        let mut span = Vec::new();
        wire::bytes(&mut span, 1, &[7; 16]);
        wire::bytes(&mut span, 2, &[8; 8]);
        wire::bytes(&mut span, 5, "op".as_bytes());
        wire::fixed64(&mut span, 7, 2_000_000);
        wire::fixed64(&mut span, 8, 5_000_000);
        for (k, v) in [
            ("feature_flag.key", "f"),
            ("feature_flag.result.variant", long.as_str()),
        ] {
            wire::message(&mut span, 9, |kv| {
                wire::message(kv, 2, |any| wire::bytes(any, 1, v.as_bytes()));
                wire::bytes(kv, 1, k.as_bytes());
            });
        }
        wire::message(&mut span, 9, |kv| {
            wire::bytes(kv, 1, b"n");
            wire::message(kv, 2, |any| wire::uint(any, 3, (-5i64) as u64));
        });
        let mut req = Vec::new();
        wire::message(&mut req, 1, |rs| {
            wire::message(rs, 2, |ss| wire::bytes(ss, 2, &span))
        });
        let arena = Arena::new();
        let mut out = Vec::new();
        decode(Signal::Traces, Encoding::Protobuf, &req, &arena, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].flags[0],
            FlagRef {
                key: "f",
                variant: &long
            }
        );
        assert_eq!(out[0].timestamp, 2);
        assert_eq!(out[0].attribute("n"), Some("-5"));
        assert_eq!(
            out[0].attribute("feature_flag.result.variant"),
            Some(long.as_str())
        );
        assert_eq!(out[0].user_id, None);
    }

    #[test]
    fn json_must_be_utf8() {
        assert_eq!(
            err_text(Signal::Logs, Encoding::Json, b"{\"resourceLogs\":\"\xff\"}"),
            "OTLP/JSON: invalid UTF-8 at byte 17"
        );
    }

    fn spec(i: u8) -> SpanSpec {
        SpanSpec {
            service: if i < 2 { "checkout" } else { "search" }.into(),
            resource_attributes: vec![
                ("service.version".into(), AttrValue::Str("1.2.3".into())),
                ("host.cores".into(), AttrValue::Int(8)),
            ],
            trace_id: [i; 16],
            span_id: [i + 1; 8],
            name: format!("GET /item/{i}"),
            start_ns: 1_700_000_000_000_000_000 + i as u64 * 1_000_000_000,
            end_ns: 1_700_000_000_250_000_000 + i as u64 * 1_000_000_000,
            error: i % 2 == 1,
            status_message: if i == 3 {
                "bad gateway".into()
            } else {
                String::new()
            },
            exception_type: (i == 1).then(|| "Timeout".to_string()),
            flags: vec![
                FlagSpec {
                    key: "new-checkout".into(),
                    variant: if i.is_multiple_of(2) {
                        "control"
                    } else {
                        "treatment"
                    }
                    .into(),
                    context_id: Some(format!("user-{i}")),
                },
                FlagSpec {
                    key: "fast-search".into(),
                    variant: "on".into(),
                    context_id: None,
                },
            ],
            attributes: vec![
                (
                    "http.response.status_code".into(),
                    AttrValue::Int(if i % 2 == 1 { 503 } else { 200 }),
                ),
                ("ratio".into(), AttrValue::Double(0.5)),
                ("cached".into(), AttrValue::Bool(true)),
                ("nan".into(), AttrValue::Double(f64::NAN)),
            ],
        }
    }

    #[test]
    fn encode_round_trip() {
        let specs: Vec<SpanSpec> = (0..4).map(spec).collect();
        let proto = encode_traces(&specs);
        let text = encode_traces_json(&specs);
        let arena = Arena::new();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let seen = decode(Signal::Traces, Encoding::Protobuf, &proto, &arena, &mut a).unwrap();
        decode(Signal::Traces, Encoding::Json, &text, &arena, &mut b).unwrap();
        assert_eq!(
            seen,
            Skipped {
                skipped: 0,
                total: 4
            }
        );
        assert_eq!(a.len(), 4 * 2 + 2);
        assert_eq!(a, b);
        let mut k = 0;
        for (i, s) in specs.iter().enumerate() {
            let id: String = s
                .trace_id
                .iter()
                .chain(&s.span_id)
                .map(|b| format!("{b:02x}"))
                .collect();
            let flags = [
                FlagRef {
                    key: "new-checkout",
                    variant: &s.flags[0].variant,
                },
                FlagRef {
                    key: "fast-search",
                    variant: "on",
                },
            ];
            let mut evs = vec![&a[k], &a[k + 1]];
            if s.error {
                evs.push(&a[k + 2]);
            }
            k += evs.len();
            for e in &evs {
                assert_eq!(&e.flags[..], &flags);
                assert_eq!(e.user_id, Some(format!("user-{i}").as_str()));
                assert_eq!(e.attribute("service.name"), Some(s.service.as_str()));
                assert_eq!(e.attribute("host.cores"), Some("8"));
                assert_eq!(e.attribute("ratio"), Some("0.5"));
                assert_eq!(e.attribute("cached"), Some("true"));
                assert_eq!(e.attribute("nan"), Some("NaN"));
            }
            assert_eq!(evs[0].event_id, format!("{id}:exposure"));
            assert_eq!(evs[0].timestamp, (s.start_ns / 1_000_000) as i64);
            assert_eq!(evs[1].event_id, id);
            assert_eq!(evs[1].timestamp, (s.end_ns / 1_000_000) as i64);
            assert_eq!(
                evs[1].body,
                Body::Product {
                    journey: &s.name,
                    step: None,
                    outcome: if s.error {
                        Outcome::Failed
                    } else {
                        Outcome::Completed
                    },
                    latency_ms: Some(250.0),
                    value: None,
                }
            );
            if s.error {
                assert_eq!(evs[2].event_id, format!("{id}:error:0"));
                let class = match (&s.exception_type, s.status_message.as_str()) {
                    (Some(t), _) => t.as_str(),
                    (None, "") => "ERROR",
                    (None, m) => m,
                };
                assert_eq!(
                    evs[2].body,
                    Body::Error {
                        service: &s.service,
                        error_class: class,
                        status_code: Some(503),
                        fatal: false,
                        latency_ms: Some(250.0),
                    }
                );
            }
        }
        // Two resources: consecutive spans of one service share one.
        assert_eq!(proto.iter().filter(|_| false).count(), 0);
        let top = proto::Reader::new(&proto, 0, "ExportTraceServiceRequest");
        let mut top = top;
        let mut n = 0;
        while let Some((f, wt)) = top.tag().unwrap() {
            assert_eq!(f, 1);
            top.bytes(f, wt).unwrap();
            n += 1;
        }
        assert_eq!(n, 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let arena = Arena::new();
            for signal in [Signal::Traces, Signal::Logs] {
                for encoding in [Encoding::Protobuf, Encoding::Json] {
                    let mut out = Vec::new();
                    let _ = decode(signal, encoding, &bytes, &arena, &mut out);
                }
            }
        }

        #[test]
        fn corrupted_vectors_never_panic(
            which in 0usize..4,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let r = &requests()[which];
            let mut proto = unhex(r["protobuf_hex"].as_str().unwrap());
            let mut text = r["otlp_json"].as_str().unwrap().as_bytes().to_vec();
            for (at, byte) in &edits {
                if !proto.is_empty() {
                    let i = at.index(proto.len());
                    proto[i] = *byte;
                }
                let i = at.index(text.len());
                text[i] = *byte;
            }
            let arena = Arena::new();
            let mut out = Vec::new();
            let _ = decode(signal(r), Encoding::Protobuf, &proto, &arena, &mut out);
            let _ = decode(signal(r), Encoding::Json, &text, &arena, &mut out);
        }
    }
}
