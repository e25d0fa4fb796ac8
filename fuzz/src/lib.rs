//! What every normalize target does: the verifier, then the platform's mapping, then the
//! event's serialization; an event that is produced must be well-formed.
use bytes::Bytes;
use hookgate::json::Object;
use hookgate::platforms::{Delivery, Platform};
use hookgate::time::Millis;
use hookgate::verify::{Carriers, Secret, Verifier};

pub fn normalize(platform: Platform, data: &[u8]) {
    let headers = http::HeaderMap::new();
    let carriers = Carriers { headers: &headers, query: Some("token=k") };
    let verifier = Verifier::new(platform.scheme(), vec![Secret::new(b"k".to_vec())]);
    let _ = verifier.verify(&carriers, Bytes::copy_from_slice(data));

    let Some(object) = Object::parse(data) else { return };
    for include_raw in [true, false] {
        let delivery = Delivery { source: "fuzz", body: data, received_at: Millis::now(), include_raw };
        if let Ok(event) = platform.normalize(&object, &delivery) {
            let bytes = serde_json::to_vec(&event).expect("an event serializes");
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("the event is JSON");
            let kind = v["type"].as_str().expect("type is a string");
            assert!(kind.contains('.') && !kind.starts_with('.') && !kind.ends_with('.'), "{kind}");
            assert!(kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'), "{kind}");
            assert!(!v["id"].as_str().expect("id").is_empty());
        }
    }
}
