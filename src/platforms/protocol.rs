//! Protocol: an HMAC-SHA256 of the raw body in `x-protocol-signature`; events
//! `{"id","type":"<resource>.<verb>","payload":{…}}`; the sender reads only the status.

use std::borrow::Cow;

use http::HeaderName;

use super::{Delivery, NotPlatformJson, Platform, blank_event, user};
use crate::event::{Event, Message, Room, unlisted_type};
use crate::json::{Object, Text};
use crate::verify::Scheme;

pub const SCHEME: Scheme = Scheme::HmacSha256Hex {
    header: HeaderName::from_static("x-protocol-signature"),
};

const RESOURCES: [&str; 5] = ["contact", "conversation", "message", "group", "attachment"];
const VERBS: [&str; 3] = ["created", "updated", "deleted"];

pub fn normalize<'a>(
    object: &Object<'a>,
    delivery: &Delivery<'a>,
) -> Result<Event<'a>, NotPlatformJson> {
    let platform_type = object
        .string("type")
        .ok_or(NotPlatformJson("protocol: no string \"type\""))?;
    let listed = platform_type
        .split_once('.')
        .is_some_and(|(r, v)| RESOURCES.contains(&r) && VERBS.contains(&v));
    let kind = if listed {
        platform_type.clone()
    } else {
        Cow::Owned(unlisted_type("protocol", &platform_type))
    };
    // Which parts are filled depends on the resource before the first dot, whatever the verb.
    let resource = platform_type.split('.').next().unwrap_or_default();
    let payload = object.object("payload").unwrap_or_default();

    let mut event = blank_event(
        delivery,
        Platform::Protocol,
        object.id("id"),
        platform_type.clone(),
        kind,
    );
    let room_key = if resource == "conversation" {
        "id"
    } else {
        "conversation_id"
    };
    event.room = payload.id(room_key).map(|id| Room { id, name: None });
    event.actor = payload
        .object("contact")
        .and_then(|c| user(&c, &["id"], "username", None));
    if resource == "contact" {
        event.subject = user(&payload, &["id"], "username", None);
    }
    if resource == "message" {
        event.message = Some(Message {
            id: payload.id("id"),
            text: payload.text("message"),
            kind: Some(Text::from_static("text")),
        });
    }
    event.occurred_at = payload
        .unix_seconds("updated_at")
        .or_else(|| payload.unix_seconds("created_at"))
        .and_then(crate::time::Millis::new);
    Ok(event)
}

pub const SAMPLE: &str = r#"{"id":"a056V7R7NmNRjl70","type":"message.created","payload":{"id":"SIuAFUNKdSYHZF2w","conversation_id":"xgQQXg3hrtjh7AvZ","contact":{"id":"WAz8eIbvDR60rouK","username":"KevinMcCallister"},"message":"Hello from hookgate sign","created_at":1721641787}}"#;
