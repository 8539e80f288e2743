//! One event stream's life, after the HTTP edge has checked its request: [`open`] builds the
//! response, and the stream's own task ([`Subscriber::run`]) writes it.
//!
//! A stream opens with `retry:`, then goes round three phases, one function each: the table
//! catch-up (stored events after the point it has covered, in indexed pages framed by SQLite)
//! while memory no longer holds them, the ring catch-up (the hub's recent events) once it
//! does, and live: it joins the fan-out, which writes live events into it (see `fanout` for
//! why the hand-over is gapless and duplicate-free). A stream whose client cannot keep up
//! comes back to its own task, which catches up again from its last sent id and joins again:
//! nobody is disconnected for being slow, and nothing is buffered per stream beyond what the
//! kernel holds.
//!
//! A client that takes no byte at all is another matter: every write this task waits on ends
//! with an error after the write timeout without progress, at shutdown, or at the stream's
//! deadline, whichever comes first, and the stream ends (freeing its slots). The client resumes
//! from its `Last-Event-ID` when it reads again.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::domain::event::StoredEvent;
use crate::store::{EventFilter, Store};
use crate::streaming::context::{Bounds, Context};
use crate::streaming::fanout::{self, Handoff, Join, Live, Reason, ShardId};
use crate::streaming::follow::{self, Follower};
use crate::streaming::request::{End, OpenGauge, Shape, Slots, StreamRequest};
use crate::streaming::sink::Sink;
use crate::sync::lock;

/// Events per replay query; the first page is small so the first event goes out at once.
const REPLAY_PAGE: u32 = 2000;
const FIRST_REPLAY_PAGE: u32 = 100;
/// Events in the first write of a catch-up from memory.
const FIRST_RECENT: usize = 16;

/// Starts a stream after every check has passed: no byte is sent before this point.
///
/// The response carries the stream twice: as a [`StreamStart`] extension, which `server` takes
/// to write the stream straight onto the socket when the stream is its connection's first
/// request, and as a body that starts the same stream through hyper otherwise. Whichever comes
/// first takes it.
pub fn open(ctx: &Context, request: StreamRequest, slots: Slots) -> Response {
    let StreamRequest { filter, after, end, shape, .. } = request;
    let kind = if end == End::Never { "all" } else { "job" };
    metrics::counter!("aura_streams_opened_total", "kind" => kind).increment(1);
    let sub = Subscriber {
        ctx: ctx.clone(),
        filter,
        last_sent: after,
        end,
        finished: false,
        deadline: ctx.deadline(),
        replayed_pages: 0,
        shaped: (!shape.is_plain()).then(|| Box::new(shape)),
        shard: ctx.hub().fanout().pick_shard(),
        _slots: slots,
        _gauge: OpenGauge::new(kind),
    };
    let start = StreamStart(Arc::new(Mutex::new(Some(sub))));
    let body = Body::from_stream(HyperBody {
        start: Some(start.clone()),
        rx: None,
        capacity: ctx.hyper_buffer(),
        write_timeout: ctx.write_timeout(),
    });
    let mut res = Response::new(body);
    res.extensions_mut().insert(start);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    if shape.gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    res
}

/// A stream ready to run, in a response: taken once, by `server` or by the response body.
#[derive(Clone)]
pub struct StreamStart(Arc<Mutex<Option<Subscriber>>>);

impl StreamStart {
    pub fn take(&self) -> Option<Subscriber> {
        lock(&self.0, "stream start").ok().and_then(|mut s| s.take())
    }
}

/// The response body of a stream hyper serves: starts the stream on first poll, then reads
/// what it writes from a bounded channel.
struct HyperBody {
    start: Option<StreamStart>,
    rx: Option<mpsc::Receiver<Bytes>>,
    capacity: u64,
    write_timeout: Duration,
}

impl futures_util::Stream for HyperBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.rx.is_none() {
            let Some(sub) = self.start.take().and_then(|s| s.take()) else { return Poll::Ready(None) };
            let (tx, rx) = mpsc::channel(self.capacity.clamp(1, 1 << 16) as usize);
            metrics::counter!("aura_streams_served_total", "via" => "hyper").increment(1);
            tokio::spawn(sub.run(Arc::new(Sink::channel(tx, self.write_timeout))));
            self.rx = Some(rx);
        }
        match self.rx.as_mut() {
            Some(rx) => rx.poll_recv(cx).map(|chunk| chunk.map(Ok)),
            None => Poll::Ready(None),
        }
    }
}

/// One open stream while its own task drives it: the preamble, the replay, every catch-up.
/// While it is live the fan-out holds its state instead, and this task only waits for it back
/// (or for its client to go away).
pub struct Subscriber {
    ctx: Context,
    filter: EventFilter,
    last_sent: i64,
    end: End,
    finished: bool,
    deadline: Instant,
    replayed_pages: u32,
    /// The fan-out registry this stream joins whenever it is caught up.
    shard: ShardId,
    /// A batched or compressed stream, which follows the hub on its own (`follow`).
    shaped: Option<Box<Shape>>,
    _slots: Slots,
    _gauge: OpenGauge,
}

/// What a phase of a stream's task leaves its loop to do.
enum Then {
    /// Go round again: every event the stream wants up to this id has been sent.
    Again(i64),
    /// End the response, then stop.
    Finish,
    /// Stop at once: the client is gone or a write failed.
    Stop,
}

impl Subscriber {
    /// Runs the stream to its end, writing into `sink`: `retry:`, then rounds of catching up
    /// (from the table, or from the ring) and going live, until the stream ends.
    pub async fn run(mut self, sink: Arc<Sink>) {
        if let Some(shape) = self.shaped.take() {
            return Box::pin(self.follow(*shape, sink)).await;
        }
        let bounds = Bounds { shutdown: self.ctx.shutdown().clone(), deadline: self.deadline };
        let preamble = Bytes::from(format!("retry: {}\n\n", self.ctx.retry_ms()));
        if bounds.write(sink.push(preamble)).await.is_err() {
            return;
        }
        // Every event this stream wants up to here has been sent: the resume point at first.
        let mut covered = self.last_sent;
        loop {
            if self.finished || bounds.is_over() {
                bounds.finish(&sink).await;
                return;
            }
            let then = match self.ctx.hub().recent_after(covered) {
                None => self.table_catch_up(covered, &bounds, &sink).await,
                Some((recent, through)) => match self.ring_catch_up(&recent, &bounds, &sink).await {
                    Err(_) => Then::Stop,
                    Ok(()) if self.finished => Then::Again(covered),
                    Ok(()) => self.live(through, &bounds, &sink).await,
                },
            };
            match then {
                Then::Again(through) => covered = through,
                Then::Finish => {
                    bounds.finish(&sink).await;
                    return;
                }
                Then::Stop => return,
            }
        }
    }

    /// A batched or compressed stream follows the hub on its own (`follow`).
    async fn follow(self, shape: Shape, sink: Arc<Sink>) {
        let Subscriber { ctx, filter, last_sent, end, _slots, _gauge, .. } = self;
        let request = StreamRequest { filter, after: last_sent, end, shape, history_start: None };
        follow::sse(Follower::new(ctx, request, _slots, _gauge), shape.gzip, sink).await
    }

    /// Table catch-up, for a stream further behind than memory holds: pages until one comes
    /// back short (or the stream finishes), the next page read while the current one is written.
    async fn table_catch_up(&mut self, covered: i64, bounds: &Bounds, sink: &Sink) -> Then {
        let ctx = self.ctx.clone();
        let seen = ctx.hub().last_published();
        let first = if self.replayed_pages == 0 { FIRST_REPLAY_PAGE } else { REPLAY_PAGE };
        let mut page = read_page(ctx.store(), &self.filter, self.last_sent, first, self.end).await;
        loop {
            // A failed read ends the response; the client resumes from its last id.
            let Some(current) = page else { return Then::Finish };
            self.account(&current);
            if !current.more || self.finished {
                if bounds.write(sink.push(current.frames)).await.is_err() {
                    return Then::Stop;
                }
                return Then::Again(if current.more { covered } else { seen });
            }
            let next = read_page(ctx.store(), &self.filter, self.last_sent, REPLAY_PAGE, self.end);
            let (written, next) = tokio::join!(bounds.write(sink.push(current.frames)), next);
            if written.is_err() {
                return Then::Stop;
            }
            if bounds.is_over() {
                return Then::Again(covered);
            }
            page = next;
        }
    }

    /// Ring catch-up, for a stream whose next events memory still holds: a few events first,
    /// so that the first one leaves at once, then the rest in one write.
    async fn ring_catch_up(
        &mut self,
        recent: &[Arc<StoredEvent>],
        bounds: &Bounds,
        sink: &Sink,
    ) -> io::Result<()> {
        let (first, rest) = recent.split_at(recent.len().min(FIRST_RECENT));
        let frames = self.frames_of(first);
        bounds.write(sink.push(frames)).await?;
        if !self.finished {
            let frames = self.frames_of(rest);
            bounds.write(sink.push(frames)).await?;
        }
        Ok(())
    }

    /// Live: joins the shard, caught up to `through` (the ring's newest id), and waits for the
    /// stream to come back (behind, finished, expired, shutting down) or for its client to go.
    async fn live(&mut self, through: i64, bounds: &Bounds, sink: &Arc<Sink>) -> Then {
        let fanout = self.ctx.hub().fanout();
        let live = Live {
            sink: sink.clone(),
            filter: std::mem::replace(&mut self.filter, EventFilter::All),
            last_sent: self.last_sent,
            deadline: self.deadline,
            end: self.end,
        };
        let (id, back) = match fanout.join(self.shard, through, live) {
            Join::Joined(id, back) => (id, back),
            Join::Moved(live) => {
                self.restore(live);
                return Then::Again(through);
            }
            Join::Closed(live) => {
                self.restore(live);
                return Then::Finish;
            }
        };
        let handoff = tokio::select! {
            handoff = back => handoff,
            () = sink.closed() => {
                fanout.leave(self.shard, id);
                return Then::Stop;
            }
        };
        let Ok(Handoff { live, reason, pending }) = handoff else { return Then::Stop };
        self.restore(live);
        let written = match pending {
            Some(pending) => bounds.write(sink.push_wire(pending)).await,
            // The client took nothing: wait until it takes bytes again before catching up.
            None if reason == Reason::Behind => bounds.write(sink.writable()).await,
            None => Ok(()),
        };
        if written.is_err() {
            metrics::counter!("aura_streams_stalled_total").increment(1);
            return Then::Stop;
        }
        match reason {
            Reason::Behind => metrics::counter!("aura_stream_catch_ups_total").increment(1),
            Reason::Finished => self.finished = true,
            Reason::Expired | Reason::ShuttingDown => return Then::Finish,
            Reason::Closed => return Then::Stop,
        }
        // Everything the stream wants up to its last sent event went out.
        Then::Again(self.last_sent)
    }

    /// The frames of the events this stream wants among `events`, up to a job's terminal one.
    fn frames_of(&mut self, events: &[Arc<StoredEvent>]) -> Bytes {
        let wanted = events.iter().map(|e| &**e).filter(|e| fanout::wants(&self.filter, e));
        let page = frame(wanted, self.last_sent, self.end);
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
        self.finished |= page.finished || self.end.reached(self.last_sent);
        metrics::counter!("aura_events_delivered_total").increment(page.count);
        metrics::counter!("aura_events_replayed_total").increment(page.count);
    }
}

/// The frames of `events` after `after`, in order, up to a job's terminal event when that
/// ends the stream.
fn frame<'a>(events: impl IntoIterator<Item = &'a StoredEvent>, after: i64, end: End) -> Page {
    let mut page = Page { frames: Bytes::new(), count: 0, last_id: None, finished: false, more: false };
    let mut frames = BytesMut::new();
    for event in events.into_iter().filter(|e| e.id > after) {
        frames.extend_from_slice(&event.frame);
        page.count += 1;
        page.last_id = Some(event.id);
        if end.at_terminal() && event.is_terminal() {
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
async fn read_page(store: &Store, filter: &EventFilter, after: i64, limit: u32, end: End) -> Option<Page> {
    match store.framed_after(filter, after, limit).await {
        Ok(Some(page)) => {
            return Some(Page {
                frames: page.frames,
                count: page.count as u64,
                last_id: page.last_id,
                finished: end.at_terminal() && page.terminal_id.is_some(),
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
    let mut page = frame(&rows, after, end);
    page.more = rows.len() == limit as usize;
    Some(page)
}
