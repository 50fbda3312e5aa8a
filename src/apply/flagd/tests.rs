//! The targeting rule and the file's text. Whether flagd evaluates the rule as meant is
//! checked by flagd's own evaluator in `tests/apply_flagd.rs`.

use super::*;

fn arms() -> Arms {
    Arms {
        treatment: "on".into(),
        control: "off".into(),
        cohort_by: vec!["platform".into(), "region".into()],
        bucket_by: "targetingKey".into(),
        start_percent: 20.0,
    }
}

fn cohort(percent: f64, action: &str) -> AppliedCohort {
    AppliedCohort {
        percent,
        action: action.into(),
        command_id: format!("id-{action}-{percent}"),
        set_at_window: 1,
        seen_window: 1,
        applied_at: 0,
        approved_by: None,
        recent: vec![],
    }
}

/// (treatment weight, control weight) of a `fractional` split, checking its shape.
fn split_weights(v: &Value, a: &Arms) -> (u64, u64) {
    let f = v["fractional"].as_array().expect("a fractional");
    assert_eq!(f.len(), 3);
    assert_eq!(
        f[0],
        json!({"cat": [{"var": "$flagd.flagKey"}, {"var": a.bucket_by}]})
    );
    assert_eq!(f[1][0], json!(a.treatment), "treatment listed first");
    assert_eq!(f[2][0], json!(a.control));
    (f[1][1].as_u64().unwrap(), f[2][1].as_u64().unwrap())
}

#[test]
fn cohort_conditions_match_each_attribute_of_the_name() {
    let by = arms().cohort_by;
    assert_eq!(
        cohort_condition("platform=mobile-web", &by),
        Some(json!({"==": [{"var": "platform"}, "mobile-web"]}))
    );
    assert_eq!(
        cohort_condition("platform=ios,region=eu", &by),
        Some(json!({"and": [
            {"==": [{"var": "platform"}, "ios"]},
            {"==": [{"var": "region"}, "eu"]},
        ]}))
    );
    // The engine names a missing attribute `unknown`.
    assert_eq!(
        cohort_condition("platform=unknown", &by),
        Some(json!({"or": [
            {"!": [{"var": "platform"}]},
            {"==": [{"var": "platform"}, "unknown"]},
        ]}))
    );
    for none in ["*", "other", "", "country=fr", "platform"] {
        assert_eq!(cohort_condition(none, &by), None, "{none}");
    }
}

#[test]
fn weights_sum_to_100_for_whole_percents_and_10000_otherwise() {
    for p in 0..=100 {
        let (t, c) = weights(f64::from(p));
        assert_eq!((t, t + c), (p as u64, 100));
    }
    assert_eq!(weights(2.5), (250, 9_750));
    assert_eq!(weights(0.01), (1, 9_999));
    assert_eq!(weights(-3.0), (0, 100));
    assert_eq!(weights(150.0), (100, 0));
}

#[test]
fn targeting_is_one_branch_per_cohort_with_its_own_percent_then_all_traffic() {
    let a = arms();
    // Nothing applied yet: the start percent for everyone.
    let t = targeting(&FlagState::default(), &a);
    assert_eq!(split_weights(&t, &a), (20, 80));

    let mut state = FlagState::default();
    state.cohorts.insert("*".into(), cohort(50.0, "ADVANCE"));
    state
        .cohorts
        .insert("platform=mobile-web".into(), cohort(20.0, "PAUSE"));
    state
        .cohorts
        .insert("platform=ios,region=eu".into(), cohort(0.0, "ROLLBACK"));
    state.cohorts.insert("other".into(), cohort(5.0, "HOLD"));
    let t = targeting(&state, &a);
    let chain = t["if"].as_array().expect("an if chain");
    // Two mappable cohorts (sorted by name), then the fall-through; `other` has none.
    assert_eq!(chain.len(), 5);
    assert_eq!(
        chain[0],
        cohort_condition("platform=ios,region=eu", &a.cohort_by).unwrap()
    );
    assert_eq!(split_weights(&chain[1], &a), (0, 100));
    assert_eq!(chain[2], json!({"==": [{"var": "platform"}, "mobile-web"]}));
    assert_eq!(split_weights(&chain[3], &a), (20, 80));
    assert_eq!(split_weights(&chain[4], &a), (50, 50));
    for (i, s) in chain.iter().enumerate().skip(1).step_by(2) {
        let (t, c) = split_weights(s, &a);
        assert_eq!(t + c, 100, "branch {i}");
    }

    // All traffic rolled back: control for every cohort, whatever their own percent.
    state.cohorts.insert("*".into(), cohort(0.0, "ROLLBACK"));
    assert_eq!(split_weights(&targeting(&state, &a), &a), (0, 100));
    assert_eq!(state.percent_of("platform=mobile-web", 20.0), 0.0);
}

#[test]
fn a_unit_attribute_is_the_bucketing_key() {
    let a = Arms {
        bucket_by: "tenant".into(),
        ..arms()
    };
    let t = targeting(&FlagState::default(), &a);
    assert_eq!(
        t["fractional"][0],
        json!({"cat": [{"var": "$flagd.flagKey"}, {"var": "tenant"}]})
    );
}

#[test]
fn new_flags_are_enabled_with_the_configs_variants() {
    let f = new_flag(&arms());
    assert_eq!(
        Value::Object(f),
        json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"})
    );
    let f = new_flag(&Arms {
        treatment: "v2".into(),
        control: "v1".into(),
        ..arms()
    });
    assert_eq!(f["variants"], json!({"v2": "v2", "v1": "v1"}));
    assert_eq!(f["defaultVariant"], json!("v1"));
}

const FILE: &str = r#"{
  "$schema": "https://flagd.dev/schema/v0/flags.json",
  "metadata": {"flagSetId": "shop", "version": "7"},
  "flags": {
    "zeta-unmanaged": { "variants" : {"b":"B",  "a":"A"}, "state":"ENABLED",
        "defaultVariant":"b", "targeting": {"$ref": "beta"}, "x-owner": "web" },
    "checkout-redesign": {"state": "ENABLED", "variants": {"on": true, "off": false, "dark": true},
      "defaultVariant": "off", "metadata": {"team": "payments"}, "x-note": "kept"},
    "alpha-unmanaged": {"state":"DISABLED","variants":{"on":1,"off":0},"defaultVariant":"on"}
  },
  "$evaluators": { "beta": {"in": ["@beta.example", {"var": "email"}]} }
}"#;

#[test]
fn flags_guardrail_does_not_manage_are_kept_byte_for_byte() {
    let mut file = FlagdFile::parse(FILE).unwrap();
    // An untouched file renders members as they were (its own layout aside).
    let untouched = file.render();
    for kept in [
        r#"{ "variants" : {"b":"B",  "a":"A"}, "state":"ENABLED",
        "defaultVariant":"b", "targeting": {"$ref": "beta"}, "x-owner": "web" }"#,
        r#"{"state":"DISABLED","variants":{"on":1,"off":0},"defaultVariant":"on"}"#,
        r#"{ "beta": {"in": ["@beta.example", {"var": "email"}]} }"#,
        r#"{"flagSetId": "shop", "version": "7"}"#,
    ] {
        assert!(untouched.contains(kept), "{kept} in {untouched}");
    }

    // Edit the managed flag: the others keep their bytes and their place.
    let flag = file.edit("checkout-redesign").unwrap().unwrap();
    let mut state = FlagState::default();
    state
        .cohorts
        .insert("platform=mobile-web".into(), cohort(20.0, "PAUSE"));
    state.write(flag);
    flag.insert("targeting".into(), targeting(&state, &arms()));
    let text = file.render();
    let zeta = text.find("\"zeta-unmanaged\": { \"variants\" : {\"b\":\"B\",  \"a\":\"A\"}");
    let managed = text.find("\"checkout-redesign\"");
    let alpha = text.find("\"alpha-unmanaged\": {\"state\":\"DISABLED\"");
    assert!(
        zeta < managed && managed < alpha && zeta.is_some(),
        "{text}"
    );
    assert!(
        text.contains(r#""$evaluators": { "beta": {"in": ["@beta.example", {"var": "email"}]} }"#)
    );

    // The managed flag keeps its unknown fields, variants and metadata.
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    let m = &v["flags"]["checkout-redesign"];
    assert_eq!(m["x-note"], json!("kept"));
    assert_eq!(m["variants"]["dark"], json!(true));
    assert_eq!(m["metadata"]["team"], json!("payments"));
    let read = FlagState::read(m.as_object().unwrap()).unwrap();
    assert_eq!(read, state);
    assert_eq!(v["flags"].as_object().unwrap().len(), 3);

    // Rendering what was rendered changes nothing.
    assert_eq!(FlagdFile::parse(&text).unwrap().render(), text);
}

#[test]
fn an_empty_file_becomes_a_flag_file_and_bad_ones_are_refused() {
    let mut file = FlagdFile::parse("  \n").unwrap();
    file.insert("f", new_flag(&arms()));
    let v: Value = serde_json::from_str(&file.render()).unwrap();
    assert_eq!(v["$schema"], json!(SCHEMA_URL));
    assert_eq!(v["flags"]["f"]["state"], json!("ENABLED"));
    assert!(FlagdFile::parse("[1]").is_err());
    assert!(FlagdFile::parse(r#"{"flags": [{"key": "f"}]}"#).is_err());
    let v: Value =
        serde_json::from_str(&FlagdFile::parse(r#"{"metadata": {}}"#).unwrap().render()).unwrap();
    assert_eq!(v, json!({"metadata": {}, "flags": {}}));
}

#[test]
fn existing_flags_must_have_both_variants() {
    let f = json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"});
    let err = check_variants("f", f.as_object().unwrap(), &arms()).unwrap_err();
    assert!(err.to_string().contains("no variant \"off\""), "{err}");
}
