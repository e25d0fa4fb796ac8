//! barertc: untrusted bytes through verification (barertc parses before it) and normalization.
#![no_main]
use hookgate::platforms::Platform;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hookgate_fuzz_common::normalize(Platform::Barertc, data);
});
