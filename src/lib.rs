//! hookgate: a webhook gateway for chat platforms.
//!
//! A delivery takes one way through the crate, one module per stage:
//!
//! ```text
//! server    accept, worker threads, TLS (tls), HTTP/1.1 + HTTP/2, head deadline, drain
//! pipeline  route → admit (allow_cidrs) → read body → verify → normalize → forward → reply
//! body      a request's body read whole, within max_body_bytes
//! admit     who the client is (X-Forwarded-For rules) and whether it may come in
//! limit     client and source rate limits (governor); dedupe: ids already forwarded
//! verify    the proof schemes, constant time; the only producer of `Verified`
//! platforms one file per platform: its proof scheme, its event mapping, its reply format
//! event     the normalized event: the only thing sent upstream in event mode
//! upstream  one pooled client per worker, exchanges in flight bounded, timeouts, header
//!           hygiene, Standard Webhooks signing
//! error     every refusal as one enum, mapped to a status in one place
//! logs      stderr, each worker's lines written in batches
//! memory    freed memory handed back to the system after a burst (glibc)
//! ```
//!
//! `config` turns the TOML file into validated runtime types once, at startup (and on
//! reloads: `reload`, on SIGHUP or a changed file), so the request path never re-checks it.

pub mod admit;
pub mod body;
pub mod cli;
pub mod config;
pub mod dedupe;
pub mod error;
pub mod event;
pub mod json;
pub mod limit;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod platforms;
pub mod reload;
pub mod reply;
pub mod server;
pub mod time;
pub mod tls;
pub mod upstream;
pub mod verify;
