//! Times as the event writes them (RFC 3339 UTC, milliseconds) and the timestamp forms
//! BareRTC writes (SPEC §7).
//!
//! Written by hand on purpose: the accepted forms are an exact, narrow set (JavaScript's
//! `Date.toString()`, Go's RFC 1123 with eight named US zones, RFC 3339 with either case
//! of `T`/`Z`, 10 or 13 digits) that no crate's parser matches to the letter, and the
//! civil-date arithmetic is twenty lines (Howard Hinnant's `days_from_civil`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::json::MAX_UNIX_S;

/// Milliseconds since the Unix epoch, within the years 0001–9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(i64);

/// 0001-01-01T00:00:00Z in milliseconds since the epoch.
const MIN_MS: i64 = -62_135_596_800_000;
const MAX_MS: i64 = MAX_UNIX_S * 1000 + 999;

impl Millis {
    /// `None` outside the years 0001–9999.
    pub fn new(ms: i64) -> Option<Millis> {
        (MIN_MS..=MAX_MS).contains(&ms).then_some(Millis(ms))
    }

    pub fn now() -> Millis {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Millis(ms.clamp(0, MAX_MS))
    }

    pub fn as_i64(self) -> i64 {
        self.0
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub fn to_rfc3339(self) -> String {
        String::from_utf8_lossy(&self.rfc3339_bytes()).into_owned()
    }

    /// The RFC 3339 text on the stack: it is written twice per event, so no allocation
    /// and no formatting machinery.
    pub fn rfc3339_bytes(self) -> [u8; 24] {
        let days = self.0.div_euclid(86_400_000);
        let ms_of_day = self.0.rem_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        let s = ms_of_day / 1000;
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: i64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y);
        put(5, 2, m);
        put(8, 2, d);
        put(11, 2, s / 3600);
        put(14, 2, s / 60 % 60);
        put(17, 2, s % 60);
        put(20, 3, ms_of_day % 1000);
        out
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = self.rfc3339_bytes();
        // Only ASCII digits and separators were written.
        s.serialize_str(std::str::from_utf8(&bytes).unwrap_or("0000-00-00T00:00:00.000Z"))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// A local date-time and its UTC offset in minutes, checked, to UTC milliseconds.
struct Parts {
    y: i64,
    mo: i64,
    d: i64,
    h: i64,
    mi: i64,
    s: i64,
    ms: i64,
    offset_min: i64,
}

impl Parts {
    fn to_millis(&self) -> Option<Millis> {
        let valid = (1..=9999).contains(&self.y)
            && (1..=12).contains(&self.mo)
            && (1..=days_in_month(self.y, self.mo)).contains(&self.d)
            && (0..24).contains(&self.h)
            && (0..60).contains(&self.mi)
            && (0..60).contains(&self.s);
        if !valid {
            return None;
        }
        let days = days_from_civil(self.y, self.mo, self.d);
        let local = ((days * 24 + self.h) * 60 + self.mi) * 60 + self.s;
        Millis::new((local - self.offset_min * 60) * 1000 + self.ms)
    }
}

/// A fixed number of ASCII digits.
fn digits(s: &str, n: usize) -> Option<i64> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `±hhmm` (or `±hh:mm` with `colon`) as minutes east of UTC.
fn offset(s: &str, colon: bool) -> Option<i64> {
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let rest = &s[1..];
    let (h, m) = if colon {
        let (h, m) = rest.split_once(':')?;
        (digits(h, 2)?, digits(m, 2)?)
    } else {
        (digits(rest.get(..2)?, 2)?, digits(rest.get(2..)?, 2)?)
    };
    (h < 24 && m < 60).then_some(sign * (h * 60 + m))
}

/// `HH:MM:SS`.
fn clock(s: &str) -> Option<(i64, i64, i64)> {
    let mut it = s.split(':');
    let t = (
        digits(it.next()?, 2)?,
        digits(it.next()?, 2)?,
        digits(it.next()?, 2)?,
    );
    it.next().is_none().then_some(t)
}

fn month(s: &str) -> Option<i64> {
    MONTHS.iter().position(|m| *m == s).map(|i| i as i64 + 1)
}

/// RFC 3339 with seconds and an offset; `T` and `Z` in either case.
fn parse_rfc3339(s: &str) -> Option<Millis> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let (h, mi, sec) = clock(s.get(11..19)?)?;
    let mut rest = s.get(19..)?;
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        // Finer digits than milliseconds are cut, not rounded.
        let first3 = format!("{:0<3}", &frac[..n.min(3)]);
        ms = first3.parse().ok()?;
        rest = &frac[n..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ => offset(rest, true)?,
    };
    Parts {
        y: digits(s.get(..4)?, 4)?,
        mo: digits(s.get(5..7)?, 2)?,
        d: digits(s.get(8..10)?, 2)?,
        h,
        mi,
        s: sec,
        ms,
        offset_min,
    }
    .to_millis()
}

/// Go's RFC 1123: `Wed, 02 Jul 2025 13:53:22 EDT` (or a numeric zone).
fn parse_rfc1123(s: &str) -> Option<Millis> {
    let (day, rest) = s.split_once(", ")?;
    if !WEEKDAYS.contains(&day) {
        return None;
    }
    let f: Vec<&str> = rest.split(' ').collect();
    let [d, mo, y, t, zone] = f.as_slice() else {
        return None;
    };
    let offset_min = match *zone {
        "GMT" | "UT" | "UTC" => 0,
        "EST" => -300,
        "EDT" => -240,
        "CST" => -360,
        "CDT" => -300,
        "MST" => -420,
        "MDT" => -360,
        "PST" => -480,
        "PDT" => -420,
        z => offset(z, false)?,
    };
    named_month_date(y, mo, d, t, offset_min)
}

/// A date with a named month and a `HH:MM:SS` time, as both textual forms write it.
fn named_month_date(y: &str, mo: &str, d: &str, t: &str, offset_min: i64) -> Option<Millis> {
    let (h, mi, sec) = clock(t)?;
    Parts {
        y: digits(y, 4)?,
        mo: month(mo)?,
        d: digits(d, 2)?,
        h,
        mi,
        s: sec,
        ms: 0,
        offset_min,
    }
    .to_millis()
}

/// JavaScript's `Date.toString()`: `Wed Jul 02 2025 13:53:22 GMT-0400 (Eastern Daylight Time)`,
/// the bracketed zone name optional.
fn parse_js_date(s: &str) -> Option<Millis> {
    let head = match s.find(" (") {
        Some(i) if s.ends_with(')') => &s[..i],
        _ => s,
    };
    let f: Vec<&str> = head.split(' ').collect();
    let [day, mo, d, y, t, zone] = f.as_slice() else {
        return None;
    };
    if !WEEKDAYS.contains(day) {
        return None;
    }
    named_month_date(y, mo, d, t, offset(zone.strip_prefix("GMT")?, false)?)
}

/// A BareRTC `Report.Timestamp` in any of the forms it writes; anything else is `None`.
pub fn parse_barertc_timestamp(s: &str) -> Option<Millis> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = s.parse().ok()?;
        return match s.len() {
            10 => Millis::new(n * 1000),
            13 => Millis::new(n),
            _ => None,
        };
    }
    parse_rfc3339(s)
        .or_else(|| parse_rfc1123(s))
        .or_else(|| parse_js_date(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<String> {
        parse_barertc_timestamp(s).map(Millis::to_rfc3339)
    }

    /// Each input read as the instant given (RFC 3339, milliseconds), or refused.
    fn reads_as(cases: &[(&str, Option<&str>)]) {
        for (input, want) in cases {
            assert_eq!(p(input).as_deref(), *want, "{input}");
        }
    }

    #[test]
    fn formats_with_milliseconds() {
        assert_eq!(Millis(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Millis(692_233_200_000).to_rfc3339(),
            "1991-12-08T23:00:00.000Z"
        );
        assert_eq!(Millis(MAX_MS).to_rfc3339(), "9999-12-31T23:59:59.999Z");
        assert_eq!(Millis(MIN_MS).to_rfc3339(), "0001-01-01T00:00:00.000Z");
        assert_eq!(Millis(-1).to_rfc3339(), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn the_forms_barertc_writes() {
        let cases = [
            (
                "2024-07-22t11:49:47.123456z",
                Some("2024-07-22T11:49:47.123Z"),
            ),
            (
                "2024-07-22T11:49:47+02:00",
                Some("2024-07-22T09:49:47.000Z"),
            ),
            (
                "2024-07-22T11:49:47.9-00:30",
                Some("2024-07-22T12:19:47.900Z"),
            ),
            ("1721641787", Some("2024-07-22T09:49:47.000Z")),
            ("1721641787123", Some("2024-07-22T09:49:47.123Z")),
            ("172164178", None),
            ("2024-07-22 11:49:47+02:00", None),
            ("2024-07-22T11:49+02:00", None),
            ("2024-07-22T11:49:47", None),
            ("2024-02-30T11:49:47Z", None),
            (
                "Wed Jul 02 2025 13:53:22 GMT-0400 (Eastern Daylight Time)",
                Some("2025-07-02T17:53:22.000Z"),
            ),
            (
                "Wed Jul 02 2025 13:53:22 GMT+0530",
                Some("2025-07-02T08:23:22.000Z"),
            ),
            (
                "Mon Jul 02 2025 13:53:22 GMT+0530",
                Some("2025-07-02T08:23:22.000Z"),
            ),
            ("Xyz Jul 02 2025 13:53:22 GMT+0530", None),
            (
                "Wed, 02 Jul 2025 13:53:22 EDT",
                Some("2025-07-02T17:53:22.000Z"),
            ),
            (
                "Wed, 02 Jul 2025 13:53:22 +0200",
                Some("2025-07-02T11:53:22.000Z"),
            ),
            (
                "Wed, 02 Jul 2025 13:53:22 UT",
                Some("2025-07-02T13:53:22.000Z"),
            ),
            ("Wed, 02 Jul 2025 13:53:22 CEST", None),
            ("Wed, 02 jul 2025 13:53:22 GMT", None),
            ("0001-01-01T00:00:00+00:01", None),
            ("9999-12-31T23:59:59-00:01", None),
            ("", None),
            ("not a time", None),
        ];
        reads_as(&cases);
    }

    #[test]
    fn civil_round_trip() {
        for days in [-719_162, -1, 0, 1, 11_016, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    /// Every day of 0001–9999 is a valid date, the day after the one before it, and
    /// converts back to itself.
    #[test]
    fn every_day_follows_the_one_before() {
        let first = days_from_civil(1, 1, 1);
        let last = days_from_civil(9999, 12, 31);
        assert_eq!((first, last), (-719_162, 2_932_896));
        let mut prev = (0, 12, 31);
        for days in first..=last {
            let (y, m, d) = civil_from_days(days);
            let next = if prev.2 < days_in_month(prev.0, prev.1) {
                (prev.0, prev.1, prev.2 + 1)
            } else if prev.1 < 12 {
                (prev.0, prev.1 + 1, 1)
            } else {
                (prev.0 + 1, 1, 1)
            };
            assert_eq!((y, m, d), next, "day {days}");
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
            prev = (y, m, d);
        }
        // 146,097 days in 400 years: 97 leap years each.
        let feb29 = (1..=400).filter(|y| days_in_month(*y, 2) == 29).count();
        assert_eq!(feb29, 97);
    }

    #[test]
    fn the_range_is_0001_to_9999() {
        assert_eq!(Millis::new(MIN_MS), Some(Millis(MIN_MS)));
        assert_eq!(Millis::new(MIN_MS - 1), None);
        assert_eq!(Millis::new(MAX_MS), Some(Millis(MAX_MS)));
        assert_eq!(Millis::new(MAX_MS + 1), None);
        assert_eq!(Millis(MAX_MS).as_i64(), MAX_MS);
        // This test was written in 2026; a clock before that is a broken clock.
        assert!(Millis::now().as_i64() > 1_767_225_600_000);
        assert_eq!(
            serde_json::to_string(&Millis(1_000)).ok().as_deref(),
            Some("\"1970-01-01T00:00:01.000Z\"")
        );
    }

    /// Each of the zone names Go's RFC 1123 writes, and the dates, clocks and offsets at
    /// the edges of what is valid.
    #[test]
    fn zones_calendars_clocks_and_offsets_at_their_edges() {
        let at = |zone: &str| p(&format!("Wed, 02 Jul 2025 12:00:00 {zone}"));
        for (zone, utc) in [
            ("GMT", "2025-07-02T12:00"),
            ("UT", "2025-07-02T12:00"),
            ("UTC", "2025-07-02T12:00"),
            ("EST", "2025-07-02T17:00"),
            ("EDT", "2025-07-02T16:00"),
            ("CST", "2025-07-02T18:00"),
            ("CDT", "2025-07-02T17:00"),
            ("MST", "2025-07-02T19:00"),
            ("MDT", "2025-07-02T18:00"),
            ("PST", "2025-07-02T20:00"),
            ("PDT", "2025-07-02T19:00"),
            ("-0000", "2025-07-02T12:00"),
            ("+2359", "2025-07-01T12:01"),
            ("-2359", "2025-07-03T11:59"),
        ] {
            assert_eq!(at(zone), Some(format!("{utc}:00.000Z")), "{zone}");
        }
        for zone in ["+2400", "+0060", "0000", "+000", "+00000", "gmt", "Z"] {
            assert_eq!(at(zone), None, "{zone}");
        }
        let cases = [
            ("2024-02-29T00:00:00Z", Some("2024-02-29T00:00:00.000Z")),
            ("2000-02-29T00:00:00Z", Some("2000-02-29T00:00:00.000Z")),
            ("2023-02-29T00:00:00Z", None),
            ("1900-02-29T00:00:00Z", None),
            ("2023-02-28T23:59:59Z", Some("2023-02-28T23:59:59.000Z")),
            ("2024-04-31T00:00:00Z", None),
            ("2024-12-31T00:00:00Z", Some("2024-12-31T00:00:00.000Z")),
            ("2024-13-01T00:00:00Z", None),
            ("2024-00-10T00:00:00Z", None),
            ("2024-01-00T00:00:00Z", None),
            ("0000-01-01T00:00:00Z", None),
            ("2024-01-01T24:00:00Z", None),
            ("2024-01-01T23:60:00Z", None),
            ("2024-01-01T23:59:60Z", None),
            (
                "2024-01-01T23:59:59+23:59",
                Some("2024-01-01T00:00:59.000Z"),
            ),
            ("2024-01-01T23:59:59+24:00", None),
            ("2024-01-01T23:59:59+01:60", None),
            ("2024-01-01T23:59:59+0100", None),
            ("2024-01-01T23:59:59.Z", None),
            (
                "2024-01-01T23:59:59.1234567899Z",
                Some("2024-01-01T23:59:59.123Z"),
            ),
            ("2024-01-01T23:59:59.05Z", Some("2024-01-01T23:59:59.050Z")),
            ("2024/01/01T23:59:59Z", None),
            ("2024-01/01T23:59:59Z", None),
            ("2024/01-01T23:59:59Z", None),
            ("2024-01-01 23:59:59Z", None),
            ("x", None),
            ("2024-", None),
            ("2024-01-01T23:59:59ZZ", None),
            ("2024-01-01T23:59:59:00Z", None),
            ("0000000000", Some("1970-01-01T00:00:00.000Z")),
            ("0000000000000", Some("1970-01-01T00:00:00.000Z")),
            ("9999999999", Some("2286-11-20T17:46:39.000Z")),
            ("00000000000", None),
            ("000000000000", None),
            ("99999999999999", None),
            ("Wed Jul 02 2025 13:53:22 GMT-0400 (Eastern", None),
            ("Wed Jul 02 2025 13:53:22 -0400", None),
            ("Wed Jul 2 2025 13:53:22 GMT-0400", None),
            ("Wed, 2 Jul 2025 13:53:22 GMT", None),
            ("Xyz, 02 Jul 2025 13:53:22 GMT", None),
            ("Wed, 02 Jul 2025 13:53:22", None),
            ("Wed, 02 Jul 2025 13:53 GMT", None),
            (
                "Sun, 31 Dec 9999 23:59:59 GMT",
                Some("9999-12-31T23:59:59.000Z"),
            ),
        ];
        reads_as(&cases);
    }
}
