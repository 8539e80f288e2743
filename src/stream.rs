//! The Server-Sent Events streams: `GET /api/jobs/{id}/events` and `GET /api/events`.
//!
//! A stream opens with `retry:`, replays stored events after the resume point in indexed pages
//! (framed by SQLite), then joins the fan-out, which writes live events into it (see `fanout`
//! for why the hand-over is gapless and duplicate-free). A stream whose client cannot keep up
//! comes back to its own task, which catches up from the table from its last sent id and joins
//! again: nobody is disconnected for being slow, and nothing is buffered per stream beyond what
//! the kernel holds.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::AppError;
use crate::event::StoredEvent;
use crate::fanout::{self, Handoff, Join, Live, Reason, ShardId};
use crate::jobs::{load_job, parse_job_id};
use crate::limits::StreamGuard;
use crate::sink::Sink;
use crate::store::{EventFilter, Store};

/// Events per replay query; the first page is small so the first event goes out at once.
const REPLAY_PAGE: u32 = 2000;
const FIRST_REPLAY_PAGE: u32 = 100;
/// Events in the first write of a catch-up from memory.
const FIRST_RECENT: usize = 16;

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
///
/// The response carries the stream twice: as a [`StreamStart`] extension, which `server` takes
/// to write the stream straight onto the socket when the stream is its connection's first
/// request, and as a body that starts the same stream through hyper otherwise. Whichever comes
/// first takes it.
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
    let sub = Subscriber {
        app: app.clone(),
        filter,
        last_sent: resume,
        ends_with_job,
        finished: false,
        deadline: Instant::now() + Duration::from_secs(settings.max_stream_secs),
        replayed_pages: 0,
        shard: app.hub().fanout().pick_shard(),
        _slot: slot,
        _owner_slot: owner_slot,
        _gauge: OpenGauge::new(kind),
    };
    let start = StreamStart(Arc::new(Mutex::new(Some(sub))));
    let body = Body::from_stream(HyperBody {
        start: Some(start.clone()),
        rx: None,
        capacity: settings.stream_buffer,
    });
    let mut res = Response::new(body);
    res.extensions_mut().insert(start);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    Ok(res)
}

/// A stream ready to run, in a response: taken once, by `server` or by the response body.
#[derive(Clone)]
pub struct StreamStart(Arc<Mutex<Option<Subscriber>>>);

impl StreamStart {
    pub fn take(&self) -> Option<Subscriber> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
}

/// The response body of a stream hyper serves: starts the stream on first poll, then reads
/// what it writes from a bounded channel.
struct HyperBody {
    start: Option<StreamStart>,
    rx: Option<mpsc::Receiver<Bytes>>,
    capacity: u64,
}

impl futures_util::Stream for HyperBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.rx.is_none() {
            let Some(sub) = self.start.take().and_then(|s| s.take()) else { return Poll::Ready(None) };
            let (tx, rx) = mpsc::channel(self.capacity.clamp(1, 1 << 16) as usize);
            metrics::counter!("aura_streams_served_total", "via" => "hyper").increment(1);
            tokio::spawn(sub.run(Arc::new(Sink::Channel(tx))));
            self.rx = Some(rx);
        }
        match self.rx.as_mut() {
            Some(rx) => rx.poll_recv(cx).map(|chunk| chunk.map(Ok)),
            None => Poll::Ready(None),
        }
    }
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

/// One open stream while its own task drives it: the preamble, the replay, every catch-up.
/// While it is live the fan-out holds its state instead, and this task only waits for it back
/// (or for its client to go away).
pub struct Subscriber {
    app: AppState,
    filter: EventFilter,
    last_sent: i64,
    /// A per-job stream ends after the job's terminal event.
    ends_with_job: bool,
    finished: bool,
    deadline: Instant,
    replayed_pages: u32,
    /// The fan-out registry this stream joins whenever it is caught up.
    shard: ShardId,
    _slot: StreamSlot,
    /// The per-owner stream slot (`limits`).
    _owner_slot: StreamGuard,
    _gauge: OpenGauge,
}

impl Subscriber {
    /// Runs the stream to its end, writing into `sink`.
    pub async fn run(mut self, sink: Arc<Sink>) {
        let preamble = Bytes::from(format!("retry: {}\n\n", self.app.settings().retry_ms));
        if sink.push(preamble).await.is_err() {
            return;
        }
        let shutdown = self.app.shutdown_token();
        let app = self.app.clone();
        let (hub, fanout) = (app.hub(), app.hub().fanout());
        // Every event this stream wants up to here has been sent: the resume point at first.
        let mut covered = self.last_sent;
        loop {
            if self.finished || shutdown.is_cancelled() || Instant::now() >= self.deadline {
                sink.finish().await;
                return;
            }
            let Some((recent, through)) = hub.recent_after(covered) else {
                // Older than memory holds: the table, until a page comes back short. The next
                // page is read while the current one is written.
                let seen = hub.last_published();
                let store = app.store();
                let first = if self.replayed_pages == 0 { FIRST_REPLAY_PAGE } else { REPLAY_PAGE };
                let mut page =
                    read_page(store, &self.filter, self.last_sent, first, self.ends_with_job).await;
                loop {
                    let Some(current) = page else {
                        // A failed read ends the response; the client resumes from its last id.
                        sink.finish().await;
                        return;
                    };
                    self.account(&current);
                    if !current.more || self.finished {
                        if sink.push(current.frames).await.is_err() {
                            return;
                        }
                        if !current.more {
                            covered = seen;
                        }
                        break;
                    }
                    let next =
                        read_page(store, &self.filter, self.last_sent, REPLAY_PAGE, self.ends_with_job);
                    let (written, next) = tokio::join!(sink.push(current.frames), next);
                    if written.is_err() {
                        return;
                    }
                    if shutdown.is_cancelled() || Instant::now() >= self.deadline {
                        break;
                    }
                    page = next;
                }
                continue;
            };
            // A few events first, so that the first one leaves at once, then the rest in one write.
            let (first, rest) = recent.split_at(recent.len().min(FIRST_RECENT));
            if sink.push(self.frames_of(first)).await.is_err() {
                return;
            }
            if !self.finished && sink.push(self.frames_of(rest)).await.is_err() {
                return;
            }
            if self.finished {
                continue;
            }
            covered = through;
            let live = Live {
                sink: sink.clone(),
                filter: std::mem::replace(&mut self.filter, EventFilter::All),
                last_sent: self.last_sent,
                deadline: self.deadline,
                ends_with_job: self.ends_with_job,
            };
            let (id, back) = match fanout.join(self.shard, through, live) {
                Join::Joined(id, back) => (id, back),
                Join::Moved(live) => {
                    self.restore(live);
                    continue;
                }
                Join::Closed(live) => {
                    self.restore(live);
                    sink.finish().await;
                    return;
                }
            };
            let handoff = tokio::select! {
                handoff = back => handoff,
                () = sink.closed() => {
                    fanout.leave(self.shard, id);
                    return;
                }
            };
            let Ok(Handoff { live, reason, pending }) = handoff else { return };
            self.restore(live);
            // Everything the stream wants up to its last sent event went out (or is pending).
            covered = self.last_sent;
            if let Some(pending) = pending
                && sink.push_wire(pending).await.is_err()
            {
                return;
            }
            match reason {
                Reason::Behind => metrics::counter!("aura_stream_catch_ups_total").increment(1),
                Reason::Finished => self.finished = true,
                Reason::Expired | Reason::ShuttingDown => {
                    sink.finish().await;
                    return;
                }
                Reason::Closed => return,
            }
        }
    }

    /// The frames of the events this stream wants among `events`, up to a job's terminal one.
    fn frames_of(&mut self, events: &[Arc<StoredEvent>]) -> Bytes {
        let wanted = events.iter().map(|e| &**e).filter(|e| fanout::wants(&self.filter, e));
        let page = frame(wanted, self.last_sent, self.ends_with_job);
        self.account(&page);
        page.frames
    }

    fn restore(&mut self, live: Live) {
        self.filter = live.filter;
        self.last_sent = live.last_sent;
    }

    /// Takes note of a page about to be written.
    fn account(&mut self, page: &Page) {
        self.replayed_pages = self.replayed_pages.saturating_add(1);
        if let Some(last) = page.last_id {
            self.last_sent = last;
        }
        self.finished |= page.finished;
        metrics::counter!("aura_events_delivered_total").increment(page.count);
        metrics::counter!("aura_events_replayed_total").increment(page.count);
    }
}

/// The frames of `events` after `after`, in order, up to a job's terminal event when
/// `ends_with_job`.
fn frame<'a>(events: impl IntoIterator<Item = &'a StoredEvent>, after: i64, ends_with_job: bool) -> Page {
    let mut page = Page { frames: Bytes::new(), count: 0, last_id: None, finished: false, more: false };
    let mut frames = BytesMut::new();
    for event in events.into_iter().filter(|e| e.id > after) {
        frames.extend_from_slice(&event.frame);
        page.count += 1;
        page.last_id = Some(event.id);
        if ends_with_job && event.is_terminal() {
            page.finished = true;
            break;
        }
    }
    page.frames = frames.freeze();
    page
}

/// A page of replayed events, framed.
struct Page {
    frames: Bytes,
    count: u64,
    last_id: Option<i64>,
    /// It ends with the job's terminal event (per-job streams).
    finished: bool,
    /// It was full: there may be more.
    more: bool,
}

/// Up to `limit` events of `filter` after `after`, framed by SQLite when it can, else row by
/// row; `None` when the read failed.
async fn read_page(
    store: &Store,
    filter: &EventFilter,
    after: i64,
    limit: u32,
    ends_with_job: bool,
) -> Option<Page> {
    match store.framed_after(filter, after, limit).await {
        Ok(Some(page)) => {
            return Some(Page {
                frames: page.frames,
                count: page.count as u64,
                last_id: page.last_id,
                finished: ends_with_job && page.terminal_id.is_some(),
                more: page.count == limit as usize,
            });
        }
        Ok(None) => {} // A page that needs row-by-row normalization: read it below.
        Err(e) => {
            tracing::warn!(error = %e, "replay read failed; ending the stream so the client resumes");
            return None;
        }
    }
    let rows = match store.events_after(filter, after, limit).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "replay read failed; ending the stream so the client resumes");
            return None;
        }
    };
    // The query already applied the filter (by owner, too: rows read back do not carry it).
    let mut page = frame(&rows, after, ends_with_job);
    page.more = rows.len() == limit as usize;
    Some(page)
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
