//! No panic on any input: property tests over everything that reads untrusted bytes —
//! verification, normalization of every platform, reply translation, timestamps, config —
//! and every event produced validates against the schema.

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use serde_json::{Map, Value};

use hookgate::json::{Object, SharingOut};
use hookgate::platforms::{Delivery, Platform};
use hookgate::time::{Millis, parse_barertc_timestamp};
use hookgate::verify::{Carriers, Secret, Verifier};

const PLATFORMS: [Platform; 4] = [
    Platform::Protocol,
    Platform::Spika,
    Platform::Barertc,
    Platform::Funtek,
];

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let schema: Value =
            serde_json::from_str(include_str!("schema/event.v1.schema.json")).expect("schema");
        jsonschema::validator_for(&schema).expect("compiles")
    })
}

/// Normalizes `body` for every platform; every event produced must validate.
fn normalize_everywhere(body: &[u8]) {
    let body = &Bytes::copy_from_slice(body);
    let Some(object) = Object::parse(body) else {
        return;
    };
    for platform in PLATFORMS {
        for include_raw in [true, false] {
            let delivery = Delivery {
                source: "s",
                body,
                received_at: Millis::now(),
                include_raw,
            };
            if let Ok(event) = platform.normalize(&object, &delivery) {
                // What is forwarded: the hand-written JSON. It must be byte for byte what
                // the serde derive writes.
                let mut bytes = Vec::new();
                event.write_json(&mut bytes);
                let derived = serde_json::to_vec(&event).expect("an event always serializes");
                assert_eq!(
                    String::from_utf8_lossy(&bytes),
                    String::from_utf8_lossy(&derived),
                    "{platform:?}"
                );
                // What is sent: chunks, long literals shared with the body; the same bytes.
                let mut sharing = SharingOut::new(body);
                event.write_json(&mut sharing);
                assert_eq!(sharing.finish().concat(), bytes);
                let value: Value = serde_json::from_slice(&bytes).expect("the event is JSON");
                assert!(
                    validator().is_valid(&value),
                    "{platform:?}: {value}\nerrors: {:?}",
                    validator()
                        .iter_errors(&value)
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}

/// JSON values whose keys are the ones the platforms read, so generated bodies go deep.
fn json_value() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "id",
        "_id",
        "type",
        "payload",
        "conversation_id",
        "contact",
        "username",
        "message",
        "created_at",
        "updated_at",
        "data",
        "fromUserId",
        "roomId",
        "body",
        "text",
        "createdAt",
        "fromUser",
        "displayName",
        "room",
        "name",
        "event",
        "roomID",
        "sender",
        "nickname",
        "isRobot",
        "members",
        "messageType",
        "messageTimeMS",
        "botState",
        "Action",
        "APIKey",
        "Report",
        "Channel",
        "FromUsername",
        "AboutUsername",
        "Timestamp",
        "Reason",
        "Comment",
        "Message",
        "Username",
        "headers",
        "reply",
        "state",
        "profile",
        "headline",
        "error",
        "sender_id",
        "kind",
        "value",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "message.created",
            "contact.updated",
            "conversation.deleted",
            "MESSAGE",
            "JOIN_ROOM",
            "report",
            "profile",
            "n/a",
            "k",
            "Wed, 02 Jul 2025 13:53:22 EDT",
            "1721641787",
            "2024-07-22T11:49:47Z",
            "..",
            "Ünï.😀",
            "\u{2028}",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        ".*".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..8).prop_map(|kv| Value::Object(
                kv.into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<Map<_, _>>()
            )),
        ]
    })
}

fn verifier_for(platform: Platform) -> Verifier {
    // Long enough that no generated input equals it by chance.
    Verifier::new(
        platform.scheme(),
        vec![
            Secret::new(b"prop-secret-0f8e2a9c41d7b356".to_vec()),
            Secret::new(b"prop-secret-second-7d0c".to_vec()),
        ],
    )
}

/// Found by cargo-fuzz (normalize_protocol): a number literal too large for an f64 is
/// still valid JSON; `raw` keeps it as written and the event stays well-formed.
#[test]
fn regression_huge_number_literal_is_kept_in_raw() {
    let body = b"  \n{\"id\": 77,\n  \"type\": \"mesge.reacted\",\n  \"payload\": {\n    \"ie\": \"hi\",\n    \"updated_\\t\": \"yesterday\",\n    \"created_at\": 17E1000000001\n  }\n}";
    let object = Object::parse(body).expect("valid JSON");
    let delivery = Delivery {
        source: "s",
        body,
        received_at: Millis::now(),
        include_raw: true,
    };
    let event = Platform::Protocol
        .normalize(&object, &delivery)
        .expect("protocol JSON");
    let text = serde_json::to_string(&event).expect("serializes");
    assert!(text.contains("\"created_at\": 17E1000000001"), "{text}");
    assert!(text.contains("\"occurred_at\":null"), "{text}");
    assert!(
        text.contains("\"type\":\"protocol.mesge.reacted\""),
        "{text}"
    );
    let _: &serde_json::value::RawValue = serde_json::from_str(&text).expect("grammatical JSON");
}

/// Shapes the generator seldom makes whole (a funtek list of several members with ids):
/// the hand-written JSON must still match the derive. (cargo-mutants: writing the members
/// without their commas passed every test before this one.)
#[test]
fn several_members_and_every_part_match_the_derive() {
    normalize_everywhere(
        br#"{"event":"ADD_MEMBERS","roomID":"r","botState":"s","data":{"sender":{"id":"a","nickname":"A"},"members":[{"id":"m1","nickname":"One","isRobot":true},{"nickname":"no id"},{"_id":2},{"id":"m3","nickname":"Three","isRobot":false}]}}"#,
    );
    normalize_everywhere(
        br#"{"event":"DELETE_MEMBERS","data":{"members":[{"id":"m1"},{"id":"m2"}]}}"#,
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        normalize_everywhere(&body);
        for platform in PLATFORMS {
            let _ = hookgate::reply::translate(platform, StatusCode::OK, None, Bytes::from(body.clone()));
        }
    }

    #[test]
    fn arbitrary_json_normalizes_to_valid_events(value in json_value()) {
        let body = serde_json::to_vec(&value).expect("json");
        normalize_everywhere(&body);
        // Whitespace between every token: nested objects are split by hand.
        normalize_everywhere(&serde_json::to_vec_pretty(&value).expect("json"));
        // Beside a text long enough to be shared with the body rather than copied.
        let mut long = Map::new();
        long.insert("type".into(), "message.created".into());
        long.insert("text".into(), "z".repeat(5000).into());
        long.insert("payload".into(), value.clone());
        normalize_everywhere(&serde_json::to_vec(&Value::Object(long)).expect("json"));
        // Also wrapped the way each platform expects, so the mapping code runs.
        for key in ["payload", "data", "Report", "message"] {
            let mut wrapped = Map::new();
            wrapped.insert("type".into(), "message.created".into());
            wrapped.insert("event".into(), "MESSAGE".into());
            wrapped.insert("Action".into(), "report".into());
            wrapped.insert("message".into(), Value::Object(Map::new()));
            wrapped.insert(key.into(), value.clone());
            normalize_everywhere(&serde_json::to_vec(&Value::Object(wrapped)).expect("json"));
        }
    }

    #[test]
    fn nested_objects_split_as_serde_json_reads_them(value in json_value(), pretty in any::<bool>()) {
        let Value::Object(map) = &value else { return Ok(()) };
        let inner = if pretty {
            serde_json::to_string_pretty(&value)
        } else {
            serde_json::to_string(&value)
        }
        .expect("json");
        let body = format!("{{\"x\" : {inner} }}");
        let outer = Object::parse(body.as_bytes()).expect("an object");
        let nested = outer.object("x").expect("a nested object");
        prop_assert_eq!(nested.keys().count(), map.len());
        for (key, expected) in map {
            let got = nested.get(key).expect("every key");
            let got: Value = serde_json::from_str(got.get()).expect("a value's whole text");
            prop_assert_eq!(&got, expected);
        }
        for (key, expected) in map {
            // Every array splits into its elements; nothing else reads as one.
            let list = nested.array(key);
            let Value::Array(items) = expected else {
                prop_assert!(list.is_none(), "{key}: not an array");
                continue;
            };
            let list = list.expect("an array splits");
            prop_assert_eq!(list.len(), items.len());
            for (got, item) in list.iter().zip(items) {
                let got: Value = serde_json::from_str(got.get()).expect("an element's whole text");
                prop_assert_eq!(&got, item);
            }
        }
    }

    #[test]
    fn reply_translation_never_panics_and_writes_json(value in json_value(), status in 200u16..600) {
        let body = Bytes::from(serde_json::to_vec(&value).expect("json"));
        for platform in PLATFORMS {
            let status = StatusCode::from_u16(status).expect("status");
            let answer = hookgate::reply::translate(platform, status, None, body.clone());
            if answer.body != body && !answer.body.is_empty() {
                let _: Value = serde_json::from_slice(&answer.body).expect("a translated answer is JSON");
            }
        }
    }

    #[test]
    fn verification_never_panics(
        body in prop::collection::vec(any::<u8>(), 0..256),
        header in "[ -~]{0,80}",
        query in ".{0,80}",
    ) {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&header) {
            for name in ["x-protocol-signature", "verification-signature", "x-webhook-token"] {
                headers.insert(name, v.clone());
            }
        }
        for platform in PLATFORMS {
            let carriers = Carriers { headers: &headers, query: Some(&query) };
            // Nothing here knows a secret: nothing may verify.
            prop_assert!(verifier_for(platform).verify(&carriers, Bytes::from(body.clone())).is_err());
        }
    }

    #[test]
    fn timestamps_never_panic(s in ".{0,64}") {
        if let Some(t) = parse_barertc_timestamp(&s) {
            let text = t.to_rfc3339();
            prop_assert_eq!(text.len(), 24);
        }
    }

    /// A request path's wire form is ASCII, stays as it is when formed again, and decodes
    /// to the same bytes as the path (escaping and upper-casing change no byte it stands for).
    #[test]
    fn a_wire_form_is_ascii_stable_and_means_the_same_bytes(path in "(/|%|[0-9a-fA-F]|.){0,40}") {
        let wire = hookgate::config::wire_form(&path);
        prop_assert!(wire.is_ascii(), "{:?}", wire);
        let again = hookgate::config::wire_form(&wire);
        prop_assert_eq!(again.as_ref(), wire.as_ref());
        prop_assert_eq!(percent_decoded(&wire), percent_decoded(&path));
    }

    #[test]
    fn config_parsing_never_panics(text in ".{0,400}") {
        let _ = hookgate::config::Config::from_toml_str(&text, Path::new("/nonexistent/fuzz.toml"));
    }
}

/// `text` with every `%XX` escape made the byte it stands for.
fn percent_decoded(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?))
            .flatten();
        match escaped {
            Some(b) => {
                out.push(b as u8);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}
