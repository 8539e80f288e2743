//! SQLite: the embedded default. One file, one process: a single writer task owns the only write
//! connection and commits in groups (see [`writer`]); reads use a small pool of read-only
//! connections that WAL lets run beside it.
//!
//! Its files have the same names as `postgres/`'s, so that a diff of two siblings shows every
//! difference between the backends; where SQLite needs nothing (leases, a tail, credentials),
//! its file says why.

pub(super) mod bench;
pub(super) mod credentials;
pub(super) mod deletion;
pub(super) mod export;
pub(super) mod import;
pub(super) mod leases;
pub(super) mod preflight;
pub(super) mod reads;
pub(super) mod repair;
pub(super) mod tail;
pub(super) mod webhooks;
pub(super) mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tokio_util::sync::CancellationToken;

use super::writer::Spawned;
use super::{Durability, StoreError};

/// The SQLite file: its read pool, and the options of its write connection (the writer's, and a
/// repair's).
pub(super) struct SqliteLog {
    pool: SqlitePool,
    write_options: SqliteConnectOptions,
}

impl SqliteLog {
    /// Opens (creating if needed) the file `location` (a path or a `sqlite:` URL), applies
    /// migrations and starts the writer task, which ends once `close` is cancelled.
    pub(super) async fn open(
        location: &str,
        durability: Durability,
        close: CancellationToken,
    ) -> Result<(SqliteLog, Spawned), StoreError> {
        let options = connect_options(location)?;
        if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Sqlx(sqlx::Error::Io(e)))?;
        }
        // Room for every id a large group returns, so SQLite's thread never waits on this one.
        // A new file gives pages freed by deletions back (`incremental_vacuum` after each one);
        // set before the migrations create any table, and a no-op on an older file (see
        // `aura check --compact`).
        let write_options =
            options.clone().row_buffer_size(1024).auto_vacuum(SqliteAutoVacuum::Incremental).synchronous(
                match durability {
                    Durability::Full => SqliteSynchronous::Full,
                    Durability::Normal => SqliteSynchronous::Normal,
                },
            );
        let mut conn = write_options.clone().connect().await?;
        sqlx::migrate!().run(&mut conn).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options.read_only(true))
            .await?;
        let spawned = writer::spawn(conn, close);
        Ok((SqliteLog { pool, write_options }, spawned))
    }

    /// Closes the read pool (the writer closes its own connection).
    pub(super) async fn close(&self) {
        self.pool.close().await;
    }
}

/// Connection options shared by the writer and the readers: WAL, a busy timeout, foreign keys.
pub(in crate::store) fn connect_options(url_or_path: &str) -> Result<SqliteConnectOptions, StoreError> {
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
