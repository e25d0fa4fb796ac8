//! hookgate's one-pass JSON check against serde_json on the same bytes: the same verdict,
//! and entry for entry the same object (keys decoded, value texts as borrowed); and every
//! nested object read from the pass's tape the same as split from its own text.
#![no_main]
use hookgate::json::{Object, serde_reading};
use libfuzzer_sys::fuzz_target;

/// `object(k)` and `object_value` (the tape) against `from_raw` (the text) for every key
/// and every element of an array value, a few levels down.
fn nested_as_split(object: &Object<'_>, depth: usize) {
    if depth == 0 {
        return;
    }
    for key in object.keys() {
        let ours = object.object(key);
        let split = object.get(key).and_then(Object::from_raw);
        assert_eq!(ours, split, "{key:?}");
        if let Some(inner) = ours {
            nested_as_split(&inner, depth - 1);
        }
        for item in object.array(key).unwrap_or_default() {
            assert_eq!(object.object_value(item), Object::from_raw(item), "{key:?}[]");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let ours = Object::parse(data);
    let serde = serde_reading(data);
    assert_eq!(ours, serde, "{:?}", String::from_utf8_lossy(data));
    if let Some(object) = ours {
        nested_as_split(&object, 10);
    }
});
