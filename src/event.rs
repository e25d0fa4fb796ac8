//! The normalized event (SPEC §7, `schema/event.v1.schema.json`): what the upstream gets
//! in event mode. Every key is always written (`null` where the platform has nothing),
//! except `raw`, which is left out when a source says `include_raw = false`.

use std::borrow::Cow;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::json::{JsonOut, RawObject, Text};
use crate::time::Millis;

#[derive(Serialize)]
pub struct Event<'a> {
    pub schema: &'static str,
    pub id: Cow<'a, str>,
    pub source: &'a str,
    pub platform: &'static str,
    #[serde(rename = "type")]
    pub kind: Cow<'a, str>,
    pub platform_type: Cow<'a, str>,
    pub occurred_at: Option<Millis>,
    pub received_at: Millis,
    pub room: Option<Room<'a>>,
    pub actor: Option<User<'a>>,
    pub subject: Option<User<'a>>,
    pub message: Option<Message<'a>>,
    pub members: Option<Vec<User<'a>>>,
    pub report: Option<Report<'a>>,
    pub state: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawObject<'a, 'a>>,
}

#[derive(Serialize, Debug)]
pub struct Room<'a> {
    pub id: Cow<'a, str>,
    pub name: Option<Text<'a>>,
}

#[derive(Serialize, Debug)]
pub struct User<'a> {
    pub id: Cow<'a, str>,
    pub name: Option<Text<'a>>,
    pub is_bot: Option<bool>,
}

#[derive(Serialize, Debug)]
pub struct Message<'a> {
    pub id: Option<Cow<'a, str>>,
    pub text: Option<Text<'a>>,
    pub kind: Option<Text<'a>>,
}

#[derive(Serialize, Debug)]
pub struct Report<'a> {
    pub reason: Option<Text<'a>>,
    pub comment: Option<Text<'a>>,
}

pub const SCHEMA: &str = "hookgate.event.v1";

/// The event's JSON, written by hand: the keys are fixed and most values are the body's
/// own literals, so there is nothing to escape but decoded strings. (Through serde, every
/// key and value went through serde_json's escaping.) The `Serialize` derive writes the
/// same bytes and serves tests and tools; proptest and the fuzz targets hold the two together.
impl Event<'_> {
    pub fn write_json<O: JsonOut>(&self, out: &mut O) {
        out.raw(b"{\"schema\":");
        out.string(self.schema);
        out.raw(b",\"id\":");
        out.string(&self.id);
        out.raw(b",\"source\":");
        out.string(self.source);
        out.raw(b",\"platform\":");
        out.string(self.platform);
        out.raw(b",\"type\":");
        out.string(&self.kind);
        out.raw(b",\"platform_type\":");
        out.string(&self.platform_type);
        out.raw(b",\"occurred_at\":");
        write_opt(out, self.occurred_at.as_ref(), write_time);
        out.raw(b",\"received_at\":");
        write_time(out, &self.received_at);
        out.raw(b",\"room\":");
        write_opt(out, self.room.as_ref(), |out, room| {
            out.raw(b"{\"id\":");
            out.string(&room.id);
            out.raw(b",\"name\":");
            write_opt(out, room.name.as_ref(), write_text);
            out.raw(b"}");
        });
        out.raw(b",\"actor\":");
        write_opt(out, self.actor.as_ref(), write_user);
        out.raw(b",\"subject\":");
        write_opt(out, self.subject.as_ref(), write_user);
        out.raw(b",\"message\":");
        write_opt(out, self.message.as_ref(), |out, m| {
            out.raw(b"{\"id\":");
            write_opt(out, m.id.as_deref(), |out, id| out.string(id));
            out.raw(b",\"text\":");
            write_opt(out, m.text.as_ref(), write_text);
            out.raw(b",\"kind\":");
            write_opt(out, m.kind.as_ref(), write_text);
            out.raw(b"}");
        });
        out.raw(b",\"members\":");
        write_opt(out, self.members.as_ref(), |out, members| {
            out.raw(b"[");
            for (i, user) in members.iter().enumerate() {
                if i > 0 {
                    out.raw(b",");
                }
                write_user(out, user);
            }
            out.raw(b"]");
        });
        out.raw(b",\"report\":");
        write_opt(out, self.report.as_ref(), |out, r| {
            out.raw(b"{\"reason\":");
            write_opt(out, r.reason.as_ref(), write_text);
            out.raw(b",\"comment\":");
            write_opt(out, r.comment.as_ref(), write_text);
            out.raw(b"}");
        });
        out.raw(b",\"state\":");
        write_opt(out, self.state.as_ref(), write_text);
        if let Some(raw) = &self.raw {
            out.raw(b",\"raw\":");
            raw.write(out);
        }
        out.raw(b"}");
    }
}

fn write_opt<O: JsonOut, T: ?Sized>(
    out: &mut O,
    value: Option<&T>,
    write: impl FnOnce(&mut O, &T),
) {
    match value {
        Some(v) => write(out, v),
        None => out.raw(b"null"),
    }
}

fn write_text<O: JsonOut>(out: &mut O, text: &Text<'_>) {
    text.write(out);
}

fn write_time<O: JsonOut>(out: &mut O, t: &Millis) {
    out.raw(b"\"");
    out.raw(&t.rfc3339_bytes());
    out.raw(b"\"");
}

fn write_user<O: JsonOut>(out: &mut O, user: &User<'_>) {
    out.raw(b"{\"id\":");
    out.string(&user.id);
    out.raw(b",\"name\":");
    write_opt(out, user.name.as_ref(), write_text);
    out.raw(b",\"is_bot\":");
    out.raw(match user.is_bot {
        Some(true) => b"true",
        Some(false) => b"false",
        None => b"null",
    });
    out.raw(b"}");
}

/// The id of a delivery that carries none: the first 32 hex digits of SHA-256 of the raw
/// body, so a re-delivery of the same bytes gets the same id.
pub fn derived_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    hex::encode(&digest[..16])
}

/// The event `type` for a platform type the mapping table does not list:
/// `<platform>.<name>`, name cleaned to `[a-z0-9_.]` segments, `unknown` if nothing is left.
pub fn unlisted_type(platform: &str, platform_type: &str) -> String {
    let cleaned: String = platform_type
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' | '_' | '.' => c,
            _ => '_',
        })
        .collect();
    let name = cleaned
        .split('.')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(".");
    if name.is_empty() {
        format!("{platform}.unknown")
    } else {
        format!("{platform}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlisted_types_are_cleaned_per_the_rule() {
        assert_eq!(
            unlisted_type("protocol", "Call.Started"),
            "protocol.call.started"
        );
        assert_eq!(unlisted_type("protocol", ".x."), "protocol.x");
        assert_eq!(
            unlisted_type("protocol", "..Poll.V2--Closed.."),
            "protocol.poll.v2__closed"
        );
        assert_eq!(unlisted_type("protocol", "..."), "protocol.unknown");
        assert_eq!(unlisted_type("funtek", ""), "funtek.unknown");
        // Each non-ASCII scalar value becomes one `_`; non-ASCII letters are not lower-cased.
        assert_eq!(unlisted_type("spika", "Ünï.😀"), "spika._n_._");
        assert_eq!(unlisted_type("barertc", "ban_user"), "barertc.ban_user");
    }

    #[test]
    fn derived_id_is_32_hex_of_sha256() {
        assert_eq!(derived_id(b""), "e3b0c44298fc1c149afbf4c8996fb924");
    }
}
