//! The tail: one task that follows the event log and feeds the fan-out.
//!
//! The writer hands each committed group here; a poll of the table catches rows that another
//! process appended to the same file. Either way this single task hands events to
//! [`Fanout::deliver`] strictly in id order, once, as shared `Arc<StoredEvent>`s, so a live stream
//! never queries SQLite. SQLite serialises writers and AUTOINCREMENT hands out ids in commit
//! order, so "every id up to the highest committed one is visible" holds for any reader: the tail
//! fills a gap before a group from the table, then publishes the group. A gap it cannot fill (a
//! read failed) holds the group back instead: it is published later from the table, never
//! before an id below it.
//!
//! The newest events (`AURA_STREAM_BUFFER` of them, 4096 by default) are also kept in memory,
//! in order, so that a stream resuming among them, or catching up on them before it joins the
//! fan-out, does not read SQLite at all.
//!
//! Rows read back from the table do not know their job's owner; the tail looks it up once per
//! job (cached) so that owner-filtered streams are decided by a string comparison in the fan-out.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::event::StoredEvent;
use crate::store::{CommitFeed, EventFilter, Store};
use crate::streaming::fanout::Fanout;
use crate::sync::lock;

/// How often the tail looks for rows appended by other processes, sends heartbeats and ends
/// streams past their deadline.
pub const FOREIGN_POLL: Duration = Duration::from_millis(250);
/// Rows read per query while catching up.
const PAGE: u32 = 1000;
/// Jobs whose owner the tail remembers before it starts over.
const OWNERS_CAP: usize = 10_000;

pub struct Hub {
    fanout: Fanout,
    recent: Mutex<Recent>,
    /// The highest id published: every id up to it is committed, visible to reads and among
    /// the recent ones. Followers that are not fan-out streams (webhook deliveries; batched,
    /// compressed and WebSocket streams) wake on it, so they cost the fan-out nothing per event.
    published: watch::Sender<i64>,
}

/// The newest events, in id order, with the point below which they are complete.
struct Recent {
    events: VecDeque<Arc<StoredEvent>>,
    capacity: usize,
    /// Every event after `floor` is in `events` (the id of the last one evicted, or where the
    /// tail started).
    floor: i64,
}

impl Hub {
    /// Starts the tail task; it publishes events committed after `store`'s current end.
    /// `heartbeat` is the longest a live stream stays silent.
    /// `recent` is how many of the newest events are kept in memory for resumes.
    pub async fn start(
        store: Store,
        feed: CommitFeed,
        heartbeat: Duration,
        recent: usize,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Hub>> {
        let start = store.max_event_id().await?;
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
        let recent =
            Recent { events: VecDeque::with_capacity(recent.min(4096)), capacity: recent, floor: start };
        let hub = Arc::new(Hub {
            fanout: Fanout::start(start, heartbeat, shards),
            recent: Mutex::new(recent),
            published: watch::channel(start).0,
        });
        tokio::spawn(tail(hub.clone(), store, feed, shutdown));
        Ok(hub)
    }

    pub fn fanout(&self) -> &Fanout {
        &self.fanout
    }

    /// The highest id published so far.
    pub fn last_published(&self) -> i64 {
        self.fanout.last_published()
    }

    /// Changes whenever new events are among the recent ones (after they are, so a follower
    /// that marks it seen and then reads [`Hub::recent_after`] or the table misses no wake-up).
    pub fn watch(&self) -> watch::Receiver<i64> {
        self.published.subscribe()
    }

    /// Every event after `after`, and the id they run through, if memory still holds them all.
    pub fn recent_after(&self, after: i64) -> Option<(Vec<Arc<StoredEvent>>, i64)> {
        // `None` sends the follower to the table, which always has every event.
        let recent = lock(&self.recent, "recent events").ok()?;
        if after < recent.floor {
            return None;
        }
        let through = recent.events.back().map_or(recent.floor, |e| e.id);
        let start = recent.events.partition_point(|e| e.id <= after);
        Some((recent.events.range(start..).cloned().collect(), through))
    }

    /// Forgets a deleted job's events, so that no resume from memory brings them back.
    pub fn forget_job(&self, job_id: Uuid) {
        if let Ok(mut recent) = lock(&self.recent, "recent events") {
            recent.events.retain(|e| e.job_id != job_id);
        }
    }

    /// Keeps `events` among the recent ones, then has the fan-out write them.
    fn publish(&self, events: Vec<Arc<StoredEvent>>) {
        if events.is_empty() {
            return;
        }
        if let Ok(mut recent) = lock(&self.recent, "recent events") {
            for event in &events {
                if recent.events.len() >= recent.capacity
                    && let Some(old) = recent.events.pop_front()
                {
                    recent.floor = old.id;
                }
                recent.events.push_back(event.clone());
            }
        }
        let last = events.last().map(|e| e.id);
        self.fanout.deliver(events);
        if let Some(last) = last {
            // One store and wake-up per group, after the streams have had it.
            self.published.send_replace(last);
        }
    }
}

async fn tail(hub: Arc<Hub>, store: Store, mut feed: CommitFeed, shutdown: CancellationToken) {
    let mut poll = tokio::time::interval(FOREIGN_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut owners = HashMap::new();
    loop {
        tokio::select! {
            group = feed.recv() => {
                let Some(mut group) = group else { break };
                let first = group.first().map_or(i64::MAX, |e| e.id);
                if first > hub.last_published() + 1 {
                    catch_up(&hub, &store, first - 1, &mut owners).await;
                }
                let after = hub.last_published();
                if first > after + 1 {
                    // The ids before this group could not be read (the database is away, or
                    // another node's commit is not visible yet): publishing the group would
                    // move past them for good. It is committed, so the next read of the table
                    // (the poll here, or the PostgreSQL tail) publishes it, in order.
                    continue;
                }
                group.retain(|e| e.id > after);
                hub.publish(group);
            }
            _ = poll.tick() => {
                catch_up(&hub, &store, i64::MAX, &mut owners).await;
                hub.fanout.tick();
            }
            _ = shutdown.cancelled() => break,
        }
    }
    hub.fanout.close();
    tracing::debug!("event tail stopped");
}

/// Publishes rows in the table after the last published id, up to `until`.
async fn catch_up(hub: &Hub, store: &Store, until: i64, owners: &mut HashMap<Uuid, Option<Arc<str>>>) {
    loop {
        let after = hub.last_published();
        let page = match store.events_after(&EventFilter::All, after, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "reading new events for the fan-out failed; retrying at the next poll");
                return;
            }
        };
        let read = page.len();
        let mut batch = Vec::with_capacity(read);
        for mut event in page.into_iter().take_while(|e| e.id <= until) {
            let Ok(owner) = owner_of(store, event.job_id, owners).await else { break };
            event.owner = owner;
            batch.push(Arc::new(event));
        }
        let complete = batch.len() == read;
        hub.publish(batch);
        if read < PAGE as usize || !complete {
            return;
        }
    }
}

/// The owner of a job, looked up once. `None` for a row whose job has no `jobs` row: only
/// streams that see every job get it. An error stops the catch-up before this event, to be
/// retried at the next poll, so that no owner's stream misses it.
async fn owner_of(
    store: &Store,
    job_id: Uuid,
    owners: &mut HashMap<Uuid, Option<Arc<str>>>,
) -> Result<Option<Arc<str>>, ()> {
    if let Some(owner) = owners.get(&job_id) {
        return Ok(owner.clone());
    }
    let owner = match store.job(job_id).await {
        Ok(job) => job.map(|job| Arc::<str>::from(job.owner)),
        Err(e) => {
            tracing::warn!(error = %e, "looking up a job's owner failed; retrying at the next poll");
            return Err(());
        }
    };
    if owners.len() >= OWNERS_CAP {
        owners.clear();
    }
    owners.insert(job_id, owner.clone());
    Ok(owner)
}
