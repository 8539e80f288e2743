//! The single writer: group commit of every append, with the `jobs` projection in the same
//! transaction.
//!
//! One task owns the only write connection. Callers send a [`Request`]: a job id and a
//! [`Decide`] closure that looks at the job's current state and returns the events to append
//! (or a [`Refusal`], such as "already finished"). The task takes every request waiting in its
//! queue, decides them one after another in memory, and writes the group in one `BEGIN
//! IMMEDIATE` … `COMMIT` sent to SQLite's worker thread as a single call: with
//! `synchronous=FULL` that is one fsync and one thread round trip for the whole group instead of
//! one per event (or per statement).
//! Only after the commit are the callers answered and the events handed to the fan-out, so no
//! subscriber ever sees an id that could still be rolled back and handed to another event.
//!
//! Webhook bookkeeping (registrations, positions, the delivery log) rides the same queue so that
//! this task stays the only writer; it is committed in a transaction of its own after each group
//! of appends (see `webhook_writes`).
//!
//! Because the decision runs on the writer, the only connection that writes while it holds the
//! data folder, against its cached state or rows it read just before its own transaction,
//! check-then-act races between requests (two cancels, cancel versus claim) cannot happen.

use std::sync::Arc;
use std::time::Instant;

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::rows::{JobChanges, JobColumns, JobRow};
use super::{StoreError, StoredEvent};
use crate::domain::event::{EventBody, format_at, now_micros};
use crate::domain::job::{JobState, JobStatus};

/// Most requests committed in one transaction.
pub(super) const MAX_GROUP: usize = 512;
/// Most job states the writer keeps in memory; past it the cache starts over.
const CACHE_LIMIT: usize = 20_000;

/// The state of jobs being worked on (Running or Cancelling), as of the last commit. The writer is the only
/// process that writes while a server holds the data folder, so its own copy is the truth and
/// saves reading and parsing the row for every event. Emptied whenever a group fails.
pub(super) type Cache = std::collections::HashMap<Uuid, JobState>;

/// Looks at a job's state (`None`: no such job) and says what to append.
///
/// It may be called more than once: PostgreSQL's writer decides against the states it cached
/// first, and decides again against the locked rows when another node changed one of them.
pub type Decide = Box<dyn Fn(Option<&JobState>) -> Result<Vec<EventBody>, Refusal> + Send + Sync>;

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
    pub decide: Decide,
    pub lease: LeaseOp,
    pub reply: oneshot::Sender<Result<Result<Applied, Refusal>, StoreError>>,
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
}

/// The writer task's handles: its queue, the commit feed for the fan-out, and its end.
pub(super) struct Spawned {
    pub queue: mpsc::Sender<Work>,
    pub feed: mpsc::UnboundedReceiver<Vec<Arc<StoredEvent>>>,
    pub done: oneshot::Receiver<()>,
}

/// Starts the writer; it ends once `close` is cancelled and every request already queued is
/// committed (or when every sender is gone), after checkpointing the WAL.
pub(super) fn spawn(conn: SqliteConnection, close: CancellationToken) -> Spawned {
    let (queue, rx) = mpsc::channel(4096);
    let (feed_tx, feed) = mpsc::unbounded_channel();
    let (done_tx, done) = oneshot::channel();
    tokio::spawn(async move {
        run(conn, rx, feed_tx, close).await;
        let _ = done_tx.send(());
    });
    Spawned { queue, feed, done }
}

async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Work>,
    feed: mpsc::UnboundedSender<Vec<Arc<StoredEvent>>>,
    close: CancellationToken,
) {
    let mut work = Vec::with_capacity(MAX_GROUP);
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut webhooks = Vec::new();
    let mut cache = Cache::new();
    while gather(&mut rx, &mut work, &close).await {
        for w in work.drain(..) {
            match w {
                Work::Append(r) => group.push(r),
                Work::Webhook(w) => webhooks.push(w),
            }
        }
        if !webhooks.is_empty() {
            // Their own transaction: a webhook's bookkeeping never spoils a group of appends.
            super::webhook_writes::write_all(&mut conn, webhooks.drain(..)).await;
        }
        if group.is_empty() {
            continue;
        }
        let started = Instant::now();
        let replies: Vec<_> = group.iter_mut().map(|r| (r.job_id, take_decide(r))).collect();
        if cache.len() > CACHE_LIMIT {
            cache.clear();
        }
        let result = write_group(&mut conn, &mut cache, replies).await;
        if result.is_err() {
            // The cache may hold states of the rolled-back group: start over from the table.
            cache.clear();
        }
        answer(&mut group, result, &feed, started);
    }
    // Closed, or every sender is gone: leave the file tidy for the next process and for `sqlite3` users.
    if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await {
        tracing::warn!(error = %e, "checkpoint at close failed");
    }
    if let Err(e) = conn.close().await {
        tracing::warn!(error = %e, "closing the write connection failed");
    }
    tracing::info!("store writer closed");
}

/// Answers every request of a group with its outcome once the group is committed (and hands
/// its events to the fan-out), or with the group's failure.
pub(super) fn answer(
    group: &mut Vec<Request>,
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
            for (req, outcome) in group.drain(..).zip(outcomes) {
                let _ = req.reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "group commit failed; every request in it is refused");
            let cause = Arc::new(e);
            for req in group.drain(..) {
                let _ = req.reply.send(Err(StoreError::GroupFailed(cause.clone())));
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

/// Moves the closure out of a request, leaving one that refuses (never called twice).
pub(super) fn take_decide(r: &mut Request) -> Decide {
    std::mem::replace(&mut r.decide, Box::new(|_| Err(Refusal::Invalid("decided twice".into()))))
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

/// Decides every request against the job's current state (the cache, or the row), folds what
/// it returns, then writes the whole group in one call to SQLite's worker thread: `BEGIN
/// IMMEDIATE`, four statements — every event, the jobs rows whose status changed, the other
/// changed rows, the new ones — each reading
/// its rows from one JSON array (`json_each`), and `COMMIT`. A group of N appends costs one round
/// trip and one fsync, not 2·N statements. Rows missing from the cache are read first, all in one
/// statement: this connection is the only writer, so no one can change them in between. A refused
/// decision leaves no trace.
async fn write_group(
    conn: &mut SqliteConnection,
    cache: &mut Cache,
    group: Vec<(Uuid, Decide)>,
) -> Result<Vec<Outcome>, StoreError> {
    let keys: Vec<String> =
        group.iter().filter(|(id, _)| !cache.contains_key(id)).map(|(id, _)| id.to_string()).collect();
    let mut loaded = load_missing(conn, keys).await?;
    let mut seen = std::collections::HashSet::with_capacity(group.len());
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(group.len());
    let mut accepted: Vec<Accepted> = Vec::new();
    for (index, (job_id, decide)) in group.into_iter().enumerate() {
        let before = match cache.remove(&job_id) {
            Some(state) => Some(state),
            // First time in this group: the row read above, if there is one.
            None if seen.insert(job_id) => loaded.remove(&job_id),
            // A misfit earlier in this group dropped the state: the committed row is the truth.
            None => read_row(conn, job_id).await?,
        };
        seen.insert(job_id);
        outcomes.push(decide_one(job_id, before, &decide, cache, index, &mut accepted));
    }
    let written = if accepted.is_empty() { Vec::new() } else { commit_accepted(conn, accepted).await? };
    for (index, applied) in written {
        // Only jobs that are being worked on keep their state here: they are the ones that
        // append event after event. A Queued job may wait long; reading its row once is cheap.
        if !matches!(applied.state.status, JobStatus::Running | JobStatus::Cancelling) {
            cache.remove(&applied.state.job_id);
        }
        if let Some(slot) = outcomes.get_mut(index) {
            *slot = Some(Ok(applied));
        }
    }
    Ok(settle(outcomes))
}

/// Every request's outcome, in group order (a slot left empty cannot happen; it is refused).
pub(super) fn settle(outcomes: Vec<Option<Outcome>>) -> Vec<Outcome> {
    outcomes.into_iter().map(|o| o.unwrap_or_else(|| Err(Refusal::Invalid("not decided".into())))).collect()
}

/// Reads, in one statement, the rows of the given jobs (those the cache does not hold).
async fn load_missing(
    conn: &mut SqliteConnection,
    keys: Vec<String>,
) -> Result<std::collections::HashMap<Uuid, JobState>, StoreError> {
    let mut loaded = std::collections::HashMap::with_capacity(keys.len());
    if keys.is_empty() {
        return Ok(loaded);
    }
    let json = serde_json::to_string(&keys).map_err(|_| StoreError::Corrupt("encoding job ids".into()))?;
    let rows =
        sqlx::query_as!(JobRow, "SELECT * FROM jobs WHERE job_id IN (SELECT value FROM json_each(?))", json)
            .fetch_all(&mut *conn)
            .await?;
    for row in rows {
        let state = JobState::try_from(row)?;
        loaded.insert(state.job_id, state);
    }
    Ok(loaded)
}

/// Reads one job's row.
async fn read_row(conn: &mut SqliteConnection, job_id: Uuid) -> Result<Option<JobState>, StoreError> {
    let key = job_id.to_string();
    let row = sqlx::query_as!(JobRow, "SELECT * FROM jobs WHERE job_id = ?", key)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(JobState::try_from).transpose()
}

/// Runs one decision and folds its events (placeholder ids). Returns the outcome of a refused
/// or empty decision; `None` when it was accepted into `accepted`.
pub(super) fn decide_one(
    job_id: Uuid,
    before: Option<JobState>,
    decide: &Decide,
    cache: &mut Cache,
    index: usize,
    accepted: &mut Vec<Accepted>,
) -> Option<Outcome> {
    let bodies = match decide(before.as_ref()) {
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

/// A changed `jobs` row, as one element of the `UPDATE`'s JSON array: job id, status, stage,
/// percent, attempt, started at, finished at, error, output.
type ChangedRow<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    f64,
    i64,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

/// A new `jobs` row, as one element of the `INSERT`'s JSON array: the changed-row fields, then
/// owner, created at and request.
type NewRow<'a> = (ChangedRow<'a>, &'a str, &'a str, &'a str);

fn changed_row(c: &JobChanges) -> ChangedRow<'_> {
    (
        c.job_id.as_str(),
        c.status,
        c.stage,
        c.percent,
        c.attempt,
        c.started_at.as_deref(),
        c.finished_at.as_deref(),
        c.error.as_deref(),
        c.output.as_deref(),
    )
}

/// Commits the accepted events and the jobs rows in one transaction, sent to SQLite as one
/// call; returns each caller's `Applied`. On any error the transaction is rolled back.
///
/// The `jobs` rows take `last_event_id` (and a new row its `created_event_id`) from the events
/// just inserted (`events_by_job`), since the ids are not known before the call. Events go in
/// in array order, so AUTOINCREMENT hands out ascending ids in that order; the ids returned are
/// matched to the events in that order, which gives the same `last_event_id` as the rows.
async fn commit_accepted(
    conn: &mut SqliteConnection,
    accepted: Vec<Accepted>,
) -> Result<Vec<(usize, Applied)>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(what.to_owned());
    let (count, events_json) = {
        let rows: Vec<(String, &str, &str, &str)> = accepted
            .iter()
            .flat_map(|a| {
                let key = a.job_id.to_string();
                a.events
                    .iter()
                    .map(move |(kind, data)| (key.clone(), *kind, data.as_str(), a.created_at.as_str()))
            })
            .collect();
        (rows.len(), serde_json::to_string(&rows).map_err(|_| corrupt("encoding events"))?)
    };
    // Per job: whether its row is new, its status before the group, and its last state.
    type Last = (bool, Option<JobStatus>, usize);
    let mut last: std::collections::HashMap<Uuid, Last> = std::collections::HashMap::new();
    for (i, a) in accepted.iter().enumerate() {
        last.entry(a.job_id).and_modify(|e| e.2 = i).or_insert((a.is_new, a.status_before, i));
    }
    // A row whose status is unchanged (most of them: progress) is updated without touching the
    // status column, so SQLite leaves `jobs_by_status` alone: one page less to write and fsync.
    let (mut moved, mut stayed, mut new) = (Vec::new(), Vec::new(), Vec::new());
    for &(is_new, status_before, i) in last.values() {
        match accepted.get(i) {
            Some(a) if is_new => new.push(JobColumns::from(&a.state)),
            Some(a) if status_before == Some(a.state.status) => stayed.push(JobChanges::from(&a.state)),
            Some(a) => moved.push(JobChanges::from(&a.state)),
            None => {}
        }
    }
    let moved_json = serde_json::to_string(&moved.iter().map(changed_row).collect::<Vec<_>>())
        .map_err(|_| corrupt("encoding job rows"))?;
    let stayed_json = serde_json::to_string(&stayed.iter().map(changed_row).collect::<Vec<_>>())
        .map_err(|_| corrupt("encoding job rows"))?;
    let new_json = serde_json::to_string(
        &new.iter()
            .map(|c| (changed_row(&c.changes), c.owner.as_str(), c.created_at.as_str(), c.request.as_str()))
            .collect::<Vec<NewRow<'_>>>(),
    )
    .map_err(|_| corrupt("encoding job rows"))?;
    drop((moved, stayed, new));

    let result = sqlx::query_scalar!(
        r#"BEGIN IMMEDIATE;
           INSERT INTO events (job_id, type, data, created_at)
           SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?) ORDER BY key
           RETURNING id AS "id!";
           UPDATE jobs SET status = j.value ->> 1, stage = j.value ->> 2, percent = j.value ->> 3,
                           attempt = j.value ->> 4, started_at = j.value ->> 5, finished_at = j.value ->> 6,
                           error = j.value ->> 7, output = j.value ->> 8,
                           last_event_id = (SELECT max(e.id) FROM events AS e WHERE e.job_id = jobs.job_id)
           FROM json_each(?) AS j
           WHERE jobs.job_id = j.value ->> 0;
           UPDATE jobs SET stage = j.value ->> 2, percent = j.value ->> 3,
                           attempt = j.value ->> 4, started_at = j.value ->> 5, finished_at = j.value ->> 6,
                           error = j.value ->> 7, output = j.value ->> 8,
                           last_event_id = (SELECT max(e.id) FROM events AS e WHERE e.job_id = jobs.job_id)
           FROM json_each(?) AS j
           WHERE jobs.job_id = j.value ->> 0;
           INSERT INTO jobs (job_id, created_event_id, owner, status, stage, percent, attempt, created_at,
                             started_at, finished_at, error, output, last_event_id, request)
           SELECT j.value ->> '$[0][0]',
                  (SELECT min(e.id) FROM events AS e WHERE e.job_id = j.value ->> '$[0][0]'),
                  j.value ->> 1, j.value ->> '$[0][1]', j.value ->> '$[0][2]', j.value ->> '$[0][3]',
                  j.value ->> '$[0][4]', j.value ->> 2, j.value ->> '$[0][5]', j.value ->> '$[0][6]',
                  j.value ->> '$[0][7]', j.value ->> '$[0][8]',
                  (SELECT max(e.id) FROM events AS e WHERE e.job_id = j.value ->> '$[0][0]'),
                  j.value ->> 3
           FROM json_each(?) AS j;
           COMMIT"#,
        events_json,
        moved_json,
        stayed_json,
        new_json
    )
    .fetch_all(&mut *conn)
    .await;
    let mut ids = match result {
        Ok(ids) => ids,
        Err(e) => {
            rollback(conn).await;
            return Err(e.into());
        }
    };
    if ids.len() != count {
        // Cannot happen (one row per array element); the group is committed, so say so loudly.
        return Err(corrupt("inserted a different number of events than asked"));
    }
    ids.sort_unstable();

    with_ids(accepted, ids.into_iter())
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

/// Undoes a group that failed part-way. SQLite may already have rolled back on its own (a full
/// disk, an I/O error), in which case there is nothing to undo.
async fn rollback(conn: &mut SqliteConnection) {
    if let Err(e) = sqlx::query!("ROLLBACK").execute(&mut *conn).await {
        tracing::debug!(error = %e, "rollback after a failed group");
    }
}

/// Writes a new `jobs` row.
pub(super) async fn insert_job_row(
    conn: &mut SqliteConnection,
    created_event_id: i64,
    c: &JobColumns,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO jobs (job_id, created_event_id, owner, status, stage, percent, attempt, created_at,
                           started_at, finished_at, error, output, last_event_id, request)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        c.changes.job_id,
        created_event_id,
        c.owner,
        c.changes.status,
        c.changes.stage,
        c.changes.percent,
        c.changes.attempt,
        c.created_at,
        c.changes.started_at,
        c.changes.finished_at,
        c.changes.error,
        c.changes.output,
        c.changes.last_event_id,
        c.request
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
