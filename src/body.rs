//! Reading a request's body whole, within a size limit.
//!
//! By hand rather than http-body-util's `Limited` + `collect`: those queue every piece in a
//! `VecDeque` and copy them out again, an allocation and a pass per body, while nearly every
//! webhook arrives in one piece, which is returned here as it is.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("body over the size limit")]
    TooLarge,
    #[error(transparent)]
    Failed(#[from] hyper::Error),
}

/// The whole body, or `TooLarge` as soon as it passes `limit` bytes (trailers are ignored).
pub async fn read_whole(mut body: Incoming, limit: usize) -> Result<Bytes, ReadError> {
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let read = joined.as_ref().map_or(first.len(), BytesMut::len);
        if data.len() > limit - read {
            return Err(ReadError::TooLarge);
        }
        match &mut joined {
            Some(j) => j.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                // What is still to come, when the length was declared.
                let rest = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
                let capacity = (read + data.len()).saturating_add(rest).min(limit);
                let mut j = BytesMut::with_capacity(capacity);
                j.extend_from_slice(&first);
                j.extend_from_slice(&data);
                joined = Some(j);
            }
        }
    }
    Ok(joined.map_or(first, BytesMut::freeze))
}
