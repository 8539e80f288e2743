//! The PostgreSQL event log: the store several nodes share (API.md "Several nodes on
//! PostgreSQL").
//!
//! This is the backend's foundation: the log itself, with ids that become visible in commit
//! order across every node. Several nodes append at once, each through its own writer; a reader
//! anywhere tails the log at `id > last` and must never pass an id that commits later. A
//! `BIGSERIAL` cannot promise that (its id is taken at INSERT, visible at COMMIT), so a group's
//! ids come from the one row of `event_counter`, updated by the statement that inserts the
//! group, the last before COMMIT. That row's lock orders the writers; PostgreSQL makes a
//! transaction visible before it releases its locks, so every id a reader can see has every
//! lower id visible too, and ids are dense because they roll back with their transaction.
//! The lock is held once per group, for one statement and the commit.
//!
//! Other nodes learn of new events by waking up and re-reading (see [`tail`]): after each commit
//! a node sends at most one `NOTIFY` every few milliseconds, outside the append transaction (a
//! `NOTIFY` takes a cluster-wide lock at commit), and only as a hint.
//!
//! The schema lives in `migrations/postgres/`, apart from SQLite's, and its queries are checked
//! at compile time like SQLite's (offline data in `.sqlx/`).

pub mod bench;
pub(super) mod credentials;
pub(super) mod deletion;
pub(super) mod export;
pub(super) mod import;
mod leases;
pub(super) mod preflight;
mod reads;
mod repair;
pub mod tail;
pub(super) mod webhooks;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::Notify;
use uuid::Uuid;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::StoreError;
use super::rows::EventRow;
use super::writer::Spawned;
use crate::domain::event::StoredEvent;
use writer::Node;

/// One event to append: its job, type, `data` JSON as streamed, and `at`.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub job_id: Uuid,
    pub kind: String,
    pub data: String,
    pub created_at: String,
}

/// The channel every node's tail listens on.
pub const CHANNEL: &str = "aura_events";

/// Longest wait for a connection: past it a read or an append fails (and says so) rather than
/// hang while the database is away.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections of the writer's own pool: its group statement or transaction, and webhook
/// bookkeeping beside it.
const WRITER_CONNECTIONS: u32 = 2;

/// Connections of a node's pool: the tail's reads, the streams' replays, the credentials.
const CONNECTIONS: u32 = 10;

/// Shortest time between two `NOTIFY`s of one node: commits within it share one.
const NOTIFY_EVERY: Duration = Duration::from_millis(3);

/// A node's handle on the shared log: cheap to clone.
#[derive(Clone)]
pub struct PgLog {
    pool: PgPool,
    writer_pool: PgPool,
    /// Woken after each commit of this node; the notifier sends the `NOTIFY`.
    pub(in crate::store) committed: Arc<Notify>,
    /// What this node's `NOTIFY`s carry: its own tail ignores them, since this node's commits
    /// reach its fan-out straight from its writer.
    pub(in crate::store) voice: Arc<str>,
}

/// Opens the shared store as the node `node`: this node's writer feeds its own commits to the
/// fan-out at once, its tail every node's (the hub keeps each id once, in order). Both end once
/// `close` is cancelled.
pub(super) async fn open_node(
    url: &str,
    node: Node,
    durability: super::Durability,
    close: CancellationToken,
) -> Result<(PgLog, Spawned), StoreError> {
    let log = PgLog::open_durable(url, CONNECTIONS, node.guard_timeout(), durability).await?;
    let after = log.max_event_id().await?;
    let (feed_tx, feed) = mpsc::unbounded_channel();
    let (queue, done) =
        writer::spawn(log.writer_pool().clone(), node, log.committed.clone(), feed_tx.clone(), close.clone());
    tail::spawn(log.clone(), url.to_owned(), after, feed_tx, close);
    Ok((log, Spawned { queue, feed, done }))
}

impl PgLog {
    /// The tokens and sessions tables, on this node's pool.
    pub(super) fn credentials(&self) -> credentials::PgCredentials {
        credentials::PgCredentials::on(self.pool.clone())
    }

    /// Connects to `url` (`postgres://…`) with a pool of `connections` and applies the
    /// PostgreSQL migrations (PostgreSQL serializes concurrent migrators with an advisory lock).
    /// `guard` bounds each statement of the writer's connections (`statement_timeout`): its
    /// commits are fenced by leases, and a query that guards a lease ends before the lease does.
    pub async fn open(url: &str, connections: u32, guard: std::time::Duration) -> Result<PgLog, StoreError> {
        PgLog::open_durable(url, connections, guard, super::Durability::Full).await
    }

    /// [`PgLog::open`], its writer's commits as durable as `durability` says: `Normal` is
    /// `synchronous_commit=off` on the writer's connections (a commit returns before its WAL is
    /// flushed; the server flushes it within a few hundred milliseconds).
    pub async fn open_durable(
        url: &str,
        connections: u32,
        guard: std::time::Duration,
        durability: super::Durability,
    ) -> Result<PgLog, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone().application_name("aura"))
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        // The writer's own connections keep one plan per statement: planning its group
        // statement afresh on each execution (PostgreSQL's choice for the first ones, and often
        // after) took longer than running it. Readers keep custom plans, which see their ids.
        let writer_pool = PgPoolOptions::new()
            .max_connections(WRITER_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.application_name("aura-writer").options([
                ("plan_cache_mode", "force_generic_plan".to_owned()),
                ("statement_timeout", format!("{}ms", guard.as_millis().max(1))),
                (
                    "synchronous_commit",
                    match durability {
                        super::Durability::Full => "on".to_owned(),
                        super::Durability::Normal => "off".to_owned(),
                    },
                ),
            ]));
        let committed = Arc::new(Notify::new());
        let voice: Arc<str> = Arc::from(Uuid::new_v4().simple().to_string());
        tokio::spawn(notifier(pool.clone(), committed.clone(), voice.clone()));
        Ok(PgLog { pool, writer_pool, committed, voice })
    }

    /// The connections the node's writer uses (see [`PgLog::open`]).
    pub(in crate::store) fn writer_pool(&self) -> &PgPool {
        &self.writer_pool
    }

    /// Appends `events` in one transaction and returns them with their ids, in order. The ids
    /// are taken from the counter row by the same statement that inserts the rows.
    pub async fn append(&self, events: &[NewEvent]) -> Result<Vec<StoredEvent>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let job_ids: Vec<String> = events.iter().map(|e| e.job_id.to_string()).collect();
        let kinds: Vec<String> = events.iter().map(|e| e.kind.clone()).collect();
        let data: Vec<String> = events.iter().map(|e| e.data.clone()).collect();
        let at: Vec<String> = events.iter().map(|e| e.created_at.clone()).collect();
        let n = i64::try_from(events.len()).map_err(|_| StoreError::Corrupt("a group too large".into()))?;
        let mut tx = self.pool.begin().await?;
        let ids = sqlx::query_scalar!(
            r#"WITH counter AS (
                   UPDATE event_counter SET last_id = last_id + $1 WHERE only_row RETURNING last_id
               )
               INSERT INTO events (id, job_id, type, data, created_at)
               SELECT counter.last_id - $1 + e.n, e.job_id, e.type, e.data, e.created_at
               FROM counter,
                    unnest($2::text[], $3::text[], $4::text[], $5::text[])
                        WITH ORDINALITY AS e(job_id, type, data, created_at, n)
               ORDER BY e.n
               RETURNING id"#,
            n,
            &job_ids,
            &kinds,
            &data,
            &at
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        self.committed.notify_one();
        let mut ids = ids;
        ids.sort_unstable();
        if ids.len() != events.len() {
            return Err(StoreError::Corrupt("the counter row is missing".into()));
        }
        Ok(events
            .iter()
            .zip(ids)
            .map(|(e, id)| {
                StoredEvent::new(id, e.job_id, e.kind.clone(), e.data.clone(), e.created_at.clone())
            })
            .collect())
    }

    /// Up to `limit` events with id greater than `after`, in id order, each with its job's
    /// owner (the `jobs` row is written in the transaction of the job's first event), so that
    /// owner-filtered streams on any node decide by a string comparison.
    pub async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query!(
            r#"SELECT e.id, e.job_id, e.type AS kind, e.data, e.created_at, j.owner AS "owner?"
               FROM events AS e LEFT JOIN jobs AS j ON j.job_id = e.job_id
               WHERE e.id > ($1)::int8 ORDER BY e.id LIMIT $2"#,
            after,
            i64::from(limit)
        )
        .fetch_all(&self.pool)
        .await?;
        let mut owners: Option<(String, Arc<str>)> = None;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let owner = r.owner.map(|o| match &owners {
                    Some((name, shared)) if *name == o => shared.clone(),
                    _ => {
                        let shared: Arc<str> = Arc::from(o.as_str());
                        owners = Some((o, shared.clone()));
                        shared
                    }
                });
                let row = EventRow {
                    id: r.id,
                    job_id: r.job_id,
                    kind: r.kind,
                    data: r.data,
                    created_at: r.created_at,
                };
                let mut event = row.into_event()?;
                event.owner = owner;
                Some(event)
            })
            .collect())
    }

    /// Closes the pool's connections (and so ends the notifier).
    pub async fn close(&self) {
        self.writer_pool.close().await;
        self.pool.close().await;
    }
}

/// Sends one `NOTIFY` on [`CHANNEL`] after commits, at most one every [`NOTIFY_EVERY`]: a
/// `Notify` holds one permit, so every commit in between is covered by the next one. A failed
/// `NOTIFY` is only logged: tails re-read at least every second whatever they hear. For the
/// same reason its transaction commits without waiting for the WAL flush
/// (`synchronous_commit` off for it alone): a hint lost in a crash costs a re-read, and the
/// flush it saves would otherwise compete with the appends' own.
async fn notifier(pool: PgPool, committed: Arc<Notify>, voice: Arc<str>) {
    loop {
        tokio::select! {
            () = committed.notified() => {}
            () = pool.close_event() => return,
        }
        if let Err(e) = sqlx::query!(
            "SELECT set_config('synchronous_commit', 'off', true), pg_notify('aura_events', $1)",
            voice.as_ref()
        )
        .fetch_one(&pool)
        .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::debug!(error = %e, "NOTIFY failed; tails will re-read on their timer");
        }
        tokio::time::sleep(NOTIFY_EVERY).await;
    }
}
