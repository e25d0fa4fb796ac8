//! Borrowed, lazy access to a webhook's JSON, with SPEC §7's field rules.
//!
//! The body is parsed once, by `validate` (one pass, held to serde_json's verdict by tests
//! and a fuzz target; see there why it is not serde_json itself), which checks all of it
//! and gives the top level's entries as (key, value text) pairs borrowed from the body, with
//! a bounded tape of where the nested objects' entries are. A nested object's entries come
//! from that tape when a field of it is asked for; past the tape's bounds (or for text not
//! read by `parse`) they are split from its text by `split_object`, which only ever sees
//! text already checked, so it needs no validation of its own: it finds where strings and
//! brackets end. Nothing is decoded until a field is asked for, and `raw` is written back
//! with the body's own key order and number literals. Where a key repeats, the last one
//! counts.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{self as ser_, SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

mod validate;

/// Largest unix time in seconds the SPEC accepts (9999-12-31T23:59:59Z).
pub const MAX_UNIX_S: i64 = 253_402_300_799;

/// The text of one JSON value of a validated document. Made only in this module, from
/// what serde_json validated or from a part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Json<'a>(&'a str);

impl<'a> Json<'a> {
    pub fn get(self) -> &'a str {
        self.0
    }

    fn first_byte(self) -> u8 {
        self.0.as_bytes().first().copied().unwrap_or(b' ')
    }
}

impl Serialize for Json<'_> {
    /// Byte for byte, as serde_json writes a raw value (tests and tools; the proxy writes
    /// events by hand, see `Event::write_json`).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(self.0).map_err(ser_::Error::custom)?;
        raw.serialize(s)
    }
}

/// An object's (key, value text) pairs, in order, repeats included; keys borrowed unless
/// they held escapes.
type Entries<'a> = Vec<(Cow<'a, str>, Json<'a>)>;

/// A JSON object's entries, borrowed.
#[derive(Debug, Default, Clone)]
pub struct Object<'a> {
    entries: Entries<'a>,
    /// Where the entries of the objects inside it are, when it was read by `parse` (or is
    /// nested in what was) and the body was within the tape's bounds.
    nested: Option<Arc<Nested<'a>>>,
}

/// Equal when their entries are (how they were found is not compared).
impl PartialEq for Object<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

/// The nested objects' entries of a parsed body, as `validate` recorded them.
#[derive(Debug)]
struct Nested<'a> {
    /// The whole body, which the offsets are into.
    text: &'a str,
    entries: Vec<validate::NestedEntry>,
    /// Whether a string in a value of the body holds an escape (kept here, not in every
    /// `Object`, whose size the normalizers' many lookups pay for).
    escapes: bool,
}

impl<'a> Nested<'a> {
    /// The entries of the nested object whose text is `raw`, with keys decoded as
    /// `split_object` decodes them; `None` if `raw` is not in this body or a key does not
    /// decode (the caller then splits the text, which gives the same answer).
    fn entries_of(&self, raw: Json<'a>) -> Option<Entries<'a>> {
        let at = (raw.0.as_ptr() as usize).checked_sub(self.text.as_ptr() as usize)?;
        if at + raw.0.len() > self.text.len() {
            return None;
        }
        let at = u32::try_from(at).ok()?;
        let mine = || self.entries.iter().filter(move |e| e.object == at);
        let mut entries = Vec::with_capacity(mine().count());
        for e in mine() {
            let key = key_text(
                self.text.get(e.key as usize..e.key_end as usize)?,
                e.escaped,
            )?;
            let value = self.text.get(e.value as usize..e.value_end as usize)?;
            entries.push((key, Json(value)));
        }
        Some(entries)
    }
}

/// A key that borrows from the input unless it holds escapes; a lone surrogate in it made
/// U+FFFD, as `key_text` does.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Key<'de>, E> {
                std::str::from_utf8(v)
                    .map(|v| Key(Cow::Borrowed(v)))
                    .map_err(E::custom)
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Key<'de>, E> {
                let (text, _) =
                    utf8_lossy_surrogates(v.to_vec()).ok_or_else(|| E::custom("not UTF-8"))?;
                Ok(Key(Cow::Owned(text)))
            }
        }
        // As bytes: serde_json then lets a lone surrogate through (as WTF-8), where as a
        // `str` it refuses the whole body.
        d.deserialize_bytes(V)
    }
}

/// serde_json's reading of a body as an object, entry for entry what `Object::parse` gives:
/// the oracle that `validate` is tested and fuzzed against. Reading keys as bytes (to let a
/// lone surrogate through) also lets control characters and bytes that are not UTF-8 (a
/// surrogate written raw, `ED A0 80`, among them) through, so the body is held to UTF-8 and,
/// by `IgnoredAny`, to the grammar first; `Object`'s `Deserialize` then gives the entries.
pub fn serde_reading(body: &[u8]) -> Option<Object<'_>> {
    std::str::from_utf8(body).ok()?;
    serde_json::from_slice::<de::IgnoredAny>(body).ok()?;
    serde_json::from_slice::<Object>(body).ok()
}

/// Entry for entry what `Object::parse` gives, for a body the grammar was checked on
/// (`serde_reading`).
impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Object<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<'de>, A::Error> {
                // serde_json gives no size hint; 16 holds a typical webhook object without regrowing.
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    entries.push((k, Json(v.get())));
                }
                Ok(Object {
                    entries,
                    nested: None,
                })
            }
        }
        d.deserialize_map(V)
    }
}

const fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).copied().is_some_and(is_ws) {
        i += 1;
    }
    i
}

/// Where the string starting at `i` (its opening quote) ends: just past its closing quote;
/// and whether it holds an escape (found on the way, so keys need no second look).
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j += memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[j] == b'\\' {
            escaped = true;
            j += 2;
        } else {
            return Some((j + 1, escaped));
        }
    }
}

/// Where the value starting at `i` ends (valid JSON assumed; `None` if it is cut short).
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        // A number, true, false or null: up to the next delimiter.
        _ => Some(
            b[i..]
                .iter()
                .position(|&c| matches!(c, b',' | b'}' | b']') || is_ws(c))
                .map_or(b.len(), |n| i + n),
        ),
    }
}

/// A key's text from its checked literal (quotes included): borrowed between the quotes
/// when it holds no escape, else decoded (a lone surrogate made U+FFFD: no key a platform
/// names holds one, so it can only stop a key from matching, never make one match).
fn key_text(literal: &str, escaped: bool) -> Option<Cow<'_, str>> {
    if escaped {
        decode_lossy(literal).map(|(text, _)| Cow::Owned(text))
    } else {
        literal
            .get(1..literal.len().checked_sub(1)?)
            .map(Cow::Borrowed)
    }
}

/// The entries of an object's validated text. Keys with escapes are decoded.
fn split_object(text: &str) -> Option<Entries<'_>> {
    let b = text.as_bytes();
    let mut entries = Vec::with_capacity(16);
    let mut i = skip_ws(b, 1);
    if b.get(i) == Some(&b'}') {
        return Some(entries);
    }
    loop {
        let (key_end, escaped) = string_end(b, i)?;
        let key = key_text(text.get(i..key_end)?, escaped)?;
        i = skip_ws(b, key_end);
        (b.get(i) == Some(&b':')).then_some(())?;
        i = skip_ws(b, i + 1);
        let end = value_end(b, i)?;
        entries.push((key, Json(text.get(i..end)?)));
        i = skip_ws(b, end);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return Some(entries),
            _ => return None,
        }
    }
}

/// The elements of an array's validated text.
fn split_array(text: &str) -> Option<Vec<Json<'_>>> {
    let b = text.as_bytes();
    let mut items = Vec::new();
    let mut i = skip_ws(b, 1);
    if b.get(i) == Some(&b']') {
        return Some(items);
    }
    loop {
        let end = value_end(b, i)?;
        items.push(Json(text.get(i..end)?));
        i = skip_ws(b, end);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b']' => return Some(items),
            _ => return None,
        }
    }
}

/// Whether a string literal's text holds a backslash: eight bytes at a time for the many
/// short ids and names, memchr for long texts (its set-up costs more than a short loop).
fn has_escape(text: &str) -> bool {
    let b = text.as_bytes();
    if b.len() >= 32 {
        return memchr::memchr(b'\\', b).is_some();
    }
    any_in_words(b, |w| has_byte(w, b'\\'), |c| c == b'\\')
}

/// A JSON string's text, borrowed when it holds no escapes; a lone surrogate (`"\ud83d"`,
/// what JavaScript writes for an emoji cut in half) made U+FFFD, as Go's encoding/json and
/// browsers decode it: a message's text keeps its other characters, and a delivery is not
/// refused over one (SPEC §7: "nothing verified is ever dropped").
pub fn as_str(raw: Json<'_>) -> Option<Cow<'_, str>> {
    decoded_str(raw).map(|(text, _)| text)
}

/// A JSON string's text only when it decodes exactly: for ids and secrets, where two
/// strings made the same by U+FFFD must not count as one (a dedupe hit, a matching key).
pub fn as_exact_str(raw: Json<'_>) -> Option<Cow<'_, str>> {
    decoded_str(raw).and_then(|(text, replaced)| (!replaced).then_some(text))
}

/// A JSON string's text, and whether a lone surrogate in it was made U+FFFD.
fn decoded_str(raw: Json<'_>) -> Option<(Cow<'_, str>, bool)> {
    let text = raw.0;
    if raw.first_byte() != b'"' || text.len() < 2 {
        return None;
    }
    let inner = &text[1..text.len() - 1];
    if !has_escape(inner) {
        return Some((Cow::Borrowed(inner), false));
    }
    decode_lossy(text).map(|(text, replaced)| (Cow::Owned(text), replaced))
}

/// A checked string literal (quotes included) decoded, each lone surrogate made U+FFFD; and
/// whether there was one. serde_json decodes it (as bytes, where it writes a lone surrogate
/// as WTF-8 instead of refusing it); it has no lossy mode of its own, hence the pass after.
fn decode_lossy(literal: &str) -> Option<(String, bool)> {
    struct Wtf8;
    impl<'de> Visitor<'de> for Wtf8 {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
    }
    let mut de = serde_json::Deserializer::from_str(literal);
    let bytes = de.deserialize_bytes(Wtf8).ok()?;
    utf8_lossy_surrogates(bytes)
}

/// A value's text with each lone surrogate escape (`\ud83d` without its low half after it,
/// or a low half alone) written `\ufffd` instead, as its strings decode (`as_str`); `None`
/// when it holds none, the common case. `raw` keeps the body's literals, but an event must
/// be read by every JSON parser, and strict ones (serde_json; I-JSON, RFC 7493) refuse a
/// whole document over one lone surrogate. Both escapes are six bytes: nothing moves.
fn without_lone_surrogates(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let unit = |at: usize| -> Option<u16> {
        let hex = text.get(at..at + 4)?;
        (b.get(at.checked_sub(2)?..at)? == b"\\u")
            .then(|| u16::from_str_radix(hex, 16).ok())
            .flatten()
    };
    let mut lone = Vec::new();
    let mut i = 0;
    // In valid JSON every backslash starts an escape inside a string.
    while let Some(at) = b.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        i += at;
        match unit(i + 2) {
            Some(0xD800..=0xDBFF) if matches!(unit(i + 8), Some(0xDC00..=0xDFFF)) => i += 12,
            Some(0xD800..=0xDFFF) => {
                lone.push(i);
                i += 6;
            }
            _ => i += 2,
        }
    }
    if lone.is_empty() {
        return None;
    }
    let mut repaired = text.to_owned();
    for at in lone {
        repaired.replace_range(at..at + 6, "\\ufffd");
    }
    Some(repaired)
}

/// WTF-8 made UTF-8: each surrogate's three bytes (`ED A0..BF 80..BF`) become U+FFFD's
/// (`EF BF BD`, as many), so the text keeps its length and everything else in it.
fn utf8_lossy_surrogates(mut bytes: Vec<u8>) -> Option<(String, bool)> {
    let mut replaced = false;
    let mut i = 0;
    while let Some(at) = memchr::memchr(0xED, &bytes[i..]) {
        i += at;
        if bytes.get(i + 1).is_some_and(|&b| b >= 0xA0) && i + 2 < bytes.len() {
            bytes[i..i + 3].copy_from_slice("\u{FFFD}".as_bytes());
            replaced = true;
        }
        i += 1;
    }
    String::from_utf8(bytes).ok().map(|text| (text, replaced))
}

/// A string of the body on its way into the event. Without escapes it is written back as
/// the body's own literal, byte for byte: a valid JSON string literal without a backslash
/// holds no quote, backslash or control character, so it needs no escaping, and re-escaping
/// (serde_json checks every byte) is the largest cost of writing an event with a long text.
/// With escapes it is decoded (a lone surrogate made U+FFFD) and written anew.
#[derive(Debug, Clone)]
pub enum Text<'a> {
    Literal(Json<'a>),
    Decoded(Cow<'a, str>),
}

impl<'a> Text<'a> {
    pub fn from_static(s: &'static str) -> Text<'a> {
        Text::Decoded(Cow::Borrowed(s))
    }

    /// Writes the string as JSON.
    pub fn write<O: JsonOut>(&self, out: &mut O) {
        match self {
            Text::Literal(raw) => out.literal(*raw),
            Text::Decoded(text) => out.string(text),
        }
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Text::Literal(raw) => raw.serialize(s),
            Text::Decoded(text) => s.serialize_str(text),
        }
    }
}

/// Writes `text` as a JSON string (serde_json's escaping). Most strings an event writes (ids,
/// names, types) need none, and then are copied between quotes as they are.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    if !needs_escape(text.as_bytes()) {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit of every byte of `w` below `n` (n ≤ 128): (w - n..) & !w & 0x80.. A borrow
/// may also flag a byte after the first such, never one before it, so the lowest set bit
/// (of a little-endian read) is exact. With n = 1 these are the zero bytes.
const fn bytes_below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * n as u64) & !w & HIGHS
}

/// Whether a word has a byte below `n` (n ≤ 128).
const fn has_byte_below(w: u64, n: u8) -> bool {
    bytes_below(w, n) != 0
}

/// Whether a word holds byte `b`.
const fn has_byte(w: u64, b: u8) -> bool {
    has_byte_below(w ^ (ONES * b as u64), 1)
}

/// Whether serde_json would escape anything in `b`: a quote, a backslash or a control
/// character (below 0x20); nothing else is escaped.
fn needs_escape(b: &[u8]) -> bool {
    any_in_words(
        b,
        |w| has_byte_below(w, 0x20) || has_byte(w, b'"') || has_byte(w, b'\\'),
        |c| c < 0x20 || c == b'"' || c == b'\\',
    )
}

/// Whether `word` holds for one of `b`'s 8-byte words, or `byte` for one of the bytes left
/// over at its end.
fn any_in_words(b: &[u8], word: impl Fn(u64) -> bool, byte: impl Fn(u8) -> bool) -> bool {
    let mut words = b.chunks_exact(8);
    words
        .by_ref()
        .any(|w| word(u64::from_ne_bytes(w.try_into().unwrap_or([0; 8]))))
        || words.remainder().iter().any(|&c| byte(c))
}

/// Where hand-written JSON goes: bytes of its own, strings to escape, and values copied
/// from the body as they are (which a writer may share instead of copy).
pub trait JsonOut {
    fn raw(&mut self, bytes: &[u8]);
    fn string(&mut self, text: &str);
    fn literal(&mut self, value: Json<'_>);
}

/// Writes into chunks, sharing long literals with the body instead of copying them: an
/// event carries its message text and `raw` from the body, so for a 64 KiB delivery this
/// saves copying (and holding) twice the body per request. Short ones are copied: a chunk
/// of its own costs more than copying a few hundred bytes.
pub struct SharingOut<'b> {
    body: &'b bytes::Bytes,
    buf: Vec<u8>,
    chunks: BodyChunks,
}

thread_local! {
    /// Event buffers given back once their event was sent, for the next events on this
    /// thread. An event is a few KiB, too large for glibc's per-thread cache of small blocks,
    /// so each new buffer took the allocator's slow path (callgrind: 0.7 % of a delivery).
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An event buffer that goes back to `SPARE` when its `Bytes` is dropped.
struct Recycled(Vec<u8>);

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Recycled {
    /// A spare buffer of this thread's, or a new one.
    fn take() -> Vec<u8> {
        SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default()
    }

    /// Buffers larger than this are freed, not kept.
    const MAX_CAPACITY: usize = 16 * 1024;
    /// At most this many are kept per thread (about the deliveries one worker has in flight).
    const MAX_SPARE: usize = 32;
}

impl Drop for Recycled {
    fn drop(&mut self) {
        if self.0.capacity() > Self::MAX_CAPACITY {
            return;
        }
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        // `try_with`: a thread being torn down has no spare list any more.
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < Self::MAX_SPARE {
                spare.push(buf);
            }
        });
    }
}

/// A body in chunks: one, unless long literals were shared (no allocation for the list
/// in the common case).
pub type BodyChunks = smallvec::SmallVec<[bytes::Bytes; 2]>;

impl<'b> SharingOut<'b> {
    /// Literals at least this long are shared.
    const SHARE_FROM: usize = 4096;

    pub fn new(body: &'b bytes::Bytes) -> SharingOut<'b> {
        let mut buf = Recycled::take();
        buf.reserve(body.len().min(Self::SHARE_FROM) * 2 + 512);
        SharingOut {
            body,
            buf,
            chunks: BodyChunks::new(),
        }
    }

    /// The chunks, in order.
    pub fn finish(mut self) -> BodyChunks {
        if !self.buf.is_empty() {
            self.chunks
                .push(bytes::Bytes::from_owner(Recycled(self.buf)));
        }
        self.chunks
    }
}

impl JsonOut for SharingOut<'_> {
    fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    fn string(&mut self, text: &str) {
        write_str(&mut self.buf, text);
    }
    fn literal(&mut self, value: Json<'_>) {
        let text = value.0.as_bytes();
        let body = self.body.as_ptr() as usize;
        let at = text.as_ptr() as usize;
        let inside = at >= body && at + text.len() <= body + self.body.len();
        if text.len() < Self::SHARE_FROM || !inside {
            self.buf.extend_from_slice(text);
            return;
        }
        if !self.buf.is_empty() {
            let mut next = Recycled::take();
            next.reserve(512);
            let written = std::mem::replace(&mut self.buf, next);
            self.chunks
                .push(bytes::Bytes::from_owner(Recycled(written)));
        }
        self.chunks.push(self.body.slice_ref(text));
    }
}

impl JsonOut for Vec<u8> {
    fn raw(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn string(&mut self, text: &str) {
        write_str(self, text);
    }
    fn literal(&mut self, value: Json<'_>) {
        self.extend_from_slice(value.0.as_bytes());
    }
}

/// A JSON string as a [`Text`].
pub fn as_text(raw: Json<'_>) -> Option<Text<'_>> {
    if raw.first_byte() != b'"' {
        return None;
    }
    if has_escape(raw.0) {
        as_str(raw).map(Text::Decoded)
    } else {
        Some(Text::Literal(raw))
    }
}

/// An integer: a JSON number without fraction or exponent that fits in 64 bits.
pub fn as_integer(raw: Json<'_>) -> Option<i128> {
    let text = raw.0;
    let b = raw.first_byte();
    if !(b == b'-' || b.is_ascii_digit()) || text.contains(['.', 'e', 'E']) {
        return None;
    }
    let n: i128 = text.parse().ok()?;
    (i64::MIN as i128..=u64::MAX as i128)
        .contains(&n)
        .then_some(n)
}

/// An id: a non-empty string, or an integer written in decimal.
pub fn as_id(raw: Json<'_>) -> Option<Cow<'_, str>> {
    if let Some(s) = as_exact_str(raw) {
        return (!s.is_empty()).then_some(s);
    }
    as_integer(raw).map(|n| Cow::Owned(n.to_string()))
}

pub fn as_bool(raw: Json<'_>) -> Option<bool> {
    match raw.0 {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

pub fn as_array(raw: Json<'_>) -> Option<Vec<Json<'_>>> {
    if raw.first_byte() != b'[' {
        return None;
    }
    split_array(raw.0)
}

impl<'a> Object<'a> {
    /// Parses a body that must be a JSON object (any other JSON, or no JSON: `None`).
    pub fn parse(body: &'a [u8]) -> Option<Object<'a>> {
        let (entries, tape, text) = validate::object_entries(body)?;
        let escapes = tape.escapes;
        // Without a nested entry (a flat body, or only `{}` inside) there is nothing to keep.
        let nested = tape
            .into_complete()
            .filter(|entries| !entries.is_empty())
            .map(|entries| {
                Arc::new(Nested {
                    text,
                    entries,
                    escapes,
                })
            });
        Some(Object { entries, nested })
    }

    /// A nested value that is an object, split from its text.
    pub fn from_raw(raw: Json<'a>) -> Option<Object<'a>> {
        if raw.first_byte() != b'{' {
            return None;
        }
        split_object(raw.0).map(|entries| Object {
            entries,
            nested: None,
        })
    }

    /// The value of `key` (the last one, where a key repeats).
    pub fn get(&self, key: &str) -> Option<Json<'a>> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }
    pub fn string(&self, key: &str) -> Option<Cow<'a, str>> {
        self.get(key).and_then(as_str)
    }

    pub fn text(&self, key: &str) -> Option<Text<'a>> {
        self.get(key).and_then(as_text)
    }

    pub fn id(&self, key: &str) -> Option<Cow<'a, str>> {
        self.get(key).and_then(as_id)
    }

    /// The object at `key`.
    pub fn object(&self, key: &str) -> Option<Object<'a>> {
        self.get(key).and_then(|raw| self.object_value(raw))
    }

    /// `raw`, a value read from this object (at any depth, in arrays too), as an object:
    /// its entries from the tape `parse` made when there is one, else split from its text.
    pub fn object_value(&self, raw: Json<'a>) -> Option<Object<'a>> {
        if raw.first_byte() != b'{' {
            return None;
        }
        if let Some(nested) = &self.nested
            && let Some(entries) = nested.entries_of(raw)
        {
            return Some(Object {
                entries,
                nested: Some(Arc::clone(nested)),
            });
        }
        Object::from_raw(raw)
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(as_bool)
    }

    pub fn array(&self, key: &str) -> Option<Vec<Json<'a>>> {
        self.get(key).and_then(as_array)
    }

    /// A unix time in whole seconds (0 ..= 9999-12-31), as milliseconds.
    pub fn unix_seconds(&self, key: &str) -> Option<i64> {
        let n = self.get(key).and_then(as_integer)?;
        (0..=MAX_UNIX_S as i128)
            .contains(&n)
            .then(|| n as i64 * 1000)
    }

    /// A unix time in whole milliseconds (0 ..= 9999-12-31T23:59:59.999).
    pub fn unix_millis(&self, key: &str) -> Option<i64> {
        let n = self.get(key).and_then(as_integer)?;
        (0..=(MAX_UNIX_S as i128 * 1000 + 999))
            .contains(&n)
            .then_some(n as i64)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys, in order (repeats included).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_ref())
    }

    /// The entries to write as `raw`, leaving out `drop`: each key once (the last value
    /// counts, at the place of its first appearance, as JSON parsers read it), in order.
    pub fn raw_without(&self, drop: Option<&'static str>) -> RawObject<'_, 'a> {
        RawObject { object: self, drop }
    }
}

/// An object written back from its raw parts, nested values byte for byte.
pub struct RawObject<'o, 'a> {
    object: &'o Object<'a>,
    drop: Option<&'static str>,
}

impl RawObject<'_, '_> {
    /// The entries written: each key once, at its first place, with its last value (the
    /// one a parser of the body keeps).
    fn each(&self, mut f: impl FnMut(&Cow<'_, str>, Json<'_>)) {
        /// Up to this many entries, looking back and ahead is cheaper than hashing.
        const SCAN_UP_TO: usize = 32;
        let entries = &self.object.entries;
        let wanted = |k: &Cow<'_, str>| Some(k.as_ref()) != self.drop;
        if entries.len() <= SCAN_UP_TO {
            for (i, (k, _)) in entries.iter().enumerate() {
                if wanted(k) && !entries[..i].iter().any(|(earlier, _)| earlier == k) {
                    f(k, self.object.get(k).unwrap_or(entries[i].1));
                }
            }
            return;
        }
        // A large object is the sender's choice: scanning would be quadratic (a 1 MiB
        // body of 92k keys held a worker thread for 19 s). Each key's last place, taken
        // out at its first appearance, so a repeat finds nothing.
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
        for (i, (k, _)) in entries.iter().enumerate() {
            last.insert(k.as_ref(), i);
        }
        for (k, _) in entries {
            if let Some(at) = last.remove(k.as_ref())
                && wanted(k)
            {
                f(k, entries[at].1);
            }
        }
    }

    /// Whether a value may hold a lone surrogate's escape (`without_lone_surrogates`): not
    /// where `parse` saw no escape in the body's values (most bodies: no second pass).
    fn may_hold_surrogates(&self) -> bool {
        self.object.nested.as_ref().is_none_or(|n| n.escapes)
    }

    /// Writes the object: keys as they were (escaped anew only where the body escaped
    /// them), values byte for byte.
    pub fn write<O: JsonOut>(&self, out: &mut O) {
        out.raw(b"{");
        let mut first = true;
        let look = self.may_hold_surrogates();
        self.each(|k, value| {
            if !first {
                out.raw(b",");
            }
            first = false;
            match k {
                // Borrowed: the body's key literal had no escapes, so it needs none.
                Cow::Borrowed(k) => {
                    out.raw(b"\"");
                    out.raw(k.as_bytes());
                    out.raw(b"\"");
                }
                Cow::Owned(k) => out.string(k),
            }
            out.raw(b":");
            match look.then(|| without_lone_surrogates(value.0)).flatten() {
                None => out.literal(value),
                Some(repaired) => out.raw(repaired.as_bytes()),
            }
        });
        out.raw(b"}");
    }
}

impl Serialize for RawObject<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        let mut result = Ok(());
        let look = self.may_hold_surrogates();
        self.each(|k, value| {
            if result.is_ok() {
                result = match look.then(|| without_lone_surrogates(value.0)).flatten() {
                    None => map.serialize_entry(k.as_ref(), &value),
                    Some(repaired) => map.serialize_entry(k.as_ref(), &Json(&repaired)),
                };
            }
        });
        result?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(text: &str) -> Object<'_> {
        Object::parse(text.as_bytes()).expect("object")
    }

    /// The word-at-a-time check against the plain one: every length up to and past the
    /// memchr cut-over, a backslash at every place, between characters whose bytes differ
    /// from a backslash (0x5c) in one bit (`]` 0x5d, `|` 0x7c, U+0700 = 0xdc 0x80) or sit
    /// next to it (`[` 0x5b), which a wrong mask would take for one.
    #[test]
    fn has_escape_finds_a_backslash_anywhere() {
        for filler in ['a', '[', ']', '|', '\u{700}'] {
            for len in 0..40 {
                let plain: Vec<char> = std::iter::repeat_n(filler, len).collect();
                let text: String = plain.iter().collect();
                assert!(!has_escape(&text), "{text:?}");
                for at in 0..len {
                    let mut with = plain.clone();
                    with[at] = '\\';
                    let with: String = with.into_iter().collect();
                    assert!(has_escape(&with), "{with:?}");
                }
            }
        }
    }

    /// The copy-as-is path against serde_json: each ASCII byte (every control character,
    /// the quote, the backslash and their neighbours) and a multi-byte character, at every
    /// place of strings across the word boundaries.
    #[test]
    fn write_str_is_serde_json_byte_for_byte() {
        let chars = (0u8..0x80)
            .map(char::from)
            .chain(['é', '€', '\u{7f}', '\u{2028}']);
        for c in chars {
            for len in 0..20 {
                for at in 0..len {
                    let text: String = (0..len).map(|i| if i == at { c } else { 'x' }).collect();
                    let mut out = Vec::new();
                    write_str(&mut out, &text);
                    let expected = serde_json::to_vec(&text).expect("serde_json");
                    assert_eq!(out, expected, "{text:?}");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn write_str_matches_serde_json(text in ".*") {
            let mut out = b"[".to_vec();
            write_str(&mut out, &text);
            proptest::prop_assert_eq!(&out[1..], serde_json::to_vec(&text).expect("serde_json"));
        }
    }

    #[test]
    fn ids_are_nonempty_strings_or_64_bit_integers() {
        let o = obj(
            r#"{"a":"x","b":"","c":42,"d":-7,"e":1.0,"f":1e3,"g":18446744073709551615,"h":18446744073709551616,"i":true,"j":"\u0041"}"#,
        );
        assert_eq!(o.id("a").as_deref(), Some("x"));
        assert_eq!(o.id("b"), None);
        assert_eq!(o.id("c").as_deref(), Some("42"));
        assert_eq!(o.id("d").as_deref(), Some("-7"));
        assert_eq!(o.id("e"), None);
        assert_eq!(o.id("f"), None);
        assert_eq!(o.id("g").as_deref(), Some("18446744073709551615"));
        assert_eq!(o.id("h"), None);
        assert_eq!(o.id("i"), None);
        assert_eq!(o.id("j").as_deref(), Some("A"));
        assert_eq!(o.id("missing"), None);
    }

    #[test]
    fn unix_times_are_bounded_integers() {
        let o = obj(
            r#"{"a":0,"b":253402300799,"c":253402300800,"d":-1,"e":1.5,"f":"1","g":253402300799999,"h":253402300800000}"#,
        );
        assert_eq!(o.unix_seconds("a"), Some(0));
        assert_eq!(o.unix_seconds("b"), Some(253_402_300_799_000));
        assert_eq!(o.unix_seconds("c"), None);
        assert_eq!(o.unix_seconds("d"), None);
        assert_eq!(o.unix_seconds("e"), None);
        assert_eq!(o.unix_seconds("f"), None);
        assert_eq!(o.unix_millis("g"), Some(253_402_300_799_999));
        assert_eq!(o.unix_millis("h"), None);
    }

    /// Objects are equal by their entries, in order, keys decoded and value texts as they
    /// are, however they were read: what the tests holding `parse` to serde_json's reading
    /// rest on.
    #[test]
    fn objects_are_equal_entry_for_entry() {
        let same = r#"{"a":1,"b\u0041":[2]}"#;
        assert_eq!(obj(same), obj(same));
        assert_eq!(obj(same), obj(r#"{"a":1,"bA":[2]}"#));
        // Read from the tape or split from the text: the same object.
        let taped = obj(r#"{"n":{"x":1}}"#).object("n");
        assert!(taped.as_ref().is_some_and(|n| n.nested.is_some()));
        assert_eq!(taped, Object::from_raw(Json(r#"{"x":1}"#)));
        for other in [
            r#"{"a":1}"#,
            r#"{"a":1,"bA":[2],"c":3}"#,
            r#"{"bA":[2],"a":1}"#,
            r#"{"a":1.0,"bA":[2]}"#,
            r#"{"a":1,"bA":[ 2 ]}"#,
            r#"{"a":1,"ba":[2]}"#,
            r#"{}"#,
        ] {
            assert_ne!(obj(same), obj(other), "{other}");
        }
    }

    #[test]
    fn strings_are_read_borrowed_unless_escaped() {
        assert_eq!(as_str(Json(r#""""#)), Some(Cow::Borrowed("")));
        assert_eq!(as_str(Json(r#""a b""#)), Some(Cow::Borrowed("a b")));
        let decoded = as_str(Json(r#""\u0041\n""#));
        assert!(
            matches!(decoded, Some(Cow::Owned(ref s)) if s == "A\n"),
            "{decoded:?}"
        );
        for not_a_string in ["1", "null", "[\"a\"]", "{}"] {
            assert_eq!(as_str(Json(not_a_string)), None, "{not_a_string}");
        }
        // An id must not be empty, a string may be.
        assert_eq!(as_id(Json(r#""""#)), None);
        assert_eq!(as_id(Json("-12")).as_deref(), Some("-12"));
    }

    /// A value from another body (here the text right after this one's) is split from its
    /// own text, not looked up on this body's tape.
    #[test]
    fn a_value_from_elsewhere_is_split_from_its_text() {
        let both = r#"{"a":{"x":1}}{"b":{"y":2}}"#;
        let (first, second) = both.split_at(both.find("}{").expect("two bodies") + 1);
        let (first, second) = (obj(first), obj(second));
        assert!(first.nested.is_some());
        let y = second.get("b").expect("b");
        let read = first.object_value(y).expect("an object");
        assert_eq!(read.get("y").map(Json::get), Some("2"));
        assert_eq!(
            first.object("a").and_then(|a| a.get("x")).map(Json::get),
            Some("1")
        );
    }

    #[test]
    fn last_repeated_key_counts_and_raw_keeps_order_and_literals() {
        let o = obj(r#"{"b":1,"a":1.50,"b":2e0,"secret":"s","c":{"x" : 1}}"#);
        assert_eq!(o.get("b").map(Json::get), Some("2e0"));
        let raw = serde_json::to_string(&o.raw_without(Some("secret"))).expect("ser");
        assert_eq!(raw, r#"{"b":2e0,"a":1.50,"c":{"x" : 1}}"#);
    }

    #[test]
    fn nested_objects_split_where_strings_and_brackets_end() {
        let o = obj(
            r#"{"n" : { "a\"b" : "x\\\"}]{[" , "c\u0041":[1, {"d":"]}"}, [ ]] ,"e":-1.5e3 ,"f":{},"g":true
            ,"h":null,"a\"b":"last"} }"#,
        );
        let n = o.object("n").expect("nested");
        assert_eq!(
            n.keys().collect::<Vec<_>>(),
            ["a\"b", "cA", "e", "f", "g", "h", "a\"b"]
        );
        assert_eq!(n.string("a\"b").as_deref(), Some("last"));
        assert_eq!(n.get("cA").map(Json::get), Some(r#"[1, {"d":"]}"}, [ ]]"#));
        assert_eq!(n.get("e").map(Json::get), Some("-1.5e3"));
        assert_eq!(n.object("f").map(|f| f.is_empty()), Some(true));
        assert_eq!(n.bool("g"), Some(true));
        assert_eq!(n.get("h").map(Json::get), Some("null"));
        let list = n.array("cA").expect("array");
        assert_eq!(
            list.iter().map(|j| j.get()).collect::<Vec<_>>(),
            ["1", r#"{"d":"]}"}"#, "[ ]"]
        );
        // Written back: keys once, at their first place, last value; escaped keys anew.
        let mut out = Vec::new();
        n.raw_without(Some("h")).write(&mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"{"a\"b":"last","cA":[1, {"d":"]}"}, [ ]],"e":-1.5e3,"f":{},"g":true}"#
        );
    }

    #[test]
    fn large_objects_keep_first_places_and_last_values_too() {
        // Over the scanning limit: the hashed path must write what the scan writes.
        let mut body = String::from("{");
        for i in 0..40 {
            body.push_str(&format!("\"k{i}\":{i},"));
        }
        body.push_str(r#""k3":"again","k\u0030":[0],"k39":{"x":1}}"#);
        let o = obj(&body);
        let mut out = Vec::new();
        o.raw_without(Some("k7")).write(&mut out);
        let mut expected = String::from("{");
        for i in (0..40).filter(|i| *i != 7) {
            let value = match i {
                0 => "[0]".to_string(),
                3 => "\"again\"".to_string(),
                39 => r#"{"x":1}"#.to_string(),
                _ => i.to_string(),
            };
            expected.push_str(&format!("\"k{i}\":{value},"));
        }
        expected.pop();
        expected.push('}');
        assert_eq!(String::from_utf8(out).expect("utf-8"), expected);
    }

    #[test]
    fn long_literals_are_shared_with_the_body_not_copied() {
        let long = "y".repeat(5000);
        let body = bytes::Bytes::from(format!(r#"{{"a":"{long}","b":[1,2],"c":"short"}}"#));
        let o = Object::parse(&body).expect("object");
        let mut copied = Vec::new();
        o.raw_without(None).write(&mut copied);
        let mut sharing = SharingOut::new(&body);
        o.raw_without(None).write(&mut sharing);
        let chunks = sharing.finish();
        assert_eq!(chunks.concat(), copied);
        assert_eq!(chunks.len(), 3, "before, the shared literal, after");
        let start = body.as_ptr() as usize;
        let shared = chunks[1].as_ptr() as usize;
        assert!(shared > start && shared < start + body.len());
        assert_eq!(chunks[1].len(), long.len() + 2);
        // Not from this body (an escaped key, say): copied.
        let other = bytes::Bytes::from_static(b"{}");
        let mut elsewhere = SharingOut::new(&other);
        o.raw_without(None).write(&mut elsewhere);
        assert_eq!(elsewhere.finish().as_slice(), [bytes::Bytes::from(copied)]);
    }

    #[test]
    fn event_buffers_are_used_again_once_sent() {
        // On a thread of its own, so the spare list starts empty.
        std::thread::spawn(|| {
            let body = bytes::Bytes::from_static(br#"{"a":"x"}"#);
            let spare = || SPARE.with(|s| s.borrow().len());
            let mut out = SharingOut::new(&body);
            out.raw(b"{\"event\":1}");
            let first = out.finish();
            let at = first[0].as_ptr();
            assert_eq!(spare(), 0, "in use, not spare");
            drop(first);
            assert_eq!(spare(), 1, "given back when sent");
            let mut out = SharingOut::new(&body);
            out.raw(b"{}");
            let second = out.finish();
            assert_eq!((second[0].as_ptr(), &second[0][..]), (at, &b"{}"[..]));
            assert_eq!(spare(), 0);
            drop(second);
            // A long literal splits the event: the text written before it goes back too.
            let long = format!("\"{}\"", "y".repeat(SharingOut::SHARE_FROM));
            let body = bytes::Bytes::from(format!("{{\"t\":{long}}}"));
            let mut out = SharingOut::new(&body);
            out.raw(b"{\"text\":");
            out.literal(Json(
                &std::str::from_utf8(&body).expect("utf-8")[5..5 + long.len()],
            ));
            out.raw(b"}");
            let chunks = out.finish();
            let written: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
            assert_eq!(written, [&b"{\"text\":"[..], long.as_bytes(), b"}"]);
            assert_eq!(spare(), 0);
            drop(chunks);
            assert_eq!(spare(), 2, "both written chunks given back");
            // The list is bounded in length, and a buffer grown past 16 KiB (an event of a
            // long body) is freed, so a burst of large deliveries leaves no memory behind.
            while SPARE.with(|s| s.borrow_mut().pop()).is_some() {}
            drop(Recycled(Vec::with_capacity(Recycled::MAX_CAPACITY + 1)));
            assert_eq!(spare(), 0, "over 16 KiB: freed");
            drop(Recycled(Vec::with_capacity(Recycled::MAX_CAPACITY)));
            assert_eq!(spare(), 1, "16 KiB: kept");
            for _ in 0..2 * Recycled::MAX_SPARE {
                drop(Recycled(b"used".to_vec()));
            }
            assert_eq!(spare(), Recycled::MAX_SPARE);
            assert!(Recycled::take().is_empty(), "given back cleared");
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn only_objects_parse() {
        for text in ["[]", "1", "\"x\"", "null", "", "{", "{\"a\":}", "  {} x"] {
            assert!(Object::parse(text.as_bytes()).is_none(), "{text}");
        }
        assert!(Object::parse(b"  {}  ").is_some());
    }

    #[test]
    fn texts_pass_plain_literals_through_and_decode_escapes() {
        let o = obj(r#"{"a":"plain \u00e9 text","b":"caf\u00e9","c":5,"d":"\ud800"}"#);
        assert!(matches!(o.text("a"), None | Some(Text::Decoded(_))));
        let o = obj(r#"{"a":"plain text é","b":"caf\u00e9","c":5,"d":"\ud800"}"#);
        assert!(matches!(o.text("a"), Some(Text::Literal(_))));
        assert_eq!(
            serde_json::to_string(&o.text("a")).expect("ser"),
            r#""plain text é""#
        );
        assert_eq!(
            serde_json::to_string(&o.text("b")).expect("ser"),
            r#""café""#
        );
        assert!(o.text("c").is_none());
        // A lone surrogate is made U+FFFD; the rest of the text stays.
        assert_eq!(
            serde_json::to_string(&o.text("d")).expect("ser"),
            "\"\u{FFFD}\""
        );
    }

    /// Lone surrogates made U+FFFD, one each, wherever they sit; pairs and the characters
    /// whose UTF-8 starts with `ED` (U+D000–U+D7FF) kept; ids and `as_exact_str` refuse.
    #[test]
    fn lone_surrogates_become_replacement_characters_except_in_ids() {
        let cases = [
            (r#""hi \ud83d""#, "hi \u{FFFD}", true),
            (r#""\ud83d\ude00 ok""#, "\u{1F600} ok", false),
            (r#""\ude00\ud83d""#, "\u{FFFD}\u{FFFD}", true),
            (r#""\ud83d\u0041\ud83d\n""#, "\u{FFFD}A\u{FFFD}\n", true),
            (r#""\ud83d\ud83d\ude00""#, "\u{FFFD}\u{1F600}", true),
            (
                "\"\\ud7ff\\ue000 \u{D7FF}\\ud800\"",
                "\u{D7FF}\u{E000} \u{D7FF}\u{FFFD}",
                true,
            ),
            (r#""\ufffd\n""#, "\u{FFFD}\n", false),
        ];
        for (literal, text, replaced) in cases {
            let raw = Json(literal);
            assert_eq!(as_str(raw).as_deref(), Some(text), "{literal}");
            let exact = as_exact_str(raw);
            assert_eq!(exact.is_none(), replaced, "{literal}");
            assert_eq!(as_id(raw).is_none(), replaced, "{literal}");
            assert!(
                matches!(as_text(raw), Some(Text::Decoded(t)) if t == text),
                "{literal}"
            );
        }
        // In `raw` each lone surrogate's escape is written `\ufffd` (pairs, escaped
        // backslashes before a `u` and other escapes kept), so strict parsers read the event.
        let body = r#"{"a":"\ud83d\ude00 \\ud800 \ud83d","\udc00k":{"n\ud800":["\u00e9\udfff\ud800\n"]},"b":"\\\ud800"}"#;
        let want = r#"{"a":"\ud83d\ude00 \\ud800 \ufffd","@k":{"n\ufffd":["\u00e9\ufffd\ufffd\n"]},"b":"\\\ufffd"}"#
            .replace('@', "\u{FFFD}");
        let o = obj(body);
        let mut out = Vec::new();
        o.raw_without(None).write(&mut out);
        assert_eq!(String::from_utf8_lossy(&out), want);
        assert_eq!(
            serde_json::to_string(&o.raw_without(None)).expect("ser"),
            want
        );
        serde_json::from_slice::<serde_json::Value>(&out).expect("a strict parser reads it");
        assert_eq!(
            without_lone_surrogates(r#""\\ud800 \u0041 \ud83d\udc00""#),
            None
        );
        // Where `parse` saw no escape in the body's values, `raw` is not looked through;
        // a nested key's escape counts.
        let flat = |body| obj(body).nested.is_some_and(|n| !n.escapes);
        assert!(flat(r#"{"\ud800":"plain","b":{"c":"d"}}"#));
        assert!(!flat(r#"{"a":"\ud800","b":{"c":"d"}}"#));
        assert!(!flat(r#"{"a":[{"\udc00":1}]}"#));
        let o = obj(r#"{"a":[{"\udc00":1}]}"#);
        let mut out = Vec::new();
        o.raw_without(None).write(&mut out);
        assert_eq!(out, br#"{"a":[{"\ufffd":1}]}"#);
        // A key: it cannot match a key a platform names, and does not refuse the body.
        let o = obj(r#"{"typ\ud800":"a","\ud800":"b","type":"c"}"#);
        assert_eq!(o.string("type").as_deref(), Some("c"));
        assert_eq!(o.string("\u{FFFD}").as_deref(), Some("b"));
    }

    #[test]
    fn strings_decode_escapes() {
        let o = obj(r#"{"a":"\u003cb\u003e","b":"plain","c":5}"#);
        assert_eq!(o.string("a").as_deref(), Some("<b>"));
        assert!(matches!(o.string("b"), Some(Cow::Borrowed("plain"))));
        assert_eq!(o.string("c"), None);
    }
}
