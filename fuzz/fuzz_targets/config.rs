//! Config text through parsing and validation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hookgate::config::Config::from_toml_str(text, std::path::Path::new("/nonexistent/fuzz.toml"));
    }
});
