//! Borrowed, lazy access to a webhook's JSON, with SPEC §7's field rules.
//!
//! An [`Object`] is a JSON object's entries as (key, raw value) pairs borrowed from the body:
//! nothing is decoded until a field is asked for, and `raw` can be written back with the
//! body's own key order and number literals. Where a key repeats, the last one counts.
//! serde_json's `Value` would decode every string and lose number literals; this keeps
//! both the hot path cheap and `raw` exact.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Largest unix time in seconds the SPEC accepts (9999-12-31T23:59:59Z).
pub const MAX_UNIX_S: i64 = 253_402_300_799;

/// A JSON object's entries, borrowed.
#[derive(Debug, Default, Clone)]
pub struct Object<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
}

/// A key that borrows from the input unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Object<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<'de>, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    entries.push((k, v));
                }
                Ok(Object { entries })
            }
        }
        d.deserialize_map(V)
    }
}

/// What kind of JSON value a raw value is, from its first byte.
fn first_byte(raw: &RawValue) -> u8 {
    raw.get().as_bytes().first().copied().unwrap_or(b' ')
}

/// A JSON string's text, borrowed when it holds no escapes.
pub fn as_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if first_byte(raw) != b'"' {
        return None;
    }
    let inner = &text[1..text.len() - 1];
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

/// A string of the body on its way into the event. Without escapes it is written back as
/// the body's own literal, byte for byte: a valid JSON string literal without a backslash
/// holds no quote, backslash or control character, so it needs no escaping, and re-escaping
/// (serde_json checks every byte) is the largest cost of writing an event with a long text.
/// With escapes it is decoded and written anew (a lone surrogate must not pass through).
#[derive(Debug, Clone)]
pub enum Text<'a> {
    Literal(&'a RawValue),
    Decoded(Cow<'a, str>),
}

impl PartialEq for Text<'_> {
    /// Equal when they write the same JSON text.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Text::Literal(a), Text::Literal(b)) => a.get() == b.get(),
            (Text::Decoded(a), Text::Decoded(b)) => a == b,
            _ => false,
        }
    }
}

impl<'a> Text<'a> {
    pub fn from_static(s: &'static str) -> Text<'a> {
        Text::Decoded(Cow::Borrowed(s))
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

/// A JSON string as a [`Text`].
pub fn as_text(raw: &RawValue) -> Option<Text<'_>> {
    if first_byte(raw) != b'"' {
        return None;
    }
    if raw.get().contains('\\') {
        as_str(raw).map(Text::Decoded)
    } else {
        Some(Text::Literal(raw))
    }
}

/// An integer: a JSON number without fraction or exponent that fits in 64 bits.
pub fn as_integer(raw: &RawValue) -> Option<i128> {
    let text = raw.get();
    let b = first_byte(raw);
    if !(b == b'-' || b.is_ascii_digit()) || text.contains(['.', 'e', 'E']) {
        return None;
    }
    let n: i128 = text.parse().ok()?;
    (i64::MIN as i128..=u64::MAX as i128)
        .contains(&n)
        .then_some(n)
}

/// An id: a non-empty string, or an integer written in decimal.
pub fn as_id(raw: &RawValue) -> Option<Cow<'_, str>> {
    if let Some(s) = as_str(raw) {
        return (!s.is_empty()).then_some(s);
    }
    as_integer(raw).map(|n| Cow::Owned(n.to_string()))
}

pub fn as_bool(raw: &RawValue) -> Option<bool> {
    match raw.get() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

pub fn as_array(raw: &RawValue) -> Option<Vec<&RawValue>> {
    if first_byte(raw) != b'[' {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

impl<'a> Object<'a> {
    /// Parses a body that must be a JSON object (any other JSON, or no JSON: `None`).
    pub fn parse(body: &'a [u8]) -> Option<Object<'a>> {
        // Only an object can be one: skip the parser for anything else.
        let start = body.iter().find(|b| !b.is_ascii_whitespace())?;
        if *start != b'{' {
            return None;
        }
        serde_json::from_slice(body).ok()
    }

    /// A nested raw value that is an object.
    pub fn from_raw(raw: &'a RawValue) -> Option<Object<'a>> {
        if first_byte(raw) != b'{' {
            return None;
        }
        serde_json::from_str(raw.get()).ok()
    }

    /// The value of `key` (the last one, where a key repeats).
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
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

    pub fn object(&self, key: &str) -> Option<Object<'a>> {
        self.get(key).and_then(Object::from_raw)
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(as_bool)
    }

    pub fn array(&self, key: &str) -> Option<Vec<&'a RawValue>> {
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

impl Serialize for RawObject<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let entries = &self.object.entries;
        let mut map = s.serialize_map(None)?;
        for (i, (k, _)) in entries.iter().enumerate() {
            if Some(k.as_ref()) == self.drop || entries[..i].iter().any(|(earlier, _)| earlier == k)
            {
                continue;
            }
            // The last value of this key: the one a parser of the body would keep.
            map.serialize_entry(k, self.object.get(k).unwrap_or(entries[i].1))?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(text: &str) -> Object<'_> {
        Object::parse(text.as_bytes()).expect("object")
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

    #[test]
    fn last_repeated_key_counts_and_raw_keeps_order_and_literals() {
        let o = obj(r#"{"b":1,"a":1.50,"b":2e0,"secret":"s","c":{"x" : 1}}"#);
        assert_eq!(o.get("b").map(RawValue::get), Some("2e0"));
        let raw = serde_json::to_string(&o.raw_without(Some("secret"))).expect("ser");
        assert_eq!(raw, r#"{"b":2e0,"a":1.50,"c":{"x" : 1}}"#);
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
        assert_eq!(o.text("c"), None);
        // A lone surrogate does not decode: it is not a usable string.
        assert_eq!(o.text("d"), None);
    }

    #[test]
    fn strings_decode_escapes() {
        let o = obj(r#"{"a":"\u003cb\u003e","b":"plain","c":5}"#);
        assert_eq!(o.string("a").as_deref(), Some("<b>"));
        assert!(matches!(o.string("b"), Some(Cow::Borrowed("plain"))));
        assert_eq!(o.string("c"), None);
    }
}
