//! The two stream paths, named once: the router mounts its handlers at them and the accept
//! loop's sniffer recognizes them, so renaming one cannot silently lose the socket takeover.

/// Every job's (or some jobs') events.
pub const ALL_EVENTS: &str = "/api/events";
/// One job's events, as an axum route pattern.
pub const JOB_EVENTS: &str = "/api/jobs/{job_id}/events";

/// What [`JOB_EVENTS`] looks like around its one parameter.
fn job_events_parts() -> (&'static str, &'static str) {
    let (prefix, rest) = JOB_EVENTS.split_once('{').unwrap_or((JOB_EVENTS, ""));
    let suffix = rest.split_once('}').map_or("", |(_, s)| s);
    (prefix, suffix)
}

/// The literal start of every stream request line, for the sniffer's early rejection.
pub fn request_prefixes() -> [String; 2] {
    [format!("GET {ALL_EVENTS}"), format!("GET {}", job_events_parts().0)]
}

/// Whether `path` (no query) is one of the stream paths.
pub fn is_stream(path: &str) -> bool {
    let (prefix, suffix) = job_events_parts();
    path == ALL_EVENTS
        || path
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_paths_are_recognized_and_nothing_else() {
        assert!(is_stream("/api/events"));
        assert!(is_stream("/api/jobs/0190e3a8-0000-7000-8000-000000000000/events"));
        for other in ["/api/events/x", "/api/jobs//events", "/api/jobs/a/b/events", "/api/jobs/a", "/"] {
            assert!(!is_stream(other), "{other}");
        }
        assert_eq!(request_prefixes(), ["GET /api/events".to_owned(), "GET /api/jobs/".to_owned()]);
    }
}
