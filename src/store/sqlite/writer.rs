//! SQLite's writer: one task owns the only write connection and commits every append in groups,
//! with the `jobs` projection in the same transaction.
//!
//! The task takes every request waiting in its queue (see [`crate::store::writer`]), decides
//! them one after another in memory, and writes the group in one `BEGIN IMMEDIATE` … `COMMIT`
//! sent to SQLite's worker thread as a single call: with `synchronous=FULL` that is one fsync and
//! one thread round trip for the whole group instead of one per event (or per statement).
//! Webhook bookkeeping rides the same queue and is committed in a transaction of its own after
//! each group of appends (see [`super::webhooks`]).
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

use crate::domain::event::StoredEvent;
use crate::domain::job::{JobState, JobStatus};
use crate::store::StoreError;
use crate::store::deletion::Deletion;
use crate::store::rows::{JobChanges, JobColumns, JobRow};
use crate::store::writer::{
    Accepted, Applied, Cache, Decision, MAX_GROUP, Outcome, Request, Spawned, Work, answer, decide_one,
    gather, settle, split, with_ids,
};

/// Most job states the writer keeps in memory; past it the cache starts over.
const CACHE_LIMIT: usize = 20_000;

/// Starts the writer; it ends once `close` is cancelled and every request already queued is
/// committed (or when every sender is gone), after checkpointing the WAL.
pub(in crate::store) fn spawn(conn: SqliteConnection, close: CancellationToken) -> Spawned {
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
    let mut deletions = Vec::new();
    let mut cache = Cache::new();
    while gather(&mut rx, &mut work, &close).await {
        for w in work.drain(..) {
            match w {
                Work::Append(r) => group.push(r),
                Work::Webhook(w) => webhooks.push(w),
                Work::Delete(d) => deletions.push(d),
            }
        }
        if !webhooks.is_empty() {
            // Their own transaction: a webhook's bookkeeping never spoils a group of appends.
            super::webhooks::write_all(&mut conn, webhooks.drain(..)).await;
        }
        if !group.is_empty() {
            write_appends(&mut conn, &mut cache, &mut group, &feed).await;
        }
        // After the appends queued with them: a job completed and then deleted is deleted.
        for request in deletions.drain(..) {
            if let Deletion::Delete(job_id) = request.deletion {
                cache.remove(&job_id);
            }
            let _ = request.reply.send(super::deletion::run(&mut conn, request.deletion).await);
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

/// Decides and commits one group of appends, then answers it.
async fn write_appends(
    conn: &mut SqliteConnection,
    cache: &mut Cache,
    group: &mut Vec<Request>,
    feed: &mpsc::UnboundedSender<Vec<Arc<StoredEvent>>>,
) {
    let started = Instant::now();
    let (decisions, replies) = split(group);
    if cache.len() > CACHE_LIMIT {
        cache.clear();
    }
    let result = write_group(conn, cache, decisions).await;
    if result.is_err() {
        // The cache may hold states of the rolled-back group: start over from the table.
        cache.clear();
    }
    answer(replies, result, feed, started);
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
    group: Vec<Decision>,
) -> Result<Vec<Outcome>, StoreError> {
    let keys: Vec<String> =
        group.iter().filter(|(id, ..)| !cache.contains_key(id)).map(|(id, ..)| id.to_string()).collect();
    let mut loaded = load_missing(conn, keys).await?;
    let mut seen = std::collections::HashSet::with_capacity(group.len());
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(group.len());
    let mut accepted: Vec<Accepted> = Vec::new();
    for (index, (job_id, _, command)) in group.into_iter().enumerate() {
        let before = match cache.remove(&job_id) {
            Some(state) => Some(state),
            // First time in this group: the row read above, if there is one.
            None if seen.insert(job_id) => loaded.remove(&job_id),
            // A misfit earlier in this group dropped the state: the committed row is the truth.
            None => read_row(conn, job_id).await?,
        };
        seen.insert(job_id);
        outcomes.push(decide_one(job_id, before, &command, cache, index, &mut accepted));
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

/// Undoes a group that failed part-way. SQLite may already have rolled back on its own (a full
/// disk, an I/O error), in which case there is nothing to undo.
async fn rollback(conn: &mut SqliteConnection) {
    if let Err(e) = sqlx::query!("ROLLBACK").execute(&mut *conn).await {
        tracing::debug!(error = %e, "rollback after a failed group");
    }
}

/// Writes a new `jobs` row.
pub(in crate::store) async fn insert_job_row(
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
