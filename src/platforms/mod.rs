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

    /// Senders that read the answer retry nothing: dedupe is off by default for them.
    pub fn default_dedupe_window_s(self) -> u64 {
        match self {
            Platform::Protocol | Platform::Spika => 300,
            Platform::Barertc | Platform::Funtek => 0,
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

    /// A normalized reply in the platform's own format, or `None` where the sender reads
    /// no answer body (the upstream's is relayed unchanged).
    pub fn answer(self, reply: &NormalizedReply<'_>) -> Option<Vec<u8>> {
        match self {
            Platform::Barertc => Some(barertc::answer(reply)),
            Platform::Funtek => Some(funtek::answer(reply)),
            Platform::Protocol | Platform::Spika => None,
        }
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
