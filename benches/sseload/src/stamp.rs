//! Reads the send-time stamp (and an optional sequence number) out of an
//! event's JSON `data`, in this order: a `"ts_us"` field (unix microseconds,
//! the stamped bodies `sseload pub` sends to hubs such as Nchan); a
//! `ts_us=<digits>` marker anywhere in the data (what `sseload pub --body`
//! puts in place of `{ts_us}`, e.g. in an Aura job's topic, which the job's
//! first event carries back); else `"at"` as an RFC 3339 time (Aura's append
//! stamp). The first two are taken by the publisher just before its POST, so
//! latencies measured from them start at the same clock point on every server.

use serde::Deserialize;
use std::borrow::Cow;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Deserialize)]
struct Fields<'a> {
    ts_us: Option<i64>,
    #[serde(borrow)]
    at: Option<Cow<'a, str>>,
    seq: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Unix microseconds when the event was made, if the data carries it.
    pub ts_us: Option<i64>,
    pub seq: Option<u64>,
}

pub fn read(data: &str) -> Stamp {
    let Ok(f) = serde_json::from_str::<Fields>(data) else {
        return Stamp::default();
    };
    let ts_us = f.ts_us.or_else(|| marker(data)).or_else(|| {
        let at = f.at?;
        let t = OffsetDateTime::parse(&at, &Rfc3339).ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
    });
    Stamp { ts_us, seq: f.seq }
}

/// The number after the first `ts_us=` in `data`, if digits follow it.
fn marker(data: &str) -> Option<i64> {
    let (_, rest) = data.split_once("ts_us=")?;
    let digits: &str = &rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())];
    digits.parse().ok()
}

pub fn now_us() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_micros() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_us_and_seq() {
        assert_eq!(
            read(r#"{"seq":3,"ts_us":1700000000123456,"pad":"x"}"#),
            Stamp {
                ts_us: Some(1_700_000_000_123_456),
                seq: Some(3)
            }
        );
    }

    #[test]
    fn rfc3339_at() {
        let s = read(r#"{"jobId":"j","at":"2023-11-14T22:13:20.123456Z","nested":{"at":1}}"#);
        assert_eq!(s.ts_us, Some(1_700_000_000_123_456));
    }

    #[test]
    fn a_publisher_marker_wins_over_the_append_stamp() {
        let s = read(
            r#"{"jobId":"j","at":"2023-11-14T22:13:20.123456Z","request":{"brief":{"topic":"bench ts_us=1700000000000001"}}}"#,
        );
        assert_eq!(s.ts_us, Some(1_700_000_000_000_001));
        assert_eq!(read(r#"{"at":"2023-11-14T22:13:20.123456Z","t":"ts_us=x"}"#).ts_us, Some(1_700_000_000_123_456));
    }

    #[test]
    fn garbage_is_unstamped() {
        assert_eq!(read("not json"), Stamp::default());
        assert_eq!(read(r#"{"at":"yesterday"}"#).ts_us, None);
    }
}
