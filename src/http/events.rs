//! The event-stream routes, `GET /api/jobs/{jobId}/events` and `GET /api/events`: every check
//! a stream request needs (ids, resume point, ownership, the global and per-owner caps; see
//! `extract::stream_request`), in that order, before [`stream::open`] sends any byte.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::access::auth::Caller;
use crate::config::StreamCompression;
use crate::error::AppError;
use crate::http::extract::{OwnedJob, Scope, acquire, parse_query, stream_request};
use crate::http::state::AppState;
use crate::streaming::request::StreamRequest;
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
    let request = stream_request(&app, &caller, &headers, &query, Scope::Job(&job)).await?;
    // A job that has ended, resumed at or past its last event: nothing more will come.
    if request.end.reached(request.after) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    open(&app, &caller, request)
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
    let request = stream_request(&app, &caller, &headers, &query, Scope::Events).await?;
    open(&app, &caller, request)
}

/// Takes a slot under the global cap, then one under the caller's own, and opens the stream.
fn open(app: &AppState, caller: &Caller, request: StreamRequest) -> Result<Response, AppError> {
    let slots = acquire(app, caller)?;
    let history_start = request.history_start;
    let mut res = stream::open(app.streaming(), request, slots);
    if let Some(start) = history_start {
        res.headers_mut().insert("aura-history-start", header::HeaderValue::from(start));
    }
    if app.settings().stream_compression == StreamCompression::Gzip {
        res.headers_mut().insert(header::VARY, header::HeaderValue::from_static("accept-encoding"));
    }
    Ok(res)
}
