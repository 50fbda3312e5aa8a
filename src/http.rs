//! HTTP: `/metrics` (Prometheus text), `/healthz` (the process is alive), `/readyz`
//! (partitions assigned and producer connected), `/api/flags` and `/api/flags/{key}`
//! (per cohort: percent, state, last evaluation with evidence, recent commands), and
//! `/`, a server-rendered status page.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::Registry;
use serde::Serialize;
use tokio::sync::watch;

use crate::policy::Policy;
use crate::records::{FlagCommand, WindowEvaluation};

const RECENT_COMMANDS: usize = 20;

/// What the HTTP endpoints read; written by the engine loop after each tick.
pub struct Shared {
    pub registry: Registry,
    pub ready: AtomicBool,
    /// Another instance leads the group: this one consumes nothing and waits.
    pub standby: AtomicBool,
    /// Only part of the input partitions are assigned: nothing is judged.
    pub partial: AtomicBool,
    pub flags: Mutex<BTreeMap<String, FlagView>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlagView {
    pub key: String,
    pub owner: String,
    /// `production`, `staging`, ... as the policy says.
    pub environment: Option<String>,
    /// When the flag should be gone (epoch ms), and whether that time has passed.
    pub expires_at: Option<i64>,
    pub expired: bool,
    pub policy_version: String,
    pub ramp: Vec<f64>,
    pub cohorts: BTreeMap<String, CohortView>,
    /// Cohorts whose state was started afresh at the last start because the policy
    /// changed (state published under another policy version).
    pub state_resets: Vec<StateReset>,
}

/// A cohort whose published state was not restored: its flag's policy changed.
#[derive(Debug, Clone, Serialize)]
pub struct StateReset {
    pub flag_key: String,
    pub cohort: String,
    pub from_version: String,
    pub to_version: String,
    pub previous_state: Option<String>,
    pub previous_percent: Option<f64>,
    /// End of the last window judged under the previous version.
    pub window_end: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CohortView {
    pub percent: f64,
    pub state: String,
    pub last_evaluation: Option<WindowEvaluation>,
    pub recent_commands: VecDeque<FlagCommand>,
    /// What the flag platform last reported applied for this cohort (SPEC §9).
    pub applied: Option<crate::apply::Applied>,
}

impl Shared {
    pub fn new(registry: Registry, policy: &Policy) -> Arc<Shared> {
        let flags = policy
            .flags
            .iter()
            .map(|f| {
                let view = FlagView {
                    key: f.key.clone(),
                    owner: f.owner.clone(),
                    environment: f.environment.clone(),
                    expires_at: f.expires_at_ms,
                    expired: false,
                    policy_version: f.policy_version.clone(),
                    ramp: f.ramp.clone(),
                    cohorts: BTreeMap::new(),
                    state_resets: Vec::new(),
                };
                (f.key.clone(), view)
            })
            .collect();
        Arc::new(Shared {
            registry,
            ready: AtomicBool::new(false),
            standby: AtomicBool::new(false),
            partial: AtomicBool::new(false),
            flags: Mutex::new(flags),
        })
    }

    /// Records an evaluation and the command it produced.
    pub fn record(&self, e: &WindowEvaluation, c: Option<&FlagCommand>) {
        let Ok(mut flags) = self.flags.lock() else {
            return;
        };
        let Some(flag) = flags.get_mut(&e.flag_key) else {
            return;
        };
        let view = flag.cohorts.entry(e.cohort.clone()).or_default();
        view.percent = e.rollout_percent.unwrap_or(view.percent);
        view.state = e.state.clone().unwrap_or_default();
        view.last_evaluation = Some(e.clone());
        if let Some(c) = c {
            view.recent_commands.push_front(c.clone());
            view.recent_commands.truncate(RECENT_COMMANDS);
        }
    }

    /// Records what the flag platform applied to a cohort.
    pub fn record_applied(&self, a: &crate::apply::Applied) {
        if let Ok(mut flags) = self.flags.lock()
            && let Some(flag) = flags.get_mut(&a.flag_key)
        {
            flag.cohorts.entry(a.cohort.clone()).or_default().applied = Some(a.clone());
        }
    }

    /// Records a cohort whose state restore did not bring back.
    pub fn record_reset(&self, r: &StateReset) {
        if let Ok(mut flags) = self.flags.lock()
            && let Some(flag) = flags.get_mut(&r.flag_key)
        {
            flag.state_resets.push(r.clone());
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, FlagView> {
        let now = crate::clock::wall_ms();
        let mut flags = self.flags.lock().map(|f| f.clone()).unwrap_or_default();
        for f in flags.values_mut() {
            f.expired = f.expires_at.is_some_and(|t| now >= t);
        }
        flags
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/flags", get(flags))
        .route("/api/flags/{key}", get(flag))
        .with_state(shared)
}

/// What a shell keeps around the engine: the metrics registry, the shared view, the stop
/// signal (which also stops the HTTP server) and the server task.
pub struct Served {
    pub registry: Registry,
    pub shared: Arc<Shared>,
    pub stop: watch::Sender<bool>,
    pub addr: SocketAddr,
    pub server: tokio::task::JoinHandle<()>,
}

/// Creates the registry and shared view for `policy` and serves HTTP on `listen`
/// until `stop` is set.
pub async fn start(listen: &str, policy: &Policy) -> std::io::Result<Served> {
    let registry = Registry::new();
    let shared = Shared::new(registry.clone(), policy);
    let (stop, mut stopped) = watch::channel(false);
    let (addr, server) = serve(listen, shared.clone(), async move {
        let _ = stopped.wait_for(|s| *s).await;
    })
    .await?;
    Ok(Served {
        registry,
        shared,
        stop,
        addr,
        server,
    })
}

/// Binds `listen` and serves until `shutdown` resolves; returns the bound address.
pub async fn serve(
    listen: &str,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = router(shared);
    let handle = tokio::spawn(async move {
        let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
        let graceful = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping.send(());
        });
        // Graceful shutdown waits for every connection; a client that never finishes
        // its request (slow loris) must not hold the process's exit.
        let deadline = async {
            if stopped.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_WAIT).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = graceful => if let Err(e) = r {
                tracing::error!(error = %e, "HTTP server failed");
            },
            () = deadline => tracing::warn!(
                "HTTP connections still open {SHUTDOWN_WAIT:?} after shutdown; closing them"
            ),
        }
    });
    Ok((addr, handle))
}

/// How long shutdown waits for open HTTP connections.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render(&s.registry),
    )
        .into_response()
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.standby.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "standby: another instance leads this consumer group; this one takes over, \
             with a fresh restore, when it leaves\n",
        )
            .into_response();
    }
    if s.partial.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not judging: only part of the input partitions are assigned to this instance \
             (another member of the consumer group holds the rest)\n",
        )
            .into_response();
    }
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for partitions or the producer\n",
        )
            .into_response()
    }
}

async fn flags(State(s): State<Arc<Shared>>) -> Json<Vec<FlagView>> {
    Json(s.snapshot().into_values().collect())
}

async fn flag(State(s): State<Arc<Shared>>, Path(key): Path<String>) -> Response {
    match s.snapshot().remove(&key) {
        Some(f) => Json(f).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no flag {key:?}\n")).into_response(),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained HTML page: every flag and cohort, state, percent, guardrail values
/// against thresholds, streaks, and the last commands with their reasons.
async fn status_page(State(s): State<Arc<Shared>>) -> Html<String> {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=utf-8><title>guardrail</title><style>\
         body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 2em}\
         td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.paused,.rolled_back{background:#fdd}\
         .held{background:#ffd}.complete{background:#dfd}.breached{color:#b00;font-weight:bold}</style></head><body><h1>guardrail</h1>",
    );
    for f in s.snapshot().values() {
        let _ = write!(
            h,
            "<h2>{} <small>owner {}{} · policy {}{}</small></h2><table><tr><th>cohort</th><th>state</th><th>percent</th><th>window</th><th>guardrails (treatment / control / threshold, streak)</th><th>last command</th></tr>",
            esc(&f.key),
            esc(&f.owner),
            f.environment
                .as_deref()
                .map(|e| format!(" · {}", esc(e)))
                .unwrap_or_default(),
            esc(&f.policy_version),
            match (f.expires_at, f.expired) {
                (Some(t), true) => format!(
                    " · <span class=breached>expired {}</span>",
                    crate::clock::rfc3339(t)
                ),
                (Some(t), false) => format!(" · expires {}", crate::clock::rfc3339(t)),
                (None, _) => String::new(),
            }
        );
        for (cohort, c) in &f.cohorts {
            let mut guards = String::new();
            let mut window = String::new();
            if let Some(e) = &c.last_evaluation {
                window = format!(
                    "{} – {}",
                    crate::clock::rfc3339(e.window_start),
                    crate::clock::rfc3339(e.window_end)
                );
                for ev in &e.evidence {
                    let cls = if ev.breached { "breached" } else { "" };
                    let _ = write!(
                        guards,
                        "<div class='{cls}'>{} [{}]: {:.4} / {} / {} ({}, streak {})</div>",
                        esc(&ev.metric),
                        format!("{:?}", ev.role).to_lowercase(),
                        ev.treatment_value,
                        ev.control_value.map_or("–".into(), |v| format!("{v:.4}")),
                        ev.threshold.map_or("–".into(), |v| format!("{v:.4}")),
                        esc(&ev.status),
                        ev.consecutive_windows
                    );
                }
            }
            let last = c.recent_commands.front().map_or(String::new(), |c| {
                format!(
                    "<b>{}</b> {}→{}%: {}",
                    c.action.as_str(),
                    c.from_percent,
                    c.to_percent,
                    esc(&c.reason)
                )
            });
            let _ = write!(
                h,
                "<tr class='{}'><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.state),
                esc(cohort),
                esc(&c.state),
                match &c.applied {
                    // What guardrail decided, and what the flag platform serves.
                    Some(a) if a.percent != c.percent => format!(
                        "{} <small>(platform serves {}%{})</small>",
                        c.percent,
                        a.percent,
                        a.approved_by
                            .as_deref()
                            .map(|b| format!(", approved by {}", esc(b)))
                            .unwrap_or_default()
                    ),
                    Some(_) => format!("{} <small>(applied)</small>", c.percent),
                    None => c.percent.to_string(),
                },
                window,
                guards,
                last
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>");
    Html(h)
}

#[cfg(test)]
mod slow_client_tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::config::Config;

    /// A client that sends half a request and waits (slow loris) neither blocks
    /// `/metrics` for others nor the server's shutdown.
    #[tokio::test]
    async fn a_slow_client_blocks_neither_metrics_nor_shutdown() {
        let text = include_str!("../config/guardrail.toml");
        let policy = Policy::compile(&Config::parse(text).unwrap()).unwrap();
        let served = start("127.0.0.1:0", &policy).await.unwrap();
        crate::telemetry::Metrics::register(&served.registry).unwrap();
        let mut loris = TcpStream::connect(served.addr).await.unwrap();
        loris
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();

        let mut other = TcpStream::connect(served.addr).await.unwrap();
        other
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), other.read_to_end(&mut response))
            .await
            .expect("/metrics answers beside the slow client")
            .unwrap();
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.0 200"), "{response}");
        assert!(response.contains("guardrail_events_total"));

        let t = Instant::now();
        served.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), served.server)
            .await
            .expect("shutdown does not wait for the slow client")
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        drop(loris);
    }
}

#[cfg(test)]
mod flag_view_tests {
    use super::*;
    use crate::config::Config;

    /// `/api/flags` and the status page show owner, environment and expiry; a flag past
    /// its `expires_at` is expired, one without it never is.
    #[tokio::test]
    async fn flags_report_environment_and_expiry() {
        let text = include_str!("../config/guardrail.toml").replacen(
            "owner = \"payments-squad\"",
            "owner = \"payments-squad\"\nexpires_at = \"2020-01-31\"\nenvironment = \"production\"",
            1,
        );
        let policy = Policy::compile(&Config::parse(&text).unwrap()).unwrap();
        let shared = Shared::new(Registry::new(), &policy);
        let Json(flags) = flags(State(shared.clone())).await;
        let checkout = flags.iter().find(|f| f.key == "checkout-redesign").unwrap();
        assert_eq!(checkout.environment.as_deref(), Some("production"));
        assert_eq!(checkout.expires_at, Some(1_580_428_800_000));
        assert!(checkout.expired);
        let other = flags.iter().find(|f| f.key != "checkout-redesign").unwrap();
        assert_eq!((other.expires_at, other.expired), (None, false));
        // What the flag platform reports applied shows beside what was decided.
        shared.record(
            &WindowEvaluation {
                flag_key: "checkout-redesign".into(),
                cohort: "platform=ios".into(),
                window_start: 0,
                window_end: 0,
                decision: None,
                evidence: Vec::new(),
                late_events: 0,
                evaluated_at: 0,
                rollout_percent: Some(50.0),
                state: Some("ramping".into()),
                healthy_windows: 0,
                policy_version: None,
                command_id: None,
                band: Vec::new(),
                input_positions: Vec::new(),
                watermark_lag_ms: None,
            },
            None,
        );
        shared.record_applied(&crate::apply::Applied {
            flag_key: "checkout-redesign".into(),
            cohort: "platform=ios".into(),
            percent: 20.0,
            action: "ADVANCE".into(),
            command_id: "c1".into(),
            window_end: 0,
            applied_at: 0,
            approved_by: Some("bob".into()),
        });
        let Html(page) = status_page(State(shared)).await;
        assert!(
            page.contains("50 <small>(platform serves 20%, approved by bob)</small>"),
            "{page}"
        );
        assert!(page.contains("payments-squad · production"), "{page}");
        assert!(page.contains("expired 2020-01-31T00:00:00Z"), "{page}");
    }
}
