//! The event-stream routes, `GET /api/jobs/{jobId}/events` and `GET /api/events`: every check
//! a stream request needs (ids, resume point, ownership, the global and per-owner caps), in
//! that order, before [`stream::open`] sends any byte.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::access::auth::Caller;
use crate::error::AppError;
use crate::http::extract::{OwnedJob, parse_job_id, parse_query, resume_point};
use crate::http::state::AppState;
use crate::store::EventFilter;
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
    open(&app, &caller, EventFilter::Jobs(vec![job.job_id]), resume, true, last)
}

/// Events of all jobs, or of those named by repeated `jobId=`; never ends on its own.
#[utoipa::path(get, path = "/api/events", tag = "events",
    params(
        ("jobId" = Option<Vec<Uuid>>, Query, description = "Only these jobs (repeat the parameter)"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id (wins over the query)"),
        ("lastEventId" = Option<i64>, Query, description = "Resume after this event id"),
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
    let mut ids = Vec::new();
    for (_, v) in query.iter().filter(|(k, _)| k == "jobId") {
        let id = parse_job_id(v)?;
        match app.store().job(id).await? {
            None => return Err(AppError::NotFound(format!("no job has the id {id}"))),
            Some(job) => caller.check_owns(&job)?,
        }
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let filter = match ids.is_empty() {
        false => EventFilter::Jobs(ids),
        true if caller.sees_all() => EventFilter::All,
        true => EventFilter::Owner(caller.name.clone()),
    };
    open(&app, &caller, filter, resume, false, None)
}

/// Takes a slot under the global cap, then one under the caller's own, and opens the stream.
fn open(
    app: &AppState,
    caller: &Caller,
    filter: EventFilter,
    resume: i64,
    ends_with_job: bool,
    last: Option<i64>,
) -> Result<Response, AppError> {
    let slot =
        app.streams().try_acquire(app.settings().max_streams).ok_or_else(|| AppError::Unavailable {
            detail: "too many open event streams; retry shortly".into(),
            retry_after_secs: 5,
        })?;
    // Checked after the global cap, so that when both are exceeded the 503 wins.
    let owner_slot = app.limits().acquire_stream(caller)?;
    Ok(stream::open_until(app.streaming(), slot, owner_slot, filter, resume, ends_with_job, last))
}
