//! The resume-point parser (`Last-Event-ID`, `lastEventId`): only 1 to 19 ASCII digits that fit
//! an i64 are accepted.
#![no_main]

use aura::domain::event::parse_event_id;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    let plain = !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit());
    let expected = if plain { s.parse::<i64>().ok() } else { None };
    assert_eq!(parse_event_id(s), expected);
});
