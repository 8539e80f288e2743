//! The job request validator on arbitrary bytes: it answers Malformed, Invalid or a spec, and
//! never panics; an accepted spec reads back as itself.
#![no_main]

use aura::domain::spec::{JobSpec, SpecError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    match JobSpec::from_json_bytes(body) {
        Ok(spec) => {
            let value = serde_json::to_value(&spec).expect("a spec serializes");
            assert_eq!(JobSpec::from_value(&value), Ok(spec));
        }
        Err(SpecError::Malformed(_)) => assert!(serde_json::from_slice::<serde_json::Value>(body).is_err()),
        Err(SpecError::Invalid(errors)) => assert!(!errors.is_empty()),
    }
});
