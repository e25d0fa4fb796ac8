//! Upstream answers through reply translation for every platform and status class.
#![no_main]
use bytes::Bytes;
use hookgate::platforms::Platform;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&status, body)) = data.split_first() else { return };
    let status = StatusCode::from_u16(200 + u16::from(status) % 400).unwrap_or(StatusCode::OK);
    let body = Bytes::copy_from_slice(body);
    for platform in [Platform::Protocol, Platform::Spika, Platform::Barertc, Platform::Funtek] {
        let answer = hookgate::reply::translate(platform, status, None, body.clone());
        if answer.body != body && !answer.body.is_empty() {
            let _: serde_json::Value =
                serde_json::from_slice(&answer.body).expect("a translated answer is JSON");
        }
    }
});
