//! The job-list cursor decoder (`before=`): a positive event position or nothing.
#![no_main]

use aura::http::jobs::parse_cursor;
use aura::domain::event::parse_event_id;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    match parse_cursor(s) {
        Some(n) => assert!(n > 0 && parse_event_id(s) == Some(n)),
        None => assert!(parse_event_id(s).is_none_or(|n| n == 0)),
    }
});
