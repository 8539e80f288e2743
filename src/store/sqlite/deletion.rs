//! Deleting a job on SQLite (see `store::deletion` for the order and why): the single writer runs
//! each deletion in a transaction of its own, then gives a few free pages back to the file
//! (`auto_vacuum=incremental`); the reads that find what to delete use the read pool.

use sqlx::{Connection, Row, SqliteConnection};
use uuid::Uuid;

use super::SqliteLog;
use crate::domain::time::format_at;
use crate::store::deletion::{
    Deleted, Deletion, EndpointPosition, MISSED_ERROR, MISSED_OUTCOME, missed, refusal,
};
use crate::store::{ApplyError, StoreError};

/// Gives back at most 256 free pages to the file after each deletion: bounded, so the writer is
/// never held long; what is left goes after the next one (or with `aura check --compact`).
const INCREMENTAL_VACUUM: &str = "PRAGMA incremental_vacuum(256)";

impl SqliteLog {
    /// Jobs whose deletion was recorded but not finished (their files may remain).
    pub(in crate::store) async fn pending_deletions(&self, limit: u32) -> Result<Vec<Uuid>, StoreError> {
        let rows = sqlx::query("SELECT job_id FROM deletions ORDER BY at LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().filter_map(|r| r.try_get::<String, _>(0).ok()?.parse().ok()).collect())
    }

    /// Finished jobs that finished before `before`, oldest first: what retention deletes.
    pub(in crate::store) async fn finished_before(
        &self,
        before: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        // `finished_at` is fixed-width RFC 3339 UTC text, so text order is time order.
        let rows = sqlx::query(
            "SELECT job_id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?
             AND status IN ('Completed', 'Failed', 'Cancelled') ORDER BY finished_at LIMIT ?",
        )
        .bind(format_at(before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().filter_map(|r| r.try_get::<String, _>(0).ok()?.parse().ok()).collect())
    }

    /// Whether the event `id` is still stored (not deleted with its job).
    pub(in crate::store) async fn event_exists(&self, id: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE id = ?)")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The id of the oldest event kept, `None` for an empty log.
    pub(in crate::store) async fn oldest_event_id(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT min(id) FROM events").fetch_one(&self.pool).await?)
    }
}

/// Runs one history write on the writer's connection.
pub(in crate::store) async fn run(
    conn: &mut SqliteConnection,
    deletion: Deletion,
) -> Result<Deleted, ApplyError> {
    match deletion {
        Deletion::Delete(job_id) => {
            let deleted = delete(conn, job_id).await?;
            // Best effort: a failure costs file size, not correctness.
            if let Err(e) = sqlx::query(INCREMENTAL_VACUUM).execute(&mut *conn).await {
                tracing::warn!(error = %e, "giving free pages back to the file failed");
            }
            Ok(deleted)
        }
        Deletion::Finish(job_id) => {
            sqlx::query("DELETE FROM deletions WHERE job_id = ?")
                .bind(job_id.to_string())
                .execute(&mut *conn)
                .await
                .map_err(StoreError::from)?;
            Ok(Deleted::default())
        }
    }
}

async fn delete(conn: &mut SqliteConnection, job_id: Uuid) -> Result<Deleted, ApplyError> {
    let key = job_id.to_string();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(StoreError::from)?;
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM jobs WHERE job_id = ?")
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    if let Some(refused) = refusal(status.as_deref()) {
        return Err(refused);
    }
    let events: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, type FROM events WHERE job_id = ? ORDER BY id")
            .bind(&key)
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    let endpoints: Vec<EndpointPosition> =
        sqlx::query_as::<_, (String, String, i64)>("SELECT id, events, position FROM webhook_endpoints")
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::from)?
            .into_iter()
            .map(|(id, types, position)| (id, serde_json::from_str(&types).unwrap_or_default(), position))
            .collect();
    let at = format_at(time::OffsetDateTime::now_utc());
    for (endpoint, count, (last, kind)) in missed(&events, &endpoints) {
        sqlx::query(
            "INSERT INTO webhook_deliveries
             (endpoint_id, event_id, event_type, attempt, status_code, outcome, error, duration_ms, at, missed)
             VALUES (?, ?, ?, 0, NULL, ?, ?, 0, ?, ?)",
        )
        .bind(&endpoint)
        .bind(last)
        .bind(&kind)
        .bind(MISSED_OUTCOME)
        .bind(MISSED_ERROR)
        .bind(&at)
        .bind(count)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    }
    sqlx::query("INSERT INTO deletions (job_id, at) VALUES (?, ?)")
        .bind(&key)
        .bind(&at)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    let removed = sqlx::query("DELETE FROM events WHERE job_id = ?")
        .bind(&key)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .rows_affected();
    sqlx::query("DELETE FROM jobs WHERE job_id = ?")
        .bind(&key)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Deleted { events: removed })
}
