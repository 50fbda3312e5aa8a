//! Mapping tests: reference vectors from independent producers (Python's `json` in
//! `scripts/json_vectors.py`, Confluent's `AvroSerializer` with fastavro and Apache
//! Avro cross-checks in `scripts/confluent_vectors.py`), and the errors a mapping
//! reports with their config paths.

use serde_json::Value as Json;

use super::avro::{AvroSchema, Plan};
use super::*;
use crate::config::Config;
use crate::ingest::input;

const JSON_VECTORS: &str = include_str!("../../../tests/data/byo/json.json");
const CONFLUENT_VECTORS: &str = include_str!("../../../tests/data/byo/confluent.json");

/// The Segment mapping of the README's worked example.
pub const SEGMENT: &str = r#"
[[inputs]]
topic = "segment-tracks"
format = "json"
record = "product"
  [inputs.mapping]
  event_id = "messageId"
  timestamp = "timestamp"
  unit = "userId"
  attributes = { device = "context.device.type", country = "context.location.country", anonymous_id = "anonymousId" }
  when = { type = "track" }
  journey = { value = "checkout" }
  outcome = { path = "event", map = { "Checkout Started" = "STARTED", "Order Completed" = "COMPLETED", "Checkout Failed" = "FAILED", "Experiment Viewed" = "EXPOSURE" } }
  latency_ms = "properties.latency_ms"
  value = "properties.revenue"
  [[inputs.mapping.flags]]
  path = "properties.experiments"
  [[inputs.mapping.flags]]
  path = "context.flags"
  key = "key"
  variant = "variant"
  [[inputs.mapping.flags]]
  path = "properties"
  prefix = "exp_"
"#;

const CHECKOUT_AVRO: &str = r#"
[[inputs]]
topic = "checkout-avro"
format = "avro-confluent"
record = "product"
registry = { url = "http://registry:8081" }
  [inputs.mapping]
  event_id = "id"
  timestamp = "occurred_at"
  unit = "user.id"
  attributes = { device_type = "device.type", os = "device.os", tier = "user.tier", region = "region", retries = "retries", internal = "internal" }
  journey = { value = "checkout" }
  outcome = { path = "step", map = { VIEW = "EXPOSURE", START = "STARTED", DONE = "COMPLETED", FAIL = "FAILED" } }
  latency_ms = "latency_ms"
  value = { path = "amount_cents", scale = 0.01 }
  [[inputs.mapping.flags]]
  path = "experiments"
  key = "flag"
  variant = "variant"
"#;

fn mapping(text: &str) -> Mapping {
    let config = Config::parse(text).unwrap();
    let inputs = input::compile(&config).unwrap();
    (*inputs[0].mapping.clone().unwrap()).clone()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn opt_str(v: &Json) -> Option<&str> {
    v.as_str()
}

#[test]
fn segment_json_from_python_maps_field_for_field() {
    let m = mapping(SEGMENT);
    let vectors: Json = serde_json::from_str(JSON_VECTORS).unwrap();
    let records = vectors["records"].as_array().unwrap();
    assert!(records.len() >= 50);
    for (i, r) in records.iter().enumerate() {
        let text = r["text"].as_str().unwrap();
        let want = &r["expected"];
        let mut buf = String::new();
        let mut caps = m.captures();
        json::project(text.as_bytes(), m.trie(), &mut caps, &mut buf)
            .unwrap_or_else(|e| panic!("record {i}: {e}"));
        let ev = m
            .apply(&caps, &[], &mut buf, (0, 0))
            .unwrap_or_else(|e| panic!("record {i}: {e}"))
            .unwrap_or_else(|| panic!("record {i} filtered out"));
        assert_eq!(
            ev.event_id,
            want["message_id"].as_str().unwrap(),
            "record {i}"
        );
        assert_eq!(
            ev.timestamp,
            want["timestamp_ms"].as_i64().unwrap(),
            "record {i}"
        );
        assert_eq!(ev.user_id, opt_str(&want["user_id"]), "record {i}");
        assert_eq!(
            ev.attribute("device"),
            opt_str(&want["device_type"]),
            "record {i}"
        );
        assert_eq!(
            ev.attribute("country"),
            opt_str(&want["country"]),
            "record {i}"
        );
        assert_eq!(
            ev.attribute("anonymous_id"),
            opt_str(&want["anonymous_id"]),
            "record {i}"
        );
        let outcome = match want["event"].as_str().unwrap() {
            "Checkout Started" => Outcome::Started,
            "Order Completed" => Outcome::Completed,
            "Checkout Failed" => Outcome::Failed,
            "Experiment Viewed" => Outcome::Exposure,
            other => panic!("{other}"),
        };
        let Body::Product {
            journey,
            outcome: got,
            latency_ms,
            value,
            ..
        } = ev.body
        else {
            panic!("record {i}: not a product event");
        };
        assert_eq!((journey, got), ("checkout", outcome), "record {i}");
        assert_eq!(latency_ms, want["latency_ms"].as_f64(), "record {i}");
        assert_eq!(value, want["revenue"].as_f64(), "record {i}");
        let mut flags: Vec<(String, String)> = ev
            .flags
            .iter()
            .map(|f| (f.key.to_string(), f.variant.to_string()))
            .collect();
        let mut expected: Vec<(String, String)> = want["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                (
                    kv[0].as_str().unwrap().to_string(),
                    kv[1].as_str().unwrap().to_string(),
                )
            })
            .collect();
        flags.sort();
        expected.sort();
        assert_eq!(flags, expected, "record {i}");
    }
}

#[test]
fn epoch_millisecond_timestamps_read_exactly() {
    let m = mapping(&SEGMENT.replace(
        "timestamp = \"timestamp\"",
        "timestamp = { path = \"receivedAtMs\", format = \"epoch-ms\" }",
    ));
    let vectors: Json = serde_json::from_str(JSON_VECTORS).unwrap();
    let mut checked = 0;
    for r in vectors["records"].as_array().unwrap() {
        let mut buf = String::new();
        let mut caps = m.captures();
        json::project(
            r["text"].as_str().unwrap().as_bytes(),
            m.trie(),
            &mut caps,
            &mut buf,
        )
        .unwrap();
        let got = m.apply(&caps, &[], &mut buf, (0, 0));
        match r["expected"]["received_at_ms"].as_i64() {
            Some(ms) => {
                assert_eq!(got.unwrap().unwrap().timestamp, ms);
                checked += 1;
            }
            None => assert!(got.unwrap_err().contains("timestamp: missing")),
        }
    }
    assert!(checked >= 40);
}

#[test]
fn invalid_json_from_python_is_refused() {
    let m = mapping(SEGMENT);
    let vectors: Json = serde_json::from_str(JSON_VECTORS).unwrap();
    for r in vectors["invalid"].as_array().unwrap() {
        let bytes = match (r.get("text").and_then(Json::as_str), r.get("hex")) {
            (Some(t), _) => t.as_bytes().to_vec(),
            (None, Some(h)) => unhex(h.as_str().unwrap()),
            _ => panic!("{r}"),
        };
        let mut buf = String::new();
        let mut caps = m.captures();
        let why = r["why"].as_str().unwrap();
        // Refused by the parser, or (for valid JSON that is not a usable record:
        // a top-level array, a latency of 1e999) by the mapping.
        let refused = match json::project(&bytes, m.trie(), &mut caps, &mut buf) {
            Err(_) => true,
            Ok(()) => !matches!(m.apply(&caps, &[], &mut buf, (0, 0)), Ok(Some(_))),
        };
        assert!(refused, "accepted: {why}");
    }
}

fn confluent() -> (Json, Mapping, Vec<(u32, Plan)>) {
    let v: Json = serde_json::from_str(CONFLUENT_VECTORS).unwrap();
    let m = mapping(CHECKOUT_AVRO);
    let plans = v["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let id = s["id"].as_u64().unwrap() as u32;
            let schema = AvroSchema::parse(s["schema"].as_str().unwrap()).unwrap();
            (id, Plan::compile(schema, m.trie(), m.slots()))
        })
        .collect();
    (v, m, plans)
}

#[test]
fn confluent_avro_from_confluents_serializer_maps_field_for_field() {
    let (v, m, plans) = confluent();
    let mut seen = [0usize; 2];
    for (i, r) in v["records"].as_array().unwrap().iter().enumerate() {
        let bytes = unhex(r["hex"].as_str().unwrap());
        let (id, datum) = crate::ingest::confluent::split_frame(&bytes).unwrap();
        assert_eq!(id as u64, r["schema_id"].as_u64().unwrap());
        let (_, plan) = plans.iter().find(|(pid, _)| *pid == id).unwrap();
        let mut buf = String::new();
        let mut caps = m.captures();
        plan.decode(datum, &mut caps)
            .unwrap_or_else(|e| panic!("record {i}: {e}"));
        let want = &r["value"];
        let got = m
            .apply(&caps, &plan.units, &mut buf, (0, 0))
            .unwrap_or_else(|e| panic!("record {i}: {e}"));
        let step = want["step"].as_str().unwrap();
        let Some(ev) = got else {
            assert_eq!(
                step, "PAY",
                "record {i}: only the unmapped step is filtered"
            );
            continue;
        };
        seen[(id != plans[0].0) as usize] += 1;
        assert_eq!(ev.event_id, want["id"].as_str().unwrap());
        assert_eq!(ev.timestamp, want["occurred_at"].as_i64().unwrap());
        assert_eq!(
            ev.user_id.unwrap(),
            want["user"]["id"].as_i64().unwrap().to_string()
        );
        assert_eq!(ev.attribute("tier"), want["user"]["tier"].as_str());
        assert_eq!(ev.attribute("device_type"), want["device"]["type"].as_str());
        assert_eq!(ev.attribute("os"), want["device"]["os"].as_str());
        assert_eq!(ev.attribute("region"), want["region"].as_str());
        assert_eq!(
            ev.attribute("retries"),
            Some(want["retries"].as_i64().unwrap().to_string().as_str())
        );
        assert_eq!(
            ev.attribute("internal"),
            Some(if want["internal"].as_bool().unwrap() {
                "true"
            } else {
                "false"
            })
        );
        let Body::Product {
            outcome,
            latency_ms,
            value,
            ..
        } = ev.body
        else {
            panic!()
        };
        let expect_outcome = match step {
            "VIEW" => Outcome::Exposure,
            "START" => Outcome::Started,
            "DONE" => Outcome::Completed,
            "FAIL" => Outcome::Failed,
            other => panic!("{other}"),
        };
        assert_eq!(outcome, expect_outcome);
        assert_eq!(
            latency_ms.map(f64::to_bits),
            want["latency_ms_f64_bits"].as_u64(),
            "record {i}: bit-exact doubles"
        );
        assert_eq!(
            value,
            want["amount_cents"].as_i64().map(|c| c as f64 * 0.01)
        );
        let flags: Vec<(&str, &str)> = ev.flags.iter().map(|f| (f.key, f.variant)).collect();
        let expected: Vec<(&str, &str)> = want["experiments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["flag"].as_str().unwrap(), a["variant"].as_str().unwrap()))
            .collect();
        assert_eq!(flags, expected, "record {i}");
    }
    assert!(seen[0] >= 20 && seen[1] >= 10, "{seen:?}");
}

#[test]
fn invalid_confluent_records_are_refused() {
    let (v, m, plans) = confluent();
    for r in v["invalid"].as_array().unwrap() {
        let why = r["why"].as_str().unwrap();
        let bytes = unhex(r["hex"].as_str().unwrap());
        let refused = match crate::ingest::confluent::split_frame(&bytes) {
            Err(_) => true,
            Ok((id, datum)) => match plans.iter().find(|(pid, _)| *pid == id) {
                None => {
                    assert_eq!(why, "unknown schema id");
                    true
                }
                Some((_, plan)) => {
                    let mut caps = m.captures();
                    plan.decode(datum, &mut caps).is_err()
                }
            },
        };
        assert!(refused, "accepted: {why}");
    }
}

#[test]
fn a_path_the_writer_schema_lacks_is_reported_with_its_config_path() {
    let (v, m, _) = confluent();
    let v1 = v["schemas"][0]["schema"].as_str().unwrap();
    let plan = Plan::compile(AvroSchema::parse(v1).unwrap(), m.trie(), m.slots());
    let missing = m.missing(&plan.found, "v1");
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0].0, "inputs[0].mapping.attributes.region");
    assert!(!missing[0].2, "an attribute is optional");
    let broken = CHECKOUT_AVRO.replace("timestamp = \"occurred_at\"", "timestamp = \"occured_at\"");
    let m = mapping(&broken);
    let err = crate::engine::resolve(&m, 7, v1).map(|_| ()).unwrap_err();
    assert!(
        err.contains("inputs[0].mapping.timestamp: occured_at is not in schema com.acme.events.CheckoutEvent (id 7)"),
        "{err}"
    );
}

#[test]
fn mapping_errors_carry_their_paths() {
    let text = r#"
[[inputs]]
topic = "t"
format = "json"
record = "product"
  [inputs.mapping]
  unit = "a..b"
  outcome = { path = "e", map = { x = "DONE" } }
  service = "s"
  [[inputs.mapping.flags]]
  path = "f"
  key = "k"
[[inputs]]
topic = "u"
format = "avro-confluent"
record = "errors"
registry = { url = "registry:8081", timeout = "soon" }
[[inputs]]
topic = "t"
format = "parquet"
"#;
    let errs = input::compile(&Config::parse(text).unwrap()).unwrap_err();
    let mut paths: Vec<String> = errs.iter().map(|e| e.path.clone()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "inputs[0].mapping.flags[0]",
            "inputs[0].mapping.journey",
            "inputs[0].mapping.outcome.map.x",
            "inputs[0].mapping.service",
            "inputs[0].mapping.timestamp",
            "inputs[0].mapping.unit",
            "inputs[1].mapping",
            "inputs[1].registry.timeout",
            "inputs[1].registry.url",
            "inputs[2].format",
            "inputs[2].topic",
        ],
        "{errs:#?}"
    );
}

#[test]
fn one_flag_per_field() {
    let m = mapping(&SEGMENT.replace(
        "path = \"properties\"\n  prefix = \"exp_\"",
        "fields = { checkout_v2 = \"properties.exp_checkout_v2\", beta = \"properties.exp_beta\" }",
    ));
    let text = r#"{"messageId":"m","type":"track","event":"Order Completed","timestamp":"2026-12-02T10:00:00Z",
                   "properties":{"exp_checkout_v2":"treatment","exp_beta":2,"exp_other":"x"}}"#;
    let mut buf = String::new();
    let mut caps = m.captures();
    json::project(text.as_bytes(), m.trie(), &mut caps, &mut buf).unwrap();
    let ev = m.apply(&caps, &[], &mut buf, (0, 0)).unwrap().unwrap();
    let flags: Vec<(&str, &str)> = ev.flags.iter().map(|f| (f.key, f.variant)).collect();
    assert_eq!(flags, [("beta", "2"), ("checkout_v2", "treatment")]);
    // `when` filters: a page call is not an event of interest.
    let page = text.replace("\"track\"", "\"page\"");
    let mut buf = String::new();
    let mut caps = m.captures();
    json::project(page.as_bytes(), m.trie(), &mut caps, &mut buf).unwrap();
    assert_eq!(m.apply(&caps, &[], &mut buf, (0, 0)).unwrap(), None);
}

#[test]
fn rfc3339_times() {
    for (text, ms) in [
        ("1970-01-01T00:00:00Z", 0),
        ("2026-12-02T10:00:00.123456789Z", 1_796_205_600_123),
        ("2026-12-02T12:00:00+02:00", 1_796_205_600_000),
        ("2026-12-02t04:30:00.5-05:30", 1_796_205_600_500),
        ("1969-12-31T23:59:59.999Z", -1),
        ("2024-02-29 00:00:00Z", 1_709_164_800_000),
    ] {
        assert_eq!(rfc3339_ms(text), Some(ms), "{text}");
    }
    for bad in [
        "2026-13-01T00:00:00Z",
        "2025-02-29T00:00:00Z",
        "2026-12-02T10:00:00",
        "2026-12-02T10:00:00.Z",
        "2026-12-02T10:00Z",
        "2026-12-02T10:00:00+0200",
    ] {
        assert_eq!(rfc3339_ms(bad), None, "{bad}");
    }
}

/// Flag lists are read element by element (list captures) unless another path overlaps
/// them; both ways give the same flags and the same errors.
#[test]
fn list_captures_agree_with_whole_captures() {
    let listed = mapping(SEGMENT);
    // An attribute below `context.flags` makes it an ordinary (whole) capture.
    let whole = mapping(&SEGMENT.replace(
        "anonymous_id = \"anonymousId\" }",
        "anonymous_id = \"anonymousId\", first = \"context.flags[0].key\" }",
    ));
    assert_eq!(listed.as_list.iter().filter(|l| **l).count(), 1);
    assert!(whole.as_list.iter().all(|l| !l));
    let flags = |m: &Mapping, text: &str| -> Result<Vec<(String, String)>, String> {
        let mut buf = String::new();
        let mut caps = m.captures();
        json::project(text.as_bytes(), m.trie(), &mut caps, &mut buf).unwrap();
        let ev = m.apply(&caps, &[], &mut buf, (0, 0))?.unwrap();
        Ok(ev
            .flags
            .iter()
            .map(|f| (f.key.to_string(), f.variant.to_string()))
            .collect())
    };
    let vectors: Json = serde_json::from_str(JSON_VECTORS).unwrap();
    let mut seen = 0;
    for r in vectors["records"].as_array().unwrap() {
        let text = r["text"].as_str().unwrap();
        let a = flags(&listed, text).unwrap();
        assert_eq!(a, flags(&whole, text).unwrap(), "{text}");
        seen += a.len();
    }
    assert!(seen > 50, "the vectors carry flags: {seen}");
    let base = r#"{"type":"track","messageId":"m","timestamp":"2026-12-02T10:00:00Z","event":"Checkout Started","context":{"flags":FLAGS}}"#;
    for (case, want) in [
        (
            r#"[{"key":"a","variant":"on"},"x",{"key":"b"},{"variant":"v"},{"key":"c","variant":2}]"#,
            Ok(vec![("a", "on"), ("c", "2")]),
        ),
        ("null", Ok(vec![])),
        ("[]", Ok(vec![])),
        (
            r#""oops""#,
            Err("flags: expected a list of objects at context.flags, found string"),
        ),
        (
            r#"{"a":"b"}"#,
            Err("flags: expected a list of objects at context.flags, found object"),
        ),
    ] {
        let text = base.replace("FLAGS", case);
        let want = want
            .map(|v| {
                v.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .map_err(str::to_string);
        assert_eq!(flags(&listed, &text), want, "{case}");
        assert_eq!(flags(&whole, &text), want, "{case}");
    }
}

/// The same for Avro: the Confluent vectors' flag lists, read as list captures and whole.
#[test]
fn avro_list_captures_agree_with_whole_captures() {
    let listed = mapping(CHECKOUT_AVRO);
    let whole = mapping(&CHECKOUT_AVRO.replace(
        "internal = \"internal\" }",
        "internal = \"internal\", first = \"experiments[0].flag\" }",
    ));
    assert_eq!(listed.as_list.iter().filter(|l| **l).count(), 1);
    assert!(whole.as_list.iter().all(|l| !l));
    let v: Json = serde_json::from_str(CONFLUENT_VECTORS).unwrap();
    let schemas: Vec<(u32, &str)> = v["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_u64().unwrap() as u32,
                s["schema"].as_str().unwrap(),
            )
        })
        .collect();
    let mut seen = 0;
    for r in v["records"].as_array().unwrap() {
        let bytes = unhex(r["hex"].as_str().unwrap());
        let (id, datum) = crate::ingest::confluent::split_frame(&bytes).unwrap();
        let schema = schemas.iter().find(|(i, _)| *i == id).unwrap().1;
        let mut got = Vec::new();
        for m in [&listed, &whole] {
            let plan = Plan::compile(AvroSchema::parse(schema).unwrap(), m.trie(), m.slots());
            let mut buf = String::new();
            let mut caps = m.captures();
            plan.decode(datum, &mut caps).unwrap();
            let flags: Option<Vec<(String, String)>> = m
                .apply(&caps, &plan.units, &mut buf, (0, 0))
                .unwrap()
                .map(|ev| {
                    ev.flags
                        .iter()
                        .map(|f| (f.key.to_string(), f.variant.to_string()))
                        .collect()
                });
            got.push(flags);
        }
        seen += got[0].as_ref().map_or(0, Vec::len);
        assert_eq!(got[0], got[1]);
    }
    assert!(seen > 20, "the vectors carry flags: {seen}");
}
