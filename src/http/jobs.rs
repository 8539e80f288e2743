//! The job resources: create, read, list, cancel, history and output.
//!
//! Handlers parse at the edge (ids, cursors, the request body) and then only call the store and
//! the engine; they never build events themselves. Every route that names a job takes an
//! [`OwnedJob`], so ownership is checked before anything is said about the job.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::access::auth::Caller;
use crate::domain::event::parse_event_id;
use crate::domain::job::{JobState, JobStatus};
use crate::domain::spec::{JobSpec, SpecError};
use crate::error::{AppError, Problem};
use crate::http::extract::{Body, OwnedJob, parse_query, query_u32};
use crate::http::state::AppState;
use crate::store::ApplyError;
use crate::store::EventFilter;

const DEFAULT_LIST_LIMIT: u32 = 50;
const MAX_LIST_LIMIT: u32 = 500;
const DEFAULT_HISTORY_LIMIT: u32 = 1000;
const MAX_HISTORY_LIMIT: u32 = 10_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/jobs", post(create).get(list))
        .route("/api/jobs/{job_id}", get(show).delete(remove))
        .route("/api/jobs/{job_id}/cancel", post(cancel))
        .route("/api/jobs/{job_id}/history", get(history))
        .route("/api/jobs/{job_id}/output", get(output))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    job_id: Uuid,
    status: JobStatus,
    events_url: String,
}

/// Create a job.
/// Placeholder named in the create route's annotation; `openapi` replaces its schema by
/// `JobRequest` (the request as clients send it, with its defaults).
pub type JobRequestDoc = crate::domain::spec::JobSpec;

#[utoipa::path(post, path = "/api/jobs", tag = "jobs",
    request_body(content = JobRequestDoc, description = "Only brief.topic is required; every other field has a default"),
    responses(
        (status = 201, description = "Created; Location names the job", body = Created),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body not sent as Content-Type: application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid values, each named by its JSON path", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The data folder's disk is below AURA_MIN_FREE_MB", body = Problem, content_type = "application/problem+json"),
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
    // A job accepted now could not be rendered: refuse it rather than let it wait for space.
    if app.engine().disk().is_low() {
        return Err(AppError::InsufficientStorage);
    }
    let job_id = Uuid::now_v7();
    let applied = app.engine().create(job_id, spec, caller.name).await.map_err(|e| match e {
        // A new id cannot be taken: this is a fault, not the client's conflict.
        ApplyError::Refused(r) => AppError::Internal(anyhow::anyhow!("creating a job was refused: {r}")),
        store => store.into(),
    })?;
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
pub async fn show(OwnedJob { job, .. }: OwnedJob) -> Result<Response, AppError> {
    Ok(axum::Json(job).into_response())
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
    OwnedJob { job, .. }: OwnedJob,
) -> Result<Response, AppError> {
    // The owner never changes, so checking it before the decision leaves no race.
    let applied = app.engine().cancel(job.job_id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(applied.state)).into_response())
}

/// Delete a finished job: its events, its row, its video and its stage artifacts. Its routes
/// answer 404 from then on; ids are never reused.
#[utoipa::path(delete, path = "/api/jobs/{job_id}", tag = "jobs",
    params(("job_id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another owner's job", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job has not finished", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn remove(
    State(app): State<AppState>,
    OwnedJob { job, .. }: OwnedJob,
) -> Result<Response, AppError> {
    crate::engine::deletion::delete(app.engine(), job.job_id).await?;
    // A resume from this node's memory must not bring the job's events back.
    app.streaming().hub().forget_job(job.job_id);
    Ok(StatusCode::NO_CONTENT.into_response())
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
    OwnedJob { job, .. }: OwnedJob,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let job_id = job.job_id;
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

/// The rendered video, with `Range` support (206/416) from `tower_http`'s `ServeFile`; 410 once
/// `AURA_OUTPUT_RETENTION` deleted it.
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
        (status = 410, description = "The video was deleted after AURA_OUTPUT_RETENTION", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "The range lies outside the video"),
    ))]
pub async fn output(
    State(app): State<AppState>,
    OwnedJob { job, .. }: OwnedJob,
    request: axum::extract::Request,
) -> Result<Response, AppError> {
    let output = match (&job.status, &job.output) {
        (JobStatus::Completed, Some(output)) => output,
        // Only `output-expired` takes a completed job's output away (see `JobState::apply`).
        (JobStatus::Completed, None) => return Err(AppError::OutputExpired),
        _ => return Err(AppError::NotFound("the job has no output until it has completed".into())),
    };
    let mime = job.request.render_spec.container.mime();
    let objects = app.engine().objects();
    if !objects.in_place() {
        // Stored elsewhere (`AURA_STORAGE_URL`): the key follows from the job, not `videoPath`.
        let key = objects.output_key(job.job_id, job.attempt, job.request.render_spec.container.extension());
        return crate::http::stored::serve(objects, &key, mime, request.method(), request.headers()).await;
    }
    // `videoPath` is Aura's own `jobs/<id>/output.<ext>`; refuse anything else rather than serve it.
    let relative = std::path::Path::new(&output.video_path);
    if relative.is_absolute() || relative.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(AppError::Internal(anyhow::anyhow!("stored output path is not a plain relative path")));
    }
    let path = app.settings().data_dir.join(relative);
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
