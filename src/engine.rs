//! The engine: decode → window → watermark → rules, synchronous and free of I/O.
//! `run`, `demo` and `replay` are shells around this one type: they feed records in,
//! call `tick` (or `finish`), and ship what comes out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::ingest::decode::{DecodeError, SchemaRegistry};
use crate::ingest::input::{self, Format, InputSpec};
use crate::ingest::map::Mapping;
use crate::ingest::map::avro::{AvroSchema, Plan};
use crate::model::{EventRef, Source};
use crate::policy::Policy;
use crate::rules::{Judged, Rules};
use crate::window::watermark::{PartitionKey, Watermark};
use crate::window::{Recorded, Windows};

/// Per-event outcome; `Rejected` records go to the DLQ with `reason`.
#[derive(Debug, Clone, PartialEq)]
pub enum Ingested {
    Accepted,
    Unmatched,
    /// Re-read after a rebalance or restart, for a window already closed: it was
    /// aggregated or dead-lettered the first time, so it is skipped.
    Duplicate,
    Rejected {
        reason: Reason,
        detail: String,
    },
    /// An `avro-confluent` record whose writer schema id the engine has not seen: the
    /// shell fetches it ([`Engine::add_schema`] or [`Engine::schema_unavailable`]) and
    /// ingests the record again. Nothing was counted.
    NeedSchema(u32),
}

/// DLQ reasons (SPEC §6), in metric label order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Decode,
    Schema,
    Late,
    Future,
    TooManyCohorts,
    TooLong,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Decode,
        Reason::Schema,
        Reason::Late,
        Reason::Future,
        Reason::TooManyCohorts,
        Reason::TooLong,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Decode => "decode",
            Reason::Schema => "schema",
            Reason::Late => "late",
            Reason::Future => "future",
            Reason::TooManyCohorts => "too_many_cohorts",
            Reason::TooLong => "too_long",
        }
    }
}

/// `guardrail_events_total` statuses, in label order.
pub const STATUSES: [&str; 6] = [
    "accepted",
    "late",
    "invalid",
    "future",
    "unmatched",
    "duplicate",
];

/// Counts kept by the engine; the telemetry layer publishes them per batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// [source][status] per `STATUSES`.
    pub events: [[u64; 6]; 3],
    /// per `Reason::ALL`.
    pub dlq: [u64; 6],
    pub windows_closed: u64,
    /// Records accepted through the pre-0.2 (apache-avro form) fingerprint, per source.
    pub legacy_fingerprint: [u64; 3],
    /// Records dead-lettered for an unknown writer-schema fingerprint, per source.
    pub unknown_fingerprint: [u64; 3],
    /// Watermark advances held back by the wall clock (an event time ahead of it).
    pub watermark_clamped: u64,
}

impl Counters {
    /// Adds another engine's counts (the ingest stage runs one engine per partition).
    pub fn add(&mut self, o: &Counters) {
        for (a, b) in self.events.iter_mut().zip(&o.events) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        for (x, y) in self.dlq.iter_mut().zip(&o.dlq) {
            *x += y;
        }
        self.windows_closed += o.windows_closed;
        for (x, y) in self
            .legacy_fingerprint
            .iter_mut()
            .zip(&o.legacy_fingerprint)
        {
            *x += y;
        }
        for (x, y) in self
            .unknown_fingerprint
            .iter_mut()
            .zip(&o.unknown_fingerprint)
        {
            *x += y;
        }
        self.watermark_clamped += o.watermark_clamped;
    }
}

/// How many distinct unknown fingerprints get a WARN line of their own; past that they
/// are only counted (bounded memory whatever arrives).
const UNKNOWN_FINGERPRINTS_LOGGED: usize = 64;

/// How one input's records are decoded.
enum Decoder {
    Avro(Source),
    Confluent {
        mapping: Arc<Mapping>,
        /// Per writer schema id: the mapping resolved against it, or why it cannot be.
        plans: HashMap<u32, Result<Plan, String>>,
    },
    Json(Arc<Mapping>),
    Otlp {
        signal: input::OtlpSignal,
        encoding: input::OtlpEncoding,
    },
}

pub struct Engine {
    policy: Arc<Policy>,
    registry: SchemaRegistry,
    decoders: Vec<Decoder>,
    /// Per input: the record kind its decode failures are counted under.
    kinds: Vec<Source>,
    /// Text of the record being decoded that could not be borrowed from its bytes.
    text: String,
    windows: Windows,
    watermark: Watermark,
    rules: Rules,
    counters: Counters,
    scratch: Vec<u8>,
    /// Unknown fingerprints already logged at WARN.
    unknown_logged: HashSet<u64>,
    /// Decisions carry their watermark lag (replay has no wall clock to measure it by).
    live: bool,
    /// A policy waiting for its window boundary (`activate`), with the windows from
    /// the boundary on, aggregated under it already.
    pending: Option<Pending>,
    /// A policy activated while another was pending: scheduled when that one swaps in.
    queued: Option<Arc<Policy>>,
    /// Swaps done and not yet taken by the caller (`take_activations`).
    activations: Vec<Activation>,
}

/// A policy that takes over at `boundary`: windows starting there or later are
/// aggregated into `windows`, under it, while the older ones close under the current.
struct Pending {
    policy: Arc<Policy>,
    windows: Windows,
    boundary: i64,
}

/// A policy that became the one the engine judges with.
#[derive(Debug)]
pub struct Activation {
    pub policy: Arc<Policy>,
    /// The first window judged under it starts here (epoch ms).
    pub effective_from: i64,
    /// Cohorts whose state did not carry over: their flag's decisive policy changed.
    pub resets: Vec<crate::http::StateReset>,
}

impl Engine {
    /// `live`: whether the watermark's wall-time rules apply — partitions going idle
    /// (`idle_timeout`) and stuck partitions released (`max_partition_delay`). Off for
    /// replay, which merges its inputs in event-time order under one fixed `now`. The
    /// clamp of the watermark to the wall clock applies either way.
    pub fn new(policy: Arc<Policy>, live: bool) -> Result<Engine, String> {
        let builtin = input::builtin(&crate::config::Config::default());
        Engine::with_inputs(policy, &builtin, live)
    }

    /// An engine reading `inputs` (in input order, `PartitionKey::input`).
    pub fn with_inputs(
        policy: Arc<Policy>,
        inputs: &[InputSpec],
        live: bool,
    ) -> Result<Engine, String> {
        let w = policy.window;
        let decoders = inputs
            .iter()
            .map(|i| match (&i.format, &i.mapping) {
                (Format::Avro, _) => Ok(Decoder::Avro(i.record)),
                (Format::AvroConfluent, Some(m)) => Ok(Decoder::Confluent {
                    mapping: m.clone(),
                    plans: HashMap::new(),
                }),
                (Format::Json, Some(m)) => Ok(Decoder::Json(m.clone())),
                (Format::Otlp { signal, encoding }, _) => Ok(Decoder::Otlp {
                    signal: *signal,
                    encoding: *encoding,
                }),
                _ => Err(format!("input {}: no mapping", i.topic)),
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Engine {
            decoders,
            kinds: inputs.iter().map(|i| i.record).collect(),
            text: String::new(),
            registry: SchemaRegistry::shipped()?,
            windows: Windows::new(policy.clone()),
            watermark: Watermark::new(
                w.allowed_lateness_ms,
                live.then_some(w.idle_timeout_ms),
                live.then_some(w.max_partition_delay_ms),
            ),
            rules: Rules::new(policy.clone()),
            counters: Counters::default(),
            scratch: Vec::new(),
            unknown_logged: Default::default(),
            live,
            policy,
            pending: None,
            queued: None,
            activations: Vec::new(),
        })
    }

    /// Makes `policy` the one the engine judges with, from the next window boundary on
    /// (SPEC §10): every window already open (the newest included, whatever its
    /// partitions' skew) closes under the current policy; windows starting at or after
    /// the boundary are aggregated and judged under the new one. Cohort state carries
    /// over for flags whose decisive `policy_version` is unchanged and starts afresh
    /// for the others ([`Activation::resets`] says which). The window settings are the
    /// engine's own: only flags and metrics change. Returns the boundary; with no window
    /// open the new policy applies at once.
    pub fn activate(&mut self, policy: Arc<Policy>) -> i64 {
        if self.pending.is_some() {
            // Once the pending one is in, this one waits for the boundary after it.
            self.queued = Some(policy);
            return self.pending.as_ref().map_or(i64::MIN, |p| p.boundary);
        }
        let size = self.policy.window.size_ms;
        let closed = self.windows.closed_before();
        let newest = self.windows.newest_open_start();
        let wm = self.watermark.current();
        let Some(newest) = newest else {
            let from = if wm > i64::MIN {
                closed.max(self.windows.window_start(wm))
            } else {
                closed
            };
            self.swap(policy, None, from);
            return from;
        };
        let mut boundary = newest.saturating_add(size).max(closed);
        if wm > i64::MIN {
            boundary = boundary.max(self.windows.window_start(wm).saturating_add(size));
        }
        let mut windows = Windows::new(policy.clone());
        windows.set_closed_before(boundary);
        // The cohorts judged so far keep their places under the cap from the first
        // event after the boundary on (a newcomer must not take one).
        inherit_cohorts(&self.policy, &self.windows, &policy, &mut windows);
        self.pending = Some(Pending {
            policy,
            windows,
            boundary,
        });
        boundary
    }

    /// The pending activation's boundary, if one waits.
    pub fn pending_boundary(&self) -> Option<i64> {
        self.pending.as_ref().map(|p| p.boundary)
    }

    /// Activations done since the last call.
    pub fn take_activations(&mut self) -> Vec<Activation> {
        std::mem::take(&mut self.activations)
    }

    fn swap(&mut self, policy: Arc<Policy>, windows: Option<Windows>, from: i64) {
        let old_policy = std::mem::replace(&mut self.policy, policy.clone());
        let old_rules = std::mem::replace(&mut self.rules, Rules::new(policy.clone()));
        let resets = self.rules.carry_over(old_rules, &old_policy, from);
        let mut windows = windows.unwrap_or_else(|| {
            let mut w = Windows::new(policy.clone());
            w.set_closed_before(self.windows.closed_before());
            w
        });
        inherit_cohorts(&old_policy, &self.windows, &policy, &mut windows);
        // Cohorts judged so far keep their place under the cap.
        for (fi, cohort, _) in self.rules.states() {
            if cohort != "*"
                && let Some(t) = windows.cohort_table_mut(fi)
            {
                t.intern(cohort.to_string());
            }
        }
        self.windows = windows;
        for r in &resets {
            tracing::warn!(
                flag = %r.flag_key, cohort = %r.cohort,
                "policy changed ({} -> {}): the cohort stays {} at {}%, its evidence starts afresh",
                r.from_version, r.to_version,
                r.previous_state.as_deref().unwrap_or("-"),
                r.previous_percent.unwrap_or(f64::NAN)
            );
        }
        self.activations.push(Activation {
            policy,
            effective_from: from,
            resets,
        });
    }

    /// The lowest offset of `p` an open window still needs (commit bound), pending
    /// windows included.
    pub fn min_open_offset(&self, p: PartitionKey) -> Option<i64> {
        let pending = self
            .pending
            .as_ref()
            .and_then(|x| x.windows.min_open_offset(p));
        match (self.windows.min_open_offset(p), pending) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Drops every open window, pending ones included (a revoke: they are rebuilt from
    /// the committed offsets).
    pub fn clear_open(&mut self) {
        self.windows.clear_open();
        if let Some(p) = &mut self.pending {
            p.windows.clear_open();
        }
    }

    /// Decodes and records one single-object encoded record from partition `p`.
    /// `reread`: the offset was consumed before (a rebalance or restart re-reads from the
    /// committed offset), so a closed window means "already handled", not "late".
    pub fn ingest(
        &mut self,
        p: PartitionKey,
        offset: i64,
        bytes: &[u8],
        now: i64,
        reread: bool,
    ) -> Ingested {
        let Engine {
            decoders,
            kinds,
            text,
            registry,
            scratch,
            windows,
            watermark,
            counters,
            policy,
            unknown_logged,
            pending,
            ..
        } = self;
        let input = usize::from(p.input);
        let (Some(decoder), Some(&kind)) = (decoders.get(input), kinds.get(input)) else {
            return invalid(
                counters,
                Source::Product,
                DecodeError::Malformed("unknown input"),
            );
        };
        let mut st = Sink {
            windows,
            next: pending
                .as_mut()
                .map(|x| (&mut x.windows, &*x.policy, x.boundary)),
            watermark,
            counters,
            policy,
            p,
            offset,
            now,
            reread,
        };
        match decoder {
            Decoder::Avro(source) => match registry.decode(*source, bytes, scratch) {
                Ok(ev) => st.event(&ev),
                Err(DecodeError::UnknownSchema(fp)) => {
                    unknown_schema(registry, st.counters, unknown_logged, *source, fp)
                }
                Err(e) => invalid(st.counters, *source, e),
            },
            Decoder::Json(mapping) => {
                text.clear();
                let mut caps = mapping.captures();
                if let Err(e) =
                    crate::ingest::map::json::project(bytes, mapping.trie(), &mut caps, text)
                {
                    return invalid_detail(st.counters, kind, Reason::Decode, e.to_string());
                }
                st.mapped(mapping, &caps, &[], text, kind)
            }
            Decoder::Confluent { mapping, plans } => {
                let (id, datum) = match crate::ingest::confluent::split_frame(bytes) {
                    Ok(f) => f,
                    Err(e) => {
                        return invalid_detail(st.counters, kind, Reason::Decode, e.to_string());
                    }
                };
                let plan = match plans.get(&id) {
                    None => return Ingested::NeedSchema(id),
                    Some(Err(e)) => {
                        return invalid_detail(st.counters, kind, Reason::Schema, e.clone());
                    }
                    Some(Ok(plan)) => plan,
                };
                text.clear();
                let mut caps = mapping.captures();
                if let Err(e) = plan.decode(datum, &mut caps) {
                    return invalid_detail(
                        st.counters,
                        kind,
                        Reason::Decode,
                        format!("{e} (writer schema id {id})"),
                    );
                }
                st.mapped(mapping, &caps, &plan.units, text, kind)
            }
            Decoder::Otlp { signal, encoding } => {
                use crate::ingest::otlp;
                let signal = match signal {
                    input::OtlpSignal::Traces => otlp::Signal::Traces,
                    input::OtlpSignal::Logs => otlp::Signal::Logs,
                };
                let encoding = match encoding {
                    input::OtlpEncoding::Protobuf => otlp::Encoding::Protobuf,
                    input::OtlpEncoding::Json => otlp::Encoding::Json,
                };
                let strings = typed_arena::Arena::new();
                let mut events = Vec::new();
                if let Err(e) = otlp::decode(signal, encoding, bytes, &strings, &mut events) {
                    return invalid_detail(st.counters, kind, Reason::Decode, e.to_string());
                }
                st.several(&events, kind)
            }
        }
    }

    /// Resolves an `avro-confluent` input's mapping against writer schema `id` (its
    /// text as the registry returned it). A schema the mapping cannot read (a required
    /// path missing, a parse error) is remembered too: its records are dead-lettered
    /// with reason `schema` and this message. Returns the paths the schema lacks.
    pub fn add_schema(&mut self, input: u16, id: u32, schema: &str) -> Result<Vec<String>, String> {
        let Some(Decoder::Confluent { mapping, plans }) = self.decoders.get_mut(usize::from(input))
        else {
            return Err(format!("input {input} is not avro-confluent"));
        };
        let (plan, missing) = match resolve(mapping, id, schema) {
            Ok((plan, missing)) => (Ok(plan), Ok(missing)),
            Err(e) => (Err(e.clone()), Err(e)),
        };
        plans.insert(id, plan);
        missing
    }

    /// Counts and rejects a record whose writer schema could not be fetched.
    pub fn schema_unavailable(&mut self, p: PartitionKey, detail: String) -> Ingested {
        let kind = self
            .kinds
            .get(usize::from(p.input))
            .copied()
            .unwrap_or(Source::Product);
        invalid_detail(&mut self.counters, kind, Reason::Schema, detail)
    }

    /// Records an already decoded event (replay decodes container files itself).
    pub fn ingest_event(
        &mut self,
        p: PartitionKey,
        offset: i64,
        ev: &EventRef<'_>,
        now: i64,
    ) -> Ingested {
        let mut st = Sink {
            windows: &mut self.windows,
            next: self
                .pending
                .as_mut()
                .map(|x| (&mut x.windows, &*x.policy, x.boundary)),
            watermark: &mut self.watermark,
            counters: &mut self.counters,
            policy: &self.policy,
            p,
            offset,
            now,
            reread: false,
        };
        st.record(ev)
    }

    /// Advances the watermark to wall time `now`, closes passed windows, decides.
    pub fn tick(&mut self, now: i64) -> Vec<Judged> {
        self.counters.legacy_fingerprint = self.registry.legacy_records();
        let wm = self.watermark.advance(now);
        self.counters.watermark_clamped = self.watermark.clamped();
        let mut judged = self.close_and_decide(wm, now);
        if self.live && wm > i64::MIN {
            // Freshness of the data behind each decision (replay has no wall clock).
            for j in &mut judged {
                j.evaluation.watermark_lag_ms = Some(now.saturating_sub(wm));
                if let Some(c) = &mut j.command {
                    c.watermark_lag_ms = Some(now.saturating_sub(wm));
                }
            }
        }
        judged
    }

    /// Advances the watermark to wall time `now` and closes the windows it passed,
    /// without judging them: a stage-1 (ingest) engine of one input partition publishes
    /// them as partial aggregates (SPEC §11). Policy activations do not apply here.
    pub fn close(&mut self, now: i64) -> Vec<crate::window::ClosedWindow> {
        self.counters.legacy_fingerprint = self.registry.legacy_records();
        let wm = self.watermark.advance(now);
        self.counters.watermark_clamped = self.watermark.clamped();
        let closed = self.windows.close_until(wm);
        self.counters.windows_closed += closed.len() as u64;
        closed
    }

    /// End of input (replay): every open window closes.
    pub fn finish(&mut self, now: i64) -> Vec<Judged> {
        self.counters.legacy_fingerprint = self.registry.legacy_records();
        let mut judged = Vec::new();
        if let Some(p) = &self.pending {
            // The windows before the boundary close under the current policy.
            let closed = self.windows.close_until(p.boundary);
            judged = self.decide(closed, now);
            self.swap_pending();
        }
        let closed = self.windows.close_all();
        judged.extend(self.decide(closed, now));
        judged
    }

    /// Closes the windows the watermark passed and judges them; a pending policy
    /// takes over once every window before its boundary is closed.
    fn close_and_decide(&mut self, wm: i64, now: i64) -> Vec<Judged> {
        let Some(boundary) = self.pending_boundary() else {
            let closed = self.windows.close_until(wm);
            return self.decide(closed, now);
        };
        // The current policy's windows end at the boundary: none past it is made up.
        let closed = self.windows.close_until(wm.min(boundary));
        let mut judged = self.decide(closed, now);
        // Closed up to the boundary, or nothing left open before it that the watermark
        // has not passed (open windows dropped by a revoke before any close).
        let done = self.windows.closed_before() >= boundary
            || (self.windows.open_windows() == 0 && wm >= boundary);
        if done {
            self.swap_pending();
            let closed = self.windows.close_until(wm);
            judged.extend(self.decide(closed, now));
        }
        judged
    }

    fn swap_pending(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        self.swap(p.policy, Some(p.windows), p.boundary);
        if let Some(next) = self.queued.take() {
            self.activate(next);
        }
    }

    fn decide(&mut self, closed: Vec<crate::window::ClosedWindow>, now: i64) -> Vec<Judged> {
        let mut out = Vec::new();
        for w in &closed {
            self.counters.windows_closed += 1;
            out.extend(self.rules.decide(w, now));
        }
        out
    }

    pub fn finish_partition(&mut self, p: PartitionKey) {
        self.watermark.finish(p);
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn watermark(&self) -> i64 {
        self.watermark.current()
    }

    /// Input partitions the watermark currently leaves out as stuck (SPEC §3).
    pub fn excluded_partitions(&self) -> usize {
        self.watermark.excluded_partitions()
    }

    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    pub fn windows_mut(&mut self) -> &mut Windows {
        &mut self.windows
    }

    pub fn watermark_mut(&mut self) -> &mut Watermark {
        &mut self.watermark
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub fn rules_mut(&mut self) -> &mut Rules {
        &mut self.rules
    }

    pub fn registry_mut(&mut self) -> &mut SchemaRegistry {
        &mut self.registry
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }
}

/// Interns into `windows` (of `policy`) the cohorts `old_windows` (of `old`) know, for
/// every flag whose `cohort_by` is unchanged, in the order they were first seen: the
/// cohorts judged so far keep their places under the cap across an activation.
fn inherit_cohorts(old: &Policy, old_windows: &Windows, policy: &Policy, windows: &mut Windows) {
    for (fi, flag) in policy.flags.iter().enumerate() {
        let Some(ofi) = old.flags.iter().position(|f| f.key == flag.key) else {
            continue;
        };
        if old.flags[ofi].cohort_by != flag.cohort_by {
            continue;
        }
        let (Some(from), Some(to)) = (old_windows.cohort_table(ofi), windows.cohort_table_mut(fi))
        else {
            continue;
        };
        for id in 1..from.len() as u32 {
            to.intern(from.name(id).to_string());
        }
    }
}

/// A record whose writer-schema fingerprint this build does not know: the DLQ detail
/// says which fingerprint arrived and which are known; the first record of each
/// fingerprint is logged at WARN, later ones are counted.
#[cold]
fn unknown_schema(
    registry: &SchemaRegistry,
    counters: &mut Counters,
    logged: &mut HashSet<u64>,
    source: Source,
    fp: u64,
) -> Ingested {
    let detail = format!(
        "{}; this build knows {}",
        DecodeError::UnknownSchema(fp),
        registry.known_fingerprints(source)
    );
    counters.unknown_fingerprint[source.index()] += 1;
    if logged.len() < UNKNOWN_FINGERPRINTS_LOGGED && logged.insert(fp) {
        tracing::warn!(
            source = source.as_str(),
            "{detail} (first record with this fingerprint; later ones are counted in \
             guardrail_unknown_fingerprint_total and dead-lettered with reason=schema)"
        );
    }
    rejected(counters, source, &DecodeError::UnknownSchema(fp), detail)
}

fn invalid(counters: &mut Counters, source: Source, e: DecodeError) -> Ingested {
    let detail = e.to_string();
    rejected(counters, source, &e, detail)
}

fn invalid_detail(
    counters: &mut Counters,
    source: Source,
    reason: Reason,
    detail: String,
) -> Ingested {
    counters.events[source.index()][2] += 1;
    counters.dlq[reason as usize] += 1;
    Ingested::Rejected { reason, detail }
}

/// Counts an undecodable record and rejects it with `detail` for the DLQ.
fn rejected(counters: &mut Counters, source: Source, e: &DecodeError, detail: String) -> Ingested {
    let reason = if e.reason() == "schema" {
        Reason::Schema
    } else {
        Reason::Decode
    };
    counters.events[source.index()][2] += 1;
    counters.dlq[reason as usize] += 1;
    Ingested::Rejected { reason, detail }
}

/// The longest value (bytes) of a cohort attribute (one named in some flag's
/// `cohort_by`), and of the variant of a flag in the policy: these become
/// cohort names and metric labels inside every output, so a runaway value would make
/// outputs larger than the broker accepts. Longer values go to the DLQ (`too_long`).
pub const MAX_LABEL_BYTES: usize = 256;

/// Why an event's cohort attribute or flag assignment is too long, if it is.
#[cold]
fn too_long(policy: &Policy, ev: &EventRef<'_>) -> Option<String> {
    for (key, value) in &ev.attributes {
        if value.len() > MAX_LABEL_BYTES
            && policy
                .flags
                .iter()
                .any(|f| f.cohort_by.iter().any(|c| c == key))
        {
            return Some(format!(
                "attribute {key:?} is {} bytes, over the {MAX_LABEL_BYTES}-byte limit for cohort attributes",
                value.len()
            ));
        }
    }
    for f in &ev.flags {
        if f.variant.len() > MAX_LABEL_BYTES && policy.flags.iter().any(|p| p.key == f.key) {
            return Some(format!(
                "the variant of flag {:?} is {} bytes, over the {MAX_LABEL_BYTES}-byte limit",
                f.key,
                f.variant.len()
            ));
        }
    }
    None
}

/// Resolves a mapping against a writer schema: the plan, and the optional paths the
/// schema lacks (as `config path: message`).
pub fn resolve(mapping: &Mapping, id: u32, schema: &str) -> Result<(Plan, Vec<String>), String> {
    let parsed = AvroSchema::parse(schema).map_err(|e| format!("writer schema id {id}: {e}"))?;
    let name = parsed.name();
    let plan = Plan::compile(parsed, mapping.trie(), mapping.slots());
    let mut optional = Vec::new();
    let mut required = Vec::new();
    for (at, message, req) in mapping.missing(&plan.found, &format!("{name} (id {id})")) {
        if req {
            required.push(format!("{at}: {message}"));
        } else {
            optional.push(format!("{at}: {message}"));
        }
    }
    if !required.is_empty() {
        return Err(format!(
            "the mapping cannot read writer schema id {id}: {}",
            required.join("; ")
        ));
    }
    Ok((plan, optional))
}

/// Where decoded events go: the disjoint parts of the engine one record touches.
struct Sink<'e> {
    windows: &'e mut Windows,
    /// A pending policy's windows, its policy and boundary: events of windows starting
    /// at or after the boundary go there.
    next: Option<(&'e mut Windows, &'e Policy, i64)>,
    watermark: &'e mut Watermark,
    counters: &'e mut Counters,
    policy: &'e Policy,
    p: PartitionKey,
    offset: i64,
    now: i64,
    reread: bool,
}

impl Sink<'_> {
    fn event(&mut self, ev: &EventRef<'_>) -> Ingested {
        let end = self
            .windows
            .window_start(ev.timestamp)
            .saturating_add(self.policy.window.size_ms);
        if self.reread && end <= self.windows.closed_before() {
            self.counters.events[ev.source().index()][5] += 1;
            return Ingested::Duplicate;
        }
        self.record(ev)
    }

    /// Windows one event under the policy of its window.
    fn record(&mut self, ev: &EventRef<'_>) -> Ingested {
        let (windows, policy) = match &mut self.next {
            Some((w, p, boundary)) if w.window_start(ev.timestamp) >= *boundary => (&mut **w, *p),
            _ => (&mut *self.windows, self.policy),
        };
        record(
            windows,
            self.watermark,
            self.counters,
            policy,
            self.p,
            self.offset,
            ev,
            self.now,
        )
    }

    /// The events of one message (an OTLP export request holds many): accepted if any
    /// is; rejected — the message goes to the DLQ once — if any is, with how many.
    fn several(&mut self, events: &[EventRef<'_>], kind: Source) -> Ingested {
        if events.is_empty() {
            self.counters.events[kind.index()][4] += 1;
            return Ingested::Unmatched;
        }
        let mut first_rejection = None;
        let mut rejected = 0;
        let mut any_accepted = false;
        let mut any_duplicate = false;
        for ev in events {
            match self.event(ev) {
                Ingested::Accepted => any_accepted = true,
                Ingested::Duplicate => any_duplicate = true,
                Ingested::Rejected { reason, detail } => {
                    rejected += 1;
                    if first_rejection.is_none() {
                        first_rejection = Some((reason, detail));
                    } else {
                        // One DLQ record per message: count it once.
                        self.counters.dlq[reason as usize] -= 1;
                    }
                }
                Ingested::Unmatched | Ingested::NeedSchema(_) => {}
            }
        }
        match first_rejection {
            Some((reason, detail)) => Ingested::Rejected {
                reason,
                detail: format!(
                    "{rejected} of the message's {} events: {detail}{}",
                    events.len(),
                    if any_accepted {
                        " (the others were accepted)"
                    } else {
                        ""
                    }
                ),
            },
            None if any_accepted => Ingested::Accepted,
            None if any_duplicate => Ingested::Duplicate,
            None => Ingested::Unmatched,
        }
    }

    /// An event through a mapping: unmatched when the mapping filters it out, invalid
    /// when its fields are not what the mapping says.
    fn mapped<'a>(
        &mut self,
        mapping: &'a Mapping,
        caps: &crate::ingest::map::value::Captures<'a>,
        units: &[Option<crate::ingest::map::avro::TimeUnit>],
        text: &'a mut String,
        kind: Source,
    ) -> Ingested {
        let fallback_id = (self.p.partition, self.offset);
        match mapping.apply_with(caps, units, text, fallback_id, |ev| self.event(ev)) {
            Ok(Some(ingested)) => ingested,
            Ok(None) => {
                self.counters.events[kind.index()][4] += 1;
                Ingested::Unmatched
            }
            Err(e) => invalid_detail(self.counters, kind, Reason::Decode, format!("mapping: {e}")),
        }
    }
}

/// Future-skew check, watermark observation and windowing of one decoded event.
#[allow(clippy::too_many_arguments)] // the disjoint borrows of Engine's fields, spelled out
fn record(
    windows: &mut Windows,
    watermark: &mut Watermark,
    counters: &mut Counters,
    policy: &Policy,
    p: PartitionKey,
    offset: i64,
    ev: &EventRef<'_>,
    now: i64,
) -> Ingested {
    let src = ev.source().index();
    let oversized = ev.attributes.iter().any(|(_, v)| v.len() > MAX_LABEL_BYTES)
        || ev.flags.iter().any(|f| f.variant.len() > MAX_LABEL_BYTES);
    if oversized && let Some(detail) = too_long(policy, ev) {
        counters.events[src][2] += 1;
        counters.dlq[Reason::TooLong as usize] += 1;
        return Ingested::Rejected {
            reason: Reason::TooLong,
            detail,
        };
    }
    if ev.timestamp > now.saturating_add(policy.window.max_future_skew_ms) {
        counters.events[src][3] += 1;
        counters.dlq[Reason::Future as usize] += 1;
        return Ingested::Rejected {
            reason: Reason::Future,
            detail: format!(
                "event time {} is more than {} ms ahead of the clock",
                ev.timestamp, policy.window.max_future_skew_ms
            ),
        };
    }
    watermark.observe(p, ev.timestamp, now);
    match windows.record(p, offset, ev) {
        Recorded::Accepted => {
            counters.events[src][0] += 1;
            Ingested::Accepted
        }
        Recorded::Unmatched => {
            counters.events[src][4] += 1;
            Ingested::Unmatched
        }
        Recorded::Late => {
            counters.events[src][1] += 1;
            counters.dlq[Reason::Late as usize] += 1;
            Ingested::Rejected {
                reason: Reason::Late,
                detail: format!(
                    "window of event time {} closed (watermark {})",
                    ev.timestamp,
                    watermark.current()
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use smallvec::smallvec;

    use super::*;
    use crate::config::Config;
    use crate::model::{Body, FlagRef, Outcome};

    const MIN: i64 = 60_000;
    const SIZE: i64 = 15 * MIN;

    /// Default window settings: 15m windows, lateness 2m, idle 30s, future skew 5m,
    /// max partition delay 15m.
    const CONFIG: &str = r#"
[[metrics]]
name = "err"
type = "rate"
numerator   = { source = "errors",  match = { service = "checkout" } }
denominator = { source = "product", match = { journey = "checkout", outcome = "STARTED" } }

[[flags]]
key = "g"
owner = "o"
treatment = "t"
control = "c"
ramp = [50, 100]
start_percent = 50
advance_when = "healthy"
  [[flags.guardrails]]
  metric = "err"
  max = 0.05
"#;

    fn engine() -> Engine {
        let policy = Policy::compile(&Config::parse(CONFIG).unwrap()).unwrap();
        assert_eq!(policy.window.max_partition_delay_ms, SIZE, "the default");
        Engine::new(Arc::new(policy), true).unwrap()
    }

    fn started(t: i64) -> EventRef<'static> {
        EventRef {
            event_id: "e",
            timestamp: t,
            flags: smallvec![FlagRef {
                key: "g",
                variant: "t"
            }],
            attributes: smallvec![],
            user_id: None,
            body: Body::Product {
                journey: "checkout",
                step: None,
                outcome: Outcome::Started,
                latency_ms: None,
                value: None,
            },
        }
    }

    fn part(n: i32) -> PartitionKey {
        PartitionKey {
            input: 0,
            partition: n,
        }
    }

    /// A policy activated while windows are open takes over at the boundary after the
    /// newest open one: a record of an older window, arriving after the activation, is
    /// still judged under the old policy; windows from the boundary on under the new.
    /// A decisive change keeps each cohort's percent and state; a prose change keeps
    /// everything.
    #[test]
    fn an_activated_policy_takes_over_at_the_next_window_boundary() {
        let base = 1_000 * SIZE;
        let compile =
            |text: &str| Arc::new(Policy::compile(&Config::parse(text).unwrap()).unwrap());
        let v1 = compile(CONFIG);
        let v2 = compile(&CONFIG.replace("max = 0.05", "max = 0.5"));
        let v3 = compile(
            &CONFIG
                .replace("max = 0.05", "max = 0.5")
                .replace("owner = \"o\"", "owner = \"p\""),
        );
        let version = |p: &Policy| p.flags[0].policy_version.clone();
        assert_ne!(version(&v1), version(&v2));
        assert_eq!(version(&v2), version(&v3), "owner is prose");
        let mut e = Engine::new(v1.clone(), false).unwrap();
        let now = base + 100 * SIZE;
        let mut offset = 0;
        let mut feed = |e: &mut Engine, t: i64| {
            offset += 1;
            e.ingest_event(part(0), offset, &started(t), now)
        };
        let mut judged = Vec::new();
        for t in [base + MIN, base + SIZE + MIN] {
            assert_eq!(feed(&mut e, t), Ingested::Accepted);
        }
        judged.extend(e.tick(now));
        // Windows 0 and 1 are open (replay: the watermark trails the newest event).
        let boundary = e.activate(v2.clone());
        assert_eq!(boundary, base + 2 * SIZE, "after the newest open window");
        assert!(
            e.take_activations().is_empty(),
            "pending until the boundary"
        );
        // A late record of window 1 goes to the old policy's window, later ones to v2's.
        for t in [
            base + SIZE + 2 * MIN,
            base + 2 * SIZE + MIN,
            base + 3 * SIZE + MIN,
        ] {
            assert_eq!(feed(&mut e, t), Ingested::Accepted);
        }
        judged.extend(e.tick(now));
        let swapped = e.take_activations();
        assert_eq!(swapped.len(), 1);
        assert_eq!(swapped[0].effective_from, boundary);
        // The decisive change restarted the evidence of the cohort judged so far, at
        // its percent and state.
        assert_eq!(swapped[0].resets.len(), 1, "{:?}", swapped[0].resets);
        assert_eq!(swapped[0].resets[0].cohort, "*");
        assert_eq!(swapped[0].resets[0].previous_percent, Some(50.0));
        assert_eq!(e.rules().state(0, "*").map(|s| s.percent), Some(50.0));
        // A prose edit (owner) carries every cohort's state over, nothing reset.
        let healthy = e.rules().state(0, "*").map(|s| s.healthy_windows);
        assert_eq!(e.activate(v3.clone()), base + 4 * SIZE);
        judged.extend(e.finish(now));
        let swapped = e.take_activations();
        assert_eq!(swapped.len(), 1);
        assert!(swapped[0].resets.is_empty());
        assert!(e.rules().state(0, "*").map(|s| s.healthy_windows) >= healthy);
        let by_window: Vec<(i64, String, i64)> = judged
            .iter()
            .map(|j| {
                let ev = &j.evaluation;
                let events = ev
                    .evidence
                    .iter()
                    .find(|x| x.metric == "err")
                    .map_or(0, |x| x.treatment_samples);
                (
                    (ev.window_start - base) / SIZE,
                    ev.policy_version.clone().unwrap_or_default(),
                    events,
                )
            })
            .collect();
        assert_eq!(
            by_window,
            vec![
                (0, version(&v1), 1),
                (1, version(&v1), 2),
                (2, version(&v2), 1),
                (3, version(&v2), 1),
            ],
            "window, version, events"
        );
    }

    /// The cohorts judged before an activation keep their places under the cap: a
    /// newcomer seen first after the boundary folds into `other`.
    #[test]
    fn cohorts_keep_their_places_under_the_cap_across_an_activation() {
        let base = 1_000 * SIZE;
        let capped = CONFIG.replace(
            "start_percent = 50",
            "start_percent = 50\ncohort_by = [\"platform\"]\nmax_cohorts = 1",
        );
        let compile =
            |text: &str| Arc::new(Policy::compile(&Config::parse(text).unwrap()).unwrap());
        let v1 = compile(&capped);
        let v2 = compile(&capped.replace("max = 0.05", "max = 0.5"));
        let mut e = Engine::new(v1, false).unwrap();
        let now = base + 100 * SIZE;
        let on = |t: i64, platform: &'static str| {
            let mut ev = started(t);
            ev.attributes = smallvec![("platform", platform)];
            ev
        };
        let mut judged = Vec::new();
        e.ingest_event(part(0), 1, &on(base + MIN, "ios"), now);
        e.ingest_event(part(0), 2, &on(base + SIZE + MIN, "ios"), now);
        judged.extend(e.tick(now));
        let boundary = e.activate(v2);
        assert_eq!(boundary, base + 2 * SIZE);
        // After the boundary android comes first, then ios.
        e.ingest_event(part(0), 3, &on(base + 2 * SIZE + MIN, "android"), now);
        e.ingest_event(part(0), 4, &on(base + 2 * SIZE + 2 * MIN, "ios"), now);
        judged.extend(e.finish(now));
        let after: Vec<&str> = judged
            .iter()
            .filter(|j| j.evaluation.window_start == boundary)
            .map(|j| j.evaluation.cohort.as_str())
            .collect();
        assert!(after.contains(&"platform=ios"), "{after:?}");
        assert!(after.contains(&"other"), "{after:?}");
        assert!(!after.contains(&"platform=android"), "{after:?}");
    }

    /// One event from a clock 4m50s fast on a quiet system does not close the current
    /// window early: it closes when the wall clock passes its end + lateness.
    #[test]
    fn a_fast_clock_does_not_close_the_window_early() {
        let mut e = engine();
        let end = 1_000 * SIZE;
        let mut now = end - 5 * MIN;
        assert_eq!(
            e.ingest_event(part(0), 0, &started(now), now),
            Ingested::Accepted
        );
        e.tick(now);
        now = end - 2 * MIN - 30_000; // the partition is idle by now
        let ahead = end + 2 * MIN + 20_000;
        assert_eq!(
            e.ingest_event(part(0), 1, &started(ahead), now),
            Ingested::Accepted
        );
        // Before the clamp: watermark = ahead - 2m = end + 20s, closing [end - 15m, end).
        assert!(e.tick(now).is_empty());
        assert_eq!(e.watermark(), now - 2 * MIN);
        assert_eq!(e.counters().windows_closed, 0);
        assert!(e.counters().watermark_clamped >= 1);
        while now + 1_000 < end + 2 * MIN {
            now += 1_000;
            assert!(e.tick(now).is_empty());
            assert_eq!(e.counters().windows_closed, 0, "closed at {}", now - end);
        }
        // The wall clock passes the window's end + lateness: it closes.
        now += 1_000;
        assert!(!e.tick(now).is_empty(), "flag g is evaluated");
        assert_eq!(e.counters().windows_closed, 1);
        assert_eq!(e.watermark(), end);
        // The clamp bites as long as the wall clock is behind that one event.
        let clamped = e.counters().watermark_clamped;
        e.tick(now + 1_000);
        assert_eq!(e.counters().watermark_clamped, clamped + 1);
        e.tick(ahead + 1_000);
        assert_eq!(
            e.counters().watermark_clamped,
            clamped + 1,
            "the clock caught up"
        );
    }

    /// Partition 1's producer clock is an hour slow; partition 0 is on time. Windows keep
    /// closing once partition 1 is excluded, and its records for them are late.
    #[test]
    fn a_stuck_partition_stops_holding_window_closes() {
        let mut e = engine();
        let t0 = 1_000 * SIZE + MIN;
        let mut now = t0;
        let mut offset = 0;
        let mut late = 0;
        let mut excluded_at = None;
        while now < t0 + 3 * SIZE {
            assert_eq!(
                e.ingest_event(part(0), offset, &started(now), now),
                Ingested::Accepted
            );
            match e.ingest_event(part(1), offset, &started(now - 60 * MIN), now) {
                Ingested::Accepted => {}
                Ingested::Rejected {
                    reason: Reason::Late,
                    ..
                } => late += 1,
                other => panic!("{other:?}"),
            }
            offset += 1;
            e.tick(now);
            if excluded_at.is_none() {
                if e.excluded_partitions() == 1 {
                    excluded_at = Some(now);
                } else {
                    assert_eq!(e.watermark(), now - 62 * MIN, "held by partition 1");
                }
            }
            now += 10_000;
        }
        assert_eq!(excluded_at, Some(t0 + SIZE));
        assert_eq!(e.excluded_partitions(), 1);
        // The watermark follows partition 0: the window before the current one closed.
        assert_eq!(e.watermark(), now - 10_000 - 2 * MIN);
        assert_eq!(e.windows().closed_before(), 1_000 * SIZE + 2 * SIZE);
        assert!(late > 0);
        assert_eq!(e.counters().dlq[Reason::Late as usize], late);
    }
}
