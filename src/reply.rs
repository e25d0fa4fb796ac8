//! The answer back to the sender (SPEC §6): the upstream's status and body, with a
//! *normalized reply* rewritten into the platform's own format.
//!
//! Takes the upstream's status, content-type and body; gives what the sender receives.
//! Only a 2xx body that is exactly a normalized reply is rewritten; anything else is
//! relayed unchanged, so an app that already speaks the platform's format keeps working.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use crate::json::{self, Object};
use crate::platforms::Platform;

/// `reply` of a normalized reply.
#[derive(Debug, Default, PartialEq)]
pub struct ReplyMessage<'a> {
    pub text: Option<Cow<'a, str>>,
    pub sender_id: Option<Cow<'a, str>>,
    pub kind: Option<Cow<'a, str>>,
}

/// A non-empty JSON object whose keys are all among `reply`, `state`, `profile`,
/// `headline` and `error`, each of its type (other keys inside `reply` and inside profile
/// entries are ignored).
#[derive(Debug, Default, PartialEq)]
pub struct NormalizedReply<'a> {
    pub reply: Option<ReplyMessage<'a>>,
    pub state: Option<Cow<'a, str>>,
    pub profile: Option<Vec<(Cow<'a, str>, Cow<'a, str>)>>,
    pub headline: Option<Cow<'a, str>>,
    pub error: Option<Cow<'a, str>>,
}

const KEYS: [&str; 5] = ["reply", "state", "profile", "headline", "error"];

/// `null` is `Ok(None)`, a string `Ok(Some)`, anything else is not a normalized reply.
fn string_or_null(raw: Option<json::Json<'_>>) -> Result<Option<Cow<'_, str>>, ()> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) => json::as_str(r).map(Some).ok_or(()),
    }
}

impl<'a> NormalizedReply<'a> {
    pub fn parse(body: &'a [u8]) -> Option<NormalizedReply<'a>> {
        // A UTF-8 byte-order mark first is skipped, as RFC 8259 §8.1 lets a parser do: an app
        // whose writer puts one there (.NET's `Encoding.UTF8`, PowerShell) would otherwise
        // have its reply relayed untranslated, which the platform's bot cannot read.
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        let o = Object::parse(body)?;
        if o.is_empty() || !o.keys().all(|k| KEYS.contains(&k)) {
            return None;
        }
        let reply = match o.get("reply") {
            None => None,
            Some(r) if r.get() == "null" => None,
            Some(r) => {
                let m = o.object_value(r)?;
                Some(ReplyMessage {
                    text: string_or_null(m.get("text")).ok()?,
                    sender_id: string_or_null(m.get("sender_id")).ok()?,
                    kind: string_or_null(m.get("kind")).ok()?,
                })
            }
        };
        let profile = match o.get("profile") {
            None => None,
            Some(r) if r.get() == "null" => None,
            Some(r) => Some(
                json::as_array(r)?
                    .into_iter()
                    .map(|entry| {
                        let e = o.object_value(entry)?;
                        Some((e.string("name")?, e.string("value")?))
                    })
                    .collect::<Option<Vec<_>>>()?,
            ),
        };
        Some(NormalizedReply {
            reply,
            state: string_or_null(o.get("state")).ok()?,
            profile,
            headline: string_or_null(o.get("headline")).ok()?,
            error: string_or_null(o.get("error")).ok()?,
        })
    }
}

/// What the sender receives.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    /// `None`: no content-type (the upstream sent none and its body is relayed unchanged).
    pub content_type: Option<HeaderValue>,
    /// The upstream's `retry-after`, the one header of its own passed back.
    pub retry_after: Option<HeaderValue>,
    pub body: Bytes,
}

/// The upstream's answer, translated for `platform`.
pub fn translate(
    platform: Platform,
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
) -> Answer {
    let json = HeaderValue::from_static("application/json");
    if !status.is_success() {
        return Answer {
            status,
            content_type,
            retry_after: None,
            body,
        };
    }
    // BareRTC takes 201, 202 and 204 for failures: any 2xx is sent as 200.
    let status = if platform == Platform::Barertc {
        StatusCode::OK
    } else {
        status
    };
    if let Some(translated) = platform.answer(&body) {
        return Answer {
            status,
            content_type: Some(json),
            retry_after: None,
            body: Bytes::from(translated),
        };
    }
    if platform == Platform::Barertc && body.is_empty() {
        return Answer {
            status,
            content_type: Some(json),
            retry_after: None,
            body: Bytes::from_static(b"{}"),
        };
    }
    Answer {
        status,
        content_type,
        retry_after: None,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_and_is_not_a_normalized_reply() {
        let yes = [
            r#"{"state":"x"}"#,
            r#"{"reply":null}"#,
            r#"{"reply":{"text":"hi","other":1}}"#,
            r#"{"profile":[{"name":"a","value":"b","x":1}],"headline":null}"#,
            r#"{"profile":null,"headline":"Hi"}"#,
            r#"{"error":"no"}"#,
        ];
        for b in yes {
            assert!(NormalizedReply::parse(b.as_bytes()).is_some(), "{b}");
        }
        let no = [
            "{}",
            "[]",
            "",
            "not json",
            r#"{"state":1}"#,
            r#"{"reply":"hi"}"#,
            r#"{"reply":{"text":5}}"#,
            r#"{"profile":["Age: 30"]}"#,
            r#"{"profile":[{"name":"a"}]}"#,
            r#"{"profile":{}}"#,
            r#"{"profile":[],"extra":1}"#,
            r#"{"senderID":"x"}"#,
        ];
        for b in no {
            assert!(NormalizedReply::parse(b.as_bytes()).is_none(), "{b}");
        }
    }

    #[test]
    fn a_funtek_reply_keeps_its_kind_and_an_empty_one_is_text() {
        let funtek = |body: String| {
            let a = translate(Platform::Funtek, StatusCode::OK, None, Bytes::from(body));
            String::from_utf8(a.body.to_vec()).expect("UTF-8")
        };
        assert_eq!(
            funtek(r#"{"reply":{"text":"pic","kind":"image"}}"#.into()),
            r#"{"senderID":null,"toBotState":null,"data":{"message":"pic","messageType":"image"}}"#
        );
        for kind in [r#","kind":"""#, r#","kind":null"#, ""] {
            let body = format!(r#"{{"reply":{{"text":"hi"{kind}}}}}"#);
            assert_eq!(
                funtek(body.clone()),
                r#"{"senderID":null,"toBotState":null,"data":{"message":"hi","messageType":"text"}}"#,
                "{body}"
            );
        }
    }

    #[test]
    fn a_reply_after_a_byte_order_mark_is_translated() {
        let reply = |body: &'static [u8], platform| {
            let a = translate(platform, StatusCode::OK, None, Bytes::from_static(body));
            String::from_utf8(a.body.to_vec()).expect("UTF-8")
        };
        assert_eq!(
            reply(
                b"\xEF\xBB\xBF{\"reply\":{\"text\":\"hi\"}}\r\n",
                Platform::Funtek
            ),
            r#"{"senderID":null,"toBotState":null,"data":{"message":"hi","messageType":"text"}}"#
        );
        assert_eq!(
            reply(b"\xEF\xBB\xBF{\"error\":\"no\"}", Platform::Barertc),
            r#"{"StatusCode":200,"Data":{"OK":false,"Error":"no"}}"#
        );
        // One mark, first, and nothing else: two, or a UTF-16 one, is not JSON.
        for body in [
            &b"\xEF\xBB\xBF\xEF\xBB\xBF{\"error\":\"no\"}"[..],
            b"\xFF\xFE{\"error\":\"no\"}",
            b" \xEF\xBB\xBF{\"error\":\"no\"}",
        ] {
            assert!(NormalizedReply::parse(body).is_none(), "{body:?}");
        }
    }

    #[test]
    fn non_2xx_and_unlisted_platforms_are_unchanged() {
        let body = Bytes::from_static(br#"{"reply":{"text":"x"}}"#);
        let a = translate(
            Platform::Funtek,
            StatusCode::BAD_GATEWAY,
            None,
            body.clone(),
        );
        assert_eq!(
            (a.status, a.content_type, &a.body),
            (StatusCode::BAD_GATEWAY, None, &body)
        );
        let a = translate(Platform::Protocol, StatusCode::OK, None, body.clone());
        assert_eq!(a.body, body);
        assert_eq!(a.content_type, None);
    }
}
