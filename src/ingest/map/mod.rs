//! Mappings: how a record of someone else's schema becomes a guardrail event.
//!
//! A mapping (`[inputs.mapping]`, SPEC §4.1) names, by path into the record, the
//! release entities — event time, unit, flag assignments, cohort attributes — and the
//! fields metrics match and measure (`journey`, `outcome`, `latency_ms`, ...). It is
//! compiled once into a [`Trie`] of the paths it reads; decoders ([`json`], [`avro`])
//! fill one slot per path, and [`Mapping::apply`] turns the slots into an [`EventRef`].

pub mod avro;
pub mod json;
pub mod value;

use smallvec::SmallVec;

use self::avro::TimeUnit;
use self::value::{Captures, ListItem, Path, Seg, Trie, Txt, Val};
use crate::config::{ConfigError, FieldConfig, FieldSpec, MappingConfig};
use crate::model::{Body, Channel, EventRef, FlagRef, Outcome, Source};

/// How a timestamp field is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// Numbers in milliseconds (or the unit an Avro logical type gives), strings RFC 3339.
    Auto,
    EpochS,
    EpochMs,
    EpochUs,
    EpochNs,
    Rfc3339,
}

#[derive(Debug, Clone)]
enum Src {
    /// Path number `i` (its value is found at `located[i]`).
    Path(usize),
    Const(String),
}

#[derive(Debug, Clone)]
struct Field {
    src: Src,
    /// The slot that holds this field's value as it is (a path captured whole, with no
    /// `map`): read in place when it holds a string.
    direct: Option<usize>,
    map: Vec<(String, String)>,
    default: Option<String>,
    scale: Option<f64>,
    time: TimeFormat,
}

#[derive(Debug, Clone)]
enum FlagSource {
    /// An object of flag → variant, or a list of objects with key and variant paths.
    /// Read as a list capture ([`Captures::pairs`]) unless another path overlaps it.
    At {
        path: usize,
        key: Vec<Seg>,
        variant: Vec<Seg>,
        prefix: Option<String>,
        /// Where key and variant are within a list element's two captures.
        item: [(usize, Vec<Seg>); 2],
    },
    /// One flag per field.
    Fields(Vec<(String, usize)>),
}

/// A compiled mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub record: Source,
    paths: Vec<Path>,
    /// Which config entry each path comes from (`mapping.attributes.country`), and
    /// whether a record cannot be read without it.
    origins: Vec<(String, bool)>,
    trie: Trie,
    located: Vec<(usize, Vec<Seg>)>,
    /// Per path: read as a list capture.
    as_list: Vec<bool>,
    event_id: Option<Field>,
    timestamp: Field,
    unit: Option<Field>,
    flags: Vec<FlagSource>,
    attributes: Vec<(String, Field)>,
    when: Vec<(usize, String)>,
    body: Vec<(BodyField, Field)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyField {
    Journey,
    Step,
    Outcome,
    LatencyMs,
    Value,
    Service,
    ErrorClass,
    StatusCode,
    Fatal,
    Channel,
    Csat,
    Sentiment,
    Tags,
}

impl BodyField {
    fn name(self) -> &'static str {
        match self {
            BodyField::Journey => "journey",
            BodyField::Step => "step",
            BodyField::Outcome => "outcome",
            BodyField::LatencyMs => "latency_ms",
            BodyField::Value => "value",
            BodyField::Service => "service",
            BodyField::ErrorClass => "error_class",
            BodyField::StatusCode => "status_code",
            BodyField::Fatal => "fatal",
            BodyField::Channel => "channel",
            BodyField::Csat => "csat",
            BodyField::Sentiment => "sentiment",
            BodyField::Tags => "tags",
        }
    }

    /// The fields of a record kind, and whether each is required.
    fn of(record: Source) -> &'static [(BodyField, bool)] {
        match record {
            Source::Product => &[
                (BodyField::Journey, true),
                (BodyField::Step, false),
                (BodyField::Outcome, true),
                (BodyField::LatencyMs, false),
                (BodyField::Value, false),
            ],
            Source::Errors => &[
                (BodyField::Service, true),
                (BodyField::ErrorClass, true),
                (BodyField::StatusCode, false),
                (BodyField::Fatal, false),
                (BodyField::LatencyMs, false),
            ],
            Source::Support => &[
                (BodyField::Channel, true),
                (BodyField::Csat, false),
                (BodyField::Sentiment, false),
                (BodyField::Tags, false),
            ],
        }
    }

    fn config(self, m: &MappingConfig) -> Option<&FieldConfig> {
        match self {
            BodyField::Journey => m.journey.as_ref(),
            BodyField::Step => m.step.as_ref(),
            BodyField::Outcome => m.outcome.as_ref(),
            BodyField::LatencyMs => m.latency_ms.as_ref(),
            BodyField::Value => m.value.as_ref(),
            BodyField::Service => m.service.as_ref(),
            BodyField::ErrorClass => m.error_class.as_ref(),
            BodyField::StatusCode => m.status_code.as_ref(),
            BodyField::Fatal => m.fatal.as_ref(),
            BodyField::Channel => m.channel.as_ref(),
            BodyField::Csat => m.csat.as_ref(),
            BodyField::Sentiment => m.sentiment.as_ref(),
            BodyField::Tags => m.tags.as_ref(),
        }
    }

    /// The symbols an enum field accepts.
    fn symbols(self) -> Option<&'static [&'static str]> {
        match self {
            BodyField::Outcome => Some(&Outcome::SYMBOLS),
            BodyField::Channel => Some(&Channel::SYMBOLS),
            _ => None,
        }
    }
}

const ALL_BODY: [BodyField; 13] = [
    BodyField::Journey,
    BodyField::Step,
    BodyField::Outcome,
    BodyField::LatencyMs,
    BodyField::Value,
    BodyField::Service,
    BodyField::ErrorClass,
    BodyField::StatusCode,
    BodyField::Fatal,
    BodyField::Channel,
    BodyField::Csat,
    BodyField::Sentiment,
    BodyField::Tags,
];

/// Collects a mapping's paths while compiling it.
struct Builder<'e> {
    at: String,
    paths: Vec<Path>,
    lists: Vec<Option<ListItem>>,
    origins: Vec<(String, bool)>,
    errors: &'e mut Vec<ConfigError>,
}

impl Builder<'_> {
    fn err(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: format!("{}.{field}", self.at),
            message: message.into(),
        });
    }

    fn path(&mut self, field: &str, text: &str, required: bool) -> Option<usize> {
        match Path::parse(text) {
            Ok(p) => {
                self.paths.push(p);
                self.lists.push(None);
                self.origins
                    .push((format!("{}.{field}", self.at), required));
                Some(self.paths.len() - 1)
            }
            Err(e) => {
                self.err(field, format!("bad path: {e}"));
                None
            }
        }
    }

    fn field(
        &mut self,
        name: &str,
        cfg: &FieldConfig,
        required: bool,
        symbols: Option<&[&str]>,
    ) -> Option<Field> {
        let spec = match cfg {
            FieldConfig::Path(p) => FieldSpec {
                path: Some(p.clone()),
                ..FieldSpec::default()
            },
            FieldConfig::Spec(s) => s.clone(),
        };
        let src = match (&spec.path, &spec.value) {
            (Some(p), None) => Src::Path(self.path(name, p, required && spec.default.is_none())?),
            (None, Some(v)) => Src::Const(v.clone()),
            _ => {
                self.err(name, "give exactly one of `path` and `value`");
                return None;
            }
        };
        if let Some(symbols) = symbols {
            for (from, to) in &spec.map {
                if !symbols.contains(&to.as_str()) {
                    self.err(
                        &format!("{name}.map.{from}"),
                        format!("{to:?} is not one of {}", symbols.join(", ")),
                    );
                }
            }
            if let Src::Const(v) = &src
                && !symbols.contains(&v.as_str())
            {
                self.err(name, format!("{v:?} is not one of {}", symbols.join(", ")));
            }
        }
        let time = match spec.format.as_deref() {
            None => TimeFormat::Auto,
            Some("epoch-s") => TimeFormat::EpochS,
            Some("epoch-ms") => TimeFormat::EpochMs,
            Some("epoch-us") => TimeFormat::EpochUs,
            Some("epoch-ns") => TimeFormat::EpochNs,
            Some("rfc3339") => TimeFormat::Rfc3339,
            Some(other) => {
                self.err(
                    &format!("{name}.format"),
                    format!("{other:?}: expected epoch-s, epoch-ms, epoch-us, epoch-ns or rfc3339"),
                );
                TimeFormat::Auto
            }
        };
        if spec.scale.is_some_and(|s| !s.is_finite() || s == 0.0) {
            self.err(
                &format!("{name}.scale"),
                "must be a finite number other than 0",
            );
        }
        Some(Field {
            src,
            direct: None,
            map: spec.map.into_iter().collect(),
            default: spec.default,
            scale: spec.scale,
            time,
        })
    }
}

impl Mapping {
    /// Compiles `cfg` for records of kind `record`; `at` is the config path of the
    /// mapping (`inputs[0].mapping`), errors are pushed with their full paths.
    pub fn compile(
        cfg: &MappingConfig,
        record: Source,
        at: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Mapping> {
        let before = errors.len();
        let mut b = Builder {
            at: at.to_string(),
            paths: Vec::new(),
            lists: Vec::new(),
            origins: Vec::new(),
            errors,
        };
        let event_id = cfg
            .event_id
            .as_ref()
            .and_then(|f| b.field("event_id", f, false, None));
        let timestamp = match &cfg.timestamp {
            Some(f) => b.field("timestamp", f, true, None),
            None => {
                b.err("timestamp", "required: the path of the event time");
                None
            }
        };
        let unit = cfg
            .unit
            .as_ref()
            .and_then(|f| b.field("unit", f, false, None));
        if cfg.flags.is_empty() {
            b.err("flags", "required: where the record's flag assignments are");
        }
        let mut flags = Vec::new();
        for (i, f) in cfg.flags.iter().enumerate() {
            let name = format!("flags[{i}]");
            match (&f.path, f.fields.is_empty()) {
                (Some(p), true) => {
                    let Some(path) = b.path(&format!("{name}.path"), p, false) else {
                        continue;
                    };
                    let rel = |b: &mut Builder, what: &str, v: &Option<String>| match v {
                        None => Some(Vec::new()),
                        Some(t) => match Path::parse(t) {
                            Ok(p) => Some(p.0),
                            Err(e) => {
                                b.err(&format!("{name}.{what}"), format!("bad path: {e}"));
                                None
                            }
                        },
                    };
                    if f.key.is_some() != f.variant.is_some() {
                        b.err(
                            &name,
                            "give both `key` and `variant` (a list), or neither (an object)",
                        );
                    }
                    if f.prefix.is_some() && f.key.is_some() {
                        b.err(
                            &format!("{name}.prefix"),
                            "only for an object of flag → variant",
                        );
                    }
                    let (Some(key), Some(variant)) = (
                        rel(&mut b, "key", &f.key),
                        rel(&mut b, "variant", &f.variant),
                    ) else {
                        continue;
                    };
                    b.lists[path] = Some(if key.is_empty() {
                        ListItem::Entries
                    } else {
                        ListItem::Objects(Path(key.clone()), Path(variant.clone()))
                    });
                    let item = if key.is_empty() {
                        [(0, Vec::new()), (1, Vec::new())]
                    } else {
                        let (_, located) = Trie::build(&[Path(key.clone()), Path(variant.clone())]);
                        [located[0].clone(), located[1].clone()]
                    };
                    flags.push(FlagSource::At {
                        path,
                        key,
                        variant,
                        prefix: f.prefix.clone(),
                        item,
                    });
                }
                (None, false) => {
                    let mut fields = Vec::new();
                    for (flag, p) in &f.fields {
                        if let Some(i) = b.path(&format!("{name}.fields.{flag}"), p, false) {
                            fields.push((flag.clone(), i));
                        }
                    }
                    flags.push(FlagSource::Fields(fields));
                }
                _ => b.err(&name, "give either `path` or `fields`"),
            }
        }
        let mut attributes = Vec::new();
        for (name, f) in &cfg.attributes {
            if name.is_empty() || name.contains([',', '=']) {
                b.err(&format!("attributes.{name}"), "not an attribute name");
            }
            if let Some(field) = b.field(&format!("attributes.{name}"), f, false, None) {
                attributes.push((name.clone(), field));
            }
        }
        let mut when = Vec::new();
        for (p, v) in &cfg.when {
            if let Some(i) = b.path(&format!("when.{p}"), p, false) {
                when.push((i, v.clone()));
            }
        }
        let mut body = Vec::new();
        let own = BodyField::of(record);
        for bf in ALL_BODY {
            let Some(c) = bf.config(cfg) else {
                if own.contains(&(bf, true)) {
                    b.err(
                        bf.name(),
                        format!(
                            "required for {} records (a path, or {{ value = \"...\" }})",
                            record.as_str()
                        ),
                    );
                }
                continue;
            };
            let Some(&(_, required)) = own.iter().find(|(f, _)| *f == bf) else {
                b.err(
                    bf.name(),
                    format!("not a field of {} records", record.as_str()),
                );
                continue;
            };
            if let Some(f) = b.field(bf.name(), c, required, bf.symbols()) {
                body.push((bf, f));
            }
        }
        let Builder {
            paths,
            lists,
            origins,
            ..
        } = b;
        if errors.len() > before {
            return None;
        }
        let (trie, located, as_list) = Trie::build_with_lists(&paths, &lists);
        let direct = |f: &mut Field| {
            if let Src::Path(p) = f.src
                && f.map.is_empty()
                && located[p].1.is_empty()
            {
                f.direct = Some(located[p].0);
            }
        };
        let mut event_id = event_id;
        let mut unit = unit;
        event_id.iter_mut().for_each(direct);
        unit.iter_mut().for_each(direct);
        attributes.iter_mut().for_each(|(_, f)| direct(f));
        body.iter_mut().for_each(|(_, f)| direct(f));
        Some(Mapping {
            record,
            paths,
            origins,
            trie,
            located,
            as_list,
            event_id,
            timestamp: timestamp?,
            unit,
            flags,
            attributes,
            when,
            body,
        })
    }

    pub fn trie(&self) -> &Trie {
        &self.trie
    }

    /// The number of slots a decoder fills.
    pub fn slots(&self) -> usize {
        self.paths.len()
    }

    /// Empty captures for one record of this mapping.
    pub fn captures<'a>(&self) -> Captures<'a> {
        Captures::new(self.paths.len())
    }

    /// Paths a writer schema cannot provide (from [`avro::Plan::found`]), as
    /// `(config path, message, required)`.
    pub fn missing(&self, found: &[bool], schema_name: &str) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        for (i, (origin, required)) in self.origins.iter().enumerate() {
            let (slot, _) = &self.located[i];
            if !found[*slot] {
                out.push((
                    origin.clone(),
                    format!("{} is not in schema {schema_name}", self.paths[i]),
                    *required,
                ));
            }
        }
        out
    }

    fn val<'v, 'a>(&self, slots: &'v [Val<'a>], path: usize, buf: &str) -> Option<&'v Val<'a>> {
        let (slot, rest) = &self.located[path];
        slots[*slot].get(rest, buf)
    }

    /// Turns decoded slots into an event. `Ok(None)`: the record does not pass `when`,
    /// or its outcome/channel is a value the mapping does not list (not an event of
    /// interest). `units`: the timestamp unit per slot where the writer schema gives
    /// one. `fallback_id`: (partition, offset), the event id `partition@offset` when
    /// the mapping has none.
    pub fn apply<'a>(
        &'a self,
        caps: &Captures<'a>,
        units: &[Option<TimeUnit>],
        buf: &'a mut String,
        fallback_id: (i32, i64),
    ) -> Result<Option<EventRef<'a>>, String> {
        self.apply_with(caps, units, buf, fallback_id, EventRef::clone)
    }

    /// [`Mapping::apply`], handing the event to `f` where it is built: the hot path
    /// (an event is a few hundred bytes, and returning it costs copies).
    #[inline]
    pub fn apply_with<'a, R>(
        &'a self,
        caps: &Captures<'a>,
        units: &[Option<TimeUnit>],
        buf: &'a mut String,
        fallback_id: (i32, i64),
        f: impl FnOnce(&EventRef<'a>) -> R,
    ) -> Result<Option<R>, String> {
        let slots = &caps.slots[..];
        // Phase 1: everything that may need text in `buf` becomes a `Txt`.
        for (path, want) in &self.when {
            match self.val(slots, *path, buf) {
                Some(Val::Str(t)) if t.resolve_in(buf) == want => {}
                Some(v @ (Val::Num(_) | Val::Int(_) | Val::Bool(_))) if scalar_eq(v, want) => {}
                _ => return Ok(None),
            }
        }
        let event_id = match &self.event_id {
            Some(f) => self.text(slots, f, buf, "event_id")?,
            None => None,
        }
        .unwrap_or_else(|| {
            use std::fmt::Write as _;
            let a = buf.len() as u32;
            let _ = write!(buf, "{}@{}", fallback_id.0, fallback_id.1);
            Txt::Buf(a, buf.len() as u32)
        });
        let timestamp = self.time(slots, units, buf)?;
        let unit = match &self.unit {
            Some(f) => self.text(slots, f, buf, "unit")?,
            None => None,
        };
        let mut flags: SmallVec<[(Txt<'a>, Txt<'a>); 4]> = SmallVec::new();
        for fs in &self.flags {
            self.flags_of(fs, caps, buf, &mut flags)?;
        }
        let mut attributes: SmallVec<[(&'a str, Txt<'a>); 8]> = SmallVec::new();
        for (name, f) in &self.attributes {
            if let Some(t) = self.text(slots, f, buf, name)? {
                attributes.push((name.as_str(), t));
            }
        }
        let mut texts: [Option<Txt<'a>>; 13] = [None; 13];
        let mut numbers: [Option<f64>; 13] = [None; 13];
        let mut tags: SmallVec<[Txt<'a>; 4]> = SmallVec::new();
        for (bf, f) in &self.body {
            let i = *bf as usize;
            match bf {
                BodyField::LatencyMs
                | BodyField::Value
                | BodyField::Csat
                | BodyField::Sentiment
                | BodyField::StatusCode => numbers[i] = self.number(slots, f, buf, bf.name())?,
                BodyField::Tags => {
                    if let Src::Path(p) = f.src {
                        match self.val(slots, p, buf) {
                            Some(Val::Array(items)) => {
                                for item in items {
                                    if let Some(t) = scalar_text(item) {
                                        tags.push(t);
                                    }
                                }
                            }
                            None | Some(Val::Null) => {}
                            Some(v) => {
                                return Err(format!(
                                    "tags: expected an array at {}, found {}",
                                    self.paths[p],
                                    v.kind()
                                ));
                            }
                        }
                    }
                }
                _ => texts[i] = self.text(slots, f, buf, bf.name())?,
            }
        }
        // Phase 2: the buffer is frozen; resolve.
        let buf: &'a str = buf.as_str();
        let get = |bf: BodyField| texts[bf as usize].map(|t| t.resolve(buf));
        let required =
            |bf: BodyField| get(bf).ok_or_else(|| format!("{}: missing (required)", bf.name()));
        let symbol = |bf: BodyField, s: &str| -> Option<usize> {
            bf.symbols()
                .and_then(|syms| syms.iter().position(|x| *x == s))
        };
        let body = match self.record {
            Source::Product => {
                let Some(outcome) = symbol(BodyField::Outcome, required(BodyField::Outcome)?)
                    .and_then(Outcome::from_index)
                else {
                    return Ok(None);
                };
                Body::Product {
                    journey: required(BodyField::Journey)?,
                    step: get(BodyField::Step),
                    outcome,
                    latency_ms: numbers[BodyField::LatencyMs as usize],
                    value: numbers[BodyField::Value as usize],
                }
            }
            Source::Errors => Body::Error {
                service: required(BodyField::Service)?,
                error_class: required(BodyField::ErrorClass)?,
                status_code: numbers[BodyField::StatusCode as usize].map(|n| n as i32),
                fatal: match get(BodyField::Fatal) {
                    None | Some("false" | "0") => false,
                    Some("true" | "1") => true,
                    Some(other) => return Err(format!("fatal: {other:?} is not a boolean")),
                },
                latency_ms: numbers[BodyField::LatencyMs as usize],
            },
            Source::Support => {
                let Some(channel) = symbol(BodyField::Channel, required(BodyField::Channel)?)
                    .and_then(Channel::from_index)
                else {
                    return Ok(None);
                };
                Body::Support {
                    channel,
                    csat: numbers[BodyField::Csat as usize],
                    sentiment: numbers[BodyField::Sentiment as usize],
                    tags: tags.iter().map(|t| t.resolve(buf)).collect(),
                }
            }
        };
        Ok(Some(f(&EventRef {
            event_id: event_id.resolve(buf),
            timestamp,
            flags: flags
                .iter()
                .map(|(k, v)| FlagRef {
                    key: k.resolve(buf),
                    variant: v.resolve(buf),
                })
                .collect(),
            attributes: attributes
                .iter()
                .map(|(k, v)| (*k, v.resolve(buf)))
                .collect(),
            user_id: unit.map(|t| t.resolve(buf)),
            body,
        })))
    }

    /// A string-valued field: its text (numbers and booleans as text), mapped through
    /// `map`, or the default; `None` if absent.
    #[inline(always)]
    fn text<'a>(
        &'a self,
        slots: &[Val<'a>],
        f: &'a Field,
        buf: &mut String,
        name: &str,
    ) -> Result<Option<Txt<'a>>, String> {
        // The common case first, in place: a string at the end of its own path.
        if let Some(slot) = f.direct
            && let Val::Str(t) = &slots[slot]
        {
            return Ok(Some(*t));
        }
        self.text_slow(slots, f, buf, name)
    }

    #[inline(never)]
    fn text_slow<'a>(
        &'a self,
        slots: &[Val<'a>],
        f: &'a Field,
        buf: &mut String,
        name: &str,
    ) -> Result<Option<Txt<'a>>, String> {
        let raw: Option<Txt<'a>> = match &f.src {
            Src::Const(v) => Some(Txt::B(v.as_str())),
            Src::Path(p) => match self.val(slots, *p, buf) {
                None | Some(Val::Null) => None,
                Some(v) => Some(scalar_text_into(v, buf).ok_or_else(|| {
                    format!(
                        "{name}: expected a string at {}, found {}",
                        self.paths[*p],
                        v.kind()
                    )
                })?),
            },
        };
        let Some(raw) = raw else {
            return Ok(f.default.as_deref().map(Txt::B));
        };
        if f.map.is_empty() {
            return Ok(Some(raw));
        }
        let s = raw.resolve_in(buf);
        Ok(Some(match f.map.iter().find(|(k, _)| k == s) {
            Some((_, to)) => Txt::B(to.as_str()),
            None => raw,
        }))
    }

    fn number(
        &self,
        slots: &[Val<'_>],
        f: &Field,
        buf: &str,
        name: &str,
    ) -> Result<Option<f64>, String> {
        let n = match &f.src {
            Src::Const(v) => Some(
                v.parse::<f64>()
                    .map_err(|_| format!("{name}: {v:?} is not a number"))?,
            ),
            Src::Path(p) => match self.val(slots, *p, buf) {
                None | Some(Val::Null) => f.default.as_deref().and_then(|d| d.parse().ok()),
                Some(v) => Some(v.as_f64(buf).filter(|x| x.is_finite()).ok_or_else(|| {
                    format!(
                        "{name}: expected a number at {}, found {}",
                        self.paths[*p],
                        v.kind()
                    )
                })?),
            },
        };
        Ok(n.map(|x| x * f.scale.unwrap_or(1.0)))
    }

    fn time(
        &self,
        slots: &[Val<'_>],
        units: &[Option<TimeUnit>],
        buf: &str,
    ) -> Result<i64, String> {
        let f = &self.timestamp;
        let Src::Path(p) = f.src else {
            return Err("timestamp: must be a path".into());
        };
        let (slot, rest) = &self.located[p];
        let v = match self.val(slots, p, buf) {
            None | Some(Val::Null) => {
                return Err(format!("timestamp: missing at {}", self.paths[p]));
            }
            Some(v) => v,
        };
        let schema_unit = if rest.is_empty() {
            units.get(*slot).copied().flatten()
        } else {
            None
        };
        // The unit of a number: the format's, else the schema's, else milliseconds.
        let unit = match f.time {
            TimeFormat::EpochS => None,
            TimeFormat::EpochUs => Some(TimeUnit::Micros),
            TimeFormat::EpochNs => Some(TimeUnit::Nanos),
            TimeFormat::EpochMs | TimeFormat::Rfc3339 => Some(TimeUnit::Millis),
            TimeFormat::Auto => Some(schema_unit.unwrap_or(TimeUnit::Millis)),
        };
        let int_ms = |i: i64| -> Result<i64, String> {
            match unit {
                None => i
                    .checked_mul(1000)
                    .ok_or_else(|| format!("timestamp: {i} s is out of range")),
                Some(TimeUnit::Millis) => Ok(i),
                Some(TimeUnit::Micros) => Ok(i.div_euclid(1_000)),
                Some(TimeUnit::Nanos) => Ok(i.div_euclid(1_000_000)),
            }
        };
        let float_ms = |x: f64| -> Result<i64, String> {
            let ms = match unit {
                None => x * 1e3,
                Some(TimeUnit::Millis) => x,
                Some(TimeUnit::Micros) => x / 1e3,
                Some(TimeUnit::Nanos) => x / 1e6,
            };
            if ms.is_finite() && ms.abs() < 1e17 {
                Ok(ms.floor() as i64)
            } else {
                Err(format!("timestamp: {x} is out of range"))
            }
        };
        let number_text = |s: &str| -> Result<i64, String> {
            // Seconds with a decimal fraction (`1796205600.123`), exactly: in binary
            // floating point ×1000 may land a hair under the millisecond.
            if unit.is_none()
                && let Some((whole, frac)) = s.split_once('.')
                && let Ok(w) = whole.parse::<i64>()
                && !frac.is_empty()
                && frac.bytes().all(|b| b.is_ascii_digit())
            {
                let digits = &frac[..frac.len().min(3)];
                let f = digits.parse::<i64>().unwrap_or(0) * 10i64.pow(3 - digits.len() as u32);
                let exact_beyond = frac.len() <= 3 || frac[3..].bytes().all(|b| b == b'0');
                let ms = if whole.starts_with('-') {
                    w.saturating_mul(1000) - f - i64::from(!exact_beyond)
                } else {
                    w.saturating_mul(1000) + f
                };
                return Ok(ms);
            }
            match s.parse::<i64>() {
                Ok(i) => int_ms(i),
                Err(_) => float_ms(
                    s.parse()
                        .map_err(|_| format!("timestamp: {s:?} is not a number"))?,
                ),
            }
        };
        let rfc = f.time == TimeFormat::Rfc3339;
        match v {
            Val::Str(t) => {
                let s = t.resolve_in(buf).trim();
                match f.time {
                    TimeFormat::Auto | TimeFormat::Rfc3339 => rfc3339_ms(s)
                        .map(Ok)
                        .or_else(|| (!rfc).then(|| s.parse::<i64>().ok().map(int_ms)).flatten())
                        .unwrap_or_else(|| {
                            Err(format!("timestamp: {s:?} is not an RFC 3339 time"))
                        }),
                    _ => number_text(s),
                }
            }
            Val::Num(s) if !rfc => number_text(s),
            Val::Int(i) if !rfc => int_ms(*i),
            Val::Float(x) if !rfc => float_ms(*x),
            v => Err(format!(
                "timestamp: expected {}, found {}",
                if rfc {
                    "an RFC 3339 string"
                } else {
                    "a number or a string"
                },
                v.kind()
            )),
        }
    }

    fn flags_of<'a>(
        &'a self,
        fs: &'a FlagSource,
        caps: &Captures<'a>,
        buf: &mut String,
        out: &mut SmallVec<[(Txt<'a>, Txt<'a>); 4]>,
    ) -> Result<(), String> {
        let slots = &caps.slots[..];
        match fs {
            FlagSource::Fields(fields) => {
                for (flag, p) in fields {
                    if let Some(v) = self.val(slots, *p, buf)
                        && let Some(t) = scalar_text_into(v, buf)
                    {
                        out.push((Txt::B(flag.as_str()), t));
                    }
                }
            }
            FlagSource::At {
                path,
                key,
                variant,
                prefix,
                item,
            } => {
                // One member of an object of flag → variant.
                let entry = |k: Txt<'a>, v: &Val<'a>, buf: &mut String| {
                    let k = match prefix {
                        None => k,
                        Some(pre) => match k {
                            Txt::B(s) => Txt::B(s.strip_prefix(pre.as_str())?),
                            Txt::Buf(a, e) => {
                                if !buf[a as usize..e as usize].starts_with(pre.as_str()) {
                                    return None;
                                }
                                Txt::Buf(a + pre.len() as u32, e)
                            }
                        },
                    };
                    Some((k, scalar_text_into(v, buf)?))
                };
                let expected = || {
                    if key.is_empty() {
                        "an object of flag → variant"
                    } else {
                        "a list of objects"
                    }
                };
                if self.as_list[*path] {
                    if let Some((slot, kind)) = caps.bad
                        && slot == *path
                    {
                        return Err(format!(
                            "flags: expected {} at {}, found {kind}",
                            expected(),
                            self.paths[*path],
                        ));
                    }
                    for (k, v) in caps.pairs_of(*path) {
                        let pair = if key.is_empty() {
                            match k {
                                Val::Str(k) => entry(*k, v, buf),
                                _ => None,
                            }
                        } else {
                            let part = |i: usize| {
                                let (slot, rest) = &item[i];
                                let whole = if *slot == 0 { k } else { v };
                                if rest.is_empty() {
                                    Some(whole)
                                } else {
                                    whole.get(rest, buf)
                                }
                            };
                            match (part(0), part(1)) {
                                (Some(k), Some(v)) => {
                                    scalar_text_into(k, buf).zip(scalar_text_into(v, buf))
                                }
                                _ => None,
                            }
                        };
                        if let Some(pair) = pair {
                            out.push(pair);
                        }
                    }
                    return Ok(());
                }
                let v = match self.val(slots, *path, buf) {
                    None | Some(Val::Null) => return Ok(()),
                    Some(v) => v,
                };
                match v {
                    Val::Map(entries) if key.is_empty() => {
                        for (k, v) in entries {
                            out.extend(entry(*k, v, buf));
                        }
                    }
                    Val::Array(items) if !key.is_empty() => {
                        for item in items {
                            let k = item.get(key, buf).and_then(|k| scalar_text_into(k, buf));
                            let vv = item
                                .get(variant, buf)
                                .and_then(|v| scalar_text_into(v, buf));
                            if let (Some(k), Some(vv)) = (k, vv) {
                                out.push((k, vv));
                            }
                        }
                    }
                    other => {
                        return Err(format!(
                            "flags: expected {} at {}, found {}",
                            expected(),
                            self.paths[*path],
                            other.kind()
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn scalar_eq(v: &Val<'_>, want: &str) -> bool {
    match v {
        Val::Num(s) => *s == want,
        Val::Int(i) => want.parse::<i64>() == Ok(*i),
        Val::Bool(b) => want == if *b { "true" } else { "false" },
        _ => false,
    }
}

/// A scalar's text without writing: strings and JSON numbers and booleans.
fn scalar_text<'a>(v: &Val<'a>) -> Option<Txt<'a>> {
    match v {
        Val::Str(t) => Some(*t),
        Val::Num(s) => Some(Txt::B(s)),
        Val::Bool(true) => Some(Txt::B("true")),
        Val::Bool(false) => Some(Txt::B("false")),
        _ => None,
    }
}

/// A scalar's text, formatting integers and floats into `buf`.
#[inline]
fn scalar_text_into<'a>(v: &Val<'a>, buf: &mut String) -> Option<Txt<'a>> {
    use std::fmt::Write as _;
    match v {
        Val::Str(t) => Some(*t),
        Val::Int(i) => {
            let a = buf.len() as u32;
            let _ = write!(buf, "{i}");
            Some(Txt::Buf(a, buf.len() as u32))
        }
        Val::Float(x) => {
            let a = buf.len() as u32;
            let _ = write!(buf, "{x}");
            Some(Txt::Buf(a, buf.len() as u32))
        }
        other => scalar_text(other),
    }
}

/// Milliseconds since the epoch of an RFC 3339 time (`2026-12-02T10:00:00.123+02:00`;
/// `t`/`z` and a space separator accepted), floored.
pub fn rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        let mut v = 0i64;
        for &c in d {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Milliseconds: the first three digits (floored).
        let digits = &s[start..i.min(start + 3)];
        frac_ms = digits.parse::<i64>().ok()? * 10i64.pow(3 - digits.len() as u32);
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let m = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *c == b'-' { -m } else { m }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec.min(59) - offset_min * 60;
    Some(secs * 1000 + frac_ms)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests;
