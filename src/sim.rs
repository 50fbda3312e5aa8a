//! A seeded traffic simulator: user sessions on two journeys (checkout, search) under
//! two flags, with cohort attributes, an optional regression injected into one cohort
//! of one flag and an optional real improvement of another. It feeds the demo, the
//! end-to-end tests and the benchmarks, and writes events in the current Avro schemas.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::avro::AvroWriter;
use crate::model::{Channel, Outcome, Source};

pub const PLATFORMS: [&str; 4] = ["ios", "android", "mobile-web", "desktop-web"];
pub const REGIONS: [&str; 3] = ["eu", "us", "apac"];

/// An input event in owned form, with its encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct SimEvent {
    pub source: Source,
    pub event_id: String,
    pub timestamp: i64,
    pub flags: Vec<(String, String)>,
    pub attributes: Vec<(String, String)>,
    pub user_id: Option<String>,
    pub body: SimBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SimBody {
    Product {
        journey: String,
        step: Option<String>,
        outcome: Outcome,
        latency_ms: Option<f64>,
        value: Option<f64>,
    },
    Error {
        service: String,
        error_class: String,
        status_code: Option<i32>,
        fatal: bool,
        latency_ms: Option<f64>,
    },
    Support {
        channel: Channel,
        csat: Option<f64>,
        sentiment: Option<f64>,
        tags: Vec<String>,
    },
}

impl SimEvent {
    /// The Avro datum in the current schema of its source (no single-object header).
    pub fn datum(&self) -> Vec<u8> {
        let pair = |w: &mut AvroWriter, (a, b): &(String, String)| {
            w.string(a);
            w.string(b);
        };
        let mut w = AvroWriter::with_capacity(160);
        w.string(&self.event_id);
        w.long(self.timestamp);
        w.block(&self.flags, pair);
        w.block(&self.attributes, pair);
        w.opt(self.user_id.as_deref(), AvroWriter::string);
        match &self.body {
            SimBody::Product {
                journey,
                step,
                outcome,
                latency_ms,
                value,
            } => {
                w.string(journey);
                w.opt(step.as_deref(), AvroWriter::string);
                w.long(*outcome as i64);
                w.opt(*latency_ms, AvroWriter::double);
                w.opt(*value, AvroWriter::double);
            }
            SimBody::Error {
                service,
                error_class,
                status_code,
                fatal,
                latency_ms,
            } => {
                w.string(service);
                w.string(error_class);
                w.opt(*status_code, |w, c| w.long(i64::from(c)));
                w.boolean(*fatal);
                w.opt(*latency_ms, AvroWriter::double);
            }
            SimBody::Support {
                channel,
                csat,
                sentiment,
                tags,
            } => {
                w.long(*channel as i64);
                w.opt(*csat, AvroWriter::double);
                w.opt(*sentiment, AvroWriter::double);
                w.block(tags, |w, t| w.string(t));
            }
        }
        w.0
    }

    /// Single-object encoding: `C3 01`, the schema fingerprint, the datum.
    pub fn single_object(&self, fingerprint: u64) -> Vec<u8> {
        let mut out = vec![0xC3, 0x01];
        out.extend_from_slice(&fingerprint.to_le_bytes());
        out.extend(self.datum());
        out
    }

    /// The owned copy of a decoded event.
    pub fn from_ref(ev: &crate::model::EventRef<'_>) -> SimEvent {
        use crate::model::Body;
        let own = |s: &str| s.to_string();
        SimEvent {
            source: ev.source(),
            event_id: own(ev.event_id),
            timestamp: ev.timestamp,
            flags: ev
                .flags
                .iter()
                .map(|f| (own(f.key), own(f.variant)))
                .collect(),
            attributes: ev
                .attributes
                .iter()
                .map(|(k, v)| (own(k), own(v)))
                .collect(),
            user_id: ev.user_id.map(own),
            body: match &ev.body {
                Body::Product {
                    journey,
                    step,
                    outcome,
                    latency_ms,
                    value,
                } => SimBody::Product {
                    journey: own(journey),
                    step: step.map(own),
                    outcome: *outcome,
                    latency_ms: *latency_ms,
                    value: *value,
                },
                Body::Error {
                    service,
                    error_class,
                    status_code,
                    fatal,
                    latency_ms,
                } => SimBody::Error {
                    service: own(service),
                    error_class: own(error_class),
                    status_code: *status_code,
                    fatal: *fatal,
                    latency_ms: *latency_ms,
                },
                Body::Support {
                    channel,
                    csat,
                    sentiment,
                    tags,
                } => SimBody::Support {
                    channel: *channel,
                    csat: *csat,
                    sentiment: *sentiment,
                    tags: tags.iter().map(|t| own(t)).collect(),
                },
            },
        }
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn variant(&self, flag: &str) -> Option<&str> {
        self.flags
            .iter()
            .find(|(k, _)| k == flag)
            .map(|(_, v)| v.as_str())
    }
}

/// A change in treatment behaviour, from window `from_window` on, optionally in one cohort.
#[derive(Debug, Clone)]
pub struct Effect {
    pub flag: String,
    /// `(attribute, value)`; `None` = every cohort.
    pub cohort: Option<(String, String)>,
    pub from_window: u32,
    /// Multiplies the probability of an error on checkout.
    pub error_factor: f64,
    /// Multiplies the completion probability.
    pub completion_factor: f64,
    /// Multiplies latency.
    pub latency_factor: f64,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub start_ms: i64,
    pub window_ms: i64,
    pub windows: u32,
    pub sessions_per_window: u32,
    /// (flag key, treatment variant, control variant, treatment share in [0, 1]).
    pub flags: Vec<(String, String, String, f64)>,
    pub effects: Vec<Effect>,
    pub checkout_error_rate: f64,
    pub checkout_completion: f64,
    pub search_completion: f64,
}

impl Scenario {
    /// The demo: checkout-redesign regresses on mobile-web from window 4; search-ranking-v2
    /// truly improves search completion by 8% everywhere.
    pub fn demo(start_ms: i64, windows: u32, sessions_per_window: u32) -> Scenario {
        Scenario {
            seed: 7,
            start_ms,
            window_ms: 15 * 60_000,
            windows,
            sessions_per_window,
            flags: vec![
                ("checkout-redesign".into(), "on".into(), "off".into(), 0.2),
                ("search-ranking-v2".into(), "v2".into(), "v1".into(), 0.5),
            ],
            effects: vec![
                Effect {
                    flag: "checkout-redesign".into(),
                    cohort: Some(("platform".into(), "mobile-web".into())),
                    from_window: 4,
                    error_factor: 3.0,
                    completion_factor: 0.85,
                    latency_factor: 1.4,
                },
                Effect {
                    flag: "search-ranking-v2".into(),
                    cohort: None,
                    from_window: 0,
                    error_factor: 1.0,
                    completion_factor: 1.08,
                    latency_factor: 1.0,
                },
            ],
            checkout_error_rate: 0.01,
            checkout_completion: 0.6,
            search_completion: 0.5,
        }
    }
}

/// Generates a scenario's events window by window, in event-time order within a window.
pub struct Simulator {
    s: Scenario,
    rng: SmallRng,
    window: u32,
    seq: u64,
}

impl Simulator {
    pub fn new(s: Scenario) -> Simulator {
        Simulator {
            rng: SmallRng::seed_from_u64(s.seed),
            s,
            window: 0,
            seq: 0,
        }
    }

    pub fn scenario(&self) -> &Scenario {
        &self.s
    }

    /// Changes a flag's treatment share (the demo follows the engine's commands).
    pub fn set_share(&mut self, flag: &str, share: f64) {
        if let Some(f) = self.s.flags.iter_mut().find(|f| f.0 == flag) {
            f.3 = share;
        }
    }

    /// The events of the next window, or `None` after the last.
    pub fn next_window(&mut self) -> Option<Vec<SimEvent>> {
        if self.window >= self.s.windows {
            return None;
        }
        let w = self.window;
        self.window += 1;
        let start = self.s.start_ms + i64::from(w) * self.s.window_ms;
        let mut times: Vec<i64> = (0..self.s.sessions_per_window)
            .map(|_| start + self.rng.random_range(0..self.s.window_ms - 5_000))
            .collect();
        times.sort_unstable();
        let mut out = Vec::with_capacity(times.len() * 4);
        for t in times {
            self.session(w, t, &mut out);
        }
        out.sort_by_key(|e| e.timestamp);
        Some(out)
    }

    fn factor(
        &self,
        w: u32,
        flags: &[(String, String)],
        attrs: &[(String, String)],
        pick: fn(&Effect) -> f64,
    ) -> f64 {
        let mut f = 1.0;
        for e in &self.s.effects {
            let Some(fl) = self.s.flags.iter().find(|x| x.0 == e.flag) else {
                continue;
            };
            let treated = flags.iter().any(|(k, v)| *k == fl.0 && *v == fl.1);
            let in_cohort = e
                .cohort
                .as_ref()
                .is_none_or(|(a, v)| attrs.iter().any(|(k, x)| k == a && x == v));
            if treated && in_cohort && w >= e.from_window {
                f *= pick(e);
            }
        }
        f
    }

    fn session(&mut self, w: u32, t: i64, out: &mut Vec<SimEvent>) {
        self.seq += 1;
        let user = format!("u{}", self.rng.random_range(0..50_000_000u64));
        let platform = PLATFORMS[self.rng.random_range(0..PLATFORMS.len())];
        let region = REGIONS[self.rng.random_range(0..REGIONS.len())];
        let attributes = vec![
            ("platform".to_string(), platform.to_string()),
            ("region".to_string(), region.to_string()),
        ];
        let flags: Vec<(String, String)> = self
            .s
            .flags
            .clone()
            .into_iter()
            .map(|(k, tr, ct, share)| {
                let v = if self.rng.random_bool(share.clamp(0.0, 1.0)) {
                    tr
                } else {
                    ct
                };
                (k, v)
            })
            .collect();
        let checkout = self.rng.random_bool(0.5);
        let journey = if checkout { "checkout" } else { "search" };
        let seq = self.seq;
        let mut n = 0;
        let mut ev = |source, dt: i64, body| {
            n += 1;
            SimEvent {
                source,
                event_id: format!("e{seq}-{n}"),
                timestamp: t + dt,
                flags: flags.clone(),
                attributes: attributes.clone(),
                user_id: Some(user.clone()),
                body,
            }
        };
        let product = |outcome, latency_ms| SimBody::Product {
            journey: journey.into(),
            step: None,
            outcome,
            latency_ms,
            value: None,
        };
        out.push(ev(Source::Product, 0, product(Outcome::Exposure, None)));
        out.push(ev(Source::Product, 100, product(Outcome::Started, None)));
        let completion_f = self.factor(w, &flags, &attributes, |e| e.completion_factor);
        let latency_f = self.factor(w, &flags, &attributes, |e| e.latency_factor);
        let base_p = if checkout {
            self.s.checkout_completion
        } else {
            self.s.search_completion
        };
        let base_latency = if checkout { 420.0 } else { 180.0 };
        // Log-normal latency around the base, scaled by the effect.
        let z: f64 = (0..12).map(|_| self.rng.random::<f64>()).sum::<f64>() - 6.0;
        let latency = base_latency * (0.35 * z).exp() * latency_f;
        if self
            .rng
            .random_bool((base_p * completion_f).clamp(0.0, 1.0))
        {
            out.push(ev(
                Source::Product,
                2_000,
                product(Outcome::Completed, Some(latency)),
            ));
        } else {
            out.push(ev(
                Source::Product,
                2_000,
                product(Outcome::Abandoned, Some(latency)),
            ));
        }
        if checkout {
            let err_f = self.factor(w, &flags, &attributes, |e| e.error_factor);
            if self
                .rng
                .random_bool((self.s.checkout_error_rate * err_f).clamp(0.0, 1.0))
            {
                out.push(ev(
                    Source::Errors,
                    1_500,
                    SimBody::Error {
                        service: "checkout".into(),
                        error_class: "PaymentTimeout".into(),
                        status_code: Some(504),
                        fatal: false,
                        latency_ms: Some(latency),
                    },
                ));
            }
        }
        if self.rng.random_bool(0.03) {
            let csat = f64::from(self.rng.random_range(1..=5u8));
            out.push(ev(
                Source::Support,
                4_000,
                SimBody::Support {
                    channel: Channel::Survey,
                    csat: Some(csat),
                    sentiment: Some((csat - 3.0) / 2.0),
                    tags: vec![journey.into()],
                },
            ));
        }
    }
}

/// Writes a simulator's events as three Avro container files in `dir`
/// (`product-events.avro`, `error-events.avro`, `support-signals.avro`); returns the count.
pub fn write_ocf_files(sim: &mut Simulator, dir: &std::path::Path) -> std::io::Result<u64> {
    use crate::ingest::decode::SHIPPED;
    use crate::ingest::ocf::{Codec, OcfWriter};
    let mut writers = Vec::new();
    for (source, name) in [
        (Source::Product, "product-events.avro"),
        (Source::Errors, "error-events.avro"),
        (Source::Support, "support-signals.avro"),
    ] {
        let schema = SHIPPED
            .iter()
            .find(|s| s.0 == source && s.3)
            .map(|s| s.2)
            .unwrap_or_default();
        let file = std::io::BufWriter::new(std::fs::File::create(dir.join(name))?);
        let mut sync = [0u8; 16];
        sync[0] = source as u8 + 1;
        writers.push(OcfWriter::new(file, schema, Codec::Null, sync)?);
    }
    let mut n = 0;
    while let Some(events) = sim.next_window() {
        for e in events {
            writers[e.source.index()].append_datum(&e.datum())?;
            n += 1;
        }
    }
    for w in writers {
        w.finish()?;
    }
    Ok(n)
}
