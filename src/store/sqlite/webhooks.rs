//! Webhooks on SQLite: the reads of endpoints, attempts and matching events on the read pool,
//! and the writes the single writer runs in a transaction of its own after each group of appends
//! (so webhooks add no second writer that appends would wait for, and a registration's limit
//! check and insert cannot race with another registration). The process that owns the file always
//! holds the delivery lock.

use sqlx::{Connection, SqliteConnection};
use uuid::Uuid;

use super::SqliteLog;
use crate::domain::event::StoredEvent;
use crate::store::webhook_writes::{
    Attempt, EndpointRow, KEPT_ATTEMPTS, PRUNE_EVERY, Write, WriteRequest, Written, answer_all,
};
use crate::store::{StoreError, rows};

impl SqliteLog {
    /// Every endpoint, oldest first.
    pub(in crate::store) async fn webhooks(&self) -> Result<Vec<EndpointRow>, StoreError> {
        let pool = &self.pool;
        Ok(sqlx::query_as!(EndpointRow, "SELECT * FROM webhook_endpoints ORDER BY created_at, id")
            .fetch_all(pool)
            .await?)
    }

    pub(in crate::store) async fn webhook(&self, id: Uuid) -> Result<Option<EndpointRow>, StoreError> {
        let pool = &self.pool;
        let key = id.to_string();
        Ok(sqlx::query_as!(EndpointRow, "SELECT * FROM webhook_endpoints WHERE id = ?", key)
            .fetch_optional(pool)
            .await?)
    }

    /// The newest `limit` attempts of an endpoint, newest first.
    pub(in crate::store) async fn webhook_attempts(
        &self,
        id: Uuid,
        limit: u32,
    ) -> Result<Vec<Attempt>, StoreError> {
        let pool = &self.pool;
        let key = id.to_string();
        let limit = i64::from(limit);
        Ok(sqlx::query_as!(
            Attempt,
            "SELECT event_id, event_type, attempt, status_code, outcome, error, duration_ms, at, missed
             FROM webhook_deliveries WHERE endpoint_id = ? ORDER BY id DESC LIMIT ?",
            key,
            limit
        )
        .fetch_all(pool)
        .await?)
    }

    /// How many attempts an event has had at an endpoint, and when the first one started: a
    /// retry schedule survives a restart.
    pub(in crate::store) async fn webhook_tries(
        &self,
        id: Uuid,
        event_id: i64,
    ) -> Result<(i64, Option<String>), StoreError> {
        let pool = &self.pool;
        let key = id.to_string();
        let row = sqlx::query!(
            r#"SELECT count(*) AS "n!: i64", min(at) AS "first: String"
               FROM webhook_deliveries WHERE endpoint_id = ? AND event_id = ?"#,
            key,
            event_id
        )
        .fetch_one(pool)
        .await?;
        Ok((row.n, row.first))
    }

    /// Up to `limit` events of the given types with ids in `after+1 ..= through`, in id order.
    pub(in crate::store) async fn events_of_types(
        &self,
        types: &[String],
        after: i64,
        through: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let pool = &self.pool;
        let types = serde_json::to_string(types).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let limit = i64::from(limit);
        let rows = sqlx::query_as!(
            rows::EventRow,
            "SELECT id AS \"id!\", job_id, type AS kind, data, created_at
             FROM events WHERE id > ? AND id <= ? AND type IN (SELECT value FROM json_each(?))
             ORDER BY id LIMIT ?",
            after,
            through,
            types,
            limit
        )
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().filter_map(rows::EventRow::into_event).collect())
    }
}

/// Runs the writes of one turn of the writer in one transaction and answers each. A failed
/// transaction answers every one of them with the cause.
pub(in crate::store) async fn write_all(
    conn: &mut SqliteConnection,
    requests: impl Iterator<Item = WriteRequest>,
) {
    let requests: Vec<WriteRequest> = requests.collect();
    let outcome = async {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut results = Vec::with_capacity(requests.len());
        for request in &requests {
            results.push(write_one(&mut tx, request.write()).await?);
        }
        tx.commit().await?;
        Ok::<_, StoreError>(results)
    }
    .await;
    answer_all(requests, outcome);
}

async fn write_one(conn: &mut SqliteConnection, write: &Write) -> Result<Written, StoreError> {
    match write {
        Write::Create { id, url, events, secret, created_at, limit } => {
            let count = sqlx::query_scalar!("SELECT count(*) AS \"n!: i64\" FROM webhook_endpoints")
                .fetch_one(&mut *conn)
                .await?;
            if count >= *limit {
                return Ok(Written::TooMany);
            }
            let position = sqlx::query_scalar!("SELECT coalesce(max(id), 0) AS \"id!: i64\" FROM events")
                .fetch_one(&mut *conn)
                .await?;
            let key = id.to_string();
            let events = serde_json::to_string(events).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query!(
                "INSERT INTO webhook_endpoints (id, url, events, secret, position, created_at)
                 VALUES (?, ?, ?, ?, ?, ?)",
                key,
                url,
                events,
                secret,
                position,
                created_at
            )
            .execute(&mut *conn)
            .await?;
            Ok(Written::Created { position })
        }
        Write::Delete { id } => {
            let key = id.to_string();
            let done =
                sqlx::query!("DELETE FROM webhook_endpoints WHERE id = ?", key).execute(&mut *conn).await?;
            Ok(if done.rows_affected() == 0 { Written::NotFound } else { Written::Done })
        }
        Write::Rotate { id, secret, previous_until } => {
            let key = id.to_string();
            let done = sqlx::query!(
                "UPDATE webhook_endpoints SET previous_secret = secret, previous_until = ?, secret = ? WHERE id = ?",
                previous_until,
                secret,
                key
            )
            .execute(&mut *conn)
            .await?;
            Ok(if done.rows_affected() == 0 { Written::NotFound } else { Written::Done })
        }
        Write::Record { endpoint, attempt: a, advance_to } => {
            let key = endpoint.to_string();
            // The endpoint may have been deleted while this attempt ran: then nothing is logged.
            let done = sqlx::query!(
                "INSERT INTO webhook_deliveries
                     (endpoint_id, event_id, event_type, attempt, status_code, outcome, error, duration_ms, at)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 WHERE EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = ?1)",
                key,
                a.event_id,
                a.event_type,
                a.attempt,
                a.status_code,
                a.outcome,
                a.error,
                a.duration_ms,
                a.at
            )
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() == 0 {
                return Ok(Written::NotFound);
            }
            // Pruning reads past the kept rows of this endpoint in the index; once in a while
            // is enough to bound the log.
            if done.last_insert_rowid() % PRUNE_EVERY == 0 {
                prune(conn, &key).await?;
            }
            if let Some(position) = advance_to {
                advance(conn, &key, *position).await?;
            }
            Ok(Written::Done)
        }
        Write::Advance { endpoint, position } => {
            advance(conn, &endpoint.to_string(), *position).await?;
            Ok(Written::Done)
        }
    }
}

/// Deletes an endpoint's attempts but the newest [`KEPT_ATTEMPTS`].
async fn prune(conn: &mut SqliteConnection, key: &str) -> Result<(), StoreError> {
    let keep = KEPT_ATTEMPTS;
    sqlx::query!(
        "DELETE FROM webhook_deliveries WHERE endpoint_id = ?1 AND id <= coalesce(
                     (SELECT id FROM webhook_deliveries WHERE endpoint_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2), 0)",
        key,
        keep
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A position only ever grows.
async fn advance(conn: &mut SqliteConnection, key: &str, position: i64) -> Result<(), StoreError> {
    sqlx::query!("UPDATE webhook_endpoints SET position = max(position, ?) WHERE id = ?", position, key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
