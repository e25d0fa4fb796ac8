//! Every vector in tests/vectors (copied from the contract) through a real gateway with a
//! real recording upstream: a vector added later is covered without new code.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

fn schema_validator() -> jsonschema::Validator {
    let text = include_str!("schema/event.v1.schema.json");
    let schema: Value = serde_json::from_str(text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn vector_files(dir: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("vectors folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn toml_str(v: &Value) -> String {
    format!("{:?}", v.as_str().expect("string"))
}

/// The `[[source]]` a vector names, with dedupe off (several vectors share an event id).
fn source_config(upstream: &str, source: &Value) -> String {
    let secrets: Vec<String> = source["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .map(toml_str)
        .collect();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = {upstream:?}\n\n[[source]]\nname = {}\nplatform = {}\npath = {}\nsecrets = [{}]\ninclude_raw = {}\ndedupe_window_s = 0\n",
        toml_str(&source["name"]),
        toml_str(&source["platform"]),
        toml_str(&source["path"]),
        secrets.join(", "),
        source["include_raw"].as_bool().unwrap_or(true),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_vector() {
    let validator = schema_validator();
    let files = vector_files("tests/vectors");
    assert!(
        files.len() >= 50,
        "expected the contract's vectors, found {}",
        files.len()
    );
    let mut forwarded = 0;
    let mut refused = 0;
    for file in &files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(file).expect("read"))
            .expect("vector is JSON");
        let upstream = spawn_upstream(Reply::json(200, r#"{"ok":true}"#)).await;
        let gw = spawn_gateway(&source_config(&upstream.url("/app"), &v["source"])).await;

        let req = &v["request"];
        let query = req["query"].as_str().unwrap_or_default();
        let path = req["path"].as_str().expect("path");
        let target = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        };
        let headers: Vec<(String, String)> = req["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let header_refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let body = req["body"].as_str().expect("body").as_bytes().to_vec();
        let answer = send(
            gw.addr,
            req["method"].as_str().unwrap_or("POST"),
            &target,
            &header_refs,
            body.clone(),
        )
        .await;
        let received = upstream.requests();
        let expect = &v["expect"];

        match expect["status"].as_u64() {
            None => {
                assert_eq!(answer.status, 200, "{name}: {:?}", answer.body);
                assert_eq!(received.len(), 1, "{name}: one forwarded request");
                let fwd = &received[0];
                let mut event = fwd.json();
                assert!(
                    validator.is_valid(&event),
                    "{name}: event fails the schema: {event}"
                );
                let received_at = event
                    .as_object_mut()
                    .and_then(|o| o.remove("received_at"))
                    .expect("received_at");
                assert!(received_at.is_string(), "{name}");
                assert_eq!(event, expect["event"], "{name}: event");
                // §5 headers: each x-hookgate-* header carries its event field.
                let e = &expect["event"];
                for (header, field) in [
                    ("x-hookgate-source", "source"),
                    ("x-hookgate-platform", "platform"),
                    ("x-hookgate-event-id", "id"),
                    ("x-hookgate-event-type", "type"),
                ] {
                    assert_eq!(fwd.header(header), e[field].as_str(), "{name}: {header}");
                }
                assert_eq!(
                    fwd.header("content-type"),
                    Some("application/json"),
                    "{name}"
                );
                assert_eq!(fwd.header("x-forwarded-for"), Some("127.0.0.1"), "{name}");
                assert_eq!(fwd.header("x-forwarded-proto"), Some("http"), "{name}");
                assert_eq!(fwd.uri.path(), "/app", "{name}");
                assert_eq!(
                    fwd.uri.query(),
                    None,
                    "{name}: the sender's query is not passed on"
                );
                for proof in [
                    "x-protocol-signature",
                    "verification-signature",
                    "x-webhook-token",
                ] {
                    assert!(
                        fwd.headers.get(proof).is_none(),
                        "{name}: {proof} forwarded"
                    );
                }
                // No secret of the source in anything forwarded.
                let all = format!("{:?}{}", fwd.headers, String::from_utf8_lossy(&fwd.body));
                for s in v["source"]["secrets"].as_array().expect("secrets") {
                    let s = s.as_str().expect("secret");
                    assert!(
                        !all.contains(s),
                        "{name}: secret {s:?} reached the upstream"
                    );
                }
                forwarded += 1;
            }
            Some(status) => {
                assert_eq!(
                    u64::from(answer.status),
                    status,
                    "{name}: {:?}",
                    answer.body
                );
                assert!(
                    received.is_empty(),
                    "{name}: a refused delivery reached the upstream"
                );
                assert_eq!(
                    answer.header("content-type"),
                    Some("application/json"),
                    "{name}"
                );
                if !expect["body"].is_null() {
                    assert_eq!(answer.json(), expect["body"], "{name}: body");
                }
                refused += 1;
            }
        }
        assert!(
            answer.header("x-request-id").is_some(),
            "{name}: x-request-id"
        );
    }
    eprintln!(
        "vectors: {forwarded} forwarded, {refused} refused, {} in all",
        files.len()
    );
    assert_eq!(forwarded + refused, files.len());
}

/// A valid delivery of each platform (any event of it), for the reply vectors.
fn valid_delivery(platform: &str) -> (String, Vec<(String, String)>, String) {
    match platform {
        "protocol" => {
            let body = r#"{"id":"r1","type":"message.created","payload":{}}"#.to_string();
            let sig = hmac_hex("s3cret", body.as_bytes());
            (
                "/h".into(),
                vec![("x-protocol-signature".into(), sig)],
                body,
            )
        }
        "spika" => (
            "/h".into(),
            vec![("verification-signature".into(), "s3cret".into())],
            r#"{"message":{"id":1}}"#.into(),
        ),
        "barertc" => (
            "/h".into(),
            vec![],
            r#"{"Action":"profile","APIKey":"s3cret","Username":"u"}"#.into(),
        ),
        "funtek" => (
            "/h?token=s3cret".into(),
            vec![],
            r#"{"event":"MESSAGE","data":{"id":"m"}}"#.into(),
        ),
        other => panic!("unknown platform {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_vector() {
    let files = vector_files("tests/vectors/replies");
    assert!(files.len() >= 15, "found {}", files.len());
    for file in &files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("json");
        let platform = v["platform"].as_str().expect("platform");
        let upstream_body = v["upstream_body"].as_str().unwrap_or_default();
        let mut reply = Reply::json(
            v["upstream_status"].as_u64().expect("status") as u16,
            upstream_body,
        );
        if upstream_body.is_empty() {
            reply.headers.clear();
        }
        let upstream = spawn_upstream(reply).await;
        let gw = spawn_gateway(&one_source(
            &upstream.url("/"),
            platform,
            "/h",
            &["s3cret"],
            "dedupe_window_s = 0",
        ))
        .await;
        let (target, headers, body) = valid_delivery(platform);
        let hrefs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let answer = send(gw.addr, "POST", &target, &hrefs, body).await;
        assert_eq!(upstream.requests().len(), 1, "{name}");
        assert_eq!(
            u64::from(answer.status),
            v["sender_status"].as_u64().expect("status"),
            "{name}"
        );
        if v["sender_body"].is_null() {
            assert_eq!(
                &answer.body[..],
                upstream_body.as_bytes(),
                "{name}: relayed byte for byte"
            );
            if !upstream_body.is_empty() {
                assert_eq!(
                    answer.header("content-type"),
                    Some("application/json"),
                    "{name}"
                );
            }
        } else {
            assert_eq!(answer.json(), v["sender_body"], "{name}");
            assert_eq!(
                answer.header("content-type"),
                Some("application/json"),
                "{name}"
            );
        }
    }
}
