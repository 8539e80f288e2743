//! A node's writer on PostgreSQL: the same group commit and decisions as SQLite's writer,
//! safe with any number of nodes writing at once.
//!
//! With SQLite the writer is the only process that writes, so it decides against its own cache.
//! Here other nodes change the same jobs, so each group runs in one transaction that first locks
//! the `jobs` rows it decides on (`SELECT … FOR UPDATE`, in job id order, so two nodes never wait
//! on each other in a circle), decides every request against those rows, writes the leases the
//! decisions call for, and then, in its last statement, takes the group's ids from the counter
//! row (see the parent module) while inserting the events and updating the `jobs` rows. The
//! counter row is locked last and held only for that statement and the commit.
//!
//! Most groups need less: a worker appends event after event for a job this node last wrote,
//! and a new job has no row yet. The writer keeps the states it committed and first decides a
//! group against them; the group is then one statement in its own implicit transaction (one
//! round trip instead of four) that locks the rows it decided on, checks each still has the
//! `last_event_id` this node saw (`aura_fresh` raises a serialization failure when one does
//! not), and only then takes the ids and writes. A stale row, a job that exists after all, a
//! refusal, a claim or a takeover falls back to the locked transaction above, deciding again:
//! a decision may run twice, never against a row it did not check.
//!
//! Committed events go to this node's fan-out at once; other nodes see them through their tail.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use sqlx::postgres::PgPool;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::event::StoredEvent;
use crate::domain::job::{JobState, JobStatus};
use crate::store::StoreError;
use crate::store::deletion::Deletion;
use crate::store::rows::{JobChanges, JobColumns, JobRow};
use crate::store::writer::{
    Accepted, Applied, Cache, Decision, LeaseOp, MAX_GROUP, Outcome, Refusal, Request, Work, answer,
    decide_one, gather, settle, split, with_ids,
};

/// How long past its own statement timeout a guarded query waits for the server to answer
/// before the connection is given up (the server's timeout normally answers first).
pub(super) const CLIENT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) fn timed_out(what: &str) -> StoreError {
    StoreError::Sqlx(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} took longer than a third of the lease"),
    )))
}

/// Most job states the writer keeps for its one-statement groups; past it the cache starts over.
const KNOWN_LIMIT: usize = 20_000;

/// Who this node is, for its leases.
#[derive(Debug, Clone)]
pub struct Node {
    /// `AURA_NODE_NAME`: names the node in leases, logs and metrics.
    pub name: Arc<str>,
    /// `AURA_LEASE_SECS`: how long a lease lasts without renewal.
    pub lease_secs: f64,
}

impl Node {
    pub fn new(name: &str, lease_secs: u64) -> Node {
        Node { name: Arc::from(name), lease_secs: lease_secs as f64 }
    }

    /// The longest a query that guards a lease (its renewal) may take: a third of the lease,
    /// the renewal period, so a renewal that hangs fails in time for the next one and the node
    /// learns well before the lease ends that it may lose it. At least 100 ms.
    pub fn guard_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64((self.lease_secs / 3.0).max(0.1))
    }

    /// The default name: the host name and this process's id.
    pub fn default_for_process(lease_secs: u64) -> Node {
        Node::new(&default_name(), lease_secs)
    }
}

/// The host name (as the kernel has it) and the process id, e.g. `render-2-4711`.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "aura".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Starts the writer; it ends once `close` is cancelled and what was queued is committed.
pub(in crate::store) fn spawn(
    pool: PgPool,
    node: Node,
    committed: Arc<Notify>,
    feed: mpsc::UnboundedSender<Vec<Arc<StoredEvent>>>,
    close: CancellationToken,
) -> (mpsc::Sender<Work>, oneshot::Receiver<()>) {
    let (queue, rx) = mpsc::channel(4096);
    let (done_tx, done) = oneshot::channel();
    tokio::spawn(async move {
        run(pool, node, committed, rx, feed, close).await;
        let _ = done_tx.send(());
    });
    (queue, done)
}

async fn run(
    pool: PgPool,
    node: Node,
    committed: Arc<Notify>,
    mut rx: mpsc::Receiver<Work>,
    feed: mpsc::UnboundedSender<Vec<Arc<StoredEvent>>>,
    close: CancellationToken,
) {
    let mut work = Vec::with_capacity(MAX_GROUP);
    let mut group: Vec<Request> = Vec::with_capacity(MAX_GROUP);
    let mut webhooks = Vec::new();
    let mut deletions = Vec::new();
    let mut known: Cache = HashMap::new();
    while gather(&mut rx, &mut work, &close).await {
        for w in work.drain(..) {
            match w {
                Work::Append(r) => group.push(r),
                Work::Webhook(w) => webhooks.push(w),
                Work::Delete(d) => deletions.push(d),
            }
        }
        if !webhooks.is_empty() {
            // Registrations, rotations and deletions, in one transaction of their own.
            super::webhooks::write_all(&pool, std::mem::take(&mut webhooks)).await;
        }
        if !group.is_empty() {
            write_appends(&pool, &node, &committed, &mut group, &mut known, &feed).await;
        }
        // After the appends queued with them: a job completed and then deleted is deleted.
        for request in deletions.drain(..) {
            if let Deletion::Delete(job_id) = request.deletion {
                known.remove(&job_id);
            }
            let bound = node.guard_timeout() + CLIENT_GRACE;
            let result =
                match tokio::time::timeout(bound, super::deletion::run(&pool, request.deletion)).await {
                    Ok(result) => result,
                    Err(_) => Err(timed_out("a deletion").into()),
                };
            let _ = request.reply.send(result);
        }
    }
    tracing::info!("store writer closed");
}

/// Decides and commits one group of appends, then answers it.
async fn write_appends(
    pool: &PgPool,
    node: &Node,
    committed: &Notify,
    group: &mut Vec<Request>,
    known: &mut Cache,
    feed: &mpsc::UnboundedSender<Vec<Arc<StoredEvent>>>,
) {
    let started = Instant::now();
    let (requests, replies) = split(group);
    // Bounded like every query that guards a lease: the server ends a statement after a
    // third of the lease (`statement_timeout` on these connections), and a server that does
    // not answer at all is given up a moment later. The outcome is then unknown, as when a
    // connection is cut mid-commit: what did commit reaches every stream through the tail.
    let bound = node.guard_timeout() + CLIENT_GRACE;
    let result = match tokio::time::timeout(bound, write_group(pool, node, &requests, known)).await {
        Ok(result) => result,
        Err(_) => Err(timed_out("a group commit")),
    };
    match &result {
        Ok(_) => committed.notify_one(),
        Err(_) => known.clear(),
    }
    answer(replies, result, feed, started);
}

/// Decides and commits one group: in one statement against the states this node cached when it
/// can, else in a transaction with the rows locked (see the module docs).
async fn write_group(
    pool: &PgPool,
    node: &Node,
    group: &[Decision],
    known: &mut Cache,
) -> Result<Vec<Outcome>, StoreError> {
    if group.iter().all(|(_, op, _)| *op == LeaseOp::Keep)
        && let Some(outcomes) = cached_group(pool, group, known).await?
    {
        return Ok(outcomes);
    }
    locked_group(pool, node, group, known).await
}

/// The common case in one round trip: every request decided against the state this node last
/// committed for its job (or as a new job), and the group written by one statement in its own
/// implicit transaction, which checks first that each of those rows is unchanged. `None` when
/// that cannot be: a request refused or without events (its answer must come from the row
/// itself), a row another node changed, a job that exists after all. Nothing is written then,
/// and the caller decides again with the rows locked.
async fn cached_group(
    pool: &PgPool,
    group: &[Decision],
    known: &mut Cache,
) -> Result<Option<Vec<Outcome>>, StoreError> {
    let mut states: Cache = HashMap::with_capacity(group.len());
    let mut accepted: Vec<Accepted> = Vec::with_capacity(group.len());
    let mut fresh: HashMap<Uuid, i64> = HashMap::with_capacity(group.len());
    for (index, (job_id, _, command)) in group.iter().enumerate() {
        let before = match states.remove(job_id) {
            Some(state) => Some(state),
            // Taken out, not copied: a commit puts the new state back, a fallback reads the row.
            None => known.remove(job_id).inspect(|s| {
                fresh.entry(*job_id).or_insert(s.last_event_id);
            }),
        };
        if decide_one(*job_id, before, command, &mut states, index, &mut accepted).is_some() {
            return Ok(None);
        }
    }
    let guard: Vec<(String, i64)> = fresh.iter().map(|(id, last)| (id.to_string(), *last)).collect();
    let mut conn = pool.acquire().await?;
    match insert_events(&mut conn, accepted, &guard, true).await {
        Ok(written) => {
            remember(known, &written);
            let mut outcomes: Vec<Option<Outcome>> = (0..group.len()).map(|_| None).collect();
            for (index, applied) in written {
                if let Some(slot) = outcomes.get_mut(index) {
                    *slot = Some(Ok(applied));
                }
            }
            Ok(Some(settle(outcomes)))
        }
        Err(StoreError::Sqlx(sqlx::Error::Database(e)))
            if matches!(e.code().as_deref(), Some("40001" | "23505" | "40P01")) =>
        {
            for (job_id, _, _) in group {
                known.remove(job_id);
            }
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Keeps the states a commit left for the next group: those of jobs still being worked on
/// (they append event after event), up to a bound past which the cache starts over.
fn remember(known: &mut Cache, written: &[(usize, Applied)]) {
    if known.len() > KNOWN_LIMIT {
        known.clear();
    }
    for (_, applied) in written {
        let state = &applied.state;
        if state.status.is_terminal() {
            known.remove(&state.job_id);
        } else {
            known.insert(state.job_id, state.clone());
        }
    }
}

/// Decides and commits one group in one transaction that locks the rows first (see the module
/// docs): claims, takeovers, refusals, and groups whose cached rows went stale.
async fn locked_group(
    pool: &PgPool,
    node: &Node,
    group: &[Decision],
    known: &mut Cache,
) -> Result<Vec<Outcome>, StoreError> {
    let mut keys: Vec<String> = group.iter().map(|(id, _, _)| id.to_string()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut tx = pool.begin().await?;
    let rows = sqlx::query_as!(
        JobRow,
        "SELECT * FROM jobs WHERE job_id = ANY($1::text[]) ORDER BY job_id FOR UPDATE",
        &keys
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut committed_rows = HashMap::with_capacity(rows.len());
    for row in rows {
        let state = JobState::try_from(row)?;
        committed_rows.insert(state.job_id, state);
    }
    for (job_id, _, _) in group {
        known.remove(job_id);
    }
    // A takeover locks the expired lease rows it decides on. One another transaction holds (the
    // holder renewing it at this moment, or anyone else) is skipped, not waited for: the lease
    // may be renewed when that commits, and this writer, which serves every append of the
    // node, never waits on a lease. The next sweep looks again.
    let expired = if group.iter().any(|(_, op, _)| *op == LeaseOp::Orphan) {
        let ids = sqlx::query_scalar!(
            "SELECT job_id FROM leases
             WHERE job_id = ANY($1::text[]) AND node IS NOT NULL AND expires_at < now()
             FOR UPDATE SKIP LOCKED",
            &keys
        )
        .fetch_all(&mut *tx)
        .await?;
        ids.iter().filter_map(|id| Uuid::parse_str(id).ok()).collect()
    } else {
        HashSet::new()
    };

    // The states as the group goes, like SQLite's cache; a job a misfit dropped falls back to
    // its committed row.
    let mut states: Cache = committed_rows.clone();
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(group.len());
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut ops: HashMap<Uuid, LeaseOp> = HashMap::new();
    for (index, (job_id, op, command)) in group.iter().enumerate() {
        let (job_id, op) = (*job_id, *op);
        if op == LeaseOp::Orphan && !expired.contains(&job_id) {
            outcomes.push(Some(Err(Refusal::Conflict("the job's lease is not expired".into()))));
            continue;
        }
        let before = states.remove(&job_id).or_else(|| committed_rows.get(&job_id).cloned());
        let taken = accepted.len();
        let outcome = decide_one(job_id, before, command, &mut states, index, &mut accepted);
        if accepted.len() > taken && op != LeaseOp::Keep {
            ops.insert(job_id, op);
        }
        outcomes.push(outcome);
    }
    if accepted.is_empty() {
        tx.rollback().await?;
    } else {
        write_leases(&mut tx, node, &accepted, &ops).await?;
        let written = insert_events(&mut tx, accepted, &[], false).await?;
        tx.commit().await?;
        remember(known, &written);
        for (index, applied) in written {
            if let Some(slot) = outcomes.get_mut(index) {
                *slot = Some(Ok(applied));
            }
        }
    }
    Ok(settle(outcomes))
}

/// The leases the group's decisions call for: a job that ended loses its lease; a job left
/// Running by a [`LeaseOp::Take`] gets this node's lease for its attempt, by a
/// [`LeaseOp::Orphan`] a lease that waits for any worker node.
async fn write_leases(
    tx: &mut sqlx::PgConnection,
    node: &Node,
    accepted: &[Accepted],
    ops: &HashMap<Uuid, LeaseOp>,
) -> Result<(), StoreError> {
    let mut last: HashMap<Uuid, &JobState> = HashMap::new();
    for a in accepted {
        last.insert(a.job_id, &a.state);
    }
    let mut ended = Vec::new();
    let mut leased = Vec::new();
    for (job_id, state) in &last {
        if state.status.is_terminal() {
            ended.push(job_id.to_string());
        } else if matches!(state.status, JobStatus::Running | JobStatus::Cancelling) {
            let holder = match ops.get(job_id) {
                Some(LeaseOp::Take) => Some(node.name.as_ref()),
                Some(LeaseOp::Orphan) => None,
                Some(LeaseOp::Keep) | None => continue,
            };
            leased.push(json!({"job_id": job_id.to_string(), "attempt": state.attempt, "node": holder}));
        }
    }
    if ended.is_empty() && leased.is_empty() {
        return Ok(());
    }
    let leased = serde_json::Value::Array(leased).to_string();
    sqlx::query!(
        "WITH ended AS (DELETE FROM leases WHERE job_id = ANY($1::text[]) RETURNING 1)
         INSERT INTO leases (job_id, attempt, node, expires_at)
         SELECT l.job_id, l.attempt, l.node, now() + make_interval(secs => $3)
         FROM jsonb_to_recordset($2::text::jsonb) AS l(job_id text, attempt int8, node text)
         ON CONFLICT (job_id) DO UPDATE
             SET attempt = excluded.attempt, node = excluded.node, expires_at = excluded.expires_at",
        &ended,
        leased,
        node.lease_secs
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Inserts the group's events with ids from the counter row and updates (or creates) the jobs
/// rows, in one statement, the transaction's last. First, in the same statement, it locks the
/// `guard` jobs' rows and ends the statement with a serialization failure unless each still has
/// the given `last_event_id` (see `aura_fresh` in the migrations). With `drop_ended_leases` it
/// also deletes the leases of the jobs the group ends (the locked path writes leases itself).
async fn insert_events(
    tx: &mut sqlx::PgConnection,
    accepted: Vec<Accepted>,
    guard: &[(String, i64)],
    drop_ended_leases: bool,
) -> Result<Vec<(usize, Applied)>, StoreError> {
    // One entry per job (the caller's map has each once).
    let guarded_ids: Vec<String> = guard.iter().map(|(id, _)| id.clone()).collect();
    let guarded_last: Vec<i64> = guard.iter().map(|(_, last)| *last).collect();
    let guarded = guarded_ids.len() as i64;
    let ended: Vec<String> = if drop_ended_leases {
        accepted.iter().filter(|a| a.state.status.is_terminal()).map(|a| a.job_id.to_string()).collect()
    } else {
        Vec::new()
    };
    let mut job_ids = Vec::new();
    let mut kinds = Vec::new();
    let mut data = Vec::new();
    let mut at = Vec::new();
    // Per job: the 1-based position of its first and last event in the group, its state after
    // the group, and whether its row is new.
    let mut spans: HashMap<Uuid, (i64, i64, usize, bool)> = HashMap::new();
    let mut n = 0i64;
    for (i, a) in accepted.iter().enumerate() {
        let key = a.job_id.to_string();
        for (kind, d) in &a.events {
            n += 1;
            job_ids.push(key.clone());
            kinds.push((*kind).to_owned());
            data.push(d.clone());
            at.push(a.created_at.clone());
        }
        spans
            .entry(a.job_id)
            .and_modify(|s| {
                s.1 = n;
                s.2 = i;
            })
            .or_insert((n - a.events.len() as i64 + 1, n, i, a.is_new));
    }
    let mut changed = Vec::new();
    let mut created = Vec::new();
    for &(first, last, i, is_new) in spans.values() {
        let Some(a) = accepted.get(i) else { continue };
        let c = JobChanges::from(&a.state);
        let mut row = json!({
            "job_id": c.job_id, "status": c.status, "stage": c.stage, "percent": c.percent,
            "attempt": c.attempt, "started_at": c.started_at, "finished_at": c.finished_at,
            "error": c.error, "output": c.output, "first_n": first, "last_n": last,
        });
        if is_new {
            let cols = JobColumns::from(&a.state);
            if let Some(obj) = row.as_object_mut() {
                obj.insert("owner".into(), cols.owner.into());
                obj.insert("created_at".into(), cols.created_at.into());
                obj.insert("request".into(), cols.request.into());
            }
            created.push(row);
        } else {
            changed.push(row);
        }
    }
    let changed = serde_json::Value::Array(changed).to_string();
    let created = serde_json::Value::Array(created).to_string();
    let base = sqlx::query_scalar!(
        r#"WITH locked AS (
               SELECT job_id, last_event_id FROM jobs WHERE job_id = ANY($8::text[]) ORDER BY job_id FOR UPDATE
           ), fresh AS (
               SELECT aura_fresh(count(locked.job_id)::int8, $10::int8) AS ok
               FROM unnest($8::text[], $9::int8[]) AS g(job_id, last)
                    LEFT JOIN locked ON locked.job_id = g.job_id AND locked.last_event_id = g.last
           ), counter AS (
               UPDATE event_counter SET last_id = last_id + $1
               WHERE only_row AND (SELECT ok FROM fresh)
               RETURNING last_id - $1 AS base
           ), ended AS (
               DELETE FROM leases WHERE job_id = ANY($11::text[]) AND (SELECT ok FROM fresh) RETURNING 1
           ), inserted AS (
               INSERT INTO events (id, job_id, type, data, created_at)
               SELECT counter.base + e.n, e.job_id, e.type, e.data, e.created_at
               FROM counter,
                    unnest($2::text[], $3::text[], $4::text[], $5::text[])
                        WITH ORDINALITY AS e(job_id, type, data, created_at, n)
               RETURNING 1
           ), changed AS (
               UPDATE jobs SET status = u.status, stage = u.stage, percent = u.percent, attempt = u.attempt,
                               started_at = u.started_at, finished_at = u.finished_at, error = u.error,
                               output = u.output, last_event_id = counter.base + u.last_n
               FROM counter,
                    jsonb_to_recordset($6::text::jsonb) AS u(job_id text, status text, stage text,
                        percent float8, attempt int8, started_at text, finished_at text, error text,
                        output text, last_n int8)
               WHERE jobs.job_id = u.job_id
               RETURNING 1
           ), created AS (
               INSERT INTO jobs (job_id, created_event_id, owner, status, stage, percent, attempt, created_at,
                                 started_at, finished_at, error, output, last_event_id, request)
               SELECT u.job_id, counter.base + u.first_n, u.owner, u.status, u.stage, u.percent, u.attempt,
                      u.created_at, u.started_at, u.finished_at, u.error, u.output, counter.base + u.last_n,
                      u.request
               FROM counter,
                    jsonb_to_recordset($7::text::jsonb) AS u(job_id text, status text, stage text,
                        percent float8, attempt int8, started_at text, finished_at text, error text,
                        output text, first_n int8, last_n int8, owner text, created_at text, request text)
               RETURNING 1
           )
           SELECT base AS "base!" FROM counter"#,
        n,
        &job_ids,
        &kinds,
        &data,
        &at,
        changed,
        created,
        &guarded_ids,
        &guarded_last,
        guarded,
        &ended
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| StoreError::Corrupt("the event counter row is missing".into()))?;
    with_ids(accepted, (1..=n).map(|k| base + k))
}
