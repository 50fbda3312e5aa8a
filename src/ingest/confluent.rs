//! Confluent Schema Registry: the wire framing of Confluent-serialized Kafka values,
//! a caching client for the registry's REST API, and an in-process registry
//! ([`MockRegistry`]) for the tests and the demo.
//!
//! Wire format: magic byte `0`, the writer schema's id as a 4-byte big-endian
//! integer, then the Avro binary datum. Ids are immutable in a registry, so a schema
//! fetched once is kept for the life of the client and, with a `cache_dir`, across
//! restarts: a known id keeps decoding through a registry outage.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------
// Wire framing
// ---------------------------------------------------------------------------------

/// The first byte of a Confluent-framed value.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte plus the 4-byte schema id.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not Confluent framed: first byte 0x{0:02x} (expected 0)")]
    BadMagic(u8),
    #[error("not Confluent framed: {0} bytes is shorter than the 5-byte header")]
    TooShort(usize),
}

/// Splits a Confluent-framed value into its schema id and the Avro datum after it.
pub fn split_frame(bytes: &[u8]) -> Result<(u32, &[u8]), FrameError> {
    match bytes.first() {
        None => return Err(FrameError::TooShort(0)),
        Some(&b) if b != MAGIC_BYTE => return Err(FrameError::BadMagic(b)),
        Some(_) => {}
    }
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::TooShort(bytes.len()));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

/// Frames an Avro datum for schema `id` (what a Confluent serializer produces).
pub fn frame(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

// ---------------------------------------------------------------------------------
// Options and errors
// ---------------------------------------------------------------------------------

/// Credentials sent with every registry request. `Debug` never shows secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    #[default]
    None,
    /// HTTP basic auth (Confluent Cloud: API key and secret).
    Basic { username: String, password: String },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { username, .. } => {
                write!(
                    f,
                    "Basic {{ username: {username:?}, password: <redacted> }}"
                )
            }
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Registry base urls, tried in order (like the comma-separated `url` list of
    /// Confluent clients); a url may carry a path prefix.
    pub urls: Vec<String>,
    pub auth: Auth,
    /// Total time budget of one fetch, retries and backoff included.
    pub timeout: Duration,
    /// Time limit of one HTTP request (capped by what is left of `timeout`).
    pub request_timeout: Duration,
    /// Where fetched schemas are kept as `<id>.json` (created when missing).
    pub cache_dir: Option<PathBuf>,
}

impl Default for RegistryOptions {
    /// No url (set one); 10 s per fetch, 5 s per request, no disk cache.
    fn default() -> Self {
        RegistryOptions {
            urls: Vec::new(),
            auth: Auth::None,
            timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            cache_dir: None,
        }
    }
}

impl RegistryOptions {
    /// Defaults with the urls of a comma-separated list
    /// (`"http://a:8081,http://b:8081"`).
    pub fn with_url_list(list: &str) -> Self {
        RegistryOptions {
            urls: list
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(String::from)
                .collect(),
            ..RegistryOptions::default()
        }
    }
}

/// What a registry request was for, as error messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Id(u32),
    Latest(String),
}

impl fmt::Display for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lookup::Id(id) => write!(f, "schema id {id}"),
            Lookup::Latest(subject) => write!(f, "latest version of subject {subject:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Bad options, or a cache directory that cannot be used.
    #[error("schema registry client: {0}")]
    Config(String),
    /// 404 (error codes 40401/40402/40403): the id or subject does not exist. Not retried.
    #[error("{what} not found in the schema registry at {url}")]
    NotFound { what: Lookup, url: String },
    /// 401 or 403. Not retried.
    #[error("schema registry at {url} refused the credentials for {what}: HTTP {status}: {body}")]
    Unauthorized {
        what: Lookup,
        url: String,
        status: u16,
        body: String,
    },
    /// A schema this client cannot use (not Avro, or with references).
    #[error("{what} from the schema registry at {url} is not supported: {reason}")]
    Unsupported {
        what: Lookup,
        url: String,
        reason: String,
    },
    /// A response that is not what the registry API returns (or another 4xx). Not retried.
    #[error("schema registry at {url} gave an unusable answer for {what}: {detail}")]
    BadResponse {
        what: Lookup,
        url: String,
        detail: String,
    },
    /// Connection errors, timeouts, 5xx or 429 until the time budget was spent.
    #[error(
        "schema registry unavailable for {what}: {attempts} attempts in {elapsed_ms} ms \
         (urls: {urls}); last error: {last_error}"
    )]
    Unavailable {
        what: Lookup,
        urls: String,
        last_error: String,
        attempts: u32,
        elapsed_ms: u64,
    },
}

impl RegistryError {
    /// The schema id the error is about, if it is about one.
    pub fn id(&self) -> Option<u32> {
        let what = match self {
            RegistryError::Config(_) => return None,
            RegistryError::NotFound { what, .. }
            | RegistryError::Unauthorized { what, .. }
            | RegistryError::Unsupported { what, .. }
            | RegistryError::BadResponse { what, .. }
            | RegistryError::Unavailable { what, .. } => what,
        };
        match what {
            Lookup::Id(id) => Some(*id),
            Lookup::Latest(_) => None,
        }
    }

    /// True for errors that asking again later may cure (only `Unavailable`).
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// A schema as registered: its id and its text (Avro schema JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    pub id: u32,
    pub schema: String,
}

// ---------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------

const ACCEPT: &str = "application/vnd.schemaregistry.v1+json, application/json";
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How much of an error body goes into an error message.
const BODY_LIMIT: usize = 300;

/// A shared, caching Schema Registry client: clones share the cache and connections.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    urls: Vec<Url>,
    auth: Auth,
    timeout: Duration,
    request_timeout: Duration,
    cache_dir: Option<PathBuf>,
    cache: RwLock<HashMap<u32, Arc<RegisteredSchema>>>,
    /// One lock per id being fetched, so concurrent callers share one fetch.
    inflight: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<Option<Failure>>>>>,
    /// Index of the url that answered last: fetches start there.
    preferred: AtomicUsize,
}

/// The outcome of a failed fetch, handed to the callers that waited for it.
struct Failure {
    at: Instant,
    error: RegistryError,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("urls", &self.urls())
            .field("auth", &self.inner.auth)
            .field("cached", &self.inner.cache.read().unwrap().len())
            .finish()
    }
}

/// A response of `/schemas/ids/{id}` or `/subjects/{s}/versions/{v}`.
#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    references: Option<Vec<Value>>,
    id: Option<u32>,
}

impl RegistryClient {
    /// Checks the options and loads the schemas kept in `cache_dir` (no network I/O).
    pub fn new(opts: RegistryOptions) -> Result<Self, RegistryError> {
        let config = |m: String| RegistryError::Config(m);
        if opts.urls.is_empty() {
            return Err(config("no schema registry url given".into()));
        }
        let mut urls = Vec::with_capacity(opts.urls.len());
        for raw in &opts.urls {
            let url = Url::parse(raw.trim())
                .map_err(|e| config(format!("bad schema registry url {raw:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
                return Err(config(format!(
                    "bad schema registry url {raw:?}: expected http:// or https://"
                )));
            }
            urls.push(url);
        }
        if opts.timeout.is_zero() || opts.request_timeout.is_zero() {
            return Err(config(
                "timeout and request_timeout must be above zero".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(opts.request_timeout)
            .timeout(opts.request_timeout)
            .user_agent(concat!("guardrail/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| config(format!("cannot build the HTTP client: {}", chain(&e))))?;
        let mut cache = HashMap::new();
        if let Some(dir) = &opts.cache_dir {
            load_cache_dir(dir, &mut cache)?;
        }
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                http,
                urls,
                auth: opts.auth,
                timeout: opts.timeout,
                request_timeout: opts.request_timeout,
                cache_dir: opts.cache_dir,
                cache: RwLock::new(cache),
                inflight: Mutex::new(HashMap::new()),
                preferred: AtomicUsize::new(0),
            }),
        })
    }

    /// The registry urls, in the order they are tried.
    pub fn urls(&self) -> Vec<String> {
        self.inner.urls.iter().map(Url::to_string).collect()
    }

    /// The schema of `id` if this client has it already (no I/O).
    pub fn cached(&self, id: u32) -> Option<Arc<RegisteredSchema>> {
        self.inner.cache.read().unwrap().get(&id).cloned()
    }

    /// Ids this client has (fetched, or loaded from the cache directory), sorted.
    pub fn cached_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.inner.cache.read().unwrap().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The schema registered under `id`: from the cache, else `GET /schemas/ids/{id}`
    /// with retries until `timeout`. Concurrent calls for one id make one fetch.
    pub async fn schema(&self, id: u32) -> Result<Arc<RegisteredSchema>, RegistryError> {
        if let Some(s) = self.cached(id) {
            return Ok(s);
        }
        let waited_since = Instant::now();
        let slot = self
            .inner
            .inflight
            .lock()
            .unwrap()
            .entry(id)
            .or_default()
            .clone();
        let mut last_failure = slot.lock().await;
        if let Some(s) = self.cached(id) {
            return Ok(s);
        }
        // A fetch that ended while this call waited for the lock failed: share its
        // answer rather than spending another full time budget.
        if let Some(f) = last_failure.as_ref().filter(|f| f.at >= waited_since) {
            return Err(f.error.clone());
        }
        let what = Lookup::Id(id);
        let result = self
            .get(&what, &["schemas", "ids", &id.to_string()])
            .await
            .and_then(|(url, body)| {
                let parsed = parse_schema(&what, &url, &body)?;
                Ok(self.remember(id, parsed.schema))
            });
        if let Err(e) = &result {
            *last_failure = Some(Failure {
                at: Instant::now(),
                error: e.clone(),
            });
        }
        // Callers already waiting hold the slot; later ones start afresh.
        let mut inflight = self.inner.inflight.lock().unwrap();
        if inflight.get(&id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            inflight.remove(&id);
        }
        drop(inflight);
        drop(last_failure);
        result
    }

    /// The latest version of `subject` (`GET /subjects/{subject}/versions/latest`):
    /// its id and schema. Never cached (subjects move), but the id's schema is.
    pub async fn latest(
        &self,
        subject: &str,
    ) -> Result<(u32, Arc<RegisteredSchema>), RegistryError> {
        let what = Lookup::Latest(subject.to_string());
        let (url, body) = self
            .get(&what, &["subjects", subject, "versions", "latest"])
            .await?;
        let parsed = parse_schema(&what, &url, &body)?;
        let Some(id) = parsed.id else {
            return Err(RegistryError::BadResponse {
                what,
                url,
                detail: "the response has no \"id\"".into(),
            });
        };
        if let Some(known) = self.cached(id) {
            return Ok((id, known));
        }
        Ok((id, self.remember(id, parsed.schema)))
    }

    /// Keeps a fetched schema in memory and, with a cache directory, on disk.
    fn remember(&self, id: u32, schema: String) -> Arc<RegisteredSchema> {
        let registered = Arc::new(RegisteredSchema { id, schema });
        if let Some(dir) = &self.inner.cache_dir
            && let Err(e) = write_cache_file(dir, &registered)
        {
            tracing::warn!(id, dir = %dir.display(), error = %e,
                    "could not keep a registry schema in the cache directory");
        }
        self.inner
            .cache
            .write()
            .unwrap()
            .entry(id)
            .or_insert(registered)
            .clone()
    }

    /// GETs `segments` under the registry urls, with retries, backoff and failover
    /// until the time budget is spent. Returns the url that answered and the body.
    async fn get(
        &self,
        what: &Lookup,
        segments: &[&str],
    ) -> Result<(String, String), RegistryError> {
        let inner = &*self.inner;
        let started = Instant::now();
        let deadline = started + inner.timeout;
        let first = inner.preferred.load(Ordering::Relaxed) % inner.urls.len();
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        let mut last_error = String::new();
        let mut turn = 0usize;
        loop {
            let index = (first + turn) % inner.urls.len();
            let url = endpoint(&inner.urls[index], segments);
            let now = Instant::now();
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() && attempts > 0 {
                break;
            }
            attempts += 1;
            let per_request = inner
                .request_timeout
                .min(remaining)
                .max(Duration::from_millis(1));
            match self.attempt(&url, per_request).await {
                Attempt::Ok(body) => {
                    inner.preferred.store(index, Ordering::Relaxed);
                    return Ok((url.to_string(), body));
                }
                Attempt::Fatal(status, body) => {
                    return Err(fatal(what, url.as_str(), status, body));
                }
                Attempt::Retry(error) => {
                    tracing::debug!(%what, %url, attempt = attempts, %error,
                        "schema registry request failed; retrying");
                    last_error = format!("{url}: {error}");
                }
            }
            turn += 1;
            // Fail over at once; back off when every url has had its turn.
            if turn.is_multiple_of(inner.urls.len()) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(backoff.min(left)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        Err(RegistryError::Unavailable {
            what: what.clone(),
            urls: self.urls().join(", "),
            last_error,
            attempts,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    async fn attempt(&self, url: &Url, timeout: Duration) -> Attempt {
        let mut request = self
            .inner
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, ACCEPT)
            .timeout(timeout);
        request = match &self.inner.auth {
            Auth::None => request,
            Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
            Auth::Bearer(token) => request.bearer_auth(token),
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Attempt::Retry(format!("no answer within {} ms", timeout.as_millis()));
            }
            Err(e) => return Attempt::Retry(chain(&e)),
        };
        let status = response.status();
        let body = match response.text().await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => {
                return Attempt::Retry(format!("body not read within {} ms", timeout.as_millis()));
            }
            Err(e) => {
                return Attempt::Retry(format!(
                    "HTTP {}: reading the body: {}",
                    status.as_u16(),
                    chain(&e)
                ));
            }
        };
        let code = status.as_u16();
        if status.is_success() {
            Attempt::Ok(body)
        } else if status.is_server_error() || code == 429 || code == 408 {
            Attempt::Retry(format!("HTTP {code}: {}", clip(&body)))
        } else {
            Attempt::Fatal(code, body)
        }
    }
}

enum Attempt {
    Ok(String),
    Retry(String),
    Fatal(u16, String),
}

/// The error of a non-retryable HTTP status.
fn fatal(what: &Lookup, url: &str, status: u16, body: String) -> RegistryError {
    let (what, url) = (what.clone(), url.to_string());
    let error_code = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("error_code").and_then(Value::as_u64));
    match (status, error_code) {
        (404, _) | (_, Some(40401..=40403)) => RegistryError::NotFound { what, url },
        (401 | 403, _) => RegistryError::Unauthorized {
            what,
            url,
            status,
            body: clip(&body),
        },
        _ => RegistryError::BadResponse {
            what,
            url,
            detail: format!("HTTP {status}: {}", clip(&body)),
        },
    }
}

/// `base` with `segments` appended as percent-encoded path segments.
fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// Checks a schema response: Avro (an absent `schemaType` means Avro), no references.
fn parse_schema(what: &Lookup, url: &str, body: &str) -> Result<SchemaResponse, RegistryError> {
    parse_schema_body(body).map_err(|e| e.into_error(what.clone(), url.to_string()))
}

fn parse_schema_body(body: &str) -> Result<SchemaResponse, Rejection> {
    let parsed: SchemaResponse = serde_json::from_str(body)
        .map_err(|e| Rejection::Bad(format!("not a schema response ({e}): {}", clip(body))))?;
    if let Some(kind) = parsed.schema_type.as_deref()
        && !kind.eq_ignore_ascii_case("AVRO")
    {
        return Err(Rejection::Unsupported(format!(
            "schemaType {kind:?}: only AVRO schemas can be decoded"
        )));
    }
    if let Some(refs) = parsed.references.as_ref().filter(|r| !r.is_empty()) {
        let names: Vec<String> = refs
            .iter()
            .map(|r| match (r.get("subject"), r.get("version")) {
                (Some(s), Some(v)) => format!("{} v{}", s.as_str().unwrap_or("?"), v),
                _ => r.to_string(),
            })
            .collect();
        return Err(Rejection::Unsupported(format!(
            "the schema has {} reference(s) ({}); schema references are not supported yet",
            refs.len(),
            names.join(", ")
        )));
    }
    Ok(parsed)
}

enum Rejection {
    Bad(String),
    Unsupported(String),
}

impl Rejection {
    fn into_error(self, what: Lookup, url: String) -> RegistryError {
        match self {
            Rejection::Bad(detail) => RegistryError::BadResponse { what, url, detail },
            Rejection::Unsupported(reason) => RegistryError::Unsupported { what, url, reason },
        }
    }
}

/// Loads `<id>.json` files; unreadable or malformed ones are skipped with a warning.
fn load_cache_dir(
    dir: &Path,
    cache: &mut HashMap<u32, Arc<RegisteredSchema>>,
) -> Result<(), RegistryError> {
    let fail = |doing: &str, e: std::io::Error| {
        RegistryError::Config(format!(
            "schema cache directory {}: {doing}: {e}",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("cannot create it", e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| fail("cannot list it", e))? {
        let path = entry.map_err(|e| fail("cannot list it", e))?.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|stem| stem.parse::<u32>().ok())
        else {
            continue;
        };
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|body| {
                parse_schema_body(&body).map_err(|r| match r {
                    Rejection::Bad(m) | Rejection::Unsupported(m) => m,
                })
            });
        match parsed {
            Ok(r) => {
                cache.insert(
                    id,
                    Arc::new(RegisteredSchema {
                        id,
                        schema: r.schema,
                    }),
                );
            }
            Err(error) => tracing::warn!(path = %path.display(), %error,
                "skipping an unusable file in the schema cache directory"),
        }
    }
    Ok(())
}

/// Writes `<id>.json` atomically: a temporary file in the same directory, renamed.
fn write_cache_file(dir: &Path, schema: &RegisteredSchema) -> std::io::Result<()> {
    use std::io::Write;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let body = json!({ "schema": schema.schema, "schemaType": "AVRO", "id": schema.id });
    let target = dir.join(format!("{}.json", schema.id));
    let temp = dir.join(format!(
        ".{}.json.{}.{}.tmp",
        schema.id,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(body.to_string().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, &target)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// An error and its sources, joined (reqwest's own message hides the cause).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn clip(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(BODY_LIMIT) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_string(),
    }
}

// ---------------------------------------------------------------------------------
// In-process registry for tests and the demo
// ---------------------------------------------------------------------------------

/// A Schema Registry on 127.0.0.1 serving `GET /schemas/ids/{id}` and
/// `GET /subjects/{subject}/versions/latest`, with switches for failure tests.
/// Stops when dropped.
pub struct MockRegistry {
    addr: SocketAddr,
    state: Arc<MockState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct MockState {
    /// id → the response body served for it.
    schemas: Mutex<HashMap<u32, Value>>,
    /// subject → ids of its versions, oldest first.
    subjects: Mutex<HashMap<String, Vec<u32>>>,
    unavailable: AtomicBool,
    fail_next: AtomicUsize,
    delay_ms: AtomicU64,
    /// The exact `Authorization` header required, if any.
    authorization: Mutex<Option<String>>,
    requests: AtomicUsize,
}

impl MockRegistry {
    /// Starts serving Avro `schemas` (id, schema text) on 127.0.0.1 at a free port.
    pub async fn start(schemas: Vec<(u32, String)>) -> std::io::Result<MockRegistry> {
        let state = Arc::new(MockState::default());
        {
            let mut map = state.schemas.lock().unwrap();
            for (id, schema) in schemas {
                map.insert(id, json!({ "schema": schema }));
            }
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/schemas/ids/{id}", get(mock_schema_by_id))
            .route("/subjects/{subject}/versions/latest", get(mock_latest))
            .fallback(|| async { mock_error(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found") })
            .with_state(state.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "mock schema registry stopped");
            }
        });
        Ok(MockRegistry {
            addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registers an Avro schema under `subject` as its new latest version. The same
    /// schema text keeps its id (as in a real registry); a new one gets max id + 1.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        let id = {
            let mut map = self.state.schemas.lock().unwrap();
            let existing = map.iter().find_map(|(id, body)| {
                let plain = body.get("schemaType").is_none() && body.get("references").is_none();
                (plain && body["schema"] == schema).then_some(*id)
            });
            existing.unwrap_or_else(|| {
                let id = map.keys().max().map_or(1, |m| m + 1);
                map.insert(id, json!({ "schema": schema }));
                id
            })
        };
        let mut subjects = self.state.subjects.lock().unwrap();
        let versions = subjects.entry(subject.to_string()).or_default();
        if versions.last() != Some(&id) {
            versions.push(id);
        }
        id
    }

    /// Serves `body` verbatim as the response for `id` (e.g. a `PROTOBUF` schema
    /// or one with references).
    pub fn insert_raw(&self, id: u32, body: Value) {
        self.state.schemas.lock().unwrap().insert(id, body);
    }

    /// `false`: every request gets 503 until set back to `true`.
    pub fn set_available(&self, available: bool) {
        self.state.unavailable.store(!available, Ordering::SeqCst);
    }

    /// The next `n` requests get 503.
    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every answer waits `delay` first.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests without these basic-auth credentials get 401.
    pub fn require_basic(&self, username: &str, password: &str) {
        let token = base64(format!("{username}:{password}").as_bytes());
        *self.state.authorization.lock().unwrap() = Some(format!("Basic {token}"));
    }

    /// Requests without this bearer token get 401.
    pub fn require_bearer(&self, token: &str) {
        *self.state.authorization.lock().unwrap() = Some(format!("Bearer {token}"));
    }

    /// Requests received so far (every path, whatever the answer).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Stops serving and waits (up to 1 s) until the port is closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for MockRegistry {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn mock_error(status: StatusCode, error_code: u32, message: &str) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            "application/vnd.schemaregistry.v1+json",
        )],
        json!({ "error_code": error_code, "message": message }).to_string(),
    )
        .into_response()
}

fn mock_ok(body: &Value) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/vnd.schemaregistry.v1+json",
        )],
        body.to_string(),
    )
        .into_response()
}

/// Counting, delay, outage and auth, in that order; `Some` is the answer to give.
async fn mock_gate(state: &MockState, headers: &HeaderMap) -> Option<Response> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failing = state
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing || state.unavailable.load(Ordering::SeqCst) {
        return Some(mock_error(
            StatusCode::SERVICE_UNAVAILABLE,
            50003,
            "registry unavailable",
        ));
    }
    let required = state.authorization.lock().unwrap().clone();
    if let Some(required) = required {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(required.as_str()) {
            return Some(mock_error(StatusCode::UNAUTHORIZED, 401, "Unauthorized"));
        }
    }
    None
}

async fn mock_schema_by_id(
    State(state): State<Arc<MockState>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = mock_gate(&state, &headers).await {
        return r;
    }
    let body = id
        .parse::<u32>()
        .ok()
        .and_then(|id| state.schemas.lock().unwrap().get(&id).cloned());
    match body {
        Some(body) => mock_ok(&body),
        None => mock_error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn mock_latest(
    State(state): State<Arc<MockState>>,
    UrlPath(subject): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = mock_gate(&state, &headers).await {
        return r;
    }
    let latest = state
        .subjects
        .lock()
        .unwrap()
        .get(&subject)
        .and_then(|v| v.last().map(|id| (*id, v.len())));
    let Some((id, version)) = latest else {
        return mock_error(
            StatusCode::NOT_FOUND,
            40401,
            &format!("Subject '{subject}' not found."),
        );
    };
    let mut body = state
        .schemas
        .lock()
        .unwrap()
        .get(&id)
        .cloned()
        .unwrap_or(json!({}));
    body["id"] = json!(id);
    body["version"] = json!(version);
    body["subject"] = json!(subject);
    mock_ok(&body)
}

/// Standard base64 with padding (for the mock's basic-auth check).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str =
        r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"}]}"#;
    const ORDER_V2: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"},{"name":"note","type":["null","string"],"default":null}]}"#;

    fn opts(urls: Vec<String>) -> RegistryOptions {
        RegistryOptions {
            urls,
            auth: Auth::None,
            timeout: Duration::from_millis(1500),
            request_timeout: Duration::from_millis(300),
            cache_dir: None,
        }
    }

    fn client(urls: Vec<String>) -> RegistryClient {
        RegistryClient::new(opts(urls)).unwrap()
    }

    /// A loopback url where nothing listens.
    async fn dead_url() -> String {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        url
    }

    #[test]
    fn split_frame_reads_the_header() {
        let framed = frame(258, &[7, 8, 9]);
        assert_eq!(framed, vec![0, 0, 0, 1, 2, 7, 8, 9]);
        assert_eq!(split_frame(&framed), Ok((258, &[7u8, 8, 9][..])));
        assert_eq!(
            split_frame(&[0, 0xff, 0xff, 0xff, 0xff]),
            Ok((u32::MAX, &[][..]))
        );
    }

    #[test]
    fn split_frame_errors_are_clear() {
        assert_eq!(split_frame(&[]), Err(FrameError::TooShort(0)));
        assert_eq!(split_frame(&[0, 0, 1]), Err(FrameError::TooShort(3)));
        assert_eq!(split_frame(b"{\"a\":1}"), Err(FrameError::BadMagic(b'{')));
        assert_eq!(
            split_frame(&[0x7b]).unwrap_err().to_string(),
            "not Confluent framed: first byte 0x7b (expected 0)"
        );
        assert_eq!(
            split_frame(&[0, 0]).unwrap_err().to_string(),
            "not Confluent framed: 2 bytes is shorter than the 5-byte header"
        );
    }

    #[test]
    fn options_are_checked() {
        let err = |o: RegistryOptions| RegistryClient::new(o).unwrap_err().to_string();
        assert!(err(opts(vec![])).contains("no schema registry url"));
        assert!(err(opts(vec!["localhost:8081".into()])).contains("expected http:// or https://"));
        assert!(err(opts(vec!["http://[::1".into()])).contains("bad schema registry url"));
        let mut zero = opts(vec!["http://127.0.0.1:1".into()]);
        zero.timeout = Duration::ZERO;
        assert!(err(zero).contains("above zero"));
        let list = RegistryOptions::with_url_list(" http://a:8081, https://b:8081/prefix ,");
        assert_eq!(list.urls, vec!["http://a:8081", "https://b:8081/prefix"]);
    }

    #[test]
    fn auth_debug_hides_secrets() {
        let basic = Auth::Basic {
            username: "key".into(),
            password: "s3cret".into(),
        };
        let shown = format!("{basic:?} {:?}", Auth::Bearer("t0ken".into()));
        assert!(shown.contains("key") && !shown.contains("s3cret") && !shown.contains("t0ken"));
    }

    #[test]
    fn base64_matches_rfc_4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn endpoints_keep_the_prefix_and_encode_subjects() {
        let base = Url::parse("http://r:8081/registry/").unwrap();
        assert_eq!(
            endpoint(&base, &["schemas", "ids", "7"]).as_str(),
            "http://r:8081/registry/schemas/ids/7"
        );
        let base = Url::parse("http://r:8081").unwrap();
        assert_eq!(
            endpoint(&base, &["subjects", "a/b c", "versions", "latest"]).as_str(),
            "http://r:8081/subjects/a%2Fb%20c/versions/latest"
        );
    }

    #[tokio::test]
    async fn fetches_once_then_serves_from_memory() {
        let mock = MockRegistry::start(vec![(1, ORDER.into())]).await.unwrap();
        let c = client(vec![mock.url()]);
        assert!(c.cached(1).is_none());
        let s = c.schema(1).await.unwrap();
        assert_eq!((s.id, s.schema.as_str()), (1, ORDER));
        assert_eq!(mock.requests(), 1);
        let again = c.clone().schema(1).await.unwrap();
        assert!(Arc::ptr_eq(&s, &again));
        assert_eq!(mock.requests(), 1, "the second call made a request");
        assert!(c.cached(1).is_some());
        assert_eq!(c.cached_ids(), vec![1]);
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_fetch() {
        let mock = MockRegistry::start(vec![(1, ORDER.into())]).await.unwrap();
        mock.set_delay(Duration::from_millis(100));
        let c = client(vec![mock.url()]);
        let calls: Vec<_> = (0..16)
            .map(|_| {
                tokio::spawn({
                    let c = c.clone();
                    async move { c.schema(1).await }
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap().schema, ORDER);
        }
        assert_eq!(mock.requests(), 1);
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_failure() {
        let mock = MockRegistry::start(vec![]).await.unwrap();
        mock.set_available(false);
        let mut o = opts(vec![mock.url()]);
        o.timeout = Duration::from_millis(300);
        let c = RegistryClient::new(o).unwrap();
        let calls: Vec<_> = (0..8)
            .map(|_| {
                tokio::spawn({
                    let c = c.clone();
                    async move { c.schema(3).await }
                })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap().unwrap_err().is_transient());
        }
        // One fetch (0, 100, 300 ms: 3 or 4 attempts) for all eight callers, not
        // eight in a row (some 24 requests).
        assert!(mock.requests() <= 5, "{} requests", mock.requests());
        assert!(c.inner.inflight.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn not_found_is_not_retried() {
        let mock = MockRegistry::start(vec![(1, ORDER.into())]).await.unwrap();
        let c = client(vec![mock.url()]);
        let started = Instant::now();
        let err = c.schema(99).await.unwrap_err();
        assert!(
            matches!(
                &err,
                RegistryError::NotFound {
                    what: Lookup::Id(99),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.id(), Some(99));
        let text = err.to_string();
        assert!(
            text.contains("schema id 99") && text.contains(&mock.url()),
            "{text}"
        );
        assert_eq!(mock.requests(), 1);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(
            c.inner.inflight.lock().unwrap().is_empty(),
            "a finished fetch left its slot"
        );
    }

    #[tokio::test]
    async fn recovers_when_the_registry_comes_back() {
        let mock = MockRegistry::start(vec![(1, ORDER.into())]).await.unwrap();
        mock.fail_next(2);
        let c = client(vec![mock.url()]);
        // 503, 100 ms, 503, 200 ms, 200.
        assert_eq!(c.schema(1).await.unwrap().schema, ORDER);
        assert_eq!(mock.requests(), 3);

        let mock = MockRegistry::start(vec![(2, ORDER.into())]).await.unwrap();
        mock.set_available(false);
        let c = client(vec![mock.url()]);
        let state = mock.state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            state.unavailable.store(false, Ordering::SeqCst);
        });
        assert_eq!(c.schema(2).await.unwrap().id, 2);
        assert!(mock.requests() >= 3, "{} requests", mock.requests());
    }

    #[tokio::test]
    async fn outage_serves_known_ids_from_the_cache() {
        let mock = MockRegistry::start(vec![(1, ORDER.into())]).await.unwrap();
        let c = client(vec![mock.url()]);
        c.schema(1).await.unwrap();
        mock.set_available(false);
        assert_eq!(c.schema(1).await.unwrap().schema, ORDER);
        assert_eq!(mock.requests(), 1);
    }

    #[tokio::test]
    async fn outage_with_an_unknown_id_is_unavailable_after_the_timeout() {
        let mock = MockRegistry::start(vec![(1, ORDER.into())]).await.unwrap();
        mock.set_available(false);
        let mut o = opts(vec![mock.url()]);
        o.timeout = Duration::from_millis(600);
        let c = RegistryClient::new(o).unwrap();
        let started = Instant::now();
        let err = c.schema(1).await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(590),
            "gave up early: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_millis(1900),
            "overran the budget: {elapsed:?}"
        );
        let RegistryError::Unavailable {
            attempts,
            ref last_error,
            ..
        } = err
        else {
            panic!("{err:?}")
        };
        // 0, 100, 300 ms (after 100 + 200 of backoff), then 700 is past the budget.
        assert!((2..=5).contains(&attempts), "{attempts} attempts");
        assert!(last_error.contains("HTTP 503"), "{last_error}");
        let text = err.to_string();
        assert!(
            text.contains("schema id 1") && text.contains(&mock.url()),
            "{text}"
        );
        assert_eq!(mock.requests() as u32, attempts);
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn a_slow_registry_times_out_per_request() {
        let mock = MockRegistry::start(vec![(1, ORDER.into())]).await.unwrap();
        mock.set_delay(Duration::from_millis(1000));
        let mut o = opts(vec![mock.url()]);
        o.timeout = Duration::from_millis(500);
        o.request_timeout = Duration::from_millis(150);
        let c = RegistryClient::new(o).unwrap();
        let started = Instant::now();
        let err = c.schema(1).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        assert!(err.to_string().contains("no answer within"), "{err}");
    }

    #[tokio::test]
    async fn basic_auth() {
        let mock = MockRegistry::start(vec![(1, ORDER.into())]).await.unwrap();
        mock.require_basic("key", "secret");
        let with = |auth: Auth| {
            let mut o = opts(vec![mock.url()]);
            o.auth = auth;
            RegistryClient::new(o).unwrap()
        };
        let good = with(Auth::Basic {
            username: "key".into(),
            password: "secret".into(),
        });
        assert_eq!(good.schema(1).await.unwrap().schema, ORDER);
        let bad = with(Auth::Basic {
            username: "key".into(),
            password: "wrong".into(),
        });
        let err = bad.schema(1).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::Unauthorized { status: 401, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("schema id 1") && err.to_string().contains(&mock.url()));
        let none = with(Auth::None).schema(1).await.unwrap_err();
        assert!(
            matches!(none, RegistryError::Unauthorized { .. }),
            "{none:?}"
        );
        assert_eq!(mock.requests(), 3, "an auth failure was retried");
    }

    #[tokio::test]
    async fn bearer_auth() {
        let mock = MockRegistry::start(vec![(1, ORDER.into())]).await.unwrap();
        mock.require_bearer("tok3n");
        let with = |auth: Auth| {
            let mut o = opts(vec![mock.url()]);
            o.auth = auth;
            RegistryClient::new(o).unwrap()
        };
        assert_eq!(
            with(Auth::Bearer("tok3n".into()))
                .schema(1)
                .await
                .unwrap()
                .id,
            1
        );
        let err = with(Auth::Bearer("other".into()))
            .schema(1)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::Unauthorized { status: 401, .. }),
            "{err:?}"
        );
        let basic = Auth::Basic {
            username: "tok3n".into(),
            password: String::new(),
        };
        assert!(matches!(
            with(basic).schema(1).await,
            Err(RegistryError::Unauthorized { .. })
        ));
        assert_eq!(mock.requests(), 3);
    }

    #[tokio::test]
    async fn cache_dir_survives_a_restart_during_an_outage() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("schemas");
        let mock = MockRegistry::start(vec![(1, ORDER.into()), (2, ORDER_V2.into())])
            .await
            .unwrap();
        let url = mock.url();
        let mut o = opts(vec![url.clone()]);
        o.cache_dir = Some(cache_dir.clone());
        let first = RegistryClient::new(o.clone()).unwrap();
        first.schema(1).await.unwrap();
        assert!(cache_dir.join("1.json").is_file());
        let leftovers: Vec<_> = std::fs::read_dir(&cache_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(leftovers, vec!["1.json"], "temporary files left behind");
        mock.stop().await;
        // Junk beside the cache files is skipped.
        std::fs::write(cache_dir.join("7.json"), "not json").unwrap();
        std::fs::write(cache_dir.join("notes.txt"), "hello").unwrap();

        o.timeout = Duration::from_millis(300);
        let second = RegistryClient::new(o).unwrap();
        assert_eq!(second.cached_ids(), vec![1]);
        assert_eq!(second.cached(1).unwrap().schema, ORDER);
        assert_eq!(second.schema(1).await.unwrap().schema, ORDER);
        let err = second.schema(2).await.unwrap_err();
        assert!(matches!(err, RegistryError::Unavailable { .. }), "{err:?}");
        assert!(err.to_string().contains(&url), "{err}");
    }

    #[tokio::test]
    async fn unusable_cache_dir_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "x").unwrap();
        let mut o = opts(vec!["http://127.0.0.1:1".into()]);
        o.cache_dir = Some(file.join("sub"));
        let err = RegistryClient::new(o).unwrap_err();
        assert!(
            matches!(err, RegistryError::Config(_)) && err.to_string().contains("plain-file"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn fails_over_to_the_next_url() {
        let mock = MockRegistry::start(vec![(1, ORDER.into()), (2, ORDER_V2.into())])
            .await
            .unwrap();
        let dead = dead_url().await;
        let c = client(vec![dead.clone(), mock.url()]);
        let started = Instant::now();
        assert_eq!(c.schema(1).await.unwrap().schema, ORDER);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(c.schema(2).await.unwrap().schema, ORDER_V2);
        assert_eq!(mock.requests(), 2);

        // Every url dead: the error names them all.
        let c = RegistryClient::new(RegistryOptions {
            timeout: Duration::from_millis(250),
            ..opts(vec![dead.clone(), dead_url().await])
        })
        .unwrap();
        let err = c.schema(1).await.unwrap_err().to_string();
        assert!(err.contains(&dead) && err.contains("schema id 1"), "{err}");
    }

    #[tokio::test]
    async fn unsupported_schemas_are_refused() {
        let mock = MockRegistry::start(vec![]).await.unwrap();
        mock.insert_raw(
            5,
            json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" }),
        );
        mock.insert_raw(
            6,
            json!({
                "schema": ORDER,
                "schemaType": "AVRO",
                "references": [{ "name": "Customer", "subject": "customer-value", "version": 2 }]
            }),
        );
        mock.insert_raw(
            7,
            json!({ "schema": ORDER, "schemaType": "AVRO", "references": [] }),
        );
        mock.insert_raw(8, json!({ "schemaa": ORDER }));
        let c = client(vec![mock.url()]);
        let err = c.schema(5).await.unwrap_err();
        assert!(matches!(err, RegistryError::Unsupported { .. }), "{err:?}");
        assert!(
            err.to_string().contains("PROTOBUF") && err.to_string().contains("schema id 5"),
            "{err}"
        );
        let err = c.schema(6).await.unwrap_err();
        assert!(matches!(err, RegistryError::Unsupported { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("references are not supported") && text.contains("customer-value v2"),
            "{text}"
        );
        assert_eq!(c.schema(7).await.unwrap().schema, ORDER);
        let err = c.schema(8).await.unwrap_err();
        assert!(matches!(err, RegistryError::BadResponse { .. }), "{err:?}");
        assert_eq!(mock.requests(), 4, "a permanent error was retried");
        assert!(c.cached(5).is_none() && c.cached(6).is_none());
    }

    #[tokio::test]
    async fn latest_version_of_a_subject() {
        let mock = MockRegistry::start(vec![(1, ORDER.into())]).await.unwrap();
        assert_eq!(
            mock.register("orders-value", ORDER),
            1,
            "the same text keeps its id"
        );
        let c = client(vec![mock.url()]);
        let (id, s) = c.latest("orders-value").await.unwrap();
        assert_eq!((id, s.schema.as_str()), (1, ORDER));
        assert_eq!(mock.register("orders-value", ORDER_V2), 2);
        let (id, s) = c.latest("orders-value").await.unwrap();
        assert_eq!((id, s.schema.as_str()), (2, ORDER_V2));
        // The id learnt from the subject is cached.
        let requests = mock.requests();
        assert_eq!(c.schema(2).await.unwrap().schema, ORDER_V2);
        assert_eq!(mock.requests(), requests);
        let err = c.latest("payments-value").await.unwrap_err();
        assert!(
            matches!(
                err,
                RegistryError::NotFound {
                    what: Lookup::Latest(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"payments-value\""), "{err}");
        // Subjects with awkward characters reach the handler intact.
        let id = mock.register("team/orders value", ORDER);
        assert_eq!(c.latest("team/orders value").await.unwrap().0, id);
    }
}
