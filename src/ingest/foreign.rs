//! Other people's formats for the demo and the benchmarks: simulated events written
//! as Confluent-framed Avro, as Segment-style JSON and as OTLP spans, and the
//! `[[inputs]]` that read them back.
//!
//! Only the demo and benchmarks write these formats; tests of the readers use bytes
//! from independent producers (`tests/data/byo/`).

use std::fmt::Write as _;

use crate::model::{Outcome, Source};
use crate::sim::{SimBody, SimEvent};

/// The schema ids the demo registers its writer schemas under.
pub const DEMO_PRODUCT_SCHEMA_ID: u32 = 101;
pub const DEMO_ERROR_SCHEMA_ID: u32 = 102;

/// A format the demo can produce its traffic in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoFormat {
    Avro,
    AvroConfluent,
    Json,
    Otlp,
}

impl DemoFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DemoFormat::Avro => "avro",
            DemoFormat::AvroConfluent => "avro-confluent",
            DemoFormat::Json => "json",
            DemoFormat::Otlp => "otlp",
        }
    }

    pub fn parse(s: &str) -> Option<DemoFormat> {
        Some(match s {
            "avro" => DemoFormat::Avro,
            "avro-confluent" => DemoFormat::AvroConfluent,
            "json" => DemoFormat::Json,
            "otlp" => DemoFormat::Otlp,
            _ => return None,
        })
    }
}

/// The `[[inputs]]` the demo appends to its policy for `format` (`registry_url`: the
/// in-process registry of `avro-confluent`). Product and error events come in the
/// chosen format; support signals stay on guardrail's own Avro topic.
pub fn demo_inputs(format: DemoFormat, registry_url: &str) -> String {
    let support =
        "\n[[inputs]]\ntopic = \"support-signals\"\nformat = \"avro\"\nrecord = \"support\"\n";
    match format {
        DemoFormat::Avro => String::new(),
        DemoFormat::AvroConfluent => format!(
            r#"
# guardrail's own records, but behind a Schema Registry (Confluent framing).
[[inputs]]
topic = "product-events-confluent"
format = "avro-confluent"
record = "product"
registry = {{ url = "{registry_url}", timeout = "5s" }}
  [inputs.mapping]
  event_id = "event_id"
  timestamp = "timestamp"
  unit = "user_id"
  flags = [{{ path = "flags", key = "key", variant = "variant" }}]
  attributes = {{ platform = "attributes.platform", region = "attributes.region" }}
  journey = "journey"
  step = "step"
  outcome = "outcome"
  latency_ms = "latency_ms"
  value = "value"

[[inputs]]
topic = "error-events-confluent"
format = "avro-confluent"
record = "errors"
registry = {{ url = "{registry_url}", timeout = "5s" }}
  [inputs.mapping]
  event_id = "event_id"
  timestamp = "timestamp"
  unit = "user_id"
  flags = [{{ path = "flags", key = "key", variant = "variant" }}]
  attributes = {{ platform = "attributes.platform", region = "attributes.region" }}
  service = "service"
  error_class = "error_class"
  status_code = "status_code"
  fatal = "fatal"
  latency_ms = "latency_ms"
{support}"#
        ),
        DemoFormat::Json => format!(
            r#"
# Segment-style track calls.
[[inputs]]
topic = "product-events-json"
format = "json"
record = "product"
  [inputs.mapping]
  event_id = "messageId"
  timestamp = "timestamp"
  unit = "userId"
  flags = [{{ path = "context.experiments" }}]
  attributes = {{ platform = "context.device.type", region = "context.location.region" }}
  when = {{ type = "track" }}
  journey = "properties.journey"
  step = "properties.step"
  outcome = {{ path = "event", map = {{ "Experiment Viewed" = "EXPOSURE", "Checkout Started" = "STARTED", "Checkout Completed" = "COMPLETED", "Checkout Abandoned" = "ABANDONED", "Checkout Failed" = "FAILED" }} }}
  latency_ms = "properties.latency_ms"
  value = "properties.revenue"

# Error reports as JSON (Sentry-like).
[[inputs]]
topic = "error-events-json"
format = "json"
record = "errors"
  [inputs.mapping]
  event_id = "event_id"
  timestamp = {{ path = "timestamp", format = "epoch-s" }}
  unit = "user.id"
  flags = [{{ path = "contexts.flags.values", key = "flag", variant = "result" }}]
  attributes = {{ platform = "tags.platform", region = "tags.region" }}
  service = "tags.service"
  error_class = "exception.type"
  status_code = "tags.status_code"
  fatal = {{ path = "level", map = {{ fatal = "true", error = "false" }} }}
  latency_ms = "extra.latency_ms"
{support}"#
        ),
        DemoFormat::Otlp => format!(
            r#"
# OpenTelemetry spans (the Collector's Kafka exporter, otlp_proto).
[[inputs]]
topic = "otlp-spans"
format = "otlp"
signal = "traces"
encoding = "protobuf"
{support}"#
        ),
    }
}

/// A product or error event as Confluent-framed Avro of guardrail's own schema,
/// registered under the demo ids. `None` for support signals.
pub fn to_confluent(e: &SimEvent) -> Option<Vec<u8>> {
    let id = match e.source {
        Source::Product => DEMO_PRODUCT_SCHEMA_ID,
        Source::Errors => DEMO_ERROR_SCHEMA_ID,
        Source::Support => return None,
    };
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(e.datum());
    Some(out)
}

fn outcome_event(o: Outcome) -> &'static str {
    match o {
        Outcome::Exposure => "Experiment Viewed",
        Outcome::Started => "Checkout Started",
        Outcome::Completed => "Checkout Completed",
        Outcome::Abandoned => "Checkout Abandoned",
        Outcome::Failed => "Checkout Failed",
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    let seconds = crate::clock::rfc3339(ms);
    let whole = seconds.strip_suffix('Z').unwrap_or(&seconds);
    format!("{whole}.{:03}Z", ms.rem_euclid(1000))
}

/// A product event as a Segment track call, an error event as a Sentry-like report.
/// `None` for support signals.
pub fn to_json(e: &SimEvent) -> Option<String> {
    let mut o = String::with_capacity(512);
    let attr = |k: &str| e.attribute(k).unwrap_or_default().to_string();
    match &e.body {
        SimBody::Product {
            journey,
            step,
            outcome,
            latency_ms,
            value,
        } => {
            o.push_str("{\"type\":\"track\",\"messageId\":");
            json_str(&mut o, &e.event_id);
            o.push_str(",\"event\":");
            json_str(&mut o, outcome_event(*outcome));
            let _ = write!(o, ",\"timestamp\":\"{}\",\"userId\":", rfc3339(e.timestamp));
            match &e.user_id {
                Some(u) => json_str(&mut o, u),
                None => o.push_str("null"),
            }
            o.push_str(",\"context\":{\"library\":{\"name\":\"analytics.js\",\"version\":\"5.2.0\"},\"device\":{\"type\":");
            json_str(&mut o, &attr("platform"));
            o.push_str("},\"location\":{\"region\":");
            json_str(&mut o, &attr("region"));
            o.push_str("},\"experiments\":{");
            for (i, (k, v)) in e.flags.iter().enumerate() {
                if i > 0 {
                    o.push(',');
                }
                json_str(&mut o, k);
                o.push(':');
                json_str(&mut o, v);
            }
            o.push_str("}},\"properties\":{\"journey\":");
            json_str(&mut o, journey);
            if let Some(s) = step {
                o.push_str(",\"step\":");
                json_str(&mut o, s);
            }
            if let Some(l) = latency_ms {
                let _ = write!(o, ",\"latency_ms\":{l}");
            }
            if let Some(v) = value {
                let _ = write!(o, ",\"revenue\":{v}");
            }
            o.push_str("}}");
        }
        SimBody::Error {
            service,
            error_class,
            status_code,
            fatal,
            latency_ms,
        } => {
            o.push_str("{\"event_id\":");
            json_str(&mut o, &e.event_id);
            let _ = write!(
                o,
                ",\"timestamp\":{}.{:03},\"level\":\"{}\",\"platform\":\"javascript\",\"user\":{{\"id\":",
                e.timestamp.div_euclid(1000),
                e.timestamp.rem_euclid(1000),
                if *fatal { "fatal" } else { "error" }
            );
            match &e.user_id {
                Some(u) => json_str(&mut o, u),
                None => o.push_str("null"),
            }
            o.push_str("},\"exception\":{\"type\":");
            json_str(&mut o, error_class);
            o.push_str("},\"tags\":{\"service\":");
            json_str(&mut o, service);
            o.push_str(",\"platform\":");
            json_str(&mut o, &attr("platform"));
            o.push_str(",\"region\":");
            json_str(&mut o, &attr("region"));
            if let Some(s) = status_code {
                let _ = write!(o, ",\"status_code\":\"{s}\"");
            }
            o.push_str("},\"contexts\":{\"flags\":{\"values\":[");
            for (i, (k, v)) in e.flags.iter().enumerate() {
                if i > 0 {
                    o.push(',');
                }
                o.push_str("{\"flag\":");
                json_str(&mut o, k);
                o.push_str(",\"result\":");
                json_str(&mut o, v);
                o.push('}');
            }
            o.push_str("]}}");
            if let Some(l) = latency_ms {
                let _ = write!(o, ",\"extra\":{{\"latency_ms\":{l}}}");
            }
            o.push('}');
        }
        SimBody::Support { .. } => return None,
    }
    Some(o)
}

/// The demo's traffic as OpenTelemetry spans: one span per simulated session, named
/// after its journey, from its exposure to its outcome, with the session's flags as
/// `feature_flag.evaluation` events (context id = the user), status ERROR with an
/// `exception` event when the session had an error. Support signals are not spans.
pub fn to_spans(events: &[SimEvent]) -> Vec<crate::ingest::otlp::SpanSpec> {
    use crate::ingest::otlp::{AttrValue, FlagSpec, SpanSpec};
    // A session's events share the id prefix `e<session>-`; a window's events come
    // sorted by time, so they are gathered first.
    let mut order: Vec<&str> = Vec::new();
    let mut sessions: std::collections::HashMap<&str, Vec<&SimEvent>> = Default::default();
    for e in events.iter().filter(|e| e.source != Source::Support) {
        let id = e.event_id.split('-').next().unwrap_or_default();
        sessions
            .entry(id)
            .or_insert_with(|| {
                order.push(id);
                Vec::new()
            })
            .push(e);
    }
    let mut out = Vec::with_capacity(order.len());
    for id in order {
        let s = &sessions[id];
        let first = &s[0];
        let start = s.iter().map(|e| e.timestamp).min().unwrap_or_default();
        let end = s.iter().map(|e| e.timestamp).max().unwrap_or_default();
        let mut journey = String::new();
        let mut latency = None;
        let mut error = None;
        for e in s.iter() {
            match &e.body {
                SimBody::Product {
                    journey: j,
                    latency_ms,
                    ..
                } => {
                    journey.clone_from(j);
                    latency = latency.or(*latency_ms);
                }
                SimBody::Error { error_class, .. } => {
                    error.get_or_insert_with(|| error_class.clone());
                }
                SimBody::Support { .. } => {}
            }
        }
        let end_ns = (end.max(0) as u64) * 1_000_000;
        let start_ns = match latency {
            Some(l) => end_ns.saturating_sub((l * 1e6) as u64),
            None => (start.max(0) as u64) * 1_000_000,
        };
        let mut trace_id = [0u8; 16];
        let hash = crate::window::aggregate::unit_hash(id.as_bytes());
        trace_id[..8].copy_from_slice(&hash.to_be_bytes());
        trace_id[8..].copy_from_slice(&(!hash).to_be_bytes());
        out.push(SpanSpec {
            service: journey.clone(),
            resource_attributes: vec![(
                "deployment.environment.name".into(),
                AttrValue::Str("demo".into()),
            )],
            trace_id,
            span_id: hash.rotate_left(17).to_be_bytes(),
            name: journey,
            start_ns,
            end_ns,
            error: error.is_some(),
            status_message: String::new(),
            exception_type: error,
            flags: first
                .flags
                .iter()
                .map(|(k, v)| FlagSpec {
                    key: k.clone(),
                    variant: v.clone(),
                    context_id: first.user_id.clone(),
                })
                .collect(),
            attributes: first
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), AttrValue::Str(v.clone())))
                .collect(),
        });
    }
    out
}

/// The demo policy for OTLP traffic: the example policy with its outcome metrics
/// restated over what the OTLP preset gives — one COMPLETED or FAILED product event per
/// span, no STARTED.
pub fn otlp_policy(example: &str) -> String {
    let started = "outcome = \"STARTED\" }";
    let errors = "numerator   = { source = \"errors\",  match = { service = \"checkout\" } }";
    debug_assert!(example.contains(started) && example.contains(errors));
    example
        .replace(
            errors,
            "numerator   = { source = \"product\", match = { journey = \"checkout\", outcome = \"FAILED\" } }",
        )
        .replace(started, "outcome = [\"COMPLETED\", \"FAILED\"] }")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::engine::Engine;
    use crate::ingest::map::json;
    use crate::policy::Policy;
    use crate::sim::{Scenario, Simulator};

    #[test]
    fn rfc3339_round_trips() {
        for ms in [0, 1_796_205_600_123, -1, 951_782_400_000] {
            assert_eq!(
                crate::ingest::map::rfc3339_ms(&rfc3339(ms)),
                Some(ms),
                "{}",
                rfc3339(ms)
            );
        }
    }

    /// The demo's JSON and Confluent inputs give back exactly the simulated events.
    #[test]
    fn demo_formats_read_back_to_the_same_events() {
        let text = crate::demo::EXAMPLE_CONFIG.to_string();
        let mut sim = Simulator::new(Scenario::demo(0, 1, 300));
        let events = sim.next_window().unwrap();
        for format in [DemoFormat::Json, DemoFormat::AvroConfluent] {
            let config =
                Config::parse(&format!("{text}{}", demo_inputs(format, "http://r:1"))).unwrap();
            let inputs = crate::ingest::input::compile(&config).unwrap();
            let mut checked = 0;
            for e in &events {
                let Some(input) = inputs.iter().position(|i| i.record == e.source) else {
                    continue;
                };
                let mapping = inputs[input].mapping.clone();
                let Some(mapping) = mapping else { continue };
                let mut buf = String::new();
                let got = match format {
                    DemoFormat::Json => {
                        let j = to_json(e).unwrap();
                        let mut caps = mapping.captures();
                        json::project(j.as_bytes(), mapping.trie(), &mut caps, &mut buf).unwrap();
                        let ev = mapping
                            .apply(&caps, &[], &mut buf, (0, 0))
                            .unwrap()
                            .unwrap();
                        crate::sim::SimEvent::from_ref(&ev)
                    }
                    _ => {
                        let bytes = to_confluent(e).unwrap();
                        let (id, datum) = crate::ingest::confluent::split_frame(&bytes).unwrap();
                        let schema = match id {
                            DEMO_PRODUCT_SCHEMA_ID => crate::ingest::decode::SHIPPED[0].2,
                            _ => crate::ingest::decode::SHIPPED[1].2,
                        };
                        let (plan, missing) = crate::engine::resolve(&mapping, id, schema).unwrap();
                        assert!(missing.is_empty(), "{missing:?}");
                        let mut caps = mapping.captures();
                        plan.decode(datum, &mut caps).unwrap();
                        let ev = mapping
                            .apply(&caps, &plan.units, &mut buf, (0, 0))
                            .unwrap()
                            .unwrap();
                        crate::sim::SimEvent::from_ref(&ev)
                    }
                };
                let mut want = e.clone();
                want.attributes.sort();
                let mut got = got;
                got.attributes.sort();
                assert_eq!(got, want, "{format:?}");
                checked += 1;
            }
            assert!(checked > 500, "{format:?}: {checked}");
            // The engine accepts every one of them (the registry's part is played by
            // add_schema).
            let policy = Arc::new(Policy::compile(&config).unwrap());
            let mut engine = Engine::with_inputs(policy, &inputs, false).unwrap();
            if format == DemoFormat::AvroConfluent {
                engine
                    .add_schema(
                        0,
                        DEMO_PRODUCT_SCHEMA_ID,
                        crate::ingest::decode::SHIPPED[0].2,
                    )
                    .unwrap();
                engine
                    .add_schema(1, DEMO_ERROR_SCHEMA_ID, crate::ingest::decode::SHIPPED[1].2)
                    .unwrap();
            }
            let mut fed = 0;
            for (offset, e) in events.iter().enumerate() {
                let Some(input) = inputs.iter().position(|i| i.record == e.source) else {
                    continue;
                };
                let bytes = match format {
                    DemoFormat::Json => to_json(e).map(String::into_bytes),
                    _ => to_confluent(e),
                };
                let Some(bytes) = bytes else { continue };
                let p = crate::window::watermark::PartitionKey {
                    input: input as u16,
                    partition: 0,
                };
                let got = engine.ingest(p, offset as i64, &bytes, e.timestamp, false);
                assert_eq!(got, crate::engine::Ingested::Accepted, "{format:?}");
                fed += 1;
            }
            assert_eq!(fed, checked, "{format:?}");
        }
    }
}
