//! The live half of every stream: registries of caught-up streams, each written to by one task.
//!
//! The hub's tail calls [`Fanout::deliver`] once per committed group, which wakes one task per
//! shard (one shard per core). Each walks its registry and writes each stream's share of the
//! group into its sink without waiting (one vectored write of the shared, pre-rendered frames),
//! so an event costs each subscriber one `write` and no task wake-up, no lock of its own, no
//! allocation. A stream that takes the whole group (most do) gets one buffer of its wire bytes,
//! made once per shard; groups that queued up while a shard was writing an earlier one go out
//! together, one write per stream, so a shard that falls behind catches up instead of falling
//! further behind. Heartbeats and stream deadlines are checked by the same tasks on the tail's tick.
//!
//! A stream that cannot take a write whole (its client reads slowly), ends (a job's terminal
//! event, its deadline, shutdown) or whose client is gone leaves the registry, and its state is
//! handed back to the stream's own task through a oneshot: that task finishes the write, catches
//! up from memory or the table and joins again. Joining is gapless because it happens under the
//! lock a shard holds while it delivers: a stream joins only if the shard has delivered nothing
//! after the newest event the stream has caught up to (otherwise it catches up again), and the
//! shard skips every event at or below the stream's last sent id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use crate::domain::event::StoredEvent;
use crate::store::EventFilter;
use crate::streaming::request::End;
use crate::streaming::sink::{Push, Sink, Whole};
use crate::sync::{Poisoned, lock};

/// A stream's state while it is live; handed back and forth between its task and the registry.
pub struct Live {
    pub sink: Arc<Sink>,
    pub filter: EventFilter,
    /// The id of the last event the client was sent (or the resume point).
    pub last_sent: i64,
    pub deadline: Instant,
    /// Whether the job's terminal event ends it (a per-job stream).
    pub end: End,
}

impl Live {
    fn wants(&self, event: &StoredEvent) -> bool {
        event.id > self.last_sent && wants(&self.filter, event)
    }
}

/// Whether a stream with `filter` carries `event`.
pub fn wants(filter: &EventFilter, event: &StoredEvent) -> bool {
    match filter {
        EventFilter::All => true,
        EventFilter::Jobs(ids) => ids.contains(&event.job_id),
        EventFilter::Owner(name) => event.owner.as_deref() == Some(name.as_str()),
    }
}

/// Why a stream left the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its client did not take a write whole: finish it and catch up from the table.
    Behind,
    /// The job's terminal event was sent (or is in `pending`).
    Finished,
    /// The stream reached its maximum age.
    Expired,
    ShuttingDown,
    /// The client is gone.
    Closed,
}

/// A stream given back to its task.
pub struct Handoff {
    pub live: Live,
    pub reason: Reason,
    /// Wire bytes a partial write left: they go out before anything else.
    pub pending: Option<Bytes>,
}

/// The answer to [`Fanout::join`].
pub enum Join {
    /// Live under this id; the registry hands the stream back through the receiver.
    Joined(u64, oneshot::Receiver<Handoff>),
    /// Events were published after the given point: read the table again, then retry.
    Moved(Live),
    /// The server is shutting down (or the shard's registry is poisoned).
    Closed(Live),
}

struct Entry {
    live: Live,
    last_write: Instant,
    back: oneshot::Sender<Handoff>,
}

#[derive(Default)]
struct Registry {
    /// The highest id this shard has delivered.
    last_published: i64,
    closed: bool,
    /// Streams of all jobs, or of all of one owner's jobs.
    wide: HashMap<u64, Entry>,
    /// Streams of named jobs, found through `by_job`.
    narrow: HashMap<u64, Entry>,
    by_job: HashMap<Uuid, Vec<u64>>,
}

impl Registry {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        if let Some(entry) = self.wide.remove(&id) {
            return Some(entry);
        }
        let entry = self.narrow.remove(&id)?;
        if let EventFilter::Jobs(jobs) = &entry.live.filter {
            for job in jobs {
                if let Some(ids) = self.by_job.get_mut(job) {
                    ids.retain(|&other| other != id);
                    if ids.is_empty() {
                        self.by_job.remove(job);
                    }
                }
            }
        }
        Some(entry)
    }

    fn end(&mut self, ended: Vec<(u64, Reason, Option<Bytes>)>) {
        for (id, reason, pending) in ended {
            if let Some(entry) = self.remove(id) {
                // A task that stopped listening has already gone; nothing to hand back to.
                let _ = entry.back.send(Handoff { live: entry.live, reason, pending });
            }
        }
    }
}

/// The registries, one per shard, each written by its own task so that one event reaches
/// thousands of sockets from every core at once (each `write` is mostly the kernel's work).
pub struct Fanout {
    shards: Vec<Arc<Shard>>,
    /// The highest id handed to the shards.
    last_published: AtomicI64,
    next_shard: AtomicU64,
}

/// Most queued requests a shard's task takes at once.
const MAX_WORK: usize = 64;

/// Groups a shard has yet to write, in id order: the common single group as it came, several
/// joined into one.
#[derive(Default)]
struct Groups {
    first: Option<Arc<[Arc<StoredEvent>]>>,
    more: Vec<Arc<StoredEvent>>,
}

impl Groups {
    fn push(&mut self, events: Arc<[Arc<StoredEvent>]>) {
        match &self.first {
            None => self.first = Some(events),
            Some(first) => {
                if self.more.is_empty() {
                    self.more.extend(first.iter().cloned());
                }
                self.more.extend(events.iter().cloned());
            }
        }
    }

    /// Everything pushed since the last take, as one slice.
    fn take(&mut self) -> Option<Arc<[Arc<StoredEvent>]>> {
        let first = self.first.take()?;
        if self.more.is_empty() {
            return Some(first);
        }
        Some(std::mem::take(&mut self.more).into())
    }
}

/// What the tail asks of a shard's task.
enum Work {
    Deliver(Arc<[Arc<StoredEvent>]>),
    Tick,
    Close,
}

struct Shard {
    registry: Mutex<Registry>,
    work: mpsc::UnboundedSender<Work>,
    next_id: AtomicU64,
    heartbeat: Duration,
    delivered: metrics::Counter,
    lag: metrics::Histogram,
}

/// Which registry a stream lives in; fixed for the stream's life.
#[derive(Debug, Clone, Copy)]
pub struct ShardId(usize);

impl Fanout {
    /// `shards` registries whose streams have seen everything up to `last_published`; each
    /// shard's task is spawned here.
    pub fn start(last_published: i64, heartbeat: Duration, shards: usize) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| {
                let (work, rx) = mpsc::unbounded_channel();
                let shard = Arc::new(Shard {
                    registry: Mutex::new(Registry { last_published, ..Registry::default() }),
                    work,
                    next_id: AtomicU64::new(1),
                    heartbeat,
                    delivered: metrics::counter!("aura_events_delivered_total"),
                    lag: metrics::histogram!("aura_delivery_lag_seconds"),
                });
                tokio::spawn(shard.clone().run(rx));
                shard
            })
            .collect();
        Fanout { shards, last_published: AtomicI64::new(last_published), next_shard: AtomicU64::new(0) }
    }

    /// The highest id handed to the fan-out so far.
    pub fn last_published(&self) -> i64 {
        self.last_published.load(Ordering::Acquire)
    }

    /// A shard for a new stream (round robin).
    pub fn pick_shard(&self) -> ShardId {
        ShardId(self.next_shard.fetch_add(1, Ordering::Relaxed) as usize % self.shards.len())
    }

    fn shard(&self, id: ShardId) -> &Shard {
        &self.shards[id.0 % self.shards.len()]
    }

    /// Makes a stream live in `shard` if the shard delivered nothing after `seen`.
    pub fn join(&self, shard: ShardId, seen: i64, live: Live) -> Join {
        self.shard(shard).join(seen, live)
    }

    /// Takes a stream whose client has gone out of its registry.
    pub fn leave(&self, shard: ShardId, id: u64) {
        if let Ok(mut reg) = self.shard(shard).locked() {
            reg.remove(id);
        }
    }

    /// Hands a committed group, in id order, to every shard to write to its streams.
    pub fn deliver(&self, events: Vec<Arc<StoredEvent>>) {
        let Some(last) = events.last() else { return };
        self.last_published.fetch_max(last.id, Ordering::AcqRel);
        let events: Arc<[Arc<StoredEvent>]> = events.into();
        self.send(|| Work::Deliver(events.clone()));
    }

    /// Heartbeats for streams silent for a whole interval; ends streams past their deadline.
    pub fn tick(&self) {
        self.send(|| Work::Tick);
    }

    /// Hands every stream back to end it, and refuses new ones.
    pub fn close(&self) {
        self.send(|| Work::Close);
    }

    fn send(&self, work: impl Fn() -> Work) {
        for shard in &self.shards {
            // A shard's task only ends after `Close`.
            let _ = shard.work.send(work());
        }
    }
}

impl Shard {
    /// The registry, unless a panic poisoned it. A panic under this lock is one in this shard's
    /// task (the only writer), which has then ended: nothing joins it (a stream that tries is
    /// told the shard is closed, ends, and its client reconnects, most likely to another shard),
    /// and nothing is delivered, ticked or closed through it again.
    fn locked(&self) -> Result<MutexGuard<'_, Registry>, Poisoned> {
        lock(&self.registry, "fan-out shard")
    }

    async fn run(self: Arc<Self>, mut work: mpsc::UnboundedReceiver<Work>) {
        let mut items = Vec::new();
        // Groups that arrived while this shard was writing an earlier one go out together: one
        // write per stream for all of them, so a shard that falls behind catches up with fewer
        // system calls instead of falling further behind.
        let mut groups = Groups::default();
        while work.recv_many(&mut items, MAX_WORK).await > 0 {
            for item in items.drain(..) {
                match item {
                    Work::Deliver(events) => groups.push(events),
                    Work::Tick => {
                        self.deliver(groups.take().as_deref());
                        self.tick();
                    }
                    Work::Close => {
                        self.deliver(groups.take().as_deref());
                        self.close();
                        return;
                    }
                }
            }
            self.deliver(groups.take().as_deref());
        }
    }

    fn join(&self, seen: i64, live: Live) -> Join {
        let Ok(mut reg) = self.locked() else { return Join::Closed(live) };
        if reg.closed {
            return Join::Closed(live);
        }
        if reg.last_published > seen {
            return Join::Moved(live);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (back, rx) = oneshot::channel();
        let entry = Entry { live, last_write: Instant::now(), back };
        if let EventFilter::Jobs(jobs) = &entry.live.filter {
            for job in jobs {
                reg.by_job.entry(*job).or_default().push(id);
            }
            reg.narrow.insert(id, entry);
        } else {
            reg.wide.insert(id, entry);
        }
        Joined(id, rx)
    }

    fn deliver(&self, events: Option<&[Arc<StoredEvent>]>) {
        let Some(events) = events else { return };
        let Some(last) = events.last() else { return };
        let now = Instant::now();
        let Ok(mut reg) = self.locked() else { return };
        reg.last_published = reg.last_published.max(last.id);
        let mut frames = Vec::with_capacity(events.len());
        let mut ended = Vec::new();
        let mut delivered = 0u64;
        let whole = Whole::default();
        for (&id, entry) in reg.wide.iter_mut() {
            if let Some(end) = offer(entry, events, &whole, now, &mut frames, &mut delivered) {
                ended.push((id, end.0, end.1));
            }
        }
        if !reg.by_job.is_empty() {
            let mut ids: Vec<u64> =
                events.iter().filter_map(|e| reg.by_job.get(&e.job_id)).flatten().copied().collect();
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                if let Some(entry) = reg.narrow.get_mut(&id)
                    && let Some(end) = offer(entry, events, &whole, now, &mut frames, &mut delivered)
                {
                    ended.push((id, end.0, end.1));
                }
            }
        }
        reg.end(ended);
        drop(reg);
        if delivered > 0 {
            self.delivered.increment(delivered);
            if let Some(appended) = events[0].appended {
                self.lag.record(appended.elapsed().as_secs_f64());
            }
        }
    }

    fn tick(&self) {
        let now = Instant::now();
        let keepalive = Bytes::from_static(b": keepalive\n\n");
        let Ok(mut reg) = self.locked() else { return };
        let mut ended = Vec::new();
        let Registry { wide, narrow, .. } = &mut *reg;
        for (&id, entry) in wide.iter_mut().chain(narrow.iter_mut()) {
            if now >= entry.live.deadline {
                ended.push((id, Reason::Expired, None));
            } else if now.saturating_duration_since(entry.last_write) >= self.heartbeat {
                match entry.live.sink.try_push(&[&keepalive], None) {
                    Push::Done => entry.last_write = now,
                    Push::Partial(rest) => ended.push((id, Reason::Behind, Some(rest))),
                    Push::Full => ended.push((id, Reason::Behind, None)),
                    Push::Closed => ended.push((id, Reason::Closed, None)),
                }
            }
        }
        reg.end(ended);
    }

    fn close(&self) {
        let Ok(mut reg) = self.locked() else { return };
        reg.closed = true;
        let ids: Vec<u64> = reg.wide.keys().chain(reg.narrow.keys()).copied().collect();
        reg.end(ids.into_iter().map(|id| (id, Reason::ShuttingDown, None)).collect());
    }
}

use Join::Joined;

/// Writes a stream's share of `events`; `Some` when the stream must leave the registry.
fn offer<'a>(
    entry: &mut Entry,
    events: &'a [Arc<StoredEvent>],
    whole: &Whole,
    now: Instant,
    frames: &mut Vec<&'a Bytes>,
    delivered: &mut u64,
) -> Option<(Reason, Option<Bytes>)> {
    frames.clear();
    let live = &entry.live;
    let mut last = live.last_sent;
    let mut terminal = false;
    for event in events {
        if event.id > last && live.wants(event) {
            frames.push(&event.frame);
            last = event.id;
            if live.end.at_terminal() && event.is_terminal() {
                terminal = true;
                break;
            }
        }
    }
    if frames.is_empty() {
        return None;
    }
    // Most streams take every event of a group: they share one buffer of its wire bytes.
    let whole = (frames.len() == events.len()).then_some(whole);
    let written = match entry.live.sink.try_push(frames, whole) {
        Push::Done => None,
        Push::Partial(rest) => Some(rest),
        Push::Full => return Some((Reason::Behind, None)),
        Push::Closed => return Some((Reason::Closed, None)),
    };
    *delivered += frames.len() as u64;
    entry.live.last_sent = last;
    entry.last_write = now;
    match (terminal, written) {
        (true, pending) => Some((Reason::Finished, pending)),
        (false, Some(pending)) => Some((Reason::Behind, Some(pending))),
        (false, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(ids: &[i64]) -> Arc<[Arc<StoredEvent>]> {
        let job = Uuid::nil();
        ids.iter()
            .map(|&id| Arc::new(StoredEvent::new(id, job, "job-status".into(), "{}".into(), String::new())))
            .collect()
    }

    fn ids(events: Option<Arc<[Arc<StoredEvent>]>>) -> Vec<i64> {
        events.map(|e| e.iter().map(|e| e.id).collect()).unwrap_or_default()
    }

    #[test]
    fn groups_queued_for_a_shard_are_written_as_one_in_id_order() {
        let mut groups = Groups::default();
        assert!(groups.take().is_none());
        let one = group(&[1, 2]);
        groups.push(one.clone());
        let taken = groups.take();
        // A lone group is written as it came, not copied.
        assert!(taken.as_ref().is_some_and(|t| Arc::ptr_eq(t, &one)));
        groups.push(group(&[3]));
        groups.push(group(&[4, 5]));
        groups.push(group(&[6]));
        assert_eq!(ids(groups.take()), vec![3, 4, 5, 6]);
        assert!(groups.take().is_none());
    }

    /// Lets every ready task run: on the paused clock a sleep ends only once the runtime is idle.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    /// A live stream of everything into a channel, ending at `deadline`.
    fn live(deadline: Instant) -> (Live, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(8);
        let sink = Arc::new(Sink::channel(tx, Duration::from_secs(5)));
        (Live { sink, filter: EventFilter::All, last_sent: 0, deadline, end: End::Never }, rx)
    }

    /// Tokio's paused clock: the heartbeat and the stream's deadline are timers, not sleeps.
    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_gets_a_keepalive_once_a_whole_heartbeat_passed_and_ends_at_its_deadline() {
        let heartbeat = Duration::from_secs(15);
        let fanout = Fanout::start(0, heartbeat, 1);
        let (live, mut rx) = live(Instant::now() + Duration::from_secs(40));
        let Join::Joined(_, handoff) = fanout.join(fanout.pick_shard(), 0, live) else {
            panic!("a stream that has seen everything joins");
        };

        tokio::time::advance(heartbeat - Duration::from_millis(10)).await;
        fanout.tick();
        settle().await;
        assert!(rx.try_recv().is_err(), "no keepalive before a whole heartbeat of silence");
        tokio::time::advance(Duration::from_millis(10)).await;
        fanout.tick();
        settle().await;
        assert_eq!(rx.try_recv().ok().as_deref(), Some(&b": keepalive\n\n"[..]));

        // An event is a write too: the next keepalive is a whole heartbeat after it.
        tokio::time::advance(Duration::from_secs(5)).await;
        fanout.deliver(vec![Arc::new(StoredEvent::new(
            1,
            Uuid::nil(),
            "job-status".into(),
            "{}".into(),
            String::new(),
        ))]);
        settle().await;
        assert!(rx.try_recv().is_ok_and(|chunk| chunk.starts_with(b"id: 1")), "the event is written");
        tokio::time::advance(heartbeat - Duration::from_secs(1)).await;
        fanout.tick();
        settle().await;
        assert!(rx.try_recv().is_err(), "silence is counted from the event, not the last keepalive");

        // At its deadline (40 s after it opened) the stream is handed back to end it.
        tokio::time::advance(Duration::from_secs(40)).await;
        fanout.tick();
        let back = tokio::time::timeout(Duration::from_secs(1), handoff).await;
        assert!(matches!(back, Ok(Ok(Handoff { reason: Reason::Expired, .. }))));
    }
}
