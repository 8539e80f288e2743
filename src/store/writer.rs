//! The single writer: group commit of every append, with the `jobs` projection in the same
//! transaction.
//!
//! One task owns the only write connection. Callers send a [`Request`]: a job id and a
//! [`Decide`] closure that looks at the job's current state and returns the events to append
//! (or a [`Refusal`], such as "already finished"). The task takes every request waiting in its
//! queue, runs them one after another inside one `BEGIN IMMEDIATE` transaction, and commits
//! once: with `synchronous=FULL` that is one fsync for the whole group instead of one per event.
//! Only after the commit are the callers answered and the events handed to the fan-out, so no
//! subscriber ever sees an id that could still be rolled back and handed to another event.
//!
//! Webhook bookkeeping (registrations, positions, the delivery log) rides the same queue so that
//! this task stays the only writer; it is committed in a transaction of its own after each group
//! of appends (see [`super::webhooks`]).
//!
//! Because the decision runs on the writer, against state read inside the write transaction,
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
const MAX_GROUP: usize = 512;
/// Most job states the writer keeps in memory; past it the cache starts over.
const CACHE_LIMIT: usize = 20_000;

/// The state of jobs being worked on (Running or Cancelling), as of the last commit. The writer is the only
/// process that writes while a server holds the data folder, so its own copy is the truth and
/// saves reading and parsing the row for every event. Emptied whenever a group fails.
type Cache = std::collections::HashMap<Uuid, JobState>;

/// Looks at a job's state (`None`: no such job) and says what to append.
pub type Decide = Box<dyn FnOnce(Option<&JobState>) -> Result<Vec<EventBody>, Refusal> + Send>;

/// Why a decision appended nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("no such job")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("the events do not fit the job's state: {0}")]
    Invalid(String),
}

/// What an accepted decision appended, and the job's state after it.
#[derive(Debug, Clone)]
pub struct Applied {
    pub state: JobState,
    pub events: Vec<Arc<StoredEvent>>,
}

pub(super) struct Request {
    pub job_id: Uuid,
    pub decide: Decide,
    pub reply: oneshot::Sender<Result<Result<Applied, Refusal>, StoreError>>,
}

type Outcome = Result<Applied, Refusal>;

/// What the writer's queue carries: an append decision, or a webhook's bookkeeping (its
/// registration, position and delivery log), so that this task stays the only writer.
pub(super) enum Work {
    Append(Request),
    Webhook(super::webhooks::WriteRequest),
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
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut work, MAX_GROUP) => n,
            () = close.cancelled(), if !rx.is_closed() => {
                // Take no new requests; what is already queued is still committed.
                rx.close();
                continue;
            }
        };
        if n == 0 {
            break;
        }
        for w in work.drain(..) {
            match w {
                Work::Append(r) => group.push(r),
                Work::Webhook(w) => webhooks.push(w),
            }
        }
        if !webhooks.is_empty() {
            // Their own transaction: a webhook's bookkeeping never spoils a group of appends.
            super::webhooks::write_all(&mut conn, webhooks.drain(..)).await;
        }
        if group.is_empty() {
            continue;
        }
        let started = Instant::now();
        let replies: Vec<_> = group.iter_mut().map(|r| (r.job_id, take_decide(r))).collect();
        if cache.len() > CACHE_LIMIT {
            cache.clear();
        }
        match write_group(&mut conn, &mut cache, replies).await {
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
                // The cache may hold states of the rolled-back group: start over from the table.
                cache.clear();
                tracing::error!(error = %e, "group commit failed; every request in it is refused");
                let cause = Arc::new(e);
                for req in group.drain(..) {
                    let _ = req.reply.send(Err(StoreError::GroupFailed(cause.clone())));
                }
            }
        }
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

/// Moves the closure out of a request, leaving one that refuses (never called twice).
fn take_decide(r: &mut Request) -> Decide {
    std::mem::replace(&mut r.decide, Box::new(|_| Err(Refusal::Invalid("decided twice".into()))))
}

/// One accepted decision of a group, before its events have ids.
struct Accepted {
    /// Its place in the group, to answer the right caller.
    index: usize,
    job_id: Uuid,
    /// The job's state after the decision (its `last_event_id` is set once ids are known).
    state: JobState,
    is_new: bool,
    /// `(type, data)` of each event, in order.
    events: Vec<(&'static str, String)>,
    created_at: String,
    started: Instant,
}

/// Decides every request against the job's current state (the cache, or the row), folds what
/// it returns, then writes the whole group with three statements — every event, the new jobs
/// rows, the changed rows — each reading its rows from one JSON array (`json_each`), so a group
/// of N appends costs three statements, not 2·N. A refused decision leaves no trace.
async fn write_group(
    conn: &mut SqliteConnection,
    cache: &mut Cache,
    group: Vec<(Uuid, Decide)>,
) -> Result<Vec<Outcome>, StoreError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(group.len());
    let mut accepted: Vec<Accepted> = Vec::new();
    for (index, (job_id, decide)) in group.into_iter().enumerate() {
        let before = match cache.remove(&job_id) {
            Some(state) => Some(state),
            None => {
                let key = job_id.to_string();
                let row = sqlx::query_as!(JobRow, "SELECT * FROM jobs WHERE job_id = ?", key)
                    .fetch_optional(&mut *tx)
                    .await?;
                row.map(JobState::try_from).transpose()?
            }
        };
        outcomes.push(decide_one(job_id, before, decide, cache, index, &mut accepted));
    }
    let written = if accepted.is_empty() { Vec::new() } else { write_accepted(&mut tx, accepted).await? };
    tx.commit().await?;
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
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(Refusal::Invalid("not decided".into()))))
        .collect())
}

/// Runs one decision and folds its events (placeholder ids). Returns the outcome of a refused
/// or empty decision; `None` when it was accepted into `accepted`.
fn decide_one(
    job_id: Uuid,
    before: Option<JobState>,
    decide: Decide,
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
        events,
        created_at: format_at(at),
        started: Instant::now(),
    });
    None
}

/// Inserts the accepted events and writes the jobs rows; returns each caller's `Applied`.
async fn write_accepted(
    conn: &mut SqliteConnection,
    accepted: Vec<Accepted>,
) -> Result<Vec<(usize, Applied)>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(what.to_owned());
    let rows: Vec<(String, &str, &str, &str)> = accepted
        .iter()
        .flat_map(|a| {
            let key = a.job_id.to_string();
            a.events
                .iter()
                .map(move |(kind, data)| (key.clone(), *kind, data.as_str(), a.created_at.as_str()))
        })
        .collect();
    let json = serde_json::to_string(&rows).map_err(|_| corrupt("encoding events"))?;
    // Rows go in in array order, so AUTOINCREMENT hands out ascending ids in that order.
    let mut ids = sqlx::query_scalar!(
        r#"INSERT INTO events (job_id, type, data, created_at)
           SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?) ORDER BY key
           RETURNING id AS "id!""#,
        json
    )
    .fetch_all(&mut *conn)
    .await?;
    if ids.len() != rows.len() {
        return Err(corrupt("inserted a different number of events than asked"));
    }
    ids.sort_unstable();
    drop(rows);

    let mut next = ids.into_iter();
    let mut written = Vec::with_capacity(accepted.len());
    // Per job: the id of its first event (for a new row) and the index of its last state.
    let mut firsts: std::collections::HashMap<Uuid, (bool, i64)> = std::collections::HashMap::new();
    let mut last_of: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
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
        firsts.entry(a.job_id).or_insert((a.is_new, events.first().map_or(0, |e| e.id)));
        last_of.insert(a.job_id, written.len());
        written.push((a.index, Applied { state, events }));
    }

    let mut new_rows = Vec::new();
    let mut changed_rows = Vec::new();
    for (job_id, &i) in &last_of {
        let state = &written[i].1.state;
        match firsts.get(job_id) {
            Some(&(true, first_id)) => new_rows.push(new_row_json(first_id, state)),
            _ => changed_rows.push(changes_json(&JobChanges::from(state))),
        }
    }
    if !new_rows.is_empty() {
        let json = serde_json::Value::Array(new_rows).to_string();
        sqlx::query!(
            r#"INSERT INTO jobs (job_id, created_event_id, owner, status, stage, percent, attempt, created_at,
                                 started_at, finished_at, error, output, last_event_id, request)
               SELECT j.value ->> 'jobId', j.value ->> 'createdEventId', j.value ->> 'owner', j.value ->> 'status',
                      j.value ->> 'stage', j.value ->> 'percent', j.value ->> 'attempt', j.value ->> 'createdAt',
                      j.value ->> 'startedAt', j.value ->> 'finishedAt', j.value ->> 'error', j.value ->> 'output',
                      j.value ->> 'lastEventId', j.value ->> 'request'
               FROM json_each(?) AS j"#,
            json
        )
        .execute(&mut *conn)
        .await?;
    }
    if !changed_rows.is_empty() {
        let json = serde_json::Value::Array(changed_rows).to_string();
        sqlx::query!(
            r#"UPDATE jobs SET status = j.value ->> 'status', stage = j.value ->> 'stage',
                              percent = j.value ->> 'percent', attempt = j.value ->> 'attempt',
                              started_at = j.value ->> 'startedAt', finished_at = j.value ->> 'finishedAt',
                              error = j.value ->> 'error', output = j.value ->> 'output',
                              last_event_id = j.value ->> 'lastEventId'
               FROM json_each(?) AS j
               WHERE jobs.job_id = j.value ->> 'jobId'"#,
            json
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(written)
}

/// What an event can change in a row, as one element of the `UPDATE`'s JSON array.
fn changes_json(c: &JobChanges) -> serde_json::Value {
    serde_json::json!({
        "jobId": c.job_id, "status": c.status, "stage": c.stage, "percent": c.percent,
        "attempt": c.attempt, "startedAt": c.started_at, "finishedAt": c.finished_at,
        "error": c.error, "output": c.output, "lastEventId": c.last_event_id,
    })
}

/// A whole new row, as one element of the `INSERT`'s JSON array.
fn new_row_json(created_event_id: i64, state: &JobState) -> serde_json::Value {
    let c = JobColumns::from(state);
    let mut v = changes_json(&c.changes);
    if let Some(map) = v.as_object_mut() {
        map.insert("createdEventId".into(), created_event_id.into());
        map.insert("owner".into(), c.owner.into());
        map.insert("createdAt".into(), c.created_at.into());
        map.insert("request".into(), c.request.into());
    }
    v
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
