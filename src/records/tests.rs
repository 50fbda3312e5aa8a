//! The hand-written Avro encoders of the output records, read back by apache-avro with
//! `schemas/flag_command.avsc` and `schemas/window_evaluation.avsc`; and the JSON form.

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use proptest::prelude::*;

use super::*;
use crate::ingest::decode::{FLAG_COMMAND_SCHEMA, WINDOW_EVALUATION_SCHEMA, fingerprint};

const FLAG_COMMAND_FILE: &str = include_str!("../../schemas/flag_command.avsc");
const WINDOW_EVALUATION_FILE: &str = include_str!("../../schemas/window_evaluation.avsc");

fn evidence(i: usize, full: bool) -> MetricEvidence {
    MetricEvidence {
        metric: format!("metric_{i}"),
        role: [Role::Guardrail, Role::Success, Role::Srm][i % 3],
        treatment_value: 0.0123 * i as f64,
        control_value: full.then_some(0.011),
        threshold: full.then_some(-0.5),
        relative_change: full.then_some(0.118),
        p_value: full.then_some(3.2e-7),
        treatment_samples: 1_234 + i as i64,
        control_samples: 98_765_432_100,
        method: "two-proportion z-test, one-sided, margin +0.1, alpha 0.01".into(),
        breached: full,
        consecutive_windows: i as i32,
        status: if full { "breached" } else { "" }.into(),
        ci_lower: full.then_some(-0.031),
        ci_upper: full.then_some(0.25),
        band_treatment_value: full.then_some(0.0125),
        band_control_value: full.then_some(0.0111),
        band_treatment_samples: full.then_some(40_000),
        band_control_samples: full.then_some(-1),
        treatment_units: full.then_some(12_345),
        control_units: full.then_some(i64::MAX),
        alpha: full.then_some(1.25e-3),
        family_size: full.then_some(i32::MIN),
    }
}

fn command(action: Action, evidence: Vec<MetricEvidence>) -> FlagCommand {
    FlagCommand {
        command_id: "0af1c2d3-0000-4000-8000-123456789abc".into(),
        flag_key: "checkout-redesign".into(),
        cohort: "platform=mobile-web".into(),
        action,
        severity: Severity::Critical,
        from_percent: 20.0,
        to_percent: 0.0,
        requires_approval: true,
        reason: "checkout_error_rate is 3.1% in treatment — ünïcödé".into(),
        owner: "payments-squad".into(),
        window_start: 1_700_000_100_000,
        window_end: 1_700_001_000_000,
        issued_at: -1,
        policy_version: "abcdef012345".into(),
        evidence,
        watermark_lag_ms: Some(125_000),
    }
}

fn evaluation(full: bool, evidence: Vec<MetricEvidence>) -> WindowEvaluation {
    WindowEvaluation {
        flag_key: "search-ranking-v2".into(),
        cohort: "*".into(),
        window_start: 0,
        window_end: 900_000,
        decision: full.then_some(Action::Advance),
        evidence,
        late_events: 17,
        evaluated_at: i64::MAX,
        rollout_percent: full.then_some(25.0),
        state: full.then(|| "ramping".to_string()),
        healthy_windows: 3,
        policy_version: full.then(|| "0123456789ab".to_string()),
        command_id: full.then(|| "id".to_string()),
        watermark_lag_ms: full.then_some(-3),
        band: if full {
            vec![
                crate::records::BandState {
                    metric: "err".into(),
                    treatment: vec![12.0, 3000.0],
                    control: vec![30.0, 9000.0],
                    detector: vec![0.0, 3.0, -1.5, 0.25, 4.0, -7.5],
                },
                crate::records::BandState {
                    metric: "csat".into(),
                    treatment: vec![40.0, 160.5, 700.25],
                    control: vec![],
                    detector: vec![],
                },
            ]
        } else {
            Vec::new()
        },
        input_positions: if full {
            vec![
                crate::records::InputPosition {
                    topic: "product-events".into(),
                    partition: 31,
                    read_until: 1 << 40,
                },
                crate::records::InputPosition {
                    topic: "error-events".into(),
                    partition: 0,
                    read_until: 0,
                },
            ]
        } else {
            Vec::new()
        },
    }
}

/// Checks the header and returns the datum read by apache-avro with the schema file.
fn read_back(bytes: &[u8], schema_text: &str) -> Value {
    let schema = Schema::parse_str(schema_text).unwrap();
    let fp = fingerprint(&schema).unwrap();
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    assert_eq!(&bytes[2..10], &fp.to_le_bytes());
    let mut datum = &bytes[10..];
    let value = GenericDatumReader::builder(&schema)
        .build()
        .unwrap()
        .read_value(&mut datum)
        .unwrap();
    assert!(datum.is_empty(), "{} bytes left over", datum.len());
    value
}

fn field<'v>(value: &'v Value, name: &str) -> &'v Value {
    let Value::Record(fields) = value else {
        panic!("not a record: {value:?}")
    };
    &fields.iter().find(|(n, _)| n == name).unwrap().1
}

fn command_fp() -> u64 {
    fingerprint(&Schema::parse_str(FLAG_COMMAND_SCHEMA).unwrap()).unwrap()
}

fn evaluation_fp() -> u64 {
    fingerprint(&Schema::parse_str(WINDOW_EVALUATION_SCHEMA).unwrap()).unwrap()
}

#[test]
fn shipped_schema_constants_are_the_files() {
    assert_eq!(FLAG_COMMAND_SCHEMA, FLAG_COMMAND_FILE);
    assert_eq!(WINDOW_EVALUATION_SCHEMA, WINDOW_EVALUATION_FILE);
}

#[test]
fn flag_command_round_trips_through_apache_avro() {
    for action in Action::ALL {
        for ev in [
            vec![],
            vec![evidence(0, true)],
            vec![evidence(1, false), evidence(2, true), evidence(3, false)],
        ] {
            let cmd = command(action, ev);
            let value = read_back(&cmd.to_avro(command_fp()), FLAG_COMMAND_FILE);
            assert_eq!(
                field(&value, "action"),
                &Value::Enum(action as u32, action.as_str().into())
            );
            assert_eq!(
                field(&value, "window_start"),
                &Value::TimestampMillis(cmd.window_start)
            );
            let back: FlagCommand = apache_avro::from_value(&value).unwrap();
            assert_eq!(back, cmd);
        }
    }
}

#[test]
fn window_evaluation_round_trips_through_apache_avro() {
    for full in [false, true] {
        for ev in [vec![], vec![evidence(4, full), evidence(5, !full)]] {
            let eval = evaluation(full, ev);
            let value = read_back(&eval.to_avro(evaluation_fp()), WINDOW_EVALUATION_FILE);
            let expect_decision = match eval.decision {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(a) => Value::Union(1, Box::new(Value::Enum(a as u32, a.as_str().into()))),
            };
            assert_eq!(field(&value, "decision"), &expect_decision);
            let back: WindowEvaluation = apache_avro::from_value(&value).unwrap();
            assert_eq!(back, eval);
        }
    }
}

#[test]
fn severities_and_roles_use_the_schema_symbols() {
    for (i, sev) in [Severity::Info, Severity::Warning, Severity::Critical]
        .into_iter()
        .enumerate()
    {
        let mut cmd = command(Action::Hold, vec![evidence(i, true)]);
        cmd.severity = sev;
        let value = read_back(&cmd.to_avro(command_fp()), FLAG_COMMAND_FILE);
        assert_eq!(
            field(&value, "severity"),
            &Value::Enum(i as u32, Severity::SYMBOLS[i].into())
        );
        let Value::Array(items) = field(&value, "evidence") else {
            panic!()
        };
        assert_eq!(
            field(&items[0], "role"),
            &Value::Enum(i as u32, Role::SYMBOLS[i].into())
        );
    }
}

fn opt_f64() -> impl Strategy<Value = Option<f64>> {
    proptest::option::of(any::<f64>().prop_filter("NaN != NaN", |v| !v.is_nan()))
}

fn any_evidence() -> impl Strategy<Value = MetricEvidence> {
    (
        (
            "\\PC{0,12}",
            0usize..3,
            any::<f64>().prop_filter("NaN", |v| !v.is_nan()),
        ),
        (opt_f64(), opt_f64(), opt_f64(), opt_f64()),
        (
            any::<i64>(),
            any::<i64>(),
            "\\PC{0,20}",
            any::<bool>(),
            any::<i32>(),
        ),
        "[a-z_]{0,15}",
        (opt_f64(), opt_f64(), opt_f64(), opt_f64()),
        (
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i64>()),
            opt_f64(),
            proptest::option::of(any::<i32>()),
        ),
    )
        .prop_map(
            |(
                (metric, role, tv),
                (cv, th, rc, p),
                (tn, cn, method, breached, streak),
                status,
                (ci_lower, ci_upper, band_t, band_c),
                (band_tn, band_cn, tu, cu, alpha, family),
            )| {
                MetricEvidence {
                    metric,
                    role: [Role::Guardrail, Role::Success, Role::Srm][role],
                    treatment_value: tv,
                    control_value: cv,
                    threshold: th,
                    relative_change: rc,
                    p_value: p,
                    treatment_samples: tn,
                    control_samples: cn,
                    method,
                    breached,
                    consecutive_windows: streak,
                    status,
                    ci_lower,
                    ci_upper,
                    band_treatment_value: band_t,
                    band_control_value: band_c,
                    band_treatment_samples: band_tn,
                    band_control_samples: band_cn,
                    treatment_units: tu,
                    control_units: cu,
                    alpha,
                    family_size: family,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_commands_round_trip(ev in prop::collection::vec(any_evidence(), 0..5),
                                  action in 0usize..4, ts in any::<i64>(), pct in any::<f64>()
                                      .prop_filter("NaN", |v| !v.is_nan())) {
        let mut cmd = command(Action::ALL[action], ev);
        cmd.window_start = ts;
        cmd.to_percent = pct;
        let value = read_back(&cmd.to_avro(command_fp()), FLAG_COMMAND_FILE);
        let back: FlagCommand = apache_avro::from_value(&value).unwrap();
        prop_assert_eq!(back, cmd);
    }

    #[test]
    fn random_evaluations_round_trip(ev in prop::collection::vec(any_evidence(), 0..5),
                                     decision in proptest::option::of(0usize..4),
                                     pct in opt_f64(), state in proptest::option::of("[a-z_]{0,12}"),
                                     late in any::<i64>(), healthy in any::<i32>()) {
        let mut eval = evaluation(true, ev);
        eval.decision = decision.map(|d| Action::ALL[d]);
        eval.rollout_percent = pct;
        eval.state = state;
        eval.late_events = late;
        eval.healthy_windows = healthy;
        let value = read_back(&eval.to_avro(evaluation_fp()), WINDOW_EVALUATION_FILE);
        let back: WindowEvaluation = apache_avro::from_value(&value).unwrap();
        prop_assert_eq!(back, eval);
    }
}

#[test]
fn command_json_uses_avro_names_enum_strings_and_epoch_millis() {
    let cmd = command(Action::Pause, vec![evidence(0, true), evidence(1, false)]);
    let json: serde_json::Value = serde_json::to_value(&cmd).unwrap();
    let obj = json.as_object().unwrap();
    let schema: serde_json::Value = serde_json::from_str(FLAG_COMMAND_FILE).unwrap();
    let names: Vec<&str> = schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut expect = names.clone();
    keys.sort_unstable();
    expect.sort_unstable();
    assert_eq!(keys, expect);
    assert_eq!(json["action"], "PAUSE");
    assert_eq!(json["severity"], "CRITICAL");
    assert_eq!(json["window_start"], 1_700_000_100_000i64);
    assert!(json["window_start"].is_i64());
    assert_eq!(json["issued_at"], -1);
    assert_eq!(json["from_percent"], 20.0);
    assert_eq!(json["requires_approval"], true);
    assert_eq!(json["evidence"][0]["role"], "GUARDRAIL");
    assert_eq!(json["evidence"][1]["role"], "SUCCESS");
    assert_eq!(json["evidence"][0]["p_value"], 3.2e-7);
    assert!(json["evidence"][1]["p_value"].is_null());
    let ev_fields: Vec<&str> = schema["fields"][14]["type"]["items"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    let mut ev_keys: Vec<&str> = json["evidence"][0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut ev_expect = ev_fields.clone();
    ev_keys.sort_unstable();
    ev_expect.sort_unstable();
    assert_eq!(ev_keys, ev_expect);
    // And back.
    let back: FlagCommand = serde_json::from_value(json).unwrap();
    assert_eq!(back, cmd);
}

#[test]
fn evaluation_json_matches_the_schema() {
    for full in [false, true] {
        let eval = evaluation(full, vec![evidence(2, true)]);
        let json: serde_json::Value = serde_json::to_value(&eval).unwrap();
        let schema: serde_json::Value = serde_json::from_str(WINDOW_EVALUATION_FILE).unwrap();
        let mut names: Vec<&str> = schema["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        keys.sort_unstable();
        assert_eq!(keys, names);
        if full {
            assert_eq!(json["decision"], "ADVANCE");
        } else {
            assert!(json["decision"].is_null());
        }
        assert_eq!(json["evaluated_at"], i64::MAX);
        let back: WindowEvaluation = serde_json::from_value(json).unwrap();
        assert_eq!(back, eval);
    }
}
