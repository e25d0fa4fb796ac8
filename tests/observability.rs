//! Metrics and logs after real traffic: exact counts per label set from a scrape parsed
//! with a Prometheus text parser; JSON log lines that parse and carry the fields; no secret
//! anywhere in what an operator sees.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;

const SECRET: &str = "metrics-SECRET-value";

/// A request line's fields, in the order a text line writes them (README "Logs").
const REQUEST_LINE_FIELDS: [&str; 12] = [
    "source",
    "platform",
    "status",
    "duration_ms",
    "event_id",
    "event_type",
    "request_id",
    "client",
    "method",
    "path",
    "reason",
    "detail",
];

fn body(id: &str) -> String {
    format!(r#"{{"id":"{id}","type":"message.created","payload":{{}}}}"#)
}

async fn deliver(addr: SocketAddr, path: &str, id: &str, key: &str) -> u16 {
    post_signed_status(addr, path, key, body(id)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_happened() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let (refusing, _held) = refusing_address();
    let dead = format!("http://{refusing}/");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = {:?}\n\n\
         [[source]]\nname = \"p\"\nplatform = \"protocol\"\npath = \"/p\"\nsecrets = [{SECRET:?}]\n\
         dedupe_window_s = 0\nrate_limit = {{ per_second = 1, burst = 3 }}\n\n\
         [[source]]\nname = \"down\"\nplatform = \"protocol\"\npath = \"/down\"\nsecrets = [{SECRET:?}]\nupstream = {dead:?}\n",
        upstream.url("/")
    );
    let gw = spawn_gateway(&config).await;
    let admin = gw.server.admin_addr.expect("admin");

    for i in 0..3 {
        assert_eq!(deliver(gw.addr, "/p", &i.to_string(), SECRET).await, 200);
    }
    assert_eq!(deliver(gw.addr, "/p", "x", "wrong").await, 401);
    assert_eq!(deliver(gw.addr, "/p", "y", "wrong").await, 401);
    assert_eq!(deliver(gw.addr, "/p", "4", SECRET).await, 429);
    assert_eq!(deliver(gw.addr, "/p", "5", SECRET).await, 429);
    assert_eq!(deliver(gw.addr, "/down", "6", SECRET).await, 502);
    assert_eq!(
        deliver(gw.addr, "/scanner/wp-login.php", "7", SECRET).await,
        404
    );
    assert_eq!(deliver(gw.addr, "/another/path", "8", SECRET).await, 404);
    // Health checks are not counted.
    assert_eq!(
        send(gw.addr, "GET", "/healthz", &[], Bytes::new())
            .await
            .status,
        200
    );

    let a = send(admin, "GET", "/metrics", &[], Bytes::new()).await;
    assert_eq!(a.status, 200);
    let text = String::from_utf8(a.body.to_vec()).expect("utf-8");
    assert!(!text.contains(SECRET));
    let m = scrape(&text);
    let requests = "hookgate_requests_total";
    assert_eq!(
        get(&m, requests, &[("source", "p"), ("status", "200")]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        get(&m, requests, &[("source", "p"), ("status", "401")]),
        Some(2.0)
    );
    assert_eq!(
        get(&m, requests, &[("source", "p"), ("status", "429")]),
        Some(2.0)
    );
    assert_eq!(
        get(&m, requests, &[("source", "down"), ("status", "502")]),
        Some(1.0)
    );
    // Unmatched paths count under source="" and never under their own path.
    assert_eq!(
        get(&m, requests, &[("source", ""), ("status", "404")]),
        Some(2.0)
    );
    assert!(!text.contains("wp-login"));
    assert_eq!(
        get(
            &m,
            "hookgate_verification_failures_total",
            &[("source", "p")]
        ),
        Some(2.0)
    );
    assert_eq!(
        get(
            &m,
            "hookgate_rate_limited_total",
            &[("source", "p"), ("scope", "source")]
        ),
        Some(2.0)
    );
    assert_eq!(
        get(
            &m,
            "hookgate_rate_limited_total",
            &[("source", "p"), ("scope", "client")]
        ),
        Some(0.0)
    );
    assert_eq!(
        get(
            &m,
            "hookgate_upstream_errors_total",
            &[("source", "down"), ("kind", "connect")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            &m,
            "hookgate_upstream_duration_seconds_count",
            &[("source", "p")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        get(
            &m,
            "hookgate_upstream_duration_seconds_bucket",
            &[("source", "p"), ("le", "inf")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(get(&m, "hookgate_in_flight_requests", &[]), Some(0.0));
    assert_eq!(get(&m, "hookgate_body_budget_waits_total", &[]), Some(0.0));
    // Three deliveries to a keep-alive app, on one or both workers: a connection each; the
    // refused connect to the dead one is not counted.
    let opened = get(&m, "hookgate_upstream_connections_total", &[]);
    assert!(
        matches!(opened, Some(n) if (1.0..=2.0).contains(&n)),
        "{opened:?}\n{text}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        get(&m, "hookgate_build_info", &[("version", version)]),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_fields_and_no_secret() {
    // An app that takes 150 ms, so that a line's duration is known to be at least that.
    let upstream = spawn_upstream(Reply::json(200, "{}").after(Duration::from_millis(150))).await;
    let dir = temp_dir("json-logs");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nlog_format = \"json\"\n[upstream]\nurl = {:?}\n\n\
         [[source]]\nname = \"p\"\nplatform = \"protocol\"\npath = \"/p\"\nsecrets = [{SECRET:?}]\n\n\
         [[source]]\nname = \"f\"\nplatform = \"funtek\"\npath = \"/f\"\nsecrets = [{SECRET:?}]\n",
        upstream.url("/")
    );
    let mut p = spawn_process(
        &dir,
        &config,
        &[("RUST_LOG", "debug"), ("HOOKGATE_WORKERS", "3")],
    );
    let addr = p.addr;
    assert_eq!(deliver(addr, "/p", "ok-1", SECRET).await, 200);
    assert_eq!(deliver(addr, "/p", "bad", "wrong").await, 401);
    // The sender's retry: answered 200 too, but not forwarded, and the log says why.
    assert_eq!(deliver(addr, "/p", "ok-1", SECRET).await, 200);
    assert_eq!(upstream.requests().len(), 1);
    let a = send(
        addr,
        "POST",
        &format!("/f?token={SECRET}"),
        &[],
        Bytes::from_static(br#"{"event":"MESSAGE"}"#),
    )
    .await;
    assert_eq!(a.status, 200);
    // What a sender chooses before any proof is logged clipped; the answer carries its
    // request id whole (SPEC §4).
    let long_path = format!("/{}", "x".repeat(5000));
    let long_id = "r".repeat(5000);
    let a = send(
        addr,
        "POST",
        &long_path,
        &[("x-request-id", long_id.as_str())],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(a.status, 404);
    assert_eq!(a.header("x-request-id"), Some(long_id.as_str()));
    let long_method = "M".repeat(5000);
    let a = send(addr, &long_method, "/p", &[], Bytes::new()).await;
    assert_eq!(a.status, 405);
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));

    let text = p.log();
    assert!(!text.contains(SECRET), "a secret in the log:\n{text}");
    // Its reader kept up: nothing was dropped, and no warning says otherwise.
    assert!(!text.contains("log lines dropped"), "{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let requests: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "hookgate::request")
        .collect();
    assert_eq!(requests.len(), 6, "{text}");
    let odd_method = requests
        .iter()
        .find(|l| l["status"] == 405)
        .expect("the 405 line");
    assert_eq!(
        odd_method["method"],
        format!("{}…(5000 bytes)", "M".repeat(256))
    );
    let unrouted = requests
        .iter()
        .find(|l| l["status"] == 404)
        .expect("the 404 line");
    assert_eq!(
        unrouted["path"],
        format!("/{}…(5001 bytes)", "x".repeat(255))
    );
    assert_eq!(
        unrouted["request_id"],
        format!("{}…(5000 bytes)", "r".repeat(256))
    );
    assert!(unrouted.to_string().len() < 1200, "{unrouted}");
    // Told apart by their reason, not their order: each connection's worker writes its own
    // lines, so two workers' lines may reach the log in either order.
    let mut delivered: Vec<_> = requests
        .iter()
        .filter(|l| l["event_id"] == "ok-1")
        .collect();
    delivered.sort_by_key(|l| l["reason"] == "duplicate");
    let [ok, duplicate] = delivered[..] else {
        panic!("two lines of ok-1 expected:\n{text}");
    };
    for field in REQUEST_LINE_FIELDS {
        assert!(ok.get(field).is_some(), "{field} missing in {ok}");
    }
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["reason"], "");
    // In milliseconds: the app's 150 and hookgate's own part, well under 10 s.
    let took = ok["duration_ms"].as_f64().expect("a number");
    assert!((150.0..10_000.0).contains(&took), "{ok}");
    assert_eq!(duplicate["status"], 200);
    assert_eq!(duplicate["reason"], "duplicate");
    assert_eq!(ok["source"], "p");
    assert_eq!(ok["event_type"], "message.created");
    let refused = requests
        .iter()
        .find(|l| l["status"] == 401)
        .expect("the 401 line");
    assert_eq!(refused["reason"], "bad_signature");
    // Where the proof was looked for (never what it was compared with).
    assert_eq!(
        refused["detail"],
        "proof: the proof matches no configured secret; expected header x-protocol-signature: \
         the hex HMAC-SHA256 of the raw body under one of the source's secrets (64 hex digits, \
         nothing else)"
    );
    let funtek = requests
        .iter()
        .find(|l| l["source"] == "f")
        .expect("the funtek line");
    assert_eq!(
        funtek["path"], "/f",
        "the query (holding the token) is not logged"
    );
    // The startup line names the build, so a log says which version served it.
    let listening = lines
        .iter()
        .find(|l| l["message"] == "hookgate listening")
        .expect(&text);
    assert_eq!(listening["version"], env!("CARGO_PKG_VERSION"), "{text}");
    assert_eq!(listening["admin"], "off", "{text}");
    assert_eq!(listening["workers"], 3, "HOOKGATE_WORKERS: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dedupe_table_is_warned_about_once_a_minute() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let (_dir, mut p) = json_logging(
        "dedupe-full-log",
        &upstream.url("/"),
        "/p",
        "dedupe_capacity = 1",
    );
    for id in ["1", "2", "3"] {
        assert_eq!(deliver(p.addr, "/p", id, SECRET).await, 200);
    }
    assert_eq!(upstream.requests().len(), 3);
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let text = p.log();
    let lines = json_lines(&text);
    let warnings: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["level"] == "WARN" && l["target"] == "hookgate::pipeline")
        .collect();
    // "1" and "2" were forgotten within their window; the second is only counted.
    let [warning] = &warnings[..] else {
        panic!("one warning expected:\n{text}");
    };
    assert_eq!(warning["source"], "protocol", "{warning}");
    assert_eq!(warning["dedupe_capacity"], 1, "{warning}");
    assert_eq!(warning["dedupe_window_s"], 300, "{warning}");
    assert!(
        warning["message"]
            .as_str()
            .is_some_and(|m| m.contains("raise dedupe_capacity")),
        "{warning}"
    );
    // Without HOOKGATE_WORKERS, one worker per core the process may use.
    let listening = lines
        .iter()
        .find(|l| l["message"] == "hookgate listening")
        .expect(&text);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(listening["workers"], cores, "{text}");
}

/// An app that redirects (`/webhooks` to `/webhooks/`, or http to https) never sees a
/// delivery; the sender gets the status alone (SPEC §4: of the app's headers only
/// `retry-after`), and the log line says where the app pointed, its query's values left out.
#[tokio::test]
async fn an_app_that_redirects_is_named_in_the_log_line() {
    let mut redirect = Reply::json(308, "");
    redirect.headers = vec![(
        "location".into(),
        "https://app.example/webhooks/?key=app-secret".into(),
    )];
    let upstream = spawn_upstream(redirect).await;
    let (_dir, mut p) = json_logging("redirect-log", &upstream.url("/"), "/p", "");
    let a = signed_delivery(p.addr, "/p", SECRET, body("r-1")).await;
    assert_eq!(a.status, 308);
    assert_eq!(a.header("location"), None);
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let text = p.log();
    assert!(!text.contains("app-secret"), "{text}");
    let line = request_line(&text, "event_id", "r-1");
    assert_eq!(line["status"], 308, "{line}");
    assert_eq!(line["reason"], "upstream_redirect", "{line}");
    assert_eq!(
        line["detail"],
        "the app redirected to https://app.example/webhooks/?key=…; hookgate follows no \
         redirect and relays the status alone: set the source's upstream URL to where the app \
         takes deliveries",
        "{line}"
    );
}

/// An app's own 4xx or 5xx is relayed, and its log line says it was the app's (`reason`
/// `upstream_status`): its 404 otherwise read like hookgate's own, and a failure like a
/// delivery. A 404 names the URL the delivery went to, its query's values left out.
#[tokio::test]
async fn an_apps_own_refusal_is_named_in_the_log_line() {
    let upstream = spawn_upstream(Reply::json(404, r#"{"error":"no such page"}"#)).await;
    let app = upstream.url("/wrong/path?key=app-secret");
    let (_dir, mut p) = json_logging("app-status-log", &app, "/p", "");
    let a = signed_delivery(p.addr, "/p", SECRET, body("s-404")).await;
    assert_eq!(
        (a.status, &a.body[..]),
        (404, &br#"{"error":"no such page"}"#[..])
    );
    upstream.set_reply(Reply::json(503, ""));
    let a = signed_delivery(p.addr, "/p", SECRET, body("s-503")).await;
    assert_eq!(a.status, 503);
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let text = p.log();
    assert!(!text.contains("app-secret"), "{text}");
    let line = request_line(&text, "event_id", "s-404");
    assert_eq!(line["reason"], "upstream_status", "{line}");
    assert_eq!(
        line["detail"],
        format!(
            "the app answered 404, relayed: is {} a URL where it takes deliveries (the \
             source's upstream URL)?",
            upstream.url("/wrong/path?key=…")
        ),
        "{line}"
    );
    let line = request_line(&text, "event_id", "s-503");
    assert_eq!(
        (&line["status"], &line["reason"], &line["detail"]),
        (
            &serde_json::json!(503),
            &serde_json::json!("upstream_status"),
            &serde_json::json!("the app answered 503, relayed")
        ),
        "{line}"
    );
}

/// The first JSON request line in `log` whose `field` is `value`.
fn request_line(log: &str, field: &str, value: &str) -> serde_json::Value {
    json_lines(log)
        .into_iter()
        .find(|l| l["target"] == "hookgate::request" && l[field] == value)
        .unwrap_or_else(|| panic!("no request line with {field} {value}:\n{log}"))
}

/// A `hookgate run` logging JSON, with one protocol source at `path` (and `source` lines in
/// its table) in front of `upstream`; the folder it runs in goes with it.
fn json_logging(tag: &str, upstream: &str, path: &str, source: &str) -> (TempDir, Process) {
    let dir = temp_dir(tag);
    let config = with_server(
        &one_source(upstream, "protocol", path, &[SECRET], source),
        "log_format = \"json\"",
    );
    let p = spawn_process(&dir, &config, &[]);
    (dir, p)
}

/// The `reason` and `detail` of the first JSON request line in `log` whose `field` is
/// `value`.
fn reason_and_detail(
    log: &str,
    field: &str,
    value: &str,
) -> (serde_json::Value, serde_json::Value) {
    let line = request_line(log, field, value);
    (line["reason"].clone(), line["detail"].clone())
}

/// A 404 at a source's path but for a trailing `/` or letter case names that source in its
/// log line (a sender registered with a slightly different URL); another 404 does not.
#[tokio::test]
async fn a_404_near_a_source_path_names_the_source() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let (_dir, mut p) = json_logging("near-route-log", &upstream.url("/"), "/hooks/p", "");
    for path in ["/hooks/p/", "/Hooks/P", "/hooks/q"] {
        assert_eq!(deliver(p.addr, path, "n-1", SECRET).await, 404, "{path}");
    }
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let text = p.log();
    let detail = |path: &str| reason_and_detail(&text, "path", path);
    let near = serde_json::json!(
        "no source at this path; source \"protocol\" has path /hooks/p (paths match exactly)"
    );
    assert_eq!(detail("/hooks/p/"), ("no_route".into(), near.clone()));
    assert_eq!(detail("/Hooks/P"), ("no_route".into(), near));
    assert_eq!(
        detail("/hooks/q"),
        ("no_route".into(), "no source at this path".into())
    );
}

/// A 504's log line says where `timeout_ms` ran out: a connection never made (a firewall
/// or NetworkPolicy dropping it) is told from an app that took the request and was slow.
#[tokio::test]
async fn a_timeout_is_logged_with_where_it_ran_out() {
    let slow = spawn_upstream(Reply::json(200, "{}").after(Duration::from_millis(1500))).await;
    let (dropped, _listener, _queued) = silent_address().await;
    let dir = temp_dir("timeout-log");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nlog_format = \"json\"\n[upstream]\nurl = {:?}\n\
         timeout_ms = 300\n\n\
         [[source]]\nname = \"slow\"\nplatform = \"protocol\"\npath = \"/slow\"\nsecrets = [{SECRET:?}]\n\n\
         [[source]]\nname = \"dropped\"\nplatform = \"protocol\"\npath = \"/dropped\"\n\
         secrets = [{SECRET:?}]\nupstream = \"http://{dropped}/\"\n",
        slow.url("/")
    );
    let mut p = spawn_process(&dir, &config, &[]);
    assert_eq!(deliver(p.addr, "/slow", "s-1", SECRET).await, 504);
    assert_eq!(deliver(p.addr, "/dropped", "d-1", SECRET).await, 504);
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let text = p.log();
    let detail = |source: &str| reason_and_detail(&text, "source", source);
    assert_eq!(
        detail("slow"),
        (
            "timeout".into(),
            "upstream: no whole answer within timeout_ms: the connection was made, the app's \
             whole answer was not read"
                .into()
        )
    );
    assert_eq!(
        detail("dropped"),
        (
            "timeout".into(),
            "upstream: no whole answer within timeout_ms: connecting to the app (name lookup, \
             TCP or TLS handshake) did not finish"
                .into()
        )
    );
}

/// A text log line's fields, read as logfmt: `key=value` or `key="quoted \"value\""`.
fn logfmt_fields(fields: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = fields.chars().peekable();
    loop {
        while chars.next_if_eq(&' ').is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            return out;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('t') => value.push('\t'),
                        Some(other) => value.push(other),
                        None => break,
                    },
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ' ')));
        }
        out.push((key, value));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_lines_quote_what_the_sender_chose() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let dir = temp_dir("text-logs");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = {:?}\n\n\
         [[source]]\nname = \"p\"\nplatform = \"protocol\"\npath = \"/p\"\nsecrets = [{SECRET:?}]\n",
        upstream.url("/")
    );
    let mut p = spawn_process(&dir, &config, &[]);
    let addr = p.addr;
    // A request id that reads as more fields unless it is quoted.
    let forged = r#"abc status=200 source="admin" reason="""#;
    let a = send(
        addr,
        "POST",
        "/p",
        &[("x-request-id", forged)],
        Bytes::new(),
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.header("x-request-id"), Some(forged));
    // A request id and a path that are not ASCII (a request id not even UTF-8).
    let answer = raw_exchange(
        addr,
        b"POST /p\xc3\xa9 HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\nconnection: close\r\n\
          x-request-id: r\xff\t1\r\n\r\n{}",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));

    let text = p.log();
    let lines: Vec<Vec<(String, String)>> = text
        .lines()
        .filter_map(|l| l.split_once("hookgate::request: request "))
        .map(|(_, fields)| logfmt_fields(fields))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    for line in &lines {
        let seen: Vec<&str> = line.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(seen, REQUEST_LINE_FIELDS, "{text}");
    }
    let value = |line: &[(String, String)], key: &str| {
        line.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    // Each worker writes its own lines, in batches: the two may come in either order.
    let with_status = |status: &str| {
        lines
            .iter()
            .find(|l| value(l, "status") == status)
            .unwrap_or_else(|| panic!("no {status} line: {text}"))
    };
    let forged_line = with_status("401");
    assert_eq!(value(forged_line, "request_id"), forged, "{text}");
    assert_eq!(value(forged_line, "source"), "p");
    assert_eq!(value(forged_line, "client"), "127.0.0.1");
    let odd_line = with_status("404");
    assert_eq!(value(odd_line, "request_id"), "r\u{fffd}\t1", "{text}");
    assert_eq!(value(odd_line, "path"), "/p\u{e9}", "{text}");
}

/// Scrapes until `done` holds of the samples, or for 5 s: the last scrape either way (what
/// a worker counts after it has answered may come a moment after the answer).
async fn scrape_until(admin: SocketAddr, done: impl Fn(&Samples) -> bool) -> (Samples, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (m, text) = scrape_admin(admin).await;
        if done(&m) || tokio::time::Instant::now() >= deadline {
            return (m, text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Scrapes until `hookgate_open_connections` is `want` (connections are counted by the
/// worker serving them, a moment after the client's connect or close).
async fn wait_for_open_connections(admin: SocketAddr, want: f64) -> (Samples, String) {
    let (m, text) = scrape_until(admin, |m| {
        get(m, "hookgate_open_connections", &[]) == Some(want)
    })
    .await;
    let open = get(&m, "hookgate_open_connections", &[]);
    assert_eq!(open, Some(want), "open connections\n{text}");
    (m, text)
}

/// (`config_last_reload_successful`, reloads that succeeded, reloads that failed).
fn reloads(m: &Samples) -> (Option<f64>, Option<f64>, Option<f64>) {
    let total = |result| get(m, "hookgate_config_reloads_total", &[("result", result)]);
    (
        get(m, "hookgate_config_last_reload_successful", &[]),
        total("success"),
        total("failure"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_duplicates_and_reloads_are_counted() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = 50\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurl = {:?}\n\n\
         [[source]]\nname = \"p\"\nplatform = \"protocol\"\npath = \"/p\"\nsecrets = [{SECRET:?}]\n",
        upstream.url("/")
    );
    let gw = spawn_gateway(&config).await;
    let admin = gw.server.admin_addr.expect("admin");

    // Dedupe is on by default for protocol: the second copy is answered, not forwarded.
    for id in ["same", "same", "other"] {
        assert_eq!(deliver(gw.addr, "/p", id, SECRET).await, 200);
    }
    assert_eq!(upstream.requests().len(), 2);

    // Three connections held open on the main listener (the admin's own are not counted).
    let held = open_connections(gw.addr, 3).await;
    let (m, text) = wait_for_open_connections(admin, 3.0).await;
    assert_eq!(get(&m, "hookgate_max_connections", &[]), Some(50.0));
    let p = [("source", "p")];
    assert_eq!(
        get(&m, "hookgate_duplicates_total", &p),
        Some(1.0),
        "{text}"
    );
    let ok = [("source", "p"), ("status", "200")];
    assert_eq!(get(&m, "hookgate_requests_total", &ok), Some(3.0));
    assert_eq!(reloads(&m), (Some(1.0), Some(0.0), Some(0.0)), "{text}");
    let failures = get(&m, "hookgate_tls_handshake_failures_total", &[]);
    assert_eq!(failures, Some(0.0));
    drop(held);
    wait_for_open_connections(admin, 0.0).await;

    // When the serving config was loaded: at the start, to the millisecond.
    let loaded = |m: &Samples| {
        get(
            m,
            "hookgate_config_last_reload_success_timestamp_seconds",
            &[],
        )
        .expect("the load's time")
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
    };
    let started = loaded(&m);
    assert!(started <= now() && started > now() - 60.0, "{text}");

    // A reload that fails keeps the old config and says so; a good one says so too.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let path = gw.server.gateway().config.path.clone();
    std::fs::write(&path, format!("{config}\nunknown_key = 1\n")).expect("write");
    assert!(gw.server.reload().is_err());
    let (m, text) = scrape_admin(admin).await;
    assert_eq!(reloads(&m), (Some(0.0), Some(0.0), Some(1.0)), "{text}");
    assert_eq!(loaded(&m), started, "a failed reload loads nothing");
    std::fs::write(&path, &config).expect("write");
    let before = now();
    assert!(gw.server.reload().is_ok());
    let (m, text) = scrape_admin(admin).await;
    assert_eq!(reloads(&m), (Some(1.0), Some(1.0), Some(1.0)), "{text}");
    assert!(
        loaded(&m) >= before - 0.001 && loaded(&m) > started,
        "{before} {started}\n{text}"
    );
}

/// The README's metrics table is the operators' list: every family `/metrics` can expose has
/// a row, and every row names a family that exists (a metric added or renamed without its
/// row, or a row left behind, fails here).
#[test]
fn every_metric_has_a_row_in_the_readme_and_every_row_a_metric() {
    let metrics = hookgate::metrics::Metrics::new();
    // Families without samples are not written: give each one.
    let source = metrics.source("s");
    source.request(0, 200);
    metrics.config_reloaded(true);
    metrics.set_tls_not_after(
        Some(std::path::Path::new("server.crt")),
        Some(std::time::SystemTime::now()),
    );
    let exposed: std::collections::BTreeSet<String> = metrics
        .encode()
        .lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("# TYPE ")?.split(' ');
            let (name, kind) = (words.next()?, words.next()?);
            // A counter's samples, and so its row, carry `_total`.
            Some(match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_string(),
            })
        })
        .collect();
    assert!(exposed.len() > 15, "{exposed:?}");
    let readme = include_str!("../README.md");
    let documented: std::collections::BTreeSet<String> = readme
        .lines()
        .filter(|l| l.starts_with("| `hookgate_") || l.starts_with("| `process_"))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| {
            cell.split('`')
                .filter(|w| w.starts_with("hookgate_") || w.starts_with("process_"))
                .map(|w| w.split('{').next().unwrap_or(w).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let undocumented: Vec<_> = exposed.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&exposed).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "without a README row: {undocumented:?}; README rows of no metric: {stale:?}"
    );
}

/// The `process_*` metrics describe the process that serves them, as `/proc` shows it
/// from outside: its open files (40 held connections among them), its limit, threads,
/// memory and start.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_describe_the_serving_process() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let dir = temp_dir("process-metrics");
    let admin_port = free_port();
    let config = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n",
        protocol_source(&upstream.url("/"), SECRET, "", "")
    );
    let spawned = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let p = spawn_process(&dir, &config, &[]);
    let pid = p.child.id();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let metrics = async || scrape_admin(admin).await.0;
    let before = get(&metrics().await, "process_open_fds", &[]).expect("open fds");
    let held = open_connections(p.addr, 40).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = metrics().await;
        if get(&m, "hookgate_open_connections", &[]) == Some(40.0)
            || std::time::Instant::now() > deadline
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let open = get(&m, "process_open_fds", &[]).expect("open fds");
    // Less one: the first scrape's own connection, counted in `before`, may be closed by now
    // (seen under load: 29 -> 68).
    assert!(
        open >= before + 39.0,
        "{before} -> {open} with 40 more connections"
    );
    let outside = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd")
        .count() as f64;
    // The scrape's own connection may be open or closed by the time of the count.
    assert!(
        (open - outside).abs() <= 2.0,
        "{open} against /proc's {outside}"
    );
    assert_eq!(
        get(&m, "process_max_fds", &[]),
        Some(proc_field(pid, "limits", "Max open files", 0))
    );
    assert_eq!(
        get(&m, "process_threads", &[]),
        Some(
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .expect("task")
                .count() as f64
        )
    );
    let rss = get(&m, "process_resident_memory_bytes", &[]).expect("rss");
    let outside_rss = proc_field(pid, "status", "VmRSS:", 0) * 1024.0;
    assert!(
        (rss - outside_rss).abs() < outside_rss / 4.0,
        "{rss} against /proc's {outside_rss}"
    );
    assert!(get(&m, "process_virtual_memory_bytes", &[]).expect("vsize") >= rss);
    let started = get(&m, "process_start_time_seconds", &[]).expect("start");
    assert!(
        (started - spawned).abs() < 5.0,
        "started at {started}, spawned at {spawned}"
    );
    // A counter in seconds (clock ticks: a quiet start may not have used one yet).
    let cpu = get(&m, "process_cpu_seconds_total", &[]).expect("cpu");
    assert!((0.0..60.0).contains(&cpu), "{cpu}");
    drop(held);
}

/// An empty `RUST_LOG` (a template's `RUST_LOG: ""`) logs at the default level: with
/// tracing's own reading of it, every line was off, errors too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_rust_log_logs_at_info() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let dir = temp_dir("empty-rust-log");
    let config = one_source(&upstream.url("/"), "protocol", "/p", &[SECRET], "");
    let p = spawn_process(&dir, &config, &[("RUST_LOG", "")]);
    let sig = hmac_hex(SECRET, br#"{"type":"x","id":"1"}"#);
    let a = send(
        p.addr,
        "POST",
        "/p",
        &[("x-protocol-signature", &sig)],
        Bytes::from_static(br#"{"type":"x","id":"1"}"#),
    )
    .await;
    assert_eq!(a.status, 200);
    p.wait_for_line("hookgate listening").await;
    p.wait_for_line("status=200").await;
}

/// A `hookgate run` process with one protocol source at `/p` and `server_line` under
/// `[server]`, and its admin listener's address.
async fn process_with_admin(
    tag: &str,
    server_line: &str,
) -> (Upstream, TempDir, Process, SocketAddr) {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let dir = temp_dir(tag);
    let admin_port = free_port();
    let config = with_server(
        &one_source(&upstream.url("/"), "protocol", "/p", &[SECRET], ""),
        server_line,
    )
    .replace(
        "[upstream]",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[upstream]"),
    );
    let p = spawn_process(&dir, &config, &[]);
    (
        upstream,
        dir,
        p,
        SocketAddr::from(([127, 0, 0, 1], admin_port)),
    )
}

/// A request head hyper cannot parse is answered by hyper itself and never reaches the
/// pipeline: it is still logged (reason `bad_head`, hyper's words in the detail) and
/// counted under no source, like a path of no source. Before, a sender whose heads were
/// malformed saw its 400s while hookgate's log and metrics showed nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_hyper_refuses_is_logged_and_counted() {
    let (_upstream, _dir, p, admin) =
        process_with_admin("unparsed-head", "log_format = \"json\"").await;
    let long = format!(
        "POST /p HTTP/1.1\r\nhost: a\r\nx-long: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let hyper_said = |words: &str, status: &str| {
        format!("the request head does not parse as HTTP/1.1 ({words}); answered {status} by hyper")
    };
    // The start of a TLS ClientHello (a record of type handshake, TLS 1.0 framing).
    let hello = [0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00];
    let unlisted = "a PROXY protocol header from a peer not in [server] proxy_protocol_from: \
                    list the balancer's address there, or turn the protocol off at the \
                    balancer; answered 400 by hyper";
    let v2_local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00GET / HTTP/1.1\r\n\r\n";
    let heads: [(&[u8], &str, String); 7] = [
        (
            b"POST /p HTTP/1.1\r\nhost: a\r\nno colon here\r\n\r\n",
            "400",
            hyper_said("invalid HTTP header parsed", "400"),
        ),
        (
            b"POST /p HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
            "400",
            hyper_said("invalid content-length parsed", "400"),
        ),
        (
            b"POST /p HTTP/9.9\r\nhost: a\r\n\r\n",
            "400",
            hyper_said("invalid HTTP version parsed", "400"),
        ),
        (
            long.as_bytes(),
            "431",
            hyper_said("message head is too large", "431"),
        ),
        // A sender whose URL says https:// where plain HTTP is served.
        (
            &hello,
            "400",
            "a TLS handshake on the plain-HTTP listener: the sender's URL must be http://, or \
             set [server] tls; answered 400 by hyper"
                .to_string(),
        ),
        // A balancer that sends the PROXY protocol, where proxy_protocol_from is not set.
        (
            b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 80\r\nGET / HTTP/1.1\r\n\r\n",
            "400",
            unlisted.to_string(),
        ),
        (v2_local, "400", unlisted.to_string()),
    ];
    for (head, status, _) in &heads {
        let answer = raw_exchange(p.addr, head, Duration::from_secs(5)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
    }
    // Counted as each connection ends, a moment after its answer (under load, after the
    // client has read it); the log lines are checked after the exit, when all are out.
    let requests = |m: &Samples, status: &str| {
        get(
            m,
            "hookgate_requests_total",
            &[("source", ""), ("status", status)],
        )
    };
    let (m, text) = scrape_until(admin, |m| {
        requests(m, "400") == Some(6.0) && requests(m, "431") == Some(1.0)
    })
    .await;
    assert_eq!(requests(&m, "400"), Some(6.0), "{text}");
    assert_eq!(requests(&m, "431"), Some(1.0), "{text}");
    let mut p = p;
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let log = p.log();
    let lines: Vec<serde_json::Value> = json_lines(&log)
        .into_iter()
        .filter(|l| l["target"] == "hookgate::request")
        .collect();
    assert_eq!(lines.len(), heads.len(), "{log}");
    // Each worker writes its own lines: matched by their detail, not their order.
    for (_, status, detail) in &heads {
        let with_detail = |d: &str| lines.iter().filter(|l| l["detail"] == d).count();
        let expected = heads.iter().filter(|(_, _, d)| d == detail).count();
        assert_eq!(
            with_detail(detail),
            expected,
            "lines with {detail:?}:\n{log}"
        );
        let line = lines
            .iter()
            .find(|l| l["detail"] == detail.as_str())
            .unwrap_or_else(|| panic!("no line with {detail:?}:\n{log}"));
        assert_eq!(line["status"].to_string(), *status, "{line}");
        assert_eq!(line["reason"], "bad_head", "{line}");
        assert_eq!(line["source"], "", "{line}");
        assert_eq!(line["client"], "127.0.0.1", "{line}");
    }
}

/// A client a balancer's PROXY header names IPv4-mapped (a dual-stack balancer) is written
/// in its IPv4 form in the lines the connection writes itself, as the socket's peer is:
/// here a head hyper refuses, whose line carries the client the header named.
#[tokio::test]
async fn a_proxy_headers_ipv4_mapped_client_is_logged_in_its_ipv4_form() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let dir = temp_dir("proxy-mapped-log");
    let config = with_server(
        &one_source(&upstream.url("/"), "protocol", "/p", &[SECRET], ""),
        "log_format = \"json\"\nproxy_protocol_from = [\"127.0.0.0/8\"]",
    )
    .replace("127.0.0.1:0", "[::]:0");
    let mut p = spawn_process(&dir, &config, &[]);
    let head = b"PROXY TCP6 ::ffff:203.0.113.10 ::1 51235 8080\r\n\
                 POST /p HTTP/1.1\r\nhost: a\r\nno colon here\r\n\r\n";
    let answer = raw_exchange(p.addr, head, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let line = request_line(&p.log(), "reason", "bad_head");
    assert_eq!(line["client"], "203.0.113.10", "{line}");
    assert_eq!(line["status"], 400, "{line}");
}

/// A connection cut off at `header_timeout_s` with a head begun and not whole is counted and
/// logged (once per 10 s at most): a sender stalled half-way through its head, or a
/// slowloris, left no trace before. One that sent nothing, and a kept-alive one idle after
/// its answer, are closed at the same deadline and are not counted; nor is a head its
/// sender hung up in the middle of (another error of hyper's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_cut_off_at_header_timeout_is_counted_and_logged() {
    use tokio::io::AsyncReadExt;
    let (_upstream, _dir, p, admin) =
        process_with_admin("head-timeout", "header_timeout_s = 1").await;
    let (mut silent, mut idle) = (
        tokio::net::TcpStream::connect(p.addr)
            .await
            .expect("connect"),
        tokio::net::TcpStream::connect(p.addr)
            .await
            .expect("connect"),
    );
    assert_eq!(deliver(p.addr, "/p", "h-1", SECRET).await, 200);
    let body = body("h-2");
    let head = format!(
        "POST /p HTTP/1.1\r\nhost: a\r\nx-protocol-signature: {}\r\ncontent-length: {}\r\n\r\n",
        hmac_hex(SECRET, body.as_bytes()),
        body.len()
    );
    use tokio::io::AsyncWriteExt;
    idle.write_all(format!("{head}{body}").as_bytes())
        .await
        .expect("write");
    let mut stalled = connect_and_write(p.addr, b"POST /p HTTP/1.1\r\nhost: a\r\nx-sig").await;
    // A head begun and the connection closed by its sender: ended, but not by the deadline.
    let mut hung_up = connect_and_write(p.addr, b"POST /p HTTP/1.1\r\nhost: a\r\nx-sig").await;
    hung_up.shutdown().await.expect("shutdown");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_millis(900), hung_up.read_to_end(&mut answer));
    assert!(read.await.is_ok(), "a head cut by its sender held past it");
    // All three are closed at the deadline; only the stalled head had no answer coming.
    let mut rest = Vec::new();
    for (name, conn) in [
        ("silent", &mut silent),
        ("idle", &mut idle),
        ("stalled", &mut stalled),
    ] {
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "{name}: not closed");
    }
    let (m, text) = scrape_admin(admin).await;
    assert_eq!(
        get(&m, "hookgate_header_timeouts_total", &[]),
        Some(1.0),
        "{text}"
    );
    let mut p = p;
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let log = p.log();
    assert_eq!(
        p.lines_with("a request head begun was not whole"),
        1,
        "{log}"
    );
}

/// Every refusal's request line names the reason the README's "Logs" lists for it, with the
/// status the sender got: the log is where an operator learns why a delivery was refused
/// (SPEC §8), since the sender's body says only the status's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_is_logged_with_its_reason() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let dir = temp_dir("refusal-reasons");
    // The loopback peer is a trusted proxy, so that each request names its own client in
    // `X-Forwarded-For` and only the two meant to share one meet `client_rate_limit`. The
    // listener is dual-stack (`[::]`, as pods often bind), where an IPv4 peer is
    // `::ffff:127.0.0.1` to the socket: every line must still write it `127.0.0.1`.
    let config = format!(
        "[server]\nlisten = \"[::]:0\"\nlog_format = \"json\"\nmax_body_bytes = 4096\n\
         body_timeout_s = 1\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         client_rate_limit = {{ per_second = 1, burst = 1 }}\n[upstream]\nurl = {:?}\n\n\
         [[source]]\nname = \"p\"\nplatform = \"protocol\"\npath = \"/p\"\nsecrets = [{SECRET:?}]\n\
         dedupe_window_s = 0\nrate_limit = {{ per_second = 1, burst = 1 }}\n\n\
         [[source]]\nname = \"walled\"\nplatform = \"protocol\"\npath = \"/walled\"\n\
         secrets = [{SECRET:?}]\nallow_cidrs = [\"203.0.113.0/24\"]\n",
        upstream.url("/")
    );
    let mut p = spawn_process(&dir, &config, &[]);
    let good = body("r-1");
    let signature = hmac_hex(SECRET, good.as_bytes());
    let signed = format!("x-protocol-signature: {signature}\r\n");
    let forged = format!(
        "x-protocol-signature: {}\r\n",
        hmac_hex("wrong", good.as_bytes())
    );
    let not_json = "[]";
    let signed_not_json = format!(
        "x-protocol-signature: {}\r\n",
        hmac_hex(SECRET, not_json.as_bytes())
    );
    let too_large = "x".repeat(5000);
    let gzip = "content-encoding: gzip\r\n";
    let malformed = "x-protocol-signature: zz\r\n";
    // (request id, client, the request's head lines after its first, body, status, reason;
    // each line also names the client, the first ones too, refused before any other check).
    // Both rate limits allow one a second: the three that meet them come one after another.
    let cases: [(&str, &str, &str, &str, u16, &str); 13] = [
        (
            "two-hosts",
            "192.0.2.12",
            "host: y\r\n",
            "",
            400,
            "bad_head",
        ),
        ("method", "192.0.2.1", "", "", 405, "method"),
        ("no-route", "192.0.2.2", "", "", 404, "no_route"),
        ("cidr", "192.0.2.3", "", "", 403, "cidr"),
        ("client-1", "192.0.2.4", &signed, &good, 200, ""),
        (
            "client-2",
            "192.0.2.4",
            &signed,
            &good,
            429,
            "rate_limited_client",
        ),
        (
            "source-limit",
            "192.0.2.5",
            &signed,
            &good,
            429,
            "rate_limited_source",
        ),
        ("too-large", "192.0.2.6", "", &too_large, 413, "too_large"),
        (
            "encoding",
            "192.0.2.7",
            gzip,
            &good,
            415,
            "content_encoding",
        ),
        ("missing", "192.0.2.8", "", &good, 401, "missing_proof"),
        (
            "malformed",
            "192.0.2.9",
            malformed,
            &good,
            401,
            "malformed_proof",
        ),
        ("forged", "192.0.2.10", &forged, &good, 401, "bad_signature"),
        (
            "not-json",
            "192.0.2.11",
            &signed_not_json,
            not_json,
            400,
            "not_platform_json",
        ),
    ];
    for (id, client, headers, body, status, _) in &cases {
        let (method, path) = match *id {
            "method" => ("GET", "/p"),
            "no-route" => ("POST", "/nowhere"),
            "cidr" => ("POST", "/walled"),
            _ => ("POST", "/p"),
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-request-id: {id}\r\n\
             x-forwarded-for: {client}\r\n{headers}content-length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = raw_exchange(p.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{id}: {answer}"
        );
        // Every answer carries the sender's request id (SPEC §4), a refusal's too.
        assert!(
            answer
                .to_ascii_lowercase()
                .contains(&format!("\r\nx-request-id: {id}\r\n")),
            "{id}: {answer}"
        );
    }
    // A body that stops coming (408), and one whose sender leaves half-way (logged as 400).
    let head = |id: &str, client: &str| {
        format!(
            "POST /p HTTP/1.1\r\nhost: x\r\nx-request-id: {id}\r\nx-forwarded-for: {client}\r\n\
             x-protocol-signature: {signature}\r\ncontent-length: 100\r\n\r\n0123456789"
        )
    };
    let answer = raw_exchange(
        p.addr,
        head("stalled", "192.0.2.20").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nx-request-id: stalled\r\n"),
        "{answer}"
    );
    drop(connect_and_write(p.addr, head("gone", "192.0.2.21").as_bytes()).await);
    p.wait_for_line("\"request_id\":\"gone\"").await;
    // A head hyper cannot parse: no header was read, so the client is the peer.
    let unparsed = b"POST /p HTTP/1.1\r\nhost: a\r\nno colon here\r\n\r\n";
    let answer = raw_exchange(p.addr, unparsed, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    p.wait_for_line("invalid HTTP header parsed").await;

    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let text = p.log();
    let expected = cases
        .iter()
        .map(|(id, client, _, _, status, reason)| (*id, *client, *status, *reason))
        .chain([
            ("stalled", "192.0.2.20", 408, "body_timeout"),
            ("gone", "192.0.2.21", 400, "bad_body"),
        ]);
    // The unparsed head's line has no request id.
    for (id, client, status, reason) in expected.chain([("", "127.0.0.1", 400, "bad_head")]) {
        let l = request_line(&text, "request_id", id);
        assert_eq!(
            (&l["status"], &l["reason"], &l["client"]),
            (&status.into(), &reason.into(), &client.into()),
            "{id}: {l}"
        );
    }
}
