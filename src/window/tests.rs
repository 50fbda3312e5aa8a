#![allow(clippy::needless_range_loop)] // arms and flags are indexed in step with expected arrays
//! Windows: assignment, exact per-cohort and per-arm counts, `*` as the sum of cohorts,
//! unmatched and late events, closing in order with gaps filled exactly once, the commit
//! bound, and the cohort cap.

use std::collections::BTreeMap;

use proptest::prelude::*;
use smallvec::SmallVec;

use super::*;
use crate::config::Config;
use crate::model::{Body, Channel, FlagRef, Source};
use crate::window::cohort::{ALL, OTHER};

const MIN: i64 = 60_000;
const SIZE: i64 = 15 * MIN;

/// Flag `f` (cohorts by platform, arms on/off) and flag `g` (no cohorts, arms t/c).
const CONFIG: &str = r#"
[window]
size = "15m"
max_cohorts_per_flag = 3

[[metrics]]
name = "err"
type = "rate"
numerator   = { source = "errors",  match = { service = "checkout" } }
denominator = { source = "product", match = { journey = "checkout", outcome = "STARTED" } }

[[metrics]]
name = "lat"
type = "mean"
source = "product"
field = "latency_ms"
match = { journey = "checkout" }

[[metrics]]
name = "csat"
type = "mean"
source = "support"
field = "csat"

[[flags]]
key = "f"
owner = "o"
treatment = "on"
control = "off"
cohort_by = ["platform"]
ramp = [10, 50, 100]
start_percent = 10
advance_when = "healthy"
  [[flags.guardrails]]
  metric = "err"
  max = 0.05
  [[flags.guardrails]]
  metric = "lat"
  max = 900.0
  severity = "warning"
  [[flags.guardrails]]
  metric = "csat"
  min = 2.5

[[flags]]
key = "g"
owner = "o"
treatment = "t"
control = "c"
ramp = [50, 100]
start_percent = 50
advance_when = "healthy"
  [[flags.guardrails]]
  metric = "err"
  max = 0.05
"#;

fn policy() -> Arc<Policy> {
    Arc::new(Policy::compile(&Config::parse(CONFIG).unwrap()).unwrap())
}

const PLATFORMS: [&str; 4] = ["ios", "android", "web", "tv"];
const F_VARIANTS: [&str; 3] = ["on", "off", "beta"];
const G_VARIANTS: [&str; 2] = ["t", "c"];

/// What an event is, in owned test form.
#[derive(Debug, Clone)]
struct E {
    t: i64,
    /// Index into PLATFORMS, or missing.
    platform: Option<usize>,
    /// Index into F_VARIANTS, or the flag absent.
    f: Option<usize>,
    g: Option<usize>,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Exposure,
    Started,
    Completed(f64),
    CheckoutError,
    SearchError,
    Survey(f64),
}

fn event_ref(e: &E) -> EventRef<'static> {
    let mut flags: SmallVec<[FlagRef<'static>; 4]> = SmallVec::new();
    if let Some(v) = e.f {
        flags.push(FlagRef {
            key: "f",
            variant: F_VARIANTS[v],
        });
    }
    // An unconfigured flag is ignored.
    flags.push(FlagRef {
        key: "unrelated",
        variant: "on",
    });
    if let Some(v) = e.g {
        flags.push(FlagRef {
            key: "g",
            variant: G_VARIANTS[v],
        });
    }
    let mut attributes = SmallVec::new();
    attributes.push(("region", "eu"));
    if let Some(p) = e.platform {
        attributes.push(("platform", PLATFORMS[p]));
    }
    let product = |outcome, latency_ms| Body::Product {
        journey: "checkout",
        step: None,
        outcome,
        latency_ms,
        value: None,
    };
    let error = |service| Body::Error {
        service,
        error_class: "X",
        status_code: Some(500),
        fatal: false,
        latency_ms: Some(1.0),
    };
    let body = match e.kind {
        Kind::Exposure => product(Outcome::Exposure, None),
        Kind::Started => product(Outcome::Started, None),
        Kind::Completed(l) => product(Outcome::Completed, Some(l)),
        Kind::CheckoutError => error("checkout"),
        Kind::SearchError => error("search"),
        Kind::Survey(c) => Body::Support {
            channel: Channel::Survey,
            csat: Some(c),
            sentiment: None,
            tags: SmallVec::new(),
        },
    };
    EventRef {
        event_id: "e",
        timestamp: e.t,
        flags,
        attributes,
        user_id: None,
        body,
    }
}

fn source_of(k: Kind) -> Source {
    match k {
        Kind::Exposure | Kind::Started | Kind::Completed(_) => Source::Product,
        Kind::CheckoutError | Kind::SearchError => Source::Errors,
        Kind::Survey(_) => Source::Support,
    }
}

fn part(n: i32) -> PartitionKey {
    PartitionKey {
        input: 0,
        partition: n,
    }
}

fn simple(t: i64, platform: usize, variant: usize, kind: Kind) -> E {
    E {
        t,
        platform: Some(platform),
        f: Some(variant),
        g: None,
        kind,
    }
}

fn record(w: &mut Windows, e: &E) -> Recorded {
    w.record(part(source_of(e.kind) as i32), 0, &event_ref(e))
}

/// The expected state of one arm of one cell.
#[derive(Debug, Clone, Default, PartialEq)]
struct Expect {
    events: u64,
    exposures: u64,
    err: (u64, u64),
    lat_n: u64,
    lat_sum: f64,
    csat_n: u64,
    csat_sum: f64,
}

impl Expect {
    /// Flag `g` (index 1) aggregates only `err`.
    fn add(&mut self, flag: usize, k: Kind) {
        self.events += 1;
        if flag == 1 && matches!(k, Kind::Completed(_) | Kind::Survey(_)) {
            return;
        }
        match k {
            Kind::Exposure => self.exposures += 1,
            Kind::Started => self.err.1 += 1,
            Kind::Completed(l) => {
                self.lat_n += 1;
                self.lat_sum += l;
            }
            Kind::CheckoutError => self.err.0 += 1,
            Kind::SearchError => {}
            Kind::Survey(c) => {
                self.csat_n += 1;
                self.csat_sum += c;
            }
        }
    }
}

/// Reads one arm of a cell back into an `Expect` (flag `f` has all three metrics).
fn observed(policy: &Policy, flag: usize, arm: &Arm) -> Expect {
    let f = &policy.flags[flag];
    let mut out = Expect {
        events: arm.events,
        exposures: arm.exposures,
        ..Expect::default()
    };
    for (slot, &m) in f.metric_ids.iter().enumerate() {
        match (policy.metrics[m].name.as_str(), &arm.aggs[slot]) {
            ("err", Agg::Rate { num, den, .. }) => out.err = (*num, *den),
            ("lat", Agg::Mean { n, sum, .. }) => (out.lat_n, out.lat_sum) = (*n, *sum),
            ("csat", Agg::Mean { n, sum, .. }) => (out.csat_n, out.csat_sum) = (*n, *sum),
            (name, agg) => panic!("unexpected {name}: {agg:?}"),
        }
    }
    out
}

fn cohort_name(e: &E) -> String {
    format!(
        "platform={}",
        e.platform.map_or("unknown", |p| PLATFORMS[p])
    )
}

fn cell<'a>(w: &'a ClosedWindow, flag: usize, cohort: &str) -> Option<&'a Cell> {
    w.flags[flag]
        .cohorts
        .iter()
        .find(|(c, _)| c == cohort)
        .map(|(_, c)| c)
}

fn floor_start(t: i64) -> i64 {
    ((t as i128).div_euclid(SIZE as i128) * SIZE as i128) as i64
}

// ---- assignment ---------------------------------------------------------------------

#[test]
fn window_start_at_the_edges() {
    let w = Windows::new(policy());
    assert_eq!(w.window_start(0), 0);
    assert_eq!(w.window_start(SIZE - 1), 0);
    assert_eq!(w.window_start(SIZE), SIZE);
    assert_eq!(w.window_start(-1), -SIZE);
    assert_eq!(w.window_start(-SIZE), -SIZE);
    assert_eq!(w.window_start(-SIZE - 1), -2 * SIZE);
    assert_eq!(w.window_start(1_700_000_123_456), 1_700_000_100_000);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// An event lands in window floor(t / size) * size, wherever t is.
    #[test]
    fn an_event_lands_in_its_window(
        t in prop_oneof![
            -10_000_000_000_000i64..10_000_000_000_000,
            -3 * SIZE..3 * SIZE,
            (-100i64..100).prop_map(|k| k * SIZE),
            (-100i64..100).prop_map(|k| k * SIZE - 1),
        ],
        platform in 0usize..4, variant in 0usize..2,
    ) {
        let policy = policy();
        let mut w = Windows::new(policy.clone());
        prop_assert_eq!(w.window_start(t), floor_start(t));
        let e = simple(t, platform, variant, Kind::Started);
        prop_assert_eq!(record(&mut w, &e), Recorded::Accepted);
        prop_assert_eq!(w.open_windows(), 1);
        let closed = w.close_all();
        prop_assert_eq!(closed.len(), 1);
        let c = &closed[0];
        prop_assert_eq!(c.start, floor_start(t));
        prop_assert_eq!(c.end, floor_start(t) + SIZE);
        prop_assert!(c.start <= t && t < c.end);
        let cl = cell(c, 0, &cohort_name(&e)).unwrap();
        prop_assert_eq!(cl[variant].events, 1);
        prop_assert_eq!(cl[1 - variant].events, 0);
        prop_assert_eq!(cell(c, 0, ALL).unwrap()[variant].events, 1);
        prop_assert_eq!(w.open_windows(), 0);
        prop_assert_eq!(w.active_cells(), 0);
    }
}

// ---- counts -------------------------------------------------------------------------

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Exposure),
        Just(Kind::Started),
        (0.0f64..5000.0).prop_map(Kind::Completed),
        Just(Kind::CheckoutError),
        Just(Kind::SearchError),
        (1u8..=5).prop_map(|c| Kind::Survey(f64::from(c))),
    ]
}

/// Events in windows 0..8, any cohort (including a missing platform), any variant of
/// either flag or none.
fn events() -> impl Strategy<Value = Vec<E>> {
    prop::collection::vec(
        (
            0i64..8 * SIZE,
            proptest::option::of(0usize..4),
            proptest::option::of(0usize..3),
            proptest::option::of(0usize..2),
            kind(),
        )
            .prop_map(|(t, platform, f, g, kind)| E {
                t,
                platform,
                f,
                g,
                kind,
            }),
        0..200,
    )
}

fn base() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(-4 * SIZE),
        Just(1_700_000_100_000),
        (-1000i64..1000).prop_map(|k| k * SIZE + 7),
    ]
}

/// The arm of flag `fi` an event counts in, if any.
fn arm_of(e: &E, fi: usize) -> Option<usize> {
    match fi {
        0 => e.f.filter(|v| *v < 2),
        _ => e.g,
    }
}

/// What every window, flag, cohort and arm must hold.
type Model = BTreeMap<(i64, usize, String, usize), Expect>;

/// Flag `f`'s cohort names as the cap (3) assigns them: in order of first sight.
#[derive(Default)]
struct Cohorts(Vec<String>);

impl Cohorts {
    fn name(&mut self, e: &E) -> String {
        let raw = cohort_name(e);
        if self.0.contains(&raw) {
            raw
        } else if self.0.len() < 3 {
            self.0.push(raw.clone());
            raw
        } else {
            OTHER.to_string()
        }
    }
}

/// Adds an accepted event to the model.
fn add_to_model(model: &mut Model, cohorts: &mut Cohorts, e: &E) {
    let start = floor_start(e.t);
    for fi in 0..2 {
        let Some(arm) = arm_of(e, fi) else { continue };
        let mut names = vec![ALL.to_string()];
        if fi == 0 {
            names.push(cohorts.name(e));
        }
        for c in names {
            model
                .entry((start, fi, c, arm))
                .or_default()
                .add(fi, e.kind);
        }
    }
}

fn close_enough(a: &Expect, b: &Expect) -> bool {
    let near = |x: f64, y: f64| (x - y).abs() <= 1e-6 * (1.0 + x.abs().max(y.abs()));
    Expect {
        lat_sum: 0.0,
        csat_sum: 0.0,
        ..a.clone()
    } == Expect {
        lat_sum: 0.0,
        csat_sum: 0.0,
        ..b.clone()
    } && near(a.lat_sum, b.lat_sum)
        && near(a.csat_sum, b.csat_sum)
}

/// Checks every cell of the closed windows against the model, and `*` = sum of cohorts.
fn check_cells(
    policy: &Policy,
    closed: &[ClosedWindow],
    model: &Model,
) -> Result<(), TestCaseError> {
    let empty = Expect::default();
    for w in closed {
        for (fi, flag) in w.flags.iter().enumerate() {
            let names: Vec<&str> = flag.cohorts.iter().map(|(c, _)| c.as_str()).collect();
            prop_assert_eq!(names[0], ALL);
            if fi == 1 {
                prop_assert_eq!(names.len(), 1, "flag g has no cohorts");
            }
            let template: Vec<Agg> = policy.flags[fi]
                .metric_ids
                .iter()
                .map(|&m| Agg::new(&policy.metrics[m]))
                .collect();
            let mut sums = [Arm::new(&template), Arm::new(&template)];
            for (name, cell) in &flag.cohorts {
                for arm in 0..2 {
                    let want = model
                        .get(&(w.start, fi, name.clone(), arm))
                        .unwrap_or(&empty);
                    let got = observed(policy, fi, &cell[arm]);
                    prop_assert!(
                        close_enough(&got, want),
                        "window {} flag {} cohort {} arm {}: {:?} != {:?}",
                        w.start,
                        fi,
                        name,
                        arm,
                        got,
                        want
                    );
                    if name != ALL {
                        sums[arm].merge(&cell[arm]);
                    }
                }
            }
            if fi == 0 {
                for arm in 0..2 {
                    let all = observed(policy, fi, &flag.cohorts[0].1[arm]);
                    let sum = observed(policy, fi, &sums[arm]);
                    prop_assert!(
                        close_enough(&all, &sum),
                        "* != sum of cohorts: {:?} {:?}",
                        all,
                        sum
                    );
                }
            }
        }
    }
    // Every non-empty model cell was emitted.
    for (key, want) in model {
        let w = closed.iter().find(|w| w.start == key.0);
        prop_assert!(w.is_some(), "window {} never closed", key.0);
        let got = cell(w.unwrap(), key.1, &key.2).map(|c| observed(policy, key.1, &c[key.3]));
        prop_assert!(got.is_some_and(|g| close_enough(&g, want)), "{:?}", key);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Exact counts per window, flag, cohort and arm; `*` is the sum of the cohorts;
    /// unmatched events count nowhere.
    #[test]
    fn counts_are_exact_per_cohort_and_arm(base in base(), evs in events()) {
        let policy = policy();
        let mut w = Windows::new(policy.clone());
        let mut model = Model::new();
        let mut cohorts = Cohorts::default();
        for e in evs.iter().map(|e| E { t: base + e.t, ..e.clone() }) {
            let matched = arm_of(&e, 0).is_some() || arm_of(&e, 1).is_some();
            let r = record(&mut w, &e);
            prop_assert_eq!(r, if matched { Recorded::Accepted } else { Recorded::Unmatched });
            if matched {
                add_to_model(&mut model, &mut cohorts, &e);
            }
        }
        let closed = w.close_all();
        check_cells(&policy, &closed, &model)?;
        prop_assert_eq!(w.active_cells(), 0);
    }
}

#[test]
fn unmatched_events_are_not_counted() {
    let policy = policy();
    let mut w = Windows::new(policy);
    // No configured flag, a variant that is neither treatment nor control, flag absent.
    let cases = [
        E {
            t: 10,
            platform: Some(0),
            f: None,
            g: None,
            kind: Kind::Started,
        },
        E {
            t: 10,
            platform: Some(0),
            f: Some(2),
            g: None,
            kind: Kind::Started,
        },
    ];
    for e in &cases {
        assert_eq!(record(&mut w, e), Recorded::Unmatched);
    }
    assert_eq!(w.open_windows(), 0);
    assert_eq!(w.active_cells(), 0);
    assert!(w.close_until(10 * SIZE).is_empty());
    // A matched event for `g` with an unknown `f` variant counts for `g` only.
    let e = E {
        t: 10,
        platform: Some(0),
        f: Some(2),
        g: Some(1),
        kind: Kind::Started,
    };
    assert_eq!(record(&mut w, &e), Recorded::Accepted);
    let closed = w.close_all();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].flags[0].cohorts.len(), 1, "f saw no cohort");
    assert_eq!(closed[0].flags[0].cohorts[0].1[0].events, 0);
    assert_eq!(closed[0].flags[1].cohorts[0].1[1].events, 1);
}

#[test]
fn a_flag_repeated_in_one_event_counts_once() {
    let mut w = Windows::new(policy());
    let mut ev = event_ref(&simple(5, 0, 0, Kind::Started));
    ev.flags.push(FlagRef {
        key: "f",
        variant: "off",
    });
    assert_eq!(w.record(part(0), 0, &ev), Recorded::Accepted);
    let closed = w.close_all();
    let all = cell(&closed[0], 0, ALL).unwrap();
    assert_eq!(
        (all[0].events, all[1].events),
        (1, 0),
        "first evaluation wins"
    );
}

// ---- closing ------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Event(E),
    Close(i64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => (
                0i64..8 * SIZE,
                proptest::option::of(0usize..4),
                proptest::option::of(0usize..3),
                proptest::option::of(0usize..2),
                kind(),
            )
                .prop_map(|(t, platform, f, g, kind)| Op::Event(E { t, platform, f, g, kind })),
            1 => prop_oneof![
                -2 * SIZE..11 * SIZE,
                (-2i64..11).prop_map(|k| k * SIZE),
                (-2i64..11).prop_map(|k| k * SIZE - 1),
            ]
            .prop_map(Op::Close),
        ],
        0..120,
    )
}

/// Takes the output of one close: notes how far windows are closed, moves the late
/// events recorded since the previous close to "expected", checks the shape.
fn absorb(
    out: Vec<ClosedWindow>,
    closed_end: &mut i64,
    late_pending: &mut [u64; 2],
    late_expected: &mut [u64; 2],
    emitted: &mut Vec<ClosedWindow>,
) -> Result<(), TestCaseError> {
    if let Some(last) = out.last() {
        for fi in 0..2 {
            late_expected[fi] += std::mem::take(&mut late_pending[fi]);
        }
        *closed_end = last.end;
    }
    for (i, c) in out.iter().enumerate() {
        prop_assert_eq!(c.end - c.start, SIZE);
        prop_assert_eq!(c.start.rem_euclid(SIZE), 0);
        if i + 1 < out.len() {
            prop_assert_eq!(
                c.flags.iter().map(|f| f.late_events).sum::<u64>(),
                0,
                "late events ride on the last window of a close"
            );
        }
    }
    emitted.extend(out);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With any interleaving of events and (possibly non-monotonic) watermarks: windows
    /// close in order, each exactly once, with the empty ones in gaps; none before the
    /// first event's window; an event is late exactly when its window has closed; and
    /// every accepted event is counted in the window it belongs to.
    #[test]
    fn close_until_emits_each_window_once_in_order(base in base(), ops in ops()) {
        let policy = policy();
        let mut w = Windows::new(policy.clone());
        let mut emitted: Vec<ClosedWindow> = Vec::new();
        let mut closed_end = i64::MIN;
        let mut model = Model::new();
        let mut cohorts = Cohorts::default();
        let mut first_accepted: Option<i64> = None;
        let mut late_pending = [0u64; 2];
        let mut late_reported = [0u64; 2];
        let mut late_expected = [0u64; 2];
        for op in ops {
            match op {
                Op::Event(e) => {
                    let e = E { t: base + e.t, ..e };
                    let matched = arm_of(&e, 0).is_some() || arm_of(&e, 1).is_some();
                    let r = record(&mut w, &e);
                    let end = floor_start(e.t) + SIZE;
                    let expect = if !matched {
                        Recorded::Unmatched
                    } else if end <= closed_end {
                        Recorded::Late
                    } else {
                        Recorded::Accepted
                    };
                    prop_assert_eq!(r, expect, "event at {} (closed until {})", e.t, closed_end);
                    match r {
                        Recorded::Accepted => {
                            add_to_model(&mut model, &mut cohorts, &e);
                            let s = floor_start(e.t);
                            first_accepted = Some(first_accepted.map_or(s, |f: i64| f.min(s)));
                        }
                        Recorded::Late => {
                            for fi in 0..2 {
                                late_pending[fi] += u64::from(arm_of(&e, fi).is_some());
                            }
                        }
                        Recorded::Unmatched => {}
                    }
                }
                Op::Close(wm) => {
                    let out = w.close_until(base + wm);
                    for c in &out {
                        prop_assert!(c.end <= base + wm, "window {}..{} closed at watermark {}", c.start, c.end, base + wm);
                    }
                    if out.is_empty() && closed_end != i64::MIN {
                        prop_assert!(floor_start(base + wm) <= closed_end);
                    }
                    absorb(out, &mut closed_end, &mut late_pending, &mut late_expected, &mut emitted)?;
                }
            }
        }
        let out = w.close_all();
        absorb(out, &mut closed_end, &mut late_pending, &mut late_expected, &mut emitted)?;
        for c in &emitted {
            for fi in 0..2 {
                late_reported[fi] += c.flags[fi].late_events;
            }
        }
        prop_assert_eq!(late_reported, late_expected);
        // In order, contiguous, each once.
        for pair in emitted.windows(2) {
            prop_assert_eq!(pair[1].start, pair[0].end, "gap or repeat");
        }
        match first_accepted {
            // No empty window before the first event's window.
            Some(first) => prop_assert_eq!(emitted.first().map(|c| c.start), Some(first)),
            None => prop_assert!(emitted.is_empty()),
        }
        check_cells(&policy, &emitted, &model)?;
        prop_assert_eq!(w.open_windows(), 0);
        prop_assert_eq!(w.active_cells(), 0);
        // Closing again emits nothing.
        prop_assert!(w.close_all().is_empty());
        prop_assert!(w.close_until(closed_end.max(base + 20 * SIZE)).len() as i64 <= 20);
    }
}

#[test]
fn empty_windows_fill_gaps_and_watermark_must_pass_the_end() {
    let mut w = Windows::new(policy());
    record(&mut w, &simple(2 * SIZE + 1, 0, 0, Kind::Started));
    record(&mut w, &simple(5 * SIZE + 1, 0, 1, Kind::Started));
    // The watermark inside window 2: nothing closes, not even earlier empty windows.
    assert!(w.close_until(3 * SIZE - 1).is_empty());
    let out = w.close_until(3 * SIZE);
    assert_eq!(
        out.iter().map(|c| c.start).collect::<Vec<_>>(),
        vec![2 * SIZE]
    );
    // Non-monotonic and equal watermarks close nothing more.
    assert!(w.close_until(3 * SIZE).is_empty());
    assert!(w.close_until(0).is_empty());
    let out = w.close_until(7 * SIZE + 5);
    assert_eq!(
        out.iter().map(|c| c.start / SIZE).collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    // Empty windows carry every cohort the flag has seen, with zero counts.
    let empty = &out[0];
    assert_eq!(empty.flags[0].cohorts.len(), 2);
    assert!(
        empty.flags[0]
            .cohorts
            .iter()
            .all(|(_, c)| c[0].events + c[1].events == 0)
    );
    assert_eq!(cell(&out[2], 0, "platform=ios").unwrap()[1].events, 1);
    assert_eq!(w.closed_before(), 7 * SIZE);
    // Late now.
    assert_eq!(
        record(&mut w, &simple(6 * SIZE + 2, 0, 0, Kind::Started)),
        Recorded::Late
    );
    assert_eq!(
        record(&mut w, &simple(7 * SIZE, 0, 0, Kind::Started)),
        Recorded::Accepted
    );
    let out = w.close_all();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].start, 7 * SIZE);
    assert_eq!(out[0].flags[0].late_events, 1);
    assert_eq!(out[0].flags[1].late_events, 0);
}

#[test]
fn an_event_before_the_first_open_window_is_not_late_until_something_closes() {
    let mut w = Windows::new(policy());
    record(&mut w, &simple(5 * SIZE, 0, 0, Kind::Started));
    // The watermark is past window 1 but no window has closed yet.
    assert!(w.close_until(5 * SIZE + 10).is_empty());
    assert_eq!(
        record(&mut w, &simple(SIZE + 1, 0, 0, Kind::Started)),
        Recorded::Accepted
    );
    let out = w.close_until(6 * SIZE);
    assert_eq!(
        out.iter().map(|c| c.start / SIZE).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
}

#[test]
fn a_long_gap_does_not_emit_a_week_of_empty_windows() {
    let mut w = Windows::new(policy());
    record(&mut w, &simple(0, 0, 0, Kind::Started));
    assert_eq!(w.close_until(SIZE).len(), 1);
    let far = 10_000 * SIZE;
    record(&mut w, &simple(far, 0, 0, Kind::Started));
    let out = w.close_until(far + SIZE);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].start, far);
}

/// Extreme event times (any Avro long is valid input) must not panic or wedge the window
/// stage: an event within a window of i64::MIN lands in the first window and is late once
/// anything closed; every window still closes. (The last window before i64::MAX, whose end
/// is not representable, never closes; the engine rejects such events as `future` first.)
#[test]
fn extreme_timestamps_do_not_panic() {
    for t in [
        i64::MIN,
        i64::MIN + 1,
        i64::MIN + 2 * SIZE,
        i64::MAX - 2 * SIZE,
    ] {
        let mut w = Windows::new(policy());
        let start = w.window_start(t);
        assert!(start <= t && t - start < 2 * SIZE, "{t}: {start}");
        assert_eq!(
            record(&mut w, &simple(t, 0, 0, Kind::Started)),
            Recorded::Accepted
        );
        assert_eq!(
            record(&mut w, &simple(0, 0, 0, Kind::Started)),
            Recorded::Accepted
        );
        let out = w.close_until(SIZE);
        assert!(out.len() <= 2, "{t}: {} windows", out.len());
        assert_eq!(out.last().map(|c| c.start), Some(0));
        let again = record(&mut w, &simple(t, 0, 0, Kind::Started));
        assert_eq!(
            again,
            if t < 0 {
                Recorded::Late
            } else {
                Recorded::Accepted
            }
        );
        let rest = w.close_all();
        assert!(rest.len() <= 2, "{t}: {} windows", rest.len());
        assert_eq!(w.open_windows(), 0, "{t}");
    }
}

// ---- commit bound -------------------------------------------------------------------

#[test]
fn min_open_offset_tracks_the_oldest_open_window() {
    let mut w = Windows::new(policy());
    let ev = |t| event_ref(&simple(t, 0, 0, Kind::Started));
    assert_eq!(w.min_open_offset(part(0)), None);
    w.record(part(0), 10, &ev(1));
    w.record(part(0), 11, &ev(SIZE + 1));
    w.record(part(0), 12, &ev(2));
    w.record(part(1), 500, &ev(SIZE + 2));
    w.record(part(1), 501, &ev(3));
    // An unmatched record does not hold anything back.
    let mut unmatched = ev(4);
    unmatched.flags.clear();
    assert_eq!(w.record(part(2), 7, &unmatched), Recorded::Unmatched);
    assert_eq!(w.min_open_offset(part(0)), Some(10));
    assert_eq!(w.min_open_offset(part(1)), Some(500));
    assert_eq!(w.min_open_offset(part(2)), None);
    assert_eq!(w.close_until(SIZE).len(), 1);
    assert_eq!(w.min_open_offset(part(0)), Some(11));
    assert_eq!(w.min_open_offset(part(1)), Some(500));
    w.close_all();
    assert_eq!(w.min_open_offset(part(0)), None);
    assert_eq!(w.min_open_offset(part(1)), None);
    // A late record does not open anything.
    assert_eq!(w.record(part(0), 99, &ev(5)), Recorded::Late);
    assert_eq!(w.min_open_offset(part(0)), None);
}

// ---- cohort cap ---------------------------------------------------------------------

#[test]
fn cohorts_beyond_the_cap_fold_into_other() {
    let policy = policy();
    assert_eq!(policy.window.max_cohorts_per_flag, 3);
    let mut w = Windows::new(policy.clone());
    let mut model = Model::new();
    // ios, android, web get their own cohorts; tv and a missing platform fold into other.
    let evs: Vec<E> = [
        (Some(0), 0),
        (Some(1), 1),
        (Some(2), 0),
        (Some(3), 0),
        (None, 1),
        (Some(3), 1),
        (Some(0), 1),
    ]
    .into_iter()
    .map(|(platform, v)| E {
        t: 100,
        platform,
        f: Some(v),
        g: Some(v),
        kind: Kind::Started,
    })
    .collect();
    for e in &evs {
        assert_eq!(record(&mut w, e), Recorded::Accepted);
        let start = floor_start(e.t);
        let arm = e.f.unwrap();
        let name = match e.platform {
            Some(p) if p < 3 => cohort_name(e),
            _ => OTHER.to_string(),
        };
        for c in [ALL.to_string(), name] {
            model.entry((start, 0, c, arm)).or_default().add(0, e.kind);
        }
        model
            .entry((start, 1, ALL.to_string(), arm))
            .or_default()
            .add(1, e.kind);
    }
    assert_eq!(w.cohort_overflows(), 3);
    let closed = w.close_all();
    let names: Vec<&str> = closed[0].flags[0]
        .cohorts
        .iter()
        .map(|(c, _)| c.as_str())
        .collect();
    assert_eq!(
        names,
        vec![
            "*",
            "platform=ios",
            "platform=android",
            "platform=web",
            "other"
        ]
    );
    check_cells(&policy, &closed, &model).unwrap();
    let other = cell(&closed[0], 0, OTHER).unwrap();
    assert_eq!((other[0].events, other[1].events), (1, 2));
}

/// One event with a garbage timestamp (epoch 0) before the first close must not make the
/// next close synthesize fifty years of empty windows: the stretch is skipped, the two
/// windows with data close.
#[test]
fn an_epoch_zero_event_does_not_emit_fifty_years_of_windows() {
    let now = 1_700_000_100_000;
    let mut w = Windows::new(policy());
    record(&mut w, &simple(0, 0, 0, Kind::Started));
    record(&mut w, &simple(now + 1, 0, 1, Kind::Started));
    let out = w.close_until(now + SIZE);
    let starts: Vec<i64> = out.iter().map(|c| c.start).collect();
    assert_eq!(starts, vec![0, now]);
    assert_eq!(cell(&out[0], 0, ALL).unwrap()[0].events, 1);
    assert_eq!(cell(&out[1], 0, ALL).unwrap()[1].events, 1);
}
