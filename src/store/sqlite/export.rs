//! `aura export` on SQLite: every page read in one read transaction on a connection of the read
//! pool. WAL gives that transaction the file as it was at its first read, so a job deleted or
//! appended to meanwhile is exported as it was then, whole.

use sqlx::Transaction;
use sqlx::sqlite::Sqlite;
use uuid::Uuid;

use super::SqliteLog;
use crate::domain::event::StoredEvent;
use crate::store::StoreError;
use crate::store::rows::EventRow;

/// An export's read transaction.
pub(in crate::store) struct SqliteSnapshot {
    tx: Transaction<'static, Sqlite>,
}

type Row = (i64, String, String, String, String);

impl SqliteLog {
    /// Begins the read transaction (its view is fixed by its first read).
    pub(in crate::store) async fn snapshot(&self) -> Result<SqliteSnapshot, StoreError> {
        Ok(SqliteSnapshot { tx: self.pool.begin().await? })
    }
}

impl SqliteSnapshot {
    /// The highest event id in the snapshot (0 for an empty log).
    pub(in crate::store) async fn max_event_id(&mut self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM events").fetch_one(&mut *self.tx).await?)
    }

    /// Up to `limit` events after `after` in id order: every job's, or those of `jobs`.
    pub(in crate::store) async fn events_after(
        &mut self,
        jobs: Option<&[Uuid]>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows: Vec<Row> =
            match jobs {
                None => sqlx::query_as(
                    "SELECT id, job_id, type, data, created_at FROM events WHERE id > ? ORDER BY id LIMIT ?",
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&mut *self.tx)
                .await?,
                Some(jobs) => {
                    let list = serde_json::to_string(&jobs.iter().map(Uuid::to_string).collect::<Vec<_>>())
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    sqlx::query_as(
                        "SELECT id, job_id, type, data, created_at FROM events
                     WHERE id > ? AND job_id IN (SELECT value FROM json_each(?)) ORDER BY id LIMIT ?",
                    )
                    .bind(after)
                    .bind(list)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *self.tx)
                    .await?
                }
            };
        Ok(rows
            .into_iter()
            .filter_map(|(id, job_id, kind, data, created_at)| {
                EventRow { id, job_id, kind, data, created_at }.into_event()
            })
            .collect())
    }
}
