//! Reading a request's body whole, within a size limit and the worker's memory budget.
//!
//! By hand rather than http-body-util's `Limited` + `collect`: those queue every piece in a
//! `VecDeque` and copy them out again, an allocation and a pass per body, while nearly every
//! webhook arrives in one piece, which is returned here as it is.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Version, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError};

/// The request-body bytes one worker thread may hold at once (`server.max_buffered_bytes`
/// shared out between the workers), kept until the request is answered, so that bodies sent
/// faster than they are verified cannot grow memory without bound before any proof is
/// checked. A body that does not arrive in one piece takes its whole length (its declared
/// one, else `max_body_bytes`) from the budget before any more of it is read, waiting if
/// others hold it (its sender's TCP window fills; `body_timeout_s` still runs). Whole, not
/// piece by piece: bodies that each held part of the budget while waiting for more of it
/// would wait for one another until `body_timeout_s` (100 senders of 1 MiB webhooks, each
/// holding some 300 KiB of a 32 MiB budget, got no delivery through in 10 s); a body that
/// holds its length never waits again, so it is read, answered and gives the bytes back.
/// A body read in one piece (nearly every webhook) is not counted at all: it is verified at
/// once, and never queues behind bodies that wait.
/// Per worker, so the permits' counter stays on its worker's core (the shared cache line
/// cost was measured: `benches/PERFORMANCE.md`, "Shared cache lines").
#[repr(align(128))]
pub struct Budget {
    bytes: Semaphore,
    size: usize,
    /// Pieces that had to wait for the budget (`hookgate_body_budget_waits_total`).
    waits: Counter,
}

impl Budget {
    pub fn new(size: usize, waits: Counter) -> Budget {
        Budget {
            // More than a semaphore can count (2^61 bytes) is no bound anyway.
            bytes: Semaphore::new(size.min(Semaphore::MAX_PERMITS)),
            size,
            waits,
        }
    }

    /// The bytes it was made to hold in all.
    pub fn size(&self) -> usize {
        self.size
    }

    /// `n` bytes, waiting for them if others hold the budget. A body is never over
    /// `max_body_bytes`, which is never over `size`, so `n` fits u32 whenever it can fit at
    /// all; a larger one waits for the whole budget.
    async fn take(&self, n: usize) -> Option<SemaphorePermit<'_>> {
        let n = u32::try_from(n.min(self.size)).unwrap_or(u32::MAX);
        match self.bytes.try_acquire_many(n) {
            Ok(p) => Some(p),
            Err(TryAcquireError::NoPermits) => {
                self.waits.inc();
                // Never closed.
                self.bytes.acquire_many(n).await.ok()
            }
            Err(TryAcquireError::Closed) => None,
        }
    }
}

/// A body's share of its worker's budget, given back when dropped (when the request has
/// been answered: the forwarded event shares the body's bytes).
pub struct Held<'b> {
    _permit: Option<SemaphorePermit<'b>>,
}

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("body over the size limit")]
    TooLarge,
    #[error("the body ended before its declared length")]
    Short,
    #[error(transparent)]
    Failed(#[from] hyper::Error),
}

/// The most buffer a body (or the app's answer) is given ahead of its bytes. Its declared
/// length is the sender's word: reserved whole at once, a length of terabytes (allowed by a
/// `max_body_bytes` that large) fails the allocation, which aborts the process. Past this
/// the buffer grows as the bytes arrive, which only bytes really sent can make it do.
pub const RESERVE_AHEAD: usize = 16 << 20;

/// The most of a body hyper reads at once over HTTP/1.1: how far it grows a connection's
/// read buffer (its `max_buf_size`; a read fills the spare room, which can be a little more).
pub const PIECE: usize = 64 * 1024;

/// The whole body, or `TooLarge` as soon as it declares or passes more than `limit` bytes
/// (trailers are ignored).
/// A body takes its whole length from `budget` before it is read: one declared longer than
/// a piece before its first byte (a connection that waits then holds none of it), any
/// other past its first piece.
pub async fn read_whole<'b>(
    mut body: Incoming,
    limit: usize,
    budget: &'b Budget,
) -> Result<(Bytes, Held<'b>), ReadError> {
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    let mut held = None;
    // The length the head declared: hyper's parse of it, none for a chunked body (with a
    // Transfer-Encoding the body is read by that alone, RFC 9112 §6.1). Over the limit, it
    // is refused before a byte is read.
    let declared = body
        .size_hint()
        .exact()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    if declared.is_some_and(|n| n > limit) {
        return Err(ReadError::TooLarge);
    }
    if let Some(declared) = declared
        && declared > PIECE
    {
        held = budget.take(declared).await;
    }
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let read = joined.as_ref().map_or(first.len(), BytesMut::len);
        if data.len() > limit - read {
            return Err(ReadError::TooLarge);
        }
        // The whole length, when it was declared, else as much as the limit lets it be.
        if held.is_none() && !body.is_end_stream() {
            held = budget.take(declared.unwrap_or(limit)).await;
        }
        match &mut joined {
            Some(j) => j.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let capacity = declared
                    .unwrap_or(read + data.len())
                    .min(limit)
                    .min(RESERVE_AHEAD.max(read + data.len()));
                let mut j = BytesMut::with_capacity(capacity);
                j.extend_from_slice(&first);
                j.extend_from_slice(&data);
                joined = Some(j);
            }
        }
    }
    let body = joined.map_or(first, BytesMut::freeze);
    // hyper ends an HTTP/2 body at a reset with NO_ERROR (RFC 9113 §8.1: an early answer
    // tells the client to stop sending), so a body its sender cut off that way would read
    // as whole; its declared length tells. (HTTP/1.1 and a stream's END_STREAM are held to
    // it by hyper and h2 already.)
    if declared.is_some_and(|n| n != body.len()) {
        return Err(ReadError::Short);
    }
    Ok((body, Held { _permit: held }))
}

/// The comma-separated items of a header list (RFC 9110 §5.6.1), trimmed, empty ones left
/// out: what `Connection`, `Content-Encoding` and `Transfer-Encoding` hold, for requests and
/// for the app's answers alike.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a coding list (`Content-Encoding`, `Transfer-Encoding`) names no coding but
/// `coding` (case aside): hookgate undoes none, so any other is refused.
pub fn codings_only(value: &[u8], coding: &[u8]) -> bool {
    list_items(value).all(|c| c.eq_ignore_ascii_case(coding))
}

/// How many times `Transfer-Encoding` lines name `chunked`, the only transfer coding
/// hookgate reads, or `None` when they name any other (RFC 9112 §7): for a request's lines
/// and for the app's answer's alike.
pub fn chunked_count<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Option<usize> {
    let mut chunked = 0;
    for coding in lines.into_iter().flat_map(list_items) {
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return None;
        }
        chunked += 1;
    }
    Some(chunked)
}

/// Reads the body of a request refused before its body was read (404, 405, 403, 429) to
/// its end on a task of its own, dropping each piece, so that an HTTP/1.1 connection can
/// carry the sender's next request: hyper closes a connection whose request body was left
/// unread (unless the rest is in its buffer already), after an answer that did not say so.
/// nginx does the same (`ngx_http_discard_request_body`). Bounded as a delivery's body is:
/// past `max` bytes or `deadline` the body is dropped and the connection closes after all.
/// `false` when the body will not be read (its declared length is over `max`, or its sender
/// waits for `100 Continue`): the answer must then say `connection: close`. HTTP/2 needs
/// none of it: hyper resets the stream.
pub fn discard(
    mut body: Incoming,
    version: Version,
    headers: &HeaderMap,
    max: u64,
    deadline: tokio::time::Instant,
) -> bool {
    if version > Version::HTTP_11 || body.is_end_stream() {
        return true;
    }
    // A sender waiting for `100 Continue` before it sends the body will not send it now
    // (RFC 9110 §10.1.1): waiting for it would hold the connection to `deadline`.
    let waits_to_send = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if waits_to_send || body.size_hint().exact().is_some_and(|n| n > max) {
        return false;
    }
    tokio::spawn(tokio::time::timeout_at(deadline, async move {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > max {
                return;
            }
        }
    }));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_is_counted_across_lines_and_any_other_coding_is_none() {
        assert_eq!(chunked_count([&b"chunked"[..]]), Some(1));
        assert_eq!(chunked_count([&b"Chunked"[..], b" chunked "]), Some(2));
        assert_eq!(chunked_count([&b"chunked, chunked"[..]]), Some(2));
        assert_eq!(chunked_count([&b""[..]]), Some(0));
        assert_eq!(chunked_count([&b"gzip, chunked"[..]]), None);
        assert_eq!(chunked_count([&b"chunked"[..], b"identity"]), None);
    }

    /// A coding list names only the one coding hookgate takes, whatever the case, spaces,
    /// empty items or repeats; any other coding anywhere in it does not pass.
    #[test]
    fn a_coding_list_names_only_the_coding_taken() {
        for (value, coding, only) in [
            ("identity", "identity", true),
            (" Identity , identity,", "identity", true),
            ("", "identity", true),
            ("gzip", "identity", false),
            ("identity, gzip", "identity", false),
            ("chunked", "chunked", true),
            ("CHUNKED,,", "chunked", true),
            ("gzip, chunked", "chunked", false),
            ("chunked, x-custom", "chunked", false),
        ] {
            assert_eq!(
                codings_only(value.as_bytes(), coding.as_bytes()),
                only,
                "{value:?} as {coding}"
            );
        }
        let items: Vec<&[u8]> = list_items(b" a ,, b,").collect();
        assert_eq!(items, [&b"a"[..], &b"b"[..]]);
    }
}
