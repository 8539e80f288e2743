//! `aura import` on SQLite: one `BEGIN IMMEDIATE` transaction on a write connection of its own
//! (the import holds the data folder, so no server is writing). Events are inserted with their
//! ids; AUTOINCREMENT's `sqlite_sequence` follows the highest explicit id by itself, so the
//! next append gets a higher one.

use sqlx::sqlite::{Sqlite, SqlitePool, SqlitePoolOptions};
use sqlx::{QueryBuilder, Transaction};

use super::SqliteLog;
use crate::domain::job::JobState;
use crate::store::StoreError;
use crate::store::export::ImportedEvent;

/// An import's open transaction.
pub(in crate::store) struct SqliteImport {
    /// One connection: the transaction's.
    pool: SqlitePool,
    tx: Transaction<'static, Sqlite>,
    /// What the database held when the transaction began: (has events, has jobs, the highest id
    /// it has given out).
    pub(in crate::store) contents: (bool, bool, i64),
}

impl SqliteLog {
    /// Opens the import's transaction and reads what the database holds.
    pub(in crate::store) async fn begin_import(&self) -> Result<SqliteImport, StoreError> {
        let pool =
            SqlitePoolOptions::new().max_connections(1).connect_with(self.write_options.clone()).await?;
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let (has_events, has_jobs, last_id): (bool, bool, i64) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM events), EXISTS (SELECT 1 FROM jobs),
                    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok(SqliteImport { pool, tx, contents: (has_events, has_jobs, last_id) })
    }
}

impl SqliteImport {
    /// Inserts `events` with their ids in one statement.
    pub(in crate::store) async fn insert(&mut self, events: &[ImportedEvent]) -> Result<(), StoreError> {
        let mut insert =
            QueryBuilder::<Sqlite>::new("INSERT INTO events (id, job_id, type, data, created_at) ");
        insert.push_values(events, |mut row, e| {
            row.push_bind(e.id)
                .push_bind(e.job_id.to_string())
                .push_bind(e.kind.as_str())
                .push_bind(e.data.as_str())
                .push_bind(e.created_at.as_str());
        });
        insert.build().execute(&mut *self.tx).await?;
        Ok(())
    }

    /// Writes the `jobs` rows and commits; `sqlite_sequence` already stands at `highest`.
    pub(in crate::store) async fn finish(
        mut self,
        jobs: &[(i64, JobState)],
        highest: i64,
    ) -> Result<(), StoreError> {
        super::repair::insert_jobs(&mut self.tx, jobs).await?;
        let seq: i64 =
            sqlx::query_scalar("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)")
                .fetch_one(&mut *self.tx)
                .await?;
        if seq < highest {
            return Err(StoreError::Corrupt(format!(
                "the id counter stands at {seq}, below the highest imported id {highest}"
            )));
        }
        self.tx.commit().await?;
        self.pool.close().await;
        Ok(())
    }
}
