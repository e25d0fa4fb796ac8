//! Spika: a static per-room token in `Verification-Signature`; on every new message
//! `{"message","fromUser","room"}` (its server since 2022-11) or the same inside `{"data":…}`
//! (its docs); the sender reads only the status and never retries.

use std::borrow::Cow;

use http::HeaderName;

use super::{Delivery, NotPlatformJson, Platform, blank_event};
use crate::event::{Event, Message, Room, User};
use crate::json::Object;
use crate::verify::Scheme;

pub const SCHEME: Scheme = Scheme::HeaderToken {
    header: HeaderName::from_static("verification-signature"),
};

pub fn normalize<'a>(
    object: &Object<'a>,
    delivery: &Delivery<'a>,
) -> Result<Event<'a>, NotPlatformJson> {
    // Paths are under `data` when `data.message` is an object, else under the body.
    let data = object
        .object("data")
        .filter(|d| d.object("message").is_some());
    let root = data.as_ref().unwrap_or(object);
    let message = root.object("message").ok_or(NotPlatformJson(
        "spika: no object \"message\" or \"data.message\"",
    ))?;

    let mut event = blank_event(
        delivery,
        Platform::Spika,
        message.id("id"),
        Cow::Borrowed("message"),
        Cow::Borrowed("message.created"),
    );
    event.room = message.id("roomId").map(|id| Room {
        id,
        name: root.object("room").and_then(|r| r.text("name")),
    });
    event.actor = message.id("fromUserId").map(|id| User {
        id,
        name: root.object("fromUser").and_then(|u| u.text("displayName")),
        is_bot: None,
    });
    event.message = Some(Message {
        id: message.id("id"),
        text: message.object("body").and_then(|b| b.text("text")),
        kind: message.text("type"),
    });
    event.occurred_at = message
        .unix_millis("createdAt")
        .and_then(crate::time::Millis::new);
    Ok(event)
}

pub const SAMPLE: &str = r#"{"message":{"id":24006,"fromUserId":54,"roomId":438,"type":"text","body":{"text":"Hello from hookgate sign"},"createdAt":1667548137257},"fromUser":{"displayName":"Stjepan"},"room":{"name":"tstt"}}"#;
