//! The SSE encoder on arbitrary stored rows: whatever `type` and `data` a row holds, its frame
//! is exactly one `id:`, one `event:` and one `data:` line and a blank line, with no CR.
#![no_main]

use aura::domain::event::StoredEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (i64, String, String)| {
    let (id, kind, data) = input;
    let id = id.checked_abs().unwrap_or(0);
    let event = StoredEvent::new(id, uuid::Uuid::nil(), kind, data, String::new());
    let frame = std::str::from_utf8(&event.frame).expect("frames are UTF-8");
    assert!(!frame.contains('\r'), "{frame:?}");
    let lines: Vec<&str> = frame.split('\n').collect();
    assert_eq!(lines.len(), 5, "{frame:?}");
    assert_eq!(lines[0], format!("id: {id}"));
    assert!(lines[1].starts_with("event: ") && lines[2].starts_with("data: "));
    assert_eq!((lines[3], lines[4]), ("", ""));
});
