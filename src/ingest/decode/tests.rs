//! The hand-written decoder against apache-avro: random records of every source are
//! written by apache-avro and read by [`SchemaRegistry`]; the simulator's encoder is read
//! back by apache-avro; old schema versions resolve; bad input is an error, never a panic.

use std::collections::HashMap;

use apache_avro::GenericSingleObjectWriter;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use proptest::prelude::*;

use super::*;
use crate::sim::{SimBody, SimEvent};

/// Every schema file, by path under `schemas/`.
const FILES: [(&str, &str); 6] = [
    (
        "product_event.avsc",
        include_str!("../../../schemas/product_event.avsc"),
    ),
    (
        "error_event.avsc",
        include_str!("../../../schemas/error_event.avsc"),
    ),
    (
        "support_signal.avsc",
        include_str!("../../../schemas/support_signal.avsc"),
    ),
    (
        "flag_command.avsc",
        include_str!("../../../schemas/flag_command.avsc"),
    ),
    (
        "window_evaluation.avsc",
        include_str!("../../../schemas/window_evaluation.avsc"),
    ),
    (
        "history/product_event.v1.avsc",
        include_str!("../../../schemas/history/product_event.v1.avsc"),
    ),
];

fn schema(name: &str) -> Schema {
    let text = FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .unwrap();
    Schema::parse_str(text).unwrap()
}

fn current_schema(source: Source) -> Schema {
    schema(match source {
        Source::Product => "product_event.avsc",
        Source::Errors => "error_event.avsc",
        Source::Support => "support_signal.avsc",
    })
}

fn header(fp: u64) -> Vec<u8> {
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(&fp.to_le_bytes());
    out
}

fn string(s: &str) -> Value {
    Value::String(s.to_string())
}

fn opt(v: Option<Value>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

/// The envelope fields, in schema order.
fn envelope(e: &SimEvent) -> Vec<(String, Value)> {
    let flags = e
        .flags
        .iter()
        .map(|(k, v)| {
            Value::Record(vec![
                ("key".to_string(), string(k)),
                ("variant".to_string(), string(v)),
            ])
        })
        .collect();
    let attributes: HashMap<String, Value> = e
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), string(v)))
        .collect();
    vec![
        ("event_id".into(), string(&e.event_id)),
        ("timestamp".into(), Value::TimestampMillis(e.timestamp)),
        ("flags".into(), Value::Array(flags)),
        ("attributes".into(), Value::Map(attributes)),
        ("user_id".into(), opt(e.user_id.as_deref().map(string))),
    ]
}

/// The apache-avro value of an event in the current schema of its source.
fn to_value(e: &SimEvent) -> Value {
    let mut fields = envelope(e);
    let f = |name: &str, v: Value| (name.to_string(), v);
    match &e.body {
        SimBody::Product {
            journey,
            step,
            outcome,
            latency_ms,
            value,
        } => fields.extend([
            f("journey", string(journey)),
            f("step", opt(step.as_deref().map(string))),
            f(
                "outcome",
                Value::Enum(*outcome as u32, outcome.as_str().into()),
            ),
            f("latency_ms", opt(latency_ms.map(Value::Double))),
            f("value", opt(value.map(Value::Double))),
        ]),
        SimBody::Error {
            service,
            error_class,
            status_code,
            fatal,
            latency_ms,
        } => fields.extend([
            f("service", string(service)),
            f("error_class", string(error_class)),
            f("status_code", opt(status_code.map(Value::Int))),
            f("fatal", Value::Boolean(*fatal)),
            f("latency_ms", opt(latency_ms.map(Value::Double))),
        ]),
        SimBody::Support {
            channel,
            csat,
            sentiment,
            tags,
        } => fields.extend([
            f(
                "channel",
                Value::Enum(*channel as u32, channel.as_str().into()),
            ),
            f("csat", opt(csat.map(Value::Double))),
            f("sentiment", opt(sentiment.map(Value::Double))),
            f(
                "tags",
                Value::Array(tags.iter().map(|t| string(t)).collect()),
            ),
        ]),
    }
    Value::Record(fields)
}

/// The value of a product event in `history/product_event.v1.avsc` (no `value`, `step`
/// before `journey`).
fn to_value_v1(e: &SimEvent) -> Value {
    let SimBody::Product {
        journey,
        step,
        outcome,
        latency_ms,
        ..
    } = &e.body
    else {
        unreachable!("v1 is a product event")
    };
    let mut fields = envelope(e);
    fields.extend([
        ("step".to_string(), opt(step.as_deref().map(string))),
        ("journey".to_string(), string(journey)),
        (
            "outcome".to_string(),
            Value::Enum(*outcome as u32, outcome.as_str().into()),
        ),
        ("latency_ms".to_string(), opt(latency_ms.map(Value::Double))),
    ]);
    Value::Record(fields)
}

/// The decoded view in owned form, attributes sorted (a map has no order).
fn owned(ev: &EventRef<'_>) -> SimEvent {
    let mut e = SimEvent::from_ref(ev);
    e.attributes.sort();
    e
}

// ---- strategies --------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9=,-]{1,12}", "\\PC{0,8}"]
}

fn double() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("NaN never equals itself", |v| !v.is_nan()),
        Just(0.0),
        Just(-0.0),
        Just(f64::INFINITY),
        Just(f64::MIN_POSITIVE),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    (0usize..5).prop_map(|i| Outcome::from_index(i).unwrap())
}

fn body(source: Source) -> BoxedStrategy<SimBody> {
    match source {
        Source::Product => (
            text(),
            proptest::option::of(text()),
            outcome(),
            proptest::option::of(double()),
            proptest::option::of(double()),
        )
            .prop_map(
                |(journey, step, outcome, latency_ms, value)| SimBody::Product {
                    journey,
                    step,
                    outcome,
                    latency_ms,
                    value,
                },
            )
            .boxed(),
        Source::Errors => (
            text(),
            text(),
            proptest::option::of(any::<i32>()),
            any::<bool>(),
            proptest::option::of(double()),
        )
            .prop_map(
                |(service, error_class, status_code, fatal, latency_ms)| SimBody::Error {
                    service,
                    error_class,
                    status_code,
                    fatal,
                    latency_ms,
                },
            )
            .boxed(),
        Source::Support => (
            0usize..5,
            proptest::option::of(double()),
            proptest::option::of(double()),
            prop::collection::vec(text(), 0..7),
        )
            .prop_map(|(c, csat, sentiment, tags)| SimBody::Support {
                channel: Channel::from_index(c).unwrap(),
                csat,
                sentiment,
                tags,
            })
            .boxed(),
    }
}

/// A random event of `source`: 0–6 flags (beyond the 4 inline), 0–10 attributes (beyond
/// the 8 inline), nulls and non-nulls, any timestamp.
fn event(source: Source) -> impl Strategy<Value = SimEvent> {
    (
        text(),
        prop_oneof![any::<i64>(), -10_000_000_000_000i64..10_000_000_000_000],
        prop::collection::vec((text(), text()), 0..7),
        prop::collection::btree_map("[a-z.]{0,10}", text(), 0..11),
        proptest::option::of(text()),
        body(source),
    )
        .prop_map(
            move |(event_id, timestamp, flags, attrs, user_id, body)| SimEvent {
                source,
                event_id,
                timestamp,
                flags,
                attributes: attrs.into_iter().collect::<Vec<_>>(),
                user_id,
                body,
            },
        )
}

fn any_event() -> impl Strategy<Value = SimEvent> {
    prop_oneof![
        event(Source::Product),
        event(Source::Errors),
        event(Source::Support)
    ]
}

fn product_event() -> impl Strategy<Value = SimEvent> {
    event(Source::Product)
}

fn registry() -> SchemaRegistry {
    SchemaRegistry::shipped().unwrap()
}

// ---- schemas -----------------------------------------------------------------------

#[test]
fn every_schema_file_parses_and_fingerprints_are_distinct() {
    let mut fps = std::collections::HashSet::new();
    for (name, text) in FILES {
        let s = Schema::parse_str(text).unwrap_or_else(|e| panic!("schemas/{name}: {e}"));
        let Schema::Record(r) = &s else {
            panic!("schemas/{name} is not a record")
        };
        assert_eq!(r.name.namespace(), Some("guardrail.v1"), "schemas/{name}");
        assert!(
            fps.insert(fingerprint(&s).unwrap()),
            "schemas/{name}: duplicate fingerprint"
        );
    }
    assert_eq!(fps.len(), 6);
}

#[test]
fn registry_knows_the_shipped_fingerprints() {
    let reg = registry();
    for source in Source::ALL {
        assert_eq!(
            reg.current_fingerprint(source),
            fingerprint(&current_schema(source)).unwrap()
        );
        assert_eq!(
            fingerprint(reg.current_schema(source)).unwrap(),
            reg.current_fingerprint(source)
        );
    }
    assert_eq!(
        fingerprint(&Schema::parse_str(FLAG_COMMAND_SCHEMA).unwrap()).unwrap(),
        fingerprint(&schema("flag_command.avsc")).unwrap()
    );
    assert_eq!(
        fingerprint(&Schema::parse_str(WINDOW_EVALUATION_SCHEMA).unwrap()).unwrap(),
        fingerprint(&schema("window_evaluation.avsc")).unwrap()
    );
}

/// apache-avro's own single-object writer frames records with the legacy (pre-0.2)
/// fingerprint: those are still decoded, and counted.
#[test]
fn records_from_apache_avro_single_object_writer_are_accepted_as_legacy() {
    let reg = registry();
    let mut legacy_sources = 0;
    for source in Source::ALL {
        let s = current_schema(source);
        let mut w = GenericSingleObjectWriter::new_with_capacity(&s, 1024).unwrap();
        let e = sample(source);
        let mut theirs = Vec::new();
        w.write_value_ref(&to_value(&e), &mut theirs).unwrap();
        assert_eq!(
            &theirs[..10],
            &header(legacy_fingerprint(&s))[..],
            "{source:?}"
        );
        let mut scratch = Vec::new();
        let ev = reg.decode(source, &theirs, &mut scratch).unwrap();
        assert_eq!(owned(&ev), sorted(e));
        if legacy_fingerprint(&s) != fingerprint(&s).unwrap() {
            legacy_sources += 1;
            assert_eq!(
                reg.legacy_records()[source.index()],
                1,
                "{source:?} counted"
            );
        }
    }
    assert_eq!(legacy_sources, 3, "every input schema has a logical type");
}

fn sorted(mut e: SimEvent) -> SimEvent {
    e.attributes.sort();
    e
}

/// A fixed event of a source, every optional field set.
fn sample(source: Source) -> SimEvent {
    let body = match source {
        Source::Product => SimBody::Product {
            journey: "checkout".into(),
            step: Some("pay".into()),
            outcome: Outcome::Failed,
            latency_ms: Some(12.5),
            value: Some(99.9),
        },
        Source::Errors => SimBody::Error {
            service: "checkout".into(),
            error_class: "Timeout".into(),
            status_code: Some(504),
            fatal: true,
            latency_ms: Some(3000.0),
        },
        Source::Support => SimBody::Support {
            channel: Channel::Review,
            csat: Some(2.0),
            sentiment: Some(-0.5),
            tags: vec!["a".into(), "b".into()],
        },
    };
    SimEvent {
        source,
        event_id: "e1".into(),
        timestamp: 1_700_000_000_123,
        flags: vec![("checkout-redesign".into(), "on".into())],
        attributes: vec![
            ("platform".into(), "ios".into()),
            ("region".into(), "eu".into()),
        ],
        user_id: Some("u1".into()),
        body,
    }
}

fn apache_encode(schema: &Schema, value: Value) -> Vec<u8> {
    GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap()
}

fn apache_decode(schema: &Schema, mut datum: &[u8]) -> Value {
    let v = GenericDatumReader::builder(schema)
        .build()
        .unwrap()
        .read_value(&mut datum)
        .unwrap();
    assert!(datum.is_empty(), "apache-avro left {} bytes", datum.len());
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// apache-avro writes, the registry reads: every field equal.
    #[test]
    fn registry_decodes_what_apache_avro_writes(e in any_event()) {
        let s = current_schema(e.source);
        let mut bytes = header(fingerprint(&s).unwrap());
        bytes.extend(apache_encode(&s, to_value(&e)));
        let reg = registry();
        let mut scratch = Vec::new();
        let ev = reg.decode(e.source, &bytes, &mut scratch).unwrap();
        prop_assert_eq!(ev.source(), e.source);
        prop_assert_eq!(owned(&ev), sorted(e.clone()));
        // Attribute lookup sees the map's values.
        for (k, v) in &e.attributes {
            prop_assert_eq!(ev.attribute(k), Some(v.as_str()));
        }
    }

    /// The simulator's encoder writes what apache-avro reads, value for value.
    #[test]
    fn apache_avro_reads_what_the_simulator_writes(e in any_event()) {
        let s = current_schema(e.source);
        let datum = e.datum();
        prop_assert_eq!(apache_decode(&s, &datum), to_value(&e));
        // And the registry reads the simulator's single-object encoding too.
        let bytes = e.single_object(fingerprint(&s).unwrap());
        let mut scratch = Vec::new();
        let reg = registry();
        let ev = reg.decode(e.source, &bytes, &mut scratch).unwrap();
        prop_assert_eq!(owned(&ev), sorted(e));
    }

    /// Schema evolution: a v1 product event resolves to the current schema, value = None.
    #[test]
    fn v1_product_events_resolve_to_the_current_schema(mut e in product_event()) {
        let v1 = schema("history/product_event.v1.avsc");
        let mut bytes = header(fingerprint(&v1).unwrap());
        bytes.extend(apache_encode(&v1, to_value_v1(&e)));
        let reg = registry();
        let mut scratch = Vec::new();
        let ev = reg.decode(Source::Product, &bytes, &mut scratch).unwrap();
        let Body::Product { value, .. } = ev.body else { unreachable!() };
        prop_assert_eq!(value, None);
        if let SimBody::Product { value, .. } = &mut e.body {
            *value = None;
        }
        prop_assert_eq!(owned(&ev), sorted(e));
    }

    /// Random bytes after a valid header of any known schema: an error or an event, never a panic.
    #[test]
    fn random_datums_never_panic(source_i in 0usize..3, which in 0usize..4,
                                 tail in prop::collection::vec(any::<u8>(), 0..96)) {
        let reg = registry();
        let fps = [
            reg.current_fingerprint(Source::Product),
            reg.current_fingerprint(Source::Errors),
            reg.current_fingerprint(Source::Support),
            fingerprint(&schema("history/product_event.v1.avsc")).unwrap(),
        ];
        let mut bytes = header(fps[which]);
        bytes.extend(&tail);
        let mut scratch = Vec::new();
        let source = Source::ALL[source_i];
        match reg.decode(source, &bytes, &mut scratch) {
            Ok(ev) => prop_assert_eq!(ev.source(), source),
            Err(e) => prop_assert!(["decode", "schema"].contains(&e.reason()), "{e}"),
        }
        // Without a header at all.
        let _ = reg.decode(source, &tail, &mut scratch);
    }
}

// ---- errors ------------------------------------------------------------------------

fn valid(source: Source) -> Vec<u8> {
    sample(source).single_object(registry().current_fingerprint(source))
}

#[test]
fn empty_and_short_input_is_truncated() {
    let reg = registry();
    let mut scratch = Vec::new();
    for bytes in [
        &[][..],
        &[0xC3],
        &[0xC3, 0x01],
        &valid(Source::Product)[..9],
    ] {
        let err = reg
            .decode(Source::Product, bytes, &mut scratch)
            .unwrap_err();
        assert_eq!(err, DecodeError::Truncated, "{bytes:?}");
        assert_eq!(err.reason(), "decode");
    }
}

#[test]
fn bad_magic() {
    let reg = registry();
    let mut scratch = Vec::new();
    let mut bytes = valid(Source::Product);
    bytes[1] = 0x02;
    assert_eq!(
        reg.decode(Source::Product, &bytes, &mut scratch),
        Err(DecodeError::BadMagic)
    );
    // Confluent framing (00 + schema id) is not single-object encoding.
    let confluent = [0u8, 0, 0, 0, 1, 2, b'e', b'1', 0, 0, 0, 0];
    let err = reg
        .decode(Source::Product, &confluent, &mut scratch)
        .unwrap_err();
    assert_eq!(err, DecodeError::BadMagic);
    assert_eq!(err.reason(), "decode");
    // Short input with the wrong magic is bad magic, not truncated.
    assert_eq!(
        reg.decode(Source::Product, &[0, 1, 2], &mut scratch),
        Err(DecodeError::BadMagic)
    );
}

#[test]
fn truncated_datum_is_malformed() {
    let reg = registry();
    let mut scratch = Vec::new();
    for source in Source::ALL {
        let bytes = valid(source);
        for cut in 10..bytes.len() {
            let err = reg.decode(source, &bytes[..cut], &mut scratch).unwrap_err();
            assert!(matches!(err, DecodeError::Malformed(_)), "{cut}: {err:?}");
            assert_eq!(err.reason(), "decode");
        }
    }
}

#[test]
fn unknown_fingerprint_is_a_schema_error() {
    let reg = registry();
    let mut scratch = Vec::new();
    let mut bytes = header(0x0123_4567_89ab_cdef);
    bytes.extend(sample(Source::Product).datum());
    let err = reg
        .decode(Source::Product, &bytes, &mut scratch)
        .unwrap_err();
    assert_eq!(err, DecodeError::UnknownSchema(0x0123_4567_89ab_cdef));
    assert_eq!(err.reason(), "schema");
    // An output record's schema is not an input schema.
    let fc = fingerprint(&schema("flag_command.avsc")).unwrap();
    let mut bytes = header(fc);
    bytes.extend(sample(Source::Product).datum());
    let err = reg
        .decode(Source::Product, &bytes, &mut scratch)
        .unwrap_err();
    assert_eq!(err, DecodeError::UnknownSchema(fc));
}

#[test]
fn another_sources_schema_is_the_wrong_record() {
    let reg = registry();
    let mut scratch = Vec::new();
    let errors_fp = reg.current_fingerprint(Source::Errors);
    let err = reg
        .decode(Source::Product, &valid(Source::Errors), &mut scratch)
        .unwrap_err();
    assert_eq!(
        err,
        DecodeError::WrongRecord {
            fingerprint: errors_fp,
            found: "errors",
            expected: "product",
        }
    );
    assert_eq!(err.reason(), "schema");
    // A historical product schema on the support topic.
    let v1 = schema("history/product_event.v1.avsc");
    let mut bytes = header(fingerprint(&v1).unwrap());
    bytes.extend(apache_encode(&v1, to_value_v1(&sample(Source::Product))));
    let err = reg
        .decode(Source::Support, &bytes, &mut scratch)
        .unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::WrongRecord {
                found: "product",
                expected: "support",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn garbage_after_header_is_a_decode_error() {
    let reg = registry();
    let mut scratch = Vec::new();
    for source in Source::ALL {
        let mut bytes = header(reg.current_fingerprint(source));
        bytes.extend([0xFF; 12]);
        let err = reg.decode(source, &bytes, &mut scratch).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");
        assert_eq!(err.reason(), "decode");
    }
    // Invalid UTF-8 in a string, an enum index out of range, a bad boolean.
    let mut bytes = header(reg.current_fingerprint(Source::Product));
    bytes.extend([2, 0xFF]);
    assert_eq!(
        reg.decode(Source::Product, &bytes, &mut scratch),
        Err(DecodeError::Malformed("string is not UTF-8"))
    );
    let mut e = sample(Source::Product);
    e.body = SimBody::Product {
        journey: "j".into(),
        step: None,
        outcome: Outcome::Exposure,
        latency_ms: None,
        value: None,
    };
    let mut bytes = e.single_object(reg.current_fingerprint(Source::Product));
    // The datum ends: outcome (0), latency null (0), value null (0). Outcome index 5.
    let n = bytes.len();
    bytes[n - 3] = 10;
    assert_eq!(
        reg.decode(Source::Product, &bytes, &mut scratch),
        Err(DecodeError::Malformed("outcome symbol out of range"))
    );
    let mut e = sample(Source::Errors);
    e.body = SimBody::Error {
        service: "s".into(),
        error_class: "c".into(),
        status_code: None,
        fatal: false,
        latency_ms: None,
    };
    let mut bytes = e.single_object(reg.current_fingerprint(Source::Errors));
    let n = bytes.len();
    bytes[n - 2] = 7; // fatal
    assert_eq!(
        reg.decode(Source::Errors, &bytes, &mut scratch),
        Err(DecodeError::Malformed("boolean byte is not 0 or 1"))
    );
}

#[test]
fn trailing_bytes_are_refused() {
    let reg = registry();
    let mut scratch = Vec::new();
    for source in Source::ALL {
        let mut bytes = valid(source);
        bytes.push(0);
        assert_eq!(
            reg.decode(source, &bytes, &mut scratch),
            Err(DecodeError::Malformed("trailing bytes after the record"))
        );
    }
    // Also on the schema-resolution path.
    let v1 = schema("history/product_event.v1.avsc");
    let mut bytes = header(fingerprint(&v1).unwrap());
    bytes.extend(apache_encode(&v1, to_value_v1(&sample(Source::Product))));
    bytes.push(0);
    let err = reg
        .decode(Source::Product, &bytes, &mut scratch)
        .unwrap_err();
    assert_eq!(
        err,
        DecodeError::Malformed("trailing bytes after the record")
    );
}

/// Container-file blocks hold datums back to back: `decode_next` walks them.
#[test]
fn decode_next_walks_concatenated_datums() {
    let reg = registry();
    let fp = reg.current_fingerprint(Source::Support);
    let a = sample(Source::Support);
    let mut b = sample(Source::Support);
    b.event_id = "e2".into();
    b.user_id = None;
    let mut block = a.datum();
    block.extend(b.datum());
    let mut input = &block[..];
    let mut scratch = Vec::new();
    let first = owned(
        &reg.decode_next(Source::Support, fp, &mut input, &mut scratch)
            .unwrap(),
    );
    let second = owned(
        &reg.decode_next(Source::Support, fp, &mut input, &mut scratch)
            .unwrap(),
    );
    assert!(input.is_empty());
    assert_eq!(first, sorted(a));
    assert_eq!(second, sorted(b));
}

/// Map and array blocks with a negative count (followed by a byte size) are accepted,
/// and so is a sequence of several blocks.
#[test]
fn negative_and_multiple_block_counts_are_read() {
    let mut w = crate::avro::AvroWriter::default();
    w.string("e9");
    w.long(-42);
    // flags: one block of -1 item (byte size 4), then one block of 1, then end.
    w.long(-1);
    w.long(4);
    w.string("f");
    w.string("a");
    w.long(1);
    w.string("g");
    w.string("b");
    w.long(0);
    // attributes: a block of -2 items.
    w.long(-2);
    w.long(12);
    w.string("k1");
    w.string("v1");
    w.string("k2");
    w.string("v2");
    w.long(0);
    w.long(0); // user_id null
    w.string("svc");
    w.string("cls");
    w.long(1);
    w.long(-3); // status_code
    w.boolean(true); // fatal
    w.long(0); // latency null
    let d = w.0;
    let s = current_schema(Source::Errors);
    let theirs = apache_decode(&s, &d);
    let reg = registry();
    let mut scratch = Vec::new();
    let ev = reg
        .decode_datum(
            Source::Errors,
            reg.current_fingerprint(Source::Errors),
            &d,
            &mut scratch,
        )
        .unwrap();
    let ours = owned(&ev);
    assert_eq!(to_value(&ours), theirs);
    assert_eq!(ours.flags.len(), 2);
    assert_eq!(ours.attributes.len(), 2);
    assert_eq!(ev.timestamp, -42);
}

/// The figures of the report that found the fingerprint defect: ProductEvent's header
/// bytes as Java/fastavro write them, and as guardrail < 0.2 wrote them.
#[test]
fn product_event_fingerprints_are_the_ones_java_and_fastavro_write() {
    let reg = registry();
    let product = reg.current_fingerprint(Source::Product);
    assert!(describe_fingerprint(product).contains("header bytes 5047d6731266ad9e"));
    let old = legacy_fingerprint(&current_schema(Source::Product));
    assert!(describe_fingerprint(old).contains("header bytes 6151267810c42757"));
    let known = reg.known_fingerprints(Source::Product);
    for fp in [
        product,
        old,
        fingerprint(&schema("history/product_event.v1.avsc")).unwrap(),
    ] {
        assert!(known.contains(&format!("0x{fp:016x}")), "{known}");
    }
    assert!(!known.contains(&format!("{:016x}", reg.current_fingerprint(Source::Errors))));
}

/// An engine sees a record from a writer it does not know: DLQ detail with the arrived
/// and the known fingerprints, counted; a legacy-framed record is accepted and counted.
#[test]
fn engine_reports_unknown_and_counts_legacy_fingerprints() {
    use crate::engine::{Engine, Ingested, Reason};
    use crate::window::watermark::PartitionKey;
    let config = crate::config::Config::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/guardrail.toml"
    )))
    .unwrap();
    let policy = std::sync::Arc::new(crate::policy::Policy::compile(&config).unwrap());
    let mut engine = Engine::new(policy, false).unwrap();
    let p = PartitionKey {
        input: 0,
        partition: 0,
    };
    let mut e = sample(Source::Product);
    let now = e.timestamp;
    let unknown = 0x0123_4567_89ab_cdef;
    for offset in 0..2 {
        e.event_id = format!("u{offset}");
        match engine.ingest(p, offset, &e.single_object(unknown), now, false) {
            Ingested::Rejected { reason, detail } => {
                assert_eq!(reason, Reason::Schema);
                assert!(detail.contains("0x0123456789abcdef"), "{detail}");
                assert!(detail.contains("header bytes efcdab8967452301"), "{detail}");
                assert!(
                    detail.contains("product current 0x9ead661273d64750"),
                    "{detail}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    let old = legacy_fingerprint(&current_schema(Source::Product));
    let accepted = engine.ingest(p, 2, &e.single_object(old), now, false);
    assert!(
        matches!(accepted, Ingested::Accepted | Ingested::Unmatched),
        "{accepted:?}"
    );
    engine.tick(now);
    let c = engine.counters();
    assert_eq!(c.unknown_fingerprint, [2, 0, 0]);
    assert_eq!(c.legacy_fingerprint, [1, 0, 0]);
    assert_eq!(c.dlq[Reason::Schema as usize], 2);
}
