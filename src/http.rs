//! HTTP: `/metrics` (Prometheus text), `/healthz` (the process is alive), `/readyz`
//! (partitions assigned and producer connected), `/api/flags` and `/api/flags/{key}`
//! (per cohort: percent, state, last evaluation with evidence, recent commands),
//! `/api/flags/{key}/history` (the flag's audit trail, each cohort's last windows and
//! what the platform applied), and `/`, the operator console: per flag its last rule
//! change, per cohort its percent and metrics over the kept windows and its last
//! commands, server-rendered (inline SVG and CSS, no script).

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

use crate::apply::Applied;
use crate::audit::{AuditKind, AuditRecord};
use crate::model::{Action, Role};
use crate::policy::Policy;
use crate::records::{FlagCommand, WindowEvaluation};
use crate::report::{MetricPoint, MetricValue, PlotSize, esc, metric_plot, percent_plot};

const RECENT_COMMANDS: usize = 20;
/// Windows kept per cohort for the history (a day of 15-minute windows).
pub const HISTORY_WINDOWS: usize = 96;
/// Audit entries kept per flag.
pub const AUDIT_ENTRIES: usize = 200;

/// What the HTTP endpoints read; written by the engine loop after each tick.
pub struct Shared {
    pub registry: Registry,
    pub ready: AtomicBool,
    /// Another instance leads the group: this one consumes nothing and waits.
    pub standby: AtomicBool,
    /// Only part of the input partitions are assigned: nothing is judged.
    pub partial: AtomicBool,
    pub flags: Mutex<BTreeMap<String, FlagView>>,
    /// Per flag key, the newest [`AUDIT_ENTRIES`] audit entries in `(time, id)` order;
    /// also for flags without a view (a proposal for a new flag).
    pub audit: Mutex<BTreeMap<String, Vec<AuditRecord>>>,
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

impl FlagView {
    fn new(f: &crate::policy::Flag) -> FlagView {
        FlagView {
            key: f.key.clone(),
            owner: f.owner.clone(),
            environment: f.environment.clone(),
            expires_at: f.expires_at_ms,
            expired: false,
            policy_version: f.policy_version.clone(),
            ramp: f.ramp.clone(),
            cohorts: BTreeMap::new(),
            state_resets: Vec::new(),
        }
    }
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
    pub applied: Option<Applied>,
    /// The last [`HISTORY_WINDOWS`] windows judged, oldest first (served by
    /// `/api/flags/{key}/history`, not by `/api/flags`).
    #[serde(skip)]
    pub history: VecDeque<WindowPoint>,
}

/// One judged window of a cohort, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowPoint {
    pub window_end: i64,
    /// Rollout percent after the window's decision.
    pub percent: Option<f64>,
    pub state: Option<String>,
    pub decision: Option<Action>,
    pub evidence: Vec<EvidencePoint>,
}

/// One metric's evidence in a [`WindowPoint`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvidencePoint {
    pub metric: String,
    pub role: Role,
    pub treatment_value: f64,
    pub control_value: Option<f64>,
    pub threshold: Option<f64>,
    pub breached: bool,
    pub status: String,
    /// Samples per arm: a window without any has no value to plot.
    pub treatment_samples: i64,
    pub control_samples: i64,
}

impl WindowPoint {
    fn of(e: &WindowEvaluation) -> WindowPoint {
        WindowPoint {
            window_end: e.window_end,
            percent: e.rollout_percent,
            state: e.state.clone(),
            decision: e.decision,
            evidence: e
                .evidence
                .iter()
                .map(|m| EvidencePoint {
                    metric: m.metric.clone(),
                    role: m.role,
                    treatment_value: m.treatment_value,
                    control_value: m.control_value,
                    threshold: m.threshold,
                    breached: m.breached,
                    status: m.status.clone(),
                    treatment_samples: m.treatment_samples,
                    control_samples: m.control_samples,
                })
                .collect(),
        }
    }
}

/// `GET /api/flags/{key}/history`.
#[derive(Debug, Clone, Serialize)]
pub struct FlagHistory {
    pub flag: String,
    /// Newest first.
    pub audit: Vec<AuditRecord>,
    /// Per cohort its kept windows, oldest first.
    pub cohorts: BTreeMap<String, Vec<WindowPoint>>,
    /// Per cohort what the flag platform last reported applied.
    pub applied: BTreeMap<String, Applied>,
}

impl Shared {
    pub fn new(registry: Registry, policy: &Policy) -> Arc<Shared> {
        let flags = policy
            .flags
            .iter()
            .map(|f| (f.key.clone(), FlagView::new(f)))
            .collect();
        Arc::new(Shared {
            registry,
            ready: AtomicBool::new(false),
            standby: AtomicBool::new(false),
            partial: AtomicBool::new(false),
            flags: Mutex::new(flags),
            audit: Mutex::new(BTreeMap::new()),
        })
    }

    /// The engine activated `policy` without a restart: views for its new flags; for
    /// the others the new owner, environment, expiry, version and ramp, their cohorts
    /// and history kept. Flags no longer in `policy` keep their views.
    pub fn update_policy(&self, policy: &Policy) {
        let Ok(mut flags) = self.flags.lock() else {
            return;
        };
        for f in &policy.flags {
            match flags.get_mut(&f.key) {
                Some(view) => {
                    view.owner = f.owner.clone();
                    view.environment = f.environment.clone();
                    view.expires_at = f.expires_at_ms;
                    view.policy_version = f.policy_version.clone();
                    view.ramp = f.ramp.clone();
                }
                None => {
                    flags.insert(f.key.clone(), FlagView::new(f));
                }
            }
        }
    }

    /// Keeps an audit entry: per flag the newest [`AUDIT_ENTRIES`], ordered by time;
    /// an entry whose `id` is kept replaces it. When the bound is reached the oldest
    /// command goes first, so that a busy flag's rule changes stay on the console.
    pub fn record_audit(&self, r: &AuditRecord) {
        let Ok(mut audit) = self.audit.lock() else {
            return;
        };
        let entries = audit.entry(r.flag.clone()).or_default();
        entries.retain(|x| x.id != r.id);
        let at = entries.partition_point(|x| (x.time, &x.id) <= (r.time, &r.id));
        entries.insert(at, r.clone());
        while entries.len() > AUDIT_ENTRIES {
            let oldest = entries
                .iter()
                .position(|x| x.kind == AuditKind::Command)
                .unwrap_or(0);
            entries.remove(oldest);
        }
    }

    /// The flag's audit entries, newest first.
    pub fn audit_of(&self, flag: &str) -> Vec<AuditRecord> {
        self.audit
            .lock()
            .ok()
            .and_then(|a| a.get(flag).map(|e| e.iter().rev().cloned().collect()))
            .unwrap_or_default()
    }

    /// The flag's history, or `None` for a key with neither a view nor audit entries.
    pub fn history(&self, flag: &str) -> Option<FlagHistory> {
        let audit = self.audit_of(flag);
        let view = self.flags.lock().ok()?.get(flag).cloned();
        if view.is_none() && audit.is_empty() {
            return None;
        }
        let cohorts = view.map(|v| v.cohorts).unwrap_or_default();
        Some(FlagHistory {
            flag: flag.to_string(),
            audit,
            applied: cohorts
                .iter()
                .filter_map(|(k, c)| Some((k.clone(), c.applied.clone()?)))
                .collect(),
            cohorts: cohorts
                .into_iter()
                .map(|(k, c)| (k, c.history.into_iter().collect()))
                .collect(),
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
        // In window order; a window judged again (after a restart) replaces its point.
        let point = WindowPoint::of(e);
        let h = &mut view.history;
        match h.back() {
            Some(last) if last.window_end >= point.window_end => {
                let at = h.partition_point(|p| p.window_end < point.window_end);
                if h.get(at).is_some_and(|p| p.window_end == point.window_end) {
                    h[at] = point;
                } else {
                    h.insert(at, point);
                }
            }
            _ => h.push_back(point),
        }
        while h.len() > HISTORY_WINDOWS {
            h.pop_front();
        }
    }

    /// Records what the flag platform applied to a cohort.
    pub fn record_applied(&self, a: &Applied) {
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
        .route("/api/flags/{key}/history", get(history))
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

async fn history(State(s): State<Arc<Shared>>, Path(key): Path<String>) -> Response {
    match s.history(&key) {
        Some(h) => Json(h).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no flag {key:?}\n")).into_response(),
    }
}

/// Plots on the console: four to a row on a 1400-pixel screen.
const CONSOLE_PLOT: PlotSize = PlotSize { w: 320.0, h: 130.0 };
/// Commands listed per cohort, and policy entries per flag, on the console.
const CONSOLE_COMMANDS: usize = 6;
const CONSOLE_RULE_ENTRIES: usize = 6;

const CONSOLE_CSS: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}\
    table{border-collapse:collapse;margin:.5em 0 1em}\
    td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}\
    .paused,.rolled_back{background:#fdd}.held{background:#ffd}.complete{background:#dfd}\
    .breached{color:#b00;font-weight:bold}section.flag{margin-bottom:2.5em}\
    section.cohort{border-top:1px solid #ddd;padding:.3em 0 .5em}section.cohort h3{margin:.4em 0}\
    .plot{display:inline-block;margin:0 .6em .6em 0;vertical-align:top}\
    .plot h4{margin:.1em 0;font-size:12px;font-weight:600}\
    .rule{background:#f4f6fb;border-left:4px solid #1f77b4;padding:.4em .8em;margin:.5em 0}\
    .legend span{margin-right:1.5em}.muted{color:#777}code{font-size:12px}";

/// The operator console: per flag its header, its last rule change (audit trail), a
/// table of its cohorts, and per cohort (those that need attention first) its percent
/// history, each guardrail and success metric against its threshold over the kept
/// windows, what the platform serves and the last commands with whether the platform
/// applied them. One self-contained page: inline CSS and SVG, no script.
async fn status_page(State(s): State<Arc<Shared>>) -> Html<String> {
    let mut h = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>guardrail</title><style>{CONSOLE_CSS}</style></head>\
         <body><h1>guardrail</h1><p class=legend><span style='color:#1f77b4'>■ rollout percent</span>\
         <span style='color:#d62728'>■ treatment</span><span style='color:#555'>■ control</span>\
         <span style='color:#ff7f0e'>- - threshold</span><span style='color:#d62728'>● breached</span>\
         <span>▲ decision</span></p>"
    );
    let views = s.snapshot();
    for f in views.values() {
        let _ = write!(
            h,
            "<section class=flag data-flag='{}'><h2>{} <small>owner {}{} · policy {}{}</small></h2>",
            esc(&f.key),
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
        rule_change(&mut h, &f.key, &s.audit_of(&f.key));
        cohort_table(&mut h, f);
        let mut cohorts: Vec<(&String, &CohortView)> = f.cohorts.iter().collect();
        cohorts.sort_by_key(|(_, c)| attention(&c.state));
        for (cohort, c) in cohorts {
            cohort_section(&mut h, &f.key, cohort, c);
        }
        h.push_str("</section>");
    }
    // Flags only the audit trail knows: proposed, not (yet) judged.
    let audited: Vec<String> = s
        .audit
        .lock()
        .map(|a| a.keys().cloned().collect())
        .unwrap_or_default();
    for key in audited.iter().filter(|k| !views.contains_key(*k)) {
        let _ = write!(
            h,
            "<section class=flag data-flag='{k}'><h2>{k} <small>not in the active policy</small></h2>",
            k = esc(key)
        );
        rule_change(&mut h, key, &s.audit_of(key));
        h.push_str("</section>");
    }
    h.push_str("</body></html>");
    Html(h)
}

/// Cohorts that stopped come first, then those held.
fn attention(state: &str) -> u8 {
    match state {
        "paused" | "rolled_back" => 0,
        "held" => 1,
        _ => 2,
    }
}

/// What guardrail decided, and what the flag platform serves.
fn percent_cell(c: &CohortView) -> String {
    match &c.applied {
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
    }
}

/// The flag's last rule change: the newest policy version any audit entry names, who
/// proposed, approved, seeded or activated it and when; then the newest policy entries
/// with their summaries and evidence links. `audit` is newest first.
fn rule_change(h: &mut String, flag: &str, audit: &[AuditRecord]) {
    let policy: Vec<&AuditRecord> = audit
        .iter()
        .filter(|r| r.kind != AuditKind::Command)
        .collect();
    let Some(newest) = policy.first() else {
        h.push_str("<p class='rule muted'>No rule change recorded.</p>");
        return;
    };
    let version = newest.version.as_deref();
    let mut steps: Vec<String> = policy
        .iter()
        .filter(|r| r.version.as_deref() == version)
        .map(|r| {
            format!(
                "{} by <b>{}</b> at {}{}",
                r.kind.as_str(),
                esc(&r.actor),
                crate::clock::rfc3339(r.time),
                r.effective_from
                    .map(|t| format!(" (from the window of {})", crate::clock::rfc3339(t)))
                    .unwrap_or_default()
            )
        })
        .collect();
    steps.reverse();
    let _ = write!(
        h,
        "<div class=rule><b>Last rule change</b>: version {}: {}.<table class=rule-changes>\
         <tr><th>when</th><th>what</th><th>who</th><th>version</th><th>summary</th><th>evidence</th></tr>",
        version.map_or("–".into(), version_html),
        steps.join("; ")
    );
    for r in policy.iter().take(CONSOLE_RULE_ENTRIES) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            crate::clock::rfc3339(r.time),
            r.kind.as_str(),
            esc(&r.actor),
            r.version.as_deref().map_or("–".into(), version_html),
            esc(&r.summary),
            r.evidence
                .iter()
                .map(|e| evidence_link(flag, e))
                .collect::<Vec<_>>()
                .join("<br>")
        );
    }
    h.push_str("</table></div>");
}

/// A policy version (a digest): its first 12 characters, all of it on hover.
fn version_html(v: &str) -> String {
    let short: String = v.chars().take(12).collect();
    format!("<code title='{}'>{}</code>", esc(v), esc(&short))
}

/// An evidence reference as a link: URLs and paths as they are, `evaluation:` references
/// to the flag's history; anything else (another scheme) as text, never as a link.
fn evidence_link(flag: &str, e: &str) -> String {
    let href = if e.starts_with("https://") || e.starts_with("http://") || e.starts_with('/') {
        Some(e.to_string())
    } else if e.starts_with("evaluation:") {
        Some(format!("/api/flags/{flag}/history"))
    } else {
        None
    };
    match href {
        Some(href) => format!("<a href='{}'>{}</a>", esc(&href), esc(e)),
        None => format!("<code>{}</code>", esc(e)),
    }
}

/// Per cohort one row: state, percent, last window, guardrails, last command.
fn cohort_table(h: &mut String, f: &FlagView) {
    h.push_str(
        "<table class=cohorts><tr><th>cohort</th><th>state</th><th>percent</th><th>window</th>\
         <th>guardrails (treatment / control / threshold, streak)</th><th>last command</th></tr>",
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
            percent_cell(c),
            window,
            guards,
            last
        );
    }
    h.push_str("</table>");
}

/// A cohort's detail: state and percent, the percent history, each guardrail and
/// success metric against its threshold, and the last commands.
fn cohort_section(h: &mut String, flag: &str, cohort: &str, c: &CohortView) {
    let _ = write!(
        h,
        "<section class=cohort data-flag='{f}' data-cohort='{co}'><h3>{f} · cohort {co}: \
         <span class='{st}'>{st}</span>, percent {p}</h3><div class=plots>",
        f = esc(flag),
        co = esc(cohort),
        st = esc(&c.state),
        p = percent_cell(c),
    );
    let decisions: Vec<Option<&str>> = c
        .history
        .iter()
        .map(|p| p.decision.map(Action::as_str))
        .collect();
    let percents: Vec<(i64, Option<f64>, Option<&str>)> = c
        .history
        .iter()
        .zip(&decisions)
        .map(|(p, d)| (p.window_end, p.percent, *d))
        .collect();
    percent_plot(
        h,
        &format!("rollout percent, last {} windows", c.history.len()),
        &percents,
        CONSOLE_PLOT,
    );
    let mut metrics: Vec<(&str, Role)> = Vec::new();
    for e in c.history.iter().flat_map(|p| &p.evidence) {
        if matches!(e.role, Role::Guardrail | Role::Success)
            && !metrics.iter().any(|(m, _)| *m == e.metric)
        {
            metrics.push((&e.metric, e.role));
        }
    }
    for (metric, role) in metrics {
        let points: Vec<MetricPoint> = c
            .history
            .iter()
            .zip(&decisions)
            .map(|(p, d)| MetricPoint {
                time: p.window_end,
                decision: *d,
                value: p
                    .evidence
                    .iter()
                    .find(|e| e.metric == metric)
                    .filter(|e| e.treatment_samples > 0 || e.control_samples > 0)
                    .map(|e| MetricValue {
                        treatment: e.treatment_value,
                        control: e.control_value,
                        threshold: e.threshold,
                        breached: e.breached,
                    }),
            })
            .collect();
        let breached = points
            .iter()
            .filter(|p| p.value.is_some_and(|v| v.breached))
            .count();
        let title = format!(
            "{} <small class=muted>{}{}</small>",
            esc(metric),
            format!("{role:?}").to_lowercase(),
            if breached > 0 {
                format!(" · <span class=breached>breached in {breached}</span>")
            } else {
                String::new()
            }
        );
        metric_plot(h, &title, &points, CONSOLE_PLOT);
    }
    h.push_str("</div>");
    commands(h, c);
    h.push_str("</section>");
}

/// The cohort's last commands, newest first, and whether the platform applied each.
fn commands(h: &mut String, c: &CohortView) {
    if c.recent_commands.is_empty() {
        h.push_str("<p class=muted>No commands.</p>");
        return;
    }
    h.push_str(
        "<table class=commands><tr><th>window end</th><th>action</th><th>percent</th>\
         <th>reason</th><th>platform</th></tr>",
    );
    for cmd in c.recent_commands.iter().take(CONSOLE_COMMANDS) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><b>{}</b></td><td>{} → {}</td><td>{}</td><td>{}</td></tr>",
            crate::clock::rfc3339(cmd.window_end),
            cmd.action.as_str(),
            cmd.from_percent,
            cmd.to_percent,
            esc(&cmd.reason),
            platform_status(cmd, c.applied.as_ref())
        );
    }
    h.push_str("</table>");
}

/// Whether the flag platform applied `cmd`, judged from the cohort's last `applied`.
fn platform_status(cmd: &FlagCommand, applied: Option<&Applied>) -> String {
    let Some(a) = applied else {
        return "<span class=muted>no report from the platform</span>".into();
    };
    if a.command_id == cmd.command_id {
        let by = a
            .approved_by
            .as_deref()
            .map(|b| format!(", approved by {}", esc(b)))
            .unwrap_or_default();
        if a.percent == cmd.to_percent {
            format!("applied {}{by}", crate::clock::rfc3339(a.applied_at))
        } else {
            format!(
                "applied {}{by}; serves {}%",
                crate::clock::rfc3339(a.applied_at),
                a.percent
            )
        }
    } else if cmd.window_end > a.window_end {
        if cmd.requires_approval {
            format!(
                "<span class=breached>awaiting approval</span> (serves {}%)",
                a.percent
            )
        } else {
            format!(
                "<span class=breached>not applied yet</span> (serves {}%)",
                a.percent
            )
        }
    } else {
        "<span class=muted>superseded (a later command is applied)</span>".into()
    }
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

#[cfg(test)]
mod console_tests {
    use super::*;
    use crate::config::Config;
    use crate::model::Severity;
    use crate::records::MetricEvidence;

    const FLAG: &str = "checkout-redesign";
    const COHORT: &str = "platform=mobile-web";

    fn policy(text: &str) -> Policy {
        Policy::compile(&Config::parse(text).unwrap()).unwrap()
    }

    fn shared() -> Arc<Shared> {
        Shared::new(
            Registry::new(),
            &policy(include_str!("../config/guardrail.toml")),
        )
    }

    /// Window `i` (15 minutes each) of `COHORT`: the error rate at `t` against 0.01,
    /// breached above 0.011; percent `p`.
    fn eval(i: i64, t: f64, p: f64, decision: Option<Action>) -> WindowEvaluation {
        WindowEvaluation {
            flag_key: FLAG.into(),
            cohort: COHORT.into(),
            window_start: i * 900_000,
            window_end: (i + 1) * 900_000,
            decision,
            evidence: vec![
                MetricEvidence {
                    metric: "checkout_error_rate".into(),
                    role: Role::Guardrail,
                    treatment_value: t,
                    control_value: Some(0.01),
                    threshold: Some(0.011),
                    treatment_samples: 100,
                    control_samples: 100,
                    breached: t > 0.011,
                    status: if t > 0.011 { "breached" } else { "healthy" }.into(),
                    ..MetricEvidence::empty()
                },
                MetricEvidence {
                    metric: "checkout_conversion".into(),
                    role: Role::Success,
                    treatment_value: 0.3,
                    control_value: Some(0.29),
                    treatment_samples: 100,
                    control_samples: 100,
                    status: "healthy".into(),
                    ..MetricEvidence::empty()
                },
            ],
            late_events: 0,
            evaluated_at: 0,
            rollout_percent: Some(p),
            state: Some(
                if decision == Some(Action::Pause) {
                    "paused"
                } else {
                    "ramping"
                }
                .into(),
            ),
            healthy_windows: 0,
            policy_version: None,
            command_id: None,
            band: Vec::new(),
            input_positions: Vec::new(),
            watermark_lag_ms: None,
        }
    }

    fn command(id: &str, i: i64, action: Action, from: f64, to: f64) -> FlagCommand {
        FlagCommand {
            command_id: id.into(),
            flag_key: FLAG.into(),
            cohort: COHORT.into(),
            action,
            severity: Severity::Critical,
            from_percent: from,
            to_percent: to,
            requires_approval: false,
            reason: format!("{} <reason>", action.as_str()),
            owner: "payments-squad".into(),
            window_start: i * 900_000,
            window_end: (i + 1) * 900_000,
            issued_at: (i + 1) * 900_000,
            policy_version: "v".into(),
            evidence: Vec::new(),
            watermark_lag_ms: None,
        }
    }

    fn entry(kind: AuditKind, flag: &str, version: &str, actor: &str, time: i64) -> AuditRecord {
        AuditRecord::policy(
            kind,
            flag,
            version,
            actor,
            time,
            format!("{} of {version}", kind.as_str()),
            vec!["https://tickets.example/CHG-7".into()],
        )
    }

    async fn history_json(s: &Arc<Shared>, key: &str) -> (StatusCode, serde_json::Value) {
        let r = history(State(s.clone()), Path(key.to_string())).await;
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 24).await.unwrap();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The history keeps the last 96 windows per cohort, oldest first, with percent,
    /// state, decision and per metric its values against the threshold; a window judged
    /// again replaces its point.
    #[tokio::test]
    async fn cohort_history_keeps_the_last_96_windows_oldest_first() {
        let s = shared();
        for i in 0..100 {
            let pause = (i == 99).then_some(Action::Pause);
            s.record(&eval(i, 0.01 + i as f64 * 1e-4, 5.0, pause), None);
        }
        s.record(&eval(99, 0.05, 5.0, Some(Action::Pause)), None);
        let (status, h) = history_json(&s, FLAG).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h["flag"], FLAG);
        let windows = h["cohorts"][COHORT].as_array().unwrap();
        assert_eq!(windows.len(), HISTORY_WINDOWS);
        assert_eq!(windows[0]["window_end"], 5 * 900_000);
        assert_eq!(windows[95]["window_end"], 100 * 900_000);
        assert_eq!(windows[95]["decision"], "PAUSE");
        assert_eq!(windows[95]["state"], "paused");
        assert_eq!(windows[95]["percent"], 5.0);
        assert_eq!(windows[94]["decision"], serde_json::Value::Null);
        let ev = &windows[95]["evidence"][0];
        assert_eq!(ev["metric"], "checkout_error_rate");
        assert_eq!(ev["role"], "GUARDRAIL");
        assert_eq!(ev["treatment_value"], 0.05);
        assert_eq!(ev["control_value"], 0.01);
        assert_eq!(ev["threshold"], 0.011);
        assert_eq!(ev["breached"], true);
        assert_eq!(ev["status"], "breached");
        assert_eq!(h["audit"], serde_json::json!([]));
        assert_eq!(h["applied"], serde_json::json!({}));
        // `/api/flags` stays small: the history is served only here.
        let Json(flags) = flags(State(s)).await;
        let text = serde_json::to_string(&flags).unwrap();
        assert!(!text.contains("\"history\""), "{text}");
    }

    /// Audit entries: newest first, a re-published id replaces its entry, at most 200
    /// per flag (commands go first), kept for a flag without a view; unknown keys 404.
    #[tokio::test]
    async fn audit_is_deduplicated_bounded_and_newest_first() {
        let s = shared();
        let (status, _) = history_json(&s, "new-flag").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        s.record_audit(&entry(
            AuditKind::Proposed,
            "new-flag",
            "v2",
            "alice",
            2_000,
        ));
        s.record_audit(&entry(
            AuditKind::Seeded,
            "new-flag",
            "v1",
            "guardrail",
            1_000,
        ));
        s.record_audit(&entry(AuditKind::Approved, "new-flag", "v2", "bob", 3_000));
        // Re-published (same id): replaces, with its new time.
        let mut again = entry(AuditKind::Proposed, "new-flag", "v2", "alice", 2_500);
        again.summary = "republished".into();
        s.record_audit(&again);
        let (status, h) = history_json(&s, "new-flag").await;
        assert_eq!(status, StatusCode::OK);
        let audit = h["audit"].as_array().unwrap();
        let ids: Vec<&str> = audit.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            [
                "approved:new-flag:v2",
                "proposed:new-flag:v2",
                "seeded:new-flag:v1"
            ]
        );
        assert_eq!(audit[1]["summary"], "republished");
        assert_eq!(audit[1]["time"], 2_500);
        assert_eq!(h["cohorts"], serde_json::json!({}));

        for i in 0..250 {
            let c = command(&format!("c{i}"), i, Action::Advance, 5.0, 10.0);
            s.record_audit(&AuditRecord::command(&c, Some("v2")));
            s.record_audit(&AuditRecord::command(&c, Some("v2")));
        }
        let audit = s.audit_of(FLAG);
        assert_eq!(audit.len(), AUDIT_ENTRIES);
        assert_eq!(audit[0].id, "c249");
        assert_eq!(audit[199].id, "c50");
        assert!(audit.windows(2).all(|w| w[0].time >= w[1].time));
        // A busy flag keeps its rule change: commands are evicted first.
        s.record_audit(&entry(AuditKind::Approved, FLAG, "v3", "bob", 0));
        let audit = s.audit_of(FLAG);
        assert_eq!(audit.len(), AUDIT_ENTRIES);
        assert_eq!(audit.last().unwrap().id, "approved:checkout-redesign:v3");
        assert_eq!(audit[198].id, "c51");
    }

    /// A policy activated without a restart: its new flag gets a view, the existing
    /// ones take the new owner and version and keep their cohorts and history.
    #[tokio::test]
    async fn update_policy_adds_flags_and_keeps_cohort_history() {
        let s = shared();
        s.record(&eval(0, 0.01, 5.0, None), None);
        let text = include_str!("../config/guardrail.toml")
            .replacen("owner = \"payments-squad\"", "owner = \"checkout-team\"", 1)
            .replacen(
                "key = \"search-ranking-v2\"",
                "key = \"search-ranking-v3\"",
                1,
            );
        let next = policy(&text);
        s.update_policy(&next);
        let flags = s.snapshot();
        let keys: Vec<&str> = flags.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "checkout-redesign",
                "search-ranking-v2",
                "search-ranking-v3"
            ]
        );
        let checkout = &flags[FLAG];
        assert_eq!(checkout.owner, "checkout-team");
        let new_version = &next
            .flags
            .iter()
            .find(|f| f.key == FLAG)
            .unwrap()
            .policy_version;
        assert_eq!(&checkout.policy_version, new_version);
        assert_eq!(checkout.cohorts[COHORT].history.len(), 1);
        assert!(flags["search-ranking-v3"].cohorts.is_empty());
        let (status, _) = history_json(&s, "search-ranking-v3").await;
        assert_eq!(status, StatusCode::OK);
    }

    /// The console answers "why is this cohort at this percent": the last rule change
    /// with who proposed and approved it and its evidence link, the percent history and
    /// a plot per guardrail and success metric with the breached windows, what the
    /// platform serves, and the last commands with whether the platform applied them.
    #[tokio::test]
    async fn console_shows_rule_change_plots_and_commands() {
        let s = shared();
        for i in 0..10 {
            let (p, t) = if i < 5 { (5.0, 0.01) } else { (35.0, 0.01) };
            s.record(&eval(i, t, p, None), None);
        }
        s.record(
            &eval(4, 0.01, 35.0, Some(Action::Advance)),
            Some(&command("adv", 4, Action::Advance, 5.0, 35.0)),
        );
        s.record(
            &eval(10, 0.02, 35.0, Some(Action::Pause)),
            Some(&command("pause", 10, Action::Pause, 35.0, 35.0)),
        );
        s.record_applied(&Applied {
            flag_key: FLAG.into(),
            cohort: COHORT.into(),
            percent: 20.0,
            action: "ADVANCE".into(),
            command_id: "adv".into(),
            window_end: 5 * 900_000,
            applied_at: 5 * 900_000 + 1_000,
            approved_by: Some("bob".into()),
        });
        s.record_audit(&entry(
            AuditKind::Proposed,
            FLAG,
            "v2digest0123456789",
            "alice",
            1_000,
        ));
        s.record_audit(&entry(
            AuditKind::Approved,
            FLAG,
            "v2digest0123456789",
            "carol",
            2_000,
        ));
        s.record_audit(&AuditRecord::command(
            &command("adv", 4, Action::Advance, 5.0, 35.0),
            Some("v2"),
        ));
        s.record_audit(&entry(AuditKind::Proposed, "new-flag", "n1", "dave", 3_000));
        let Html(page) = status_page(State(s)).await;
        assert!(page.contains("<b>Last rule change</b>"), "{page}");
        let proposal = page
            .split("<section class=flag data-flag='new-flag'><h2>new-flag <small>not in the active policy</small></h2>")
            .nth(1)
            .expect("a section for the proposed flag");
        assert!(proposal.contains("proposed by <b>dave</b>"), "{proposal}");
        assert!(
            page.contains("proposed by <b>alice</b> at 1970-01-01T00:00:01Z; approved by <b>carol</b> at 1970-01-01T00:00:02Z"),
            "{page}"
        );
        assert!(page.contains("<code title='v2digest0123456789'>v2digest0123</code>"));
        assert!(page.contains("approved of v2digest0123456789"));
        assert!(page.contains("<a href='https://tickets.example/CHG-7'>"));
        let section = page
            .split("<section class=cohort data-flag='checkout-redesign' data-cohort='platform=mobile-web'>")
            .nth(1)
            .expect("the cohort's section")
            .split("</section>")
            .next()
            .unwrap();
        assert!(
            section.contains("<span class='paused'>paused</span>, percent 35 <small>(platform serves 20%, approved by bob)</small>"),
            "{section}"
        );
        assert_eq!(section.matches("<svg class=percent-plot").count(), 1);
        assert!(section.contains("rollout percent, last 11 windows"));
        assert_eq!(
            section.matches("<svg class=metric-plot").count(),
            2,
            "{section}"
        );
        assert!(section.contains("<h4>checkout_error_rate <small class=muted>guardrail · <span class=breached>breached in 1</span>"));
        assert!(section.contains("<h4>checkout_conversion <small class=muted>success</small>"));
        assert_eq!(section.matches("<circle").count(), 1, "one breached window");
        assert!(section.contains("▲ PAUSE") && section.contains("▲ ADVANCE"));
        // Percent steps: windows 0-3 at 5% (y 107.3), from window 4 on at 35% (y 79.1),
        // 24.8 pixels a window.
        assert!(
            section.contains("stroke='#1f77b4' stroke-width='2' points='36.0,107.3 60.8,107.3 60.8,107.3 85.6,107.3"),
            "{section}"
        );
        assert!(
            section.contains(" 110.4,107.3 135.2,107.3 135.2,79.1 160.0,79.1 "),
            "{section}"
        );
        assert!(section.contains(" 284.0,79.1 284.0,79.1'/>"), "{section}");
        assert!(section.contains(">35%</text>"), "{section}");
        // Commands, newest first, and what the platform did with them.
        let commands = section.split("<table class=commands>").nth(1).unwrap();
        let pause = commands.find("<b>PAUSE</b>").unwrap();
        let advance = commands.find("<b>ADVANCE</b>").unwrap();
        assert!(pause < advance);
        assert!(commands.contains("PAUSE &lt;reason&gt;"));
        assert!(commands.contains("<td>35 → 35</td>") && commands.contains("<td>5 → 35</td>"));
        assert!(commands.contains("<span class=breached>not applied yet</span> (serves 20%)"));
        assert!(commands.contains("applied 1970-01-01T01:15:01Z, approved by bob; serves 20%"));
        assert!(!page.contains("<script"), "no script");
        assert!(!page.contains("src="), "no external assets");
    }

    /// Names from the audit trail, evidence links and cohorts are escaped; an evidence
    /// reference with another scheme is never a link.
    #[tokio::test]
    async fn console_escapes_actor_names_and_evidence() {
        let s = shared();
        let mut r = entry(
            AuditKind::Approved,
            FLAG,
            "v'2",
            "<script>alert(1)</script>",
            5,
        );
        r.evidence = vec![
            "javascript:alert(1)".into(),
            "https://x.example/?a=1&b='2'".into(),
            format!("evaluation:{FLAG}/{COHORT}/900000"),
        ];
        r.summary = "<img src=x onerror=alert(1)>".into();
        s.record_audit(&r);
        let mut e = eval(0, 0.01, 5.0, None);
        e.cohort = "platform=<b>'x'</b>".into();
        s.record(&e, None);
        let Html(page) = status_page(State(s)).await;
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>'x'</b>"), "{page}");
        assert!(page.contains("approved by <b>&lt;script&gt;alert(1)&lt;/script&gt;</b>"));
        assert!(page.contains("data-cohort='platform=&lt;b&gt;&#39;x&#39;&lt;/b&gt;'"));
        assert!(page.contains("<code>javascript:alert(1)</code>"));
        assert!(!page.contains("href='javascript"));
        assert!(page.contains("<a href='https://x.example/?a=1&amp;b=&#39;2&#39;'>"));
        assert!(page.contains(&format!("<a href='/api/flags/{FLAG}/history'>evaluation:")));
        assert!(page.contains("<code title='v&#39;2'>"));
    }
}
