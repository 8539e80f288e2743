//! The extractors: one place that turns a request's body, path, query and credentials into
//! checked values, each refusal as problem+json.
//!
//! [`stream_request`] is the one place a stream request is read, for the event streams and the
//! WebSocket alike: its resume point, shape, jobs and end, checked in the contract's order;
//! [`acquire`] then takes the slots every open stream holds.
//!
//! [`OwnedJob`] is the owned-job lookup: a handler that takes one cannot forget to check
//! ownership, because the only way to get the job is through [`Caller::check_owns`]. The order
//! of its answers is the contract's: a bad id 400, then an unknown job 404, then another
//! owner's job 403 before anything else is said about it.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use uuid::Uuid;

use crate::access::auth::Caller;
use crate::config::StreamCompression;
use crate::domain::event::parse_event_id;
use crate::domain::job::JobState;
use crate::error::AppError;
use crate::http::state::AppState;
use crate::store::EventFilter;
use crate::streaming::follow::MAX_BATCH;
use crate::streaming::request::{End, Shape, Slots, StreamRequest};

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
fn resume_point(headers: &HeaderMap, query: &[(String, String)]) -> Result<Option<i64>, AppError> {
    let raw = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().map_err(|_| bad_resume())?.to_owned()),
        None => query.iter().find(|(k, _)| k == "lastEventId").map(|(_, v)| v.clone()),
    };
    match raw {
        None => Ok(None),
        Some(s) => parse_event_id(&s).map(Some).ok_or_else(bad_resume),
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

/// Which events a stream request names, and so when its stream ends.
pub enum Scope<'a> {
    /// `/api/jobs/{jobId}/events`: the path's job (already checked); the stream ends with it.
    Job(&'a JobState),
    /// `/api/events?jobId=…`: the named jobs, else all the caller may see; never ends.
    Events,
    /// `/api/ws?jobId=…`: as [`Scope::Events`], but a socket for exactly one job ends with it,
    /// and a socket is never gzipped.
    Socket,
}

/// The stream a request asks for, checked in the contract's order: the resume point, the
/// shape (`?batch=`, gzip), then each job named by `jobId=` (400 for a bad id, 404 for an
/// unknown job, 403 for another owner's).
pub async fn stream_request(
    app: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    query: &[(String, String)],
    scope: Scope<'_>,
) -> Result<StreamRequest, AppError> {
    let resume = resume_point(headers, query)?;
    let after = resume.unwrap_or(0);
    let shape = match scope {
        Scope::Socket => Shape { batch: batch_window(query)?, gzip: false },
        Scope::Job(_) | Scope::Events => shape(app, headers, query)?,
    };
    let (filter, end) = match scope {
        Scope::Job(job) => (EventFilter::Jobs(vec![job.job_id]), ends_with(job)),
        Scope::Events => (jobs_filter(caller, named_jobs(app, caller, query).await?), End::Never),
        Scope::Socket => {
            let jobs = named_jobs(app, caller, query).await?;
            let end = match jobs.as_slice() {
                [job] => ends_with(job),
                _ => End::Never,
            };
            (jobs_filter(caller, jobs), end)
        }
    };
    let history_start = match resume {
        Some(resume) => history_start(app, resume).await?,
        None => None,
    };
    Ok(StreamRequest { filter, after, end, shape, history_start })
}

/// The oldest event kept, if a stream resumed after `resume` starts there because events
/// between were deleted (API.md: the horizon). Ids are handed out without gaps and never
/// reused, so an oldest kept id above `resume + 1` means the ones between were deleted; a
/// client resuming from 0 on a log that still starts at 1 has lost nothing and is told nothing.
pub async fn history_start(app: &AppState, resume: i64) -> Result<Option<i64>, AppError> {
    Ok(app.store().oldest_event_id().await?.filter(|oldest| resume.saturating_add(1) < *oldest))
}

/// How a stream of one job ends. A job that has ended has all its events but `output-expired`
/// (see `retention`): its stream replays them and ends, whether or not the terminal event is
/// among them.
fn ends_with(job: &JobState) -> End {
    match job.status.is_terminal() {
        true => End::After(job.last_event_id),
        false => End::WithJob,
    }
}

/// The jobs named by repeated `jobId=`, each checked: 400 for a bad id, 404 for an unknown job,
/// 403 for another owner's. Each job once, with its state.
async fn named_jobs(
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
fn jobs_filter(caller: &Caller, jobs: Vec<JobState>) -> EventFilter {
    match jobs.is_empty() {
        false => EventFilter::Jobs(jobs.into_iter().map(|j| j.job_id).collect()),
        true if caller.sees_all() => EventFilter::All,
        true => EventFilter::Owner(caller.name.clone()),
    }
}

/// A slot under the global stream cap, then one under the caller's own (the `503` wins when
/// both are exceeded): every stream holds both while it is open, WebSockets too.
pub fn acquire(app: &AppState, caller: &Caller) -> Result<Slots, AppError> {
    let slot =
        app.streams().try_acquire(app.settings().max_streams).ok_or_else(|| AppError::Unavailable {
            reason: "max-streams",
            detail: "too many open event streams; retry shortly".into(),
            retry_after_secs: 5,
        })?;
    // Checked after the global cap, so that when both are exceeded the 503 wins.
    let owner_slot = app.limits().acquire_stream(caller)?;
    Ok(Slots::new(slot, owner_slot))
}

/// What the request asks of its stream: a batch window, and gzip when the server allows it.
fn shape(app: &AppState, headers: &HeaderMap, query: &[(String, String)]) -> Result<Shape, AppError> {
    let gzip = app.settings().stream_compression == StreamCompression::Gzip && accepts_gzip(headers);
    Ok(Shape { batch: batch_window(query)?, gzip })
}

/// `?batch=`: `<n>ms` or a bare `<n>` (milliseconds), or `<n>s`, from 0 to 1000 ms; absent is 0
/// (no batching). Anything else: 400.
fn batch_window(query: &[(String, String)]) -> Result<Duration, AppError> {
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
fn accepts_gzip(headers: &HeaderMap) -> bool {
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
