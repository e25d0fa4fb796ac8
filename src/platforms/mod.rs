//! The four platforms, one file each, dispatched by one `match`.
//!
//! Each platform file has the same few items: `SCHEME` (how a webhook proves itself),
//! `normalize` (its JSON to the event, SPEC §7), `answer` (a normalized reply in its own
//! format, SPEC §6, where the sender reads one) and `SAMPLE` (a body for `hookgate sign`).

use std::borrow::Cow;

use serde::Deserialize;

use crate::event::{self, Event, User};
use crate::json::{Object, Text};
use crate::reply::NormalizedReply;
use crate::time::Millis;
use crate::verify::Scheme;

pub mod barertc;
pub mod funtek;
pub mod protocol;
pub mod spika;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Protocol,
    Spika,
    Barertc,
    Funtek,
}

/// What normalization needs besides the JSON.
pub struct Delivery<'a> {
    pub source: &'a str,
    /// The raw body (for the derived id).
    pub body: &'a [u8],
    pub received_at: Millis,
    pub include_raw: bool,
}

/// The verified body is JSON, but not the platform's (SPEC §7): 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotPlatformJson(pub &'static str);

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Protocol => "protocol",
            Platform::Spika => "spika",
            Platform::Barertc => "barertc",
            Platform::Funtek => "funtek",
        }
    }

    pub fn scheme(self) -> Scheme {
        match self {
            Platform::Protocol => protocol::SCHEME,
            Platform::Spika => spika::SCHEME,
            Platform::Barertc => barertc::SCHEME,
            Platform::Funtek => funtek::SCHEME,
        }
    }

    /// What the sender loses when the answer's body is not the app's (SPEC §1: BareRTC
    /// reads a profile card, FUNTEK a bot reply), as a duplicate's `200 {}` is not; `None`
    /// for senders that read the status only.
    pub fn answer_read_by_sender(self) -> Option<&'static str> {
        match self {
            Platform::Protocol | Platform::Spika => None,
            Platform::Barertc => Some(
                "a profile card opened twice within the window is the same body, so the same \
                 id, and shows empty",
            ),
            Platform::Funtek => Some("a bot gets no reply to a message delivered again"),
        }
    }

    /// How long the sender waits for the answer, where its code says (BareRTC's HTTP
    /// client has a 10 s timeout): a `timeout_ms` at or past it answers no one.
    pub fn sender_waits(self) -> Option<std::time::Duration> {
        match self {
            Platform::Barertc => Some(std::time::Duration::from_secs(10)),
            Platform::Protocol | Platform::Spika | Platform::Funtek => None,
        }
    }

    /// The most a source's `timeout_ms` defaults to: 2 s inside its sender's wait, so that
    /// even the 504 reaches the sender (SPEC §3: 8000 for barertc).
    pub fn default_timeout_cap_ms(self) -> Option<u64> {
        self.sender_waits().map(|w| {
            u64::try_from(w.as_millis())
                .unwrap_or(u64::MAX)
                .saturating_sub(2000)
        })
    }

    /// Senders that read the answer retry nothing: dedupe is off by default for them.
    pub fn default_dedupe_window_s(self) -> u64 {
        if self.answer_read_by_sender().is_some() {
            0
        } else {
            300
        }
    }

    /// The top-level key `raw` leaves out, where the body can hold the secret.
    fn raw_drops(self) -> Option<&'static str> {
        match self {
            Platform::Barertc => Some("APIKey"),
            Platform::Spika => Some("headers"),
            Platform::Protocol | Platform::Funtek => None,
        }
    }

    /// The platform's JSON to the event.
    pub fn normalize<'a>(
        self,
        object: &'a Object<'a>,
        delivery: &Delivery<'a>,
    ) -> Result<Event<'a>, NotPlatformJson> {
        let mut event = match self {
            Platform::Protocol => protocol::normalize(object, delivery),
            Platform::Spika => spika::normalize(object, delivery),
            Platform::Barertc => barertc::normalize(object, delivery),
            Platform::Funtek => funtek::normalize(object, delivery),
        }?;
        if delivery.include_raw {
            event.raw = Some(object.raw_without(self.raw_drops()));
        }
        Ok(event)
    }

    /// The upstream's 2xx body in the platform's own format when it is a normalized reply;
    /// `None`: relayed unchanged.
    pub fn answer(self, body: &[u8]) -> Option<Vec<u8>> {
        let write: fn(&NormalizedReply<'_>) -> Vec<u8> = match self {
            Platform::Barertc => barertc::answer,
            Platform::Funtek => funtek::answer,
            // Their senders read no answer body: it is not even parsed.
            Platform::Protocol | Platform::Spika => return None,
        };
        NormalizedReply::parse(body).map(|reply| write(&reply))
    }

    /// A sample delivery for `hookgate sign`.
    pub fn sample(self) -> &'static str {
        match self {
            Platform::Protocol => protocol::SAMPLE,
            Platform::Spika => spika::SAMPLE,
            Platform::Barertc => barertc::SAMPLE,
            Platform::Funtek => funtek::SAMPLE,
        }
    }
}

/// An event with every optional part empty, for a platform to fill in.
fn blank_event<'a>(
    delivery: &Delivery<'a>,
    platform: Platform,
    id: Option<Cow<'a, str>>,
    platform_type: Cow<'a, str>,
    kind: Cow<'a, str>,
) -> Event<'a> {
    Event {
        schema: event::SCHEMA,
        id: id.unwrap_or_else(|| Cow::Owned(event::derived_id(delivery.body))),
        source: delivery.source,
        platform: platform.as_str(),
        kind,
        platform_type,
        occurred_at: None,
        received_at: delivery.received_at,
        room: None,
        actor: None,
        subject: None,
        message: None,
        members: None,
        report: None,
        state: None,
        raw: None,
    }
}

/// A user object: it needs an id (the first of `id_keys` that is usable), or it is `None`.
fn user<'a>(
    object: &Object<'a>,
    id_keys: &[&str],
    name_key: &str,
    is_bot_key: Option<&str>,
) -> Option<User<'a>> {
    let id = id_keys.iter().find_map(|k| object.id(k))?;
    Some(User {
        id,
        name: object.text(name_key),
        is_bot: is_bot_key.and_then(|k| object.bool(k)),
    })
}

/// A user known only by a username, which is both its id and its name (barertc).
fn username<'a>(object: &Object<'a>, key: &str) -> Option<User<'a>> {
    let id = object.id(key)?;
    Some(User {
        name: Some(Text::Decoded(id.clone())),
        id,
        is_bot: None,
    })
}

#[cfg(test)]
mod tests {
    //! SPEC §7's "rules that make the mapping exact", one by one (the vectors cover them
    //! end to end as well).
    use super::*;
    use serde_json::{Value, json};

    fn event(platform: Platform, body: &str) -> Result<Value, NotPlatformJson> {
        let object = Object::parse(body.as_bytes()).expect("a JSON object");
        let delivery = Delivery {
            source: "s",
            body: body.as_bytes(),
            received_at: Millis::now(),
            include_raw: true,
        };
        let e = platform.normalize(&object, &delivery)?;
        Ok(serde_json::to_value(&e).expect("serializes"))
    }

    /// What a refused proof's log line says each platform expects: where to look, never a
    /// secret.
    #[test]
    fn each_platform_names_where_its_proof_goes() {
        let expected = |p: Platform| p.scheme().to_string();
        assert_eq!(
            expected(Platform::Protocol),
            "header x-protocol-signature: the hex HMAC-SHA256 of the raw body under one of the \
             source's secrets (64 hex digits, nothing else)"
        );
        assert_eq!(
            expected(Platform::Spika),
            "header verification-signature: one of the source's secrets"
        );
        assert_eq!(
            expected(Platform::Barertc),
            "the JSON body's APIKey: one of the source's secrets"
        );
        assert_eq!(
            expected(Platform::Funtek),
            "?token= in the URL or header x-webhook-token: one of the source's secrets"
        );
    }

    #[test]
    fn the_platforms_json_is_required() {
        assert!(event(Platform::Protocol, r#"{"type":5}"#).is_err());
        assert!(event(Platform::Spika, r#"{"message":"x"}"#).is_err());
        assert!(event(Platform::Spika, r#"{"data":{"message":null}}"#).is_err());
        assert!(event(Platform::Funtek, r#"{"event":null}"#).is_err());
        assert!(event(Platform::Barertc, r#"{"action":"report"}"#).is_err());
    }

    #[test]
    fn protocol_parts_follow_the_resource_whatever_the_verb() {
        let e = event(
            Platform::Protocol,
            r#"{"id":7,"type":"message.reacted","payload":{"id":"m","message":"hi","conversation_id":"c"}}"#,
        )
        .expect("event");
        assert_eq!(e["type"], "protocol.message.reacted");
        assert_eq!(e["id"], "7");
        assert_eq!(e["message"], json!({"id":"m","text":"hi","kind":"text"}));
        assert_eq!(e["room"], json!({"id":"c","name":null}));
        // Case-sensitive resource: "Message.created" is no message.
        let e = event(
            Platform::Protocol,
            r#"{"type":"Message.created","payload":{"id":"m"}}"#,
        )
        .expect("event");
        assert_eq!(e["message"], Value::Null);
        assert_eq!(e["type"], "protocol.message.created");
        // conversation.*: the payload's id is the room.
        let e = event(
            Platform::Protocol,
            r#"{"type":"conversation.updated","payload":{"id":"c9"}}"#,
        )
        .expect("event");
        assert_eq!(e["room"]["id"], "c9");
    }

    #[test]
    fn spika_reads_under_data_only_when_data_message_is_an_object() {
        let body = r#"{"message":{"id":1},"data":{"message":{"id":2}},"headers":{"Verification-Signature":"t"}}"#;
        let e = event(Platform::Spika, body).expect("event");
        assert_eq!(e["id"], "2");
        assert!(
            e["raw"].get("headers").is_none(),
            "raw leaves the headers key out"
        );
        let e = event(
            Platform::Spika,
            r#"{"message":{"id":1},"data":{"message":"x"}}"#,
        )
        .expect("event");
        assert_eq!(e["id"], "1");
    }

    #[test]
    fn users_need_an_id_and_bot_flags_are_booleans_only() {
        let e = event(
            Platform::Funtek,
            r#"{"event":"ADD_MEMBERS","data":{"sender":{"nickname":"no id"},"members":[{"_id":"a","isRobot":"yes"},{"nickname":"x"},{"id":3,"isRobot":true}]}}"#,
        )
        .expect("event");
        assert_eq!(e["actor"], Value::Null);
        assert_eq!(
            e["members"],
            json!([{"id":"a","name":null,"is_bot":null},{"id":"3","name":null,"is_bot":true}])
        );
        assert_eq!(e["type"], "member.added");
    }

    #[test]
    fn funtek_ids_prefer_id_over_underscore_id() {
        let e = event(
            Platform::Funtek,
            r#"{"event":"MESSAGE","data":{"_id":"b","id":"a","message":"m"}}"#,
        )
        .expect("event");
        assert_eq!(e["id"], "a");
        assert_eq!(e["message"]["id"], "a");
        let e = event(
            Platform::Funtek,
            r#"{"event":"MESSAGE","data":{"_id":"b","id":""}}"#,
        )
        .expect("event");
        assert_eq!(e["id"], "b", "an empty string counts as missing");
    }

    #[test]
    fn barertc_knows_users_by_name_and_drops_the_key_from_raw() {
        let e = event(
            Platform::Barertc,
            r#"{"Action":"report","APIKey":"k","APIKey":"k2","Report":{"FromUsername":"al","Channel":"n/a"}}"#,
        )
        .expect("event");
        assert_eq!(e["actor"], json!({"id":"al","name":"al","is_bot":null}));
        assert_eq!(e["room"], Value::Null, "n/a is no room");
        assert!(e["raw"].get("APIKey").is_none(), "every APIKey is left out");
        assert_eq!(e["id"].as_str().map(str::len), Some(32), "a derived id");
        let e = event(
            Platform::Barertc,
            r#"{"Action":"profile","Username":"bob"}"#,
        )
        .expect("event");
        assert_eq!(
            (e["type"].as_str(), &e["subject"]["id"]),
            (Some("profile.requested"), &json!("bob"))
        );
    }

    #[test]
    fn derived_ids_are_stable_for_the_same_bytes() {
        let body = r#"{"type":"contact.created"}"#;
        let a = event(Platform::Protocol, body).expect("event");
        let b = event(Platform::Protocol, body).expect("event");
        assert_eq!(a["id"], b["id"]);
        assert_eq!(a["id"], crate::event::derived_id(body.as_bytes()));
    }
}
