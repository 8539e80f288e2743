//! Properties of the functions that read untrusted input, checked on generated input by
//! proptest in every `cargo test`: the request validator, the resume-point parser, the list
//! cursor decoder and the event encoder. They never panic, and they accept exactly what they
//! document. (`fuzz/` runs the same functions under libFuzzer for longer.)

use aura::domain::event::StoredEvent;
use aura::domain::event::parse_event_id;
use aura::domain::spec::{JobSpec, SpecError};
use aura::http::jobs::parse_cursor;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// Any JSON value, a few levels deep, with keys the validator knows mixed in.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("brief".to_owned()),
        Just("topic".to_owned()),
        Just("planSpec".to_owned()),
        Just("targetDuration".to_owned()),
        Just("renderSpec".to_owned()),
        Just("res".to_owned()),
        Just("fps".to_owned()),
        Just("container".to_owned()),
        Just("codec".to_owned()),
        Just("voiceSpec".to_owned()),
        Just("rate".to_owned()),
        ".{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        "[0-9]{2}:[0-9]{2}:[0-9]{2}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A valid request with one field replaced by anything.
fn mutated_request() -> impl Strategy<Value = Value> {
    let paths = prop_oneof![
        Just(("brief", "topic")),
        Just(("brief", "aspect")),
        Just(("planSpec", "targetDuration")),
        Just(("voiceSpec", "rate")),
        Just(("renderSpec", "res")),
        Just(("renderSpec", "fps")),
        Just(("renderSpec", "codec")),
        Just(("renderSpec", "container")),
    ];
    (paths, any_json()).prop_map(|((section, field), value)| {
        let mut request = json!({"brief": {"topic": "t"}, "planSpec": {}, "voiceSpec": {}, "renderSpec": {}});
        request[section][field] = value;
        request
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_validator_accepts_or_rejects_any_json_without_panicking(value in any_json()) {
        let _ = JobSpec::from_value(&value);
    }

    #[test]
    fn an_accepted_request_reads_back_as_itself(value in mutated_request()) {
        if let Ok(spec) = JobSpec::from_value(&value) {
            let again = JobSpec::from_value(&serde_json::to_value(&spec).map_err(|e| TestCaseError::fail(e.to_string()))?);
            prop_assert_eq!(again, Ok(spec));
        }
    }

    #[test]
    fn any_bytes_are_malformed_or_parsed(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let parsed = JobSpec::from_json_bytes(&body);
        if serde_json::from_slice::<Value>(&body).is_err() {
            prop_assert!(matches!(parsed, Err(SpecError::Malformed(_))));
        }
    }

    #[test]
    fn a_resume_point_is_a_plain_non_negative_integer(s in "\\PC{0,24}|[0-9+-]{0,22}") {
        // Some exactly for 1 to 19 ASCII digits whose value fits an i64: no sign, no space.
        let plain = !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit());
        let expected = if plain { s.parse::<i64>().ok() } else { None };
        prop_assert_eq!(parse_event_id(&s), expected);
        prop_assert!(expected.is_none_or(|n| n >= 0));
    }

    #[test]
    fn every_event_id_reads_back(n in 0..=i64::MAX) {
        prop_assert_eq!(parse_event_id(&n.to_string()), Some(n));
    }

    #[test]
    fn a_cursor_is_a_positive_position(s in "\\PC{0,24}|[0-9]{0,20}", n in 1..=i64::MAX) {
        if let Some(c) = parse_cursor(&s) {
            prop_assert!(c > 0);
            prop_assert_eq!(parse_event_id(&s), Some(c));
        }
        prop_assert_eq!(parse_cursor(&n.to_string()), Some(n));
        prop_assert_eq!(parse_cursor("0"), None);
    }

    #[test]
    fn no_field_of_an_event_can_break_an_sse_line(
        id in 0..=i64::MAX,
        kind in "\\PC{0,20}|[a-z\\r\\n -]{0,20}|(?s).{0,20}",
        data in "(?s).{0,80}|[{}\":a-z0-9\\r\\n ,]{0,80}",
    ) {
        let event = StoredEvent::new(id, Uuid::nil(), kind, data, String::new());
        let frame = std::str::from_utf8(&event.frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!frame.contains('\r'), "{frame:?}");
        let lines: Vec<&str> = frame.split('\n').collect();
        // Exactly `id:`, `event:`, `data:`, the blank line ending the event, and nothing after.
        prop_assert_eq!(lines.len(), 5, "{:?}", frame);
        prop_assert_eq!(lines[0], format!("id: {id}"));
        prop_assert!(lines[1].starts_with("event: ") && lines[1].len() > "event: ".len());
        prop_assert!(lines[2].starts_with("data: "));
        prop_assert_eq!((lines[3], lines[4]), ("", ""));
        prop_assert!(!event.kind.contains(['\r', '\n']) && !event.data().contains(['\r', '\n']));
    }
}
