//! The Server-Sent Events streams: `GET /api/jobs/{id}/events` and `GET /api/events`.
//!
//! A stream opens with `retry:`, replays stored events after the resume point in indexed pages,
//! then follows the hub live. The hand-over is gapless and duplicate-free because the stream
//! subscribes to the hub *before* its first read of the table, and afterwards drops every live
//! event at or below the last id it sent. A subscriber the hub laps goes back to the table from
//! its last sent id. Frames are the pre-rendered bytes of each event, shared by all
//! subscribers, and every event ready at once goes out in one write.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{Bytes, BytesMut};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::AppError;
use crate::event::StoredEvent;
use crate::jobs::{load_job, parse_job_id};
use crate::limits::StreamGuard;
use crate::store::{EventFilter, Store};

/// Events per replay query; the first page is small so the first event goes out at once.
const REPLAY_PAGE: u32 = 2000;
const FIRST_REPLAY_PAGE: u32 = 100;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/jobs/{job_id}/events", get(job_events)).route("/api/events", get(all_events))
}

/// Counts open streams and refuses new ones past the global cap.
#[derive(Debug, Default)]
pub struct StreamCounter {
    open: AtomicUsize,
}

impl StreamCounter {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A slot for one more stream, or `None` when `max` are open.
    fn try_acquire(self: &Arc<Self>, max: usize) -> Option<StreamSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| StreamSlot(self.clone()))
    }
}

/// Held by an open stream; frees its slot when the response body is dropped.
pub struct StreamSlot(Arc<StreamCounter>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
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

/// A non-negative decimal integer that fits an event id; nothing else.
pub fn parse_event_id(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn bad_resume() -> AppError {
    AppError::bad_request(
        "Invalid resume point",
        "Last-Event-ID and lastEventId must be a non-negative integer event id",
    )
}

pub fn parse_query(raw: Option<&str>) -> Result<Vec<(String, String)>, AppError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|_| AppError::bad_request("Invalid query string", "the query string could not be parsed"))
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
    caller: Caller,
    Path(job_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let job_id = parse_job_id(&job_id)?;
    let job = load_job(&app, &caller, job_id).await?;
    let query = parse_query(query.as_deref())?;
    let resume = resume_point(&headers, &query)?;
    if job.status.is_terminal() && resume >= job.last_event_id {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    open_stream(&app, &caller, EventFilter::Jobs(vec![job_id]), resume, true)
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
    open_stream(&app, &caller, filter, resume, false)
}

/// Starts a stream after every check has passed: no byte is sent before this point.
fn open_stream(
    app: &AppState,
    caller: &Caller,
    filter: EventFilter,
    resume: i64,
    ends_with_job: bool,
) -> Result<Response, AppError> {
    let settings = app.settings();
    let slot = app.streams().try_acquire(settings.max_streams).ok_or_else(|| AppError::Unavailable {
        detail: "too many open event streams; retry shortly".into(),
        retry_after_secs: 5,
    })?;
    // Checked after the global cap, so that when both are exceeded the 503 wins.
    let owner_slot = app.limits().acquire_stream(caller)?;
    let kind = if ends_with_job { "job" } else { "all" };
    metrics::counter!("aura_streams_opened_total", "kind" => kind).increment(1);
    let heartbeat = Duration::from_secs(settings.heartbeat_secs);
    let deadline = Instant::now() + Duration::from_secs(settings.max_stream_secs);
    let sub = Subscriber {
        store: app.store().clone(),
        // Subscribe first, read history second: nothing committed in between is missed.
        rx: app.hub().subscribe(),
        filter,
        last_sent: resume,
        replaying: true,
        replayed_pages: 0,
        ends_with_job,
        finished: false,
        preamble: Some(Bytes::from(format!("retry: {}\n\n", settings.retry_ms))),
        heartbeat,
        deadline,
        last_write: Instant::now(),
        timer: Box::pin(tokio::time::sleep_until((Instant::now() + heartbeat).min(deadline))),
        shutdown: app.shutdown_token(),
        delivered: metrics::counter!("aura_events_delivered_total"),
        replayed: metrics::counter!("aura_events_replayed_total"),
        lag: metrics::histogram!("aura_delivery_lag_seconds"),
        _slot: slot,
        _owner_slot: owner_slot,
        owned_jobs: std::collections::HashMap::new(),
        _gauge: OpenGauge::new(kind),
    };
    let body = Body::from_stream(futures_util::stream::unfold(sub, |mut sub| async move {
        sub.next_chunk().await.map(|chunk| (Ok::<_, Infallible>(chunk), sub))
    }));
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    Ok(res)
}

/// Keeps the open-streams gauge of one kind true while a stream lives.
struct OpenGauge(&'static str);

impl OpenGauge {
    fn new(kind: &'static str) -> Self {
        metrics::gauge!("aura_open_streams", "kind" => kind).increment(1.0);
        OpenGauge(kind)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!("aura_open_streams", "kind" => self.0).decrement(1.0);
    }
}

/// One open stream's state; small, with no buffer that grows.
struct Subscriber {
    store: Store,
    rx: broadcast::Receiver<Arc<StoredEvent>>,
    filter: EventFilter,
    last_sent: i64,
    replaying: bool,
    replayed_pages: u32,
    /// A per-job stream ends after the job's terminal event.
    ends_with_job: bool,
    finished: bool,
    preamble: Option<Bytes>,
    heartbeat: Duration,
    deadline: Instant,
    /// When the last bytes were written.
    last_write: Instant,
    /// One timer for both the heartbeat and the deadline. It is not reset on every write (that
    /// would touch the timer wheel once per event per subscriber); when it fires early it is
    /// re-armed from the last write.
    timer: Pin<Box<tokio::time::Sleep>>,
    shutdown: CancellationToken,
    delivered: metrics::Counter,
    replayed: metrics::Counter,
    lag: metrics::Histogram,
    _slot: StreamSlot,
    /// The per-owner stream slot (`limits`).
    _owner_slot: StreamGuard,
    /// For an [`EventFilter::Owner`] stream: whether each job seen so far is the owner's.
    owned_jobs: std::collections::HashMap<uuid::Uuid, bool>,
    _gauge: OpenGauge,
}

/// The bytes of one write: a single event's shared frame as is, several copied into one buffer.
#[derive(Default)]
struct Chunk {
    first: Option<Bytes>,
    rest: BytesMut,
    events: u64,
}

impl Chunk {
    fn push(&mut self, frame: &Bytes) {
        self.events += 1;
        match self.first.take() {
            None if self.rest.is_empty() => self.first = Some(frame.clone()),
            None => self.rest.extend_from_slice(frame),
            Some(first) => {
                self.rest.reserve(first.len() + frame.len());
                self.rest.extend_from_slice(&first);
                self.rest.extend_from_slice(frame);
            }
        }
    }

    fn len(&self) -> usize {
        self.first.as_ref().map_or(self.rest.len(), Bytes::len)
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest.is_empty()
    }

    fn freeze(self) -> Bytes {
        self.first.unwrap_or_else(|| self.rest.freeze())
    }
}

impl Subscriber {
    /// The next bytes to write, or `None` to end the response cleanly.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(preamble) = self.preamble.take() {
            return Some(preamble);
        }
        loop {
            if self.finished || self.shutdown.is_cancelled() || Instant::now() >= self.deadline {
                return None;
            }
            let chunk = if self.replaying { self.replay_page().await? } else { self.live().await? };
            if !chunk.is_empty() {
                self.last_write = Instant::now();
                return Some(chunk);
            }
        }
    }

    /// One page from the table; switches to live once the table has nothing more.
    async fn replay_page(&mut self) -> Option<Bytes> {
        let limit = if self.replayed_pages == 0 { FIRST_REPLAY_PAGE } else { REPLAY_PAGE };
        self.replayed_pages = self.replayed_pages.saturating_add(1);
        match self.store.framed_after(&self.filter, self.last_sent, limit).await {
            Ok(Some(page)) => {
                if page.count < limit as usize {
                    self.replaying = false;
                }
                if let Some(last) = page.last_id {
                    self.last_sent = last;
                }
                if self.ends_with_job && page.terminal_id.is_some() {
                    self.finished = true;
                }
                self.delivered.increment(page.count as u64);
                self.replayed.increment(page.count as u64);
                return Some(page.frames);
            }
            Ok(None) => {} // A page that needs row-by-row normalization: read it below.
            Err(e) => {
                tracing::warn!(error = %e, "replay read failed; ending the stream so the client resumes");
                return None;
            }
        }
        let page = match self.store.events_after(&self.filter, self.last_sent, limit).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "replay read failed; ending the stream so the client resumes");
                return None;
            }
        };
        if page.len() < limit as usize {
            self.replaying = false;
        }
        self.learn_replayed_owners(&page);
        let mut chunk = Chunk::default();
        for event in &page {
            self.push(&mut chunk, event);
            if self.finished {
                break;
            }
        }
        self.replayed.increment(chunk.events);
        Some(chunk.freeze())
    }

    /// Waits for live events (sending everything already waiting in one chunk), a heartbeat,
    /// the stream's deadline or shutdown.
    async fn live(&mut self) -> Option<Bytes> {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => None,
            received = self.rx.recv() => {
                let mut chunk = Chunk::default();
                let appended = received.as_ref().ok().and_then(|e| e.appended);
                let mut next = received;
                loop {
                    match next {
                        Ok(event) => {
                            self.learn_owner(&event).await;
                            self.push(&mut chunk, &event);
                        }
                        Err(RecvError::Lagged(missed)) => {
                            tracing::debug!(missed, "stream fell behind the hub; catching up from the table");
                            self.replaying = true;
                            break;
                        }
                        Err(RecvError::Closed) => {
                            self.finished = true;
                            break;
                        }
                    }
                    if self.finished || chunk.len() > 64 * 1024 {
                        break;
                    }
                    next = match self.rx.try_recv() {
                        Ok(e) => Ok(e),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                        Err(_) => break,
                    };
                }
                if let (Some(appended), false) = (appended, chunk.is_empty()) {
                    // Once per write, not per event: from append to this write, for its first event.
                    self.lag.record(appended.elapsed().as_secs_f64());
                }
                if chunk.is_empty() && self.finished { None } else { Some(chunk.freeze()) }
            }
            () = self.timer.as_mut() => {
                let now = Instant::now();
                if now >= self.deadline {
                    return None;
                }
                let beat_at = self.last_write + self.heartbeat;
                if now >= beat_at {
                    // Silent for a whole interval: the keepalive counts as a write.
                    self.timer.as_mut().reset((now + self.heartbeat).min(self.deadline));
                    Some(Bytes::from_static(b": keepalive\n\n"))
                } else {
                    self.timer.as_mut().reset(beat_at.min(self.deadline));
                    Some(Bytes::new())
                }
            }
        }
    }

    /// Adds an event's frame if this stream wants it and has not sent it yet.
    fn push(&mut self, chunk: &mut Chunk, event: &StoredEvent) {
        if event.id <= self.last_sent || !self.wants(event) {
            return;
        }
        chunk.push(&event.frame);
        self.last_sent = event.id;
        self.delivered.increment(1);
        if self.ends_with_job && event.is_terminal() {
            self.finished = true;
        }
    }

    fn wants(&self, event: &StoredEvent) -> bool {
        match &self.filter {
            EventFilter::All => true,
            EventFilter::Jobs(ids) => ids.contains(&event.job_id),
            EventFilter::Owner(name) => match &event.owner {
                Some(owner) => **owner == **name,
                None => self.owned_jobs.get(&event.job_id).copied().unwrap_or(false),
            },
        }
    }
}

/// Owner filtering on the live path (security). Events this process appended carry their
/// owner, so the check is a string comparison; a row read back from the table (another
/// process's append) costs one lookup per job, cached for the stream's life.
impl Subscriber {
    /// Most jobs whose owner a stream remembers before it starts over.
    const OWNED_JOBS_CAP: usize = 10_000;

    /// Replayed pages were filtered by owner in SQL: every job in them is the owner's.
    fn learn_replayed_owners(&mut self, page: &[StoredEvent]) {
        if matches!(self.filter, EventFilter::Owner(_)) {
            for event in page {
                self.remember_owner(event.job_id, true);
            }
        }
    }

    async fn learn_owner(&mut self, event: &StoredEvent) {
        let EventFilter::Owner(name) = &self.filter else { return };
        if event.owner.is_some() || self.owned_jobs.contains_key(&event.job_id) {
            return;
        }
        let owned = match self.store.job(event.job_id).await {
            Ok(job) => job.is_some_and(|job| job.owner == *name),
            Err(e) => {
                // End the response instead of skipping: the client resumes from the table.
                tracing::warn!(error = %e, "looking up a job's owner failed; ending the stream");
                self.finished = true;
                return;
            }
        };
        self.remember_owner(event.job_id, owned);
    }

    fn remember_owner(&mut self, job_id: uuid::Uuid, owned: bool) {
        if self.owned_jobs.len() >= Self::OWNED_JOBS_CAP {
            self.owned_jobs.clear();
        }
        self.owned_jobs.insert(job_id, owned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_plain_non_negative_integers() {
        assert_eq!(parse_event_id("0"), Some(0));
        assert_eq!(parse_event_id("42"), Some(42));
        for bad in ["", "abc", "-1", "1.5", " 1", "+1", "1180591620717411303424", "9223372036854775808"] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
    }
}
