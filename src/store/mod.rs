//! The SQLite store: the only module that speaks SQL.
//!
//! Everything else sees Aura's own types ([`JobState`], [`StoredEvent`], [`EventFilter`]), so a
//! second backend (Postgres, for several nodes) is an addition here, not a rewrite elsewhere.
//! Writes go through one writer task that owns the single write connection and commits in
//! groups (see [`writer`]); reads use a small pool of connections that WAL lets run beside it.

pub mod postgres;
pub mod preflight;
mod rows;
pub mod webhook_writes;
pub mod webhooks;
pub mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::event::StoredEvent;
use crate::domain::job::{JobState, JobStatus};
pub use postgres::writer::Node;
pub use writer::{Applied, Decide, LeaseOp, Refusal};

use postgres::PgLog;

/// How `synchronous` is set on the write connection (`AURA_SYNCHRONOUS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit: a committed event survives power loss. The default.
    Full,
    /// fsync at checkpoints only: survives a process crash, may lose the newest commits on power loss.
    Normal,
}

/// What went wrong in the store. The message says what failed and carries its source, for the
/// log; the HTTP edge never sends it (it answers a fixed 500).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the store is shut down")]
    Closed,
    /// What this backend does not offer (yet).
    #[error("not available in this store: {0}")]
    Unsupported(&'static str),
    /// This node no longer holds the webhook delivery lock (see [`webhooks::DeliveryLock`]).
    #[error("this node no longer holds the webhook delivery lock")]
    LockLost,
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    /// The group commit this request was part of failed; every request of the group gets the
    /// same cause.
    #[error("the write group failed: {0}")]
    GroupFailed(#[source] Arc<StoreError>),
}

/// Which jobs' events a reader wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFilter {
    All,
    Jobs(Vec<Uuid>),
    /// Every job of one owner (`jobs.owner`).
    Owner(String),
}

/// A replay page framed by SQLite (see [`Store::framed_after`]).
#[derive(Debug, Clone)]
pub struct FramedPage {
    /// `id:`/`event:`/`data:` frames of every event in the page, in id order.
    pub frames: bytes::Bytes,
    pub count: usize,
    /// The id of the page's last event (the resume point after it), if any.
    pub last_id: Option<i64>,
    /// The id of a terminal event in the page: it is the page's last.
    pub terminal_id: Option<i64>,
}

/// One page of the job list.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<JobState>,
    /// Cursor for the next (older) page, if there may be one.
    pub next: Option<i64>,
}

impl JobPage {
    /// A page from up to `limit + 1` rows, newest first: the extra row only says there is more.
    fn from_rows(rows: Vec<rows::JobRow>, limit: u32) -> Result<JobPage, StoreError> {
        let limit = limit as usize;
        let next = if rows.len() > limit {
            rows.get(limit.wrapping_sub(1)).map(|r| r.created_event_id)
        } else {
            None
        };
        let jobs = rows.into_iter().take(limit).map(JobState::try_from).collect::<Result<_, _>>()?;
        Ok(JobPage { jobs, next })
    }
}

/// A handle to the database: cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Behind one `Arc`: every stream holds a `Store`, so a clone must cost no allocation.
struct Inner {
    backend: Backend,
    writer: mpsc::Sender<writer::Work>,
    close: CancellationToken,
    writer_done: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

/// Where the log lives: one SQLite file (the embedded default), or a PostgreSQL database several
/// nodes share. Built once per process and kept behind the store's `Arc`, so the size
/// difference between the two costs nothing.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Sqlite { pool: SqlitePool, write_options: SqliteConnectOptions },
    Postgres { log: PgLog, node: Node },
}

/// The SQLite read pool, or else returns what the PostgreSQL backend answers.
macro_rules! sqlite_pool {
    ($store:expr, $log:ident => $pg:expr) => {
        match &$store.inner.backend {
            Backend::Sqlite { pool, .. } => pool,
            #[allow(unused_variables)]
            Backend::Postgres { log: $log, .. } => return $pg,
        }
    };
}
pub(crate) use sqlite_pool;

/// Whether a database URL names PostgreSQL.
pub fn is_postgres(url: &str) -> bool {
    let lower = url.get(..13).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// Connections of a node's PostgreSQL pool: the writer, the tail's reads, the streams' replays.
const PG_CONNECTIONS: u32 = 10;

/// What the writer hands the fan-out after each commit, in commit (and so id) order.
pub type CommitFeed = mpsc::UnboundedReceiver<Vec<Arc<StoredEvent>>>;

impl Store {
    /// Opens (creating if needed) the database, applies migrations and starts the writer task.
    /// A PostgreSQL URL opens the shared store as a node with a default name and lease time.
    pub async fn open(url_or_path: &str, durability: Durability) -> Result<(Store, CommitFeed), StoreError> {
        Store::open_node(url_or_path, durability, Node::default_for_process(30)).await
    }

    /// [`Store::open`], naming the node (for its leases) when the database is PostgreSQL.
    pub async fn open_node(
        url_or_path: &str,
        durability: Durability,
        node: Node,
    ) -> Result<(Store, CommitFeed), StoreError> {
        if is_postgres(url_or_path) {
            return Store::open_postgres(url_or_path, node).await;
        }
        let options = connect_options(url_or_path)?;
        if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Sqlx(sqlx::Error::Io(e)))?;
        }
        // Room for every id a large group returns, so SQLite's thread never waits on this one.
        let write_options = options.clone().row_buffer_size(1024).synchronous(match durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        });
        let mut conn = write_options.clone().connect().await?;
        sqlx::migrate!().run(&mut conn).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options.read_only(true))
            .await?;
        let close = CancellationToken::new();
        let spawned = writer::spawn(conn, close.clone());
        let store = Store {
            inner: Arc::new(Inner {
                backend: Backend::Sqlite { pool, write_options },
                writer: spawned.queue,
                close,
                writer_done: tokio::sync::Mutex::new(Some(spawned.done)),
            }),
        };
        Ok((store, spawned.feed))
    }

    /// The shared store: this node's writer feeds its own commits to the fan-out at once, its
    /// tail every node's (the hub keeps each id once, in order).
    async fn open_postgres(url: &str, node: Node) -> Result<(Store, CommitFeed), StoreError> {
        let log = PgLog::open(url, PG_CONNECTIONS, node.guard_timeout()).await?;
        let after = log.max_event_id().await?;
        let close = CancellationToken::new();
        let (feed_tx, feed) = mpsc::unbounded_channel();
        let (queue, done) = postgres::writer::spawn(
            log.writer_pool().clone(),
            node.clone(),
            log.committed.clone(),
            feed_tx.clone(),
            close.clone(),
        );
        postgres::tail::spawn(log.clone(), url.to_owned(), after, feed_tx, close.clone());
        let store = Store {
            inner: Arc::new(Inner {
                backend: Backend::Postgres { log, node },
                writer: queue,
                close,
                writer_done: tokio::sync::Mutex::new(Some(done)),
            }),
        };
        Ok((store, feed))
    }

    /// This node, when the store is shared (PostgreSQL); `None` with SQLite.
    pub fn node(&self) -> Option<&Node> {
        match &self.inner.backend {
            Backend::Sqlite { .. } => None,
            Backend::Postgres { node, .. } => Some(node),
        }
    }

    /// [`Store::apply`] with what the decision does to the job's lease (PostgreSQL only).
    pub async fn apply_leased(
        &self,
        job_id: Uuid,
        lease: LeaseOp,
        decide: Decide,
    ) -> Result<Result<Applied, Refusal>, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.inner
            .writer
            .send(writer::Work::Append(writer::Request { job_id, decide, lease, reply }))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Renews this node's leases of `jobs` (id, attempt); returns those it no longer holds.
    /// Nothing to do with SQLite.
    pub async fn renew_leases(&self, jobs: &[(Uuid, u32)]) -> Result<Vec<Uuid>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite { .. } => Ok(Vec::new()),
            Backend::Postgres { log, node } => log.renew_leases(node, jobs).await,
        }
    }

    /// Jobs whose lease expired (their node stopped renewing it). None with SQLite.
    pub async fn expired_leases(&self, limit: u32) -> Result<Vec<Uuid>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite { .. } => Ok(Vec::new()),
            Backend::Postgres { log, .. } => log.expired_leases(limit).await,
        }
    }

    /// Takes a job's new attempt that waits for a worker node. None with SQLite.
    pub async fn take_waiting(&self) -> Result<Option<Uuid>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite { .. } => Ok(None),
            Backend::Postgres { log, node } => log.take_waiting(node).await,
        }
    }

    /// Lets this node's leases expire now, at a clean shutdown. Nothing to do with SQLite.
    pub async fn release_leases(&self) -> Result<(), StoreError> {
        match &self.inner.backend {
            Backend::Sqlite { .. } => Ok(()),
            Backend::Postgres { log, node } => log.release_leases(node).await,
        }
    }

    /// Runs one decision against a job's current state and appends what it returns, atomically.
    pub async fn apply(&self, job_id: Uuid, decide: Decide) -> Result<Result<Applied, Refusal>, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.inner
            .writer
            .send(writer::Work::Append(writer::Request { job_id, decide, lease: LeaseOp::Keep, reply }))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Checks that the database answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let pool = sqlite_pool!(self, log => log.ping().await);
        sqlx::query_scalar!("SELECT 1 AS \"one!: i64\"").fetch_one(pool).await?;
        Ok(())
    }

    pub async fn job(&self, job_id: Uuid) -> Result<Option<JobState>, StoreError> {
        let pool = sqlite_pool!(self, log => log.job(job_id).await);
        let id = job_id.to_string();
        let row = sqlx::query_as!(rows::JobRow, "SELECT * FROM jobs WHERE job_id = ?", id)
            .fetch_optional(pool)
            .await?;
        row.map(JobState::try_from).transpose()
    }

    /// Completed jobs that still have their output and finished before `before`, oldest first:
    /// the videos `AURA_OUTPUT_RETENTION` deletes.
    pub async fn outputs_finished_before(
        &self,
        before: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<JobState>, StoreError> {
        let pool = sqlite_pool!(self, log => log.outputs_finished_before(before, limit).await);
        // `finished_at` is fixed-width RFC 3339 UTC text, so text order is time order.
        let before = crate::domain::time::format_at(before);
        let limit = i64::from(limit);
        let rows = sqlx::query_as!(
            rows::JobRow,
            "SELECT * FROM jobs
             WHERE status = 'Completed' AND output IS NOT NULL AND finished_at < ?1
             ORDER BY finished_at LIMIT ?2",
            before,
            limit
        )
        .fetch_all(pool)
        .await?;
        rows.into_iter().map(JobState::try_from).collect()
    }

    /// Jobs newest first, optionally of one status and owner, older than the cursor `before`.
    pub async fn list_jobs(
        &self,
        owner: Option<&str>,
        status: Option<JobStatus>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<JobPage, StoreError> {
        let pool = sqlite_pool!(self, log => log.list_jobs(owner, status, before, limit).await);
        let status = status.map(JobStatus::name);
        let before = before.unwrap_or(i64::MAX);
        let fetch = i64::from(limit) + 1;
        let rows = sqlx::query_as!(
            rows::JobRow,
            "SELECT * FROM jobs
             WHERE created_event_id < ?1 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR owner = ?3)
             ORDER BY created_event_id DESC LIMIT ?4",
            before,
            status,
            owner,
            fetch
        )
        .fetch_all(pool)
        .await?;
        JobPage::from_rows(rows, limit)
    }

    /// Up to `limit` events with id greater than `after`, in id order.
    pub async fn events_after(
        &self,
        filter: &EventFilter,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let pool = sqlite_pool!(self, log => log.filtered_events_after(filter, after, limit).await);
        let limit = i64::from(limit);
        let rows = match filter {
            EventFilter::All => {
                sqlx::query_as!(
                    rows::EventRow,
                    "SELECT id AS \"id!\", job_id, type AS kind, data, created_at
                     FROM events WHERE id > ? ORDER BY id LIMIT ?",
                    after,
                    limit
                )
                .fetch_all(pool)
                .await?
            }
            EventFilter::Jobs(ids) if ids.len() == 1 => {
                let job = ids[0].to_string();
                sqlx::query_as!(
                    rows::EventRow,
                    "SELECT id AS \"id!\", job_id, type AS kind, data, created_at
                     FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
                    job,
                    after,
                    limit
                )
                .fetch_all(pool)
                .await?
            }
            EventFilter::Owner(owner) => {
                sqlx::query_as!(
                    rows::EventRow,
                    "SELECT id AS \"id!\", job_id, type AS kind, data, created_at
                     FROM events WHERE id > ? AND job_id IN (SELECT job_id FROM jobs WHERE owner = ?)
                     ORDER BY id LIMIT ?",
                    after,
                    owner,
                    limit
                )
                .fetch_all(pool)
                .await?
            }
            EventFilter::Jobs(ids) => {
                let list = serde_json::to_string(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query_as!(
                    rows::EventRow,
                    "SELECT id AS \"id!\", job_id, type AS kind, data, created_at
                     FROM events WHERE id > ? AND job_id IN (SELECT value FROM json_each(?))
                     ORDER BY id LIMIT ?",
                    after,
                    list,
                    limit
                )
                .fetch_all(pool)
                .await?
            }
        };
        Ok(rows.into_iter().filter_map(rows::EventRow::into_event).collect())
    }

    /// The oldest Queued job (by creation order), the next one a worker should claim.
    pub async fn next_queued(&self) -> Result<Option<Uuid>, StoreError> {
        let pool = sqlite_pool!(self, log => log.next_queued().await);
        let id = sqlx::query_scalar!(
            "SELECT job_id FROM jobs WHERE status = 'Queued' ORDER BY created_event_id LIMIT 1"
        )
        .fetch_optional(pool)
        .await?;
        id.map(|id| Uuid::parse_str(&id).map_err(|_| StoreError::Corrupt("a jobs.job_id".into()))).transpose()
    }

    /// Up to `limit` events after `after`, already framed for SSE by SQLite in one row: a
    /// replay costs one round trip to the database thread per page instead of one per event.
    /// `None` when the page holds a row that must go through [`StoredEvent`]'s normalization
    /// (a line break in `data` or `type`, a foreign job id, something after a terminal event),
    /// or for filters this path does not cover; the caller then reads rows. Line breaks are
    /// found by counting them in the page (exactly four per frame), which is much cheaper than
    /// asking SQLite to search every `data`. The subquery reads in id order and the aggregate
    /// keeps it (an `ORDER BY` inside `string_agg` would sort every page again in a temporary
    /// b-tree); the ids are checked to ascend all the same, and a page that does not is read
    /// row by row.
    pub async fn framed_after(
        &self,
        filter: &EventFilter,
        after: i64,
        limit: u32,
    ) -> Result<Option<FramedPage>, StoreError> {
        let pool = sqlite_pool!(self, log => Ok(None));
        let limit = i64::from(limit);
        let row = match filter {
            EventFilter::All => {
                sqlx::query_as!(
                    rows::FramedRow,
                    r#"SELECT count(*) AS "count!: i64", max(id) AS "last_id: i64",
                              max(CASE WHEN type IN ('job-completed', 'job-failed', 'job-cancelled') THEN id END)
                                  AS "terminal_id: i64",
                              sum(instr(type, ' ') > 0 OR type = '' OR length(job_id) != 36) AS "dirty: i64",
                              string_agg('id: ' || id || char(10) || 'event: ' || type || char(10) || 'data: ' || data
                                         || char(10) || char(10), '') AS "frames: String"
                       FROM (SELECT id, job_id, type, data FROM events WHERE id > ? ORDER BY id LIMIT ?)"#,
                    after,
                    limit
                )
                .fetch_one(pool)
                .await?
            }
            EventFilter::Jobs(ids) if ids.len() == 1 => {
                let job = ids[0].to_string();
                sqlx::query_as!(
                    rows::FramedRow,
                    r#"SELECT count(*) AS "count!: i64", max(id) AS "last_id: i64",
                              max(CASE WHEN type IN ('job-completed', 'job-failed', 'job-cancelled') THEN id END)
                                  AS "terminal_id: i64",
                              sum(instr(type, ' ') > 0 OR type = '' OR length(job_id) != 36) AS "dirty: i64",
                              string_agg('id: ' || id || char(10) || 'event: ' || type || char(10) || 'data: ' || data
                                         || char(10) || char(10), '') AS "frames: String"
                       FROM (SELECT id, job_id, type, data FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?)"#,
                    job,
                    after,
                    limit
                )
                .fetch_one(pool)
                .await?
            }
            EventFilter::Jobs(_) | EventFilter::Owner(_) => return Ok(None),
        };
        Ok(row.into_page())
    }

    /// The highest event id committed so far (0 for an empty log).
    pub async fn max_event_id(&self) -> Result<i64, StoreError> {
        let pool = sqlite_pool!(self, log => log.max_event_id().await);
        let id = sqlx::query_scalar!("SELECT coalesce(max(id), 0) AS \"id!: i64\" FROM events")
            .fetch_one(pool)
            .await?;
        Ok(id)
    }

    /// How many jobs there are in each status.
    pub async fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let pool = sqlite_pool!(self, log => log.job_counts().await);
        let rows = sqlx::query!("SELECT status, count(*) AS \"n!: i64\" FROM jobs GROUP BY status")
            .fetch_all(pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.status, r.n)).collect())
    }

    /// Every job id that has a `jobs` row.
    pub async fn job_ids(&self) -> Result<Vec<String>, StoreError> {
        let pool = sqlite_pool!(self, log => log.job_ids().await);
        Ok(sqlx::query_scalar!("SELECT job_id FROM jobs ORDER BY created_event_id").fetch_all(pool).await?)
    }

    /// Replaces the whole `jobs` table with the given states, in one transaction
    /// (`aura check --repair`: the log is the truth). Each state comes with its first event id;
    /// `through` is the last event id the states were folded from (on PostgreSQL, where nodes may
    /// be writing, the repair is refused if the log has grown since).
    pub async fn rebuild_jobs(&self, jobs: &[(i64, JobState)], through: i64) -> Result<(), StoreError> {
        let write_options = match &self.inner.backend {
            Backend::Sqlite { write_options, .. } => write_options,
            Backend::Postgres { log, .. } => return log.rebuild_jobs(jobs, through).await,
        };
        let mut conn = write_options.clone().connect().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query!("DELETE FROM jobs").execute(&mut *tx).await?;
        for (created_event_id, state) in jobs {
            writer::insert_job_row(&mut tx, *created_event_id, &rows::JobColumns::from(state)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Commits what is queued, checkpoints and closes the write connection, then the readers.
    /// Appends after this are refused with [`StoreError::Closed`].
    pub async fn close(&self) {
        self.inner.close.cancel();
        if let Some(done) = self.inner.writer_done.lock().await.take()
            && tokio::time::timeout(Duration::from_secs(5), done).await.is_err()
        {
            tracing::warn!("the store writer did not finish within 5 s");
        }
        match &self.inner.backend {
            Backend::Sqlite { pool, .. } => pool.close().await,
            Backend::Postgres { log, .. } => log.close().await,
        }
    }
}

/// Raw SQLite, for `aura bench`: inserts `rows` event rows into a fresh file with Aura's schema
/// and pragmas (WAL, `synchronous=FULL`), `batch` rows per transaction; returns rows per second.
///
/// With `one_call`, each transaction (`BEGIN IMMEDIATE`, one `INSERT` per row, `COMMIT`) goes to
/// SQLite's worker thread as one multi-statement call, as a program calling SQLite directly on
/// its own thread would run it: this is the fair baseline for Aura's writer, which also sends
/// each group as one call. Without it, every statement is a round trip of its own.
pub async fn raw_insert_rate(
    path: &Path,
    rows: usize,
    batch: usize,
    one_call: bool,
) -> Result<f64, StoreError> {
    let options = connect_options(&path.to_string_lossy())?;
    let mut conn = options.connect().await?;
    sqlx::migrate!().run(&mut conn).await?;
    let data = r#"{"jobId":"00000000-0000-0000-0000-000000000000","at":"2026-01-01T00:00:00.000000Z","step":"Audio","progressPct":1.0,"percent":15.2,"message":""}"#;
    let job = "00000000-0000-0000-0000-000000000000";
    let at = "2026-01-01T00:00:00.000000Z";
    let insert = "INSERT INTO events (job_id, type, data, created_at) VALUES (?, 'step-progress', ?, ?);";
    let started = std::time::Instant::now();
    let mut left = rows;
    while left > 0 {
        let n = batch.max(1).min(left);
        if one_call {
            // The text differs only with `n`, so SQLite prepares it once per batch size.
            let sql = format!("BEGIN IMMEDIATE; {} COMMIT;", insert.repeat(n));
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for _ in 0..n {
                query = query.bind(job).bind(data).bind(at);
            }
            query.execute(&mut conn).await?;
        } else {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            for _ in 0..n {
                sqlx::query!(
                    "INSERT INTO events (job_id, type, data, created_at) VALUES (?, 'step-progress', ?, ?)",
                    job,
                    data,
                    at
                )
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
        left -= n;
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    conn.close().await?;
    Ok(rate)
}

/// Connection options shared by the writer and the readers: WAL, a busy timeout, foreign keys.
fn connect_options(url_or_path: &str) -> Result<SqliteConnectOptions, StoreError> {
    let base = if url_or_path.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url_or_path)?
    } else {
        SqliteConnectOptions::new().filename(Path::new(url_or_path))
    };
    Ok(base
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true))
}
