//! What both backends' writers share: the queue they take requests from, the decisions they run
//! and how they answer, so that `sqlite::writer` and `postgres::writer` differ only in SQL.
//!
//! One task per process owns the appends. Callers send a [`Request`]: a job id and a
//! [`Command`], which the task decides against the job's current state ([`Command::decide`]:
//! the events to append, or a [`Refusal`] such as "already finished"). It may decide one more
//! than once: PostgreSQL's writer decides against the states it cached first, and again against
//! the locked rows when another node changed one of them. The task takes every request waiting in its queue
//! ([`gather`]), decides them one after another ([`decide_one`]) and commits the group in one
//! transaction. Only after the commit are the callers answered and the events handed to the
//! fan-out ([`answer`]), so no subscriber ever sees an id that could still be rolled back and
//! handed to another event.
//!
//! Webhook bookkeeping (registrations, positions, the delivery log) rides the same queue so that
//! this task stays the only writer of its process (see `webhook_writes`).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{ApplyError, StoreError, StoredEvent};
use crate::domain::command::Command;
use crate::domain::event::{format_at, now_micros};
use crate::domain::job::{JobState, JobStatus};

/// Most requests committed in one transaction.
pub(super) const MAX_GROUP: usize = 512;

/// The state of jobs being worked on (Running or Cancelling), as of the last commit. The writer is the only
/// process that writes while a server holds the data folder, so its own copy is the truth and
/// saves reading and parsing the row for every event. Emptied whenever a group fails.
pub(super) type Cache = std::collections::HashMap<Uuid, JobState>;

/// Why a decision appended nothing (the rules live with the commands, in the domain).
pub use crate::domain::command::Refusal;

/// What an accepted decision appended, and the job's state after it.
#[derive(Debug, Clone)]
pub struct Applied {
    pub state: JobState,
    pub events: Vec<Arc<StoredEvent>>,
}

pub(super) struct Request {
    pub job_id: Uuid,
    pub command: Command,
    pub lease: LeaseOp,
    pub reply: Reply,
}

/// Where a request's outcome goes, once its group committed (or failed).
pub(super) type Reply = oneshot::Sender<Result<Applied, ApplyError>>;

/// What a writer decides for one request: the job, what its lease becomes, and the command.
pub(super) type Decision = (Uuid, LeaseOp, Command);

/// Splits a group into what is decided and whom to answer, in the same order.
pub(super) fn split(group: &mut Vec<Request>) -> (Vec<Decision>, Vec<Reply>) {
    group.drain(..).map(|r| ((r.job_id, r.lease, r.command), r.reply)).unzip()
}

/// What an append does to the job's lease (PostgreSQL only: with SQLite one process holds the
/// data folder and every job it runs, so there are no leases). Whatever the op, a job that ends
/// loses its lease in the same transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOp {
    /// Leaves the lease as it is.
    Keep,
    /// This node runs the job: if the decision leaves it Running, the lease is this node's, for
    /// the job's new attempt.
    Take,
    /// Another node's lease expired: refused unless it still is; if the decision leaves the job
    /// Running, the new attempt's lease waits for any worker node to take it.
    Orphan,
}

pub(super) type Outcome = Result<Applied, Refusal>;

/// What the writer's queue carries: an append decision, or a webhook's bookkeeping (its
/// registration, position and delivery log), so that this task stays the only writer.
pub(super) enum Work {
    Append(Request),
    Webhook(super::webhook_writes::WriteRequest),
    /// A job's deletion, or the end of one (see `deletion`).
    Delete(super::deletion::DeletionRequest),
}

/// The writer task's handles: its queue, the commit feed for the fan-out, and its end.
pub(super) struct Spawned {
    pub queue: mpsc::Sender<Work>,
    pub feed: mpsc::UnboundedReceiver<Vec<Arc<StoredEvent>>>,
    pub done: oneshot::Receiver<()>,
}

/// Answers every request of a group with its outcome once the group is committed (and hands
/// its events to the fan-out), or with the group's failure.
pub(super) fn answer(
    replies: Vec<Reply>,
    result: Result<Vec<Outcome>, StoreError>,
    feed: &mpsc::UnboundedSender<Vec<Arc<StoredEvent>>>,
    started: Instant,
) {
    match result {
        Ok(outcomes) => {
            let committed: Vec<Arc<StoredEvent>> = outcomes
                .iter()
                .filter_map(|o| o.as_ref().ok())
                .flat_map(|a| a.events.iter().cloned())
                .collect();
            metrics::histogram!("aura_sqlite_commit_seconds").record(started.elapsed().as_secs_f64());
            metrics::counter!("aura_events_appended_total").increment(committed.len() as u64);
            if !committed.is_empty() {
                // The fan-out may be gone during shutdown; the events are committed regardless.
                let _ = feed.send(committed);
            }
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome.map_err(ApplyError::Refused));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "group commit failed; every request in it is refused");
            let cause = Arc::new(e);
            for reply in replies {
                let _ = reply.send(Err(StoreError::GroupFailed(cause.clone()).into()));
            }
        }
    }
}

/// Waits for work and takes what is queued behind it, up to [`MAX_GROUP`] items, into `work`.
/// `false` once the queue is closed (by `close`, after what was queued) and empty.
pub(super) async fn gather(
    rx: &mut mpsc::Receiver<Work>,
    work: &mut Vec<Work>,
    close: &CancellationToken,
) -> bool {
    loop {
        let n = tokio::select! {
            n = rx.recv_many(work, MAX_GROUP) => n,
            () = close.cancelled(), if !rx.is_closed() => {
                // Take no new requests; what is already queued is still committed.
                rx.close();
                continue;
            }
        };
        if n == 0 {
            return false;
        }
        if n < MAX_GROUP {
            // Producers answered by the last commit are often just about to send their next
            // request (the waker put this task first in line): let them, so that the group is
            // not cut after the first one and the rest wait a whole fsync.
            tokio::task::yield_now().await;
            while work.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(w) => work.push(w),
                    Err(_) => break,
                }
            }
        }
        return true;
    }
}

/// One accepted decision of a group, before its events have ids.
pub(super) struct Accepted {
    /// Its place in the group, to answer the right caller.
    pub index: usize,
    pub job_id: Uuid,
    /// The job's state after the decision (its `last_event_id` is set once ids are known).
    pub state: JobState,
    pub is_new: bool,
    /// The job's status before the decision (`None` for a new job).
    pub status_before: Option<JobStatus>,
    /// `(type, data)` of each event, in order.
    pub events: Vec<(&'static str, String)>,
    pub created_at: String,
    pub started: Instant,
}

/// Every request's outcome, in group order (a slot left empty cannot happen; it is refused).
pub(super) fn settle(outcomes: Vec<Option<Outcome>>) -> Vec<Outcome> {
    outcomes.into_iter().map(|o| o.unwrap_or_else(|| Err(Refusal::Invalid("not decided".into())))).collect()
}

/// Decides one command and folds its events (placeholder ids). Returns the outcome of a refused
/// or empty decision; `None` when it was accepted into `accepted`.
pub(super) fn decide_one(
    job_id: Uuid,
    before: Option<JobState>,
    command: &Command,
    cache: &mut Cache,
    index: usize,
    accepted: &mut Vec<Accepted>,
) -> Option<Outcome> {
    let bodies = match command.decide(before.as_ref()) {
        Ok(bodies) => bodies,
        Err(refusal) => {
            if let Some(state) = before {
                cache.insert(job_id, state);
            }
            return Some(Err(refusal));
        }
    };
    if bodies.is_empty() {
        return Some(match before {
            Some(state) => {
                cache.insert(job_id, state.clone());
                Ok(Applied { state, events: Vec::new() })
            }
            None => Err(Refusal::NotFound),
        });
    }
    let at = now_micros();
    let is_new = before.is_none();
    let status_before = before.as_ref().map(|s| s.status);
    let mut state = before;
    for body in &bodies {
        // On a misfit the job simply leaves the cache: its row is read again next time.
        match JobState::apply(state, job_id, 0, at, body) {
            Ok(s) => state = Some(s),
            Err(e) => return Some(Err(Refusal::Invalid(e.to_string()))),
        }
    }
    let state = state?;
    // Later requests of this group for the same job decide against this state.
    cache.insert(job_id, state.clone());
    let events = bodies.iter().map(|b| (b.type_name(), b.to_data(job_id, at))).collect();
    accepted.push(Accepted {
        index,
        job_id,
        state,
        is_new,
        status_before,
        events,
        created_at: format_at(at),
        started: Instant::now(),
    });
    None
}

/// Gives each accepted decision's events their ids, in group order, and builds each caller's
/// `Applied`.
pub(super) fn with_ids(
    accepted: Vec<Accepted>,
    mut next: impl Iterator<Item = i64>,
) -> Result<Vec<(usize, Applied)>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(what.to_owned());
    let mut written = Vec::with_capacity(accepted.len());
    for a in accepted {
        let owner: Arc<str> = Arc::from(a.state.owner.as_str());
        let mut events = Vec::with_capacity(a.events.len());
        for (kind, data) in a.events {
            let id = next.next().ok_or_else(|| corrupt("missing event id"))?;
            let mut event = StoredEvent::new(id, a.job_id, kind.to_owned(), data, a.created_at.clone());
            event.appended = Some(a.started);
            event.owner = Some(owner.clone());
            events.push(Arc::new(event));
        }
        let mut state = a.state;
        state.last_event_id = events.last().map_or(state.last_event_id, |e| e.id);
        written.push((a.index, Applied { state, events }));
    }
    Ok(written)
}
