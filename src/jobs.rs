//! The job resources: create, read, list, cancel, history and output.
//!
//! Handlers parse at the edge (ids, cursors, the request body) and then only call the store and
//! the lifecycle; they never build events themselves.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{AppError, Problem};
use crate::job::{JobState, JobStatus};
use crate::lifecycle;
use crate::spec::{JobSpec, SpecError};
use crate::store::{EventFilter, Refusal};
use crate::stream::{parse_event_id, parse_query};

/// Largest accepted request body (API.md).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const DEFAULT_LIST_LIMIT: u32 = 50;
const MAX_LIST_LIMIT: u32 = 500;
const DEFAULT_HISTORY_LIMIT: u32 = 1000;
const MAX_HISTORY_LIMIT: u32 = 10_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/jobs", post(create).get(list))
        .route("/api/jobs/{job_id}", get(show))
        .route("/api/jobs/{job_id}/cancel", post(cancel))
        .route("/api/jobs/{job_id}/history", get(history))
        .route("/api/jobs/{job_id}/output", get(output))
}

/// The raw body, with its rejections (too large, unreadable) as problem+json.
pub struct Body(pub Bytes);

/// How much of a too-large body is still read (and dropped) before answering 413. Closing a
/// connection with unread request bytes makes the kernel send a reset, and a client can lose
/// the 413 to it; reading a bounded remainder lets the answer arrive.
const DRAIN_BYTES: usize = 1024 * 1024;

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = AppError;

    async fn from_request(req: axum::extract::Request, _state: &S) -> Result<Self, AppError> {
        use futures_util::StreamExt;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > DRAIN_BYTES) {
            return Err(AppError::PayloadTooLarge);
        }
        let mut stream = req.into_body().into_data_stream();
        let mut body = bytes::BytesMut::new();
        let mut total = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| {
                AppError::bad_request("Unreadable request body", "the request body could not be read")
            })?;
            total += chunk.len();
            if total <= MAX_BODY_BYTES {
                body.extend_from_slice(&chunk);
            } else if total > DRAIN_BYTES {
                break;
            }
        }
        if total > MAX_BODY_BYTES {
            return Err(AppError::PayloadTooLarge);
        }
        Ok(Body(body.freeze()))
    }
}

/// A job id from the path: 400 when it is not a UUID.
pub fn parse_job_id(raw: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(raw).map_err(|_| {
        AppError::bad_request("Invalid job id", format!("job ids are UUIDs; {:?} is not one", shorten(raw)))
    })
}

/// Echoes at most a few characters of client input back.
fn shorten(s: &str) -> String {
    s.chars().take(40).collect()
}

fn not_found() -> AppError {
    AppError::NotFound("no job has this id".into())
}

/// The job's state, or 404; then 403 if it belongs to someone else `caller` may not see, before
/// anything else is said about it.
pub async fn load_job(app: &AppState, caller: &Caller, job_id: Uuid) -> Result<JobState, AppError> {
    let job = app.store().job(job_id).await?.ok_or_else(not_found)?;
    caller.check_owns(&job)?;
    Ok(job)
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    job_id: Uuid,
    status: JobStatus,
    events_url: String,
}

/// Create a job.
#[utoipa::path(post, path = "/api/jobs", tag = "jobs",
    request_body(content = crate::openapi::JobRequestDoc, description = "Only brief.topic is required; every other field has a default"),
    responses(
        (status = 201, description = "Created; Location names the job", body = Created),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid values, each named by its JSON path", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(app): State<AppState>,
    caller: Caller,
    Body(body): Body,
) -> Result<Response, AppError> {
    app.limits().take_job(&caller)?;
    let spec = JobSpec::from_json_bytes(&body).map_err(|e| match e {
        SpecError::Malformed(detail) => AppError::bad_request("Malformed JSON", detail),
        SpecError::Invalid(errors) => AppError::Invalid(errors),
    })?;
    let job_id = Uuid::now_v7();
    let applied = lifecycle::create(app.store(), job_id, spec, caller.name)
        .await?
        .map_err(|r| AppError::Internal(anyhow::anyhow!("creating a job was refused: {r}")))?;
    app.jobs_created().notify_waiters();
    tracing::info!(job_id = %job_id, "job created");
    let location = format!("/api/jobs/{job_id}");
    let body = Created { job_id, status: applied.state.status, events_url: format!("{location}/events") };
    let mut res = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// A job's current state.
#[utoipa::path(get, path = "/api/jobs/{job_id}", tag = "jobs",
    params(("job_id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The snapshot", body = JobState),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn show(
    State(app): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Response, AppError> {
    let job = load_job(&app, &caller, parse_job_id(&job_id)?).await?;
    Ok(axum::Json(job).into_response())
}

fn query_u32(query: &[(String, String)], key: &str, default: u32, max: u32) -> Result<u32, AppError> {
    match query.iter().find(|(k, _)| k == key) {
        None => Ok(default),
        Some((_, v)) => match v.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(AppError::bad_request(
                "Invalid query parameter",
                format!("{key} must be a whole number from 1 to {max}"),
            )),
        },
    }
}

/// The list cursor: an opaque decimal position, as returned in `next`.
pub fn parse_cursor(s: &str) -> Option<i64> {
    parse_event_id(s).filter(|&n| n > 0)
}

/// One page of the job list.
#[derive(Serialize, utoipa::ToSchema)]
pub struct JobList {
    jobs: Vec<JobState>,
    /// Pass as `before` for the next (older) page; null on the last page.
    next: Option<String>,
}

/// Jobs, newest first.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs",
    params(
        ("status" = Option<JobStatus>, Query, description = "Only jobs in this status"),
        ("limit" = Option<u32>, Query, description = "Page size, 1..=500, default 50"),
        ("before" = Option<String>, Query, description = "Cursor from a previous page's next"),
    ),
    responses(
        (status = 200, description = "A page of jobs", body = JobList),
        (status = 400, description = "A bad parameter", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let query = parse_query(query.as_deref())?;
    let limit = query_u32(&query, "limit", DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)?;
    let status = match query.iter().find(|(k, _)| k == "status") {
        None => None,
        Some((_, v)) if v.is_empty() => None,
        Some((_, v)) => Some(JobStatus::parse(v).ok_or_else(|| {
            AppError::bad_request(
                "Invalid query parameter",
                "status must be one of Queued, Running, Cancelling, Completed, Failed, Cancelled",
            )
        })?),
    };
    let before = match query.iter().find(|(k, _)| k == "before") {
        None => None,
        Some((_, v)) if v.is_empty() => None,
        Some((_, v)) => Some(parse_cursor(v).ok_or_else(|| {
            AppError::bad_request(
                "Invalid query parameter",
                "before must be a cursor from an earlier page's next",
            )
        })?),
    };
    let owner = if caller.sees_all() { None } else { Some(caller.name.as_str()) };
    let page = app.store().list_jobs(owner, status, before, limit).await?;
    Ok(axum::Json(JobList { jobs: page.jobs, next: page.next.map(|n| n.to_string()) }).into_response())
}

/// Cancel a job: Queued ends at once, Running becomes Cancelling; idempotent while cancelling.
#[utoipa::path(post, path = "/api/jobs/{job_id}/cancel", tag = "jobs",
    params(("job_id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 202, description = "Accepted; the snapshot", body = JobState),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job has already ended", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel(
    State(app): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Response, AppError> {
    let job_id = parse_job_id(&job_id)?;
    // The owner never changes, so checking it before the decision leaves no race.
    load_job(&app, &caller, job_id).await?;
    match lifecycle::cancel(app.store(), job_id).await? {
        Ok(applied) => {
            app.cancel_running(job_id);
            Ok((StatusCode::ACCEPTED, axum::Json(applied.state)).into_response())
        }
        Err(Refusal::NotFound) => Err(not_found()),
        Err(Refusal::Conflict(detail) | Refusal::Invalid(detail)) => Err(AppError::Conflict(detail)),
    }
}

/// One stored event.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryItem<'a> {
    id: i64,
    /// One of the eight event types.
    #[serde(rename = "type")]
    kind: &'a str,
    /// The event's data, exactly as streamed.
    #[schema(value_type = Object)]
    data: &'a RawValue,
    created_at: &'a str,
}

/// A job's stored events in id order.
#[utoipa::path(get, path = "/api/jobs/{job_id}/history", tag = "jobs",
    params(
        ("job_id" = Uuid, Path, description = "The job's id"),
        ("after" = Option<i64>, Query, description = "Only events with a greater id"),
        ("limit" = Option<u32>, Query, description = "At most this many, 1..=10000, default 1000"),
    ),
    responses(
        (status = 200, description = "The events", body = Vec<HistoryItem>),
        (status = 400, description = "A bad id or parameter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn history(
    State(app): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let job_id = parse_job_id(&job_id)?;
    load_job(&app, &caller, job_id).await?;
    let query = parse_query(query.as_deref())?;
    let after = match query.iter().find(|(k, _)| k == "after") {
        None => 0,
        Some((_, v)) => parse_event_id(v).ok_or_else(|| {
            AppError::bad_request("Invalid query parameter", "after must be a non-negative event id")
        })?,
    };
    let limit = query_u32(&query, "limit", DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)?;
    let events = app.store().events_after(&EventFilter::Jobs(vec![job_id]), after, limit).await?;
    let mut items = Vec::with_capacity(events.len());
    for e in &events {
        // Stored data is normalized to one line of valid JSON when read (see `event`).
        let data: &RawValue = serde_json::from_str(e.data()).map_err(|e| AppError::Internal(e.into()))?;
        items.push(HistoryItem { id: e.id, kind: &e.kind, data, created_at: &e.created_at });
    }
    Ok(axum::Json(items).into_response())
}

/// The rendered video, with `Range` support (206/416) from `tower_http`'s `ServeFile`.
#[utoipa::path(get, path = "/api/jobs/{job_id}/output", tag = "jobs",
    params(
        ("job_id" = Uuid, Path, description = "The job's id"),
        ("Range" = Option<String>, Header, description = "A byte range, e.g. `bytes=0-1023`"),
    ),
    responses(
        (status = 200, description = "The rendered video; its media type follows the job's container", content_type = "video/mp4", body = String),
        (status = 206, description = "The requested byte range of the video", content_type = "video/mp4", body = String),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job, or no output until the job has completed", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "The range lies outside the video"),
    ))]
pub async fn output(
    State(app): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
    request: axum::extract::Request,
) -> Result<Response, AppError> {
    let job = load_job(&app, &caller, parse_job_id(&job_id)?).await?;
    let output = match (&job.status, &job.output) {
        (JobStatus::Completed, Some(output)) => output,
        _ => return Err(AppError::NotFound("the job has no output until it has completed".into())),
    };
    // `videoPath` is Aura's own `jobs/<id>/output.<ext>`; refuse anything else rather than serve it.
    let relative = std::path::Path::new(&output.video_path);
    if relative.is_absolute() || relative.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(AppError::Internal(anyhow::anyhow!("stored output path is not a plain relative path")));
    }
    let path = app.settings().data_dir.join(relative);
    let mime = job.request.render_spec.container.mime();
    let mut service = tower_http::services::ServeFile::new(&path);
    let mut res = tower::Service::call(&mut service, request)
        .await
        .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("serving the output")))?;
    if res.status() == StatusCode::NOT_FOUND {
        return Err(AppError::NotFound("the job's output file is gone".into()));
    }
    if res.status().is_success() {
        // The container decides the type, not a guess from the file name.
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    }
    Ok(res.map(axum::body::Body::new))
}
