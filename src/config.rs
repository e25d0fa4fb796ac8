//! The TOML config (SPEC §3): file types, then validated runtime types, built once.
//!
//! Takes the file's text; gives a [`Config`] whose every value is checked and resolved
//! (secrets read, URLs parsed, defaults applied); refuses anything else with a
//! [`ConfigError`] that names the file and the field in one line. Unknown keys are errors:
//! in a security gateway a typo such as `secert` must stop startup, not be ignored.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{HeaderValue, Uri};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use sha2::Digest;

use crate::platforms::Platform;
use crate::upstream::{Target, shown_url};
use crate::verify::{Secret, Verifier};

/// A config that cannot be used: one line, naming the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub field: String,
    pub message: String,
}

// ---------------------------------------------------------------- file types

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: FileServer,
    admin: Option<FileAdmin>,
    upstream: Option<FileUpstream>,
    #[serde(default, rename = "source")]
    sources: Vec<FileSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_max_body")]
    max_body_bytes: u64,
    tls: Option<FileTls>,
    #[serde(default = "default_grace")]
    shutdown_grace_s: u64,
    #[serde(default)]
    shutdown_delay_s: u64,
    #[serde(default)]
    log_format: LogFormat,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    client_rate_limit: Option<FileRate>,
    #[serde(default = "default_header_timeout")]
    header_timeout_s: u64,
    #[serde(default = "default_body_timeout")]
    body_timeout_s: u64,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    /// Not in SPEC §3 (README: "Memory"); absent: the larger of 64 MiB and max_body_bytes.
    max_buffered_bytes: Option<u64>,
    /// Not in SPEC §3 (README: "Running it", reload on change); 0: off.
    #[serde(default)]
    reload_poll_s: u64,
    /// Not in SPEC §3 (README: "Behind a proxy or load balancer"); absent: header_timeout_s.
    keepalive_timeout_s: Option<u64>,
    /// Not in SPEC §3 (README: "Behind a proxy or load balancer"); absent: none.
    #[serde(default)]
    proxy_protocol_from: Vec<String>,
}

impl Default for FileServer {
    fn default() -> Self {
        FileServer {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            tls: None,
            shutdown_grace_s: default_grace(),
            shutdown_delay_s: 0,
            log_format: LogFormat::Text,
            trusted_proxies: Vec::new(),
            client_rate_limit: None,
            header_timeout_s: default_header_timeout(),
            body_timeout_s: default_body_timeout(),
            max_connections: default_max_connections(),
            max_buffered_bytes: None,
            reload_poll_s: 0,
            keepalive_timeout_s: None,
            proxy_protocol_from: Vec::new(),
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_max_body() -> u64 {
    1_048_576
}
fn default_grace() -> u64 {
    30
}
fn default_header_timeout() -> u64 {
    10
}
fn default_body_timeout() -> u64 {
    30
}
fn default_max_connections() -> usize {
    10_000
}
/// `max_buffered_bytes` when absent: 64 MiB, or one largest body if that is more.
fn default_max_buffered(max_body_bytes: u64) -> u64 {
    max_body_bytes.max(64 << 20)
}
/// Whether a listener bound to `listener` takes `addr`: the same port (not 0, which picks a
/// free one at bind) on the same address, or the listener on every address of `addr`'s
/// family (`[::]` takes IPv4's too: Linux binds it dual-stack by default).
fn takes(listener: SocketAddr, addr: SocketAddr) -> bool {
    let every = listener.ip().is_unspecified() && (listener.is_ipv6() || addr.is_ipv4());
    listener.port() == addr.port() && listener.port() != 0 && (listener.ip() == addr.ip() || every)
}

/// Whether two listeners would take the same port (the second bind would fail).
fn listens_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    takes(a, b) || takes(b, a)
}

/// `message` with every `"…"` (a value serde quoted, escapes and all) written `…`.
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let (mut quoted, mut escaped) = (false, false);
    for c in message.chars() {
        match (quoted, escaped, c) {
            (false, _, '"') => {
                quoted = true;
                out.push('…');
            }
            (false, _, c) => out.push(c),
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (true, false, _) => {}
        }
    }
    out
}

/// A path (or URL) in the form HTTP clients put on the wire: every byte outside ASCII
/// percent-encoded and every `%XX` escape's hex upper-cased (RFC 3986 §2.1, §6.2.2.1). So
/// `/hük`, `/h%c3%bck` and `/h%C3%BCk` name one source, and an upstream URL's `/hük` is
/// requested as `/h%C3%BCk`. Borrowed when nothing changed. Not on the hot path: it forms
/// the config's paths and URLs once, and a request's path only when no route matched it.
pub fn wire_form(path: &str) -> Cow<'_, str> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escape = (b == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit));
        if let Some(hex) = escape {
            out.push('%');
            out.extend(hex.iter().map(|h| char::from(h.to_ascii_uppercase())));
            i += 3;
            continue;
        }
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            out.extend([
                '%',
                char::from(HEX[usize::from(b >> 4)]),
                char::from(HEX[usize::from(b & 15)]),
            ]);
        }
        i += 1;
    }
    if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    }
}

/// Whether a connection to `target` lands on hookgate's own listener: an address the
/// listener takes that is surely this host's (the listener's own, or loopback). Linux
/// connects an unspecified address (`0.0.0.0`, `[::]`) to loopback, and an IPv4-mapped one
/// (`[::ffff:127.0.0.1]`) to its IPv4 address: those are where they land.
fn is_own_listener(target: &Target, listen: SocketAddr) -> bool {
    target.known_addrs().into_iter().any(|a| {
        let lands = match crate::admit::canonical(a.ip()) {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let a = SocketAddr::new(lands, a.port());
        takes(listen, a) && (a.ip() == listen.ip() || a.ip().is_loopback())
    })
}

/// The longest any duration in the config may be: longer is surely a mistake, and a
/// deadline that far out would overflow the clock's arithmetic (`Instant + Duration` panics
/// past ~292 billion years, which a `u64` of seconds reaches).
const MAX_DURATION_S: u64 = 365 * 24 * 3600;

/// The most ids one source's dedupe may remember: about 100 bytes each, so ~1 GiB.
const MAX_DEDUPE_CAPACITY: u64 = 10_000_000;

/// Not in SPEC §3 (README: "An app that restarts"): long enough for an app that
/// restarts in place to take connections again.
fn default_connect_retry_ms() -> u64 {
    3000
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: String,
    key: String,
    client_ca: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct FileRate {
    per_second: u32,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    url: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_connect_retry_ms")]
    connect_retry_ms: u64,
    ca: Option<String>,
    signing_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSource {
    name: String,
    platform: Platform,
    path: String,
    #[serde(default)]
    secrets: Vec<String>,
    verify: Option<VerifyMode>,
    #[serde(default)]
    forward: ForwardMode,
    #[serde(default = "default_true")]
    include_raw: bool,
    rate_limit: Option<FileRate>,
    dedupe_window_s: Option<u64>,
    dedupe_capacity: Option<u64>,
    upstream: Option<String>,
    timeout_ms: Option<u64>,
    allow_cidrs: Option<Vec<String>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum VerifyMode {
    None,
}

/// What a source sends upstream.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// The normalized event (SPEC §7).
    #[default]
    Event,
    /// The received bytes unchanged.
    Raw,
}

/// `[server] log_format`.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

// ------------------------------------------------------------- runtime types

/// The whole validated config.
#[derive(Debug)]
pub struct Config {
    /// The file it came from (for messages and for reloads).
    pub path: PathBuf,
    pub server: Server,
    pub admin: Option<SocketAddr>,
    pub upstream: UpstreamSettings,
    pub sources: Vec<Arc<Source>>,
    /// Secrets that look mistaken (never their values: the field that holds them).
    secret_warnings: Vec<String>,
    /// The config file and every file it names (`file:` secrets, certificates, CAs), with
    /// what each held when this config was made from it: what `reload_poll_s` watches.
    files: Vec<(PathBuf, FileState)>,
}

/// What a file held when the config was made from it: the SHA-256 of its bytes, or why it
/// could not be read. `reload_poll_s` compares it with what the file holds now. It is taken
/// from the very bytes the load read (certificates and CAs: read just before they are
/// loaded), never by reading again after the load: a file that changed in between (a
/// Secret the kubelet rotated as hookgate started) would then look unchanged, and the
/// config made from its old bytes would serve until some other file changed.
#[derive(Clone, PartialEq, Eq)]
pub enum FileState {
    Read([u8; 32]),
    Unreadable(std::io::ErrorKind),
}

/// The most a file the config names may hold (a secret, a certificate, a CA bundle: Mozilla's
/// whole one is 0.2 MiB), and the most the config itself may (some 150,000 sources).
const MAX_NAMED_FILE_BYTES: u64 = 1 << 20;
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads a file the config names (a secret, a certificate, a CA): a regular file (a symlink
/// to one, as Kubernetes mounts them, is one) of at most 1 MiB. Anything else is an error,
/// not a wait: `file:/dev/stdin` or a named pipe would hang the start (or a reload, and
/// with it the signals) until something wrote to it, and `/dev/zero` was read until memory
/// ran out.
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    read_regular(path, MAX_NAMED_FILE_BYTES)
}

/// A regular file of at most `limit` bytes. Checked before the file is opened: opening a
/// pipe waits too.
fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    read_at_most(path, limit)
}

/// Reads at most `limit` bytes; a file over it is an error. The config file itself is read
/// this way alone: it may be a pipe (`--config <(envsubst < hookgate.toml.in)`).
fn read_at_most(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    // One byte past the limit tells a file over it.
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {} MiB", limit >> 20),
        ));
    }
    Ok(bytes)
}

/// Without the digest: of a secret file, it is a hash of the secret.
impl fmt::Debug for FileState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileState::Read(_) => f.write_str("Read(<sha256>)"),
            FileState::Unreadable(kind) => write!(f, "Unreadable({kind:?})"),
        }
    }
}

impl FileState {
    fn of(read: &std::io::Result<Vec<u8>>) -> FileState {
        match read {
            Ok(bytes) => FileState::read(bytes),
            Err(e) => FileState::Unreadable(e.kind()),
        }
    }

    fn read(bytes: &[u8]) -> FileState {
        FileState::Read(sha2::Sha256::digest(bytes).into())
    }

    /// What the file at `path` holds now, up to the config's own bound (a named file's
    /// smaller one is the load's to enforce); a pipe is not opened.
    pub fn now(path: &Path) -> FileState {
        FileState::of(&read_regular(path, MAX_CONFIG_BYTES))
    }
}

/// `[server]`, validated.
#[derive(Debug)]
pub struct Server {
    pub listen: SocketAddr,
    pub max_body_bytes: u64,
    pub tls: Option<TlsFiles>,
    pub shutdown_grace: Duration,
    pub shutdown_delay: Duration,
    pub log_format: LogFormat,
    pub trusted_proxies: Vec<IpNet>,
    pub client_rate_limit: Option<RateLimit>,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    /// Request-body bytes held in memory at once, all connections together; at least
    /// `max_body_bytes`.
    pub max_buffered_bytes: u64,
    /// How often the files of [`Config::files`] are read again to reload on a change.
    pub reload_poll: Option<Duration>,
    /// How long a connection with no request open is kept for its next one (an HTTP/1.1
    /// connection's next whole head, an HTTP/2 connection's next stream); `header_timeout`
    /// unless set.
    pub keepalive_timeout: Duration,
    /// Peers that open each connection with a PROXY protocol header naming the client
    /// (`server::proxy_header`); a connection from one without a valid header is closed.
    pub proxy_protocol_from: Vec<IpNet>,
}

/// Certificate files of `[server] tls`, resolved against the config's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// A token bucket: `per_second` refill, `burst` capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// `[upstream]`, validated.
pub struct UpstreamSettings {
    /// For how long a TCP connection the app refused is tried again (zero: not at all).
    pub connect_retry: Duration,
    pub ca: Option<PathBuf>,
    /// The Standard Webhooks key (base64-decoded part after `whsec_`).
    pub signing_key: Option<Secret>,
}

impl fmt::Debug for UpstreamSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamSettings")
            .field("connect_retry", &self.connect_retry)
            .field("ca", &self.ca)
            .field(
                "signing_key",
                &self.signing_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// One `[[source]]`, validated: everything the request path needs, ready to use.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub platform: Platform,
    pub path: String,
    pub verifier: Verifier,
    pub forward: ForwardMode,
    pub include_raw: bool,
    pub rate_limit: Option<RateLimit>,
    pub dedupe_window: Duration,
    /// How many ids dedupe remembers at most (the oldest are forgotten first past it).
    pub dedupe_capacity: usize,
    pub upstream: Target,
    pub timeout: Duration,
    pub allow_cidrs: Option<Vec<IpNet>>,
    /// `x-hookgate-source`, made once.
    pub source_header: HeaderValue,
}

impl Source {
    /// The route in one line, with the settings in effect (`check`, the startup log, a
    /// reload's changes): several default by platform (dedupe, a barertc source's
    /// timeout), so the config file alone does not show them.
    pub fn route_line(&self) -> String {
        let verify = if self.verifier.is_none() {
            "none"
        } else {
            "platform proof"
        };
        let forward = match (self.forward, self.include_raw) {
            (ForwardMode::Raw, _) => "raw",
            (ForwardMode::Event, true) => "event with raw",
            (ForwardMode::Event, false) => "event without raw",
        };
        let dedupe = if self.dedupe_window.is_zero() {
            "off".to_string()
        } else {
            format!(
                "{} s ({} ids)",
                self.dedupe_window.as_secs(),
                self.dedupe_capacity
            )
        };
        let mut extra = String::new();
        if let Some(r) = self.rate_limit {
            extra += &format!(", rate_limit {}/s burst {}", r.per_second, r.burst);
        }
        if let Some(nets) = &self.allow_cidrs {
            let nets: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
            extra += &format!(", allow_cidrs [{}]", nets.join(", "));
        }
        format!(
            "POST {} -> source {:?} (platform {}, verify {verify}, forward {forward}, \
             dedupe {dedupe}, timeout {} ms{extra}) -> {}",
            self.path,
            self.name,
            self.platform.as_str(),
            self.timeout.as_millis(),
            self.upstream
        )
    }
}

// ------------------------------------------------------------------ loading

impl Config {
    /// One line per route ([`Source::route_line`]).
    pub fn route_lines(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.route_line()).collect()
    }

    /// Reads and validates the config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let error = |message: String| ConfigError {
            file: path.display().to_string(),
            field: "(file)".into(),
            message,
        };
        let bytes =
            read_at_most(path, MAX_CONFIG_BYTES).map_err(|e| error(format!("cannot read: {e}")))?;
        // A config that is a pipe cannot be read again to tell a change: it is recorded as
        // a poll finds it, so polls leave it alone (SIGHUP still reloads it).
        let state = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => FileState::read(&bytes),
            _ => FileState::now(path),
        };
        let text = String::from_utf8(bytes).map_err(|e| error(format!("cannot read: {e}")))?;
        Config::from_toml(&text, path, state)
    }

    /// Validates config text; `path` names the file in errors and anchors relative paths.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::from_toml(text, path, FileState::read(text.as_bytes()))
    }

    /// `from_toml_str`, with what the config file held as its reload poll will see it.
    fn from_toml(text: &str, path: &Path, state: FileState) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let file_config: FileConfig =
            toml::from_str(text).map_err(|e| toml_error(&file, text, &e))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Builder {
            file,
            base,
            files: RefCell::new(vec![(path.to_path_buf(), state)]),
        }
        .build(file_config, path)
    }
}

/// Condenses the toml crate's multi-line error into "line N: table.key: message".
fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e
        .message()
        .lines()
        .next()
        .unwrap_or("invalid TOML")
        .to_string();
    let Some(span) = e.span() else {
        return ConfigError {
            file: file.into(),
            field: "(toml)".into(),
            message,
        };
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    // The table this line sits in: the last `[header]` above it.
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    // serde quotes a value of the wrong type (`secrets = "the-secret"`: "invalid type:
    // string \"the-secret\", expected a sequence"); on a line that sets a secret (as its key
    // or inside an inline table) it is left out.
    let message = if line.contains("secret") {
        without_quoted(&message)
    } else {
        message
    };
    let field = match (table, key) {
        (Some(t), Some(k)) => format!("line {line_no}: {t}.{k}"),
        (Some(t), None) => format!("line {line_no}: [{t}]"),
        (None, Some(k)) => format!("line {line_no}: {k}"),
        (None, None) => format!("line {line_no}"),
    };
    ConfigError {
        file: file.into(),
        field,
        message,
    }
}

struct Builder {
    file: String,
    base: PathBuf,
    /// The files read so far, with what they held (`Config::files`).
    files: RefCell<Vec<(PathBuf, FileState)>>,
}

/// Under this many bytes, a barertc key is warned about: it is in the body, and the body's
/// SHA-256 is the event id (SPEC §7), which the log and the app see. 16 random characters
/// are out of reach of trying keys against an id; a word or a short code is not.
const MIN_BODY_KEY_BYTES: usize = 16;

/// Why a secret's value may be one no sender has (warned about, naming the field, never
/// the value).
fn secret_doubts(bytes: &[u8]) -> impl Iterator<Item = &'static str> {
    [
        (
            bytes.trim_ascii().len() != bytes.len(),
            "starts or ends with whitespace, which no sender will match if it is an env: \
             value's trailing newline (file: secrets are trimmed; env: and literal ones are \
             taken as they are)",
        ),
        // What an editor that writes UTF-8 "with BOM" (Windows Notepad did by default) puts
        // first in a file: part of a `file:` secret.
        (
            bytes.starts_with("\u{feff}".as_bytes()),
            "starts with a byte-order mark (U+FEFF), which no sender will match: the file was \
             likely saved as UTF-8 with BOM",
        ),
    ]
    .into_iter()
    .filter_map(|(doubtful, why)| doubtful.then_some(why))
}

impl Builder {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// A file the config names, relative to the config's folder. An empty path would name
    /// that folder, and fail later with a message about neither.
    fn file_path(&self, field: &str, p: &str) -> Result<PathBuf, ConfigError> {
        if p.is_empty() {
            return Err(self.err(field, "an empty file path"));
        }
        let p = Path::new(p);
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        })
    }

    /// `env:NAME`, `file:PATH` (trailing whitespace trimmed) or a literal. Never quotes the value.
    fn secret(&self, field: &str, reference: &str) -> Result<Secret, ConfigError> {
        let value: Vec<u8> = if let Some(name) = reference.strip_prefix("env:") {
            if name.is_empty() {
                return Err(self.err(field, "\"env:\" names no environment variable"));
            }
            std::env::var_os(name)
                .ok_or_else(|| self.err(field, format!("environment variable {name} is not set")))?
                .into_encoded_bytes()
        } else if let Some(p) = reference.strip_prefix("file:") {
            let path = self.file_path(field, p)?;
            let read = read_file(&path);
            self.files
                .borrow_mut()
                .push((path.clone(), FileState::of(&read)));
            let mut bytes = read.map_err(|e| {
                self.err(
                    field,
                    format!("cannot read secret file {}: {e}", path.display()),
                )
            })?;
            let trimmed = bytes.trim_ascii_end().len();
            bytes.truncate(trimmed);
            bytes
        } else {
            reference.as_bytes().to_vec()
        };
        if value.is_empty() {
            return Err(self.err(field, "the secret resolves to an empty string"));
        }
        Ok(Secret::new(value))
    }

    fn socket_addr(&self, field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.parse().map_err(|_| {
            self.err(
                field,
                format!(
                    "not an IP address and port: {s:?} (e.g. \"0.0.0.0:8080\" or \"[::]:8080\"; \
                     a host name is not looked up)"
                ),
            )
        })
    }

    fn nets(&self, field: &str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
        let mut nets = Vec::with_capacity(list.len());
        for (i, s) in list.iter().enumerate() {
            let net = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| self.err(format!("{field}[{i}]"), format!("not a CIDR: {s:?}")))?;
            push_as_compared(&mut nets, net);
        }
        Ok(nets)
    }

    fn rate(&self, field: &str, r: FileRate) -> Result<RateLimit, ConfigError> {
        let burst = r.burst.unwrap_or(r.per_second);
        if r.per_second == 0 || burst == 0 {
            return Err(self.err(field, "per_second and burst must be at least 1"));
        }
        Ok(RateLimit {
            per_second: r.per_second,
            burst,
        })
    }

    fn positive(&self, field: &str, v: u64) -> Result<u64, ConfigError> {
        if v == 0 {
            Err(self.err(field, "must be greater than 0"))
        } else {
            Ok(v)
        }
    }

    /// A duration in seconds: at most `MAX_DURATION_S`, and above 0 unless `zero_allowed`.
    fn seconds(&self, field: &str, v: u64, zero_allowed: bool) -> Result<Duration, ConfigError> {
        if !zero_allowed {
            self.positive(field, v)?;
        }
        if v > MAX_DURATION_S {
            return Err(self.err(field, format!("must be at most {MAX_DURATION_S} (a year)")));
        }
        Ok(Duration::from_secs(v))
    }

    /// `dedupe_capacity`: at least one id, and at most what fits in about a GiB.
    fn dedupe_capacity(&self, field: &str, v: u64) -> Result<usize, ConfigError> {
        if !(1..=MAX_DEDUPE_CAPACITY).contains(&v) {
            return Err(self.err(
                field,
                format!(
                    "must be between 1 and {MAX_DEDUPE_CAPACITY} (about 100 bytes of memory per id)"
                ),
            ));
        }
        usize::try_from(v).map_err(|_| self.err(field, "too large for this machine"))
    }

    /// A timeout in milliseconds: above 0 and at most `MAX_DURATION_S` seconds.
    fn millis(&self, field: &str, v: u64) -> Result<u64, ConfigError> {
        let max = MAX_DURATION_S * 1000;
        if v > max {
            return Err(self.err(field, format!("must be at most {max} (a year)")));
        }
        self.positive(field, v)
    }

    /// An upstream URL, which may not be hookgate's own listener (`listen`): every delivery
    /// would come back to it unsigned and be refused.
    fn upstream_uri(
        &self,
        field: &str,
        s: &str,
        listen: SocketAddr,
    ) -> Result<Target, ConfigError> {
        let quoted = || format!("{:?}", shown_url(s));
        // A request line holds ASCII only: a path written in UTF-8 is sent percent-encoded,
        // as curl and browsers send it (hyper's URI parser takes the raw bytes as they are).
        let uri: Uri = wire_form(s)
            .parse()
            .map_err(|_| self.err(field, format!("not a URL: {}", quoted())))?;
        let target =
            Target::from_uri(uri).map_err(|e| self.err(field, format!("{e}: {}", quoted())))?;
        if is_own_listener(&target, listen) {
            return Err(self.err(
                field,
                format!(
                    "{} is hookgate's own listener (server.listen {listen}), not the app",
                    quoted()
                ),
            ));
        }
        Ok(target)
    }

    fn build(&self, f: FileConfig, path: &Path) -> Result<Config, ConfigError> {
        let s = &f.server;
        let max_body_bytes = self.positive("server.max_body_bytes", s.max_body_bytes)?;
        let max_buffered_bytes = match s.max_buffered_bytes {
            None => default_max_buffered(max_body_bytes),
            Some(n) if n < max_body_bytes => {
                return Err(self.err(
                    "server.max_buffered_bytes",
                    format!("must be at least server.max_body_bytes ({max_body_bytes})"),
                ));
            }
            Some(n) => n,
        };
        let header_timeout = self.seconds("server.header_timeout_s", s.header_timeout_s, false)?;
        let server = Server {
            listen: self.socket_addr("server.listen", &s.listen)?,
            max_body_bytes,
            tls: s
                .tls
                .as_ref()
                .map(|t| -> Result<TlsFiles, ConfigError> {
                    Ok(TlsFiles {
                        cert: self.file_path("server.tls.cert", &t.cert)?,
                        key: self.file_path("server.tls.key", &t.key)?,
                        client_ca: t
                            .client_ca
                            .as_deref()
                            .map(|c| self.file_path("server.tls.client_ca", c))
                            .transpose()?,
                    })
                })
                .transpose()?,
            shutdown_grace: self.seconds("server.shutdown_grace_s", s.shutdown_grace_s, true)?,
            shutdown_delay: self.seconds("server.shutdown_delay_s", s.shutdown_delay_s, true)?,
            log_format: s.log_format,
            trusted_proxies: self.nets("server.trusted_proxies", &s.trusted_proxies)?,
            client_rate_limit: s
                .client_rate_limit
                .map(|r| self.rate("server.client_rate_limit", r))
                .transpose()?,
            header_timeout,
            keepalive_timeout: match s.keepalive_timeout_s {
                Some(v) => self.seconds("server.keepalive_timeout_s", v, false)?,
                None => header_timeout,
            },
            body_timeout: self.seconds("server.body_timeout_s", s.body_timeout_s, false)?,
            max_connections: self.positive("server.max_connections", s.max_connections as u64)?
                as usize,
            max_buffered_bytes,
            reload_poll: Some(self.seconds("server.reload_poll_s", s.reload_poll_s, true)?)
                .filter(|d| !d.is_zero()),
            proxy_protocol_from: self.nets("server.proxy_protocol_from", &s.proxy_protocol_from)?,
        };
        let admin = f
            .admin
            .as_ref()
            .map(|a| self.socket_addr("admin.listen", &a.listen))
            .transpose()?;
        // Caught here, so `check` finds it too: the second bind would fail at `run`.
        if let Some(admin) = admin
            && listens_overlap(admin, server.listen)
        {
            return Err(self.err(
                "admin.listen",
                format!("{admin} overlaps server.listen ({})", server.listen),
            ));
        }

        let up = f.upstream.as_ref();
        let default_url = up
            .and_then(|u| u.url.as_deref())
            .map(|u| self.upstream_uri("upstream.url", u, server.listen))
            .transpose()?;
        let default_timeout_ms = match up {
            Some(u) => self.millis("upstream.timeout_ms", u.timeout_ms)?,
            None => default_timeout_ms(),
        };
        let upstream = UpstreamSettings {
            connect_retry: match up.map_or(default_connect_retry_ms(), |u| u.connect_retry_ms) {
                0 => Duration::ZERO,
                ms => Duration::from_millis(self.millis("upstream.connect_retry_ms", ms)?),
            },
            ca: up
                .and_then(|u| u.ca.as_deref())
                .map(|c| self.file_path("upstream.ca", c))
                .transpose()?,
            signing_key: up
                .and_then(|u| u.signing_secret.as_deref())
                .map(|r| self.signing_key(r))
                .transpose()?,
        };

        if f.sources.is_empty() {
            return Err(self.err("source", "at least one [[source]] is required"));
        }
        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        let mut sources = Vec::with_capacity(f.sources.len());
        let mut secret_warnings = Vec::new();
        for (i, src) in f.sources.iter().enumerate() {
            let at = |k: &str| format!("source[{i}].{k}");
            if src.name.is_empty() {
                return Err(self.err(at("name"), "must not be empty"));
            }
            // `HeaderValue` itself takes bytes past 0x7f (and tabs): a UTF-8 name would reach
            // the app as bytes its HTTP library reads as Latin-1 (`prÃ¶tocol`), not as the
            // event's `source` says.
            let printable = |b: &u8| (b' '..=b'~').contains(b);
            let source_header = HeaderValue::from_str(&src.name)
                .ok()
                .filter(|_| src.name.as_bytes().iter().all(printable))
                .ok_or_else(|| {
                    self.err(
                        at("name"),
                        "must be printable ASCII (it is sent in a header)",
                    )
                })?;
            if !names.insert(src.name.clone()) {
                return Err(self.err(at("name"), format!("duplicate source name {:?}", src.name)));
            }
            // Matched against the request's path as sent, which never holds a space, a
            // control character, a query or a fragment: such a path could never match.
            // Non-ASCII is matched in its percent-encoded form, the one senders send.
            let path_byte = |b: &u8| *b > b' ' && *b != 0x7f && *b != b'?' && *b != b'#';
            if !src.path.starts_with('/') || !src.path.as_bytes().iter().all(path_byte) {
                return Err(self.err(
                    at("path"),
                    "must start with / and hold no space, control character, query or fragment",
                ));
            }
            let path = wire_form(&src.path).into_owned();
            if path == "/healthz" || path == "/readyz" {
                return Err(self.err(at("path"), format!("{path} is reserved")));
            }
            if !paths.insert(path.clone()) {
                return Err(self.err(at("path"), format!("duplicate path {path:?}")));
            }
            let verifier = match src.verify {
                Some(VerifyMode::None) => {
                    if !src.secrets.is_empty() {
                        return Err(self.err(
                            at("secrets"),
                            "must be absent or empty with verify = \"none\"",
                        ));
                    }
                    Verifier::none()
                }
                None => {
                    if src.secrets.is_empty() {
                        return Err(self.err(
                            at("secrets"),
                            "must list at least one secret (or say verify = \"none\")",
                        ));
                    }
                    let mut secrets = Vec::with_capacity(src.secrets.len());
                    for (j, reference) in src.secrets.iter().enumerate() {
                        let field = at(&format!("secrets[{j}]"));
                        let secret = self.secret(&field, reference)?;
                        let doubts = secret_doubts(secret.expose());
                        secret_warnings.extend(doubts.map(|d| format!("warning: {field}: {d}")));
                        if src.platform == Platform::Barertc
                            && secret.expose().len() < MIN_BODY_KEY_BYTES
                        {
                            secret_warnings.push(format!(
                                "warning: {field}: shorter than {MIN_BODY_KEY_BYTES} characters: \
                                 BareRTC sends its key in the body, whose SHA-256 is the event id \
                                 of a delivery (SPEC §7), written to the log and sent to the app, \
                                 and a short key can be found from one id by trying keys offline \
                                 (BareRTC's own default is a random UUID)"
                            ));
                        }
                        secrets.push(secret);
                    }
                    Verifier::new(src.platform.scheme(), secrets)
                }
            };
            if src.forward == ForwardMode::Raw
                && matches!(src.platform, Platform::Barertc | Platform::Spika)
            {
                return Err(self.err(
                    at("forward"),
                    format!(
                        "\"raw\" is refused for {} (its body can hold the secret)",
                        src.platform.as_str()
                    ),
                ));
            }
            let upstream = match (&src.upstream, &default_url) {
                (Some(u), _) => self.upstream_uri(&at("upstream"), u, server.listen)?,
                (None, Some(u)) => u.clone(),
                (None, None) => {
                    return Err(self.err(
                        at("upstream"),
                        "no upstream URL: set [upstream] url or the source's upstream",
                    ));
                }
            };
            let timeout_ms = match src.timeout_ms {
                Some(t) => self.millis(&at("timeout_ms"), t)?,
                // BareRTC gives up after 10 s: answer it before it stops listening.
                None => src
                    .platform
                    .default_timeout_cap_ms()
                    .map_or(default_timeout_ms, |cap| default_timeout_ms.min(cap)),
            };
            sources.push(Arc::new(Source {
                name: src.name.clone(),
                platform: src.platform,
                path,
                verifier,
                forward: src.forward,
                include_raw: src.include_raw,
                rate_limit: src
                    .rate_limit
                    .map(|r| self.rate(&at("rate_limit"), r))
                    .transpose()?,
                dedupe_window: self.seconds(
                    &at("dedupe_window_s"),
                    src.dedupe_window_s
                        .unwrap_or(src.platform.default_dedupe_window_s()),
                    true,
                )?,
                dedupe_capacity: self.dedupe_capacity(
                    &at("dedupe_capacity"),
                    src.dedupe_capacity
                        .unwrap_or(crate::dedupe::CAPACITY as u64),
                )?,
                upstream,
                timeout: Duration::from_millis(timeout_ms),
                allow_cidrs: src
                    .allow_cidrs
                    .as_ref()
                    .map(|l| self.nets(&at("allow_cidrs"), l))
                    .transpose()?,
                source_header,
            }));
        }
        let mut files = self.files.take();
        // Read here, before the start or the reload loads them: should one change in
        // between, the poll after sees it as changed and loads it again.
        let mut named: Vec<&PathBuf> = upstream.ca.iter().collect();
        if let Some(tls) = &server.tls {
            named.extend([&tls.cert, &tls.key]);
            named.extend(&tls.client_ca);
        }
        files.extend(named.into_iter().map(|p| (p.clone(), FileState::now(p))));
        // Stable: of a file read twice (a secret file two sources name), the first read stays.
        files.sort_by(|a, b| a.0.cmp(&b.0));
        files.dedup_by(|a, b| a.0 == b.0);
        Ok(Config {
            path: path.to_path_buf(),
            server,
            admin,
            upstream,
            sources,
            secret_warnings,
            files,
        })
    }

    /// `whsec_` + standard base64 (padded) of at least 24 bytes: what every Standard
    /// Webhooks library accepts as it is.
    fn signing_key(&self, reference: &str) -> Result<Secret, ConfigError> {
        let field = "upstream.signing_secret";
        let secret = self.secret(field, reference)?;
        let bytes = secret.expose();
        // An `env:` value with a trailing newline (`echo` into a Secret) is the usual cause.
        let hint = if bytes.first().is_some_and(u8::is_ascii_whitespace)
            || bytes.last().is_some_and(u8::is_ascii_whitespace)
        {
            " (it starts or ends with whitespace: a trailing newline?)"
        } else {
            ""
        };
        let text = std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.strip_prefix("whsec_"))
            .ok_or_else(|| self.err(field, format!("must be whsec_ followed by base64{hint}")))?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| {
                self.err(
                    field,
                    format!("the part after whsec_ is not standard base64{hint}"),
                )
            })?;
        if key.len() < 24 {
            return Err(self.err(field, "the key must be at least 24 bytes"));
        }
        Ok(Secret::new(key))
    }
}

impl Config {
    /// The config file and every file it names (`file:` secrets, certificates, CAs).
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(path, _)| path.as_path())
    }

    /// Whether a file of [`Config::files`] holds something else now than when this config
    /// was made from it (`reload_poll_s`).
    pub fn files_changed(&self) -> bool {
        self.files
            .iter()
            .any(|(path, state)| FileState::now(path) != *state)
    }

    /// Warnings an operator must see at startup and in `check`.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for s in &self.sources {
            if s.verifier.is_none() {
                warnings.push(format!(
                    "warning: source {:?} has verify = \"none\": every request to {} is forwarded unverified",
                    s.name, s.path
                ));
            }
            if let Some(nets) = &s.allow_cidrs {
                // "Any of none": fail-closed, but every delivery then gets 403, which is
                // more likely a template's empty list than a wish to refuse everyone.
                if nets.is_empty() {
                    warnings.push(format!(
                        "warning: source {:?} has an empty allow_cidrs: every request to {} \
                         gets 403 (leave allow_cidrs out to admit every address)",
                        s.name, s.path
                    ));
                }
                host_bits(
                    &mut warnings,
                    &format!("source {:?} allow_cidrs", s.name),
                    nets,
                );
            }
            // Legitimate for an app that answers nothing worth repeating, but a BareRTC
            // profile request is the same body (so the same id) every time a card is opened.
            if let Some(lost) = s.platform.answer_read_by_sender()
                && !s.dedupe_window.is_zero()
            {
                warnings.push(format!(
                    "warning: source {:?}: dedupe_window_s = {} on {}, whose sender reads the \
                     answer: a duplicate gets 200 {{}} instead of the app's reply ({lost})",
                    s.name,
                    s.dedupe_window.as_secs(),
                    s.platform.as_str(),
                ));
            }
            if let Some(waits) = s.platform.sender_waits()
                && s.timeout >= waits
            {
                warnings.push(format!(
                    "warning: source {:?}: timeout_ms = {} on {}, whose sender gives up after \
                     {} s: a slower answer, or the 504, reaches no one (the default is {})",
                    s.name,
                    s.timeout.as_millis(),
                    s.platform.as_str(),
                    waits.as_secs(),
                    s.platform.default_timeout_cap_ms().unwrap_or_default()
                ));
            }
            // What the source's own rate limit lets through in one window is what dedupe
            // may have to hold; without a rate limit only the running count can tell.
            if let Some(rate) = s.rate_limit
                && !s.dedupe_window.is_zero()
            {
                let most = u64::from(rate.per_second)
                    .saturating_mul(s.dedupe_window.as_secs())
                    .saturating_add(u64::from(rate.burst));
                if most > s.dedupe_capacity as u64 {
                    warnings.push(format!(
                        "warning: source {:?}: its rate_limit lets up to {most} ids through in \
                         dedupe_window_s = {}, more than dedupe_capacity = {}: past that, ids are \
                         forgotten early and a late retry is forwarded again (raise \
                         dedupe_capacity or shorten dedupe_window_s)",
                        s.name,
                        s.dedupe_window.as_secs(),
                        s.dedupe_capacity
                    ));
                }
            }
        }
        warnings.extend(self.secret_warnings.iter().cloned());
        // A CA for apps that are all reached over plain HTTP is never used: most likely an
        // `http://` written where `https://` was meant, and the app is spoken to in clear.
        if let Some(ca) = &self.upstream.ca
            && !self
                .sources
                .iter()
                .any(|s| s.upstream.uri.scheme_str() == Some("https"))
        {
            warnings.push(format!(
                "warning: upstream.ca ({}) is set, but no upstream URL is https://: it is not used",
                ca.display()
            ));
        }
        // Legitimate behind a front proxy or balancer that is the only way in, but the
        // operator should know it was meant.
        let server = &self.server;
        let claims = [
            (
                "server.proxy_protocol_from",
                &server.proxy_protocol_from,
                "a PROXY header",
            ),
            (
                "server.trusted_proxies",
                &server.trusted_proxies,
                "X-Forwarded-For",
            ),
        ];
        for (field, nets, claim) in claims {
            host_bits(&mut warnings, field, nets);
            if let Some(all) = nets.iter().find(|n| n.prefix_len() == 0) {
                warnings.push(format!(
                    "warning: {field} includes {all}, every address: any client that reaches \
                     hookgate directly can name its own address in {claim}, past allow_cidrs \
                     and client_rate_limit"
                ));
            }
        }
        warnings
    }
}

/// Pushes `net` in the form client addresses are compared with: those are compared in their
/// IPv4 form when IPv4-mapped (SPEC §5), so a net of IPv4-mapped addresses
/// (`::ffff:10.0.0.0/104`, how a dual-stack `[::]` listener shows IPv4 peers) is pushed as its
/// IPv4 net (`10.0.0.0/8`), and a net that holds all of them (`::/0`) also as `0.0.0.0/0`.
/// As written, neither would ever hold an IPv4 client, and every delivery would get 403.
fn push_as_compared(nets: &mut Vec<IpNet>, net: IpNet) {
    const MAPPED: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96);
    match net {
        IpNet::V6(v6) if MAPPED.contains(&v6) => {
            // Inside the block, the address is mapped and the prefix 96–128: this is `Some`.
            let v4 = v6
                .addr()
                .to_ipv4_mapped()
                .and_then(|addr| Ipv4Net::new(addr, v6.prefix_len() - MAPPED.prefix_len()).ok());
            nets.push(v4.map_or(net, IpNet::V4));
        }
        IpNet::V6(v6) if v6.contains(&MAPPED) => {
            nets.push(net);
            nets.push(IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0)));
        }
        _ => nets.push(net),
    }
}

/// Warns of each CIDR of `field` with address bits set past its prefix: `10.0.0.1/8` is
/// taken as `10.0.0.0/8`, and the operator may have meant `10.0.0.1/32`.
fn host_bits(warnings: &mut Vec<String>, field: &str, nets: &[IpNet]) {
    for net in nets.iter().filter(|n| n.trunc() != **n) {
        warnings.push(format!(
            "warning: {field}: {net} has address bits set past its prefix; it is taken as {}",
            net.trunc()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const MINIMAL: &str = r#"
[upstream]
url = "http://127.0.0.1:3000/hooks"

[[source]]
name = "p"
platform = "protocol"
path = "/hooks/p"
secrets = ["literal-secret"]
"#;

    /// `MINIMAL` with `lines` (TOML, one key per line) added to its one source.
    fn in_source(lines: &str) -> String {
        format!("{MINIMAL}{lines}\n")
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("/etc/hookgate/test.toml"))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_are_the_spec_defaults() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(c.server.listen, "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(c.server.max_body_bytes, 1_048_576);
        assert_eq!(c.server.header_timeout, Duration::from_secs(10));
        assert_eq!(c.server.keepalive_timeout, Duration::from_secs(10));
        assert_eq!(c.upstream.connect_retry, Duration::from_secs(3));
        assert_eq!(c.server.body_timeout, Duration::from_secs(30));
        assert_eq!(c.server.max_connections, 10_000);
        assert_eq!(c.server.max_buffered_bytes, 64 << 20);
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
        let s = &c.sources[0];
        assert_eq!(s.forward, ForwardMode::Event);
        assert!(s.include_raw);
        assert_eq!(s.timeout, Duration::from_millis(10_000));
        assert_eq!(s.dedupe_window, Duration::from_secs(300));
        assert_eq!(s.dedupe_capacity, 100_000);
        assert!(s.rate_limit.is_none());
        assert!(c.admin.is_none());
    }

    #[test]
    fn a_rate_limit_past_the_dedupe_capacity_is_warned_about() {
        let dedupe_warnings = |lines: &str| -> Vec<String> {
            let c = parse(&in_source(lines)).expect("valid");
            c.warnings()
                .into_iter()
                .filter(|w| w.contains("dedupe_capacity"))
                .collect()
        };
        // 1,000/s over the default 300 s, and a burst of as many: 301,000 against 100,000.
        let w = dedupe_warnings("rate_limit = { per_second = 1000 }");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("source \"p\"") && w[0].contains("301000"),
            "{w:?}"
        );
        for fits in [
            "rate_limit = { per_second = 333, burst = 100 }",
            "rate_limit = { per_second = 1000 }\ndedupe_capacity = 301000",
            "rate_limit = { per_second = 1000 }\ndedupe_window_s = 0",
            "dedupe_capacity = 1",
        ] {
            assert_eq!(dedupe_warnings(fits), Vec::<String>::new(), "{fits}");
        }
        assert_eq!(
            dedupe_warnings("rate_limit = { per_second = 1000 }\ndedupe_capacity = 300999").len(),
            1
        );
    }

    /// The README's config table is the operators' reference: each table's keys there are
    /// the keys the parser takes (read off its "unknown field … expected one of" error), no
    /// more and no fewer.
    #[test]
    fn every_config_key_has_a_row_in_the_readme_and_every_row_a_key() {
        let accepted = |text: &str| -> BTreeSet<String> {
            let e = err(text);
            // "expected one of `a`, `b`" or, for a table of one key, "expected `a`".
            let list = e
                .split("unknown field `zz_unknown`, expected")
                .nth(1)
                .unwrap_or_else(|| panic!("no key list in: {e}"));
            list.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        let unknown = "zz_unknown = 1";
        let code = [
            (
                "[server]",
                accepted(&format!("[server]\n{unknown}\n{MINIMAL}")),
            ),
            (
                "[admin]",
                accepted(&format!(
                    "[admin]\nlisten = \"127.0.0.1:9\"\n{unknown}\n{MINIMAL}"
                )),
            ),
            (
                "[upstream]",
                accepted(&MINIMAL.replace("[upstream]\n", &format!("[upstream]\n{unknown}\n"))),
            ),
            ("[[source]]", accepted(&in_source(unknown))),
        ];
        let readme = include_str!("../README.md");
        let mut documented: Vec<(&str, BTreeSet<String>)> = Vec::new();
        for line in readme
            .lines()
            .skip_while(|l| !l.starts_with("| `[server] listen`"))
            .take_while(|l| l.starts_with('|'))
        {
            let cell = line.split('|').nth(1).unwrap_or("").trim();
            for (name, _) in &code {
                if cell.starts_with(&format!("`{name} ")) {
                    documented.push((name, BTreeSet::new()));
                }
            }
            let keys = cell
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|k| k.rsplit(' ').next().unwrap_or(k).to_string());
            if let Some((_, set)) = documented.last_mut() {
                set.extend(keys);
            }
        }
        assert_eq!(documented.len(), 4, "the README's config table's sections");
        for ((name, in_code), (doc_name, in_readme)) in code.iter().zip(&documented) {
            assert_eq!((name, in_code), (doc_name, in_readme));
        }
    }

    #[test]
    fn dedupe_on_a_platform_whose_sender_reads_the_answer_is_warned_about() {
        let config = |platform: &str, lines: &str| {
            in_source(lines).replace(
                "platform = \"protocol\"",
                &format!("platform = {platform:?}"),
            )
        };
        let reads_answer = |platform: &str, lines: &str| -> Vec<String> {
            parse(&config(platform, lines))
                .expect("valid")
                .warnings()
                .into_iter()
                .filter(|w| w.contains("reads the answer"))
                .collect()
        };
        for (platform, what) in [("barertc", "profile card"), ("funtek", "bot")] {
            let w = reads_answer(platform, "dedupe_window_s = 60");
            assert_eq!(w.len(), 1, "{platform}: {w:?}");
            assert!(
                w[0].contains("source \"p\"") && w[0].contains(what),
                "{w:?}"
            );
            assert!(
                reads_answer(platform, "").is_empty(),
                "{platform}: off by default"
            );
        }
        for platform in ["protocol", "spika"] {
            assert!(
                reads_answer(platform, "dedupe_window_s = 60").is_empty(),
                "{platform}"
            );
        }
    }

    #[test]
    fn dedupe_capacity_is_between_one_id_and_ten_million() {
        for bad in [0, 10_000_001, u64::MAX] {
            let e = err(&in_source(&format!("dedupe_capacity = {bad}")));
            assert!(
                e.contains("source[0].dedupe_capacity") && e.contains("between 1 and 10000000"),
                "{bad}: {e}"
            );
        }
        for good in [1, 10_000_000] {
            let c = parse(&in_source(&format!("dedupe_capacity = {good}"))).expect("valid");
            assert_eq!(c.sources[0].dedupe_capacity as u64, good);
        }
        assert!(err(&in_source("dedupe_capacity = -1")).contains("dedupe_capacity"));
    }

    #[test]
    fn the_body_budget_holds_at_least_one_largest_body() {
        let with = |server: &str| format!("[server]\n{server}\n{MINIMAL}");
        let c = parse(&with("max_body_bytes = 100000000")).expect("valid");
        assert_eq!(c.server.max_buffered_bytes, 100_000_000, "default follows");
        let c = parse(&with("max_buffered_bytes = 2000000")).expect("valid");
        assert_eq!(c.server.max_buffered_bytes, 2_000_000);
        let c = parse(&with("max_buffered_bytes = 1048576")).expect("exactly one body");
        assert_eq!(c.server.max_buffered_bytes, 1_048_576);
        let e = err(&with("max_buffered_bytes = 1000"));
        assert!(
            e.contains("server.max_buffered_bytes")
                && e.contains("at least server.max_body_bytes (1048576)"),
            "{e}"
        );
    }

    /// A listen address must be an IP address and port; the error says so, and that a host
    /// name is not looked up.
    #[test]
    fn a_listen_address_by_host_name_is_refused_with_what_is_wanted() {
        for listen in ["localhost:8080", ":8080", "8080"] {
            let e = err(&format!("[server]\nlisten = {listen:?}\n{MINIMAL}"));
            assert!(
                e.contains(&format!(
                    "server.listen: not an IP address and port: {listen:?}"
                )) && e.contains("a host name is not looked up"),
                "{e}"
            );
        }
    }

    /// `keepalive_timeout_s` follows `header_timeout_s` unless set (SPEC's behaviour), and,
    /// like it, is above 0.
    #[test]
    fn keepalive_timeout_follows_the_head_deadline_unless_set() {
        let with = |server: &str| format!("[server]\n{server}\n{MINIMAL}");
        let c = parse(&with("header_timeout_s = 4")).expect("valid");
        assert_eq!(c.server.keepalive_timeout, Duration::from_secs(4));
        let c = parse(&with("header_timeout_s = 4\nkeepalive_timeout_s = 75")).expect("valid");
        assert_eq!(
            (c.server.header_timeout, c.server.keepalive_timeout),
            (Duration::from_secs(4), Duration::from_secs(75))
        );
        let e = err(&with("keepalive_timeout_s = 0"));
        assert!(e.contains("server.keepalive_timeout_s"), "{e}");
    }

    /// An upstream URL's UTF-8 goes out percent-encoded: a request line is ASCII.
    #[test]
    fn an_upstream_url_in_utf8_is_requested_percent_encoded() {
        let c = parse(&MINIMAL.replace("http://127.0.0.1:3000/hooks", "http://app:3000/hük?q=ä"))
            .expect("valid");
        let head = c.sources[0].upstream.head_prefix();
        assert!(
            head.starts_with(b"POST /h%C3%BCk?q=%C3%A4 HTTP/1.1\r\nhost: app:3000\r\n"),
            "{}",
            String::from_utf8_lossy(head)
        );
    }

    /// An upstream URL with `user:password@` is refused, and the error line does not quote
    /// the password, whether the URL parses or not.
    #[test]
    fn an_upstream_url_error_never_quotes_its_password() {
        for url in [
            "http://hook:s3cr3t-pw@127.0.0.1:3000/hooks",
            "http://hook:s3cr3t-pw@app host/hooks",
            "https://s3cr3t-pw@app:8443",
        ] {
            let e = err(&MINIMAL.replace("http://127.0.0.1:3000/hooks", url));
            assert!(e.contains("upstream.url"), "{e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
        let e = err(&MINIMAL.replace("http://127.0.0.1:3000/hooks", "http://h:pw@app:3000/x"));
        assert!(e.contains(r#""http://…@app:3000/x""#), "{e}");
        assert_eq!(shown_url("http://app/x@y"), "http://app/x@y");
    }

    /// A secret written where the config wants another type is not quoted back.
    #[test]
    fn a_secret_of_the_wrong_type_is_not_quoted() {
        let e = err(&MINIMAL.replace(r#"secrets = ["literal-secret"]"#, r#"secrets = "s3cr\"et""#));
        assert!(
            e.contains("line 9: source.secrets") && e.contains("expected a sequence"),
            "{e}"
        );
        assert!(!e.contains("s3cr") && !e.contains("et\""), "{e}");
        let e = err(&MINIMAL.replace("[upstream]", "[upstream]\nsigning_secret = 5"));
        assert!(e.contains("upstream.signing_secret"), "{e}");
        let inline = "source = [{ name = \"p\", platform = \"protocol\", path = \"/p\", \
            secrets = \"s3cr3t\" }]\n[upstream]\nurl = \"http://127.0.0.1:3000/\"\n";
        let e = err(inline);
        assert!(
            e.contains("expected a sequence") && !e.contains("s3cr3t"),
            "{e}"
        );
        // Elsewhere the value helps and is quoted.
        let e = err(&MINIMAL.replace("[upstream]", "[upstream]\ntimeout_ms = \"soon\""));
        assert!(e.contains(r#"string "soon""#), "{e}");
        assert_eq!(without_quoted(r#"a "b\"c" d "e""#), "a … d …");
    }

    /// A source path is matched byte for byte against the request's path as sent, so one
    /// that no request path can be (a fragment, a space, a control character) is refused;
    /// raw UTF-8 is one a request can have.
    #[test]
    fn source_paths_are_ones_a_request_can_have() {
        // As a TOML basic string: control characters as \uXXXX escapes.
        let with = |path: &str| {
            let escaped: String = path
                .chars()
                .map(|c| match c {
                    c if c.is_control() => format!("\\u{:04X}", u32::from(c)),
                    c => c.to_string(),
                })
                .collect();
            MINIMAL.replace("\"/hooks/p\"", &format!("\"{escaped}\""))
        };
        for bad in ["", "p", "/p?x=1", "/p#f", "/p q", "/p\t", "/p\u{7f}"] {
            let e = err(&with(bad));
            assert!(
                e.contains("source[0].path") && e.contains("no space"),
                "{bad:?}: {e}"
            );
        }
        for (good, wire) in [
            ("/p", "/p"),
            ("/%C3%BC", "/%C3%BC"),
            ("/%c3%bc", "/%C3%BC"),
            ("/hük", "/h%C3%BCk"),
            ("/a/b-c_d.e~f!$&'()*+,;=:@%", "/a/b-c_d.e~f!$&'()*+,;=:@%"),
        ] {
            let c = parse(&with(good)).unwrap_or_else(|e| panic!("{good:?}: {e}"));
            assert_eq!(c.sources[0].path, wire);
        }
        // One path in two spellings is one path.
        let twice = format!(
            "{}\n[[source]]\nname = \"b\"\nplatform = \"protocol\"\npath = \"/h%C3%BCk\"\nsecrets = [\"x\"]\n",
            with("/hük")
        );
        let e = err(&twice);
        assert!(
            e.contains("source[1].path") && e.contains("duplicate path \"/h%C3%BCk\""),
            "{e}"
        );
    }

    /// The wire form: non-ASCII bytes escaped, escapes' hex upper-cased, anything else
    /// (a lone `%`, a `%` before non-hex) as it was; borrowed when nothing changes.
    #[test]
    fn wire_form_escapes_non_ascii_and_upper_cases_escapes() {
        for (path, wire) in [
            ("/ä", "/%C3%A4"),
            ("/%e2%82%ac/x", "/%E2%82%AC/x"),
            ("/%aZ%a", "/%aZ%a"),
            ("/%%ab", "/%%AB"),
            ("/€%7e", "/%E2%82%AC%7E"),
        ] {
            assert_eq!(wire_form(path), wire, "{path}");
        }
        for path in ["/", "/hooks/p", "/%C3%A4", "/%", "/%g1", "/a%2"] {
            assert!(
                matches!(wire_form(path), Cow::Borrowed(p) if p == path),
                "{path}"
            );
        }
    }

    /// Durations past a year are refused, naming the field: a deadline as far out as a
    /// `u64` of seconds reaches overflowed `Instant + Duration` and panicked a worker.
    #[test]
    fn durations_are_at_most_a_year() {
        let server = |line: &str| format!("[server]\n{line}\n{MINIMAL}");
        let upstream =
            |line: &str| MINIMAL.replace("[upstream]\n", &format!("[upstream]\n{line}\n"));
        let year = 31_536_000u64;
        for (field, text) in [
            (
                "server.header_timeout_s",
                server(&format!("header_timeout_s = {}", u64::MAX)),
            ),
            (
                "server.body_timeout_s",
                server(&format!("body_timeout_s = {}", i64::MAX)),
            ),
            (
                "server.shutdown_grace_s",
                server(&format!("shutdown_grace_s = {}", year + 1)),
            ),
            (
                "server.shutdown_delay_s",
                server(&format!("shutdown_delay_s = {}", year + 1)),
            ),
            (
                "source[0].dedupe_window_s",
                in_source(&format!("dedupe_window_s = {}", u64::MAX)),
            ),
            (
                "source[0].timeout_ms",
                in_source(&format!("timeout_ms = {}", u64::MAX)),
            ),
            (
                "upstream.timeout_ms",
                upstream(&format!("timeout_ms = {}", year * 1000 + 1)),
            ),
            (
                "upstream.connect_retry_ms",
                upstream(&format!("connect_retry_ms = {}", year * 1000 + 1)),
            ),
            (
                "server.reload_poll_s",
                server(&format!("reload_poll_s = {}", year + 1)),
            ),
        ] {
            let e = err(&text);
            assert!(e.contains(field) && e.contains("at most"), "{field}: {e}");
        }
        let c = parse(&server(&format!(
            "header_timeout_s = {year}\nshutdown_delay_s = 0"
        )))
        .expect("a year is allowed");
        assert_eq!(c.server.header_timeout, Duration::from_secs(year));
        assert_eq!(c.server.shutdown_delay, Duration::ZERO);
        let c = parse(&upstream(&format!("timeout_ms = {}", year * 1000)))
            .expect("a year of milliseconds is allowed");
        assert_eq!(c.sources[0].timeout, Duration::from_secs(year));
        let c = parse(&in_source("dedupe_window_s = 0")).expect("dedupe off");
        assert_eq!(c.sources[0].dedupe_window, Duration::ZERO);
        assert_eq!(c.server.reload_poll, None, "off by default");
        let c = parse(&server("reload_poll_s = 0")).expect("off");
        assert_eq!(c.server.reload_poll, None);
        let c = parse(&server("reload_poll_s = 10")).expect("on");
        assert_eq!(c.server.reload_poll, Some(Duration::from_secs(10)));
    }

    #[test]
    fn the_files_a_config_names_are_listed_for_the_reload_poll() {
        let dir = tempfile::tempdir().expect("temp dir");
        for f in ["a.secret", "b.secret", "whsec"] {
            let value = if f == "whsec" {
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            } else {
                "s"
            };
            std::fs::write(dir.path().join(f), value).expect("write");
        }
        let text = r#"
[server]
tls = { cert = "c.crt", key = "/keys/k.key", client_ca = "ca.crt" }
[upstream]
url = "http://127.0.0.1:3000/"
ca = "up-ca.crt"
signing_secret = "file:whsec"
[[source]]
name = "p"
platform = "protocol"
path = "/p"
secrets = ["file:a.secret", "env:HOME", "literal", "file:b.secret"]
[[source]]
name = "q"
platform = "protocol"
path = "/q"
secrets = ["file:a.secret"]
"#;
        let path = dir.path().join("hookgate.toml");
        let c = Config::from_toml_str(text, &path).expect("valid");
        let d = dir.path();
        let mut want = vec![
            path.clone(),
            d.join("a.secret"),
            d.join("b.secret"),
            d.join("whsec"),
            d.join("c.crt"),
            PathBuf::from("/keys/k.key"),
            d.join("ca.crt"),
            d.join("up-ca.crt"),
        ];
        want.sort();
        assert_eq!(c.files().collect::<Vec<_>>(), want);
    }

    /// A named pipe at `path` (what `file:` or `--config` may be pointed at by mistake).
    fn mkfifo(path: &Path) {
        let made = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
    }

    #[test]
    fn a_file_that_changes_after_the_load_read_it_counts_as_changed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        std::fs::write(d.join("p.secret"), "old\n").expect("write");
        std::fs::write(d.join("up-ca.crt"), "ca one").expect("write");
        let text = r#"
[upstream]
url = "https://127.0.0.1:3000/"
ca = "up-ca.crt"
[[source]]
name = "p"
platform = "protocol"
path = "/p"
secrets = ["file:p.secret"]
"#;
        let path = d.join("hookgate.toml");
        std::fs::write(&path, text).expect("write");
        let c = Config::load(&path).expect("valid");
        assert!(!c.files_changed(), "nothing changed yet");
        // What the config holds of a secret file is a hash of the secret: never printed.
        let shown = format!("{c:?}");
        assert!(
            shown.contains("Read(<sha256>)") && !shown.contains("Read(["),
            "{shown}"
        );
        // The kubelet rotates the Secret after the load read it: the config made from the
        // old bytes must see the change, however soon after its load it first looks.
        std::fs::write(d.join("p.secret"), "new\n").expect("write");
        assert!(c.files_changed(), "a rotated secret file");
        // Contents count, not times: the old bytes written back are no change.
        std::fs::write(d.join("p.secret"), "old\n").expect("write");
        assert!(!c.files_changed(), "the same bytes again");
        std::fs::write(d.join("up-ca.crt"), "ca two").expect("write");
        assert!(c.files_changed(), "a renewed CA");
        // Swapped in by a rename, as the kubelet does (its `..data` symlink).
        std::fs::write(d.join("next"), "ca one").expect("write");
        std::fs::rename(d.join("next"), d.join("up-ca.crt")).expect("rename");
        assert!(!c.files_changed(), "renamed in with the same bytes");
        std::fs::write(d.join("next"), "ca three").expect("write");
        std::fs::rename(d.join("next"), d.join("up-ca.crt")).expect("rename");
        assert!(c.files_changed(), "renamed in with other bytes");
        std::fs::write(d.join("up-ca.crt"), "ca one").expect("write");
        std::fs::remove_file(d.join("p.secret")).expect("remove");
        assert!(c.files_changed(), "a secret file gone");
        std::fs::write(d.join("p.secret"), "old\n").expect("write");
        std::fs::write(&path, format!("{text}\n")).expect("write");
        assert!(c.files_changed(), "an edited config file");
        std::fs::write(&path, text).expect("write");
        assert!(!c.files_changed(), "all as loaded");
        // A config over the 1 MiB of a named file (some 9,000 sources) is no change either:
        // each poll would reload it.
        let long = format!("{text}#{}\n", "x".repeat(1 << 20));
        std::fs::write(&path, &long).expect("write");
        let c = Config::load(&path).expect("valid");
        assert!(!c.files_changed(), "a long config, as loaded");
        // Nor is a config that is a pipe, which cannot be read again.
        let fifo = d.join("fifo.toml");
        mkfifo(&fifo);
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::write(fifo, text).expect("write the pipe"))
        };
        let c = Config::load(&fifo).expect("valid");
        writer.join().expect("writer");
        assert!(!c.files_changed(), "a pipe, not read again");
    }

    #[test]
    fn a_named_file_that_is_no_regular_file_or_too_large_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().to_path_buf();
        let fifo = d.join("fifo");
        mkfifo(&fifo);
        std::fs::write(d.join("big"), vec![b'k'; (1 << 20) + 1]).expect("write");
        std::fs::write(d.join("fits"), vec![b'k'; 1 << 20]).expect("write");
        let load = |secret: &str| {
            let text = MINIMAL.replace("[\"literal-secret\"]", &format!("[\"file:{secret}\"]"));
            let path = d.join("hookgate.toml");
            // On a thread: a load that waits for a writer on the pipe would never return.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                // Whether the source's secret is the whole file, 1 MiB of `k`.
                let whole = |c: Config| c.sources[0].verifier.secret_equals(0, &[b'k'; 1 << 20]);
                let _ = tx.send(Config::from_toml_str(&text, &path).map(whole));
            });
            rx.recv_timeout(Duration::from_secs(5))
                .expect("the load returns at once")
                .map_err(|e| e.to_string())
        };
        let f = fifo.display();
        assert_eq!(
            load("fifo"),
            Err(format!(
                "{}: source[0].secrets[0]: cannot read secret file {f}: not a regular file",
                d.join("hookgate.toml").display()
            ))
        );
        assert!(load("big").is_err_and(|e| e.ends_with("big: larger than 1 MiB")));
        assert_eq!(load("fits"), Ok(true), "exactly 1 MiB is read whole");
        assert!(load(".").is_err_and(|e| e.ends_with(": not a regular file")));
    }

    #[test]
    fn barertc_timeout_defaults_below_its_ten_seconds() {
        let text = MINIMAL.replace("\"protocol\"", "\"barertc\"");
        let c = parse(&text).expect("valid");
        assert_eq!(c.sources[0].timeout, Duration::from_millis(8000));
        assert_eq!(c.sources[0].dedupe_window, Duration::ZERO);
        let text = text.replace("[upstream]\n", "[upstream]\ntimeout_ms = 500\n");
        assert_eq!(
            parse(&text).expect("valid").sources[0].timeout,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_field_in_one_line() {
        let e = err(&MINIMAL.replace("secrets =", "secert = [\"x\"]\nsecrets ="));
        assert!(
            e.starts_with("/etc/hookgate/test.toml: line 9: source.secert:"),
            "{e}"
        );
        assert!(e.contains("unknown field"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    /// A line that breaks TOML is named by its table and key, or by its table alone when
    /// it names no key.
    #[test]
    fn a_toml_error_names_the_line_and_its_table() {
        for (head, field) in [
            ("[server]\n= 5", "line 2: [server]: "),
            ("[server]\nlisten 5", "line 2: [server]: "),
            ("[server]\nlisten = 5 5", "line 2: server.listen: "),
            ("listen = 5 5", "line 1: listen: "),
            ("= 5", "line 1: "),
        ] {
            let e = err(&format!("{head}\n{MINIMAL}"));
            let named = e.strip_prefix("/etc/hookgate/test.toml: ").unwrap_or(&e);
            assert!(named.starts_with(field), "{head:?}: {e}");
            assert!(!named[field.len()..].starts_with(':'), "{head:?}: {e}");
        }
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = err(&format!("[server]\nmax_body_bytes = \"big\"\n{MINIMAL}"));
        assert!(e.contains("server.max_body_bytes"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn a_secret_reference_with_nothing_after_its_prefix_says_so() {
        let e = err(&MINIMAL.replace("literal-secret", "env:"));
        assert_eq!(
            e,
            "/etc/hookgate/test.toml: source[0].secrets[0]: \"env:\" names no environment variable"
        );
        let e = err(&MINIMAL.replace("literal-secret", "file:"));
        assert_eq!(
            e,
            "/etc/hookgate/test.toml: source[0].secrets[0]: an empty file path"
        );
    }

    #[test]
    fn an_empty_certificate_or_ca_path_names_its_field() {
        let server = |tls: &str| format!("[server]\ntls = {{ {tls} }}\n{MINIMAL}");
        for (config, field) in [
            (server("cert = \"\", key = \"k\""), "server.tls.cert"),
            (server("cert = \"c\", key = \"\""), "server.tls.key"),
            (
                server("cert = \"c\", key = \"k\", client_ca = \"\""),
                "server.tls.client_ca",
            ),
            (
                MINIMAL.replace("[upstream]\n", "[upstream]\nca = \"\"\n"),
                "upstream.ca",
            ),
        ] {
            assert_eq!(
                err(&config),
                format!("/etc/hookgate/test.toml: {field}: an empty file path")
            );
        }
    }

    #[test]
    fn missing_env_secret_names_the_field_but_never_a_value() {
        let e = err(&MINIMAL.replace("literal-secret", "env:HOOKGATE_TEST_SURELY_UNSET"));
        assert_eq!(
            e,
            "/etc/hookgate/test.toml: source[0].secrets[0]: environment variable HOOKGATE_TEST_SURELY_UNSET is not set"
        );
    }

    #[test]
    fn file_secret_is_relative_to_the_config_and_trimmed() {
        let temp = tempfile::tempdir().expect("dir");
        let dir = temp.path();
        std::fs::write(dir.join("s.txt"), "from-file\n\n").expect("write");
        let text = MINIMAL.replace("literal-secret", "file:s.txt");
        let c = Config::from_toml_str(&text, &dir.join("hookgate.toml")).expect("valid");
        assert!(c.sources[0].verifier.secret_equals(0, b"from-file"));
        std::fs::write(dir.join("s.txt"), " \n").expect("write");
        let e = Config::from_toml_str(&text, &dir.join("hookgate.toml"))
            .expect_err("empty secret refused");
        assert!(e.to_string().contains("empty"), "{e}");
    }

    /// The name goes into `x-hookgate-source` as it is: what a header carries as text.
    #[test]
    fn a_source_name_is_printable_ascii() {
        for name in ["prötocol", "a\\tb", "a\\u007fb", "a\\nb"] {
            let e = err(&MINIMAL.replace("name = \"p\"", &format!("name = \"{name}\"")));
            assert!(
                e.ends_with("source[0].name: must be printable ASCII (it is sent in a header)"),
                "{name}: {e}"
            );
        }
        for name in ["with space", "x,y", "a~b{}", "!"] {
            let c = parse(&MINIMAL.replace("name = \"p\"", &format!("name = \"{name}\"")))
                .expect("valid");
            assert_eq!(c.sources[0].source_header.as_bytes(), name.as_bytes());
        }
    }

    #[test]
    fn refusals() {
        let cases = [
            (
                MINIMAL.replace("literal-secret", ""),
                "source[0].secrets[0]",
            ),
            (
                MINIMAL.replace("secrets = [\"literal-secret\"]", ""),
                "source[0].secrets",
            ),
            (
                MINIMAL.replace(
                    "secrets = [\"literal-secret\"]",
                    "secrets = [\"x\"]\nverify = \"none\"",
                ),
                "source[0].secrets",
            ),
            (MINIMAL.replace("/hooks/p", "/healthz"), "source[0].path"),
            (MINIMAL.replace("/hooks/p", "/readyz"), "source[0].path"),
            (
                MINIMAL
                    .replace("\"protocol\"", "\"spika\"")
                    .replace("secrets", "forward = \"raw\"\nsecrets"),
                "source[0].forward",
            ),
            (
                MINIMAL
                    .replace("\"protocol\"", "\"barertc\"")
                    .replace("secrets", "forward = \"raw\"\nsecrets"),
                "source[0].forward",
            ),
            (
                format!(
                    "{MINIMAL}\n{}",
                    &MINIMAL[MINIMAL.find("[[source]]").unwrap_or(0)..]
                ),
                "source[1].name",
            ),
            (
                MINIMAL.replace("http://127.0.0.1:3000/hooks", "ftp://x/"),
                "upstream.url",
            ),
            (
                format!(
                    "[upstream]\nurl=\"http://a/\"\nsigning_secret = \"whsec_c2hvcnQ=\"\n{}",
                    &MINIMAL[MINIMAL.find("[[source]]").unwrap_or(0)..]
                ),
                "upstream.signing_secret",
            ),
            (
                MINIMAL.replace("secrets", "allow_cidrs = [\"10.0.0.0/33\"]\nsecrets"),
                "source[0].allow_cidrs[0]",
            ),
        ];
        for (text, field) in cases {
            let e = err(&text);
            assert!(e.contains(field), "expected {field} in: {e}");
        }
    }

    #[test]
    fn signing_secret_must_be_whsec_base64_of_24_bytes() {
        let src = &MINIMAL[MINIMAL.find("[[source]]").unwrap_or(0)..];
        // 24 bytes of key, padded base64.
        let good = base64::engine::general_purpose::STANDARD.encode([7u8; 24]);
        let text = format!("[upstream]\nurl=\"http://a/\"\nsigning_secret=\"whsec_{good}\"\n{src}");
        let c = parse(&text).expect("valid");
        assert_eq!(
            c.upstream.signing_key.as_ref().map(|k| k.expose().len()),
            Some(24)
        );
        // Debug output of the config never prints the key (its bytes, all 7s, would show as
        // "7, 7, …"), and says there is one.
        assert!(!format!("{c:?}").contains(&good));
        let upstream = format!("{:?}", c.upstream);
        assert!(
            upstream.contains(r#"signing_key: Some("<redacted>")"#) && !upstream.contains("7, 7"),
            "{upstream}"
        );
        let unpadded = good.trim_end_matches('=');
        let text =
            format!("[upstream]\nurl=\"http://a/\"\nsigning_secret=\"whsec_{unpadded}x\"\n{src}");
        assert!(err(&text).contains("upstream.signing_secret"));
        // Whitespace at an end, as an env: value's newline brings, is named.
        for spaced in [format!("whsec_{good}\\n"), format!(" whsec_{good}")] {
            let text = format!("[upstream]\nurl=\"http://a/\"\nsigning_secret=\"{spaced}\"\n{src}");
            assert!(
                err(&text).ends_with("(it starts or ends with whitespace: a trailing newline?)"),
                "{}",
                err(&text)
            );
        }
        assert!(
            !err(&format!(
                "[upstream]\nurl=\"http://a/\"\nsigning_secret=\"x\"\n{src}"
            ))
            .contains("whitespace")
        );
    }

    #[test]
    fn a_barertc_timeout_past_its_sender_s_patience_is_warned_about() {
        let barertc = |timeout: &str| {
            MINIMAL
                .replace("platform = \"protocol\"", "platform = \"barertc\"")
                .replace("\"literal-secret\"", "\"e635e463-7987-4788-94f3\"")
                .replace("secrets = [", &format!("{timeout}secrets = ["))
        };
        assert!(parse(&barertc("")).expect("valid").warnings().is_empty());
        assert!(
            parse(&barertc("timeout_ms = 9999\n"))
                .expect("valid")
                .warnings()
                .is_empty()
        );
        assert_eq!(
            parse(&barertc("timeout_ms = 10000\n"))
                .expect("valid")
                .warnings(),
            [
                "warning: source \"p\": timeout_ms = 10000 on barertc, whose sender gives up \
                 after 10 s: a slower answer, or the 504, reaches no one (the default is 8000)"
            ]
        );
    }

    /// A barertc key is in the body, and the body's SHA-256 is the event id the log and the
    /// app see (SPEC §7): a short one could be found from an id by trying keys.
    #[test]
    fn a_short_barertc_key_is_warned_about_without_its_value() {
        let with = |platform: &str, secrets: &str| {
            MINIMAL
                .replace(
                    "platform = \"protocol\"",
                    &format!("platform = {platform:?}"),
                )
                .replace(
                    "secrets = [\"literal-secret\"]",
                    &format!("secrets = {secrets}"),
                )
        };
        let w = parse(&with("barertc", r#"["0123456789abcdef", "hunter2"]"#))
            .expect("valid")
            .warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("warning: source[0].secrets[1]: shorter than 16 characters"),
            "{w:?}"
        );
        assert!(!w[0].contains("hunter2"), "{w:?}");
        // Only barertc sends its key in the body.
        for platform in ["protocol", "spika", "funtek"] {
            let w = parse(&with(platform, r#"["hunter2"]"#))
                .expect("valid")
                .warnings();
            assert!(w.is_empty(), "{platform}: {w:?}");
        }
    }

    #[test]
    fn a_ca_no_upstream_uses_is_warned_about() {
        let with_ca = MINIMAL.replace("[upstream]\n", "[upstream]\nca = \"/etc/ca.crt\"\n");
        let w = parse(&with_ca).expect("valid").warnings();
        assert_eq!(
            w,
            [
                "warning: upstream.ca (/etc/ca.crt) is set, but no upstream URL is https://: it is not used"
            ]
        );
        let https = with_ca.replace("http://127.0.0.1:3000", "https://127.0.0.1:3000");
        assert!(parse(&https).expect("valid").warnings().is_empty());
        // One https source among plain ones uses it.
        let one = format!(
            "{with_ca}\n[[source]]\nname = \"q\"\nplatform = \"protocol\"\npath = \"/hooks/q\"\n\
             secrets = [\"s\"]\nupstream = \"https://app.internal/q\"\n"
        );
        assert!(parse(&one).expect("valid").warnings().is_empty());
    }

    #[test]
    fn verify_none_is_allowed_and_warned_about() {
        let text = MINIMAL.replace("secrets = [\"literal-secret\"]", "verify = \"none\"");
        let c = parse(&text).expect("valid");
        let w = c.warnings();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("warning") && w[0].contains("\"p\""), "{w:?}");
    }

    #[test]
    fn the_admin_listener_may_not_take_the_main_one_s_port() {
        let with = |main: &str, admin: &str| {
            format!("[server]\nlisten = {main:?}\n[admin]\nlisten = {admin:?}\n{MINIMAL}")
        };
        for (main, admin) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "0.0.0.0:8080"),
            ("[::]:8080", "127.0.0.1:8080"),
            ("[::1]:8080", "[::]:8080"),
        ] {
            let e = err(&with(main, admin));
            assert!(
                e.contains("admin.listen") && e.contains("overlaps"),
                "{main} {admin}: {e}"
            );
        }
        for (main, admin) in [
            ("127.0.0.1:8080", "127.0.0.1:9090"),
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("0.0.0.0:8080", "[::1]:8080"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            parse(&with(main, admin)).unwrap_or_else(|e| panic!("{main} {admin}: {e}"));
        }
    }

    #[test]
    fn a_secret_with_whitespace_at_an_end_or_a_bom_is_warned_about_without_its_value() {
        // Literals here (setting an env: one would need `unsafe`); both are taken as they are.
        for (secrets, field, why, value) in [
            (
                "\"literal-secret\", \"tok-with-newline\\n\"",
                "source[0].secrets[1]",
                "whitespace",
                "tok-with-newline",
            ),
            (
                "\"\u{feff}tok-after-a-bom\"",
                "source[0].secrets[0]",
                "byte-order mark",
                "tok-after-a-bom",
            ),
        ] {
            let text = MINIMAL.replace(
                "secrets = [\"literal-secret\"]",
                &format!("secrets = [{secrets}]"),
            );
            let w = parse(&text).expect("valid").warnings();
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(w[0].contains(field) && w[0].contains(why), "{w:?}");
            assert!(!w[0].contains(value), "{w:?}");
        }
        assert!(parse(MINIMAL).expect("valid").warnings().is_empty());
    }

    #[test]
    fn an_upstream_on_hookgate_s_own_listener_is_refused() {
        let with = |listen: &str, url: &str| {
            MINIMAL.replace("http://127.0.0.1:3000/hooks", url).replace(
                "[upstream]",
                &format!("[server]\nlisten = {listen:?}\n[upstream]"),
            )
        };
        for (listen, url) in [
            ("0.0.0.0:8080", "http://127.0.0.1:8080/webhooks"),
            ("127.0.0.1:8080", "http://localhost:8080/"),
            ("[::]:8443", "https://[::1]:8443/"),
            ("[::]:8080", "http://127.0.0.1:8080/"),
            ("0.0.0.0:80", "http://127.0.0.1/"),
            ("10.0.0.5:8080", "http://10.0.0.5:8080/"),
            // Where Linux connects an unspecified or IPv4-mapped address: loopback, IPv4.
            ("0.0.0.0:8080", "http://0.0.0.0:8080/"),
            ("127.0.0.1:8080", "http://0.0.0.0:8080/"),
            ("[::]:8080", "http://[::]:8080/"),
            ("[::]:8080", "http://0.0.0.0:8080/"),
            ("127.0.0.1:8080", "http://[::ffff:127.0.0.1]:8080/"),
            ("[::]:8080", "http://[::ffff:127.0.0.1]:8080/"),
            ("[::1]:8080", "http://[::]:8080/"),
        ] {
            let e = err(&with(listen, url));
            assert!(
                e.contains("upstream.url") && e.contains("own listener"),
                "{url}: {e}"
            );
        }
        let text = format!(
            "{}upstream = \"http://127.0.0.1:8080/\"\n",
            with("0.0.0.0:8080", "http://app:3000/")
        );
        assert!(err(&text).contains("source[0].upstream"));
        // A resolver connects `127.1` to 127.0.0.1: refused as an address not written as one
        // (it had passed as a host name), saying where it would go.
        let e = err(&with("127.0.0.1:8080", "http://127.1:8080/"));
        assert!(
            e.contains("upstream.url") && e.contains("is read by resolvers as 127.0.0.1"),
            "{e}"
        );
        for (listen, url) in [
            ("0.0.0.0:8080", "http://127.0.0.1:3000/"),
            ("0.0.0.0:8080", "http://app:8080/"),
            ("10.0.0.5:8080", "http://127.0.0.1:8080/"),
            ("0.0.0.0:8080", "http://10.0.0.5:8080/"),
            ("127.0.0.1:8080", "http://[::1]:8080/"),
            ("[::1]:8080", "http://127.0.0.1:8080/"),
            ("0.0.0.0:8080", "http://[::1]:8080/"),
            ("127.0.0.1:0", "http://127.0.0.1:3000/"),
            ("0.0.0.0:8080", "http://[::]:8080/"),
            ("10.0.0.5:8080", "http://0.0.0.0:8080/"),
            ("[::1]:8080", "http://[::ffff:127.0.0.1]:8080/"),
            ("[::]:8080", "http://[2001:db8::5]:8080/"),
        ] {
            parse(&with(listen, url)).unwrap_or_else(|e| panic!("{listen} {url}: {e}"));
        }
    }

    #[test]
    fn trusting_every_address_is_warned_about() {
        let with = |nets: &str| format!("[server]\ntrusted_proxies = {nets}\n{MINIMAL}");
        let c = parse(&with(r#"["10.0.0.0/8", "::/0"]"#)).expect("valid");
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("server.trusted_proxies") && w[0].contains("::/0"),
            "{w:?}"
        );
        let c = parse(&with(r#"["10.0.0.0/8", "192.168.0.0/16"]"#)).expect("valid");
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn proxy_protocol_peers_are_cidrs_and_every_address_is_warned_about() {
        let with = |nets: &str| format!("[server]\nproxy_protocol_from = {nets}\n{MINIMAL}");
        let c = parse(&with(r#"["10.0.0.0/8", "192.0.2.7"]"#)).expect("valid");
        assert_eq!(
            c.server.proxy_protocol_from,
            [
                "10.0.0.0/8".parse::<IpNet>().expect("net"),
                "192.0.2.7/32".parse().expect("net")
            ]
        );
        assert!(c.warnings().is_empty());
        let w = parse(&with(r#"["0.0.0.0/0", "10.1.2.3/8"]"#))
            .expect("valid")
            .warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("server.proxy_protocol_from") && w[0].contains("10.0.0.0/8"));
        assert!(
            w[1].contains("0.0.0.0/0") && w[1].contains("PROXY header"),
            "{w:?}"
        );
        let e = err(&with(r#"["10.0.0.0/8", "lb.internal"]"#));
        assert!(e.contains("server.proxy_protocol_from[1]"), "{e}");
        assert!(
            parse(MINIMAL)
                .expect("valid")
                .server
                .proxy_protocol_from
                .is_empty()
        );
    }

    #[test]
    fn ipv4_mapped_nets_are_taken_in_their_ipv4_form() {
        let nets = |list: &str| {
            let c =
                parse(&format!("[server]\ntrusted_proxies = {list}\n{MINIMAL}")).expect("valid");
            c.server
                .trusted_proxies
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            nets(r#"["::ffff:10.0.0.0/104", "::ffff:192.0.2.7", "::ffff:0:0/96"]"#),
            ["10.0.0.0/8", "192.0.2.7/32", "0.0.0.0/0"]
        );
        // Nets that hold every mapped address hold every IPv4 one; others are as written.
        assert_eq!(
            nets(r#"["::/0", "::/80", "::/96", "::ffff:0:0/95", "2001:db8::/32", "::1"]"#),
            [
                "::/0",
                "0.0.0.0/0",
                "::/80",
                "0.0.0.0/0",
                "::/96",
                "::ffff:0.0.0.0/95",
                "0.0.0.0/0",
                "2001:db8::/32",
                "::1/128"
            ]
        );
        // Host bits are warned about in the form the net is taken in.
        let c = parse(&format!(
            "[server]\ntrusted_proxies = [\"::ffff:10.1.2.3/104\"]\n{MINIMAL}"
        ))
        .expect("valid");
        let w = c.warnings();
        assert!(w.iter().any(|w| w.contains("10.1.2.3/8")), "{w:?}");
    }

    proptest::proptest! {
        /// Whatever the net, it holds an IPv4 address as taken exactly when it holds that
        /// address's IPv4-mapped form as written, and any other address as written.
        #[test]
        fn a_net_as_compared_holds_what_it_holds_as_written(
            net_bits in proptest::prelude::any::<u128>(),
            // Mostly nets around the IPv4-mapped block's /96, where the forms part.
            prefix in proptest::prop_oneof![80u8..=128, 0u8..=128],
            mapped in proptest::prelude::any::<bool>(),
            addr_bits in proptest::prelude::any::<u128>(),
        ) {
            // Half the nets start inside ::ffff:0:0/96, half anywhere.
            let net_bits = if mapped { 0xffff_0000_0000 | (net_bits & 0xffff_ffff) } else { net_bits };
            let net = IpNet::V6(Ipv6Net::new(Ipv6Addr::from(net_bits), prefix).expect("prefix"));
            let mut taken = Vec::new();
            push_as_compared(&mut taken, net);
            let v4 = Ipv4Addr::from(addr_bits as u32);
            proptest::prop_assert_eq!(
                crate::admit::listed(IpAddr::V4(v4), &taken),
                net.contains(&IpAddr::V6(v4.to_ipv6_mapped())),
                "{} taken as {:?}", net, taken
            );
            let v6 = Ipv6Addr::from(addr_bits);
            if v6.to_ipv4_mapped().is_none() {
                proptest::prop_assert_eq!(
                    crate::admit::listed(IpAddr::V6(v6), &taken),
                    net.contains(&IpAddr::V6(v6))
                );
            }
        }
    }

    #[test]
    fn an_empty_allow_list_and_host_bits_past_a_prefix_are_warned_about() {
        let source =
            |cidrs: &str| MINIMAL.replace("secrets", &format!("allow_cidrs = {cidrs}\nsecrets"));
        let w = parse(&source("[]")).expect("valid").warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("empty allow_cidrs") && w[0].contains("403"),
            "{w:?}"
        );

        let w = parse(&source(r#"["10.0.0.1/8", "192.0.2.7", "2001:db8::1/64"]"#))
            .expect("valid")
            .warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("10.0.0.1/8") && w[0].contains("10.0.0.0/8"),
            "{w:?}"
        );
        assert!(w[1].contains("2001:db8::/64"), "{w:?}");

        let c = format!("[server]\ntrusted_proxies = [\"172.16.5.5/12\"]\n{MINIMAL}");
        let w = parse(&c).expect("valid").warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("server.trusted_proxies") && w[0].contains("172.16.0.0/12"),
            "{w:?}"
        );

        let w = parse(&source(r#"["10.0.0.0/8", "192.0.2.7/32"]"#))
            .expect("valid")
            .warnings();
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn debug_never_prints_secrets() {
        let c = parse(MINIMAL).expect("valid");
        assert!(!format!("{c:?}").contains("literal-secret"));
    }

    #[test]
    fn the_shipped_example_config_parses() {
        let text = include_str!("../config/hookgate.toml");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hookgate.toml");
        let c = Config::from_toml_str(text, &dir).expect("example config is valid");
        assert!(c.sources.len() >= 4);
    }
}
