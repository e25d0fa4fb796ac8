//! hookgate's one-pass JSON check against serde_json on the same bytes: the same verdict,
//! and entry for entry the same object (keys decoded, value texts as borrowed).
#![no_main]
use hookgate::json::Object;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ours = Object::parse(data);
    let serde = serde_json::from_slice::<Object>(data).ok();
    assert_eq!(ours, serde, "{:?}", String::from_utf8_lossy(data));
});
