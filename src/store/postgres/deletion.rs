//! Deleting a job on PostgreSQL (see `store::deletion` for the order and why): each node's
//! writer runs a deletion in a transaction of its own that locks the job's row first, so no
//! other node's writer can append to it meanwhile; any node finishes a deletion a crash left.

use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection, Row};
use uuid::Uuid;

use super::PgLog;
use crate::domain::time::format_at;
use crate::store::deletion::{
    Deleted, Deletion, EndpointPosition, MISSED_ERROR, MISSED_OUTCOME, missed, refusal,
};
use crate::store::{ApplyError, StoreError};

impl PgLog {
    /// Jobs whose deletion was recorded but not finished (their files may remain).
    pub(in crate::store) async fn pending_deletions(&self, limit: u32) -> Result<Vec<Uuid>, StoreError> {
        let rows = sqlx::query("SELECT job_id FROM deletions ORDER BY at LIMIT $1")
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
            "SELECT job_id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1
             AND status IN ('Completed', 'Failed', 'Cancelled') ORDER BY finished_at LIMIT $2",
        )
        .bind(format_at(before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().filter_map(|r| r.try_get::<String, _>(0).ok()?.parse().ok()).collect())
    }

    /// Whether the event `id` is still stored (not deleted with its job).
    pub(in crate::store) async fn event_exists(&self, id: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE id = $1)")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The id of the oldest event kept, `None` for an empty log.
    pub(in crate::store) async fn oldest_event_id(&self) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT min(id) FROM events").fetch_one(&self.pool).await?)
    }
}

/// The advisory lock key of job retention: "aurarten" in ASCII.
const RETENTION_LOCK: i64 = i64::from_be_bytes(*b"aurarten");

/// One node's turn at job retention: a session-level advisory lock on a connection of its own,
/// which ends with the session if the node dies mid-round.
pub struct RetentionTurn(PgConnection);

impl PgLog {
    /// This node's turn at retention, or `None` while another node has it.
    pub(in crate::store) async fn try_retention_turn(&self) -> Result<Option<RetentionTurn>, StoreError> {
        let mut conn = PgConnection::connect_with(&self.pool.connect_options()).await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RETENTION_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if !got {
            let _ = conn.close().await;
            return Ok(None);
        }
        Ok(Some(RetentionTurn(conn)))
    }
}

impl RetentionTurn {
    /// Ends the turn (closing the session releases the lock, even if the unlock fails).
    pub(in crate::store) async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(RETENTION_LOCK).execute(&mut self.0).await;
        let _ = self.0.close().await;
    }
}

/// Runs one history write on the writer's connections.
pub(in crate::store) async fn run(pool: &PgPool, deletion: Deletion) -> Result<Deleted, ApplyError> {
    match deletion {
        Deletion::Delete(job_id) => delete(pool, job_id).await,
        Deletion::Finish(job_id) => {
            sqlx::query("DELETE FROM deletions WHERE job_id = $1")
                .bind(job_id.to_string())
                .execute(pool)
                .await
                .map_err(StoreError::from)?;
            Ok(Deleted::default())
        }
    }
}

async fn delete(pool: &PgPool, job_id: Uuid) -> Result<Deleted, ApplyError> {
    let key = job_id.to_string();
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM jobs WHERE job_id = $1 FOR UPDATE")
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    if let Some(refused) = refusal(status.as_deref()) {
        return Err(refused);
    }
    let events: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, type FROM events WHERE job_id = $1 ORDER BY id")
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
             VALUES ($1, $2, $3, 0, NULL, $4, $5, 0, $6, $7)",
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
    sqlx::query("INSERT INTO deletions (job_id, at) VALUES ($1, $2)")
        .bind(&key)
        .bind(&at)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    let removed = sqlx::query("DELETE FROM events WHERE job_id = $1")
        .bind(&key)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .rows_affected();
    sqlx::query("DELETE FROM leases WHERE job_id = $1")
        .bind(&key)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    sqlx::query("DELETE FROM jobs WHERE job_id = $1")
        .bind(&key)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Deleted { events: removed })
}
