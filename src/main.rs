//! guardrail's binary: parse the CLI, set up logging, dispatch. See `guardrail --help`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use guardrail::cli::{ApplyAction, ApplyArgs, Cli, Command, LogFormat, PolicyAction};
use guardrail::model::Source;
use guardrail::replay::{self, ReplayError};
use guardrail::{policy, sim};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; keep library chatter out of it unless RUST_LOG asks.
    let default_filter = if matches!(cli.command, Command::Demo { .. }) {
        "warn,librdkafka=off,rdkafka=off"
    } else {
        "info,rdkafka=warn"
    };
    init_tracing(cli.log_format, default_filter);
    match cli.command {
        Command::Check { config, offline } => check(&config, offline),
        Command::Replay {
            config,
            product_events,
            error_events,
            support_signals,
            commands_out,
            evaluations_out,
            report,
        } => {
            let policy = match load(&config) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let files: Vec<(Source, std::path::PathBuf)> = [
                (Source::Product, product_events),
                (Source::Errors, error_events),
                (Source::Support, support_signals),
            ]
            .into_iter()
            .filter_map(|(s, p)| p.map(|p| (s, p)))
            .collect();
            match run_replay(
                policy,
                &files,
                commands_out.as_deref(),
                evaluations_out.as_deref(),
                report.as_deref(),
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("guardrail replay: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Generate {
            out,
            windows,
            sessions,
            start_ms,
        } => match generate(&out, windows, sessions, start_ms) {
            Ok(n) => {
                eprintln!("wrote {n} events to {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("guardrail generate: {e}");
                ExitCode::from(1)
            }
        },
        Command::Run {
            config,
            grace,
            stage,
        } => {
            let Ok((config, policy)) = load_both(&config) else {
                return ExitCode::from(2);
            };
            let stage = guardrail::app::Stage::parse(&stage).expect("clap checked it");
            exit(guardrail::app::run(
                config,
                policy,
                std::time::Duration::from_secs(grace),
                stage,
            ))
        }
        Command::Apply(args) => apply(args),
        Command::Policy { action } => policy_command(action),
        Command::Gameday {
            config,
            flag,
            cohort,
            effects,
            duration,
            applied_wait,
            rate,
            percent,
            id,
        } => gameday(
            &config,
            flag,
            cohort,
            &effects,
            &duration,
            &applied_wait,
            rate,
            percent,
            id,
        ),
        Command::Demo {
            config,
            format,
            windows,
            sessions,
            listen,
            linger,
        } => exit(guardrail::demo::run(
            config.as_deref(),
            guardrail::ingest::foreign::DemoFormat::parse(&format)
                .unwrap_or(guardrail::ingest::foreign::DemoFormat::Avro),
            windows,
            sessions,
            &listen,
            std::time::Duration::from_secs(linger),
        )),
    }
}

#[allow(clippy::too_many_arguments)] // the subcommand's flags, spelled out
fn gameday(
    path: &std::path::Path,
    flag: String,
    cohort: String,
    effects: &[String],
    duration: &str,
    applied_wait: &str,
    rate: f64,
    percent: Option<f64>,
    id: Option<String>,
) -> ExitCode {
    let Ok((config, policy)) = load_both(path) else {
        return ExitCode::from(2);
    };
    let spec = (|| -> anyhow::Result<guardrail::gameday::Spec> {
        let f =
            policy.flags.iter().find(|f| f.key == flag).ok_or_else(|| {
                anyhow::anyhow!("--flag {flag:?}: not a flag of {}", path.display())
            })?;
        guardrail::gameday::cohort_key(f, &cohort)?;
        let dur = |name: &str, t: &str| {
            guardrail::config::parse_duration(t).map_err(|e| anyhow::anyhow!("--{name} {t:?}: {e}"))
        };
        if !(rate.is_finite() && rate > 0.0) {
            anyhow::bail!("--rate must be a positive number of units per second");
        }
        let percent = percent.unwrap_or(f.start_percent);
        if !(0.0..=100.0).contains(&percent) {
            anyhow::bail!("--percent must be within [0, 100]");
        }
        Ok(guardrail::gameday::Spec {
            id: id.unwrap_or_else(|| format!("gd{}", guardrail::clock::wall_ms() / 1000)),
            effects: guardrail::gameday::parse_effects(&policy, f, effects)?,
            flag: flag.clone(),
            cohort: cohort.clone(),
            rate,
            percent,
            duration: dur("duration", duration)?,
            applied_wait: dur("applied-wait", applied_wait)?,
            seed: guardrail::clock::wall_ms() as u64,
        })
    })();
    let spec = match spec {
        Ok(s) => s,
        Err(e) => {
            eprintln!("guardrail gameday: {e:#}");
            return ExitCode::from(2);
        }
    };
    let report = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(guardrail::gameday::run(&config, &policy, &spec)));
    match report {
        Ok(r) => {
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            if r.command.is_some() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "guardrail gameday: no PAUSE, ROLLBACK or HOLD for {} within {duration}",
                    r.cohort
                );
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("guardrail gameday: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guardrail: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `guardrail apply` and `guardrail apply approve`.
/// `guardrail policy ...`: exit 0 done, 2 invalid input or refused, 1 cluster error.
fn policy_command(action: PolicyAction) -> ExitCode {
    use guardrail::policies::{self, PolicyError};
    let config_path = match &action {
        PolicyAction::Propose { config, .. }
        | PolicyAction::Approve { config, .. }
        | PolicyAction::Reject { config, .. }
        | PolicyAction::List { config }
        | PolicyAction::Show { config, .. } => config.clone(),
    };
    let base = match guardrail::config::Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            for err in &e.0 {
                eprintln!("{}: {err}", config_path.display());
            }
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("guardrail policy: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), (PolicyError, String)> = rt.block_on(async {
        match action {
            PolicyAction::Propose {
                file,
                flags,
                by,
                evidence,
                comment,
                ..
            } => {
                let proposal = policies::read_proposal_file(&file)
                    .map_err(|e| (PolicyError::Invalid(e), file.display().to_string()))?;
                let out = policies::propose(&base, &proposal, &flags, &by, &evidence, comment.as_deref())
                    .await
                    .map_err(|e| (e, file.display().to_string()))?;
                for p in &out {
                    json(p);
                }
                Ok(())
            }
            PolicyAction::Approve {
                flag,
                version,
                by,
                comment,
                allow_self_approval,
                ..
            } => {
                let r = policies::approve(&base, &flag, &version, &by, comment.as_deref(), allow_self_approval)
                    .await
                    .map_err(|e| (e, format!("{flag} {version}")))?;
                eprintln!(
                    "{flag} {version} is the active version (approved by {}); the engine judges with it from the next window boundary",
                    r.approved_by.as_deref().unwrap_or("?")
                );
                json(&r);
                Ok(())
            }
            PolicyAction::Reject {
                flag,
                version,
                by,
                comment,
                ..
            } => {
                let r = policies::reject(&base, &flag, &version, &by, comment.as_deref())
                    .await
                    .map_err(|e| (e, format!("{flag} {version}")))?;
                json(&r);
                Ok(())
            }
            PolicyAction::List { .. } => {
                let store = policies::load_store(&base).map_err(|e| (e, String::new()))?;
                for r in store.active.values() {
                    json(&serde_json::json!({
                        "flag": r.flag, "active": r.version, "approved_by": r.approved_by,
                        "approved_at": r.approved_at, "proposed_by": r.proposed_by,
                    }));
                }
                for p in store.proposals.values() {
                    let active = store.active.get(&p.flag).is_some_and(|a| a.version == p.version);
                    let status = match p.kind {
                        policies::PolicyKind::Rejected => "rejected",
                        _ if active => "active",
                        _ => "pending",
                    };
                    json(&serde_json::json!({
                        "flag": p.flag, "proposal": p.version, "status": status,
                        "proposed_by": p.proposed_by, "proposed_at": p.proposed_at,
                        "comment": p.comment,
                    }));
                }
                Ok(())
            }
            PolicyAction::Show { flag, version, .. } => {
                let store = policies::load_store(&base).map_err(|e| (e, String::new()))?;
                let r = match &version {
                    None => store.active.get(&flag),
                    Some(v) => store.proposals.get(&(flag.clone(), v.clone())),
                };
                match r {
                    Some(r) => {
                        json(r);
                        Ok(())
                    }
                    None => Err((
                        PolicyError::Refused(format!(
                            "no {} record for flag {flag:?}",
                            version.as_deref().unwrap_or("active")
                        )),
                        String::new(),
                    )),
                }
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((PolicyError::Invalid(errors), at)) => {
            for e in &errors.0 {
                eprintln!("{at}: {e}");
            }
            ExitCode::from(2)
        }
        Err((PolicyError::Refused(e), _)) => {
            eprintln!("guardrail policy: {e}");
            ExitCode::from(2)
        }
        Err((PolicyError::Cluster(e), _)) => {
            eprintln!("guardrail policy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a value as one JSON line.
fn json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
}

fn apply(args: ApplyArgs) -> ExitCode {
    let runtime =
        || tokio::runtime::Runtime::new().map_err(|e| anyhow::anyhow!("starting the runtime: {e}"));
    if let Some(ApplyAction::Approve {
        config,
        flag,
        by,
        command_id,
    }) = args.action
    {
        let Ok((config, _)) = load_both(&config) else {
            return ExitCode::from(2);
        };
        return exit(runtime().and_then(|rt| {
            let a = rt.block_on(guardrail::apply::approve(&config, &flag, &command_id, &by))?;
            println!(
                "approval of {} by {} published to {}",
                a.command_id, a.approved_by, config.topics.approvals
            );
            Ok(())
        }));
    }
    let (Some(path), Some(flagd)) = (args.config, args.flagd) else {
        eprintln!("guardrail apply: --config and --flagd are required");
        return ExitCode::from(2);
    };
    let Ok((config, policy)) = load_both(&path) else {
        return ExitCode::from(2);
    };
    if config.kafka.is_none() {
        eprintln!("{}: apply needs the [kafka] section", path.display());
        return ExitCode::from(2);
    }
    let opts = guardrail::apply::Options {
        flagd,
        group_id: args
            .group_id
            .unwrap_or_else(|| config.apply.group_id.clone()),
    };
    exit(runtime().and_then(|rt| {
        rt.block_on(async {
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                guardrail::app::shutdown_signal().await;
                tracing::info!("shutdown requested");
                let _ = stop_tx.send(true);
            });
            let counters = std::sync::Arc::new(guardrail::apply::Counters::default());
            guardrail::apply::run(&config, &policy, &opts, counters, stop).await
        })
        .map_err(anyhow::Error::from)
    }))
}

fn init_tracing(format: Option<LogFormat>, default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let json = match format {
        Some(f) => f == LogFormat::Json,
        None => {
            !std::io::stderr().is_terminal() && std::env::var_os("GUARDRAIL_LOG_JSON").is_some()
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn load_both(path: &Path) -> Result<(guardrail::config::Config, policy::Policy), ExitCode> {
    policy::load(path).map_err(|errs| {
        for e in errs.0 {
            eprintln!("{}: {e}", path.display());
        }
        ExitCode::from(2)
    })
}

fn load(path: &Path) -> Result<Arc<policy::Policy>, ExitCode> {
    load_both(path).map(|(_, p)| Arc::new(p))
}

fn check(path: &Path, offline: bool) -> ExitCode {
    match load_both(path) {
        Ok((config, p)) => {
            if !check_schemas(path, &config, offline) {
                return ExitCode::from(2);
            }
            println!(
                "{}: ok ({} metrics, {} flags: {})",
                path.display(),
                p.metrics.len(),
                p.flags.len(),
                p.flags
                    .iter()
                    .map(|f| format!("{} v{}", f.key, f.policy_version))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Resolves every avro-confluent mapping against its writer schema: the `schema_file`,
/// and (unless `offline`) the subject's latest version in the registry. Prints errors
/// with their config paths; false if any.
fn check_schemas(path: &Path, config: &guardrail::config::Config, offline: bool) -> bool {
    let Ok(inputs) = guardrail::ingest::input::compile(config) else {
        return false;
    };
    let mut ok = true;
    let mut report = |at: &str, r: Result<Vec<String>, String>| match r {
        Ok(missing) => {
            for m in missing {
                eprintln!("{}: warning: {m} (left empty)", path.display());
            }
        }
        Err(e) => {
            ok = false;
            eprintln!("{}: {at}: {e}", path.display());
        }
    };
    for (i, input) in inputs.iter().enumerate() {
        let (Some(mapping), Some(registry)) = (&input.mapping, &input.registry) else {
            continue;
        };
        let at = format!("inputs[{i}]");
        if let Some(file) = &input.schema_file {
            let r = std::fs::read_to_string(file)
                .map_err(|e| format!("schema_file {file}: {e}"))
                .and_then(|text| guardrail::engine::resolve(mapping, 0, &text).map(|(_, m)| m));
            report(&format!("{at}.schema_file"), r);
        }
        if offline {
            continue;
        }
        let subject = registry
            .subject
            .clone()
            .unwrap_or_else(|| format!("{}-value", input.topic));
        let r = guardrail::ingest::input::registry_options(registry).and_then(|opts| {
            let client = guardrail::ingest::confluent::RegistryClient::new(opts)
                .map_err(|e| e.to_string())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let (id, schema) = rt.block_on(client.latest(&subject)).map_err(|e| {
                format!("{e} (run with --offline to check against schema_file only)")
            })?;
            guardrail::engine::resolve(mapping, id, &schema.schema).map(|(_, m)| m)
        });
        report(&format!("{at}.registry (subject {subject})"), r);
    }
    ok
}

fn output(path: Option<&Path>) -> std::io::Result<Box<dyn Write>> {
    Ok(match path {
        Some(p) => Box::new(BufWriter::new(File::create(p)?)),
        None => Box::new(BufWriter::new(std::io::stdout())),
    })
}

fn run_replay(
    policy: Arc<policy::Policy>,
    files: &[(Source, std::path::PathBuf)],
    commands: Option<&Path>,
    evaluations: Option<&Path>,
    report_path: Option<&Path>,
) -> Result<(), ReplayError> {
    let mut cmd_out = output(commands)?;
    let mut report = report_path.map(|_| guardrail::report::Report::default());
    let mut eval_out = evaluations.map(|p| output(Some(p))).transpose()?;
    let now = guardrail::clock::wall_ms();
    let started = std::time::Instant::now();
    let (summary, _) = replay::replay(policy, files, now, |j| {
        if let Some(c) = &j.command {
            replay::json_line(&mut cmd_out, c)?;
        }
        if let Some(out) = eval_out.as_mut() {
            replay::json_line(out.as_mut(), &j.evaluation)?;
        }
        if let Some(r) = report.as_mut() {
            r.add(&j.evaluation, j.command.as_ref());
        }
        Ok(())
    })?;
    if let (Some(r), Some(path)) = (&report, report_path) {
        let names: Vec<String> = files.iter().map(|(_, p)| p.display().to_string()).collect();
        std::fs::write(
            path,
            r.render(&format!("guardrail backtest: {}", names.join(", "))),
        )?;
    }
    cmd_out.flush()?;
    if let Some(out) = eval_out.as_mut() {
        out.flush()?;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "replayed {} events ({} rejected) in {:.2}s ({:.0} events/s): {} windows, {} evaluations, {} commands",
        summary.events,
        summary.rejected,
        secs,
        summary.events as f64 / secs.max(1e-9),
        summary.windows,
        summary.evaluations,
        summary.commands
    );
    Ok(())
}

fn generate(
    dir: &Path,
    windows: u32,
    sessions: u32,
    start_ms: Option<i64>,
) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let window_ms = 15 * 60_000;
    let start = start_ms.unwrap_or_else(|| {
        let now = guardrail::clock::wall_ms();
        (now / window_ms) * window_ms - i64::from(windows) * window_ms
    });
    sim::write_ocf_files(
        &mut sim::Simulator::new(sim::Scenario::demo(start, windows, sessions)),
        dir,
    )
}
