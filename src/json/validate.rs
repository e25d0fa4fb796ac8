//! One pass over a body that must be a JSON object: checks all of it (RFC 8259, as
//! serde_json reads it) and gives the top level's entries as (key, value text) pairs, and
//! where the nested objects' entries are (`Tape`).
//!
//! Written by hand, not left to serde_json, for speed on long bodies: serde_json reaches a
//! value's borrowed text (`&RawValue`) through its deserializer and scans strings eight
//! bytes at a time, where this scans long strings with memchr2 and a vector check
//! (criterion, `parse/*`: 64 KiB 3.4–3.8 against 10.3–10.6 µs; 1 KiB about the same, 0.49–
//! 0.56 against 0.53–0.56 µs, with ~20 % fewer instructions). It is
//! held to serde_json's verdict, and to its entries, by tests that run both on the same
//! bytes (`tests` below: every short token sequence, every escape, proptest mutants) and a
//! fuzz target (`fuzz/fuzz_targets/json_object.rs`), so no body reads one way here and
//! another in the app behind: `Object`'s serde `Deserialize` stays as that oracle.
//!
//! What it accepts is exactly what serde_json accepts (`serde_reading`): whitespace is
//! space, tab, LF and CR; strings hold no byte below 0x20 and only the escapes `\" \\ \/
//! \b \f \n \r \t \uXXXX` (a lone surrogate in a `\u` is let through: serde_json lets it
//! through a value it does not decode and a key it reads as bytes; a key with an escape is
//! decoded by serde_json, a lone surrogate then made U+FFFD); numbers follow the JSON grammar (no leading zeros, no bare `.` or
//! `e`); nesting has no depth limit (serde_json skips a value without recursion, and so
//! does this); and the whole body is UTF-8.

use std::borrow::Cow;

use smallvec::SmallVec;

use super::{Entries, Json, ONES, bytes_below, key_text, skip_ws};

/// Where one entry of a nested object sits in the body: byte offsets of the object's `{`,
/// its key's quotes and its value.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct NestedEntry {
    pub object: u32,
    pub key: u32,
    pub key_end: u32,
    pub value: u32,
    pub value_end: u32,
    /// The key holds an escape (decoded when asked for, as `split_object` does).
    pub escaped: bool,
}

/// The entries of every object nested in the body, recorded on the way, so that a
/// normalizer asking for `payload`, then `payload.contact`, needs no second scan of their
/// text (`split_object` took ~7 % of a 1 KiB delivery's instructions). Bounded, since the
/// body is the sender's: past `MAX_DEPTH` or `MAX_ENTRIES` nothing is kept and nested
/// objects are split from their text again, as before.
#[derive(Debug)]
pub(super) struct Tape {
    entries: Vec<NestedEntry>,
    /// The entry being read in each open object, by depth (1 is a top-level value).
    pending: [NestedEntry; Tape::MAX_DEPTH],
    complete: bool,
    /// A string in a value (nested keys included) holds an escape.
    pub escapes: bool,
}

impl Tape {
    /// Deeper than webhooks nest (spika's `data.message.body` is 3).
    const MAX_DEPTH: usize = 8;
    /// 12 KiB at most; a typical webhook has a few dozen nested entries.
    const MAX_ENTRIES: usize = 512;

    fn new(body_len: usize) -> Tape {
        Tape {
            entries: Vec::new(),
            pending: [NestedEntry::default(); Tape::MAX_DEPTH],
            // Offsets are kept as u32.
            complete: u32::try_from(body_len).is_ok(),
            escapes: false,
        }
    }

    /// The tape, if it holds every entry of every nested object.
    pub fn into_complete(self) -> Option<Vec<NestedEntry>> {
        self.complete.then_some(self.entries)
    }

    /// A non-empty object opens at `at`, at `depth`.
    fn opens(&mut self, depth: usize, at: usize) {
        match self.pending.get_mut(depth - 1) {
            Some(entry) => entry.object = at as u32,
            None => self.complete = false,
        }
    }

    /// A key at `key..key_end` of the object open at `depth`, whose value starts at `value`.
    fn key(&mut self, depth: usize, key: usize, key_end: usize, escaped: bool, value: usize) {
        if let Some(entry) = self.pending.get_mut(depth - 1) {
            (entry.key, entry.key_end, entry.escaped) = (key as u32, key_end as u32, escaped);
            entry.value = value as u32;
        }
    }

    /// The value of the pending entry of the object at `depth` ends at `value_end`.
    fn entry_ends(&mut self, depth: usize, value_end: usize) {
        if !self.complete {
            return;
        }
        if self.entries.len() == Tape::MAX_ENTRIES {
            self.complete = false;
            self.entries = Vec::new();
            return;
        }
        if let Some(entry) = self.pending.get(depth - 1) {
            if self.entries.capacity() == 0 {
                // Room for a typical webhook's nesting at once, not grown 4, 8, 16, 32.
                self.entries.reserve_exact(32);
            }
            self.entries.push(NestedEntry {
                value_end: value_end as u32,
                ..*entry
            });
        }
    }
}

/// The entries of the object that is the whole of `b`, the tape of its nested objects'
/// entries, and `b` as text; `None` if `b` is not a JSON object.
pub(super) fn object_entries(b: &[u8]) -> Option<(Entries<'_>, Tape, &str)> {
    let mut i = skip_ws(b, 0);
    (b.get(i) == Some(&b'{')).then_some(())?;
    let text = std::str::from_utf8(b).ok()?;
    let mut entries = Vec::with_capacity(16);
    let mut tape = Tape::new(b.len());
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let (key, value_at) = key(text, i)?;
            let end = value_end(b, value_at, &mut tape)?;
            entries.push((key, Json(text.get(value_at..end)?)));
            i = skip_ws(b, end);
            match *b.get(i)? {
                b',' => i = skip_ws(b, i + 1),
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(b, i) == b.len()).then_some((entries, tape, text))
}

/// A top-level key at `i` and its colon: the key (decoded if it holds an escape) and where
/// its value starts.
fn key(text: &str, i: usize) -> Option<(Cow<'_, str>, usize)> {
    let (end, escaped) = string_end(text.as_bytes(), i)?;
    let key = key_text(text.get(i..end)?, escaped)?;
    Some((key, after_colon(text.as_bytes(), end)?))
}

/// A key at `i` of the object open at `depth`, checked but not decoded (serde_json only
/// skips it, so a lone surrogate passes there) and put on the tape: where its value starts.
fn nested_key(b: &[u8], i: usize, depth: usize, tape: &mut Tape) -> Option<usize> {
    let (end, escaped) = string_end(b, i)?;
    tape.escapes |= escaped;
    let value = after_colon(b, end)?;
    tape.key(depth, i, end, escaped, value);
    Some(value)
}

fn after_colon(b: &[u8], key_end: usize) -> Option<usize> {
    let colon = skip_ws(b, key_end);
    (b.get(colon) == Some(&b':')).then_some(skip_ws(b, colon + 1))
}

/// The string starting at `i` (its opening quote), checked: just past its closing quote,
/// and whether it holds an escape.
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    (b.get(i) == Some(&b'"')).then_some(())?;
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j = next_quote_or_escape(b, j)?;
        if b[j] == b'"' {
            return Some((j + 1, escaped));
        }
        escaped = true;
        j += match *b.get(j + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
            b'u' => {
                b.get(j + 2..j + 6)?
                    .iter()
                    .all(u8::is_ascii_hexdigit)
                    .then_some(())?;
                6
            }
            _ => return None,
        };
    }
}

/// Where the next quote or backslash is, from `i` on in a string, or `None` if a control
/// character (not allowed in a JSON string) comes first or nothing does. Eight bytes at a
/// time for the first 32, since most of a webhook's strings are short keys, ids and names;
/// past them memchr2 (AVX2 where the CPU has it), and the run it skipped is checked for
/// control characters by its smallest byte, a loop the compiler turns into vector compares.
fn next_quote_or_escape(b: &[u8], mut i: usize) -> Option<usize> {
    for _ in 0..4 {
        let Some(word) = b.get(i..i + 8) else { break };
        let w = u64::from_le_bytes(word.try_into().ok()?);
        let special = bytes_below(w, 0x20)
            | bytes_below(w ^ (ONES * u64::from(b'"')), 1)
            | bytes_below(w ^ (ONES * u64::from(b'\\')), 1);
        if special != 0 {
            let at = i + (special.trailing_zeros() / 8) as usize;
            return (b[at] >= 0x20).then_some(at);
        }
        i += 8;
    }
    let rest = b.get(i..)?;
    let n = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[..n].iter().fold(u8::MAX, |low, &c| low.min(c)) >= 0x20).then_some(i + n)
}

fn digits_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// The number starting at `i`, checked against JSON's grammar: just past it.
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits_end(b, i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits_end(b, i + 1);
        (end > i + 1).then_some(())?;
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits_end(b, i);
        (end > i).then_some(())?;
        i = end;
    }
    // What follows ("01", "1x") is the container's to judge: only `,`, a closing bracket or
    // whitespace may.
    Some(i)
}

/// The value starting at `i`, checked: just past it, with the entries of the objects in it
/// on `tape`. Containers are followed with a stack of the brackets that close them, not by
/// recursion, so no depth can overflow the stack.
fn value_end(b: &[u8], mut i: usize, tape: &mut Tape) -> Option<usize> {
    // The closing bracket of every container open around `i`.
    let mut open: SmallVec<[u8; 32]> = SmallVec::new();
    loop {
        // At the start of a value.
        i = match *b.get(i)? {
            b'"' => {
                let (end, escaped) = string_end(b, i)?;
                tape.escapes |= escaped;
                end
            }
            open_bracket @ (b'{' | b'[') => {
                // `}` and `]` are two past `{` and `[` in ASCII.
                let close = open_bracket + 2;
                let first = skip_ws(b, i + 1);
                if b.get(first) == Some(&close) {
                    first + 1
                } else {
                    open.push(close);
                    i = if close == b'}' {
                        tape.opens(open.len(), i);
                        nested_key(b, first, open.len(), tape)?
                    } else {
                        first
                    };
                    continue;
                }
            }
            b't' => literal_end(b, i, b"true")?,
            b'f' => literal_end(b, i, b"false")?,
            b'n' => literal_end(b, i, b"null")?,
            _ => number_end(b, i)?,
        };
        // After a value: close what it ends, up to the next value, if any.
        loop {
            let Some(&close) = open.last() else {
                return Some(i);
            };
            if close == b'}' {
                tape.entry_ends(open.len(), i);
            }
            i = skip_ws(b, i);
            match *b.get(i)? {
                b',' => {
                    let next = skip_ws(b, i + 1);
                    i = if close == b'}' {
                        nested_key(b, next, open.len(), tape)?
                    } else {
                        next
                    };
                    break;
                }
                c if c == close => {
                    open.pop();
                    i += 1;
                }
                _ => return None,
            }
        }
    }
}

fn literal_end(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

#[cfg(test)]
mod tests {
    use super::super::Object;
    use super::*;
    use proptest::prelude::*;

    /// serde_json's verdict and entries.
    fn oracle(body: &[u8]) -> Option<Object<'_>> {
        super::super::serde_reading(body)
    }

    fn parsed(body: &[u8]) -> Option<Object<'_>> {
        Object::parse(body)
    }

    fn same_as_serde(body: &[u8]) {
        let ours = parsed(body);
        assert_eq!(ours, oracle(body), "{:?}", String::from_utf8_lossy(body));
        if let Some(object) = ours {
            nested_as_split(&object);
        }
    }

    /// Every object nested in `object` (in its values, and in arrays among them) has on the
    /// tape the entries `split_object` finds in its text, and so on down.
    fn nested_as_split(object: &Object<'_>) {
        let Some(nested) = &object.nested else { return };
        let mut values: Vec<Json<'_>> = object.entries.iter().map(|(_, v)| *v).collect();
        while let Some(value) = values.pop() {
            match value.first_byte() {
                b'[' => values.extend(super::super::as_array(value).unwrap_or_default()),
                b'{' => {
                    let split = Object::from_raw(value).map(|o| o.entries);
                    let taped = nested.entries_of(value);
                    // `None` from the tape only where a key does not decode, and then the
                    // split refuses it too.
                    if taped.is_some() || split.is_some() {
                        assert_eq!(taped, split, "{:?}", value.get());
                    }
                    values.extend(taped.unwrap_or_default().into_iter().map(|(_, v)| v));
                }
                _ => {}
            }
        }
    }

    /// The tape is used for a webhook's nesting, and given up (nested objects then split
    /// from their text, with the same entries) past its depth or size.
    #[test]
    fn nested_objects_come_from_the_tape_within_its_bounds() {
        let body = br#"{"a":{"b":{"c":{"d":1}},"e":[{"f":2}]},"g":{}}"#;
        let o = parsed(body).expect("object");
        let nested = o.nested.as_ref().expect("a tape");
        assert_eq!(nested.entries.len(), 5, "a.b, a.e, b.c, c.d, e[0].f");
        let c = o
            .object("a")
            .and_then(|a| a.object("b"))
            .and_then(|b| b.object("c"));
        assert!(c.as_ref().is_some_and(|c| c.nested.is_some()));
        assert_eq!(c.and_then(|c| c.get("d")).map(Json::get), Some("1"));
        assert_eq!(o.object("g").map(|g| g.is_empty()), Some(true));
        // An object in an array comes from the tape too (funtek's members, reply profiles).
        let a = o.object("a").expect("a");
        let first = a.array("e").and_then(|e| e.first().copied()).expect("e[0]");
        let f = a.object_value(first).expect("e[0] an object");
        assert!(f.nested.is_some());
        assert_eq!(f.get("f").map(Json::get), Some("2"));
        same_as_serde(body);

        let deep = |depth: usize| {
            format!(
                "{{\"a\":{}1{}}}",
                "{\"b\":".repeat(depth),
                "}".repeat(depth)
            )
        };
        let within = deep(Tape::MAX_DEPTH);
        assert!(parsed(within.as_bytes()).is_some_and(|o| o.nested.is_some()));
        let past = deep(Tape::MAX_DEPTH + 1);
        let o = parsed(past.as_bytes()).expect("object");
        assert!(o.nested.is_none());
        let mut inner = o.object("a");
        for _ in 0..Tape::MAX_DEPTH {
            inner = inner.and_then(|o| o.object("b"));
        }
        assert_eq!(inner.and_then(|o| o.get("b")).map(Json::get), Some("1"));

        let wide = |n: usize| {
            let keys: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            format!("{{\"a\":{{{}}}}}", keys.join(","))
        };
        assert!(parsed(wide(Tape::MAX_ENTRIES).as_bytes()).is_some_and(|o| o.nested.is_some()));
        let past = wide(Tape::MAX_ENTRIES + 1);
        let o = parsed(past.as_bytes()).expect("object");
        assert!(o.nested.is_none());
        let a = o.object("a").expect("split from its text");
        assert_eq!(a.keys().count(), Tape::MAX_ENTRIES + 1);
        same_as_serde(past.as_bytes());
    }

    #[test]
    fn reads_what_serde_json_reads_and_refuses_what_it_refuses() {
        let deep_arrays = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_objects = format!(
            "{{\"a\":{}1{}}}",
            "{\"b\":".repeat(100_000),
            "}".repeat(100_000)
        );
        let read: &[&[u8]] = &[
            br#"{}"#,
            b" \t\r\n{ } \n",
            br#"{"a":1,"b":[1,2,{"c":null}],"d":{"e":"f\"g"},"a":true}"#,
            br#"{"k\u00e9y":"v","\n":"\ud800","x":"\/\b\f\n\r\t\\"}"#,
            br#"{"a":-0.5e+10,"b":0,"c":-0,"d":1E5,"e":12.0e-3}"#,
            br#"{"a":[[[[[[[[[[[[[[]]]]]]]]]]]]]]}"#,
            "{\"é\":\"ü€😀\"}".as_bytes(),
            b"{\"a\":\"\x7f\"}",
            // A nested key is only skipped: a lone surrogate passes (fuzzing found this).
            br#"{"a":{"b\udddd":1}}"#,
            br#"{"a":[{"\ud800":{"\udc00x":[]}}]}"#,
            // A top-level key's lone surrogate is made U+FFFD: the body is not refused.
            br#"{"\ud800":1,"a\udc00\ud83d\ude00":2,"\ud83d\ud83d":3}"#,
            // Deep nesting: not refused for depth, and not recursed into.
            deep_arrays.as_bytes(),
            deep_objects.as_bytes(),
        ];
        let refused: &[&[u8]] = &[
            b"",
            b"[]",
            b"\"a\"",
            b"\xef\xbb\xbf{}",
            b"\x0c{}",
            br#"{"a":1,}"#,
            br#"{"a":[1,]}"#,
            br#"{,"a":1}"#,
            br#"{"a" 1}"#,
            br#"{"a":1 "b":2}"#,
            br#"{"a":01}"#,
            br#"{"a":-}"#,
            br#"{"a":1.}"#,
            br#"{"a":.5}"#,
            br#"{"a":1e}"#,
            br#"{"a":1e+}"#,
            br#"{"a":+1}"#,
            br#"{"a":0x1}"#,
            br#"{"a":tru}"#,
            br#"{"a":nulll}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\u12g4"}"#,
            b"{\"a\":\"\x01\"}",
            // Control characters and bytes that are not UTF-8 in keys, beside an escape too.
            b"{\"\x01\":1}",
            b"{\"\\n\x01\":1}",
            b"{\"\\n\xff\":1}",
            b"{\"a\":{\"\\n\x1f\":1}}",
            // A surrogate written raw (not UTF-8) beside an escape (fuzzing found this one
            // in the oracle, which reads keys as bytes).
            b"{\"\\n\xed\xa0\x80\":1}",
            b"{\"a\":\"\\n\xed\xa0\x80\"}",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":1}x",
            b"{\"a\":1}}",
            br#"{"a":[}"#,
            br#"{"a":{]}"#,
            br#"{"a":"#,
            br#"{"a""#,
            br#"{"a":"b"#,
            br#"{"a":"b\"#,
            br#"{"a":1"#,
            br#"{"a":{"b":1,}}"#,
            br#"{"a":{"b"}}"#,
            br#"{"a":{1:2}}"#,
            br#"{1:2}"#,
        ];
        for (bodies, is_read) in [(read, true), (refused, false)] {
            for body in bodies {
                same_as_serde(body);
                let start = &body[..body.len().min(80)];
                assert_eq!(
                    parsed(body).is_some(),
                    is_read,
                    "{:?}",
                    String::from_utf8_lossy(start)
                );
            }
        }
    }

    /// Every byte after a backslash, in a value and in a key, and every byte as a value's
    /// first.
    #[test]
    fn every_escape_and_every_first_byte_reads_as_serde_json_reads_it() {
        for c in 0..=255u8 {
            for body in [
                [br#"{"a":"\"#.as_slice(), &[c], br#"x"}"#].concat(),
                [br#"{"\"#.as_slice(), &[c], br#"x":1}"#].concat(),
                [br#"{"a":"\u00"#.as_slice(), &[c], br#"0"}"#].concat(),
                [br#"{"a":"#.as_slice(), &[c], b"}"].concat(),
                [br#"{"a":"#.as_slice(), &[c, c], b"}"].concat(),
            ] {
                same_as_serde(&body);
            }
        }
    }

    /// Every sequence of up to four tokens (each a piece of JSON or a byte that breaks it)
    /// as an object's value, and three as a whole body.
    #[test]
    fn every_short_token_sequence_reads_as_serde_json_reads_it() {
        const TOKENS: &[&str] = &[
            "{", "}", "[", "]", ",", ":", "\"", "\"k\"", "\\", "\\u00", "0", "1", "-", ".", "e",
            "+", "true", "n", " ", "\u{1}", "é",
        ];
        let mut bodies = 0;
        let mut accepted = 0;
        let mut tokens = [0usize; 4];
        for len in 0..=4 {
            let count = TOKENS.len().pow(len as u32);
            for mut n in 0..count {
                for t in tokens.iter_mut().take(len) {
                    *t = n % TOKENS.len();
                    n /= TOKENS.len();
                }
                let value: String = tokens[..len].iter().map(|&t| TOKENS[t]).collect();
                let body = format!("{{\"a\":{value}}}");
                same_as_serde(body.as_bytes());
                accepted += usize::from(oracle(body.as_bytes()).is_some());
                if len <= 3 {
                    same_as_serde(value.as_bytes());
                }
                bodies += 1;
            }
        }
        assert!(bodies > 190_000 && accepted > 100, "{bodies} {accepted}");
    }

    /// Strings of every length up to and past the vector loops' widths, with one special
    /// byte (or an escape) at every place.
    #[test]
    fn strings_are_checked_at_every_place() {
        for len in 0..80 {
            for at in 0..len {
                for special in [
                    "\"", "\\", "\\n", "\\u0041", "\u{0}", "\u{1f}", "\u{7f}", "é",
                ] {
                    let mut s = "x".repeat(len);
                    s.replace_range(at..at + 1, special);
                    same_as_serde(format!("{{\"a\":\"{s}\"}}").as_bytes());
                    same_as_serde(format!("{{\"{s}\":1}}").as_bytes());
                }
            }
        }
    }

    /// A JSON value with random whitespace, as text.
    fn json_text() -> impl Strategy<Value = String> {
        let ws = prop_oneof![Just(""), Just(" "), Just("\n\t"), Just("\r")];
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
            any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
            "[a-z\\\\\"/\\n]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            let ws = ws.clone();
            prop_oneof![
                prop::collection::vec((inner.clone(), ws.clone()), 0..6).prop_map(|items| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(v, w)| format!("{w}{v}{w}"))
                        .collect();
                    format!("[{}]", items.join(","))
                }),
                prop::collection::vec(("[a-z\\\\\"]{0,6}", inner, ws), 0..6).prop_map(|entries| {
                    let entries: Vec<String> = entries
                        .into_iter()
                        .map(|(k, v, w)| {
                            format!(
                                "{w}{}{w}:{w}{v}",
                                serde_json::to_string(&k).unwrap_or_default()
                            )
                        })
                        .collect();
                    format!("{{{}}}", entries.join(","))
                }),
            ]
        })
    }

    proptest! {
        /// Valid documents, and the same with a byte changed, dropped or put in.
        #[test]
        fn documents_and_their_mutants_read_as_serde_json_reads_them(
            entries in prop::collection::vec(("[a-z]{0,4}", json_text()), 0..6),
            edit in 0usize..3,
            at in any::<prop::sample::Index>(),
            byte in prop::sample::select(b"{}[],:\"\\0123456789-+.eEtrufalsn \t\n\x00\x1f\x7f\xc3\xa9".to_vec()),
        ) {
            let body: Vec<String> = entries.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let body = format!("{{{}}}", body.join(","));
            same_as_serde(body.as_bytes());
            prop_assert!(parsed(body.as_bytes()).is_some(), "{}", body);
            let mut mutant = body.into_bytes();
            let at = at.index(mutant.len() + 1);
            match edit {
                0 if at < mutant.len() => mutant[at] = byte,
                1 if at < mutant.len() => { mutant.remove(at); }
                _ => mutant.insert(at, byte),
            }
            same_as_serde(&mutant);
        }
    }
}
