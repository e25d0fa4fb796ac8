//! Hot paths, in-process (no network): HMAC verification at 1 KiB and 256 KiB, the body's
//! parse (hookgate's own against serde_json's) at 1 KiB and 64 KiB, normalize per platform,
//! reply translation, and the whole CPU part of one protocol delivery (verify → parse →
//! normalize → serialize), and the same without the serialize, which the performance bar puts
//! at ≤ 3 µs for 1 KiB; and dedupe's check and remember of a new id against a full table.
//!
//!     cargo bench --bench hotpath

use std::hint::black_box;
use std::path::Path;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderValue, StatusCode};

use hookgate::config::Config;
use hookgate::json::Object;
use hookgate::pipeline::{self, process};
use hookgate::platforms::{Delivery, Platform};
use hookgate::time::Millis;
use hookgate::verify::Carriers;

const WEBHOOK: &[u8] = include_bytes!("load/webhook.json");

fn sign(key: &str, body: &[u8]) -> HeaderValue {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.as_bytes()).expect("key");
    mac.update(body);
    HeaderValue::from_str(&hex::encode(mac.finalize().into_bytes())).expect("hex")
}

fn config(platform: &str) -> Config {
    let text = format!(
        "[upstream]\nurl = \"http://127.0.0.1:1/\"\n[[source]]\nname = \"b\"\nplatform = \"{platform}\"\npath = \"/b\"\nsecrets = [\"bench-secret\"]\ndedupe_window_s = 0\n"
    );
    Config::from_toml_str(&text, Path::new("/bench/hookgate.toml")).expect("config")
}

/// A typical delivery of each platform (the contract's own examples).
const SAMPLES: [(Platform, &str); 4] = [
    (Platform::Protocol, ""),
    (
        Platform::Spika,
        r#"{"message":{"id":24006,"fromUserId":54,"totalUserCount":3,"deliveredCount":0,"seenCount":0,"roomId":438,"type":"text","body":{"text":"test"},"createdAt":1667548137257,"modifiedAt":1667548137257,"localId":null,"deleted":false,"replyId":null},"fromUser":{"displayName":"Stjepan","avatarFileId":88},"room":{"name":"tstt","avatarFileId":88}}"#,
    ),
    (
        Platform::Barertc,
        r#"{"Action":"report","APIKey":"bench-secret","Report":{"FromUsername":"sender","AboutUsername":"spammer","Channel":"lobby","Timestamp":"2024-07-22T11:49:47+02:00","Reason":"It's spam","Comment":"custom user note about the report","Message":"buy cheap watches"}}"#,
    ),
    (
        Platform::Funtek,
        r#"{"roomID":"demo-room","event":"MESSAGE","data":{"_id":"5c1ddf2d1536bbb6c49f7cfe","message":"Bonjour 2","room":"demo-room","sender":{"_id":"sss","nickname":"Desirae","isRobot":false,"avatarUrl":"","id":"sss"},"messageType":"text","appID":"SampleApp","__v":0,"messageTime":"2018-12-22T06:52:29.380Z","messageTimeMS":1545461549380,"id":"5c1ddf2d1536bbb6c49f7cfe"}}"#,
    ),
];

fn verify(c: &mut Criterion) {
    let cfg = config("protocol");
    let source = &cfg.sources[0];
    let mut group = c.benchmark_group("verify_hmac");
    for size in [1024usize, 256 * 1024] {
        let body = Bytes::from(vec![b'x'; size]);
        let mut headers = HeaderMap::new();
        headers.insert("x-protocol-signature", sign("bench-secret", &body));
        let carriers = Carriers {
            headers: &headers,
            query: None,
        };
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("{}KiB", size / 1024), |b| {
            b.iter(|| {
                source
                    .verifier
                    .verify(&carriers, black_box(body.clone()))
                    .expect("verifies")
            })
        });
    }
    group.finish();
}

/// The body's one-pass check and split (`Object::parse`) next to serde_json's reading of
/// the same object (its oracle in tests and fuzzing), at 1 KiB and with a 64 KiB message.
fn parse(c: &mut Criterion) {
    let mut long: serde_json::Value = serde_json::from_slice(WEBHOOK).expect("json");
    long["payload"]["message"] = serde_json::Value::String("x".repeat(64 * 1024 - 1000));
    let long = serde_json::to_vec(&long).expect("json");
    let mut group = c.benchmark_group("parse");
    for (size, body) in [("1KiB", WEBHOOK), ("64KiB", long.as_slice())] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("hookgate_{size}"), |b| {
            b.iter(|| Object::parse(black_box(body)).expect("object"))
        });
        group.bench_function(format!("serde_json_{size}"), |b| {
            b.iter(|| serde_json::from_slice::<Object>(black_box(body)).expect("object"))
        });
    }
    group.finish();
}

fn normalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize");
    for (platform, sample) in SAMPLES {
        let body: &[u8] = if sample.is_empty() {
            WEBHOOK
        } else {
            sample.as_bytes()
        };
        group.bench_function(platform.as_str(), |b| {
            b.iter(|| {
                let object = Object::parse(black_box(body)).expect("object");
                let delivery = Delivery {
                    source: "b",
                    body,
                    received_at: Millis::now(),
                    include_raw: true,
                };
                let event = platform.normalize(&object, &delivery).expect("event");
                let mut out = Vec::with_capacity(body.len() + 512);
                event.write_json(&mut out);
                out
            })
        });
    }
    group.finish();
}

fn reply(c: &mut Criterion) {
    let mut group = c.benchmark_group("reply");
    let funtek = Bytes::from_static(br#"{"reply":{"text":"Hello! I'm the bot assistant, how can I help you?","sender_id":"robot001","kind":"text"},"state":"active"}"#);
    let barertc = Bytes::from_static(br#"{"headline":"Say hi!","profile":[{"name":"Age","value":"30yo"},{"name":"Gender","value":"Man"}]}"#);
    group.bench_function("funtek_bot_reply", |b| {
        b.iter(|| {
            hookgate::reply::translate(
                Platform::Funtek,
                StatusCode::OK,
                None,
                black_box(funtek.clone()),
            )
        })
    });
    group.bench_function("barertc_profile", |b| {
        b.iter(|| {
            hookgate::reply::translate(
                Platform::Barertc,
                StatusCode::OK,
                None,
                black_box(barertc.clone()),
            )
        })
    });
    group.bench_function("protocol_passthrough", |b| {
        b.iter(|| {
            hookgate::reply::translate(
                Platform::Protocol,
                StatusCode::OK,
                None,
                black_box(funtek.clone()),
            )
        })
    });
    group.finish();
}

fn delivery(c: &mut Criterion) {
    let cfg = config("protocol");
    let source = &cfg.sources[0];
    let body = Bytes::from_static(WEBHOOK);
    let mut headers = HeaderMap::new();
    headers.insert("x-protocol-signature", sign("bench-secret", WEBHOOK));
    let carriers = Carriers {
        headers: &headers,
        query: None,
    };
    c.bench_function("protocol_delivery_1KiB_verify_normalize_serialize", |b| {
        b.iter(|| {
            process(source, &carriers, black_box(body.clone()), Millis::now()).expect("processed")
        })
    });
    // What the bar names (verify + normalize, <= 3 us): `process` up to the normalized
    // event, without writing it out; the line above adds the write.
    c.bench_function("protocol_delivery_1KiB_verify_normalize", |b| {
        b.iter(|| {
            let verified = source
                .verifier
                .verify(&carriers, black_box(body.clone()))
                .expect("verified");
            let object = pipeline::parse(&verified).expect("object");
            let event =
                pipeline::normalize(source, &verified, &object, Millis::now()).expect("event");
            // By reference, so the whole event is built, not only what a later line reads.
            black_box(&event);
        })
    });
}

/// What dedupe (on by default) adds to a forwarded delivery: its key, the check, and the
/// remember after the 2xx, of a new id, with the table full (100,000 ids), as it stays
/// under a steady stream of distinct ids. One thread: the lock is never contended here.
fn dedupe(c: &mut Criterion) {
    use hookgate::dedupe::{CAPACITY, Dedupe};
    use hookgate::limit::LimitClock;
    let d = Dedupe::new(std::time::Duration::from_secs(300), LimitClock::default());
    let mut next = 0u64;
    let mut fresh = || {
        next += 1;
        // 16 characters, like the bench webhook's ids.
        format!("{:016}", next).into_bytes()
    };
    for _ in 0..CAPACITY {
        d.remember(d.key(&fresh()));
    }
    c.bench_function("dedupe_new_id_full_table", |b| {
        b.iter_batched(
            &mut fresh,
            |id| {
                let key = d.key(black_box(&id));
                assert!(!d.seen(key));
                d.remember(key);
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, verify, parse, normalize, reply, delivery, dedupe);
criterion_main!(benches);
