//! The extractors: one place that turns a request's body, path, query and credentials into
//! checked values, each refusal as problem+json.
//!
//! [`OwnedJob`] is the owned-job lookup: a handler that takes one cannot forget to check
//! ownership, because the only way to get the job is through [`Caller::check_owns`]. The order
//! of its answers is the contract's: a bad id 400, then an unknown job 404, then another
//! owner's job 403 before anything else is said about it.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use uuid::Uuid;

use crate::access::auth::Caller;
use crate::domain::event::parse_event_id;
use crate::domain::job::JobState;
use crate::error::AppError;
use crate::http::state::AppState;

/// Largest accepted request body (API.md).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AppError;

    /// The caller the credentials middleware authenticated; a route it did not cover gets no
    /// caller and 401.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        parts.extensions.get::<Caller>().cloned().ok_or(AppError::Unauthorized)
    }
}

/// The job named by the path's `{job_id}`, with the caller who may see it.
pub struct OwnedJob {
    pub caller: Caller,
    pub job: JobState,
}

impl FromRequestParts<AppState> for OwnedJob {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, AppError> {
        let caller = Caller::from_request_parts(parts, app).await?;
        let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, app)
            .await
            .map_err(|_| AppError::bad_request("Invalid job id", "the path does not name a job id"))?;
        let job_id = parse_job_id(&raw)?;
        let job = app.store().job(job_id).await?.ok_or_else(not_found)?;
        caller.check_owns(&job)?;
        Ok(OwnedJob { caller, job })
    }
}

/// A JSON body, not yet parsed, with its rejections as problem+json: `415` unless it is sent as
/// `application/json` (an HTML form on another site can post `text/plain` without a preflight;
/// see `sites.rs`), `413` past 64 KiB, `400` when unreadable.
pub struct Body(pub Bytes);

/// Whether a `Content-Type` says JSON: `application/json`, parameters (`charset`) allowed.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// How much of a too-large body is still read (and dropped) before answering 413. Closing a
/// connection with unread request bytes makes the kernel send a reset, and a client can lose
/// the 413 to it; reading a bounded remainder lets the answer arrive.
const DRAIN_BYTES: usize = 1024 * 1024;

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = AppError;

    async fn from_request(req: axum::extract::Request, _state: &S) -> Result<Self, AppError> {
        use futures_util::StreamExt;
        // Checked once the size is: an oversized body is 413 whatever it claims to be.
        let json = is_json(req.headers());
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
        if !json {
            return Err(AppError::UnsupportedMediaType);
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

pub fn not_found() -> AppError {
    AppError::NotFound("no job has this id".into())
}

/// The query string as key/value pairs (repeated keys kept), or 400.
pub fn parse_query(raw: Option<&str>) -> Result<Vec<(String, String)>, AppError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|_| AppError::bad_request("Invalid query string", "the query string could not be parsed"))
}

/// The resume point: `Last-Event-ID`, else `?lastEventId=`, else 0.
pub fn resume_point(headers: &HeaderMap, query: &[(String, String)]) -> Result<i64, AppError> {
    let raw = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().map_err(|_| bad_resume())?.to_owned()),
        None => query.iter().find(|(k, _)| k == "lastEventId").map(|(_, v)| v.clone()),
    };
    match raw {
        None => Ok(0),
        Some(s) => parse_event_id(&s).ok_or_else(bad_resume),
    }
}

fn bad_resume() -> AppError {
    AppError::bad_request(
        "Invalid resume point",
        "Last-Event-ID and lastEventId must be a non-negative integer event id",
    )
}

/// A whole number from 1 to `max` under `key`, or `default` when absent; 400 otherwise.
pub fn query_u32(query: &[(String, String)], key: &str, default: u32, max: u32) -> Result<u32, AppError> {
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
