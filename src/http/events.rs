//! The event-stream routes, `GET /api/jobs/{jobId}/events` and `GET /api/events`: every check
//! a stream request needs (ids, resume point, ownership, the global and per-owner caps), in
//! that order, before [`stream::open`] sends any byte.

use axum::Router;
use axum::extract::{RawQuery, State};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::access::auth::Caller;
use crate::access::limits::{StreamGuard, StreamSlot};
use crate::config::StreamCompression;
use crate::domain::job::JobState;
use crate::error::AppError;
use crate::http::extract::{OwnedJob, parse_job_id, parse_query, resume_point};
use crate::http::state::AppState;
use crate::store::EventFilter;
use crate::streaming::follow::MAX_BATCH;
use crate::streaming::stream::Shape;
use crate::streaming::{paths, stream};

pub fn router() -> Router<AppState> {
    Router::new().route(paths::JOB_EVENTS, get(job_events)).route(paths::ALL_EVENTS, get(all_events))
}

/// One job's events as Server-Sent Events: replay after the resume point, then live; the
/// response ends after the job's terminal event.
#[utoipa::path(get, path = "/api/jobs/{job_id}/events", tag = "events",
    params(
        ("job_id" = Uuid, Path, description = "The job's id"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id (wins over the query)"),
        ("lastEventId" = Option<i64>, Query, description = "Resume after this event id"),
        ("batch" = Option<String>, Query, description = "A batch window, `0ms`..`1000ms` (a bare number is milliseconds): within it, `step-progress` events of one job and step collapse to the newest; every other event is sent"),
        ("Accept-Encoding" = Option<String>, Header, description = "With `AURA_STREAM_COMPRESSION=gzip`, a request accepting gzip is answered `Content-Encoding: gzip`, flushed after every event or batch"),
    ),
    responses(
        (status = 200, description = "`retry:`, then `id:`/`event:`/`data:` frames; data is one of the EventData schemas", content_type = "text/event-stream", body = String),
        (status = 204, description = "The job has ended and the resume point is at or past its last event"),
        (status = 400, description = "A bad id or resume point", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many open streams", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn job_events(
    State(app): State<AppState>,
    OwnedJob { caller, job }: OwnedJob,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let query = parse_query(query.as_deref())?;
    let resume = resume_point(&headers, &query)?;
    let shape = shape(&app, &headers, &query)?;
    // A job that has ended has all its events but `output-expired` (see `retention`): replay
    // them and end, whether or not the terminal event is among them.
    let last = if job.status.is_terminal() {
        if resume >= job.last_event_id {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        Some(job.last_event_id)
    } else {
        None
    };
    open(&app, &caller, EventFilter::Jobs(vec![job.job_id]), resume, true, last, shape)
}

/// Events of all jobs, or of those named by repeated `jobId=`; never ends on its own.
#[utoipa::path(get, path = "/api/events", tag = "events",
    params(
        ("jobId" = Option<Vec<Uuid>>, Query, description = "Only these jobs (repeat the parameter)"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id (wins over the query)"),
        ("lastEventId" = Option<i64>, Query, description = "Resume after this event id"),
        ("batch" = Option<String>, Query, description = "A batch window, `0ms`..`1000ms` (a bare number is milliseconds): within it, `step-progress` events of one job and step collapse to the newest; every other event is sent"),
        ("Accept-Encoding" = Option<String>, Header, description = "With `AURA_STREAM_COMPRESSION=gzip`, a request accepting gzip is answered `Content-Encoding: gzip`, flushed after every event or batch"),
    ),
    responses(
        (status = 200, description = "`retry:`, then `id:`/`event:`/`data:` frames; data is one of the EventData schemas", content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad id or resume point", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "A named job does not exist", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many open streams", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn all_events(
    State(app): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let query = parse_query(query.as_deref())?;
    let resume = resume_point(&headers, &query)?;
    let shape = shape(&app, &headers, &query)?;
    let filter = jobs_filter(&caller, named_jobs(&app, &caller, &query).await?);
    open(&app, &caller, filter, resume, false, None, shape)
}

/// The jobs named by repeated `jobId=`, each checked: 400 for a bad id, 404 for an unknown job,
/// 403 for another owner's. Each job once, with its state.
pub async fn named_jobs(
    app: &AppState,
    caller: &Caller,
    query: &[(String, String)],
) -> Result<Vec<JobState>, AppError> {
    let mut jobs: Vec<JobState> = Vec::new();
    for (_, v) in query.iter().filter(|(k, _)| k == "jobId") {
        let id = parse_job_id(v)?;
        let job = app
            .store()
            .job(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("no job has the id {id}")))?;
        caller.check_owns(&job)?;
        if !jobs.iter().any(|j| j.job_id == id) {
            jobs.push(job);
        }
    }
    Ok(jobs)
}

/// The events a multi-job stream carries: the named jobs, else all the caller may see.
pub fn jobs_filter(caller: &Caller, jobs: Vec<JobState>) -> EventFilter {
    match jobs.is_empty() {
        false => EventFilter::Jobs(jobs.into_iter().map(|j| j.job_id).collect()),
        true if caller.sees_all() => EventFilter::All,
        true => EventFilter::Owner(caller.name.clone()),
    }
}

/// Takes a slot under the global cap, then one under the caller's own, and opens the stream.
fn open(
    app: &AppState,
    caller: &Caller,
    filter: EventFilter,
    resume: i64,
    ends_with_job: bool,
    last: Option<i64>,
    shape: Shape,
) -> Result<Response, AppError> {
    let slots = acquire(app, caller)?;
    let mut res = stream::open_until(app.streaming(), slots, filter, resume, ends_with_job, last, shape);
    if app.settings().stream_compression == StreamCompression::Gzip {
        res.headers_mut().insert(header::VARY, header::HeaderValue::from_static("accept-encoding"));
    }
    Ok(res)
}

/// A slot under the global stream cap, then one under the caller's own (the `503` wins when
/// both are exceeded): every stream holds both while it is open, WebSockets too.
pub fn acquire(app: &AppState, caller: &Caller) -> Result<(StreamSlot, StreamGuard), AppError> {
    let slot =
        app.streams().try_acquire(app.settings().max_streams).ok_or_else(|| AppError::Unavailable {
            reason: "max-streams",
            detail: "too many open event streams; retry shortly".into(),
            retry_after_secs: 5,
        })?;
    // Checked after the global cap, so that when both are exceeded the 503 wins.
    let owner_slot = app.limits().acquire_stream(caller)?;
    Ok((slot, owner_slot))
}

/// What the request asks of its stream: a batch window, and gzip when the server allows it.
pub fn shape(app: &AppState, headers: &HeaderMap, query: &[(String, String)]) -> Result<Shape, AppError> {
    let gzip = app.settings().stream_compression == StreamCompression::Gzip && accepts_gzip(headers);
    Ok(Shape { batch: batch_window(query)?, gzip })
}

/// `?batch=`: `<n>ms` or a bare `<n>` (milliseconds), or `<n>s`, from 0 to 1000 ms; absent is 0
/// (no batching). Anything else: 400.
pub fn batch_window(query: &[(String, String)]) -> Result<Duration, AppError> {
    let Some((_, raw)) = query.iter().find(|(k, _)| k == "batch") else { return Ok(Duration::ZERO) };
    let raw = raw.trim();
    let parsed = if let Some(ms) = raw.strip_suffix("ms") {
        ms.parse::<u64>().ok().map(Duration::from_millis)
    } else if let Some(secs) = raw.strip_suffix('s') {
        secs.parse::<u64>().ok().and_then(|s| s.checked_mul(1000)).map(Duration::from_millis)
    } else {
        raw.parse::<u64>().ok().map(Duration::from_millis)
    };
    match parsed {
        Some(window) if window <= MAX_BATCH => Ok(window),
        _ => Err(AppError::bad_request(
            "Invalid batch window",
            "batch must be a window from 0ms to 1000ms, such as batch=100ms (a bare number is milliseconds)",
        )),
    }
}

/// Whether `Accept-Encoding` accepts gzip (`gzip` or `x-gzip`, or `*`, with a non-zero `q`).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            matches!(coding.as_str(), "gzip" | "x-gzip" | "*") && q > 0.0
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(raw: &str) -> Result<Duration, AppError> {
        batch_window(&[("batch".to_owned(), raw.to_owned())])
    }

    #[test]
    fn batch_windows_are_milliseconds_up_to_a_second() -> Result<(), AppError> {
        assert_eq!(window("100ms")?, Duration::from_millis(100));
        assert_eq!(window("250")?, Duration::from_millis(250));
        assert_eq!(window("0ms")?, Duration::ZERO);
        assert_eq!(window("1s")?, Duration::from_secs(1));
        assert_eq!(window("1000ms")?, Duration::from_secs(1));
        for bad in ["1001ms", "2s", "-1ms", "fast", "", "1.5ms", "100 us"] {
            assert!(window(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn gzip_is_accepted_unless_refused() {
        let accepts = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, header::HeaderValue::from_str(v).expect("header"));
            accepts_gzip(&h)
        };
        assert!(accepts("gzip, deflate, br"));
        assert!(accepts("br;q=1.0, gzip;q=0.8"));
        assert!(accepts("*"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("br, deflate"));
        assert!(!accepts("identity"));
    }
}
