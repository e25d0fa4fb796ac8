//! One HTTP/1.1 exchange on a kept-alive upstream connection: the request written in one
//! vectored write, the answer's head parsed by `httparse` (hyper's own parser), its body
//! framed by RFC 9112 §6.3 and read whole.
//!
//! Written here rather than driven through hyper's client connection, which measured as the
//! largest cost of a forward after HMAC (callgrind, 1 KiB delivery: 15.4k of 128k
//! instructions in the connection's task, more in the request channel and the answer's
//! `HeaderMap`). hyper's client runs every connection as its own task fed through an `mpsc`
//! channel and answers through a `oneshot`, and fills a `HeaderMap` with every header of the
//! answer, of which hookgate reads four. Here the request's task does the exchange itself,
//! and only what hookgate relays or needs for framing is taken from the head. What is
//! not asked for is refused plainly: an answer this client does not understand is a 502,
//! never guessed at.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use http::header::HeaderValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::UpstreamAnswer;
use crate::body::{chunked_count, codings_only, list_items};

/// An answer's head larger than this is refused (hyper's client allows ~400 KiB; no
/// application answers a webhook with more than a few hundred bytes of head).
const MAX_HEAD: usize = 64 * 1024;
/// Headers in one answer head, as hyper's default.
const MAX_HEADERS: usize = 100;
/// A chunk-size line (with its extensions), or a trailer section, longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// An answer head up to this long is parsed again after every read (see `read_head`).
const EAGER_PARSE: usize = 4096;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 8 * 1024;

/// A connection to an upstream: plain TCP, or TLS for an https:// upstream.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A connection with the bytes read from it but not yet used.
pub struct Connection<S = Stream> {
    io: S,
    buf: BytesMut,
    /// When it was opened, and how many exchanges it has begun (the pool retires it after
    /// so many, or so long).
    opened: Instant,
    exchanges: u32,
}

/// An answer read whole, and what it leaves of the connection.
#[derive(Debug)]
pub struct Exchanged {
    pub answer: UpstreamAnswer,
    /// Whether the connection can carry another request (`false` after `connection: close`,
    /// an HTTP/1.0 answer, a body that ends with the connection, or bytes past the answer).
    pub reusable: bool,
}

impl Exchanged {
    /// The answer, on a connection that must not carry another request.
    fn last(self) -> Exchanged {
        Exchanged {
            reusable: false,
            ..self
        }
    }
}

/// What the upstream sent while a request was still going out (`sort_early`).
enum Early {
    /// Only whole interim (1xx) answers, now dropped: the write goes on.
    Interim,
    /// Part of a head: more is needed to tell.
    Partial,
    /// A final answer that keeps the connection: the app still reads (RFC 9112 §9.5 has a
    /// client go on sending then), so the write goes on and the answer waits in the buffer.
    Staying,
    /// A final answer that closes the connection, or what is no answer: the write stops.
    Closing,
}

/// Drops the whole interim (1xx) answers at the start of `buf`, and says what is left.
fn sort_early(buf: &mut BytesMut) -> Early {
    while !buf.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => match Head::from_parsed(&response) {
                Ok(None) => buf.advance(len),
                Ok(Some(head)) if head.keep_alive => return Early::Staying,
                // `read_answer` says what is wrong with one that is no answer.
                _ => return Early::Closing,
            },
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Early::Partial,
            _ => return Early::Closing,
        }
    }
    Early::Interim
}

/// How writing a request ended (`Connection::send`).
enum Sent {
    Whole,
    Cut,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The request could not be written.
    #[error("writing the request: {0}")]
    Write(io::Error),
    /// The connection ended, or failed, before the first byte of an answer.
    #[error("connection closed before an answer: {0}")]
    NoAnswer(String),
    /// What came back is not a valid HTTP/1.1 answer, or ended halfway.
    #[error("{0}")]
    Invalid(String),
    #[error("answer body over max_body_bytes")]
    TooLarge,
    #[error("answer with a content-encoding other than identity")]
    Encoding,
}

impl ExchangeError {
    /// Nothing of an answer was read: on a kept-alive connection, the upstream had most
    /// likely closed it just as the request went out, and the request can go again on
    /// another one.
    pub fn nothing_answered(&self) -> bool {
        matches!(self, ExchangeError::Write(_) | ExchangeError::NoAnswer(_))
    }
}

fn invalid(what: impl Into<String>) -> ExchangeError {
    ExchangeError::Invalid(what.into())
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(io: S) -> Connection<S> {
        Connection {
            io,
            buf: BytesMut::new(),
            opened: Instant::now(),
            exchanges: 0,
        }
    }

    /// When the connection was opened.
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// How many exchanges the connection has begun.
    pub fn exchanges(&self) -> u32 {
        self.exchanges
    }

    /// Whether an idle connection can still be used: the upstream has neither closed it nor
    /// sent anything unasked. One poll, no waiting: tokio clears a socket's readiness after a
    /// short read, so for a quiet connection this is usually not even a system call.
    pub fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        self.buf.is_empty()
            && matches!(
                Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
                Poll::Pending
            )
    }

    /// Writes `head` and `body`, then reads the whole answer, its body up to `limit` bytes.
    pub async fn exchange(
        &mut self,
        head: &[u8],
        body: &[Bytes],
        limit: usize,
    ) -> Result<Exchanged, ExchangeError> {
        self.exchanges = self.exchanges.saturating_add(1);
        let mut slices: smallvec::SmallVec<[IoSlice<'_>; 4]> = std::iter::once(head)
            .chain(body.iter().map(|b| &b[..]))
            .filter(|s| !s.is_empty())
            .map(IoSlice::new)
            .collect();
        let sent = match self.send(&mut slices, limit).await {
            Ok(Sent::Whole) => self.io.flush().await.map(|()| Sent::Whole),
            other => other,
        };
        match sent {
            Ok(Sent::Whole) => self.read_answer(limit).await,
            // The rest of the request was not sent: the connection's framing is lost.
            Ok(Sent::Cut) => self.read_answer(limit).await.map(Exchanged::last),
            // An app that answered and closed while the request was still going out (a 413
            // by its length, the rest unread) has its answer in the socket still. Only on
            // a connection's first exchange: on a kept-alive one, a write that fails is most
            // likely an idle close, and the request goes again on another connection.
            Err(e) if self.exchanges == 1 => match self.read_answer(limit).await {
                Ok(answered) => Ok(answered.last()),
                Err(_) => Err(ExchangeError::Write(e)),
            },
            Err(e) => Err(ExchangeError::Write(e)),
        }
    }

    /// Writes every slice, however the stream splits the writes. While the upstream takes no
    /// more of it, the connection is read too (RFC 9112 §9.5: a client sending a body
    /// watches for an answer): an app that answers early (a 413 by the request's length)
    /// and reads no further would otherwise hold the write until the delivery's deadline.
    /// `Cut` when the upstream answered and closes, or closed or failed, before it took the
    /// whole request: `read_answer` tells which.
    async fn send(&mut self, mut slices: &mut [IoSlice<'_>], limit: usize) -> io::Result<Sent> {
        std::future::poll_fn(|cx| {
            while !slices.is_empty() {
                match Pin::new(&mut self.io).poll_write_vectored(cx, slices) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => IoSlice::advance_slices(&mut slices, n),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => match self.poll_early_answer(cx, limit) {
                        Poll::Ready(Some(cut)) => return Poll::Ready(Ok(cut)),
                        Poll::Ready(None) => {}
                        Poll::Pending => return Poll::Pending,
                    },
                }
            }
            Poll::Ready(Ok(Sent::Whole))
        })
        .await
    }

    /// What the upstream sent while it takes no more of the request: `Some(Cut)` when the
    /// write is to stop, `None` when it goes on (only interim answers, or an answer that
    /// keeps the connection). Out of line: the common request's write never waits.
    #[cold]
    #[inline(never)]
    fn poll_early_answer(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<Option<Sent>> {
        loop {
            // Copied through the stack: this is the rare case, and it keeps the buffer's
            // spare room out of it.
            let mut piece = [0u8; 4096];
            let mut read = ReadBuf::new(&mut piece);
            match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                // Past what any answer may be: `read_answer` refuses it.
                Poll::Ready(Ok(())) if self.buf.len() > MAX_HEAD + limit => {
                    return Poll::Ready(Some(Sent::Cut));
                }
                Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                    self.buf.extend_from_slice(read.filled());
                    // A `100 Continue` some servers send unasked is no answer, and one that
                    // keeps the connection still reads the rest.
                    match sort_early(&mut self.buf) {
                        Early::Interim | Early::Staying => return Poll::Ready(None),
                        Early::Partial => {}
                        Early::Closing => return Poll::Ready(Some(Sent::Cut)),
                    }
                }
                // The end, or a failure: `read_answer` tells which.
                Poll::Ready(_) => return Poll::Ready(Some(Sent::Cut)),
            }
        }
    }

    async fn read_answer(&mut self, limit: usize) -> Result<Exchanged, ExchangeError> {
        let head = self.read_head().await?;
        let mut reusable = head.keep_alive;
        let body = match head.framing {
            Framing::Empty => Bytes::new(),
            Framing::Length(n) => {
                let n = usize::try_from(n)
                    .ok()
                    .filter(|n| *n <= limit)
                    .ok_or(ExchangeError::TooLarge)?;
                self.read_exactly(n).await?
            }
            Framing::Chunked => self.read_chunked(limit).await?,
            Framing::UntilClose => {
                reusable = false;
                self.read_to_end(limit).await?
            }
        };
        // Anything past the answer was not asked for: the connection is not trusted again.
        if !self.buf.is_empty() {
            reusable = false;
        }
        Ok(Exchanged {
            answer: UpstreamAnswer {
                status: head.status,
                content_type: head.content_type,
                retry_after: head.retry_after,
                location: head.location,
                body,
            },
            reusable,
        })
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the connection.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// Like `fill`, where the connection must not end yet.
    async fn fill_or_fail(&mut self, reading: &str) -> Result<(), ExchangeError> {
        match self.fill().await {
            Ok(0) => Err(invalid(format!(
                "connection closed in the answer's {reading}"
            ))),
            Ok(_) => Ok(()),
            Err(e) => Err(invalid(format!("reading the answer's {reading}: {e}"))),
        }
    }

    async fn read_head(&mut self) -> Result<Head, ExchangeError> {
        // Whether an interim (1xx) answer was read: then the answer has begun.
        let mut interim = false;
        // How much of the buffer is known to hold no end of a head.
        let mut searched = 0;
        loop {
            // Parsing the whole buffer again after every read would be quadratic in a head
            // that arrives a few bytes at a time (up to 64 KiB of it). Small heads, and every
            // first read (where a non-HTTP answer shows), are parsed at once; past that, only
            // once the end of a head may have arrived.
            if !self.buf.is_empty()
                && (self.buf.len() <= EAGER_PARSE || head_may_end(&self.buf, searched))
            {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&self.buf) {
                    // The bound is on the head's own length, however much one read brought.
                    Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                        return Err(invalid("answer head over 64 KiB"));
                    }
                    Ok(httparse::Status::Complete(len)) => {
                        let head = Head::from_parsed(&response)?;
                        self.buf.advance(len);
                        searched = 0;
                        match head {
                            // 1xx: an interim answer; the final one follows.
                            None => {
                                interim = true;
                                continue;
                            }
                            Some(head) => return Ok(head),
                        }
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => {
                        let hint = not_http1_hint(&self.buf);
                        return Err(invalid(format!("answer head: {e}{hint}")));
                    }
                }
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("answer head over 64 KiB"));
            }
            searched = self.buf.len();
            if interim || !self.buf.is_empty() {
                self.fill_or_fail("head").await?;
                continue;
            }
            // Not a byte of an answer yet: an end here is `NoAnswer`, which may be retried.
            match self.fill().await {
                Ok(0) => return Err(ExchangeError::NoAnswer("end of stream".into())),
                Err(e) => return Err(ExchangeError::NoAnswer(e.to_string())),
                Ok(_) => {}
            }
        }
    }

    async fn read_exactly(&mut self, n: usize) -> Result<Bytes, ExchangeError> {
        if self.buf.len() < n {
            self.buf
                .reserve((n - self.buf.len()).min(crate::body::RESERVE_AHEAD));
        }
        while self.buf.len() < n {
            self.fill_or_fail("body").await?;
        }
        Ok(self.buf.split_to(n).freeze())
    }

    async fn read_to_end(&mut self, limit: usize) -> Result<Bytes, ExchangeError> {
        loop {
            if self.buf.len() > limit {
                return Err(ExchangeError::TooLarge);
            }
            match self.fill().await {
                Ok(0) => return Ok(self.buf.split().freeze()),
                Ok(_) => {}
                Err(e) => return Err(invalid(format!("reading the answer's body: {e}"))),
            }
        }
    }

    /// A chunked body (RFC 9112 §7.1): chunk extensions and trailer fields are read and
    /// dropped.
    async fn read_chunked(&mut self, limit: usize) -> Result<Bytes, ExchangeError> {
        let mut body = BytesMut::new();
        loop {
            let size = loop {
                // httparse takes an empty line for a last chunk: a size needs a digit.
                if self.buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
                    return Err(invalid("bad chunk size"));
                }
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((used, _))) if used > MAX_CHUNK_LINE => {
                        return Err(invalid("chunk size line too long"));
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.buf.advance(used);
                        break size;
                    }
                    Ok(httparse::Status::Partial) if self.buf.len() > MAX_CHUNK_LINE => {
                        return Err(invalid("chunk size line too long"));
                    }
                    Ok(httparse::Status::Partial) => self.fill_or_fail("chunk size").await?,
                    Err(_) => return Err(invalid("bad chunk size")),
                }
            };
            if size == 0 {
                self.skip_trailers().await?;
                return Ok(body.freeze());
            }
            let size = usize::try_from(size)
                .ok()
                .filter(|s| *s <= limit - body.len())
                .ok_or(ExchangeError::TooLarge)?;
            let with_crlf = size + 2;
            if self.buf.len() < with_crlf {
                self.buf
                    .reserve((with_crlf - self.buf.len()).min(crate::body::RESERVE_AHEAD));
            }
            while self.buf.len() < with_crlf {
                self.fill_or_fail("body").await?;
            }
            if &self.buf[size..with_crlf] != b"\r\n" {
                return Err(invalid("chunk not followed by CRLF"));
            }
            if body.is_empty() {
                // Most chunked answers are one chunk: take it without a copy.
                body = self.buf.split_to(size);
            } else {
                body.extend_from_slice(&self.buf[..size]);
                self.buf.advance(size);
            }
            self.buf.advance(2);
        }
    }

    /// The trailer section after the last chunk, up to and including its empty line, which
    /// must end within `MAX_CHUNK_LINE` bytes. Lines are found in place and the section is
    /// dropped at its end, so that only the section's own bytes count against the bound
    /// (never bytes past the answer that came in the same read).
    async fn skip_trailers(&mut self) -> Result<(), ExchangeError> {
        let mut line = 0;
        loop {
            let section = &self.buf[..self.buf.len().min(MAX_CHUNK_LINE)];
            match memchr::memmem::find(&section[line..], b"\r\n") {
                Some(0) => {
                    self.buf.advance(line + 2);
                    return Ok(());
                }
                Some(end) => line += end + 2,
                None if section.len() == MAX_CHUNK_LINE => {
                    return Err(invalid("trailer section too long"));
                }
                None => self.fill_or_fail("trailers").await?,
            }
        }
    }
}

/// What an answer that is not HTTP/1.x most likely is, for the log line's detail: the two
/// mistakes an operator makes in an upstream URL, which otherwise show only as "invalid HTTP
/// version".
fn not_http1_hint(answer: &[u8]) -> &'static str {
    match answer {
        // A TLS record (RFC 8446 §5.1): an alert (21) or a handshake (22), version 3.x. A
        // TLS server that reads a plaintext request answers with an alert, if anything.
        [0x15 | 0x16, 0x03, ..] => " (the app answered in TLS: its URL wants https://)",
        // An HTTP/2 frame head (RFC 9113 §4.1) of a SETTINGS (4) or GOAWAY (7) frame on
        // stream 0: what a server that speaks only HTTP/2 sends first.
        [_, _, _, 0x04 | 0x07, _, 0, 0, 0, 0, ..] => {
            " (the app answered in HTTP/2 only: hookgate speaks HTTP/1.1 to it)"
        }
        _ => "",
    }
}

/// Whether a blank line (the end of a head; httparse also takes bare `\n` line ends) may be
/// in `buf` past the first `searched` bytes, which are known to hold none.
fn head_may_end(buf: &[u8], searched: usize) -> bool {
    let new = &buf[searched.saturating_sub(2)..];
    memchr::memmem::find(new, b"\n\n").is_some() || memchr::memmem::find(new, b"\n\r\n").is_some()
}

/// How the answer's body is delimited (RFC 9112 §6.3, for an answer to a POST).
#[derive(Debug, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What hookgate takes from an answer's head.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    retry_after: Option<HeaderValue>,
    /// Only a redirect's (3xx).
    location: Option<Box<HeaderValue>>,
    framing: Framing,
    keep_alive: bool,
}

impl Head {
    /// The final answer's head, or `None` for an interim (1xx) one.
    fn from_parsed(response: &httparse::Response<'_, '_>) -> Result<Option<Head>, ExchangeError> {
        let code = response.code.unwrap_or(0);
        // RFC 9110 §15: codes outside 100–599 are invalid (`StatusCode` takes up to 999).
        let status = StatusCode::from_u16(code)
            .ok()
            .filter(|s| s.as_u16() < 600)
            .ok_or_else(|| invalid("bad status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(invalid("101 Switching Protocols, not asked for"));
        }
        if status.is_informational() {
            return Ok(None);
        }
        let mut content_type = None;
        let mut retry_after = None;
        let mut location = None;
        let redirect = status.is_redirection();
        let mut length: Option<u64> = None;
        let mut transfer_encoding = false;
        let mut keep_alive = response.version == Some(1);
        for h in response.headers.iter() {
            let name = h.name.as_bytes();
            let value = h.value;
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_content_length(value)?;
                if length.is_some_and(|l| l != n) {
                    return Err(invalid("conflicting content-length"));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                transfer_encoding = true;
            } else if name.eq_ignore_ascii_case(b"content-encoding") {
                if !codings_only(value, b"identity") {
                    return Err(ExchangeError::Encoding);
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                if list_items(value).any(|t| t.eq_ignore_ascii_case(b"close")) {
                    keep_alive = false;
                }
            } else if name.eq_ignore_ascii_case(b"content-type") {
                if content_type.is_none() {
                    content_type = Some(header_value(value)?);
                }
            } else if name.eq_ignore_ascii_case(b"retry-after") && retry_after.is_none() {
                retry_after = Some(header_value(value)?);
            } else if redirect && location.is_none() && name.eq_ignore_ascii_case(b"location") {
                // For the log line only: an odd one does not make the answer invalid.
                location = HeaderValue::from_bytes(value).ok().map(Box::new);
            }
        }
        let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Empty
        } else if transfer_encoding {
            // hookgate sends no `TE`, so `chunked`, once, is the only transfer coding an
            // answer may carry (RFC 9112 §7.4, §7); under any other the body would be
            // relayed still coded (nginx refuses these answers too). It overrides any
            // content-length (RFC 9112 §6.3). Several lines are one list.
            let lines = response.headers.iter();
            let lines = lines.filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
            if chunked_count(lines.map(|h| h.value)) != Some(1) {
                return Err(invalid("a transfer coding other than chunked"));
            }
            Framing::Chunked
        } else {
            match length {
                Some(0) => Framing::Empty,
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        };
        Ok(Some(Head {
            status,
            content_type,
            retry_after,
            location,
            framing,
            keep_alive,
        }))
    }
}

/// `content-length`: decimal digits, or a list of the same number (RFC 9110 §8.6).
fn parse_content_length(value: &[u8]) -> Result<u64, ExchangeError> {
    let mut found: Option<u64> = None;
    for item in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return Err(invalid("bad content-length"));
        }
        let n = std::str::from_utf8(item)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| invalid("bad content-length"))?;
        if found.is_some_and(|f| f != n) {
            return Err(invalid("conflicting content-length"));
        }
        found = Some(n);
    }
    found.ok_or_else(|| invalid("bad content-length"))
}

fn header_value(value: &[u8]) -> Result<HeaderValue, ExchangeError> {
    HeaderValue::from_bytes(value).map_err(|_| invalid("bad header value"))
}

/// Reads `bytes` as an upstream's answer to one request, handed over `piece` bytes per read,
/// its body limited to `limit`. For the `upstream_answer` fuzz target and the tests: what an
/// answer reads as must not depend on how the upstream's bytes were split.
#[doc(hidden)]
pub fn read_replayed(bytes: &[u8], piece: usize, limit: usize) -> Result<Exchanged, ExchangeError> {
    let mut connection = Connection::new(Replay {
        rest: bytes,
        piece: piece.max(1),
    });
    let exchange = std::pin::pin!(connection.exchange(b"POST / HTTP/1.1\r\n\r\n", &[], limit));
    match exchange.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => unreachable!("a replayed answer is always ready"),
    }
}

/// An upstream that takes any request and answers with `rest`, `piece` bytes per read, then
/// ends: it never waits, so one poll runs an exchange to its end.
struct Replay<'a> {
    rest: &'a [u8],
    piece: usize,
}

impl AsyncRead for Replay<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.piece.min(self.rest.len()).min(buf.remaining());
        let (now, rest) = self.rest.split_at(n);
        buf.put_slice(now);
        self.rest = rest;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::DuplexStream;

    const REQUEST_HEAD: &[u8] = b"POST /app HTTP/1.1\r\nhost: app\r\ncontent-length: 7\r\n\r\n";
    const BODY: [&[u8]; 2] = [b"{\"a\":", b"1}"];

    /// One exchange against an upstream that reads the request, then writes `pieces` one
    /// by one, then closes the connection if `close`. Gives the result, the request as the
    /// upstream read it, and the client's connection.
    async fn exchange(
        pieces: &[&[u8]],
        close: bool,
        limit: usize,
    ) -> (
        Result<Exchanged, ExchangeError>,
        Vec<u8>,
        Connection<DuplexStream>,
    ) {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let upstream = tokio::spawn(async move {
            let mut request = vec![0; REQUEST_HEAD.len() + 7];
            server.read_exact(&mut request).await.expect("request");
            for piece in pieces {
                server.write_all(&piece).await.expect("write");
                tokio::task::yield_now().await;
            }
            (request, (!close).then_some(server))
        });
        let mut connection = Connection::new(client);
        let body = BODY.map(Bytes::from_static);
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            connection.exchange(REQUEST_HEAD, &body, limit),
        )
        .await
        .expect("the exchange ends");
        let (request, server) = upstream.await.expect("upstream");
        // Kept open until the client is done, where the test says so.
        drop(server);
        (result, request, connection)
    }

    async fn answer(pieces: &[&[u8]], close: bool) -> Exchanged {
        exchange(pieces, close, 1000).await.0.expect("an answer")
    }

    /// The status, the body and whether the connection can carry another request.
    fn seen(e: &Exchanged) -> (u16, &[u8], bool) {
        (e.answer.status.as_u16(), &e.answer.body[..], e.reusable)
    }

    async fn error(pieces: &[&[u8]], limit: usize) -> ExchangeError {
        match exchange(pieces, true, limit).await.0 {
            Ok(e) => panic!("answer {:?}, expected an error", e.answer),
            Err(e) => e,
        }
    }

    #[tokio::test]
    async fn the_request_goes_out_whole_and_a_sized_answer_comes_back_in_pieces() {
        let (result, request, _) = exchange(
            &[
                b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nRetry-After: 3\r\n",
                b"x-app: 1\r\ncontent-length: 11\r\n\r\n{\"ok\"",
                b":true}",
            ],
            false,
            1000,
        )
        .await;
        let answer = result.expect("an answer");
        assert_eq!(request, [REQUEST_HEAD, b"{\"a\":1}"].concat());
        assert_eq!(answer.answer.status, 201);
        assert_eq!(
            answer.answer.content_type.as_ref().map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        assert_eq!(
            answer.answer.retry_after.as_ref().map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        assert_eq!(&answer.answer.body[..], b"{\"ok\":true}");
        assert!(answer.reusable);
    }

    /// A redirect's `location` is kept (for the log line); another answer's is not read.
    #[tokio::test]
    async fn only_a_redirect_has_its_location_taken() {
        let location = |a: &Exchanged| a.answer.location.as_ref().map(|v| v.as_bytes().to_vec());
        let moved =
            b"HTTP/1.1 301 Moved\r\nlocation: /app/\r\nLocation: /x\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            location(&answer(&[moved], false).await),
            Some(b"/app/".to_vec())
        );
        let created = b"HTTP/1.1 201 Created\r\nlocation: /app/1\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(location(&answer(&[created], false).await), None);
    }

    #[tokio::test]
    async fn a_chunked_answer_is_joined_without_extensions_or_trailers() {
        let a = answer(
            &[
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\ncontent-length: 1\r\n\r\n",
                b"4;ext=\"x\"\r\nabcd\r\n",
                b"A\r\n0123456789",
                b"\r\n0\r\nx-trailer: 1\r\n",
                b"\r\n",
            ],
            false,
        )
        .await;
        assert_eq!(seen(&a), (200, &b"abcd0123456789"[..], true));
        assert!(a.answer.content_type.is_none() && a.answer.retry_after.is_none());
    }

    /// While a request is going out, whole interim answers are dropped and the write goes
    /// on, as it does past a final answer that keeps the connection (left in the buffer);
    /// part of a head waits for more; an answer that closes, or no answer, stops it.
    #[test]
    fn what_the_upstream_sends_during_the_write_is_sorted() {
        let sorted = |bytes: &[u8]| {
            let mut buf = BytesMut::from(bytes);
            let early = sort_early(&mut buf);
            let name = match early {
                Early::Interim => "interim",
                Early::Partial => "partial",
                Early::Staying => "staying",
                Early::Closing => "closing",
            };
            (name, buf.len())
        };
        assert_eq!(sorted(b"HTTP/1.1 100 Continue\r\n\r\n"), ("interim", 0));
        let two = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\n";
        assert_eq!(sorted(two), ("interim", 0));
        assert_eq!(sorted(b"HTTP/1.1 100 Cont"), ("partial", 17));
        let then_part = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Too";
        assert_eq!(sorted(then_part), ("partial", 16));
        let staying = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(sorted(staying), ("staying", staying.len()));
        let closing =
            b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(sorted(closing), ("closing", closing.len()));
        let old = b"HTTP/1.0 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(sorted(old), ("closing", old.len()));
        assert_eq!(sorted(b"HTTP/1.1 101 Switching\r\n\r\n"), ("closing", 26));
        assert_eq!(sorted(b"garbage\r\n\r\n"), ("closing", 11));
        // A head that would go on past MAX_HEAD is not waited for.
        let endless = [&b"HTTP/1.1 200 OK\r\nx: "[..], &[b'a'; MAX_HEAD]].concat();
        assert_eq!(sorted(&endless), ("closing", endless.len()));
        assert_eq!(sorted(&endless[..MAX_HEAD]), ("partial", MAX_HEAD));
    }

    /// A write that fails on a connection's first exchange may have failed because the app
    /// answered and went (a 413 by the request's length): its answer is read, and the
    /// connection is not used again. On a kept-alive connection a failed write is taken for
    /// an idle close, whatever is in the buffer: nothing answered, so the pool sends the
    /// request again on another connection.
    #[tokio::test]
    async fn a_failed_write_reads_an_answer_only_on_a_first_exchange() {
        let refused = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n";
        let body = BODY.map(Bytes::from_static);
        let (client, mut server) = tokio::io::duplex(1 << 16);
        server.write_all(refused).await.expect("write");
        drop(server);
        let mut first = Connection::new(client);
        let answered = first.exchange(REQUEST_HEAD, &body, 1000).await;
        assert_eq!(
            seen(&answered.expect("the app's answer")),
            (413, &b""[..], false)
        );

        let (client, mut server) = tokio::io::duplex(1 << 16);
        let (answered_first, then) = tokio::sync::oneshot::channel::<()>();
        let upstream = tokio::spawn(async move {
            let mut request = vec![0; REQUEST_HEAD.len() + 7];
            server.read_exact(&mut request).await.expect("request");
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
            server.write_all(ok).await.expect("write");
            // Once the first answer is read: an answer nobody asked for, and gone.
            then.await.expect("the first exchange ended");
            server.write_all(refused).await.expect("write");
        });
        let mut kept = Connection::new(client);
        let answered = kept.exchange(REQUEST_HEAD, &body, 1000).await;
        assert_eq!(seen(&answered.expect("an answer")), (200, &b""[..], true));
        answered_first.send(()).expect("upstream");
        upstream.await.expect("upstream");
        assert_eq!(kept.exchanges(), 1);
        let again = kept.exchange(REQUEST_HEAD, &body, 1000).await;
        assert!(
            matches!(again, Err(ref e) if e.nothing_answered()),
            "{:?}",
            again.map(|e| e.answer)
        );
        assert_eq!(kept.exchanges(), 2);
    }

    #[tokio::test]
    async fn interim_answers_are_skipped() {
        let a = answer(
            &[
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\n",
                b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nok",
            ],
            false,
        )
        .await;
        assert_eq!(seen(&a), (202, &b"ok"[..], true));
    }

    #[tokio::test]
    async fn answers_that_end_the_connection_are_not_reused() {
        // No length: the body runs to the end of the connection.
        let a = answer(&[b"HTTP/1.1 200 OK\r\n\r\nall ", b"of it"], true).await;
        assert_eq!(seen(&a), (200, &b"all of it"[..], false));
        let a = answer(
            &[b"HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n"],
            false,
        )
        .await;
        assert_eq!(seen(&a), (200, &b""[..], false));
        let a = answer(&[b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nx"], false).await;
        assert_eq!(seen(&a), (200, &b"x"[..], false));
        // Bytes after the answer that nobody asked for.
        let a = answer(
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n"],
            false,
        )
        .await;
        assert_eq!(seen(&a), (200, &b"x"[..], false));
    }

    /// hookgate sends no `TE`: a body under any transfer coding but one `chunked` would be
    /// relayed still coded, and a status outside 100–599 is not HTTP (RFC 9110 §15).
    #[tokio::test]
    async fn other_transfer_codings_and_statuses_past_599_are_invalid() {
        // Each is framed so that, but for the rule under test, it would read as an answer.
        for head in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nzz\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n2\r\nzz\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 2\r\n\r\nzz",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: \r\ncontent-length: 2\r\n\r\nzz",
            b"HTTP/1.1 600 Past\r\ncontent-length: 2\r\n\r\nzz",
            b"HTTP/1.1 999 Weird\r\ncontent-length: 2\r\n\r\nzz",
        ] {
            let e = error(&[head], 10).await;
            assert!(
                matches!(e, ExchangeError::Invalid(_)),
                "{}: {e:?}",
                String::from_utf8_lossy(head)
            );
        }
        let last = b"HTTP/1.1 599 Last\r\ncontent-length: 2\r\n\r\nzz";
        assert_eq!(seen(&answer(&[last], false).await), (599, &b"zz"[..], true));
    }

    #[tokio::test]
    async fn no_content_has_no_body_whatever_its_length_says() {
        let a = answer(
            &[b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"],
            false,
        )
        .await;
        assert_eq!(seen(&a), (204, &b""[..], true));
        let a = answer(
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\nabc"],
            false,
        )
        .await;
        assert_eq!(seen(&a), (200, &b"abc"[..], true));
    }

    #[tokio::test]
    async fn an_upstream_that_closes_at_once_answered_nothing() {
        let e = error(&[], 1000).await;
        assert!(
            matches!(e, ExchangeError::NoAnswer(_)) && e.nothing_answered(),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn invalid_answers_are_errors_that_answered_something() {
        let cases: [&[&[u8]]; 14] = [
            // An interim answer, then the end: the answer had begun, so no retry.
            &[b"HTTP/1.1 100 Continue\r\n\r\n"],
            &[b"HTTP/1.1 200 OK\r\ncontent-le"],
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"],
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nxx"],
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\nxx"],
            &[b"HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\nx"],
            &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"],
            &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\n\r\n"],
            &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"],
            &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n"],
            &[b"HTTP/1.1 101 Switching Protocols\r\n\r\n"],
            &[b"HTTP/1.1 99 Odd\r\n\r\n"],
            &[b"SSH-2.0-OpenSSH_9.6\r\n\r\n"],
            &[b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n"],
        ];
        for pieces in cases {
            let e = error(pieces, 1000).await;
            assert!(matches!(e, ExchangeError::Invalid(_)), "{pieces:?}: {e:?}");
            assert!(!e.nothing_answered(), "{pieces:?}");
        }
        // A head that never ends.
        let long = [b"HTTP/1.1 200 OK\r\n".to_vec(), vec![b'a'; 70_000]].concat();
        assert!(matches!(
            error(&[&long], 1000).await,
            ExchangeError::Invalid(_)
        ));
    }

    /// An app that answers in TLS or in HTTP/2 alone is named as such in the error (the
    /// log line's detail), as what `url` most likely gets wrong; other garbage is not.
    #[tokio::test]
    async fn a_tls_or_http2_answer_is_named_in_the_error() {
        let tls_alert: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32];
        let h2_settings: &[u8] = &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let h2_goaway: &[u8] = &[0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let cases: [(&[u8], &str); 4] = [
            (
                tls_alert,
                " (the app answered in TLS: its URL wants https://)",
            ),
            (
                h2_settings,
                " (the app answered in HTTP/2 only: hookgate speaks HTTP/1.1 to it)",
            ),
            (
                h2_goaway,
                " (the app answered in HTTP/2 only: hookgate speaks HTTP/1.1 to it)",
            ),
            (b"SSH-2.0-OpenSSH_9.6\r\n", ""),
        ];
        for (answer, hint) in cases {
            let e = error(&[answer], 1000).await.to_string();
            assert_eq!(e, format!("answer head: invalid HTTP version{hint}"));
        }
    }

    #[tokio::test]
    async fn a_long_head_a_few_bytes_at_a_time_is_read_and_a_non_http_answer_fails_at_once() {
        // Past EAGER_PARSE a head is parsed again only when a blank line may have come.
        let head = format!(
            "HTTP/1.1 200 OK\r\nx-long: {}\r\ncontent-length: 2\r\n\r\nok",
            "v".repeat(6000)
        );
        let pieces: Vec<&[u8]> = head.as_bytes().chunks(7).collect();
        let a = answer(&pieces, false).await;
        assert_eq!(seen(&a), (200, &b"ok"[..], true));
        // A banner that is not HTTP, on a connection kept open: refused on its first read,
        // not after the timeout.
        let (result, _, _) = exchange(&[b"SSH-2.0-OpenSSH_9.6\r\n"], false, 1000).await;
        assert!(
            matches!(result, Err(ExchangeError::Invalid(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn bodies_over_the_limit_and_encoded_bodies_are_refused() {
        let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n0123456789a";
        assert!(matches!(error(&[sized], 10).await, ExchangeError::TooLarge));
        assert_eq!(
            &answer(&[sized], false).await.answer.body[..],
            b"0123456789a"
        );
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\n012345\r\n5\r\n6789a\r\n0\r\n\r\n";
        assert!(matches!(
            error(&[chunked], 10).await,
            ExchangeError::TooLarge
        ));
        // Exactly at the limit is fine.
        let (result, _, _) = exchange(&[chunked], true, 11).await;
        assert_eq!(&result.expect("answer").answer.body[..], b"0123456789a");
        let unsized_ = b"HTTP/1.1 200 OK\r\n\r\n0123456789a";
        assert!(matches!(
            error(&[unsized_], 10).await,
            ExchangeError::TooLarge
        ));
        let (result, _, _) = exchange(&[unsized_], true, 11).await;
        assert_eq!(&result.expect("answer").answer.body[..], b"0123456789a");
        let gz =
            b"HTTP/1.1 200 OK\r\ncontent-encoding: identity, gzip\r\ncontent-length: 0\r\n\r\n";
        assert!(matches!(error(&[gz], 10).await, ExchangeError::Encoding));
        let plain = b"HTTP/1.1 200 OK\r\ncontent-encoding: Identity\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(answer(&[plain], false).await.answer.status, 200);
    }

    /// Sends a 512 KiB request on `client` to an app that reads none of it, on a task of its
    /// own, so that a write loop that never yields fails the 5 s deadline instead of
    /// hanging the test (a current-thread runtime's timer would never fire).
    async fn send_unread(client: DuplexStream) -> Result<Exchanged, ExchangeError> {
        let exchange = tokio::spawn(async move {
            let body = [Bytes::from(vec![b'b'; 512 * 1024])];
            let mut connection = Connection::new(client);
            connection.exchange(REQUEST_HEAD, &body, 1000).await
        });
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .expect("the exchange ends")
            .expect("exchange")
    }

    /// An app that answers early and keeps the connection is read while the request goes
    /// out (it may read on); one that then sends body without end and reads nothing is read
    /// only to the most an answer may be (head and `limit`), not for as long as it sends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_early_answer_is_read_only_as_far_as_an_answer_may_go() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let app = tokio::spawn(async move {
            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 10000000\r\n\r\n";
            server.write_all(head).await.expect("write");
            // Never reads; writes until it is no longer read.
            let piece = vec![b'x'; 64 * 1024];
            while server.write_all(&piece).await.is_ok() {}
        });
        let result = send_unread(client).await;
        assert!(matches!(result, Err(ExchangeError::TooLarge)), "{result:?}");
        app.abort();
    }

    /// An app that stops sending (a half-close) and reads no more of the request ends the
    /// write at once: nothing was answered. (Taken for bytes, the end would be read again
    /// and again without a pause, a worker spinning until the delivery's deadline.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_app_that_half_closes_without_reading_ends_the_write() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        server.shutdown().await.expect("half-close");
        let result = send_unread(client).await;
        assert!(
            matches!(result, Err(ref e) if e.nothing_answered()),
            "{result:?}"
        );
        drop(server);
    }

    /// The head, a chunk's size line and the trailer section are each bounded to the byte,
    /// and one that goes on past its bound is refused as it arrives, not read on until the
    /// upstream stops (memory grows with what is read).
    #[tokio::test]
    async fn heads_chunk_size_lines_and_trailers_are_bounded_to_the_byte() {
        let refused_for = |e: ExchangeError, what: &str| {
            assert!(
                matches!(&e, ExchangeError::Invalid(m) if m.contains(what)),
                "{e:?}, not {what:?}"
            );
        };
        // A head of exactly 64 KiB, its blank line included, is read; one byte more is not.
        let head_of = |len: usize| {
            let start = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-pad: ";
            format!("{start}{}\r\n\r\n", "p".repeat(len - start.len() - 4))
        };
        let exact = head_of(MAX_HEAD);
        assert_eq!(answer(&[exact.as_bytes()], false).await.answer.status, 200);
        let over = head_of(MAX_HEAD + 1);
        refused_for(error(&[over.as_bytes()], 10).await, "head over 64 KiB");
        // After an interim answer, so that the buffer's length is not a power of two when it
        // passes 64 KiB (the reads fill the room the buffer grew to).
        let endless = format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx-pad: {}",
            "p".repeat(MAX_HEAD + 5000)
        );
        refused_for(error(&[endless.as_bytes()], 10).await, "head over 64 KiB");

        // A chunk size line of MAX_CHUNK_LINE bytes (its extension and CRLF included).
        let chunked = |line: &str, rest: &str| {
            format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{line}{rest}")
        };
        let size_line = |len: usize| format!("2;x={}\r\n", "e".repeat(len - 6));
        let exact = chunked(&size_line(MAX_CHUNK_LINE), "ok\r\n0\r\n\r\n");
        assert_eq!(
            &answer(&[exact.as_bytes()], false).await.answer.body[..],
            b"ok"
        );
        let over = chunked(&size_line(MAX_CHUNK_LINE + 1), "ok\r\n0\r\n\r\n");
        refused_for(
            error(&[over.as_bytes()], 10).await,
            "chunk size line too long",
        );
        let endless = chunked(&format!("2;x={}", "e".repeat(3 * MAX_CHUNK_LINE)), "");
        refused_for(
            error(&[endless.as_bytes()], 10).await,
            "chunk size line too long",
        );

        // A trailer section that does not end within MAX_CHUNK_LINE bytes.
        let trailers = format!("x-t: {}\r\n", "t".repeat(3 * MAX_CHUNK_LINE));
        let endless = chunked("2\r\nok\r\n0\r\n", &trailers);
        refused_for(
            error(&[endless.as_bytes()], 10).await,
            "trailer section too long",
        );
    }

    #[tokio::test]
    async fn an_idle_connection_is_open_until_the_upstream_closes_it_or_talks_unasked() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut connection = Connection::new(client);
        assert!(connection.is_open());
        server
            .write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .await
            .expect("write");
        assert!(!connection.is_open());

        let (client, server) = tokio::io::duplex(1024);
        let mut connection = Connection::new(client);
        drop(server);
        assert!(!connection.is_open());
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// What an exchange says of the answer: what is relayed, or which error (the messages
    /// name where the reading stopped, which depends on the split).
    type Outcome = Result<
        (u16, Option<HeaderValue>, Option<HeaderValue>, Bytes),
        std::mem::Discriminant<ExchangeError>,
    >;

    fn outcome(result: &Result<Exchanged, ExchangeError>) -> Outcome {
        match result {
            Ok(e) => Ok((
                e.answer.status.as_u16(),
                e.answer.content_type.clone(),
                e.answer.retry_after.clone(),
                e.answer.body.clone(),
            )),
            Err(e) => Err(std::mem::discriminant(e)),
        }
    }

    /// An answer's bytes, from parts that reach every limit of the reader: heads around
    /// `EAGER_PARSE` and `MAX_HEAD`, chunk-size lines and trailer sections around
    /// `MAX_CHUNK_LINE`, bytes past the answer.
    fn answer_bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let status = prop::sample::select(vec![
            "HTTP/1.1 200 OK\r\n",
            "HTTP/1.0 200 OK\r\n",
            "HTTP/1.1 204 No Content\r\n",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n",
        ]);
        let header = prop_oneof![
            (0u64..40).prop_map(|n| format!("content-length: {n}\r\n")),
            Just("transfer-encoding: chunked\r\n".to_string()),
            Just("connection: close\r\n".to_string()),
            Just("content-type: application/json\r\n".to_string()),
            Just("retry-after: 3\r\n".to_string()),
            prop::sample::select(vec![10usize, 4000, 4090, 8000, MAX_HEAD - 100, MAX_HEAD])
                .prop_map(|n| format!("x-pad: {}\r\n", "p".repeat(n))),
        ];
        let chunk = (
            0usize..30,
            prop::sample::select(vec![0usize, 10, MAX_CHUNK_LINE - 8, MAX_CHUNK_LINE]),
        )
            .prop_map(|(size, ext)| {
                let ext = if ext == 0 {
                    String::new()
                } else {
                    format!(";e={}", "x".repeat(ext))
                };
                format!("{size:x}{ext}\r\n{}\r\n", "b".repeat(size))
            });
        let trailers = prop::collection::vec(
            prop::sample::select(vec![1usize, 100, MAX_CHUNK_LINE / 2]),
            0..3,
        )
        .prop_map(|lines| {
            lines
                .iter()
                .map(|n| format!("t: {}\r\n", "v".repeat(*n)))
                .collect::<String>()
        });
        let past = prop::sample::select(vec![0usize, 3, READ_SIZE]).prop_map(|n| "z".repeat(n));
        (
            status,
            prop::collection::vec(header, 0..4),
            prop::collection::vec(chunk, 0..3),
            trailers,
            past,
            prop::collection::vec(any::<u8>(), 0..8),
        )
            .prop_map(|(status, headers, chunks, trailers, past, noise)| {
                let mut bytes = format!(
                    "{status}{}\r\n{}0\r\n{trailers}\r\n{past}",
                    headers.concat(),
                    chunks.concat()
                )
                .into_bytes();
                bytes.extend(noise);
                bytes
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever an upstream sends, the exchange ends with an answer or an error.
        #[test]
        fn any_answer_bytes_end_the_exchange(
            head in proptest::sample::select(vec![
                &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..],
                &b"HTTP/1.1 200 OK\r\ncontent-length: 40\r\n\r\n"[..],
                &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
                &b""[..],
            ]),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            split in 0usize..300,
        ) {
            let bytes = [head, &tail[..]].concat();
            let (first, second) = bytes.split_at(split.min(bytes.len()));
            let (result, _, _) = block_on(exchange(&[first, second], true, 64));
            if let Ok(a) = result {
                proptest::prop_assert!(a.answer.body.len() <= 64);
            }
        }

        /// However the upstream's bytes are split, they read as the same answer (or the same
        /// error): every limit counts the bytes of what it bounds, not what a read happened to
        /// bring. (Whether the connection is kept may differ: a read that brings bytes past
        /// the answer marks it spent, a read that ends at the answer leaves them to the pool's
        /// check before reuse.)
        #[test]
        fn an_answer_reads_the_same_however_it_is_split(
            bytes in answer_bytes(),
            piece in 1usize..200,
            limit in 0usize..64,
        ) {
            let whole = read_replayed(&bytes, usize::MAX, limit);
            let pieces = read_replayed(&bytes, piece, limit);
            proptest::prop_assert_eq!(outcome(&whole), outcome(&pieces), "{:?} / {:?}", whole.as_ref().err(), pieces.as_ref().err());
            if let Ok(e) = &whole {
                proptest::prop_assert!(e.answer.body.len() <= limit);
                proptest::prop_assert!(!e.answer.status.is_informational());
            }
        }

        /// A body sent in chunks of any sizes, read in pieces of any sizes, comes back whole.
        #[test]
        fn chunked_bodies_come_back_whole(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..6),
            piece in 1usize..50,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.extend([0, body.len()]);
            cuts.sort_unstable();
            let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for w in cuts.windows(2).filter(|w| w[0] < w[1]) {
                wire.extend(format!("{:x}\r\n", w[1] - w[0]).bytes());
                wire.extend(&body[w[0]..w[1]]);
                wire.extend(b"\r\n");
            }
            wire.extend(b"0\r\n\r\n");
            let pieces: Vec<&[u8]> = wire.chunks(piece).collect();
            let (result, _, _) = block_on(exchange(&pieces, false, 400));
            let answer = result.map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(&answer.answer.body[..], &body[..]);
            proptest::prop_assert!(answer.reusable);
        }
    }
}
