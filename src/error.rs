//! Every way a request can be refused, and the one place that turns it into a status.
//!
//! The sender sees only a short code; the reason (the enum's variant and its detail) goes
//! to the log. A refusal on a barertc source also carries the fields BareRTC's profile
//! parser reads, so the reason shows in its profile card.

use bytes::Bytes;
use http::StatusCode;

use crate::verify::VerifyError;

/// Why a request was not forwarded (or forwarding failed).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("malformed request head: {0}")]
    BadHead(&'static str),
    #[error("no source at this path")]
    NoRoute,
    #[error("method not allowed")]
    Method,
    #[error("client address outside allow_cidrs")]
    Forbidden,
    #[error("client over client_rate_limit")]
    ClientRateLimited { retry_after_s: u64 },
    #[error("body larger than max_body_bytes")]
    TooLarge,
    #[error("a content-encoding or transfer coding hookgate does not decode")]
    Encoding,
    #[error("body not received within body_timeout_s")]
    BodyTimeout,
    #[error("malformed request body: {0}")]
    BadBody(String),
    #[error("proof: {0}")]
    Unverified(#[from] VerifyError),
    #[error("verified, but not the platform's JSON: {0}")]
    NotPlatformJson(&'static str),
    #[error("source over its rate_limit")]
    SourceRateLimited { retry_after_s: u64 },
    #[error("upstream: {0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
}

impl Refusal {
    /// The status and the short code the sender gets.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        use crate::upstream::UpstreamError as U;
        match self {
            Refusal::BadHead(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Refusal::NoRoute => (StatusCode::NOT_FOUND, "not_found"),
            Refusal::Method => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Refusal::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Refusal::ClientRateLimited { .. } | Refusal::SourceRateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
            }
            Refusal::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Refusal::Encoding => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Refusal::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Refusal::BadBody(_) | Refusal::NotPlatformJson(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            Refusal::Unverified(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Refusal::Upstream(U::Timeout | U::ConnectTimeout | U::SlotTimeout) => {
                (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout")
            }
            Refusal::Upstream(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
        }
    }

    /// A short machine-readable reason for logs and metrics (never sent to the sender).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadHead(_) => "bad_head",
            Refusal::NoRoute => "no_route",
            Refusal::Method => "method",
            Refusal::Forbidden => "cidr",
            Refusal::ClientRateLimited { .. } => "rate_limited_client",
            Refusal::SourceRateLimited { .. } => "rate_limited_source",
            Refusal::TooLarge => "too_large",
            Refusal::Encoding => "content_encoding",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::BadBody(_) => "bad_body",
            Refusal::Unverified(e) => e.reason(),
            Refusal::NotPlatformJson(_) => "not_platform_json",
            Refusal::Upstream(e) => e.kind(),
        }
    }

    /// `Retry-After` seconds for 429s.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Refusal::ClientRateLimited { retry_after_s }
            | Refusal::SourceRateLimited { retry_after_s } => Some((*retry_after_s).max(1)),
            _ => None,
        }
    }

    /// Whether the connection must close after the answer (the body was not read to its end).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Refusal::BadHead(_) | Refusal::TooLarge | Refusal::BodyTimeout | Refusal::BadBody(_)
        )
    }
}

/// The JSON error body. `barertc_shape` adds what BareRTC's profile parser reads.
pub fn error_body(status: StatusCode, code: &str, barertc_shape: bool) -> Bytes {
    // Codes are fixed lower-case ASCII words: no escaping is needed.
    let text = if barertc_shape {
        format!(
            r#"{{"error":"{code}","StatusCode":{},"Data":{{"OK":false,"Error":"{code}"}}}}"#,
            status.as_u16()
        )
    } else {
        format!(r#"{{"error":"{code}"}}"#)
    };
    Bytes::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamError;

    /// The status mapping is the contract (SPEC §4): pin it.
    #[test]
    fn every_refusal_maps_to_its_spec_status_and_code() {
        let cases: Vec<(Refusal, u16, &str)> = vec![
            (Refusal::BadHead("x"), 400, "bad_request"),
            (Refusal::NoRoute, 404, "not_found"),
            (Refusal::Method, 405, "method_not_allowed"),
            (Refusal::Forbidden, 403, "forbidden"),
            (
                Refusal::ClientRateLimited { retry_after_s: 0 },
                429,
                "rate_limited",
            ),
            (
                Refusal::SourceRateLimited { retry_after_s: 3 },
                429,
                "rate_limited",
            ),
            (Refusal::TooLarge, 413, "payload_too_large"),
            (Refusal::Encoding, 415, "unsupported_media_type"),
            (Refusal::BodyTimeout, 408, "request_timeout"),
            (Refusal::BadBody("x".into()), 400, "bad_request"),
            (Refusal::NotPlatformJson("x"), 400, "bad_request"),
            (
                Refusal::Unverified(VerifyError::Missing),
                401,
                "unauthorized",
            ),
            (
                Refusal::Upstream(UpstreamError::Timeout),
                504,
                "gateway_timeout",
            ),
            (
                Refusal::Upstream(UpstreamError::Connect("x".into())),
                502,
                "bad_gateway",
            ),
        ];
        for (refusal, status, code) in cases {
            let (s, c) = refusal.status_code();
            assert_eq!((s.as_u16(), c), (status, code), "{refusal:?}");
        }
        // Wherever timeout_ms ran out, the sender gets the same 504.
        for e in [UpstreamError::ConnectTimeout, UpstreamError::SlotTimeout] {
            let (s, c) = Refusal::Upstream(e).status_code();
            assert_eq!((s.as_u16(), c), (504, "gateway_timeout"));
        }
        assert_eq!(
            Refusal::ClientRateLimited { retry_after_s: 0 }.retry_after(),
            Some(1)
        );
    }

    #[test]
    fn barertc_error_body_carries_profile_fields() {
        let body = error_body(StatusCode::UNAUTHORIZED, "unauthorized", true);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"error":"unauthorized","StatusCode":401,"Data":{"OK":false,"Error":"unauthorized"}})
        );
        assert_eq!(
            &error_body(StatusCode::NOT_FOUND, "not_found", false)[..],
            br#"{"error":"not_found"}"#
        );
    }
}
