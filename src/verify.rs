//! Proof schemes (SPEC §1), in constant time; the only place a [`Verified`] is made.
//!
//! Takes a source's verifier, the request's proof carriers (headers, query, body) and the
//! raw body; gives a [`Verified`] delivery or a [`VerifyError`] whose reason goes to the
//! log only. Every configured secret is tried without an early exit, so timing reveals
//! neither which secret matched nor how many bytes did. Tokens are compared as SHA-256
//! digests, so their length does not leak either (`subtle` returns early on slices of
//! unequal length). HMAC runs over the raw bytes as received, never re-serialized JSON.

use std::fmt;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::json::{self, Object};

/// A secret's bytes. `Debug` prints nothing of them.
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes.into_boxed_slice())
    }
    /// The bytes, for the few places that must use them (MAC keys, `sign`).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How a platform's webhook proves who sent it. Headers are `HeaderName`s, made when the
/// constant is: a lookup by `&str` would check and lower-case the name for every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// Lowercase (or upper-case) hex HMAC-SHA256 of the raw body in a header.
    HmacSha256Hex { header: HeaderName },
    /// A static token in a header.
    HeaderToken { header: HeaderName },
    /// A key inside the JSON body, compared after JSON decoding.
    BodyKey { field: &'static str },
    /// A token in a query parameter or in a header; either one matching verifies.
    QueryOrHeaderToken {
        param: &'static str,
        header: HeaderName,
    },
}

/// What a sender must send, for the log line of a refused proof: an operator whose every
/// delivery gets 401 learns where hookgate looked (a proxy in front that drops the header, a
/// funtek URL registered without its `?token=`), never what it compared with.
impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scheme::HmacSha256Hex { header } => write!(
                f,
                "header {header}: the hex HMAC-SHA256 of the raw body under one of the source's \
                 secrets (64 hex digits, nothing else)"
            ),
            Scheme::HeaderToken { header } => {
                write!(f, "header {header}: one of the source's secrets")
            }
            Scheme::BodyKey { field } => {
                write!(f, "the JSON body's {field}: one of the source's secrets")
            }
            Scheme::QueryOrHeaderToken { param, header } => write!(
                f,
                "?{param}= in the URL or header {header}: one of the source's secrets"
            ),
        }
    }
}

/// A source's verifier: its scheme and its secrets, prepared once at startup.
#[derive(Clone)]
pub struct Verifier {
    kind: Option<(Scheme, Prepared)>,
    /// The secrets as configured, for `sign` and tests.
    secrets: Vec<Secret>,
}

/// Secrets in the form the scheme compares: keyed MACs, or token digests.
#[derive(Clone)]
enum Prepared {
    Macs(Vec<Hmac<Sha256>>),
    Digests(Vec<[u8; 32]>),
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            None => f.write_str("Verifier(none)"),
            Some((scheme, _)) => write!(
                f,
                "Verifier({scheme:?}, {} secrets <redacted>)",
                self.secrets.len()
            ),
        }
    }
}

/// Why a proof did not verify: for the log and metrics, never for the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no proof in the request")]
    Missing,
    #[error("the proof is malformed")]
    Malformed,
    #[error("the proof matches no configured secret")]
    Mismatch,
    #[error("the body is not JSON, so it carries no key")]
    NotJson,
}

impl VerifyError {
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Missing => "missing_proof",
            VerifyError::Malformed => "malformed_proof",
            VerifyError::Mismatch => "bad_signature",
            VerifyError::NotJson => "missing_proof",
        }
    }
}

/// A delivery whose proof checked out (or whose source says `verify = "none"`).
/// Only [`Verifier::verify`] makes one, so unverified bytes cannot reach the upstream.
#[derive(Debug)]
pub struct Verified {
    body: Bytes,
}

impl Verified {
    /// The raw body, exactly as received.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

/// What a request offers as proof, borrowed from the request.
pub struct Carriers<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
}

fn token_digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Verifier {
    pub fn none() -> Verifier {
        Verifier {
            kind: None,
            secrets: Vec::new(),
        }
    }

    pub fn new(scheme: Scheme, secrets: Vec<Secret>) -> Verifier {
        let prepared = match scheme {
            Scheme::HmacSha256Hex { .. } => Prepared::Macs(
                secrets
                    .iter()
                    .map(|s| {
                        // HMAC takes keys of any length: this cannot fail.
                        <Hmac<Sha256> as KeyInit>::new_from_slice(s.expose())
                            .expect("HMAC accepts any key length")
                    })
                    .collect(),
            ),
            _ => Prepared::Digests(secrets.iter().map(|s| token_digest(s.expose())).collect()),
        };
        Verifier {
            kind: Some((scheme, prepared)),
            secrets,
        }
    }

    pub fn is_none(&self) -> bool {
        self.kind.is_none()
    }

    /// The proof it checks (`None` with `verify = "none"`).
    pub fn scheme(&self) -> Option<&Scheme> {
        self.kind.as_ref().map(|(scheme, _)| scheme)
    }

    /// How many secrets it holds (a reload's log line says it; never what they are).
    pub fn secret_count(&self) -> usize {
        self.secrets.len()
    }

    /// Whether `other` holds the same secrets in the same order: for a reload's log line,
    /// on the operator's files, so not in constant time.
    pub fn same_secrets(&self, other: &Verifier) -> bool {
        self.secrets.len() == other.secrets.len()
            && self
                .secrets
                .iter()
                .zip(&other.secrets)
                .all(|(a, b)| a.expose() == b.expose())
    }

    /// The first configured secret (what `sign` uses).
    pub fn first_secret(&self) -> Option<&Secret> {
        self.secrets.first()
    }

    /// For tests: whether secret `i` has exactly these bytes.
    pub fn secret_equals(&self, i: usize, bytes: &[u8]) -> bool {
        self.secrets.get(i).is_some_and(|s| s.expose() == bytes)
    }

    /// Checks the request's proof against every secret.
    pub fn verify(&self, carriers: &Carriers<'_>, body: Bytes) -> Result<Verified, VerifyError> {
        let Some((scheme, prepared)) = &self.kind else {
            return Ok(Verified { body });
        };
        let ok = match (scheme, prepared) {
            (Scheme::HmacSha256Hex { header }, Prepared::Macs(macs)) => {
                let given = carriers.headers.get(header).ok_or(VerifyError::Missing)?;
                let mut sig = [0u8; 32];
                // Either case of hex is accepted; a wrong length or a non-hex digit is malformed.
                hex::decode_to_slice(given.as_bytes(), &mut sig)
                    .map_err(|_| VerifyError::Malformed)?;
                let mut any = Choice::from(0);
                for mac in macs {
                    let mut mac = mac.clone();
                    mac.update(&body);
                    let expected = mac.finalize().into_bytes();
                    any |= expected.as_slice().ct_eq(&sig);
                }
                any
            }
            (Scheme::HeaderToken { header }, Prepared::Digests(d)) => {
                let given = carriers.headers.get(header).ok_or(VerifyError::Missing)?;
                any_digest_matches(d, given.as_bytes())
            }
            (Scheme::BodyKey { field }, Prepared::Digests(d)) => {
                let object = Object::parse(&body).ok_or(VerifyError::NotJson)?;
                // The key as the JSON decodes it: Go's encoder writes `&` as `\u0026`.
                let raw = object.get(field).ok_or(VerifyError::Missing)?;
                // Exactly: a lone surrogate made U+FFFD would match a secret holding one.
                // `ok_or_else`: the refusal's reason is worked out only for a refusal (with
                // `ok_or`, every delivery decoded its key a second time to pick it).
                let key = json::as_exact_str(raw).ok_or_else(|| {
                    if json::as_str(raw).is_some() {
                        VerifyError::Malformed
                    } else {
                        VerifyError::Missing
                    }
                })?;
                any_digest_matches(d, key.as_bytes())
            }
            (Scheme::QueryOrHeaderToken { param, header }, Prepared::Digests(d)) => {
                let from_query = carriers.query.and_then(|q| query_param(q, param));
                let from_header = carriers.headers.get(header).map(|v| v.as_bytes());
                if from_query.is_none() && from_header.is_none() {
                    return Err(VerifyError::Missing);
                }
                // Both are checked whenever both are present: no early exit.
                let q = from_query.map_or(Choice::from(0), |t| any_digest_matches(d, &t));
                let h = from_header.map_or(Choice::from(0), |t| any_digest_matches(d, t));
                q | h
            }
            _ => Choice::from(0),
        };
        if bool::from(ok) {
            Ok(Verified { body })
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

/// Whether `token` equals any of the secrets, comparing fixed-length digests, every one tried.
fn any_digest_matches(digests: &[[u8; 32]], token: &[u8]) -> Choice {
    let given = token_digest(token);
    digests
        .iter()
        .fold(Choice::from(0), |acc, d| acc | d.ct_eq(&given))
}

/// The last value of query parameter `name`, percent-decoded (`+` stays `+`, SPEC §7).
pub fn query_param(query: &str, name: &str) -> Option<Vec<u8>> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_encoding::percent_decode_str(k).collect::<Vec<u8>>() == name.as_bytes())
                .then(|| percent_encoding::percent_decode_str(v).collect::<Vec<u8>>())
        })
        .next_back()
}

/// The query string with parameter `name` removed: what is safe to log.
pub fn strip_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            percent_encoding::percent_decode_str(k).collect::<Vec<u8>>() != name.as_bytes()
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hmac_hex(key: &[u8], body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("key");
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn secrets(list: &[&str]) -> Vec<Secret> {
        list.iter()
            .map(|s| Secret::new(s.as_bytes().to_vec()))
            .collect()
    }

    fn check(
        v: &Verifier,
        headers: &[(&'static str, &str)],
        query: Option<&str>,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        let mut map = HeaderMap::new();
        for (k, val) in headers {
            map.insert(*k, HeaderValue::from_str(val).expect("header"));
        }
        let carriers = Carriers {
            headers: &map,
            query,
        };
        v.verify(&carriers, Bytes::copy_from_slice(body))
            .map(|_| ())
    }

    const H: Scheme = Scheme::HmacSha256Hex {
        header: HeaderName::from_static("x-sig"),
    };

    #[test]
    fn hmac_accepts_any_secret_in_either_case_over_raw_bytes() {
        let v = Verifier::new(H, secrets(&["old", "new"]));
        let body = br#"{"a": 1}"#;
        assert_eq!(
            check(&v, &[("x-sig", &hmac_hex(b"new", body))], None, body),
            Ok(())
        );
        assert_eq!(
            check(
                &v,
                &[("x-sig", &hmac_hex(b"old", body).to_uppercase())],
                None,
                body
            ),
            Ok(())
        );
        // The same JSON, compacted: different bytes, so no match.
        assert_eq!(
            check(
                &v,
                &[("x-sig", &hmac_hex(b"new", br#"{"a":1}"#))],
                None,
                body
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(check(&v, &[], None, body), Err(VerifyError::Missing));
        let sig = hmac_hex(b"new", body);
        assert_eq!(
            check(&v, &[("x-sig", &sig[..32])], None, body),
            Err(VerifyError::Malformed)
        );
        assert_eq!(
            check(&v, &[("x-sig", &format!("{sig}00"))], None, body),
            Err(VerifyError::Malformed)
        );
        assert_eq!(
            check(&v, &[("x-sig", &format!("sha256={sig}"))], None, body),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn header_token_needs_the_whole_token() {
        let v = Verifier::new(
            Scheme::HeaderToken {
                header: HeaderName::from_static("x-tok"),
            },
            secrets(&["room-one", "room-two"]),
        );
        assert_eq!(check(&v, &[("x-tok", "room-two")], None, b"{}"), Ok(()));
        assert_eq!(
            check(&v, &[("x-tok", "room-tw")], None, b"{}"),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(&v, &[("x-tok", "room-two2")], None, b"{}"),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(check(&v, &[], None, b"{}"), Err(VerifyError::Missing));
    }

    #[test]
    fn body_key_is_compared_after_json_decoding() {
        let v = Verifier::new(Scheme::BodyKey { field: "APIKey" }, secrets(&["k&<key>"]));
        assert_eq!(
            check(&v, &[], None, br#"{"APIKey":"k\u0026\u003ckey\u003e"}"#),
            Ok(())
        );
        assert_eq!(check(&v, &[], None, br#"{"APIKey":"k&<key>"}"#), Ok(()));
        assert_eq!(
            check(&v, &[], None, br#"{"APIKey":"k&<key"}"#),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(&v, &[], None, br#"{"APIKey":5}"#),
            Err(VerifyError::Missing)
        );
        assert_eq!(check(&v, &[], None, b"APIKey=k"), Err(VerifyError::NotJson));
        // A lone surrogate does not decode exactly: not the U+FFFD a secret could hold.
        let v = Verifier::new(Scheme::BodyKey { field: "APIKey" }, secrets(&["k\u{FFFD}"]));
        assert_eq!(
            check(&v, &[], None, "{\"APIKey\":\"k\u{FFFD}\"}".as_bytes()),
            Ok(())
        );
        assert_eq!(
            check(&v, &[], None, br#"{"APIKey":"k\ud800"}"#),
            Err(VerifyError::Malformed)
        );
        let v = Verifier::new(Scheme::BodyKey { field: "APIKey" }, secrets(&["k&<key>"]));
        // Where a key repeats, the last one counts.
        assert_eq!(
            check(&v, &[], None, br#"{"APIKey":"k&<key>","APIKey":"x"}"#),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn query_or_header_token() {
        let v = Verifier::new(
            Scheme::QueryOrHeaderToken {
                param: "token",
                header: HeaderName::from_static("x-tok"),
            },
            secrets(&["a+b/c"]),
        );
        assert_eq!(check(&v, &[], Some("token=a%2Bb%2Fc"), b"{}"), Ok(()));
        assert_eq!(check(&v, &[], Some("x=1&token=a+b/c"), b"{}"), Ok(()));
        assert_eq!(
            check(&v, &[("x-tok", "a+b/c")], Some("token=wrong"), b"{}"),
            Ok(())
        );
        // Right in both places (a sender that sends both): verified, not cancelled out.
        assert_eq!(
            check(&v, &[("x-tok", "a+b/c")], Some("token=a+b/c"), b"{}"),
            Ok(())
        );
        assert_eq!(
            check(&v, &[], Some("token=a%20b/c"), b"{}"),
            Err(VerifyError::Mismatch)
        );
        // A secret listed twice (a rotation that repeats the old one): still verifies.
        let twice = Verifier::new(
            Scheme::QueryOrHeaderToken {
                param: "token",
                header: HeaderName::from_static("x-tok"),
            },
            secrets(&["a+b/c", "other", "a+b/c"]),
        );
        assert_eq!(check(&twice, &[], Some("token=a+b/c"), b"{}"), Ok(()));
        assert_eq!(
            check(&v, &[], Some("tok=a+b/c"), b"{}"),
            Err(VerifyError::Missing)
        );
    }

    #[test]
    fn none_verifies_everything() {
        assert_eq!(check(&Verifier::none(), &[], None, b"anything"), Ok(()));
    }

    #[test]
    fn query_stripping_removes_only_the_token() {
        assert_eq!(
            strip_query_param("a=1&token=s3cret&b=2", "token"),
            "a=1&b=2"
        );
        assert_eq!(strip_query_param("to%6Ben=s3cret", "token"), "");
        assert_eq!(query_param("token=1&token=2", "token"), Some(b"2".to_vec()));
    }

    #[test]
    fn debug_prints_no_secret() {
        let v = Verifier::new(H, secrets(&["hunter2"]));
        assert!(!format!("{v:?}").contains("hunter2"));
        assert!(
            format!("{v:?}").ends_with(", 1 secrets <redacted>)"),
            "{v:?}"
        );
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }
}
