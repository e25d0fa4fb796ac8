//! Any bytes as the upstream's answer: the hand-written HTTP/1.1 reader (`upstream::http1`)
//! ends with an answer or an error, never a panic; an answer is final (no 1xx) with its
//! body within the limit; and the bytes read as the same answer whether they come at once
//! or a few per read. The first byte picks the piece size, the second the body limit.
#![no_main]
use hookgate::upstream::http1::{ExchangeError, Exchanged, read_replayed};
use libfuzzer_sys::fuzz_target;

fn outcome(
    r: &Result<Exchanged, ExchangeError>,
) -> Result<(u16, Vec<u8>), std::mem::Discriminant<ExchangeError>> {
    match r {
        Ok(e) => Ok((e.answer.status.as_u16(), e.answer.body.to_vec())),
        Err(e) => Err(std::mem::discriminant(e)),
    }
}

fuzz_target!(|data: &[u8]| {
    let [piece, limit, bytes @ ..] = data else {
        return;
    };
    let piece = usize::from(*piece % 64) + 1;
    let limit = usize::from(*limit) * 4;
    let whole = read_replayed(bytes, usize::MAX, limit);
    let pieces = read_replayed(bytes, piece, limit);
    assert_eq!(outcome(&whole), outcome(&pieces), "{whole:?} / {pieces:?}");
    if let Ok(e) = &whole {
        assert!(e.answer.body.len() <= limit);
        assert!(!e.answer.status.is_informational());
        assert!(
            e.answer.content_type
                == pieces
                    .as_ref()
                    .ok()
                    .and_then(|p| p.answer.content_type.clone())
        );
    }
});
