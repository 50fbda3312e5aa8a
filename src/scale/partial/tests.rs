//! Partials round-trip, merge like their originals, read back with apache-avro, and
//! refuse every malformed input without panicking.

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use proptest::prelude::*;

use super::*;
use crate::window::aggregate::{Contribution, quantile, sample_key, unit_hash};

/// One rate, one mean and one quantile metric, empty.
fn template() -> Vec<Agg> {
    vec![
        Agg::Rate {
            num: 0,
            den: 0,
            units: None,
        },
        Agg::Mean {
            n: 0,
            sum: 0.0,
            sumsq: 0.0,
            units: None,
        },
        Agg::Quantile {
            hist: None,
            units: None,
        },
    ]
}

/// One event of a test arm: unit id, value, rate contribution bits, exposure.
type Ev = (u32, f64, u8, bool);

/// An arm of `template` that saw `events` and `extra` more exposed units (so that
/// full samples occur without thousands of events), the way `Windows::record` fills one.
fn arm(template: &[Agg], events: &[Ev], extra: u32) -> Arm {
    let mut a = Arm::new(template);
    for &(unit, v, bits, exposure) in events {
        let unit = unit_hash(&unit.to_le_bytes());
        a.events += 1;
        if exposure {
            a.exposures += 1;
            a.units.insert(sample_key(unit));
        }
        for agg in &mut a.aggs {
            let c = match agg {
                Agg::Rate { .. } if bits & 3 == 0 => continue,
                Agg::Rate { .. } => Contribution::Rate {
                    num: bits & 1,
                    den: (bits >> 1) & 1,
                },
                _ => Contribution::Value(v),
            };
            agg.apply(c, unit);
        }
    }
    for i in 0..extra {
        a.units
            .insert(sample_key(unit_hash(&(1_000_000 + i).to_le_bytes())));
    }
    a
}

fn partial(cohorts: Vec<(String, Cell)>) -> Partial {
    Partial {
        flag_key: "checkout-redesign".into(),
        policy_version: "0123456789ab".into(),
        window_start: 1_700_000_100_000,
        window_end: 1_700_001_000_000,
        topic: "product-events".into(),
        partition: 7,
        first_offset: 12_345,
        read_until: 67_890,
        late_events: 3,
        produced_at: 1_700_001_030_000,
        instance: "guardrail-ingest-0".into(),
        cohorts,
    }
}

/// Everything a cell holds, the sample by its parts.
fn assert_cells_eq(a: &Cell, b: &Cell) {
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.exposures, y.exposures);
        assert_eq!(x.events, y.events);
        assert_eq!(x.aggs, y.aggs);
        assert_eq!(x.units.parts(), y.units.parts());
    }
}

fn assert_partials_eq(a: &Partial, b: &Partial) {
    assert_eq!(a.flag_key, b.flag_key);
    assert_eq!(a.policy_version, b.policy_version);
    assert_eq!(
        (a.window_start, a.window_end),
        (b.window_start, b.window_end)
    );
    assert_eq!((&a.topic, a.partition), (&b.topic, b.partition));
    assert_eq!(
        (a.first_offset, a.read_until),
        (b.first_offset, b.read_until)
    );
    assert_eq!(a.late_events, b.late_events);
    assert_eq!(a.produced_at, b.produced_at);
    assert_eq!(a.instance, b.instance);
    assert_eq!(a.cohorts.len(), b.cohorts.len());
    for ((na, ca), (nb, cb)) in a.cohorts.iter().zip(&b.cohorts) {
        assert_eq!(na, nb);
        assert_cells_eq(ca, cb);
    }
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        (0u32..500, -10.0f64..5000.0, any::<u8>(), any::<bool>()),
        0..120,
    )
}

fn cell() -> impl Strategy<Value = Cell> {
    (events(), events(), 0u32..3000, 0u32..3000)
        .prop_map(|(t, c, xt, xc)| [arm(&template(), &t, xt), arm(&template(), &c, xc)])
}

fn partial_strategy() -> impl Strategy<Value = Partial> {
    (
        prop::collection::vec(("\\PC{0,12}", cell()), 0..4),
        "\\PC{0,20}",
        any::<(i64, i64, i32, i64, i64, u64, i64)>(),
    )
        .prop_map(
            |(cohorts, flag, (ws, we, part, first, until, late, at))| Partial {
                flag_key: flag,
                window_start: ws,
                window_end: we,
                partition: part,
                first_offset: first,
                read_until: until,
                late_events: late >> 1,
                produced_at: at,
                ..partial(cohorts)
            },
        )
}

/// A valid encoding with quantiles, rates, means and a full sample.
fn sample_encoding() -> Vec<u8> {
    let evs: Vec<Ev> = (0..300)
        .map(|i| (i % 97, f64::from(i) * 1.5, (i % 4) as u8, i % 3 == 0))
        .collect();
    let cell = [
        arm(&template(), &evs, 2100),
        arm(&template(), &evs[..50], 0),
    ];
    encode(&partial(vec![("*".into(), cell)]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn partials_round_trip_and_merge_like_the_originals(a in partial_strategy(), b in cell()) {
        let decoded = decode(&encode(&a)).expect("decodes");
        assert_partials_eq(&a, &decoded);
        // Stage 2 merges decoded partials: the same cells as merging the originals.
        let other = partial(vec![("*".into(), b)]);
        let other_decoded = decode(&encode(&other)).expect("decodes");
        for ((_, orig), (_, dec)) in a.cohorts.iter().zip(&decoded.cohorts) {
            let (mut m1, mut m2) = (other.cohorts[0].1.clone(), other_decoded.cohorts[0].1.clone());
            for i in 0..2 {
                m1[i].merge(&orig[i]);
                m2[i].merge(&dec[i]);
            }
            assert_cells_eq(&m1, &m2);
            for (x, y) in m1.iter().zip(&m2) {
                if let (Agg::Quantile { hist: Some(hx), .. }, Agg::Quantile { hist: Some(hy), .. }) = (&x.aggs[2], &y.aggs[2]) {
                    prop_assert_eq!(hx.len(), hy.len());
                    for q in [0.5, 0.95, 0.99] {
                        prop_assert_eq!(quantile(hx, q), quantile(hy, q));
                    }
                }
                prop_assert_eq!(x.aggs[0].ratio(), y.aggs[0].ratio());
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode(&bytes);
        // Past the header too.
        let mut framed = MAGIC.to_vec();
        framed.extend_from_slice(&fingerprint().to_le_bytes());
        framed.extend_from_slice(&bytes);
        let _ = decode(&framed);
    }

    #[test]
    fn corrupted_encodings_never_panic(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = sample_encoding();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = decode(&bytes);
    }

    #[test]
    fn histogram_payloads_with_garbage_counts_never_panic(payload in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut v2 = Vec::new();
        for x in [V2_COOKIE, payload.len() as u32, 0, u32::from(HIST_SIGFIG)] {
            v2.extend_from_slice(&x.to_be_bytes());
        }
        v2.extend_from_slice(&HIST_LOW.to_be_bytes());
        v2.extend_from_slice(&HIST_HIGH.to_be_bytes());
        v2.extend_from_slice(&1.0f64.to_be_bytes());
        v2.extend_from_slice(&payload);
        let z = miniz_oxide::deflate::compress_to_vec_zlib(&v2, 6);
        let mut raw = V2_DEFLATE_COOKIE.to_be_bytes().to_vec();
        raw.extend_from_slice(&(z.len() as u32).to_be_bytes());
        raw.extend_from_slice(&z);
        let _ = histogram(&raw);
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample_encoding();
    assert!(decode(&bytes).is_ok());
    for n in 0..bytes.len() {
        let e = decode(&bytes[..n]).expect_err("a truncation");
        assert!(
            matches!(
                e,
                PartialError::Truncated { .. } | PartialError::Histogram(_)
            ),
            "{n}: {e}"
        );
    }
}

#[test]
fn errors_say_what_is_wrong() {
    let good = sample_encoding();
    let mut bad = good.clone();
    bad[0] = b'{';
    assert_eq!(decode(&bad).unwrap_err(), PartialError::Magic([b'{', 0x01]));

    let mut bad = good.clone();
    bad[2..10].copy_from_slice(&0x0123_4567_89ab_cdef_u64.to_le_bytes());
    let e = decode(&bad).unwrap_err();
    assert!(e.to_string().contains("0x0123456789abcdef"), "{e}");

    let mut bad = good.clone();
    bad.push(0);
    assert_eq!(decode(&bad).unwrap_err(), PartialError::Trailing(1));

    // A record up to the first arm's aggs, then `aggs` written by `f`.
    let with_aggs = |f: &dyn Fn(&mut AvroWriter)| {
        let mut w = AvroWriter::default();
        w.0.extend_from_slice(&encode(&partial(vec![]))[..]);
        w.0.pop(); // the empty cohorts array
        w.long(1);
        w.string("*");
        w.long(0); // exposures
        w.long(0); // events
        f(&mut w);
        w.0
    };
    let bytes = with_aggs(&|w| {
        w.long(1);
        w.long(5); // union branch 5 of three
    });
    assert!(matches!(
        decode(&bytes).unwrap_err(),
        PartialError::Branch {
            branch: 5,
            branches: 3,
            ..
        }
    ));
    let bytes = with_aggs(&|w| {
        w.long(1);
        w.long(0); // RateAgg
        w.long(1);
        w.long(1);
        w.long(1); // UnitBuckets
        w.block(&[0.0; BUCKETS - 1], |w, v| w.double(*v));
    });
    assert_eq!(
        decode(&bytes).unwrap_err(),
        PartialError::BucketLength {
            what: "unit buckets x",
            len: BUCKETS - 1,
            expected: BUCKETS
        }
    );
    let bytes = with_aggs(&|w| {
        w.long(1 << 40); // a count far beyond the bytes left
    });
    assert!(matches!(
        decode(&bytes).unwrap_err(),
        PartialError::Truncated { what: "aggs", .. }
    ));
}

#[test]
fn histograms_of_other_bounds_are_refused() {
    let mut h = Histogram::<u32>::new_with_bounds(1, 60_000, 3).unwrap();
    h.record(42).unwrap();
    let mut cell = [Arm::new(&template()), Arm::new(&template())];
    cell[0].aggs[2] = Agg::Quantile {
        hist: Some(Box::new(h)),
        units: None,
    };
    let e = decode(&encode(&partial(vec![("*".into(), cell)]))).unwrap_err();
    assert!(
        matches!(&e, PartialError::Histogram(m) if m.contains("expected")),
        "{e}"
    );
}

#[test]
fn schema_is_valid_avro_and_the_fingerprint_is_the_specifications() {
    let schema = Schema::parse_str(SCHEMA).unwrap();
    assert_eq!(
        fingerprint(),
        crate::ingest::decode::fingerprint(&schema).unwrap()
    );
}

fn field<'v>(value: &'v Value, name: &str) -> &'v Value {
    let Value::Record(fields) = value else {
        panic!("not a record: {value:?}")
    };
    &fields.iter().find(|(n, _)| n == name).unwrap().1
}

/// The first item of an array value.
fn first(value: &Value) -> &Value {
    let Value::Array(items) = value else {
        panic!("not an array: {value:?}")
    };
    &items[0]
}

/// The value inside a union.
fn inner(value: &Value) -> &Value {
    let Value::Union(_, v) = value else {
        panic!("not a union: {value:?}")
    };
    v
}

#[test]
fn apache_avro_reads_the_encoding_with_the_schema() {
    let bytes = sample_encoding();
    let p = decode(&bytes).unwrap();
    let schema = Schema::parse_str(SCHEMA).unwrap();
    let mut datum = &bytes[10..];
    let v = GenericDatumReader::builder(&schema)
        .build()
        .unwrap()
        .read_value(&mut datum)
        .unwrap();
    assert!(datum.is_empty(), "{} bytes left over", datum.len());

    assert_eq!(field(&v, "flag_key"), &Value::String(p.flag_key.clone()));
    assert_eq!(field(&v, "partition"), &Value::Int(7));
    assert_eq!(
        field(&v, "window_end"),
        &Value::TimestampMillis(p.window_end)
    );
    let arm = field(first(field(&v, "cohorts")), "treatment");
    let t = &p.cohorts[0].1[TREATMENT];
    assert_eq!(field(arm, "exposures"), &Value::Long(t.exposures as i64));
    let Value::Array(aggs) = field(arm, "aggs") else {
        panic!()
    };
    let (Agg::Rate { num, den, .. }, Agg::Mean { sum, .. }, Agg::Quantile { hist, .. }) =
        (&t.aggs[0], &t.aggs[1], &t.aggs[2])
    else {
        panic!()
    };
    let rate = inner(&aggs[0]);
    assert_eq!(field(rate, "num"), &Value::Long(*num as i64));
    assert_eq!(field(rate, "den"), &Value::Long(*den as i64));
    assert_eq!(field(inner(&aggs[1]), "sum"), &Value::Double(*sum));
    let Value::Bytes(raw) = inner(field(inner(&aggs[2]), "hist")) else {
        panic!()
    };
    assert_eq!(raw, &histogram_bytes(hist.as_ref().unwrap()));
    let sample = field(arm, "sample");
    let (keys, tau, full) = t.units.parts();
    assert!(full, "the sample test wants a full sample");
    assert_eq!(field(sample, "tau"), &Value::Long(i64::from(tau)));
    assert_eq!(field(sample, "full"), &Value::Boolean(true));
    let Value::Array(k) = field(sample, "keys") else {
        panic!()
    };
    assert_eq!(k.len(), keys.len());
}

/// Encoded sizes of typical partials (printed, not asserted).
#[test]
fn encoded_sizes() {
    let empty = partial(vec![(
        "*".into(),
        [Arm::new(&template()), Arm::new(&template())],
    )]);
    let evs: Vec<Ev> = (0..1000u32)
        .map(|i| {
            let v = 80.0 + f64::from(i % 37) * 9.5;
            (i % 400, v, (i % 4) as u8, i % 5 == 0)
        })
        .collect();
    let rate_only = vec![template()[0].clone()];
    let rate = partial(vec![(
        "*".into(),
        [arm(&rate_only, &evs, 0), arm(&rate_only, &evs[..500], 0)],
    )]);
    let quantile_only = vec![template()[2].clone()];
    let quantile = partial(vec![(
        "*".into(),
        [
            arm(&quantile_only, &evs, 0),
            arm(&quantile_only, &evs[..500], 0),
        ],
    )]);
    let typical = partial(
        ["*", "platform=ios"]
            .iter()
            .map(|c| {
                let cell = [arm(&template(), &evs, 0), arm(&template(), &evs[..500], 0)];
                (c.to_string(), cell)
            })
            .collect(),
    );
    for (name, p) in [
        ("empty flag, cohort * only", &empty),
        ("one cohort, one rate, 1000 + 500 events", &rate),
        ("one cohort, one quantile, 1000 + 500 events", &quantile),
        (
            "2 cohorts, rate + mean + quantile, 1000 + 500 events",
            &typical,
        ),
    ] {
        let bytes = encode(p);
        assert_partials_eq(p, &decode(&bytes).unwrap());
        eprintln!("{name}: {} bytes", bytes.len());
    }
}

#[test]
fn histograms_are_hdrhistograms_v2_deflate_in_stored_blocks() {
    // HdrHistogram's own deserializer (flate2's inflater) reads what we write.
    let mut h = new_histogram();
    for v in [1u64, 7, 250_000, 250_001, 3_000_000, HIST_HIGH] {
        h.record_n(v, (v % 5 + 1) as u32).unwrap();
    }
    let raw = histogram_bytes(&h);
    let theirs: Histogram<u32> = Deserializer::new().deserialize(&mut &raw[..]).unwrap();
    assert_eq!(theirs, *h);
    assert_eq!(*histogram(&raw).unwrap(), *h);
    // An empty histogram too.
    let empty = new_histogram();
    let theirs: Histogram<u32> = Deserializer::new()
        .deserialize(&mut &histogram_bytes(&empty)[..])
        .unwrap();
    assert_eq!(theirs.len(), 0);
}

#[test]
fn stored_zlib_streams_inflate_at_every_block_boundary() {
    for n in [0usize, 1, 65_534, 65_535, 65_536, 2 * 65_535 + 3] {
        let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        let z = zlib_stored(&data);
        let back = miniz_oxide::inflate::decompress_to_vec_zlib(&z).unwrap();
        assert_eq!(back, data, "{n} bytes");
    }
}
