//! A node's tail of the shared log: every event any node commits, once, in id order.
//!
//! A `NOTIFY` is a hint, never the data: it is lost while the listening connection is down, and
//! it says nothing of which ids. So the tail re-reads `id > last` from the table when a
//! notification arrives, at least every second without one, and after every reconnect of its
//! listening connection (a direct connection: `LISTEN` does not survive a transaction pooler).
//! Because ids become visible in commit order (see the parent module), `id > last` never passes
//! an event, and nothing is handed on twice. While the database is away the tail keeps trying,
//! with a bounded backoff, and picks up where it stopped.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CHANNEL, PgLog};
use crate::domain::event::StoredEvent;

/// Longest time without a re-read, whatever the listener hears.
const REREAD_EVERY: Duration = Duration::from_secs(1);
/// Wait before listening again after a failed attempt while reads still succeed.
const RELISTEN_AFTER: Duration = Duration::from_millis(250);
/// Events per read.
const PAGE: u32 = 1000;
/// Longest wait between two attempts to reach the database.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Follows the log after `after`: every event committed by any node goes to `feed` in id
/// order, in batches, exactly once, until `close` is cancelled or the receiver is dropped.
pub fn spawn(
    log: PgLog,
    url: String,
    after: i64,
    feed: mpsc::UnboundedSender<Vec<Arc<StoredEvent>>>,
    close: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tail = Tail { log, url, last: after, feed, listener: None, backoff: Duration::ZERO };
        tail.run(close).await;
    });
}

struct Tail {
    log: PgLog,
    url: String,
    last: i64,
    feed: mpsc::UnboundedSender<Vec<Arc<StoredEvent>>>,
    listener: Option<PgListener>,
    backoff: Duration,
}

impl Tail {
    async fn run(&mut self, close: CancellationToken) {
        loop {
            if self.listener.is_none() {
                self.listener = self.listen().await;
            }
            // A fresh listener may have missed notifications: read whatever is there.
            if !self.read().await {
                return;
            }
            // A failed read backs off; a missing listener is retried soon (never in a tight
            // loop, even when reads succeed); otherwise the timer only bounds a lost `NOTIFY`.
            let wait = match (self.backoff.is_zero(), self.listener.is_some()) {
                (false, _) => self.backoff,
                (true, false) => RELISTEN_AFTER,
                (true, true) => REREAD_EVERY,
            };
            tokio::select! {
                () = close.cancelled() => return,
                heard = wait_for_notification(self.listener.as_mut(), &self.log.voice) => {
                    if !heard {
                        tracing::warn!("the tail's listening connection was lost; reconnecting");
                        self.listener = None;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A listening connection, or `None` (logged) when the database cannot be reached.
    async fn listen(&mut self) -> Option<PgListener> {
        let listener = async {
            let mut listener = PgListener::connect(&self.url).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listener.await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "the tail cannot listen for new events; re-reading on a timer");
                None
            }
        }
    }

    /// Reads and hands on every event after `last`. Returns `false` once nobody receives them.
    async fn read(&mut self) -> bool {
        loop {
            match self.log.events_after(self.last, PAGE).await {
                Ok(page) => {
                    self.backoff = Duration::ZERO;
                    let Some(last) = page.last().map(|e| e.id) else { return true };
                    self.last = last;
                    let full = page.len() == PAGE as usize;
                    if self.feed.send(page.into_iter().map(Arc::new).collect()).is_err() {
                        return false;
                    }
                    if !full {
                        return true;
                    }
                }
                Err(e) => {
                    self.backoff = (self.backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF);
                    tracing::warn!(error = %e, after = self.last, "the tail cannot read the log; retrying");
                    return !self.feed.is_closed();
                }
            }
        }
    }
}

/// Waits for a notification from another node (`own` is what this node's carry); `false`
/// when the connection is lost. Without a listener it waits forever (the caller's timer
/// decides).
async fn wait_for_notification(listener: Option<&mut PgListener>, own: &str) -> bool {
    let Some(listener) = listener else { return std::future::pending().await };
    loop {
        match listener.try_recv().await {
            Ok(Some(first)) => {
                // Several commits may have notified at once: one re-read covers them all.
                let mut others = first.payload() != own;
                while let Some(next) = listener.next_buffered() {
                    others |= next.payload() != own;
                }
                if others {
                    return true;
                }
            }
            Ok(None) | Err(_) => return false,
        }
    }
}
