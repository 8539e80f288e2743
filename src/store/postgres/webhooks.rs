//! Webhooks on PostgreSQL: the same reads and writes as SQLite's (see `store::webhooks`), and
//! the lock that lets exactly one node deliver at a time.
//!
//! Registrations, rotations and deletions come from any node through its writer, each turn's in
//! one transaction. Deliveries come from the one node that holds a session-level advisory lock
//! ([`DELIVERY_LOCK`]) on a connection of its own ([`Held`]). That node confirms the lock on
//! that connection before every attempt and writes each attempt's outcome with the endpoint's
//! new position on that same connection, in one transaction: a write that commits was made while
//! the lock was held, so a node that takes over reads every position the previous one stored.
//!
//! An advisory lock ends with its session. A node that dies closes its socket and the lock is
//! free at once; a node cut off from the database is dropped by the server only once TCP
//! keepalives go unanswered for `grace` (set on the session, see [`PgLog::try_delivery_lock`]),
//! and by then it has stopped: its last confirmation was answered less than `grace` before, and
//! it never sends for longer than that without one. When the database itself restarts every
//! session ends at once, so a node that takes the lock waits `grace` before its first attempt:
//! whatever the previous holder had in flight has ended by then. Every query text differs from
//! its SQLite twin (their offline data share one folder).

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::PgLog;
use crate::domain::event::StoredEvent;
use crate::store::StoreError;
use crate::store::rows::EventRow;
use crate::store::webhook_writes::{
    Attempt, EndpointRow, KEPT_ATTEMPTS, PRUNE_EVERY, Write, WriteRequest, Written, answer_all,
};
use crate::sync::lock;

/// The advisory lock key of webhook delivery: "aurawhk1" in ASCII.
const DELIVERY_LOCK: i64 = 0x6175_7261_7768_6b31;

/// Longest wait for one query on the lock's connection; past it the lock counts as lost.
const LOCK_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The pause between two tries to record the last attempt of a lost lock.
const RECORD_RETRY: Duration = Duration::from_millis(200);

impl PgLog {
    pub(in crate::store) async fn webhooks(&self) -> Result<Vec<EndpointRow>, StoreError> {
        Ok(sqlx::query_as!(
            EndpointRow,
            "SELECT * FROM webhook_endpoints WHERE position >= 0::int8 ORDER BY created_at, id"
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub(in crate::store) async fn webhook(&self, id: Uuid) -> Result<Option<EndpointRow>, StoreError> {
        let key = id.to_string();
        Ok(sqlx::query_as!(EndpointRow, "SELECT * FROM webhook_endpoints WHERE id = ($1)::text", key)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub(in crate::store) async fn webhook_attempts(
        &self,
        id: Uuid,
        limit: u32,
    ) -> Result<Vec<Attempt>, StoreError> {
        let key = id.to_string();
        Ok(sqlx::query_as!(
            Attempt,
            "SELECT event_id, event_type, attempt, status_code, outcome, error, duration_ms, at, missed
             FROM webhook_deliveries WHERE endpoint_id = ($1)::text ORDER BY id DESC LIMIT $2",
            key,
            i64::from(limit)
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub(in crate::store) async fn webhook_tries(
        &self,
        id: Uuid,
        event_id: i64,
    ) -> Result<(i64, Option<String>), StoreError> {
        let key = id.to_string();
        let row = sqlx::query!(
            r#"SELECT count(*)::int8 AS "n!", min(at) AS "first?"
               FROM webhook_deliveries WHERE endpoint_id = ($1)::text AND event_id = $2"#,
            key,
            event_id
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.n, row.first))
    }

    pub(in crate::store) async fn events_of_types(
        &self,
        types: &[String],
        after: i64,
        through: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query_as!(
            EventRow,
            "SELECT id, job_id, type AS kind, data, created_at
             FROM events WHERE id > ($1)::int8 AND id <= $2 AND type = ANY($3::text[])
             ORDER BY id LIMIT $4",
            after,
            through,
            types,
            i64::from(limit)
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().filter_map(EventRow::into_event).collect())
    }

    /// Takes the delivery lock on a connection of its own, or `None` when another node holds
    /// it. The server drops the session once it has heard nothing from this node for `grace`
    /// (TCP keepalives and user timeout on the server's side of the socket), and not before.
    pub(in crate::store) async fn try_delivery_lock(
        &self,
        grace: Duration,
    ) -> Result<Option<Held>, StoreError> {
        let options = self.pool.connect_options();
        let mut conn = tokio::time::timeout(LOCK_QUERY_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| StoreError::LockLost)??;
        let idle = grace.as_secs().max(1).to_string();
        let user_timeout = (grace.as_millis() + 3000).to_string();
        sqlx::query(
            "SELECT set_config('tcp_keepalives_idle', $1, false), set_config('tcp_keepalives_interval', '1', false),
                    set_config('tcp_keepalives_count', '3', false), set_config('tcp_user_timeout', $2, false)",
        )
        .bind(idle)
        .bind(user_timeout)
        .execute(&mut conn)
        .await?;
        let got = sqlx::query_scalar!("SELECT pg_try_advisory_lock($1) AS \"got!\"", DELIVERY_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if !got {
            let _ = conn.close().await;
            return Ok(None);
        }
        Ok(Some(Held {
            conn: Mutex::new(Some(conn)),
            pool: self.pool.clone(),
            grace,
            confirmed: std::sync::Mutex::new(None),
        }))
    }
}

/// The delivery lock, held by the session of this connection; `None` once lost.
pub struct Held {
    conn: Mutex<Option<PgConnection>>,
    /// The node's pool, for the one write a lost lock still allows (see [`Held::write`]).
    pool: sqlx::PgPool,
    /// How long after this node's last confirmation no other node can have started delivering.
    grace: Duration,
    /// When the last confirmation that succeeded was sent.
    confirmed: std::sync::Mutex<Option<Instant>>,
}

impl Held {
    /// Checks on the lock's own connection that its session still holds the lock. A failure
    /// or a slow answer gives the lock up for good (the connection is dropped).
    pub(in crate::store) async fn confirm(&self) -> Result<(), StoreError> {
        let mut guard = self.conn.lock().await;
        let conn = guard.as_mut().ok_or(StoreError::LockLost)?;
        let sent = Instant::now();
        let held = tokio::time::timeout(
            LOCK_QUERY_TIMEOUT,
            sqlx::query_scalar!(
                r#"SELECT EXISTS (
                       SELECT 1 FROM pg_locks
                       WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                         AND ((classid::int8 << 32) | objid::int8) = $1 AND objsubid = 1
                   ) AS "held!""#,
                DELIVERY_LOCK
            )
            .fetch_one(&mut *conn),
        )
        .await;
        match held {
            Ok(Ok(true)) => {
                if let Ok(mut confirmed) = lock(&self.confirmed, "delivery lock confirmation") {
                    *confirmed = Some(sent);
                }
                Ok(())
            }
            Ok(Ok(false)) | Ok(Err(_)) | Err(_) => {
                *guard = None;
                Err(StoreError::LockLost)
            }
        }
    }

    /// Runs one write in a transaction of its own on the lock's connection.
    ///
    /// When that fails, the lock is lost and this node stops delivering; but an attempt that
    /// already ended (an endpoint that answered 2xx, above all) is still recorded, through the
    /// pool, if that can commit before any other node may start delivering: a node that takes
    /// the lock waits `grace` first, and it cannot have taken it before this node's last
    /// confirmation. Positions only ever grow, so even a commit that comes late moves nothing
    /// back; it can at worst leave the event to be sent again, as without it.
    pub(in crate::store) async fn write(&self, write: &Write) -> Result<Written, StoreError> {
        let result = self.write_holding(write).await;
        if result.is_err() && matches!(write, Write::Record { .. }) {
            self.record_after_loss(write).await;
        }
        result
    }

    /// The fallback of [`Held::write`]: the attempt's outcome through the pool, tried again
    /// every [`RECORD_RETRY`] for as long as no other node can be delivering (a database that is
    /// away for a moment, or frozen, often answers again within that time).
    async fn record_after_loss(&self, write: &Write) {
        // Not knowing when the lock was last confirmed is as not having confirmed it: nothing is
        // written through the pool.
        let last = lock(&self.confirmed, "delivery lock confirmation").ok().and_then(|c| *c);
        let Some(until) = last.map(|at| at + self.grace) else { return };
        let mut tries = 0u32;
        loop {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                tracing::warn!(tries, "the last attempt of a lost delivery lock is not recorded in time");
                return;
            };
            tries += 1;
            let recorded = tokio::time::timeout(left, async {
                let mut tx = self.pool.begin().await?;
                let written = write_one(&mut tx, write).await?;
                tx.commit().await?;
                Ok::<_, StoreError>(written)
            })
            .await;
            match recorded {
                Ok(Ok(_)) => {
                    tracing::info!(tries, "recorded the last attempt of a lost webhook delivery lock");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, tries, "recording the last attempt of a lost delivery lock failed")
                }
                Err(_) => {}
            }
            tokio::time::sleep(RECORD_RETRY.min(until.saturating_duration_since(Instant::now()))).await;
        }
    }

    async fn write_holding(&self, write: &Write) -> Result<Written, StoreError> {
        let mut guard = self.conn.lock().await;
        let conn = guard.as_mut().ok_or(StoreError::LockLost)?;
        let outcome = tokio::time::timeout(LOCK_QUERY_TIMEOUT, async {
            let mut tx = conn.begin().await?;
            let written = write_one(&mut tx, write).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(written)
        })
        .await;
        match outcome {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(e)) => {
                // The session may be gone; whether it is or not, this node stops delivering.
                *guard = None;
                Err(e)
            }
            Err(_) => {
                *guard = None;
                Err(StoreError::LockLost)
            }
        }
    }

    /// Ends the session, and with it the lock.
    pub(in crate::store) async fn release(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            let _ = tokio::time::timeout(LOCK_QUERY_TIMEOUT, conn.close()).await;
        }
    }
}

/// Runs the webhook writes of one turn of the writer in one transaction and answers each; a
/// failed transaction answers every one of them with the cause.
pub(in crate::store) async fn write_all(pool: &sqlx::PgPool, requests: Vec<WriteRequest>) {
    let outcome = async {
        let mut tx = pool.begin().await?;
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

async fn write_one(conn: &mut PgConnection, write: &Write) -> Result<Written, StoreError> {
    match write {
        Write::Create { id, url, events, secret, created_at, limit } => {
            // Two nodes registering at once must not pass the limit together.
            sqlx::query("LOCK TABLE webhook_endpoints IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *conn)
                .await?;
            let count = sqlx::query_scalar!("SELECT count(*)::int8 AS \"n!\" FROM webhook_endpoints")
                .fetch_one(&mut *conn)
                .await?;
            if count >= *limit {
                return Ok(Written::TooMany);
            }
            // Ids become visible in order, so every event after this one is still to come.
            let position = sqlx::query_scalar!("SELECT last_id FROM event_counter WHERE only_row")
                .fetch_optional(&mut *conn)
                .await?
                .unwrap_or(0);
            let key = id.to_string();
            let events = serde_json::to_string(events).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query!(
                "INSERT INTO webhook_endpoints (id, url, events, secret, position, created_at)
                 VALUES ($1, $2, $3, $4, $5, ($6)::text)",
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
            let done = sqlx::query!("DELETE FROM webhook_endpoints WHERE id = ($1)::text", key)
                .execute(&mut *conn)
                .await?;
            Ok(if done.rows_affected() == 0 { Written::NotFound } else { Written::Done })
        }
        Write::Rotate { id, secret, previous_until } => {
            let key = id.to_string();
            let done = sqlx::query!(
                "UPDATE webhook_endpoints SET previous_secret = secret, previous_until = $1, secret = $2
                 WHERE id = ($3)::text",
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
            let id = sqlx::query_scalar!(
                "INSERT INTO webhook_deliveries
                     (endpoint_id, event_id, event_type, attempt, status_code, outcome, error, duration_ms, at)
                 SELECT $1::text, $2::int8, $3::text, $4::int8, $5::int8, $6::text, $7::text, $8::int8, $9::text
                 WHERE EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = ($1)::text)
                 RETURNING id",
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
            .fetch_optional(&mut *conn)
            .await?;
            let Some(id) = id else { return Ok(Written::NotFound) };
            if id % PRUNE_EVERY == 0 {
                sqlx::query!(
                    "DELETE FROM webhook_deliveries WHERE endpoint_id = ($1)::text AND id <= coalesce(
                         (SELECT id FROM webhook_deliveries WHERE endpoint_id = ($1)::text
                          ORDER BY id DESC LIMIT 1 OFFSET $2), 0)",
                    key,
                    KEPT_ATTEMPTS
                )
                .execute(&mut *conn)
                .await?;
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

/// A position only ever grows.
async fn advance(conn: &mut PgConnection, key: &str, position: i64) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE webhook_endpoints SET position = greatest(position, $1) WHERE id = ($2)::text",
        position,
        key
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
