//! Reloading the config while serving (SPEC §8): on SIGHUP, and, with `[server]
//! reload_poll_s`, when the config file or a file it names has changed.
//!
//! Why a poll: Kubernetes updates a mounted ConfigMap or Secret (a rotated secret, a
//! certificate cert-manager renewed) in place and sends no signal, and the distroless image
//! has no `kill` for an operator to send one with. The files are read whole and hashed, not
//! watched: Kubernetes swaps them in by renaming a symlink (`..data`), which inotify on the
//! files themselves does not see, and a few small files every few seconds cost nothing.
//!
//! A reload that fails is logged once. The files then still differ from the serving
//! config's (as they were, they loaded), so each poll tries again, quietly, and logs only a
//! different error: the config may name a file that is not there yet (a ConfigMap
//! and a Secret are updated separately, in either order), and the reload goes through once
//! it is.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

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
    /// The fingerprint of the serving config's files, taken after it was loaded.
    serving: [u8; 32],
    /// The error of the last reload, while reloads fail.
    failing: Option<String>,
}

impl<'a> Reloader<'a> {
    pub fn new(server: &'a Server) -> Reloader<'a> {
        Reloader {
            server,
            serving: fingerprint(server.gateway().config.files()),
            failing: None,
        }
    }

    /// SIGHUP: always reloads, and always logs the result.
    pub fn on_signal(&mut self) {
        self.reload(Trigger::Signal);
    }

    /// A poll: reloads when a file differs from what the serving config was loaded from.
    pub fn on_poll(&mut self) {
        if fingerprint(self.server.gateway().config.files()) != self.serving {
            self.reload(Trigger::FilesChanged);
        }
    }

    fn reload(&mut self, trigger: Trigger) {
        match self.server.load_again() {
            Ok(reloaded) => {
                self.server.count_reload(true);
                self.failing = None;
                self.serving = fingerprint(self.server.gateway().config.files());
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

/// SHA-256 over each file's path and contents (or that it cannot be read, and why). The
/// contents are secrets too: they stay in this function's memory, and only the hash leaves.
fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for path in files {
        let name = path.as_os_str().as_encoded_bytes();
        hash.update((name.len() as u64).to_le_bytes());
        hash.update(name);
        match std::fs::read(path) {
            Ok(bytes) => {
                hash.update([1]);
                hash.update((bytes.len() as u64).to_le_bytes());
                hash.update(&bytes);
            }
            Err(e) => {
                hash.update([0]);
                hash.update(e.kind().to_string().as_bytes());
            }
        }
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_follows_contents_and_paths() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "one").expect("write");
        std::fs::write(&b, "two").expect("write");
        let files = vec![a.clone(), b.clone()];
        let first = fingerprint(&files);
        assert_eq!(fingerprint(&files), first, "the same files, the same print");

        std::fs::write(&a, "One").expect("write");
        let changed = fingerprint(&files);
        assert_ne!(changed, first);

        // Swapped in by a rename, as Kubernetes does: seen.
        let c = dir.path().join("c");
        std::fs::write(&c, "three").expect("write");
        std::fs::rename(&c, &b).expect("rename");
        assert_ne!(fingerprint(&files), changed);

        // Contents moved from one file to the next are another print.
        std::fs::write(&a, "onetwo").expect("write");
        std::fs::write(&b, "").expect("write");
        let joined = fingerprint(&files);
        std::fs::write(&a, "one").expect("write");
        std::fs::write(&b, "two").expect("write");
        assert_ne!(fingerprint(&files), joined);
        assert_eq!(fingerprint(&files), first);

        // A file that goes away, and comes back.
        std::fs::remove_file(&b).expect("remove");
        assert_ne!(fingerprint(&files), first);
        std::fs::write(&b, "two").expect("write");
        assert_eq!(fingerprint(&files), first);
    }
}
