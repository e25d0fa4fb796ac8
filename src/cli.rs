//! The command line (SPEC §2): `run`, `check` and `sign`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::{Config, LogFormat, Source};
use crate::json::Object;
use crate::platforms::Platform;
use crate::reload::Reloader;
use crate::server::{self, Server};

#[derive(Parser, Debug)]
#[command(
    name = "hookgate",
    version,
    about = "Verifying webhook gateway for chat platforms"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The config file.
    #[arg(long, global = true, default_value = "config/hookgate.toml")]
    pub config: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve (the default).
    Run,
    /// Validate the config, print the routes, exit 0 or 2.
    Check,
    /// Print a curl command that delivers a signed body to the listener.
    Sign {
        /// The source's name.
        #[arg(long)]
        source: String,
        /// The body to send (default: a sample of the platform).
        #[arg(long)]
        body: Option<PathBuf>,
    },
}

/// Startup failures exit 2 with one line.
fn fail(message: impl std::fmt::Display) -> ExitCode {
    print_line(std::io::stderr(), format_args!("hookgate: {message}"));
    ExitCode::from(2)
}

/// Writes a line, ignoring a closed stdout or stderr (`hookgate check | head -1`, a log
/// reader that exited): `println!` and `eprintln!` panic there, and a failed start would
/// exit 101 instead of 2.
fn print_line(mut to: impl std::io::Write, line: std::fmt::Arguments) {
    let _ = writeln!(to, "{line}");
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let command = cli.command.unwrap_or(Command::Run);
    if matches!(command, Command::Run | Command::Check)
        && let Err(e) = crate::pipeline::workers_from_env()
    {
        return fail(e);
    }
    match command {
        Command::Run => run(config),
        Command::Check => check(config),
        Command::Sign { source, body } => sign(&config, &source, body.as_deref()),
    }
}

fn init_logging(format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, problem) = log_filter(rust_log.as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::logs::Stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
}

/// The log filter for `RUST_LOG`: `info` when it is unset or empty (an empty one, as a
/// template's `RUST_LOG: ""` or `docker run -e RUST_LOG=$UNSET` gives, would otherwise
/// turn every line off, errors too), and `info` with a warning when it does not parse.
fn log_filter(rust_log: Option<&str>) -> (tracing_subscriber::EnvFilter, Option<String>) {
    let builder = || {
        tracing_subscriber::EnvFilter::builder()
            .with_default_directive(tracing_subscriber::filter::LevelFilter::INFO.into())
    };
    match builder().parse(rust_log.unwrap_or_default()) {
        Ok(filter) => (filter, None),
        Err(e) => (
            builder().parse_lossy(""),
            Some(format!(
                "warning: RUST_LOG={:?} does not parse ({e}); logging at info",
                rust_log.unwrap_or_default()
            )),
        ),
    }
}

/// Raises the open-files soft limit to the hard one, as Go's runtime does at start: each
/// connection takes a descriptor and each delivery in flight another for its upstream
/// exchange, and the soft limit is often 1024, far below `max_connections`. Returns a
/// warning when even that cannot hold `max_connections` (past it accepts fail and back
/// off, and upstream connects fail with 502).
fn raise_open_files_limit(max_connections: usize) -> Option<String> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => open_files_warning(limit, max_connections),
        Err(e) => Some(format!(
            "warning: cannot raise the open-files limit ({e}); connections past it will wait"
        )),
    }
}

/// Two descriptors per connection (the client's, its upstream's) and a few dozen for the
/// listeners, the runtimes and the log. Saturating: the config takes any `max_connections`
/// TOML can write (i64::MAX made `2 ×` overflow: a panic in a debug build, no warning in
/// a release one).
fn open_files_warning(limit: u64, max_connections: usize) -> Option<String> {
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(64);
    (limit < needed).then(|| {
        format!(
            "warning: the open-files limit is {limit}, below the {needed} that \
             server.max_connections = {max_connections} can need (a descriptor per connection \
             and one per upstream exchange): raise it (ulimit -n, systemd LimitNOFILE, the \
             container's nofile ulimit) or lower max_connections"
        )
    })
}

fn check(config: Config) -> ExitCode {
    let lines = config.route_lines();
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut listen = format!("listen {} ({scheme})", config.server.listen);
    let proxied = &config.server.proxy_protocol_from;
    if !proxied.is_empty() {
        let from: Vec<_> = proxied.iter().map(|n| n.to_string()).collect();
        listen.push_str(&format!(", a PROXY header first from {}", from.join(", ")));
    }
    match server::prepare(config) {
        Ok(prepared) => {
            for w in prepared.warnings() {
                print_line(std::io::stderr(), format_args!("hookgate: {w}"));
            }
        }
        Err(e) => return fail(e),
    }
    print_line(std::io::stdout(), format_args!("{listen}"));
    for l in lines {
        print_line(std::io::stdout(), format_args!("{l}"));
    }
    ExitCode::SUCCESS
}

fn run(config: Config) -> ExitCode {
    init_logging(config.server.log_format);
    // Before the listeners exist; its warning only once they do (a start that fails says
    // one line, its reason).
    let open_files = raise_open_files_limit(config.server.max_connections);
    let lines = config.route_lines();
    let prepared = match server::prepare(config) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    for w in prepared.warnings() {
        tracing::warn!("{w}");
    }
    // One per core as the container's CPU limit counts them, or HOOKGATE_WORKERS: logged,
    // since neither shows anywhere else.
    let workers = prepared.workers();
    // The main runtime only answers the admin listener, handles signals and keeps house: the
    // server's worker threads accept and serve the connections.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        let server = match Server::start(prepared).await {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            listen = %server.local_addr,
            admin = %server
                .admin_addr
                .map_or_else(|| "off".to_string(), |a| a.to_string()),
            workers,
            "hookgate listening"
        );
        for l in lines {
            tracing::info!("route {l}");
        }
        if let Some(w) = open_files {
            tracing::warn!("{w}");
        }
        let mut signals = wait_for_signals(&server).await;
        tracing::info!("shutting down: /readyz is 503, draining in-flight requests");
        tokio::select! {
            clean = server.shutdown() => {
                if clean {
                    tracing::info!("shutdown complete");
                } else {
                    tracing::warn!("shutdown_grace_s elapsed with requests still in flight");
                }
                ExitCode::SUCCESS
            }
            // An operator who asks twice (a second Ctrl-C) means now; Kubernetes asks once.
            _ = signals.stop() => {
                tracing::warn!("a second SIGTERM or SIGINT: exiting now, requests in flight are cut");
                ExitCode::FAILURE
            }
        }
    })
}

/// The signals that stop hookgate, kept for a second one during the drain.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Serves until SIGTERM or SIGINT (then gives the stop signals back, for a second one);
/// SIGHUP reloads the config, and so does a changed file with `reload_poll_s`.
async fn wait_for_signals(server: &Server) -> StopSignals {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(term), Ok(int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; serving until killed");
        return std::future::pending().await;
    };
    let mut signals = StopSignals { term, int };
    let mut reloader = Reloader::new(server);
    // Fixed at start, like the listeners.
    let poll = server.gateway().config.server.reload_poll;
    let mut ticks = tokio::time::interval(poll.unwrap_or(Duration::from_secs(3600)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = signals.stop() => return signals,
            _ = hup.recv() => reloader.on_signal(),
            _ = ticks.tick(), if poll.is_some() => reloader.on_poll(),
        }
    }
}

/// The address a local curl reaches the listener at.
fn local_ip(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

/// `local_ip` with the port, as a URL writes it.
fn local_url_host(addr: SocketAddr) -> String {
    match local_ip(addr) {
        IpAddr::V4(v4) => format!("{v4}:{}", addr.port()),
        IpAddr::V6(v6) => format!("[{v6}]:{}", addr.port()),
    }
}

/// A string as one single-quoted shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The body with `APIKey` set to the key, the other keys as they were.
fn with_api_key(body: &str, key: &str) -> Result<String, String> {
    let object = Object::parse(body.as_bytes()).ok_or("the barertc body must be a JSON object")?;
    let mut out = String::from("{\"APIKey\":");
    out.push_str(&serde_json::to_string(key).map_err(|e| e.to_string())?);
    let rest =
        serde_json::to_string(&object.raw_without(Some("APIKey"))).map_err(|e| e.to_string())?;
    if rest != "{}" {
        out.push(',');
        out.push_str(&rest[1..rest.len() - 1]);
    }
    out.push('}');
    Ok(out)
}

/// The curl command for one delivery to `source`.
pub fn sign_command(config: &Config, source: &Source, body: &str) -> Result<String, String> {
    // The shell would cut the argument there, and curl would send other bytes than those signed.
    if body.contains('\0') {
        return Err("the body holds a NUL byte, which no shell argument can carry".into());
    }
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut url = format!(
        "{scheme}://{}{}",
        local_url_host(config.server.listen),
        source.path
    );
    let mut headers = vec!["content-type: application/json".to_string()];
    let mut body = body.to_string();
    if let Some(secret) = source.verifier.first_secret() {
        let text = String::from_utf8_lossy(secret.expose()).into_owned();
        match source.platform {
            Platform::Protocol => {
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose())
                    .map_err(|e| e.to_string())?;
                mac.update(body.as_bytes());
                headers.push(format!(
                    "x-protocol-signature: {}",
                    hex::encode(mac.finalize().into_bytes())
                ));
            }
            Platform::Spika => headers.push(format!("verification-signature: {text}")),
            Platform::Barertc => body = with_api_key(&body, &text)?,
            Platform::Funtek => {
                let token = percent_encoding::utf8_percent_encode(
                    &text,
                    percent_encoding::NON_ALPHANUMERIC,
                );
                url.push_str(&format!("?token={token}"));
            }
        }
    }
    let mut cmd = format!("curl -sS -i -X POST {}", shell_quote(&url));
    // A local curl connects from the address it connects to; if that is a listed
    // balancer's, the listener waits for a PROXY header first (curl sends version 1).
    let from = local_ip(config.server.listen);
    if crate::admit::listed(from, &config.server.proxy_protocol_from) {
        cmd.push_str(" --haproxy-protocol");
    }
    for h in headers {
        cmd.push_str(&format!(" -H {}", shell_quote(&h)));
    }
    cmd.push_str(&format!(" --data-binary {}", shell_quote(&body)));
    Ok(cmd)
}

fn sign(config: &Config, name: &str, body: Option<&std::path::Path>) -> ExitCode {
    let Some(source) = config.sources.iter().find(|s| s.name == name) else {
        let names: Vec<String> = config
            .sources
            .iter()
            .map(|s| format!("{:?}", s.name))
            .collect();
        return fail(format!(
            "{}: no source named {name:?} (the config has {})",
            config.path.display(),
            names.join(", ")
        ));
    };
    let body = match body {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(b) => b,
            Err(e) => return fail(format!("{}: cannot read the body: {e}", path.display())),
        },
        None => source.platform.sample().to_string(),
    };
    match sign_command(config, source, &body) {
        Ok(cmd) => {
            print_line(std::io::stdout(), format_args!("{cmd}"));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_weighed_against_max_connections() {
        let w = open_files_warning(1024, 10_000).expect("a warning");
        assert!(
            w.contains("is 1024, below the 20064") && w.contains("max_connections = 10000"),
            "{w}"
        );
        assert_eq!(open_files_warning(20_064, 10_000), None);
        assert_eq!(open_files_warning(1_048_576, 10_000), None);
        let w = open_files_warning(1_048_576, i64::MAX as usize).expect("a warning");
        assert!(w.contains(&format!("below the {}", u64::MAX)), "{w}");
    }

    #[test]
    fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
        let (_, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
        // Lowered first (an unprivileged process may), so that raising it shows.
        rlimit::Resource::NOFILE
            .set(hard.min(512), hard)
            .expect("setrlimit");
        let _ = raise_open_files_limit(1);
        let (soft, _) = rlimit::Resource::NOFILE.get().expect("getrlimit");
        assert_eq!(soft, hard);
    }

    #[test]
    fn rust_log_unset_or_empty_is_info_and_one_that_does_not_parse_is_warned_about() {
        let shown = |v: Option<&str>| {
            let (filter, problem) = log_filter(v);
            (filter.to_string(), problem)
        };
        assert_eq!(shown(None), ("info".into(), None));
        assert_eq!(shown(Some("")), ("info".into(), None));
        assert_eq!(shown(Some("warn")), ("warn".into(), None));
        assert_eq!(
            shown(Some("hookgate=debug,hyper=warn")),
            ("hookgate=debug,hyper=warn".into(), None)
        );
        let (filter, problem) = shown(Some("hookgate=loud"));
        assert_eq!(filter, "info");
        let problem = problem.expect("a warning");
        assert!(
            problem.starts_with("warning: RUST_LOG=\"hookgate=loud\" does not parse ("),
            "{problem}"
        );
    }

    #[test]
    fn quoting_and_hosts() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(
            local_url_host("0.0.0.0:8080".parse().expect("a")),
            "127.0.0.1:8080"
        );
        assert_eq!(
            local_url_host("[::]:8080".parse().expect("a")),
            "[::1]:8080"
        );
        assert_eq!(
            local_url_host("10.1.2.3:1".parse().expect("a")),
            "10.1.2.3:1"
        );
        // A listener on one IPv6 address is reached there, not at ::1.
        assert_eq!(
            local_url_host("[fd00::5]:443".parse().expect("a")),
            "[fd00::5]:443"
        );
    }

    #[test]
    fn api_key_is_set_first_and_replaces_any_old_one() {
        let out = with_api_key(
            r#"{"Action":"profile","APIKey":"old","Username":"x"}"#,
            "k&y",
        )
        .expect("object");
        assert_eq!(out, r#"{"APIKey":"k&y","Action":"profile","Username":"x"}"#);
        assert_eq!(
            with_api_key("{}", "k").expect("object"),
            r#"{"APIKey":"k"}"#
        );
    }
}
