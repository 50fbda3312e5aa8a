//! Operations checks against real tools: the dashboard and alert rules reference only
//! metrics guardrail registers; a real Prometheus scrapes a running `guardrail demo`
//! and its query API returns guardrail's series with the expected labels; headless
//! Chromium renders the operator console (a paused cohort with its percent history,
//! metric plots and commands) and a `replay --report`. With
//! GUARDRAIL_SAVE_SCREENSHOT=1 the console's screenshot is saved as docs/console.png.
//!
//! `prometheus` and `chromium` come from Debian (`.ci/run` installs them). Without them
//! these tests fail, unless GUARDRAIL_SKIP_PROMETHEUS=1 / GUARDRAIL_SKIP_BROWSER=1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guardrail::telemetry::Metrics;

const BIN: &str = env!("CARGO_BIN_EXE_guardrail");

/// A child process killed on drop, so a failing assertion leaves nothing running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(name: &str, skip_env: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os(skip_env).is_some(),
            "`{name}` is not installed (apt-get install {name}); set {skip_env}=1 to skip"
        );
        eprintln!("skipping: {name} not installed and {skip_env} set");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Starts `guardrail demo` serving HTTP until killed; returns it once the demo has
/// printed its summary (every closable window evaluated).
fn start_demo() -> (Proc, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--linger", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting guardrail demo");
    let stdout = child.stdout.take().expect("stdout");
    let proc = Proc(child);
    let mut addr = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("demo output");
        if let Some(rest) = line.strip_prefix("HTTP on http://") {
            addr = rest.split('/').next().and_then(|a| a.parse().ok());
        }
        if line.starts_with("serving HTTP for") {
            break;
        }
    }
    (proc, addr.expect("demo printed its HTTP address"))
}

#[test]
fn dashboard_and_alerts_reference_only_exported_metrics() {
    let registry = prometheus::Registry::new();
    let mut names = Metrics::register(&registry).expect("metrics").names;
    // The two stages' own (SPEC §11).
    names.extend(
        guardrail::scale::metrics::ScaleMetrics::register(&registry, "both")
            .expect("scale metrics")
            .names,
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for file in [
        "deploy/grafana/guardrail.json",
        "deploy/prometheus/guardrail-rules.yml",
        "deploy/prometheus/guardrail-rules.test.yml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        let mut rest = text.as_str();
        while let Some(i) = rest.find("guardrail_") {
            let ident: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            rest = &rest[i + ident.len()..];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| ident.strip_suffix(s))
                .filter(|b| names.iter().any(|n| n == b))
                .unwrap_or(&ident);
            assert!(
                names.iter().any(|n| n == base),
                "{file} references {ident}, which guardrail does not export (exported: {names:?})"
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} metric references found");
}

#[test]
fn prometheus_scrapes_the_demo_and_chromium_shows_a_paused_cohort() {
    let prometheus = tool("prometheus", "GUARDRAIL_SKIP_PROMETHEUS");
    let chromium = tool("chromium", "GUARDRAIL_SKIP_BROWSER");
    if prometheus.is_none() && chromium.is_none() {
        return;
    }
    let (_demo, addr) = start_demo();
    // Windows count as closed when judged; the view shows them once their outputs are
    // acknowledged, a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (status, body) = loop {
        let (status, body) = http_get(addr, "/api/flags/checkout-redesign").expect("API answers");
        if body.contains("\"paused\"") || std::time::Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, 200);
    assert!(
        body.contains("\"platform=mobile-web\"") && body.contains("\"paused\""),
        "{body}"
    );
    // The history: the paused cohort's windows with the PAUSE and its evidence.
    let (status, history) =
        http_get(addr, "/api/flags/checkout-redesign/history").expect("history answers");
    assert_eq!(status, 200, "{history}");
    let history: serde_json::Value = serde_json::from_str(&history).expect("history is JSON");
    assert_eq!(history["flag"], "checkout-redesign");
    // The audit trail: the demo's rule change (alice proposes, bob approves, the
    // engine activates it at a window boundary), the seeding, and the commands.
    let audit = history["audit"].as_array().expect("audit entries");
    let entry = |kind: &str| audit.iter().find(|a| a["kind"] == kind);
    assert_eq!(
        entry("proposed").map(|a| &a["actor"]),
        Some(&"alice".into()),
        "{history}"
    );
    assert_eq!(
        entry("approved").map(|a| &a["actor"]),
        Some(&"bob".into()),
        "{history}"
    );
    let activated = entry("activated").unwrap_or_else(|| panic!("no activation: {history}"));
    assert!(activated["effective_from"].is_i64(), "{activated}");
    assert_eq!(activated["version"], entry("approved").unwrap()["version"]);
    assert!(entry("seeded").is_some(), "{history}");
    assert!(
        audit.iter().any(|a| a["kind"] == "command"
            && a["action"] == "PAUSE"
            && a["cohort"] == "platform=mobile-web"),
        "{history}"
    );
    let windows = history["cohorts"]["platform=mobile-web"]
        .as_array()
        .unwrap_or_else(|| panic!("no windows for the paused cohort: {history}"));
    assert!(
        windows
            .iter()
            .any(|w| w["decision"] == "PAUSE" && w["state"] == "paused"),
        "{history}"
    );
    assert!(
        windows.iter().any(|w| w["evidence"]
            .as_array()
            .is_some_and(|e| e.iter().any(|m| m["breached"] == true))),
        "{history}"
    );
    assert_eq!(
        http_get(addr, "/api/flags/no-such-flag/history").map(|(s, _)| s),
        Some(404)
    );

    if let Some(prometheus) = prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: guardrail\n    static_configs:\n      - targets: ['{addr}']\n"),
        )
        .expect("write config");
        let _prom = Proc(
            Command::new(prometheus)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting prometheus"),
        );
        let api: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let query = |q: &str| {
            http_get(api, &format!("/api/v1/query?query={q}"))
                .map(|(_, b)| b)
                .unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut body = String::new();
        while Instant::now() < deadline {
            body = query("guardrail_cohort_state%7Bstate%3D%22paused%22%7D%3D%3D1");
            if body.contains("\"result\":[{") {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(
            body.contains(r#""job":"guardrail""#)
                && body.contains(r#""flag":"checkout-redesign""#)
                && body.contains(r#""cohort":"platform=mobile-web""#),
            "paused cohort through Prometheus: {body}"
        );
        let events =
            query("guardrail_events_total%7Bsource%3D%22product%22%2Cstatus%3D%22accepted%22%7D");
        assert!(
            events.contains(r#""status":"accepted""#) && events.contains(r#""source":"product""#),
            "{events}"
        );
        let up = query("up%7Bjob%3D%22guardrail%22%7D");
        assert!(
            up.contains(r#""value":["#) && up.contains(r#","1"]"#),
            "target up: {up}"
        );
        for series in [
            "guardrail_windows_closed_total",
            "guardrail_rollout_percent",
            "guardrail_decision_latency_seconds_bucket",
            "guardrail_metric_value",
            "guardrail_dlq_total",
        ] {
            let r = query(series);
            assert!(
                r.contains(&format!(r#""__name__":"{series}""#)),
                "{series}: {r}"
            );
        }
    }

    if let Some(chromium) = chromium {
        let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
        let dom = headless(&chromium, &format!("http://{addr}/"), &shot, CONSOLE_WINDOW);
        assert!(
            dom.contains("platform=mobile-web") && dom.contains("paused"),
            "status page: {dom}"
        );
        assert!(dom.contains("checkout_error_rate"));
        // The operator console: the paused cohort's section has its percent history,
        // a plot per guardrail and success metric, and its commands with the PAUSE.
        let section = dom
            .split(r#"<section class="cohort" data-flag="checkout-redesign" data-cohort="platform=mobile-web">"#)
            .nth(1)
            .and_then(|s| s.split("</section>").next())
            .unwrap_or_else(|| panic!("no section for the paused cohort: {dom}"));
        assert!(
            section.contains("<span class=\"paused\">paused</span>"),
            "{section}"
        );
        assert_eq!(
            section.matches(r#"<svg class="percent-plot""#).count(),
            1,
            "{section}"
        );
        assert!(
            section.contains("<h4>checkout_error_rate <small") && section.contains("breached in "),
            "error-rate plot with breached windows: {section}"
        );
        let plots = section.matches(r#"<svg class="metric-plot""#).count();
        assert!(plots >= 2, "{plots} metric plots: {section}");
        assert!(section.matches("<polyline").count() > plots, "lines drawn");
        assert!(section.contains("▲ PAUSE"), "decision marked: {section}");
        let commands = section
            .split(r#"<table class="commands">"#)
            .nth(1)
            .unwrap_or_else(|| panic!("no command list: {section}"));
        assert!(commands.contains("<b>PAUSE</b>"), "{commands}");
        let rule_change = dom
            .split("Last rule change")
            .nth(1)
            .unwrap_or_else(|| panic!("no rule change on the page: {dom}"));
        let rule_change = &rule_change[..rule_change.len().min(4000)];
        assert!(
            rule_change.contains("alice") && rule_change.contains("bob"),
            "who proposed and who approved: {rule_change}"
        );
        assert_png(&shot);
        if std::env::var_os("GUARDRAIL_SAVE_SCREENSHOT").is_some_and(|v| v == "1") {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console.png");
            std::fs::copy(&shot, &docs).expect("save docs/console.png");
            eprintln!("saved {}", docs.display());
        }
    }
}

/// Chromium's window for the console screenshot (docs/console.png).
const CONSOLE_WINDOW: &str = "1400,2400";

#[test]
fn replay_report_renders_in_chromium() {
    let Some(chromium) = tool("chromium", "GUARDRAIL_SKIP_BROWSER") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let start = (guardrail::clock::wall_ms() / 900_000 - 20) * 900_000;
    let mut sim = guardrail::sim::Simulator::new(guardrail::sim::Scenario::demo(start, 8, 24_000));
    guardrail::sim::write_ocf_files(&mut sim, dir.path()).expect("write files");
    let report = dir.path().join("report.html");
    // The example policy, error rate judged per window: 8 windows show the PAUSE.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, guardrail::demo::example_per_window()).unwrap();
    let out = Command::new(BIN)
        .arg("replay")
        .arg("--config")
        .arg(&policy)
        .arg("--product-events")
        .arg(dir.path().join("product-events.avro"))
        .arg("--error-events")
        .arg(dir.path().join("error-events.avro"))
        .arg("--support-signals")
        .arg(dir.path().join("support-signals.avro"))
        .arg("--commands-out")
        .arg(dir.path().join("commands.jsonl"))
        .arg("--report")
        .arg(&report)
        .output()
        .expect("replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&report).expect("report written");
    assert!(
        !html.contains("http:") && !html.contains("https:"),
        "the report is self-contained"
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.png");
    let dom = headless(
        &chromium,
        &format!("file://{}", report.display()),
        &shot,
        "1280,1600",
    );
    // 2 flags x 5 cohorts (* and 4 platforms) x (3 metrics + the sample ratio).
    assert_eq!(
        dom.matches("class=\"metric-plot\"").count(),
        40,
        "plots in the rendered DOM"
    );
    assert!(
        dom.contains("▲ PAUSE") && dom.contains("▲ ADVANCE"),
        "decisions marked"
    );
    assert!(dom.contains("<polyline"), "lines drawn");
    assert_png(&shot);
}

/// Renders `url` in headless Chromium: writes a screenshot of a `window` ("w,h")
/// window and returns the DOM.
fn headless(chromium: &Path, url: &str, screenshot: &Path, window: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ];
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    let dom = Command::new(chromium)
        .args(common)
        .arg(&profile_arg)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium --dump-dom");
    assert!(
        dom.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let shot = Command::new(chromium)
        .args(common)
        .arg(&profile_arg)
        .arg(format!("--window-size={window}"))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(url)
        .output()
        .expect("chromium --screenshot");
    assert!(
        shot.status.success(),
        "chromium screenshot failed: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        bytes.len() > 10_000,
        "screenshot of {} bytes looks blank",
        bytes.len()
    );
}
