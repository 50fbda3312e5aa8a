//! Game days (`guardrail gameday`): inject a synthetic regression into one cohort of
//! one flag on a live cluster and measure the loop — injection → command on
//! `flag-commands` → change applied by the flag platform (`guardrail-applied`).
//!
//! The events are synthesised from the flag's own guardrail metrics (their `match`
//! conditions), so a game day exercises the policy as it is configured, not the demo's
//! vocabulary. Every synthetic event carries the attribute `gameday = <id>` (exclude it
//! from real analyses) and a user id `gameday-<id>-<n>`; treatment and control units
//! are drawn at the percent in effect, so the sample-ratio test sees the split it
//! expects. Events are written in guardrail's own schemas to the `[topics]` inputs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::clock::wall_ms;
use crate::config::Config;
use crate::ingest::decode::SchemaRegistry;
use crate::model::{Action, Channel, Outcome, Source};
use crate::policy::{FieldRef, Flag, Matcher, MetricKind, NumField, Policy};
use crate::sim::{SimBody, SimEvent};

/// What to inject.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Names this game day (the `gameday` attribute, the user ids).
    pub id: String,
    pub flag: String,
    /// `name=value` pairs of the flag's `cohort_by`, as `flag-commands` names cohorts.
    pub cohort: String,
    /// Per metric (by index into `Policy::metrics`): the factor applied to treatment.
    pub effects: Vec<(usize, f64)>,
    /// Units (sessions) per second.
    pub rate: f64,
    /// Treatment percent of the synthetic units (the percent in effect).
    pub percent: f64,
    /// Longest injection; the game day fails if no command came by then.
    pub duration: Duration,
    /// After the command, how long to wait for the platform's applied record.
    pub applied_wait: Duration,
    pub seed: u64,
}

/// Parses `--effect` values: `METRIC=xF` (or `METRIC=F`), METRIC being a metric's name
/// or the end of exactly one guardrail metric's name of the flag (`error_rate` for
/// `checkout_error_rate`).
pub fn parse_effects(
    policy: &Policy,
    flag: &Flag,
    effects: &[String],
) -> anyhow::Result<Vec<(usize, f64)>> {
    let mut out = Vec::new();
    for e in effects {
        let (name, factor) = e
            .split_once('=')
            .with_context(|| format!("--effect {e:?}: expected METRIC=xFACTOR (error_rate=x3)"))?;
        let factor: f64 = factor
            .trim_start_matches(['x', 'X', '*'])
            .parse()
            .ok()
            .filter(|f: &f64| f.is_finite() && *f > 0.0)
            .with_context(|| format!("--effect {e:?}: the factor must be a positive number"))?;
        let candidates: Vec<usize> = flag
            .guardrails
            .iter()
            .map(|g| g.metric)
            .filter(|&m| policy.metrics[m].name == name || policy.metrics[m].name.ends_with(name))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let metric = match candidates.as_slice() {
            [m] => *m,
            [] => bail!(
                "--effect {e:?}: no guardrail metric of flag {} is called {name:?} (its guardrails: {})",
                flag.key,
                flag.guardrails
                    .iter()
                    .map(|g| policy.metrics[g.metric].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => bail!("--effect {e:?}: {name:?} names several metrics; give the full name"),
        };
        out.push((metric, factor));
    }
    Ok(out)
}

/// Normalises a `--cohort` to the engine's cohort key (sorted `name=value` pairs) and
/// checks it names exactly the flag's `cohort_by` attributes.
pub fn cohort_key(flag: &Flag, cohort: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for part in cohort.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--cohort {cohort:?}: expected name=value[,name=value]"))?;
        pairs.push((k.trim().to_string(), v.trim().to_string()));
    }
    pairs.sort();
    let mut names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    names.dedup();
    let mut want: Vec<&str> = flag.cohort_by.iter().map(String::as_str).collect();
    want.sort();
    if names != want || names.len() != pairs.len() {
        bail!(
            "--cohort {cohort:?}: flag {} forms cohorts by {} (give each once, e.g. {})",
            flag.key,
            want.join(", "),
            want.iter()
                .map(|n| format!("{n}=..."))
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    Ok(pairs)
}

/// Synthesises the events of one unit (one session): an exposure, and for each of the
/// flag's guardrail metrics the events its definition counts, with treatment's rates
/// and values scaled by the effects.
pub struct Synth<'p> {
    policy: &'p Policy,
    flag: &'p Flag,
    spec: &'p Spec,
    cohort: Vec<(String, String)>,
    rng: SmallRng,
    n: u64,
}

/// Baselines of synthetic traffic: the rate of a rate metric (2%), the median of a
/// value (200, log-normal with σ 0.5: latency-like).
const BASE_RATE: f64 = 0.02;
const BASE_MEDIAN: f64 = 200.0;

impl<'p> Synth<'p> {
    pub fn new(policy: &'p Policy, flag: &'p Flag, spec: &'p Spec) -> anyhow::Result<Synth<'p>> {
        Ok(Synth {
            cohort: cohort_key(flag, &spec.cohort)?,
            policy,
            flag,
            spec,
            rng: SmallRng::seed_from_u64(spec.seed),
            n: 0,
        })
    }

    /// The events of the next unit, at `now` (epoch ms).
    pub fn unit(&mut self, now: i64) -> Vec<SimEvent> {
        self.n += 1;
        let treated =
            self.flag.control.is_none() || self.rng.random::<f64>() * 100.0 < self.spec.percent;
        let variant = if treated {
            self.flag.treatment.clone()
        } else {
            self.flag.control.clone().unwrap_or_default()
        };
        let user = format!("gameday-{}-{}", self.spec.id, self.n);
        let mut attributes = self.cohort.clone();
        attributes.push(("gameday".into(), self.spec.id.clone()));
        let mut events = Vec::new();
        let mut seq = 0;
        let mut event = |source: Source, extra: &[(String, String)], body: SimBody| {
            seq += 1;
            let mut attributes = attributes.clone();
            for (k, v) in extra {
                if !attributes.iter().any(|(a, _)| a == k) {
                    attributes.push((k.clone(), v.clone()));
                }
            }
            events.push(SimEvent {
                source,
                event_id: format!("{user}-{seq}"),
                timestamp: now,
                flags: vec![(self.flag.key.clone(), variant.clone())],
                attributes,
                user_id: Some(user.clone()),
                body,
            });
        };
        event(
            Source::Product,
            &[],
            SimBody::Product {
                journey: "gameday".into(),
                step: None,
                outcome: Outcome::Exposure,
                latency_ms: None,
                value: None,
            },
        );
        let mut metrics: Vec<usize> = self.flag.guardrails.iter().map(|g| g.metric).collect();
        metrics.sort_unstable();
        metrics.dedup();
        for m in metrics {
            let factor = if treated {
                self.spec
                    .effects
                    .iter()
                    .find(|(e, _)| *e == m)
                    .map_or(1.0, |(_, f)| *f)
            } else {
                1.0
            };
            match &self.policy.metrics[m].kind {
                MetricKind::Rate {
                    numerator,
                    denominator,
                } => {
                    let (source, extra, body) = matching(denominator, None);
                    event(source, &extra, body);
                    if self.rng.random::<f64>() < (BASE_RATE * factor).min(1.0) {
                        let (source, extra, body) = matching(numerator, None);
                        event(source, &extra, body);
                    }
                }
                MetricKind::Mean { matcher, field }
                | MetricKind::Quantile { matcher, field, .. } => {
                    // Log-normal around the baseline median: a latency-like tail.
                    let z: f64 = {
                        let (u1, u2): (f64, f64) =
                            (self.rng.random::<f64>().max(1e-12), self.rng.random());
                        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
                    };
                    let x = BASE_MEDIAN * (0.5 * z).exp() * factor;
                    let (source, extra, body) = matching(matcher, Some((*field, x)));
                    event(source, &extra, body);
                }
            }
        }
        events
    }
}

/// An event that `m` selects: each condition's first allowed value, guardrail's
/// defaults elsewhere; `value` sets the measured field.
fn matching(
    m: &Matcher,
    value: Option<(NumField, f64)>,
) -> (Source, Vec<(String, String)>, SimBody) {
    let cond = |f: &FieldRef| {
        m.conditions
            .iter()
            .find(|(c, _)| c == f)
            .and_then(|(_, vs)| vs.first().cloned())
    };
    let extra: Vec<(String, String)> = m
        .conditions
        .iter()
        .filter_map(|(f, vs)| match f {
            FieldRef::Attribute(a) => Some((a.clone(), vs.first()?.clone())),
            _ => None,
        })
        .collect();
    let num = |f: NumField| value.filter(|(n, _)| *n == f).map(|(_, x)| x);
    let body = match m.source {
        Source::Product => SimBody::Product {
            journey: cond(&FieldRef::Journey).unwrap_or_else(|| "gameday".into()),
            step: cond(&FieldRef::Step),
            outcome: cond(&FieldRef::Outcome)
                .and_then(|o| {
                    (0..8)
                        .filter_map(Outcome::from_index)
                        .find(|x| x.as_str() == o)
                })
                .unwrap_or(Outcome::Started),
            latency_ms: num(NumField::LatencyMs),
            value: num(NumField::Value),
        },
        Source::Errors => SimBody::Error {
            service: cond(&FieldRef::Service).unwrap_or_else(|| "gameday".into()),
            error_class: cond(&FieldRef::ErrorClass).unwrap_or_else(|| "GameDayError".into()),
            status_code: num(NumField::StatusCode).map(|x| x as i32).or(Some(500)),
            fatal: cond(&FieldRef::Fatal).is_some_and(|f| f == "true"),
            latency_ms: num(NumField::LatencyMs),
        },
        Source::Support => SimBody::Support {
            channel: cond(&FieldRef::Channel)
                .and_then(|c| {
                    (0..8)
                        .filter_map(Channel::from_index)
                        .find(|x| x.as_str() == c)
                })
                .unwrap_or(Channel::Chat),
            csat: num(NumField::Csat),
            sentiment: num(NumField::Sentiment),
            tags: vec!["gameday".into()],
        },
    };
    (m.source, extra, body)
}

/// What a game day measured (printed as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub gameday: String,
    pub flag: String,
    pub cohort: String,
    pub effects: HashMap<String, f64>,
    /// Epoch ms of the first injected event.
    pub started_at: i64,
    pub units: u64,
    pub events: u64,
    pub command: Option<CommandSeen>,
    pub applied: Option<AppliedSeen>,
    /// Injection → the command was issued (the engine's decision), seconds.
    pub cycle_time_to_command_s: Option<f64>,
    /// Injection → the platform applied it: the time treatment was served with the
    /// regression (time in unsafe exposure), seconds.
    pub cycle_time_to_applied_s: Option<f64>,
    /// Command issued → applied (signal to applied), seconds.
    pub command_to_applied_s: Option<f64>,
    /// Treatment units injected before the change was applied (or until the end).
    pub unsafe_units: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommandSeen {
    pub command_id: String,
    pub action: String,
    pub to_percent: f64,
    pub issued_at: i64,
    pub window_end: i64,
    pub watermark_lag_ms: Option<i64>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppliedSeen {
    pub percent: f64,
    pub applied_at: i64,
    pub approved_by: Option<String>,
}

/// Adds `topic`'s partitions to `consumer`'s assignment at their current ends (only what
/// comes next is read) or, with `from_start`, at their beginning; returns how many
/// partitions it has (0: the topic does not exist yet, nothing assigned).
fn watch(consumer: &BaseConsumer, topic: &str, from_start: bool) -> anyhow::Result<usize> {
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("metadata of {topic}"))?;
    let partitions = meta
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32);
    if partitions == 0 {
        return Ok(0);
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let offset = match from_start {
            true => Offset::Beginning,
            false => {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .with_context(|| format!("end offsets of {topic}"))?;
                Offset::Offset(high)
            }
        };
        tpl.add_partition_offset(topic, p, offset)?;
    }
    let mut current = consumer.assignment().unwrap_or_default();
    for e in tpl.elements() {
        current.add_partition_offset(e.topic(), e.partition(), e.offset())?;
    }
    consumer.assign(&current)?;
    Ok(partitions as usize)
}

/// Runs a game day against the cluster of `config`: injects until a PAUSE, ROLLBACK or
/// HOLD for the cohort arrives (or `spec.duration` passes), then waits up to
/// `spec.applied_wait` for the platform's applied record.
pub async fn run(config: &Config, policy: &Policy, spec: &Spec) -> anyhow::Result<Report> {
    let k = config
        .kafka
        .as_ref()
        .context("gameday needs the [kafka] section")?;
    let flag = policy
        .flags
        .iter()
        .find(|f| f.key == spec.flag)
        .with_context(|| format!("no flag {:?} in the config", spec.flag))?;
    let mut synth = Synth::new(policy, flag, spec)?;
    let cohort = synth
        .cohort
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let producer: FutureProducer = crate::kafka::producer_config(k)
        .set("linger.ms", "20")
        .create()
        .context("creating the producer")?;
    let watcher: BaseConsumer = crate::kafka::client_config(
        k,
        &[
            ("group.id", "guardrail-gameday"),
            ("enable.auto.commit", "false"),
            ("isolation.level", "read_committed"),
        ],
    )
    .create()
    .context("creating the consumer")?;
    let (commands_topic, applied_topic) = (
        config.topics.flag_commands.clone(),
        config.topics.applied.clone(),
    );
    let (watcher, mut applied_watched) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(BaseConsumer, bool)> {
            watch(&watcher, &commands_topic, false)?;
            // The applied-state topic exists once a platform subscriber published to it;
            // if it does not yet, it is looked for again while the game day runs.
            let watched = match watch(&watcher, &applied_topic, false) {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::info!(error = %e, "no applied-state topic yet");
                    false
                }
            };
            Ok((watcher, watched))
        })
        .await??;
    let mut applied_checked = Instant::now();
    let watcher = std::sync::Arc::new(watcher);
    let schemas = SchemaRegistry::shipped().map_err(anyhow::Error::msg)?;
    let reader = crate::kafka::OutputReader::commands()?;
    let effects = spec
        .effects
        .iter()
        .map(|(m, f)| (policy.metrics[*m].name.clone(), *f))
        .collect();
    let started_at = wall_ms();
    let t0 = Instant::now();
    tracing::info!(gameday = %spec.id, flag = %spec.flag, %cohort, "injecting");
    let (mut units, mut events, mut unsafe_units) = (0u64, 0u64, 0u64);
    let mut command: Option<CommandSeen> = None;
    let mut applied: Option<AppliedSeen> = None;
    let mut commanded_at: Option<Instant> = None;
    let tick = Duration::from_millis(100);
    loop {
        let elapsed = t0.elapsed();
        let injecting = command.is_none() && elapsed < spec.duration;
        // After the command, up to `applied_wait` for the platform's record.
        let waiting_applied = applied.is_none()
            && commanded_at.is_some_and(|t: Instant| t.elapsed() < spec.applied_wait);
        if !injecting && !waiting_applied {
            break;
        }
        if injecting || applied.is_none() {
            // Until the change is applied the cohort keeps receiving (regressed) traffic.
            // Paced by the clock, not by loop turns: a turn takes longer than its tick
            // when producing is slow or the machine is busy, and counting ticks would
            // then send less than `rate` (and starve windows of samples).
            let due = (spec.rate * t0.elapsed().as_secs_f64()) as u64;
            let mut batch = Vec::new();
            while units < due {
                let unit = synth.unit(wall_ms());
                units += 1;
                if unit[0].flags[0].1 == flag.treatment {
                    unsafe_units += 1;
                }
                batch.extend(unit);
            }
            events +=
                crate::kafka::produce_events(&producer, &config.topics, &schemas, &batch).await?;
        }
        // A platform subscriber that published its first record after the game day began
        // created the applied-state topic then: all of it is new, read from the start.
        if !applied_watched && applied_checked.elapsed() >= Duration::from_secs(1) {
            applied_checked = Instant::now();
            let (w, topic) = (watcher.clone(), config.topics.applied.clone());
            applied_watched = tokio::task::spawn_blocking(move || watch(&w, &topic, true))
                .await?
                .is_ok_and(|n| n > 0);
        }
        // Read what arrived.
        let w = watcher.clone();
        let polled = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            while let Some(Ok(m)) = w.poll(Duration::from_millis(0)) {
                got.push((
                    m.topic().to_string(),
                    m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                ));
            }
            got
        })
        .await?;
        for (topic, payload) in polled {
            if topic == config.topics.flag_commands && command.is_none() {
                let Ok(c) = reader.decode::<crate::records::FlagCommand>(&payload) else {
                    continue;
                };
                let stops = matches!(c.action, Action::Pause | Action::Rollback | Action::Hold);
                if c.flag_key == spec.flag
                    && c.cohort == cohort
                    && stops
                    && c.window_end > started_at
                {
                    tracing::info!(command_id = %c.command_id, action = ?c.action, "command");
                    commanded_at = Some(Instant::now());
                    command = Some(CommandSeen {
                        command_id: c.command_id,
                        action: format!("{:?}", c.action).to_uppercase(),
                        to_percent: c.to_percent,
                        issued_at: c.issued_at,
                        window_end: c.window_end,
                        watermark_lag_ms: c.watermark_lag_ms,
                        reason: c.reason,
                    });
                }
            } else if topic == config.topics.applied
                && let Some(c) = &command
                && let Ok(a) = serde_json::from_slice::<crate::apply::Applied>(&payload)
                && a.command_id == c.command_id
            {
                applied = Some(AppliedSeen {
                    percent: a.percent,
                    applied_at: a.applied_at,
                    approved_by: a.approved_by,
                });
            }
        }
        tokio::time::sleep(tick).await;
    }
    let secs = |ms: i64| ms as f64 / 1000.0;
    Ok(Report {
        gameday: spec.id.clone(),
        flag: spec.flag.clone(),
        cohort,
        effects,
        started_at,
        units,
        events,
        cycle_time_to_command_s: command.as_ref().map(|c| secs(c.issued_at - started_at)),
        cycle_time_to_applied_s: applied.as_ref().map(|a| secs(a.applied_at - started_at)),
        command_to_applied_s: command
            .as_ref()
            .zip(applied.as_ref())
            .map(|(c, a)| secs(a.applied_at - c.issued_at)),
        unsafe_units,
        command,
        applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> (Config, Policy) {
        let config = Config::parse(crate::demo::EXAMPLE_CONFIG).unwrap();
        let policy = Policy::compile(&config).unwrap();
        (config, policy)
    }

    #[test]
    fn effects_and_cohorts_are_checked_against_the_flag() {
        let (_, policy) = example();
        let flag = &policy.flags[0];
        let effects = parse_effects(&policy, flag, &["error_rate=x3".into()]).unwrap();
        assert_eq!(policy.metrics[effects[0].0].name, "checkout_error_rate");
        assert_eq!(effects[0].1, 3.0);
        let err = parse_effects(&policy, flag, &["bogus=x2".into()]).unwrap_err();
        assert!(err.to_string().contains("no guardrail metric"), "{err}");
        assert!(parse_effects(&policy, flag, &["error_rate=x0".into()]).is_err());
        assert_eq!(
            cohort_key(flag, "platform=mobile-web").unwrap(),
            vec![("platform".to_string(), "mobile-web".to_string())]
        );
        let err = cohort_key(flag, "region=eu").unwrap_err();
        assert!(
            err.to_string().contains("forms cohorts by platform"),
            "{err}"
        );
    }

    /// The synthetic events are counted by the flag's own metrics, in the cohort, and
    /// treatment's error rate is the baseline times the effect.
    #[test]
    fn synthetic_units_are_what_the_metrics_count() {
        let (_, policy) = example();
        let flag = &policy.flags[0];
        let spec = Spec {
            id: "t".into(),
            flag: flag.key.clone(),
            cohort: "platform=mobile-web".into(),
            effects: parse_effects(&policy, flag, &["error_rate=x4".into()]).unwrap(),
            rate: 1.0,
            percent: 50.0,
            duration: Duration::from_secs(1),
            applied_wait: Duration::from_secs(1),
            seed: 1,
        };
        let mut s = Synth::new(&policy, flag, &spec).unwrap();
        let m = parse_effects(&policy, flag, &["error_rate".to_string() + "=x1"]).unwrap()[0].0;
        let MetricKind::Rate {
            numerator,
            denominator,
        } = &policy.metrics[m].kind
        else {
            panic!("a rate")
        };
        let (mut num, mut den) = ([0u64; 2], [0u64; 2]);
        let schemas = SchemaRegistry::shipped().unwrap();
        let mut scratch = Vec::new();
        for _ in 0..40_000 {
            for e in s.unit(1_700_000_000_000) {
                assert_eq!(e.attribute("platform"), Some("mobile-web"));
                assert_eq!(e.attribute("gameday"), Some("t"));
                let arm = usize::from(e.flags[0].1 == flag.treatment);
                // Through the engine's own decoder and matcher.
                let bytes = e.single_object(schemas.current_fingerprint(e.source));
                let ev = schemas.decode(e.source, &bytes, &mut scratch).unwrap();
                if crate::window::matches(numerator, &ev) {
                    num[arm] += 1;
                }
                if crate::window::matches(denominator, &ev) {
                    den[arm] += 1;
                }
            }
        }
        let rate = |a: usize| num[a] as f64 / den[a] as f64;
        assert!((rate(0) - BASE_RATE).abs() < 0.006, "control {}", rate(0));
        assert!(
            (rate(1) - 4.0 * BASE_RATE).abs() < 0.012,
            "treatment {}",
            rate(1)
        );
        let share = den[1] as f64 / (den[0] + den[1]) as f64;
        assert!((share - 0.5).abs() < 0.02, "treatment share {share}");
    }
}
