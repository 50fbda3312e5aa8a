//! `guardrail check`: exit 0 on the documented config; exit 2 on broken ones, with the
//! exact path of every error on stderr (SPEC §4, §7).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bad(name: &str) -> PathBuf {
    root()
        .join("tests/data/bad_configs")
        .join(format!("{name}.toml"))
}

fn check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guardrail"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `check` on a broken config: exit 2, and each expected `path: message` on stderr.
fn assert_rejected(name: &str, expected: &[&str]) {
    let out = check(&bad(name));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{name}: {err}");
    for e in expected {
        assert!(err.contains(e), "{name}: expected {e:?} in:\n{err}");
    }
    // One line per error, each starting with the file it is about (log lines aside).
    let prefix = format!("{}: ", bad(name).display());
    let lines = err.lines().filter(|l| l.starts_with(&prefix)).count();
    assert_eq!(lines, expected.len(), "{name}:\n{err}");
    assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
}

#[test]
fn the_documented_config_is_valid() {
    let out = check(&root().join("config/guardrail.toml"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("checkout-redesign"), "{text}");
    assert!(text.contains("search-ranking-v2"), "{text}");
}

#[test]
fn the_rolling_baseline_example_is_valid() {
    let out = check(&root().join("config/rolling-baseline.toml"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("payment-router-v3"), "{text}");
}

#[test]
fn unknown_metric() {
    assert_rejected(
        "unknown_metric",
        &[r#"flags[1].success[0].metric: unknown metric "x""#],
    );
}

#[test]
fn unknown_key() {
    assert_rejected(
        "unknown_key",
        &["flags[0].guardrails[0].severty: unknown field `severty`"],
    );
}

#[test]
fn bad_duration() {
    assert_rejected(
        "bad_duration",
        &[r#"window.size: invalid duration "15 parsecs""#],
    );
}

#[test]
fn ramp_not_ascending() {
    assert_rejected(
        "ramp_not_ascending",
        &["flags[0].ramp[2]: ramp must be strictly ascending"],
    );
}

#[test]
fn start_percent_off_the_ramp() {
    assert_rejected(
        "start_off_ramp",
        &["flags[0].start_percent: 7 is not a step of the ramp"],
    );
}

#[test]
fn match_field_the_source_does_not_have() {
    assert_rejected(
        "match_field_missing",
        &[r#"metrics[0].numerator.match.journey: unknown field "journey" for source "errors""#],
    );
}

#[test]
fn enum_value_not_an_outcome() {
    assert_rejected(
        "enum_value",
        &[
            r#"metrics[0].denominator.match.outcome: "START" is not one of EXPOSURE, STARTED, COMPLETED, ABANDONED, FAILED"#,
        ],
    );
}

#[test]
fn quantile_out_of_range() {
    assert_rejected(
        "quantile_out_of_range",
        &["metrics[1].quantile: 1.5 is not in (0, 1)"],
    );
}

#[test]
fn zero_windows() {
    assert_rejected(
        "zero_windows",
        &["flags[0].guardrails[0].windows: must be at least 1"],
    );
}

#[test]
fn rolling_baselines_are_checked_with_their_paths() {
    assert_rejected(
        "baseline",
        &[
            "flags[0].guardrails[0].max_relative_increase: a relative bound needs the flag's control variant, or a baseline",
            "flags[0].guardrails[1].baseline.windows: 1 is not in [2, 48]",
            "flags[0].guardrails[2].baseline.windows: 24 is not in [2, 12] for a quantile metric",
            "flags[0].guardrails[3].baseline: a baseline is what a relative bound is tested against",
            "flags[1].guardrails[0].baseline: only for a flag without control",
        ],
    );
}

#[test]
fn every_error_of_a_config_is_reported() {
    assert_rejected(
        "several_errors",
        &[
            r#"metrics[0].numerator.match.journey: unknown field "journey" for source "errors""#,
            r#"metrics[0].denominator.match.outcome: "START" is not one of"#,
            "metrics[1].quantile: 1.5 is not in (0, 1)",
            "flags[0].ramp[2]: ramp must be strictly ascending",
            "flags[0].guardrails[0].windows: must be at least 1",
            r#"flags[1].success[0].metric: unknown metric "x""#,
        ],
    );
}

#[test]
fn a_missing_file_is_a_config_error() {
    let out = check(&root().join("tests/data/bad_configs/does-not-exist.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_guardrail"))
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn broken_inputs_are_reported_with_their_paths() {
    assert_rejected(
        "bad_inputs",
        &[
            r#"inputs[0].mapping.outcome.map.Order Completed: "DONE" is not one of EXPOSURE, STARTED, COMPLETED, ABANDONED, FAILED"#,
            r#"inputs[0].mapping.latency_ms: bad path: "properties..latency": empty key"#,
            "inputs[0].mapping.service: not a field of product records",
            "inputs[0].mapping.flags[0]: give both `key` and `variant`",
            "inputs[1].registry.url: \"registry:8081\": expected http(s)://host[:port][,...]",
            "inputs[1].mapping: required for this format",
            "inputs[2].signal: \"metrics\": expected traces or logs",
        ],
    );
}

/// An avro-confluent mapping checked against the subject's latest schema in a registry
/// served here (and, offline, against `schema_file`).
#[test]
fn confluent_mappings_are_checked_against_the_registry_and_the_schema_file() {
    let vectors: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/data/byo/confluent.json")).unwrap(),
    )
    .unwrap();
    let v1 = vectors["schemas"][0]["schema"]
        .as_str()
        .unwrap()
        .to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let registry = rt
        .block_on(guardrail::ingest::confluent::MockRegistry::start(vec![]))
        .unwrap();
    let id = registry.register("checkout-avro-value", &v1);
    let dir = tempfile::tempdir().unwrap();
    let schema_file = dir.path().join("checkout.avsc");
    std::fs::write(&schema_file, &v1).unwrap();
    let config = |timestamp: &str| {
        let text = format!(
            r#"
[[inputs]]
topic = "checkout-avro"
format = "avro-confluent"
record = "product"
registry = {{ url = "{}" }}
schema_file = "{}"
  [inputs.mapping]
  event_id = "id"
  timestamp = "{timestamp}"
  unit = "user.id"
  flags = [{{ path = "experiments", key = "flag", variant = "variant" }}]
  attributes = {{ region = "region" }}
  journey = {{ value = "checkout" }}
  outcome = {{ path = "step", map = {{ DONE = "COMPLETED" }} }}
"#,
            registry.url(),
            schema_file.display()
        );
        let path = dir.path().join(format!("{timestamp}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    // Valid: exit 0; the optional attribute v1 lacks is a warning from both checks.
    let good = config("occurred_at");
    let out = check(&good);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(
        err.matches("warning: inputs[0].mapping.attributes.region: region is not in schema com.acme.events.CheckoutEvent").count(),
        2,
        "{err}"
    );
    // A misspelt required path: both the file and the registry's schema refuse it.
    let bad = config("occured_at");
    let out = check(&bad);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("inputs[0].schema_file: the mapping cannot read writer schema id 0: inputs[0].mapping.timestamp: occured_at is not in schema com.acme.events.CheckoutEvent (id 0)"), "{err}");
    assert!(err.contains(&format!("inputs[0].registry (subject checkout-avro-value): the mapping cannot read writer schema id {id}: inputs[0].mapping.timestamp: occured_at is not in schema com.acme.events.CheckoutEvent (id {id})")), "{err}");
    // Offline: the schema file only, no request to the registry.
    let before = registry.requests();
    let out = Command::new(env!("CARGO_BIN_EXE_guardrail"))
        .args(["check", "--offline", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).matches("is not in schema").count(),
        1,
        "{}",
        stderr(&out)
    );
    assert_eq!(registry.requests(), before, "--offline asks nothing");
    drop(registry);
}

/// `gameday` refuses what it cannot inject before touching Kafka: exit 2 with the flag's
/// real cohort attributes or guardrail metrics in the message.
#[test]
fn gameday_usage_errors_name_what_the_flag_has() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_guardrail"))
            .args(["gameday", "--config"])
            .arg(root().join("config/guardrail.toml"))
            .args(["--flag", "checkout-redesign"])
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), stderr(&out))
    };
    let (code, err) = run(&["--cohort", "region=eu", "--effect", "error_rate=x3"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("forms cohorts by platform"), "{err}");
    let (code, err) = run(&["--cohort", "platform=ios", "--effect", "bogus=x3"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("no guardrail metric") && err.contains("checkout_error_rate"),
        "{err}"
    );
    let (code, err) = run(&[
        "--cohort",
        "platform=ios",
        "--effect",
        "error_rate=x3",
        "--duration",
        "soon",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--duration"), "{err}");
}
