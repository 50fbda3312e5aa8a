//! Inputs (SPEC §4.1): each input topic with its format and mapping, compiled and
//! validated from `[[inputs]]`, or the three built-in Avro inputs of `[topics]`.

use std::sync::Arc;

use crate::config::{Config, ConfigError, InputConfig, RegistryConfig};
use crate::ingest::map::Mapping;
use crate::model::Source;

/// An OpenTelemetry signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpSignal {
    Traces,
    Logs,
}

/// How OTLP export requests are encoded on the topic (the Collector's Kafka exporter
/// `encoding: otlp_proto | otlp_json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpEncoding {
    Protobuf,
    Json,
}

#[derive(Debug, Clone)]
pub enum Format {
    /// guardrail's own schemas, single-object encoding.
    Avro,
    /// Confluent framing (magic 0, schema id) with the writer schema from a registry.
    AvroConfluent,
    Json,
    Otlp {
        signal: OtlpSignal,
        encoding: OtlpEncoding,
    },
}

/// One compiled input.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub topic: String,
    pub format: Format,
    /// What a record becomes (`otlp`: product; its spans also yield error events).
    pub record: Source,
    pub mapping: Option<Arc<Mapping>>,
    pub registry: Option<RegistryConfig>,
    pub schema_file: Option<String>,
}

/// The inputs in input order (`PartitionKey::input`).
pub fn compile(config: &Config) -> Result<Vec<InputSpec>, Vec<ConfigError>> {
    if config.inputs.is_empty() {
        return Ok(builtin(config));
    }
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (i, input) in config.inputs.iter().enumerate() {
        let at = format!("inputs[{i}]");
        if config.inputs[..i].iter().any(|o| o.topic == input.topic) {
            errors.push(err(
                &at,
                "topic",
                format!("{:?} is listed twice", input.topic),
            ));
        }
        if let Some(spec) = one(input, &at, &mut errors) {
            out.push(spec);
        }
    }
    let outputs = [
        &config.topics.flag_commands,
        &config.topics.evaluations,
        &config.topics.dlq,
        &config.topics.state,
    ];
    for (i, input) in config.inputs.iter().enumerate() {
        if outputs.contains(&&input.topic) {
            errors.push(err(
                &format!("inputs[{i}]"),
                "topic",
                format!("{:?} is one of guardrail's output topics", input.topic),
            ));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The three built-in inputs: guardrail's Avro records on the `[topics]` topics.
pub fn builtin(config: &Config) -> Vec<InputSpec> {
    Source::ALL
        .iter()
        .map(|s| InputSpec {
            topic: config.topics.input(*s).to_string(),
            format: Format::Avro,
            record: *s,
            mapping: None,
            registry: None,
            schema_file: None,
        })
        .collect()
}

fn err(at: &str, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: format!("{at}.{field}"),
        message: message.into(),
    }
}

fn one(input: &InputConfig, at: &str, errors: &mut Vec<ConfigError>) -> Option<InputSpec> {
    let before = errors.len();
    if input.topic.is_empty() {
        errors.push(err(at, "topic", "must not be empty"));
    }
    let record = match input.record.as_deref() {
        None => None,
        Some(r) => match Source::parse(r) {
            Some(s) => Some(s),
            None => {
                errors.push(err(
                    at,
                    "record",
                    format!("{r:?}: expected product, errors or support"),
                ));
                None
            }
        },
    };
    let format = match input.format.as_str() {
        "avro" => Format::Avro,
        "avro-confluent" => Format::AvroConfluent,
        "json" => Format::Json,
        "otlp" => {
            let signal = match input.signal.as_deref() {
                None | Some("traces") => OtlpSignal::Traces,
                Some("logs") => OtlpSignal::Logs,
                Some(other) => {
                    errors.push(err(
                        at,
                        "signal",
                        format!("{other:?}: expected traces or logs"),
                    ));
                    OtlpSignal::Traces
                }
            };
            let encoding = match input.encoding.as_deref() {
                None | Some("protobuf" | "otlp_proto") => OtlpEncoding::Protobuf,
                Some("json" | "otlp_json") => OtlpEncoding::Json,
                Some(other) => {
                    errors.push(err(
                        at,
                        "encoding",
                        format!("{other:?}: expected protobuf or json"),
                    ));
                    OtlpEncoding::Protobuf
                }
            };
            Format::Otlp { signal, encoding }
        }
        other => {
            errors.push(err(
                at,
                "format",
                format!("{other:?}: expected avro, avro-confluent, json or otlp"),
            ));
            return None;
        }
    };
    let otlp = matches!(format, Format::Otlp { .. });
    if !otlp {
        for (set, name) in [
            (input.signal.is_some(), "signal"),
            (input.encoding.is_some(), "encoding"),
        ] {
            if set {
                errors.push(err(at, name, "only for format = \"otlp\""));
            }
        }
    }
    let needs_mapping = matches!(format, Format::AvroConfluent | Format::Json);
    if !needs_mapping && input.mapping.is_some() {
        errors.push(err(
            at,
            "mapping",
            format!("format {:?} has a built-in mapping", input.format),
        ));
    }
    if otlp && input.record.is_some() {
        errors.push(err(
            at,
            "record",
            "OTLP spans and logs become product and error events by the built-in mapping",
        ));
    }
    if !otlp && record.is_none() && input.record.is_none() {
        errors.push(err(at, "record", "required: product, errors or support"));
    }
    let is_confluent = matches!(format, Format::AvroConfluent);
    match (&input.registry, is_confluent) {
        (None, true) => errors.push(err(at, "registry", "required for avro-confluent")),
        (Some(_), false) => errors.push(err(at, "registry", "only for avro-confluent")),
        (Some(r), true) => registry(r, &format!("{at}.registry"), errors),
        (None, false) => {}
    }
    if input.schema_file.is_some() && !is_confluent {
        errors.push(err(at, "schema_file", "only for avro-confluent"));
    }
    let mapping = match (&input.mapping, needs_mapping, record) {
        (Some(m), true, Some(record)) => {
            Mapping::compile(m, record, &format!("{at}.mapping"), errors).map(Arc::new)
        }
        (None, true, _) => {
            errors.push(err(at, "mapping", "required for this format"));
            None
        }
        _ => None,
    };
    if errors.len() > before {
        return None;
    }
    Some(InputSpec {
        topic: input.topic.clone(),
        format,
        record: record.unwrap_or(Source::Product),
        mapping,
        registry: input.registry.clone(),
        schema_file: input.schema_file.clone(),
    })
}

fn registry(r: &RegistryConfig, at: &str, errors: &mut Vec<ConfigError>) {
    let urls: Vec<&str> = r.url.split(',').map(str::trim).collect();
    if urls.iter().any(|u| {
        !(u.starts_with("http://") || u.starts_with("https://")) || u.len() <= "https://".len()
    }) {
        errors.push(ConfigError {
            path: format!("{at}.url"),
            message: format!("{:?}: expected http(s)://host[:port][,...]", r.url),
        });
    }
    if let Err(e) = crate::config::parse_duration(&r.timeout) {
        errors.push(ConfigError {
            path: format!("{at}.timeout"),
            message: e,
        });
    }
    if r.username.is_some() != r.password_env.is_some() {
        errors.push(ConfigError {
            path: format!("{at}.username"),
            message: "basic auth needs both username and password_env".into(),
        });
    }
    if r.username.is_some() && r.bearer_token_env.is_some() {
        errors.push(ConfigError {
            path: format!("{at}.bearer_token_env"),
            message: "give basic auth or a bearer token, not both".into(),
        });
    }
}

/// The Schema Registry client options of an input's `[inputs.registry]` (secrets read
/// from the environment variables it names).
pub fn registry_options(
    r: &RegistryConfig,
) -> Result<crate::ingest::confluent::RegistryOptions, String> {
    use crate::ingest::confluent::{Auth, RegistryOptions};
    let env = |name: &str| {
        std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
    };
    let auth = match (&r.username, &r.password_env, &r.bearer_token_env) {
        (Some(u), Some(p), None) => Auth::Basic {
            username: u.clone(),
            password: env(p)?,
        },
        (None, None, Some(t)) => Auth::Bearer(env(t)?),
        _ => Auth::None,
    };
    let mut opts = RegistryOptions::with_url_list(&r.url);
    opts.auth = auth;
    opts.timeout = crate::config::parse_duration(&r.timeout)?;
    opts.request_timeout = opts.request_timeout.min(opts.timeout);
    opts.cache_dir = r.cache_dir.as_ref().map(std::path::PathBuf::from);
    Ok(opts)
}
