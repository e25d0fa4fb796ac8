//! Config text through parsing and validation; a config that validates must be usable as
//! it is: every duration can be added to the clock (one that could not once panicked the
//! workers at their first connection), and its warnings can be made.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("/nonexistent/fuzz.toml");
    let Ok(config) = hookgate::config::Config::from_toml_str(text, path) else {
        return;
    };
    let now = std::time::Instant::now();
    let s = &config.server;
    let poll = s.reload_poll.unwrap_or_default();
    let durations = [
        s.header_timeout,
        s.keepalive_timeout,
        s.body_timeout,
        s.shutdown_grace,
        s.shutdown_delay,
        poll,
    ];
    for d in durations {
        assert!(now.checked_add(d).is_some(), "{d:?}");
    }
    assert!(s.reload_poll.is_none_or(|d| !d.is_zero()), "0 is off");
    assert!(
        config.files().any(|f| f == path),
        "the config file is watched"
    );
    for source in &config.sources {
        assert!(now.checked_add(source.timeout).is_some());
        assert!(now.checked_add(source.dedupe_window).is_some());
    }
    // Startup, `check` and reloads print these for every config that validates.
    for warning in config.warnings() {
        assert!(warning.starts_with("warning: "), "{warning}");
    }
});
