//! What every normalize target does: the verifier, then the platform's mapping, then the
//! event's serialization (hand-written, checked against the serde derive); an event that
//! is produced must be well-formed.
use bytes::Bytes;
use hookgate::json::{Object, SharingOut};
use hookgate::platforms::{Delivery, Platform};
use hookgate::time::Millis;
use hookgate::verify::{Carriers, Secret, Verifier};

#[derive(serde::Deserialize)]
struct Head {
    id: String,
    #[serde(rename = "type")]
    kind: String,
}

pub fn normalize(platform: Platform, data: &[u8]) {
    let headers = http::HeaderMap::new();
    let carriers = Carriers { headers: &headers, query: Some("token=k") };
    let verifier = Verifier::new(platform.scheme(), vec![Secret::new(b"k".to_vec())]);
    let _ = verifier.verify(&carriers, Bytes::copy_from_slice(data));

    let body = Bytes::copy_from_slice(data);
    let Some(object) = Object::parse(&body) else { return };
    for include_raw in [true, false] {
        let delivery = Delivery { source: "fuzz", body: &body, received_at: Millis::now(), include_raw };
        if let Ok(event) = platform.normalize(&object, &delivery) {
            let mut bytes = Vec::new();
            event.write_json(&mut bytes);
            let derived = serde_json::to_vec(&event).expect("an event serializes");
            assert_eq!(bytes, derived, "the forwarded JSON is what the serde derive writes");
            // What is sent: chunks, long literals shared with the body; the same bytes.
            let mut sharing = SharingOut::new(&body);
            event.write_json(&mut sharing);
            assert_eq!(sharing.finish().concat(), bytes, "the chunks are the event");
            // Grammar only: `raw` keeps number literals such as 17E1000000001 that are valid
            // JSON but too large for an f64, as the SPEC asks.
            let v: Head = serde_json::from_slice(&bytes).expect("the event is JSON");
            // Every string decodes (a lone surrogate reaches the app as U+FFFD): a strict
            // parser reads the event, unless a number kept in `raw` is too large for an f64.
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                assert!(e.to_string().starts_with("number out of range"), "{e}");
            }
            let kind = v.kind.as_str();
            assert!(kind.contains('.') && !kind.starts_with('.') && !kind.ends_with('.'), "{kind}");
            assert!(kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'), "{kind}");
            assert!(!v.id.is_empty());
        }
    }
}
