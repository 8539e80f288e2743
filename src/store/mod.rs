//! The store, SQLite or PostgreSQL: the only module that speaks SQL, and the only one that knows
//! which database runs.
//!
//! Everything else sees Aura's own types ([`JobState`], [`StoredEvent`], [`EventFilter`]) and
//! this front: [`Store`] holds one backend and each of its methods is one `match` that hands the
//! call to `sqlite/` or `postgres/`. Those two folders have the same file names (`reads`, `writer`,
//! `webhooks`, `credentials`, `leases`, `repair`, `export`, `import`, `tail`, `preflight`,
//! `bench`), so a diff of two siblings shows every difference; what both backends do alike sits
//! here, in `writer` (the queue and the decisions), `webhook_writes` and `rows`; `export` and
//! `import` are the log as NDJSON and back. Writes go through one writer task per process that
//! commits in groups; reads use a pool beside it.

pub mod bench;
mod credentials;
mod deletion;
pub mod export;
pub mod import;
pub mod postgres;
mod rows;
mod sqlite;
pub mod webhook_writes;
pub mod webhooks;
pub mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Database, ServeConfig, Synchronous};
use crate::domain::command::Command;
use crate::domain::event::StoredEvent;
use crate::domain::job::{JobState, JobStatus};
pub use credentials::{Credentials, TokenRow};
pub use deletion::Deleted;
pub use postgres::writer::Node;
pub use writer::{Applied, LeaseOp, Refusal};

use postgres::PgLog;
use sqlite::SqliteLog;

/// How durable the writer's commits are (`AURA_SYNC`): SQLite's `synchronous`, PostgreSQL's
/// `synchronous_commit` on the writer's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit: a committed event survives power loss. The default.
    Full,
    /// fsync at checkpoints only: survives a process crash, may lose the newest commits on power loss.
    Normal,
}

/// What went wrong in the store. The message says what failed and carries its source, for the
/// log; the HTTP edge never sends it (it answers a fixed 500).
/// Why a command appended nothing: the job's state refused it, or the store could not tell (the
/// write may or may not have committed; what did reaches every stream through the log).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

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

/// A replay page framed by the database (see [`Store::framed_after`]).
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

/// The database this process opened: one SQLite file (the embedded default), or a PostgreSQL
/// database several nodes share. Built once per process and kept behind the store's `Arc`, so
/// the size difference between the two costs nothing.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Sqlite(SqliteLog),
    Postgres { log: PgLog, node: Node },
}

/// A database Aura must not use as it is; the message is one line naming it and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unusable(pub String);

/// What the writer hands the fan-out after each commit, in commit (and so id) order.
pub type CommitFeed = mpsc::UnboundedReceiver<Vec<Arc<StoredEvent>>>;

impl From<Synchronous> for Durability {
    fn from(s: Synchronous) -> Self {
        match s {
            Synchronous::Full => Durability::Full,
            Synchronous::Normal => Durability::Normal,
        }
    }
}

impl Node {
    /// This node as `settings` name it (`AURA_NODE_NAME`, `AURA_LEASE_SECS`), for the leases of a
    /// shared store.
    pub fn configured(settings: &ServeConfig) -> Node {
        match &settings.node_name {
            Some(name) => Node::new(name, settings.lease_secs),
            None => Node::default_for_process(settings.lease_secs),
        }
    }
}

/// Checks the database before the store opens it, and never writes it: `Ok` when it is absent or
/// empty (the store creates it) or fit to use; else one line saying what to do.
pub async fn inspect(database: &Database) -> Result<(), Unusable> {
    match database {
        Database::Sqlite(location) => sqlite::preflight::inspect(location).await,
        Database::Postgres(url) => postgres::preflight::inspect(url).await,
    }
}

/// The database's own full check of its pages (`aura check`): `["ok"]` when healthy, else each
/// problem found.
pub async fn integrity_check(database: &Database) -> Result<Vec<String>, StoreError> {
    match database {
        Database::Sqlite(location) => sqlite::preflight::integrity_check(location).await,
        Database::Postgres(url) => postgres::preflight::integrity_check(url).await,
    }
}

/// `aura backup`: a consistent copy of the database in the file `target`, taken while a server
/// may be writing.
pub async fn backup(database: &Database, target: &Path) -> Result<(), StoreError> {
    match database {
        Database::Sqlite(location) => sqlite::preflight::backup(location, target).await,
        Database::Postgres(url) => postgres::preflight::backup(url, target).await,
    }
}

/// Whether the database names a file that is not there (`aura check` and `aura backup` refuse
/// to create one).
pub fn is_missing(database: &Database) -> bool {
    match database {
        Database::Sqlite(location) => sqlite::preflight::missing(location),
        Database::Postgres(url) => postgres::preflight::missing(url),
    }
}

impl Store {
    /// Opens (creating if needed) the database, applies migrations and starts the writer task.
    /// A shared database is opened as a node with a default name and lease time.
    pub async fn open(
        database: impl Into<Database>,
        durability: Durability,
    ) -> Result<(Store, CommitFeed), StoreError> {
        Store::open_node(database, durability, Node::default_for_process(30)).await
    }

    /// [`Store::open`], naming the node (for its leases) when the database is shared.
    pub async fn open_node(
        database: impl Into<Database>,
        durability: Durability,
        node: Node,
    ) -> Result<(Store, CommitFeed), StoreError> {
        let close = CancellationToken::new();
        let (backend, spawned) = match database.into() {
            Database::Sqlite(location) => {
                let (log, spawned) = SqliteLog::open(&location, durability, close.clone()).await?;
                (Backend::Sqlite(log), spawned)
            }
            Database::Postgres(url) => {
                let (log, spawned) =
                    postgres::open_node(&url, node.clone(), durability, close.clone()).await?;
                (Backend::Postgres { log, node }, spawned)
            }
        };
        let store = Store {
            inner: Arc::new(Inner {
                backend,
                writer: spawned.queue,
                close,
                writer_done: tokio::sync::Mutex::new(Some(spawned.done)),
            }),
        };
        Ok((store, spawned.feed))
    }

    /// This node, when the store is shared; `None` when one process owns the database.
    pub fn node(&self) -> Option<&Node> {
        match &self.inner.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres { node, .. } => Some(node),
        }
    }

    /// The tokens and sessions this database keeps, on the store's own connections; `None`
    /// when it keeps none (they are then `access`'s tokens file).
    pub fn credentials(&self) -> Option<Credentials> {
        match &self.inner.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres { log, .. } => Some(Credentials::from(log.credentials())),
        }
    }

    /// Sends one command to the writer and waits for its outcome.
    async fn send(&self, job_id: Uuid, lease: LeaseOp, command: Command) -> Result<Applied, ApplyError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(writer::Work::Append(writer::Request { job_id, command, lease, reply }))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Store::apply`] with what the command does to the job's lease (a shared store only).
    pub async fn apply_leased(
        &self,
        job_id: Uuid,
        lease: LeaseOp,
        command: Command,
    ) -> Result<Applied, ApplyError> {
        self.send(job_id, lease, command).await
    }

    /// Decides `command` against the job's current state and appends what it returns,
    /// atomically.
    pub async fn apply(&self, job_id: Uuid, command: Command) -> Result<Applied, ApplyError> {
        self.send(job_id, LeaseOp::Keep, command).await
    }

    /// Sends one history write to the writer and waits for its outcome.
    async fn send_deletion(&self, deletion: deletion::Deletion) -> Result<Deleted, ApplyError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(writer::Work::Delete(deletion::DeletionRequest { deletion, reply }))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Deletes a finished job's events and row in one transaction that records the deletion
    /// (see `deletion`); refused when there is no such job or it has not finished. Its files
    /// are the caller's to remove, then [`Store::finish_deletion`].
    pub async fn delete_job(&self, job_id: Uuid) -> Result<Deleted, ApplyError> {
        self.send_deletion(deletion::Deletion::Delete(job_id)).await
    }

    /// Forgets a recorded deletion once the job's files are gone.
    pub async fn finish_deletion(&self, job_id: Uuid) -> Result<(), StoreError> {
        match self.send_deletion(deletion::Deletion::Finish(job_id)).await {
            Ok(_) => Ok(()),
            Err(ApplyError::Store(e)) => Err(e),
            Err(ApplyError::Refused(r)) => Err(StoreError::Corrupt(r.to_string())),
        }
    }

    /// Jobs whose deletion was recorded but whose files may remain (a crash came in between).
    pub async fn pending_deletions(&self, limit: u32) -> Result<Vec<Uuid>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.pending_deletions(limit).await,
            Backend::Postgres { log, .. } => log.pending_deletions(limit).await,
        }
    }

    /// Finished jobs that finished before `before`, oldest first (`AURA_JOB_RETENTION`).
    pub async fn finished_before(
        &self,
        before: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.finished_before(before, limit).await,
            Backend::Postgres { log, .. } => log.finished_before(before, limit).await,
        }
    }

    /// Whether the event `id` is still stored (its job was not deleted since it was read).
    pub async fn event_exists(&self, id: i64) -> Result<bool, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.event_exists(id).await,
            Backend::Postgres { log, .. } => log.event_exists(id).await,
        }
    }

    /// The oldest event kept (the history's start since deletions), `None` for an empty log.
    pub async fn oldest_event_id(&self) -> Result<Option<i64>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.oldest_event_id().await,
            Backend::Postgres { log, .. } => log.oldest_event_id().await,
        }
    }

    /// Renews this node's leases of `jobs` (id, attempt); returns those it no longer holds.
    /// Nothing to do when one process owns the database.
    pub async fn renew_leases(&self, jobs: &[(Uuid, u32)]) -> Result<Vec<Uuid>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.renew_leases(jobs).await,
            Backend::Postgres { log, node } => log.renew_leases(node, jobs).await,
        }
    }

    /// Jobs whose lease expired (their node stopped renewing it).
    pub async fn expired_leases(&self, limit: u32) -> Result<Vec<Uuid>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.expired_leases(limit).await,
            Backend::Postgres { log, .. } => log.expired_leases(limit).await,
        }
    }

    /// Takes a job's new attempt that waits for a worker node.
    pub async fn take_waiting(&self) -> Result<Option<Uuid>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.take_waiting().await,
            Backend::Postgres { log, node } => log.take_waiting(node).await,
        }
    }

    /// Lets this node's leases expire now, at a clean shutdown.
    pub async fn release_leases(&self) -> Result<(), StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.release_leases().await,
            Backend::Postgres { log, node } => log.release_leases(node).await,
        }
    }

    /// Checks that the database answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.ping().await,
            Backend::Postgres { log, .. } => log.ping().await,
        }
    }

    pub async fn job(&self, job_id: Uuid) -> Result<Option<JobState>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.job(job_id).await,
            Backend::Postgres { log, .. } => log.job(job_id).await,
        }
    }

    /// Completed jobs that still have their output and finished before `before`, oldest first:
    /// the videos `AURA_OUTPUT_RETENTION` deletes.
    pub async fn outputs_finished_before(
        &self,
        before: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<JobState>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.outputs_finished_before(before, limit).await,
            Backend::Postgres { log, .. } => log.outputs_finished_before(before, limit).await,
        }
    }

    /// Jobs newest first, optionally of one status and owner, older than the cursor `before`.
    pub async fn list_jobs(
        &self,
        owner: Option<&str>,
        status: Option<JobStatus>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<JobPage, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.list_jobs(owner, status, before, limit).await,
            Backend::Postgres { log, .. } => log.list_jobs(owner, status, before, limit).await,
        }
    }

    /// Up to `limit` events with id greater than `after`, in id order.
    pub async fn events_after(
        &self,
        filter: &EventFilter,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.events_after(filter, after, limit).await,
            Backend::Postgres { log, .. } => log.filtered_events_after(filter, after, limit).await,
        }
    }

    /// The oldest Queued job (by creation order), the next one a worker should claim.
    pub async fn next_queued(&self) -> Result<Option<Uuid>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.next_queued().await,
            Backend::Postgres { log, .. } => log.next_queued().await,
        }
    }

    /// Up to `limit` events after `after`, already framed for SSE by the database in one row
    /// (a replay then costs one round trip per page instead of one per event); `None` when the
    /// page must be read row by row (see each backend's `reads`).
    pub async fn framed_after(
        &self,
        filter: &EventFilter,
        after: i64,
        limit: u32,
    ) -> Result<Option<FramedPage>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.framed_after(filter, after, limit).await,
            Backend::Postgres { log, .. } => log.framed_after(filter, after, limit).await,
        }
    }

    /// The highest event id committed so far (0 for an empty log).
    pub async fn max_event_id(&self) -> Result<i64, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.max_event_id().await,
            Backend::Postgres { log, .. } => log.max_event_id().await,
        }
    }

    /// How many jobs there are in each status.
    pub async fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.job_counts().await,
            Backend::Postgres { log, .. } => log.job_counts().await,
        }
    }

    /// Every job id that has a `jobs` row.
    pub async fn job_ids(&self) -> Result<Vec<String>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.job_ids().await,
            Backend::Postgres { log, .. } => log.job_ids().await,
        }
    }

    /// Replaces the whole `jobs` table with the given states, in one transaction
    /// (`aura check --repair`: the log is the truth). Each state comes with its first event id;
    /// `through` is the last event id the states were folded from (on a shared store, where nodes
    /// may be writing, the repair is refused if the log has grown since; one process that owns
    /// the database holds the data folder meanwhile).
    pub async fn rebuild_jobs(&self, jobs: &[(i64, JobState)], through: i64) -> Result<(), StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.rebuild_jobs(jobs).await,
            Backend::Postgres { log, .. } => log.rebuild_jobs(jobs, through).await,
        }
    }

    /// Gives the space of deleted rows back to the disk, offline (`aura check --compact`): the
    /// file's size before and after; `None` when the database does that by itself.
    pub async fn compact(&self) -> Result<Option<(u64, u64)>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.compact().await.map(Some),
            Backend::Postgres { log, .. } => log.compact().await,
        }
    }

    /// Commits what is queued, closes the write connection, then the readers. Appends after
    /// this are refused with [`StoreError::Closed`].
    pub async fn close(&self) {
        self.inner.close.cancel();
        if let Some(done) = self.inner.writer_done.lock().await.take()
            && tokio::time::timeout(Duration::from_secs(5), done).await.is_err()
        {
            tracing::warn!("the store writer did not finish within 5 s");
        }
        match &self.inner.backend {
            Backend::Sqlite(log) => log.close().await,
            Backend::Postgres { log, .. } => log.close().await,
        }
    }
}

/// One node's turn at job retention: with a shared database one node at a time has it; with one
/// process that owns the file, always.
pub struct RetentionTurn(Option<postgres::deletion::RetentionTurn>);

impl RetentionTurn {
    /// Ends the turn.
    pub async fn release(self) {
        if let Some(turn) = self.0 {
            turn.release().await;
        }
    }
}

impl Store {
    /// This node's turn at job retention, or `None` while another node has it.
    pub async fn retention_turn(&self) -> Result<Option<RetentionTurn>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(_) => Ok(Some(RetentionTurn(None))),
            Backend::Postgres { log, .. } => {
                Ok(log.try_retention_turn().await?.map(|t| RetentionTurn(Some(t))))
            }
        }
    }
}
