//! The fan-out: one tail over the event log, shared by every subscriber.
//!
//! The writer hands each committed group here; a poll of the table catches rows that another
//! process appended to the same file. Either way a single task publishes events strictly in id
//! order, once, as shared `Arc<StoredEvent>`s on a broadcast channel, so a subscriber never
//! queries SQLite for a live event. SQLite serialises writers and AUTOINCREMENT hands out ids
//! in commit order, so "every id up to the highest committed one is visible" holds for any
//! reader: the tail fills a gap before a group from the table, then publishes the group.
//!
//! A subscriber that falls more than the channel's capacity behind gets `Lagged` from its
//! receiver and catches up from the table (see `stream`); nobody is disconnected for being slow.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::event::StoredEvent;
use crate::store::{CommitFeed, EventFilter, Store};

/// How often the tail looks for rows appended by other processes.
pub const FOREIGN_POLL: Duration = Duration::from_millis(250);
/// Rows read per query while catching up.
const PAGE: u32 = 1000;

pub struct Hub {
    tx: broadcast::Sender<Arc<StoredEvent>>,
    last_published: AtomicI64,
}

impl Hub {
    /// Starts the tail task (`capacity`: events a subscriber may be behind before it reads from
    /// the table instead); it publishes events committed after `store`'s current end.
    pub async fn start(
        store: Store,
        feed: CommitFeed,
        capacity: usize,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Hub>> {
        let (tx, _) = broadcast::channel(capacity.max(1));
        let start = store.max_event_id().await?;
        let hub = Arc::new(Hub { tx, last_published: AtomicI64::new(start) });
        tokio::spawn(tail(hub.clone(), store, feed, shutdown));
        Ok(hub)
    }

    /// A receiver of every event published from now on. Subscribe *before* reading history.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.tx.subscribe()
    }

    /// The highest id published so far.
    pub fn last_published(&self) -> i64 {
        self.last_published.load(Ordering::Acquire)
    }

    fn publish(&self, event: Arc<StoredEvent>) {
        self.last_published.store(event.id, Ordering::Release);
        // No receivers is fine: nobody is listening right now.
        let _ = self.tx.send(event);
    }
}

async fn tail(hub: Arc<Hub>, store: Store, mut feed: CommitFeed, shutdown: CancellationToken) {
    let mut poll = tokio::time::interval(FOREIGN_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            group = feed.recv() => {
                let Some(group) = group else { break };
                let first = group.first().map_or(i64::MAX, |e| e.id);
                if first > hub.last_published() + 1 {
                    catch_up(&hub, &store, first - 1).await;
                }
                for event in group {
                    if event.id > hub.last_published() {
                        hub.publish(event);
                    }
                }
            }
            _ = poll.tick() => catch_up(&hub, &store, i64::MAX).await,
            _ = shutdown.cancelled() => break,
        }
    }
    tracing::debug!("event tail stopped");
}

/// Publishes rows in the table after the last published id, up to `until`.
async fn catch_up(hub: &Hub, store: &Store, until: i64) {
    loop {
        let after = hub.last_published();
        let page = match store.events_after(&EventFilter::All, after, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "reading new events for the fan-out failed; retrying at the next poll");
                return;
            }
        };
        let full = page.len() == PAGE as usize;
        for event in page {
            if event.id > until {
                return;
            }
            hub.publish(Arc::new(event));
        }
        if !full {
            return;
        }
    }
}
