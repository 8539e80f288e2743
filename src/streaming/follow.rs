//! A stream that follows the hub on its own: batched (`?batch=`), compressed (gzip) or a
//! WebSocket. Such a stream never joins the fan-out's zero-copy registries, so the default
//! path costs exactly what it did before these existed; its own task reads the hub's recent
//! events (or the table, like any catch-up) and writes them shaped for its client.
//!
//! [`Follower::next`] is the whole protocol: it waits until the batch window since the last
//! write has passed, then returns every event after the last one sent, with the step-progress
//! events of one job and step collapsed to the newest (when batching). The last event returned
//! is always the newest one read, so the client's last id is the follower's position and a
//! resume from it misses nothing but collapsed progress, whose newer value it has had.
//! `next` is cancel-safe (nothing changes across an await), so a WebSocket can `select!` it
//! with its client's messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::domain::event::StoredEvent;
use crate::store::EventFilter;
use crate::streaming::context::{Bounds, Context};
use crate::streaming::fanout;
use crate::streaming::gzip::Gzip;
use crate::streaming::request::{End, OpenGauge, Slots, StreamRequest};
use crate::streaming::sink::Sink;

/// Events read from the table per catch-up.
const PAGE: u32 = 2000;

/// The longest batch window a client may ask for.
pub const MAX_BATCH: Duration = Duration::from_millis(1000);

/// What [`Follower::next`] has for the client.
pub enum Next {
    /// Events to send, in id order.
    Events(Vec<Arc<StoredEvent>>),
    /// Nothing for a heartbeat interval: send a keepalive.
    Idle,
    /// The stream is over.
    End(Ended),
}

/// Why a followed stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A job stream sent its terminal event.
    Finished,
    /// `AURA_MAX_STREAM_SECS` passed.
    Expired,
    ShuttingDown,
    /// The table could not be read; the client resumes.
    Failed,
}

pub struct Follower {
    ctx: Context,
    filter: EventFilter,
    /// The id of the last event sent (or the resume point).
    last_sent: i64,
    /// Every event up to here has been looked at (some were not this stream's).
    covered: i64,
    end: End,
    window: Duration,
    deadline: Instant,
    last_flush: Option<Instant>,
    last_write: Instant,
    finished: bool,
    wake: watch::Receiver<i64>,
    /// Released when the stream ends.
    _slots: Slots,
    _gauge: OpenGauge,
}

impl Follower {
    /// A stream for `request` (its gzip is the caller's to apply: see [`sse`]).
    pub fn new(ctx: Context, request: StreamRequest, slots: Slots, gauge: OpenGauge) -> Self {
        let wake = ctx.hub().watch();
        Follower {
            deadline: ctx.deadline(),
            ctx,
            filter: request.filter,
            last_sent: request.after,
            covered: request.after,
            end: request.end,
            window: request.shape.batch,
            last_flush: None,
            last_write: Instant::now(),
            finished: false,
            wake,
            _slots: slots,
            _gauge: gauge,
        }
    }

    /// Moves the resume point before anything was sent (a WebSocket's `{"resume": N}`).
    pub fn resume_from(&mut self, resume: i64) {
        self.last_sent = resume;
        self.covered = resume;
    }

    /// Whether the stream has sent its last event already (a job that had ended, resumed at
    /// or past its last event).
    pub fn sent_its_last(&self) -> bool {
        self.end.reached(self.last_sent)
    }

    /// What ends this stream's writes besides the write timeout: shutdown and its deadline.
    pub fn bounds(&self) -> Bounds {
        Bounds { shutdown: self.ctx.shutdown().clone(), deadline: self.deadline }
    }

    /// Waits for the next thing to send. Cancel-safe.
    pub async fn next(&mut self) -> Next {
        let shutdown = self.ctx.shutdown().clone();
        loop {
            if self.finished {
                return Next::End(Ended::Finished);
            }
            if shutdown.is_cancelled() {
                return Next::End(Ended::ShuttingDown);
            }
            if Instant::now() >= self.deadline {
                return Next::End(Ended::Expired);
            }
            if let Some(last) = self.last_flush
                && !self.window.is_zero()
            {
                tokio::select! {
                    () = tokio::time::sleep_until(last + self.window) => {}
                    () = shutdown.cancelled() => continue,
                }
            }
            // Marked seen before reading, so an event published during the read wakes us.
            self.wake.borrow_and_update();
            let Some(events) = self.collect().await else { return Next::End(Ended::Failed) };
            if !events.is_empty() {
                return Next::Events(self.take(events));
            }
            let beat = self.last_write + self.ctx.heartbeat();
            tokio::select! {
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        return Next::End(Ended::ShuttingDown);
                    }
                }
                () = tokio::time::sleep_until(beat) => {
                    self.last_write = Instant::now();
                    return Next::Idle;
                }
                () = tokio::time::sleep_until(self.deadline) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// This stream's events after what it has looked at: from memory when the hub still holds
    /// them, else a page from the table. `None` when the table could not be read.
    async fn collect(&mut self) -> Option<Vec<Arc<StoredEvent>>> {
        let after = self.covered.max(self.last_sent);
        let hub = self.ctx.hub();
        if let Some((recent, through)) = hub.recent_after(after) {
            self.covered = through.max(after);
            return Some(recent.into_iter().filter(|e| fanout::wants(&self.filter, e)).collect());
        }
        let seen = hub.last_published();
        match self.ctx.store().events_after(&self.filter, after, PAGE).await {
            Ok(rows) => {
                if rows.len() < PAGE as usize {
                    self.covered = seen.max(after);
                }
                Some(rows.into_iter().map(Arc::new).collect())
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading events for a stream failed; ending it so the client resumes");
                None
            }
        }
    }

    /// Takes note of `events` as sent: cut at a job's terminal event, collapsed when batching.
    fn take(&mut self, mut events: Vec<Arc<StoredEvent>>) -> Vec<Arc<StoredEvent>> {
        if self.end.at_terminal()
            && let Some(end) = events.iter().position(|e| e.is_terminal())
        {
            events.truncate(end + 1);
            self.finished = true;
        }
        if let Some(last) = self.end.last()
            && let Some(end) = events.iter().position(|e| e.id >= last)
        {
            events.truncate(end + 1);
            self.finished = true;
        }
        if !self.window.is_zero() {
            let before = events.len();
            events = collapse(events);
            metrics::counter!("aura_events_collapsed_total").increment((before - events.len()) as u64);
        }
        if let Some(last) = events.last() {
            self.last_sent = last.id;
        }
        let now = Instant::now();
        self.last_flush = Some(now);
        self.last_write = now;
        metrics::counter!("aura_events_delivered_total").increment(events.len() as u64);
        events
    }
}

/// `events` without every `step-progress` that a newer one of the same job and step follows.
/// The newest of each stays where it was, so ids stay ascending and the last event stays last.
pub fn collapse(events: Vec<Arc<StoredEvent>>) -> Vec<Arc<StoredEvent>> {
    #[derive(serde::Deserialize)]
    struct Step {
        step: Option<String>,
    }
    let keys: Vec<Option<(Uuid, Option<String>)>> = events
        .iter()
        .map(|e| {
            (e.kind == "step-progress").then(|| {
                let step = serde_json::from_str::<Step>(e.data()).ok().and_then(|s| s.step);
                (e.job_id, step)
            })
        })
        .collect();
    let mut newest = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        if let Some(key) = key {
            newest.insert(key, i);
        }
    }
    if newest.len() == keys.iter().filter(|k| k.is_some()).count() {
        return events;
    }
    events
        .into_iter()
        .zip(&keys)
        .enumerate()
        .filter(|(i, (_, key))| key.as_ref().is_none_or(|key| newest.get(key) == Some(i)))
        .map(|(_, (event, _))| event)
        .collect()
}

/// Runs a batched or compressed event stream to its end, writing into `sink`. Every write
/// gives up after the write timeout without progress (`sink`), or a moment after shutdown or
/// the stream's deadline (`Bounds`), whichever comes first.
pub async fn sse(mut follower: Follower, gzip: bool, sink: Arc<Sink>) {
    let bounds = follower.bounds();
    let mut gzip = gzip.then(Gzip::default);
    let mut encode = |bytes: Bytes| match gzip.as_mut() {
        Some(gzip) => gzip.encode(&bytes),
        None => bytes,
    };
    let preamble = Bytes::from(format!("retry: {}\n\n", follower.ctx.retry_ms()));
    if bounds.write(sink.push(encode(preamble))).await.is_err() {
        return;
    }
    loop {
        let next = tokio::select! {
            next = follower.next() => next,
            () = sink.closed() => return,
        };
        let bytes = match next {
            Next::Events(events) => {
                let mut frames = BytesMut::with_capacity(events.iter().map(|e| e.frame.len()).sum());
                for event in &events {
                    frames.extend_from_slice(&event.frame);
                }
                frames.freeze()
            }
            Next::Idle => Bytes::from_static(b": keepalive\n\n"),
            Next::End(_) => break,
        };
        if let Err(e) = bounds.write(sink.push(encode(bytes))).await {
            if e.kind() == std::io::ErrorKind::TimedOut {
                metrics::counter!("aura_streams_stalled_total").increment(1);
            }
            return;
        }
    }
    if let Some(gzip) = gzip.as_mut()
        && bounds.write(sink.push(gzip.finish())).await.is_err()
    {
        return;
    }
    bounds.finish(&sink).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, job: Uuid, kind: &str, step: &str) -> Arc<StoredEvent> {
        let data = format!("{{\"jobId\":\"{job}\",\"step\":\"{step}\",\"progressPct\":{id}}}");
        Arc::new(StoredEvent::new(id, job, kind.to_owned(), data, String::new()))
    }

    #[test]
    fn only_the_newest_progress_of_each_job_and_step_stays() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let events = vec![
            event(1, a, "step-progress", "Audio"),
            event(2, b, "step-progress", "Audio"),
            event(3, a, "step-status", "Audio"),
            event(4, a, "step-progress", "Audio"),
            event(5, a, "step-progress", "Visuals"),
            event(6, b, "warning", "Audio"),
            event(7, a, "step-progress", "Audio"),
        ];
        let ids: Vec<i64> = collapse(events).iter().map(|e| e.id).collect();
        assert_eq!(ids, [2, 3, 5, 6, 7]);
    }
}
