//! The `hookgate` binary as an operator runs it: `check`, `sign`, `run`, exit codes,
//! one-line errors, SIGTERM, and no secret in anything it prints.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_hookgate");

/// A `hookgate run` killed if the test fails, so that none is left behind (blocked on its
/// pipe, holding its port).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `hookgate run` at `INFO` on a config listening on `port`, once it accepts connections.
fn run_on(
    config: &str,
    port: u16,
    stdout: std::process::Stdio,
    stderr: std::process::Stdio,
) -> (Running, std::net::SocketAddr) {
    let running = Running(
        ends_with_the_test(&mut Command::new(BIN))
            .args(["run", "--config", config])
            .env("RUST_LOG", "info")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn"),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "no listener");
        std::thread::sleep(Duration::from_millis(20));
    }
    (running, addr)
}

fn hookgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run hookgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[test]
fn check_prints_routes_and_warns_about_verify_none() {
    let dir = temp_dir("cli-check");
    let text = one_source("http://127.0.0.1:9/", "protocol", "/hooks/p", &["s"], "")
        + "\n[[source]]\nname = \"open\"\nplatform = \"funtek\"\npath = \"/open\"\nverify = \"none\"\n";
    let path = write_config(&dir, &text);
    let (code, out, err) = hookgate(&["check", "--config", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/hooks/p") && out.contains("/open"), "{out}");
    let warning = err
        .lines()
        .find(|l| l.contains("warning"))
        .expect("a warning line");
    assert!(warning.contains("open"), "{err}");
}

#[test]
fn a_bad_hookgate_workers_is_refused_in_one_line_with_exit_2() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/hookgate.toml");
    for bad in ["two", "0", "100000", ""] {
        let out = Command::new(BIN)
            .args(["check", "--config", path])
            .env("HOOKGATE_WORKERS", bad)
            .output()
            .expect("run hookgate");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert_eq!(
            err.trim(),
            format!(
                "hookgate: HOOKGATE_WORKERS: must be a whole number from 1 to 1024, not {bad:?}"
            )
        );
    }
    let out = Command::new(BIN)
        .args(["check", "--config", path])
        .env("HOOKGATE_WORKERS", "3")
        .output()
        .expect("run hookgate");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn the_shipped_example_config_checks() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/hookgate.toml");
    let (code, out, err) = hookgate(&["check", "--config", path]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("POST ")).count(),
        4,
        "{out}"
    );
    // The settings in effect, those that default by platform too.
    let route = |path: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("POST {path} ")))
            .unwrap_or_else(|| panic!("no route {path} in {out}"))
    };
    assert!(
        route("/hooks/protocol").contains(
            "(platform protocol, verify platform proof, forward event with raw, \
             dedupe 300 s (100000 ids), timeout 10000 ms)"
        ),
        "{out}"
    );
    assert!(
        route("/hooks/barertc").contains("dedupe off, timeout 8000 ms)"),
        "{out}"
    );
}

/// The load benchmark's two gateways: a config that stopped loading would only show as a
/// failed probe in a long benchmark run.
#[test]
fn the_load_benchmark_configs_check() {
    for (file, verify) in [
        ("bench.toml", "verify platform proof"),
        ("bench-bare.toml", "verify none"),
    ] {
        let path = format!("{}/benches/load/{file}", env!("CARGO_MANIFEST_DIR"));
        let (code, out, err) = hookgate(&["check", "--config", &path]);
        assert_eq!(code, 0, "{file}: {err}");
        let route = out
            .lines()
            .find(|l| l.starts_with("POST /webhook"))
            .unwrap_or_else(|| panic!("{file}: no /webhook route in {out}"));
        assert!(route.contains(verify), "{file}: {route}");
    }
}

#[test]
fn bad_configs_exit_2_with_one_line_naming_file_and_field() {
    let dir = temp_dir("cli-bad");
    let good = one_source("http://127.0.0.1:9/", "protocol", "/hooks/p", &["s"], "");
    let cases = [
        (
            good.replace("secrets", "secert = [\"x\"]\nsecrets"),
            "secert",
        ),
        (
            good.replace("\"s\"", "\"env:HOOKGATE_CLI_TEST_UNSET\""),
            "source[0].secrets[0]",
        ),
        (
            good.replace("\"s\"", "\"file:missing.secret\""),
            "source[0].secrets[0]",
        ),
        (
            good.replace(
                "[server]\n",
                "[server]\ntls = { cert = \"nope.crt\", key = \"nope.key\" }\n",
            ),
            "nope.crt",
        ),
        (
            good.replace("platform = \"protocol\"", "platform = \"slack\""),
            "platform",
        ),
    ];
    for (text, field) in cases {
        let path = write_config(&dir, &text);
        for cmd in ["check", "run"] {
            let (code, _, err) = hookgate(&[cmd, "--config", &path]);
            assert_eq!(code, 2, "{cmd} {field}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{cmd}: one line: {err}");
            assert!(err.contains(&path) && err.contains(field), "{cmd}: {err}");
        }
    }
    let (code, _, err) = hookgate(&["check", "--config", "/nonexistent/hookgate.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/hookgate.toml"), "{err}");
}

#[test]
fn port_in_use_exits_2_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = temp_dir("cli-port");
    let text = one_source("http://127.0.0.1:9/", "protocol", "/hooks/p", &["s"], "")
        .replace("127.0.0.1:0", &addr.to_string());
    let path = write_config(&dir, &text);
    let (code, _, err) = hookgate(&["run", "--config", &path]);
    assert_eq!(code, 2, "{err}");
    let line = err.lines().rfind(|l| !l.trim().is_empty()).expect("a line");
    assert!(line.contains(&addr.to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_prints_a_curl_command_that_delivers() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let dir = temp_dir("cli-sign");
    std::fs::write(dir.join("funtek.secret"), "tok+en/with&odd=chars\n").expect("secret");
    let text = format!(
        "[server]\nlisten = \"0.0.0.0:0\"\n[upstream]\nurl = {:?}\n\n\
         [[source]]\nname = \"p\"\nplatform = \"protocol\"\npath = \"/p\"\nsecrets = [\"sign-secret-1\", \"second\"]\n\n\
         [[source]]\nname = \"s\"\nplatform = \"spika\"\npath = \"/s\"\nsecrets = [\"room-token\"]\n\n\
         [[source]]\nname = \"b\"\nplatform = \"barertc\"\npath = \"/b\"\nsecrets = [\"k&<ey>\"]\n\n\
         [[source]]\nname = \"f\"\nplatform = \"funtek\"\npath = \"/f\"\nsecrets = [\"file:funtek.secret\"]\n",
        upstream.url("/app")
    );
    let gw = spawn_process(&dir, &text, &[]);
    let port = gw.addr.port();
    let path = dir.join("hookgate.toml").display().to_string();
    std::fs::write(
        dir.join("body.json"),
        r#"{"type":"contact.created","id":"from-file"}"#,
    )
    .expect("body");
    let cases: [(&str, Option<&str>); 5] = [
        ("p", None),
        ("p", Some("body.json")),
        ("s", None),
        ("b", None),
        ("f", None),
    ];
    for (i, (source, body)) in cases.iter().enumerate() {
        let body_path = body.map(|b| dir.join(b).display().to_string());
        let mut args = vec!["sign", "--config", &path, "--source", source];
        if let Some(b) = &body_path {
            args.extend(["--body", b]);
        }
        let (code, cmd, err) = hookgate(&args);
        assert_eq!(code, 0, "{err}");
        assert!(
            cmd.starts_with("curl ") && cmd.contains(&format!("http://127.0.0.1:{port}/")),
            "{cmd}"
        );
        let out = Command::new("sh")
            .args(["-c", &cmd])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("HTTP/1.1 200"), "{source}: {cmd}\n{text}");
        assert_eq!(upstream.requests().len(), i + 1, "{source}");
    }
    let fwd = upstream.requests();
    assert_eq!(fwd[1].json()["id"], "from-file");
    assert_eq!(fwd[3].json()["type"], "report.created");
    assert_eq!(fwd[4].json()["type"], "message.created");
    // A NUL byte cannot be carried by a shell argument: no command that would send other bytes.
    let nul = dir.join("nul.json");
    std::fs::write(&nul, "{\"type\":\"a\0b\"}").expect("body");
    let nul = nul.display().to_string();
    let (code, cmd, err) = hookgate(&["sign", "--config", &path, "--source", "p", "--body", &nul]);
    assert_eq!((code, cmd.as_str()), (2, ""), "{err}");
    assert!(err.contains("NUL byte"), "{err}");
    // A name the config does not have: the error names the ones it has.
    let (code, cmd, err) = hookgate(&["sign", "--config", &path, "--source", "Protocol"]);
    assert_eq!((code, cmd.as_str()), (2, ""), "{err}");
    assert!(
        err.contains(r#"no source named "Protocol" (the config has "p", "s", "b", "f")"#),
        "{err}"
    );
    drop(gw);
}

/// With the local address among `proxy_protocol_from`, `check` says the listener wants a
/// PROXY header first, and the printed curl sends one (`--haproxy-protocol`), or the
/// listener would close its connection unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_speaks_the_proxy_protocol_to_a_listener_that_expects_it() {
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let dir = temp_dir("cli-sign-proxy");
    let text = with_server(
        &one_source(
            &upstream.url("/app"),
            "protocol",
            "/p",
            &["sign-secret"],
            "",
        ),
        "proxy_protocol_from = [\"127.0.0.0/8\"]",
    );
    let gw = spawn_process(&dir, &text, &[]);
    let path = dir.join("hookgate.toml").display().to_string();
    let (code, out, err) = hookgate(&["check", "--config", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.ends_with("(http), a PROXY header first from 127.0.0.0/8")),
        "{out}"
    );
    let (code, cmd, err) = hookgate(&["sign", "--config", &path, "--source", "protocol"]);
    assert_eq!(code, 0, "{err}");
    assert!(cmd.contains(" --haproxy-protocol"), "{cmd}");
    let out = Command::new("sh")
        .args(["-c", &cmd])
        .output()
        .expect("curl");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.starts_with("HTTP/1.1 200"), "{cmd}\n{answer}");
    assert_eq!(
        upstream.requests()[0].header("x-forwarded-for"),
        Some("127.0.0.1")
    );
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_anything_printed_and_sigterm_exits_0() {
    // The app's own credential, in the upstream URL's query: the app gets it, the log not.
    const APP_CREDENTIAL: &str = "app-credential-eeee";
    let upstream = spawn_upstream(Reply::json(200, r#"{"reply":{"text":"hi"}}"#)).await;
    let dir = temp_dir("cli-secrets");
    let secrets = [
        "protocol-SECRET-aaaa",
        "spika-SECRET-bbbb",
        "barertc-SECRET-cccc",
        "funtek-SECRET-dddd",
    ];
    std::fs::write(dir.join("spika.secret"), secrets[1]).expect("secret");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = {:?}\n\n\
         [[source]]\nname = \"p\"\nplatform = \"protocol\"\npath = \"/p\"\nsecrets = [\"env:HG_TEST_PROTOCOL\"]\n\n\
         [[source]]\nname = \"s\"\nplatform = \"spika\"\npath = \"/s\"\nsecrets = [\"file:spika.secret\"]\n\n\
         [[source]]\nname = \"b\"\nplatform = \"barertc\"\npath = \"/b\"\nsecrets = [{:?}]\n\n\
         [[source]]\nname = \"f\"\nplatform = \"funtek\"\npath = \"/f\"\nsecrets = [{:?}]\n",
        upstream.url(&format!("/app?key={APP_CREDENTIAL}")),
        secrets[2],
        secrets[3]
    );
    // `check` shows the routes with the upstream URL's query values left out.
    let path = write_config(&dir, &text);
    let check = Command::new(BIN)
        .args(["check", "--config", &path])
        .env("HG_TEST_PROTOCOL", secrets[0])
        .output()
        .expect("run hookgate check");
    let out = String::from_utf8_lossy(&check.stdout) + String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(0), "{out}");
    assert!(out.contains("/app?key=…"), "{out}");
    assert!(!out.contains(APP_CREDENTIAL), "{out}");
    let mut gw = spawn_process(
        &dir,
        &text,
        &[("HG_TEST_PROTOCOL", secrets[0]), ("RUST_LOG", "trace")],
    );

    let pbody = r#"{"id":"1","type":"message.created","payload":{}}"#;
    let ok = [
        (
            "/p".to_string(),
            vec![(
                "x-protocol-signature",
                hmac_hex(secrets[0], pbody.as_bytes()),
            )],
            pbody.to_string(),
        ),
        (
            "/s".into(),
            vec![("verification-signature", secrets[1].to_string())],
            r#"{"message":{"id":2}}"#.into(),
        ),
        (
            "/b".into(),
            vec![],
            format!(
                r#"{{"Action":"report","APIKey":"{}","Report":{{}}}}"#,
                secrets[2]
            ),
        ),
        (
            format!("/f?token={}", secrets[3]),
            vec![],
            r#"{"event":"MESSAGE","data":{"id":"4"}}"#.into(),
        ),
        (
            "/f".into(),
            vec![("x-webhook-token", secrets[3].to_string())],
            r#"{"event":"JOIN_ROOM"}"#.into(),
        ),
    ];
    for (target, headers, body) in &ok {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = send(gw.addr, "POST", target, &h, Bytes::from(body.clone())).await;
        assert_eq!(a.status, 200, "{target}");
        assert!(!String::from_utf8_lossy(&a.body).contains("SECRET"));
    }
    // Wrong proofs that contain a secret as a prefix, in every carrier.
    for (target, headers, body) in [
        (
            format!("/f?token={}x", secrets[3]),
            vec![],
            "{}".to_string(),
        ),
        (
            "/s".to_string(),
            vec![("verification-signature", format!("{}x", secrets[1]))],
            "{}".into(),
        ),
        (
            "/b".to_string(),
            vec![],
            format!(r#"{{"Action":"x","APIKey":"{}x"}}"#, secrets[2]),
        ),
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = send(gw.addr, "POST", &target, &h, Bytes::from(body)).await;
        assert_eq!(a.status, 401, "{target}");
    }
    for r in upstream.requests() {
        let all = format!(
            "{:?} {:?} {}",
            r.uri,
            r.headers,
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            !all.contains("SECRET"),
            "a secret reached the upstream: {all}"
        );
        assert_eq!(
            r.uri.query(),
            Some(format!("key={APP_CREDENTIAL}").as_str())
        );
    }

    gw.signal("TERM");
    let code = gw.wait_exit(Duration::from_secs(20));
    let printed = gw.log();
    assert_eq!(code, Some(0), "{printed}");
    assert!(
        printed.contains("request"),
        "the log has request lines: {printed}"
    );
    for s in secrets.iter().chain([&APP_CREDENTIAL]) {
        assert!(!printed.contains(s), "secret {s} printed:\n{printed}");
    }
}

/// A log reader that stops reading must not stop hookgate: the workers drop the batches
/// stderr has no room for, count them, and say how many once it takes lines again. (Before,
/// every worker waited in `write` once the pipe's 64 KiB were full, and deliveries stopped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_pipe_nobody_reads_does_not_stop_deliveries() {
    use std::io::Read;
    const SECRET: &str = "log-pipe-secret";
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let dir = temp_dir("cli-stalled-log");
    let (port, admin_port) = (free_port(), free_port());
    let text = one_source(
        &upstream.url("/"),
        "protocol",
        "/p",
        &[SECRET],
        "dedupe_window_s = 0",
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
    .replace(
        "[upstream]",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[upstream]"),
    );
    let path = write_config(&dir, &text);
    let (mut gateway, addr) = run_on(
        &path,
        port,
        std::process::Stdio::null(),
        std::process::Stdio::piped(),
    );
    let child = &mut gateway.0;
    let body = r#"{"id":"1","type":"message.created","payload":{}}"#;
    let sig = hmac_hex(SECRET, body.as_bytes());
    // Some 250 request lines fill the pipe; 1,500 deliveries go well past it.
    for i in 0..1500 {
        let a = tokio::time::timeout(
            Duration::from_secs(5),
            send(
                addr,
                "POST",
                "/p",
                &[("x-protocol-signature", sig.as_str())],
                Bytes::from(body),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("delivery {i} got no answer: hookgate waits on its log"));
        assert_eq!(a.status, 200, "delivery {i}");
    }
    // The metric says so without the log: the pipe holds some 250 of the 1,500 lines.
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let dropped_total = async || {
        let (m, _) = scrape_admin(admin).await;
        get(&m, "hookgate_log_lines_dropped_total", &[]).unwrap_or(0.0)
    };
    let metric = dropped_total().await;
    assert!(
        metric >= 1000.0,
        "hookgate_log_lines_dropped_total {metric}"
    );
    // Now read stderr, and stop hookgate: its workers' last flushes carry the warning.
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // Time for the reader to empty the pipe, so nothing is dropped after this scrape. No
    // delivery after it: a worker with no line of its own to write still tries the warning.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metric = dropped_total().await as u64;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("exit");
    assert_eq!(status.code(), Some(0));
    let log = reader.join().expect("reader");
    let told: u64 = log
        .lines()
        .filter(|l| l.contains("log lines dropped"))
        .filter_map(|l| l.rsplit("dropped=").next()?.trim().parse::<u64>().ok())
        .sum();
    let written = log.lines().filter(|l| l.contains("status=200")).count() as u64;
    assert!(told > 0, "no warning about dropped lines:\n{log}");
    // Every request line is in the log or counted, once: the warnings' own tries while
    // stderr stayed full are not lines lost (their count goes on to the next).
    assert_eq!(
        (told, metric),
        (1500 - written, 1500 - written),
        "{written} of 1,500 request lines written"
    );
}

/// A log reader that is gone (stderr a pipe with no reader: EPIPE on every write) must not
/// end hookgate. Before, the first line written from outside a worker (the reload's, the
/// shutdown's) failed, tracing-subscriber said so with `eprintln!`, which panicked: a
/// SIGHUP or SIGTERM ended the process with 101, and a failed start exited 101, not 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_reader_that_is_gone_does_not_end_hookgate() {
    const SECRET: &str = "gone-log-secret";
    let upstream = spawn_upstream(Reply::json(200, "{}")).await;
    let dir = temp_dir("cli-gone-log");
    let port = free_port();
    let config = |path: &str| {
        one_source(
            &upstream.url("/"),
            "protocol",
            path,
            &[SECRET],
            "dedupe_window_s = 0",
        )
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
    };
    let path = write_config(&dir, &config("/p"));
    // The writing end of a pipe whose reader is closed before hookgate writes a line.
    let closed_pipe = || {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        writer
    };
    let (mut gateway, addr) = run_on(&path, port, closed_pipe().into(), closed_pipe().into());
    let body = r#"{"id":"1","type":"message.created","payload":{}}"#;
    let sig = hmac_hex(SECRET, body.as_bytes());
    let deliver = |path: &'static str| {
        let sig = sig.clone();
        async move {
            send(
                addr,
                "POST",
                path,
                &[("x-protocol-signature", sig.as_str())],
                Bytes::from(body),
            )
            .await
        }
    };
    assert_eq!(deliver("/p").await.status, 200);
    // A reload that moves the source: it logs from the main thread.
    std::fs::write(&path, config("/q")).expect("rewrite");
    let pid = gateway.0.id().to_string();
    let kill = |sig: &str| {
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
    };
    assert!(kill("-HUP").success());
    let mut moved = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            gateway
                .0
                .try_wait()
                .expect("try_wait")
                .and_then(|s| s.code()),
            None,
            "hookgate ended on the reload"
        );
        if deliver("/q").await.status == 200 {
            moved = true;
            break;
        }
    }
    assert!(moved, "the reload did not take the new path");
    assert_eq!(deliver("/p").await.status, 404);
    assert_eq!(upstream.requests().len(), 2);
    assert!(kill("-TERM").success());
    let status = gateway.0.wait().expect("exit");
    assert_eq!(status.code(), Some(0), "SIGTERM with no log reader");

    // The CLI's own lines: a failed start still exits 2, `check | head -0` still 0.
    let bad = write_config(&dir, "[server]\nlisten = 1\n");
    let code = |args: &[&str], out: std::io::PipeWriter, err: std::io::PipeWriter| {
        Command::new(BIN)
            .args(args)
            .stdout(out)
            .stderr(err)
            .status()
            .expect("run")
            .code()
    };
    assert_eq!(
        code(&["check", "--config", &bad], closed_pipe(), closed_pipe()),
        Some(2)
    );
    std::fs::write(dir.join("good.toml"), config("/p")).expect("write");
    let good = dir.join("good.toml").display().to_string();
    assert_eq!(
        code(&["check", "--config", &good], closed_pipe(), closed_pipe()),
        Some(0)
    );
    assert_eq!(
        code(
            &["sign", "--config", &good, "--source", "protocol"],
            closed_pipe(),
            closed_pipe()
        ),
        Some(0)
    );
}

/// A test run killed from outside (cargo-mutants' timeout) must not leave its gateways
/// running: each is started to die with the thread that started it.
#[test]
fn a_gateway_a_test_started_ends_with_the_tests_thread() {
    use std::os::unix::process::ExitStatusExt;
    let dir = temp_dir("cli-death-signal");
    let config = one_source("http://127.0.0.1:9/", "protocol", "/p", &["s"], "");
    let folder = dir.to_path_buf();
    let starter = std::thread::spawn(move || spawn_process(&folder, &config, &[]));
    let mut gw = starter.join().expect("the starting thread");
    // The thread is gone; its gateway is killed by the kernel, not by `Process`'s `Drop`.
    let status = gw.wait_status(Duration::from_secs(5));
    assert_eq!(
        status.map(|s| s.signal()),
        Some(Some(libc::SIGKILL)),
        "the gateway outlived its thread: {status:?}"
    );
}
