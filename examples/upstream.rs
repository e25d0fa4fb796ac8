//! A tiny upstream app for trying hookgate: prints every request it receives (headers and
//! body) and answers `200 {}`. Listens on 127.0.0.1:3000, the example config's upstream.
//!
//!     cargo run --example upstream

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("upstream listening on http://{addr}/");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                println!("--- {} {}", parts.method, parts.uri);
                for (k, v) in &parts.headers {
                    println!("{k}: {}", v.to_str().unwrap_or("<binary>"));
                }
                println!("\n{}\n", String::from_utf8_lossy(&body));
                let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().expect("static"));
                Ok::<_, Infallible>(r)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
