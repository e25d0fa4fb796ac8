//! BareRTC: the site's AdminAPIKey in the body's `APIKey` field; actions `report` and
//! `profile`; the sender reads `{"StatusCode":200,"Data":{…}}` (its profile card) and needs
//! exactly 200 for a report. It knows users only by username.

use std::borrow::Cow;

use serde::Serialize;

use super::{Delivery, NotPlatformJson, Platform, blank_event, username};
use crate::event::{Event, Message, Report, Room, unlisted_type};
use crate::json::{Object, Text};
use crate::reply::NormalizedReply;
use crate::time::parse_barertc_timestamp;
use crate::verify::Scheme;

pub const SCHEME: Scheme = Scheme::BodyKey { field: "APIKey" };

pub fn normalize<'a>(
    object: &Object<'a>,
    delivery: &Delivery<'a>,
) -> Result<Event<'a>, NotPlatformJson> {
    let action = object
        .string("Action")
        .ok_or(NotPlatformJson("barertc: no string \"Action\""))?;
    let kind = match action.as_ref() {
        "report" => Cow::Borrowed("report.created"),
        "profile" => Cow::Borrowed("profile.requested"),
        other => Cow::Owned(unlisted_type("barertc", other)),
    };
    let mut event = blank_event(delivery, Platform::Barertc, None, action.clone(), kind);
    match action.as_ref() {
        "report" => {
            // A report without a Report object still has message and report objects.
            let report = object.object("Report").unwrap_or_default();
            // Exactly "n/a" marks a report outside any channel.
            event.room = report
                .id("Channel")
                .filter(|c| c != "n/a")
                .map(|id| Room { id, name: None });
            event.actor = username(&report, "FromUsername");
            event.subject = username(&report, "AboutUsername");
            event.message = Some(Message {
                id: None,
                text: report.text("Message"),
                kind: Some(Text::from_static("text")),
            });
            event.report = Some(Report {
                reason: report.text("Reason"),
                comment: report.text("Comment"),
            });
            event.occurred_at = report
                .string("Timestamp")
                .and_then(|t| parse_barertc_timestamp(&t));
        }
        "profile" => event.subject = username(object, "Username"),
        _ => {}
    }
    Ok(event)
}

#[derive(Serialize)]
struct Card<'a> {
    #[serde(rename = "StatusCode")]
    status_code: u16,
    #[serde(rename = "Data")]
    data: CardData<'a>,
}

#[derive(Serialize)]
struct CardData<'a> {
    #[serde(rename = "OK")]
    ok: bool,
    #[serde(rename = "Error", skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(rename = "Headline", skip_serializing_if = "Option::is_none")]
    headline: Option<&'a str>,
    #[serde(rename = "ProfileFields", skip_serializing_if = "Option::is_none")]
    profile_fields: Option<Vec<Field<'a>>>,
}

#[derive(Serialize)]
struct Field<'a> {
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "Value")]
    value: &'a str,
}

/// A profile card: `error` (a string) makes `OK:false`; else `Headline` when it is a string
/// and `ProfileFields` (`[]` without a profile).
pub fn answer(reply: &NormalizedReply<'_>) -> Vec<u8> {
    let data = match reply.error.as_deref() {
        Some(error) => CardData {
            ok: false,
            error: Some(error),
            headline: None,
            profile_fields: None,
        },
        None => CardData {
            ok: true,
            error: None,
            headline: reply.headline.as_deref(),
            profile_fields: Some(
                reply
                    .profile
                    .iter()
                    .flatten()
                    .map(|(name, value)| Field { name, value })
                    .collect(),
            ),
        },
    };
    serde_json::to_vec(&Card {
        status_code: 200,
        data,
    })
    .unwrap_or_default()
}

pub const SAMPLE: &str = r#"{"Action":"report","APIKey":"","Report":{"FromUsername":"sender","AboutUsername":"spammer","Channel":"lobby","Timestamp":"2024-07-22T11:49:47+02:00","Reason":"It's spam","Comment":"sent by hookgate sign","Message":"buy cheap watches"}}"#;
