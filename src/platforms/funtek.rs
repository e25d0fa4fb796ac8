//! FUNTEK chat-server: no documented proof, so a secret token in the registered URL
//! (`?token=`) or in `x-webhook-token`; events `{"appID","clientID","roomID","event",
//! "botState","data"}`; the sender reads `{"senderID","toBotState","data":{…}}` as a bot reply.

use std::borrow::Cow;

use http::HeaderName;
use serde::Serialize;

use super::{Delivery, NotPlatformJson, Platform, blank_event, user};
use crate::event::{Event, Message, Room, unlisted_type};
use crate::json::Object;
use crate::reply::NormalizedReply;
use crate::verify::Scheme;

pub const SCHEME: Scheme = Scheme::QueryOrHeaderToken {
    param: "token",
    header: HeaderName::from_static("x-webhook-token"),
};

pub fn normalize<'a>(
    object: &Object<'a>,
    delivery: &Delivery<'a>,
) -> Result<Event<'a>, NotPlatformJson> {
    let platform_type = object
        .string("event")
        .ok_or(NotPlatformJson("funtek: no string \"event\""))?;
    let kind = match platform_type.as_ref() {
        "JOIN_ROOM" => Cow::Borrowed("member.joined"),
        "ADD_MEMBERS" => Cow::Borrowed("member.added"),
        "DELETE_MEMBERS" => Cow::Borrowed("member.removed"),
        "MESSAGE" => Cow::Borrowed("message.created"),
        other => Cow::Owned(unlisted_type("funtek", other)),
    };
    let data = object.object("data").unwrap_or_default();
    let message_id = data.id("id").or_else(|| data.id("_id"));
    let is_message = platform_type == "MESSAGE";

    let mut event = blank_event(
        delivery,
        Platform::Funtek,
        message_id.clone(),
        platform_type,
        kind,
    );
    event.room = object
        .id("roomID")
        .or_else(|| data.id("room"))
        .map(|id| Room { id, name: None });
    let person = |o: &Object<'a>| user(o, &["id", "_id"], "nickname", Some("isRobot"));
    event.actor = data.object("sender").and_then(|s| person(&s));
    if is_message {
        event.message = Some(Message {
            id: message_id,
            text: data.text("message"),
            kind: data.text("messageType"),
        });
    }
    event.members = data.array("members").map(|list| {
        list.into_iter()
            .filter_map(|m| data.object_value(m).and_then(|o| person(&o)))
            .collect()
    });
    event.state = object.text("botState");
    event.occurred_at = data
        .unix_millis("messageTimeMS")
        .and_then(crate::time::Millis::new);
    Ok(event)
}

#[derive(Serialize)]
struct BotReply<'a> {
    #[serde(rename = "senderID")]
    sender_id: Option<&'a str>,
    #[serde(rename = "toBotState")]
    to_bot_state: Option<&'a str>,
    data: Option<BotMessage<'a>>,
}

#[derive(Serialize)]
struct BotMessage<'a> {
    message: Option<&'a str>,
    #[serde(rename = "messageType")]
    message_type: &'a str,
}

/// `{"senderID","toBotState","data":{"message","messageType"}}`; absent parts `null`;
/// `kind` absent, null or empty is `text`; no `reply`: `data` null. `error` has no place here.
pub fn answer(reply: &NormalizedReply<'_>) -> Vec<u8> {
    let r = reply.reply.as_ref();
    let out = BotReply {
        sender_id: r.and_then(|r| r.sender_id.as_deref()),
        to_bot_state: reply.state.as_deref(),
        data: r.map(|r| BotMessage {
            message: r.text.as_deref(),
            message_type: r
                .kind
                .as_deref()
                .filter(|k| !k.is_empty())
                .unwrap_or("text"),
        }),
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

pub const SAMPLE: &str = r#"{"appID":"SampleApp","clientID":"client-1","roomID":"demo-room","event":"MESSAGE","botState":"idle","data":{"id":"5c1ddf2d1536bbb6c49f7cfe","message":"Hello from hookgate sign","room":"demo-room","sender":{"id":"sss","nickname":"Desirae","isRobot":false},"messageType":"text","messageTimeMS":1545461549380}}"#;
