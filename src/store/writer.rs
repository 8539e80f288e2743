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
//! Because the decision runs on the writer, against state read inside the write transaction,
//! check-then-act races between requests (two cancels, cancel versus claim) cannot happen.

use std::sync::Arc;
use std::time::Instant;

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::rows::{JobColumns, JobRow};
use super::{StoreError, StoredEvent};
use crate::event::{EventBody, format_at, now_micros};
use crate::job::JobState;

/// Most requests committed in one transaction.
const MAX_GROUP: usize = 512;
/// Most job states the writer keeps in memory; past it the cache starts over.
const CACHE_LIMIT: usize = 20_000;

/// The state of jobs that have not ended, as of the last commit. The writer is the only
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

/// The writer task's handles: its queue, the commit feed for the fan-out, and its end.
pub(super) struct Spawned {
    pub queue: mpsc::Sender<Request>,
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
    mut rx: mpsc::Receiver<Request>,
    feed: mpsc::UnboundedSender<Vec<Arc<StoredEvent>>>,
    close: CancellationToken,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut cache = Cache::new();
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut group, MAX_GROUP) => n,
            () = close.cancelled(), if !rx.is_closed() => {
                // Take no new requests; what is already queued is still committed.
                rx.close();
                continue;
            }
        };
        if n == 0 {
            break;
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
                tracing::error!(error = ?e, "group commit failed; every request in it is refused");
                for req in group.drain(..) {
                    let _ = req.reply.send(Err(StoreError::Sqlx(sqlx::Error::WorkerCrashed)));
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

async fn write_group(
    conn: &mut SqliteConnection,
    cache: &mut Cache,
    group: Vec<(Uuid, Decide)>,
) -> Result<Vec<Outcome>, StoreError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let mut outcomes = Vec::with_capacity(group.len());
    for (job_id, decide) in group {
        outcomes.push(write_one(&mut tx, cache, job_id, decide).await?);
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Decides, folds, then writes: the fold runs before any insert so a refused or ill-fitting
/// decision leaves no trace in the transaction.
async fn write_one(
    conn: &mut SqliteConnection,
    cache: &mut Cache,
    job_id: Uuid,
    decide: Decide,
) -> Result<Outcome, StoreError> {
    let before = match cache.remove(&job_id) {
        Some(state) => Some(state),
        None => {
            let key = job_id.to_string();
            let row = sqlx::query_as!(JobRow, "SELECT * FROM jobs WHERE job_id = ?", key)
                .fetch_optional(&mut *conn)
                .await?;
            row.map(JobState::try_from).transpose()?
        }
    };
    let bodies = match decide(before.as_ref()) {
        Ok(bodies) => bodies,
        Err(refusal) => {
            if let Some(state) = before {
                cache.insert(job_id, state);
            }
            return Ok(Err(refusal));
        }
    };
    if bodies.is_empty() {
        return Ok(match before {
            Some(state) => {
                cache.insert(job_id, state.clone());
                Ok(Applied { state, events: Vec::new() })
            }
            None => Err(Refusal::NotFound),
        });
    }
    let is_new = before.is_none();
    let outcome = insert_all(conn, job_id, before, bodies, is_new).await?;
    if let Ok(applied) = &outcome
        && !applied.state.status.is_terminal()
    {
        cache.insert(job_id, applied.state.clone());
    }
    Ok(outcome)
}

async fn insert_all(
    conn: &mut SqliteConnection,
    job_id: Uuid,
    before: Option<JobState>,
    bodies: Vec<EventBody>,
    is_new: bool,
) -> Result<Outcome, StoreError> {
    // Dry run of the fold with placeholder ids: nothing is written if any event does not fit.
    let at = now_micros();
    let started = Instant::now();
    let mut state = before;
    for body in &bodies {
        match JobState::apply(state, job_id, 0, at, body) {
            Ok(s) => state = Some(s),
            Err(e) => return Ok(Err(Refusal::Invalid(e.to_string()))),
        }
    }
    let Some(mut state) = state else { return Ok(Err(Refusal::NotFound)) };

    let key = job_id.to_string();
    let created_at = format_at(at);
    let mut events = Vec::with_capacity(bodies.len());
    let owner: Arc<str> = Arc::from(state.owner.as_str());
    for body in &bodies {
        let kind = body.type_name();
        let data = body.to_data(job_id, at);
        let id = sqlx::query_scalar!(
            "INSERT INTO events (job_id, type, data, created_at) VALUES (?, ?, ?, ?) RETURNING id AS \"id!\"",
            key,
            kind,
            data,
            created_at
        )
        .fetch_one(&mut *conn)
        .await?;
        let mut event = StoredEvent::new(id, job_id, kind.to_owned(), data, created_at.clone());
        event.appended = Some(started);
        event.owner = Some(owner.clone());
        events.push(Arc::new(event));
    }
    let first_id = events.first().map_or(0, |e| e.id);
    state.last_event_id = events.last().map_or(state.last_event_id, |e| e.id);
    if is_new {
        insert_job_row(conn, first_id, &JobColumns::from(&state)).await?;
    } else {
        update_job_row(conn, &state).await?;
    }
    Ok(Ok(Applied { state, events }))
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

/// Writes what an event can change in an existing `jobs` row (owner, creation time and request
/// are fixed by the job's first event).
async fn update_job_row(conn: &mut SqliteConnection, state: &JobState) -> Result<(), StoreError> {
    let c = super::rows::JobChanges::from(state);
    sqlx::query!(
        "UPDATE jobs SET status = ?, stage = ?, percent = ?, attempt = ?, started_at = ?, finished_at = ?,
                         error = ?, output = ?, last_event_id = ?
         WHERE job_id = ?",
        c.status,
        c.stage,
        c.percent,
        c.attempt,
        c.started_at,
        c.finished_at,
        c.error,
        c.output,
        c.last_event_id,
        c.job_id
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
