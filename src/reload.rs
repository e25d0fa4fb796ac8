//! Reloading the config while serving (SPEC §8): on SIGHUP, and, with `[server]
//! reload_poll_s`, when the config file or a file it names has changed.
//!
//! Why a poll: Kubernetes updates a mounted ConfigMap or Secret (a rotated secret, a
//! certificate cert-manager renewed) in place and sends no signal, and the distroless image
//! has no `kill` for an operator to send one with. The files are read whole and hashed, not
//! watched: Kubernetes swaps them in by renaming a symlink (`..data`), which inotify on the
//! files themselves does not see, and a few small files every few seconds cost nothing. They
//! are compared with what the serving config was made from ([`crate::config::FileState`]).
//!
//! A reload that fails is logged once. The files then still differ from the serving
//! config's (as they were, they loaded), so each poll tries again, quietly, and logs only a
//! different error: the config may name a file that is not there yet (a ConfigMap
//! and a Secret are updated separately, in either order), and the reload goes through once
//! it is.

use crate::config::Config;
use crate::server::Server;

/// What started a reload, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Signal,
    FilesChanged,
}

/// The reload state of a running server.
pub struct Reloader<'a> {
    server: &'a Server,
    /// The error of the last reload, while reloads fail.
    failing: Option<String>,
}

impl<'a> Reloader<'a> {
    pub fn new(server: &'a Server) -> Reloader<'a> {
        Reloader {
            server,
            failing: None,
        }
    }

    /// SIGHUP: always reloads, and always logs the result.
    pub fn on_signal(&mut self) {
        self.reload(Trigger::Signal);
    }

    /// A poll: reloads when a file differs from what the serving config was loaded from.
    pub fn on_poll(&mut self) {
        if self.server.gateway().config.files_changed() {
            self.reload(Trigger::FilesChanged);
        }
    }

    fn reload(&mut self, trigger: Trigger) {
        match self.server.load_again() {
            Ok(reloaded) => {
                self.server.count_reload(true);
                self.failing = None;
                let why = match trigger {
                    Trigger::Signal => "",
                    Trigger::FilesChanged => " (a file changed)",
                };
                if reloaded.later.is_empty() {
                    tracing::info!("config reloaded{why}");
                } else {
                    tracing::warn!(
                        "config reloaded{why}; these changes take effect at the next start: {}",
                        reloaded.later.join(", ")
                    );
                }
                for change in reloaded.changes {
                    tracing::info!("{change}");
                }
                for w in reloaded.warnings {
                    tracing::warn!("{w}");
                }
            }
            Err(e) => {
                let error = e.to_string();
                // The same error again on a poll: the operator was told already.
                if trigger == Trigger::FilesChanged && self.failing.as_ref() == Some(&error) {
                    return;
                }
                self.server.count_reload(false);
                tracing::error!("config reload refused, the old config stays: {error}");
                self.failing = Some(error);
            }
        }
    }
}

/// What a reload changed in the routes, a line each for the log: a source added, removed
/// or with other settings (its new route line), or with other secrets (how many, never
/// what), so an operator sees that a new source or a rotated secret was taken up.
pub fn route_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    for source in &new.sources {
        let line = source.route_line();
        match old.sources.iter().find(|o| o.name == source.name) {
            None => lines.push(format!("route added: {line}")),
            Some(was) => {
                if was.route_line() != line {
                    lines.push(format!("route changed: {line}"));
                } else if was.upstream.uri != source.upstream.uri {
                    // The line shows the upstream URL's query values as `…` (they may be keys).
                    lines.push(format!(
                        "route changed: {line} (the upstream URL's query changed)"
                    ));
                }
                if !was.verifier.same_secrets(&source.verifier) {
                    lines.push(format!(
                        "source {:?}: secrets changed ({} now)",
                        source.name,
                        source.verifier.secret_count()
                    ));
                }
            }
        }
    }
    for was in &old.sources {
        if !new.sources.iter().any(|s| s.name == was.name) {
            lines.push(format!(
                "route removed: POST {} -> source {:?}",
                was.path, was.name
            ));
        }
    }
    lines
}

/// When a changed setting outside the routes takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    Now,
    /// At the next start: the listeners, their TLS and the logger are made once.
    NextStart,
}

/// One setting a reload compares: its name in the config, when a change takes effect, and
/// whether it changed.
fn setting<T: PartialEq>(
    name: &'static str,
    takes: Takes,
    old: &T,
    new: &T,
) -> (&'static str, Takes, bool) {
    (name, takes, old != new)
}

/// The settings outside the routes that a reload changed, split by when they take effect:
/// every such setting is in this one table, so none is left out of the log.
pub fn setting_changes(old: &Config, new: &Config) -> SettingChanges {
    use Takes::{NextStart, Now};
    let (o, n) = (&old.server, &new.server);
    let (ou, nu) = (&old.upstream, &new.upstream);
    let [old_key, new_key] = [ou, nu].map(|u| u.signing_key.as_ref().map(|k| k.expose()));
    let tls_on = (o.tls.is_some(), n.tls.is_some());
    // A row per setting: its name, when a change takes effect, and its field in both.
    macro_rules! server {
        ($name:literal, $takes:expr, $field:ident) => {
            setting($name, $takes, &o.$field, &n.$field)
        };
    }
    let table = [
        server!("server.listen", NextStart, listen),
        setting("admin", NextStart, &old.admin, &new.admin),
        setting("server.tls (on/off)", NextStart, &tls_on.0, &tls_on.1),
        server!("server.max_connections", NextStart, max_connections),
        server!("server.log_format", NextStart, log_format),
        server!("server.reload_poll_s", NextStart, reload_poll),
        // Files swapped with TLS kept on; turned on or off, the row above says so.
        (
            "server.tls (files)",
            Now,
            tls_on == (true, true) && o.tls != n.tls,
        ),
        server!("server.max_body_bytes", Now, max_body_bytes),
        server!("server.shutdown_grace_s", Now, shutdown_grace),
        server!("server.shutdown_delay_s", Now, shutdown_delay),
        server!("server.trusted_proxies", Now, trusted_proxies),
        server!("server.client_rate_limit", Now, client_rate_limit),
        server!("server.header_timeout_s", Now, header_timeout),
        server!("server.body_timeout_s", Now, body_timeout),
        server!("server.max_buffered_bytes", Now, max_buffered_bytes),
        server!("server.keepalive_timeout_s", Now, keepalive_timeout),
        server!("server.proxy_protocol_from", Now, proxy_protocol_from),
        setting(
            "upstream.connect_retry_ms",
            Now,
            &ou.connect_retry,
            &nu.connect_retry,
        ),
        setting("upstream.ca", Now, &ou.ca, &nu.ca),
        setting("upstream.signing_secret", Now, &old_key, &new_key),
    ];
    let changed = |when: Takes| -> Vec<&'static str> {
        table
            .iter()
            .filter(|(_, takes, differs)| *takes == when && *differs)
            .map(|(name, _, _)| *name)
            .collect()
    };
    let now = changed(Now);
    SettingChanges {
        now: (!now.is_empty()).then(|| format!("settings changed: {}", now.join(", "))),
        at_next_start: changed(NextStart),
    }
}

/// What `setting_changes` found.
pub struct SettingChanges {
    /// The line naming the settings that took effect at once, if any changed.
    pub now: Option<String>,
    /// The changed settings that take effect at the next start.
    pub at_next_start: Vec<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sources: &str) -> Config {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:8080\"\n[upstream]\nurl = \"http://127.0.0.1:3000/\"\n{sources}"
        );
        Config::from_toml_str(&text, std::path::Path::new("/etc/hookgate/hookgate.toml"))
            .expect("valid")
    }

    fn source(name: &str, path: &str, secrets: &str, more: &str) -> String {
        format!(
            "[[source]]\nname = \"{name}\"\nplatform = \"spika\"\npath = \"{path}\"\nsecrets = [{secrets}]\n{more}\n"
        )
    }

    #[test]
    fn a_reload_names_the_routes_and_secrets_it_changed() {
        let old = config(
            &(source("same", "/a", "\"s1\"", "")
                + &source("moved", "/b", "\"s2\"", "")
                + &source("rotated", "/c", "\"s3\"", "")
                + &source("gone", "/d", "\"s4\"", "")),
        );
        let new = config(
            &(source("same", "/a", "\"s1\"", "")
                + &source("moved", "/b2", "\"s2\"", "timeout_ms = 500")
                + &source("rotated", "/c", "\"s3-new\", \"s3\"", "")
                + &source("added", "/e", "\"s5\"", "")),
        );
        let lines = route_changes(&old, &new);
        assert_eq!(
            lines,
            [
                "route changed: POST /b2 -> source \"moved\" (platform spika, verify platform \
                 proof, forward event with raw, dedupe 300 s (100000 ids), timeout 500 ms) -> \
                 http://127.0.0.1:3000/",
                "source \"rotated\": secrets changed (2 now)",
                "route added: POST /e -> source \"added\" (platform spika, verify platform proof, \
                 forward event with raw, dedupe 300 s (100000 ids), timeout 10000 ms) -> \
                 http://127.0.0.1:3000/",
                "route removed: POST /d -> source \"gone\"",
            ]
        );
        assert!(
            lines.iter().all(|l| !l.contains("s3")),
            "no secret: {lines:?}"
        );
        assert!(route_changes(&new, &new).is_empty());
        let settings = setting_changes(&old, &new);
        assert_eq!(settings.now, None, "only routes changed");
        assert!(settings.at_next_start.is_empty());
        // Only the order of the secrets changed: a change too (the first is what `sign` uses).
        let reordered = config(
            &(source("same", "/a", "\"s1\"", "")
                + &source("moved", "/b2", "\"s2\"", "timeout_ms = 500")
                + &source("rotated", "/c", "\"s3\", \"s3-new\"", "")
                + &source("added", "/e", "\"s5\"", "")),
        );
        assert_eq!(
            route_changes(&new, &reordered),
            ["source \"rotated\": secrets changed (2 now)"]
        );
        // An upstream key in the URL's query is not shown, but its change is.
        let keyed = |key: &str| {
            config(&source(
                "same",
                "/a",
                "\"s1\"",
                &format!("upstream = \"http://127.0.0.1:3000/?key={key}\""),
            ))
        };
        let lines = route_changes(&keyed("old-key"), &keyed("new-key"));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0]
                .ends_with("-> http://127.0.0.1:3000/?key=… (the upstream URL's query changed)"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_reload_names_the_settings_it_changed_now_and_at_the_next_start() {
        let routes = source("same", "/a", "\"s1\"", "");
        let with = |server: &str, upstream: &str| {
            let text = format!(
                "[server]\n{server}\n[upstream]\nurl = \"http://127.0.0.1:3000/\"\n\
                 {upstream}\n{routes}"
            );
            Config::from_toml_str(&text, std::path::Path::new("/etc/hookgate/hookgate.toml"))
                .expect("valid")
        };
        let key = |byte: u8| {
            use base64::Engine as _;
            let key = base64::engine::general_purpose::STANDARD.encode([byte; 24]);
            format!("signing_secret = \"whsec_{key}\"")
        };
        let old = with("", &key(1));
        assert_eq!(setting_changes(&old, &with("", &key(1))).now, None);
        let new = with(
            "client_rate_limit = { per_second = 5, burst = 10 }\nbody_timeout_s = 5\n\
             trusted_proxies = [\"10.0.0.0/8\"]\nmax_connections = 5",
            &key(2),
        );
        // max_connections waits for the next start: the reload's other line names it.
        let settings = setting_changes(&old, &new);
        assert_eq!(
            settings.now.as_deref(),
            Some(
                "settings changed: server.trusted_proxies, server.client_rate_limit, \
                 server.body_timeout_s, upstream.signing_secret"
            )
        );
        assert_eq!(settings.at_next_start, ["server.max_connections"]);
        // The ones a reload cannot apply, in the warning's order, and none of them now.
        let moved = with(
            "listen = \"127.0.0.1:8081\"\nlog_format = \"json\"\nreload_poll_s = 5\n\
             [admin]\nlisten = \"127.0.0.1:9091\"",
            &key(1),
        );
        let settings = setting_changes(&old, &moved);
        assert_eq!(
            settings.at_next_start,
            [
                "server.listen",
                "admin",
                "server.log_format",
                "server.reload_poll_s"
            ]
        );
        assert_eq!(settings.now, None);
        // TLS turned on waits for the next start (its files are not a change of their own);
        // its files swapped with TLS kept on are taken up now.
        let tls = |cert: &str| {
            with(
                &format!("tls = {{ cert = \"{cert}\", key = \"k.pem\" }}"),
                &key(1),
            )
        };
        let settings = setting_changes(&old, &tls("a.pem"));
        assert_eq!(settings.at_next_start, ["server.tls (on/off)"]);
        assert_eq!(settings.now, None);
        let settings = setting_changes(&tls("a.pem"), &tls("b.pem"));
        assert!(
            settings.at_next_start.is_empty(),
            "{:?}",
            settings.at_next_start
        );
        assert_eq!(
            settings.now.as_deref(),
            Some("settings changed: server.tls (files)")
        );
    }
}
