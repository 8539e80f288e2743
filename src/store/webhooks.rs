//! Webhook endpoints, their stored positions and their delivery log: the SQL of webhooks.
//!
//! Reads use the pool like every other read. Writes are sent to the single writer task (see
//! [`super::writer::Work`]), which runs them in a transaction of their own after each group of
//! appends: webhooks add no second writer that appends would wait for, and a registration's
//! limit check and insert cannot race with another registration.
//!
//! With PostgreSQL the same reads and writes run there (see `postgres::webhooks`), and the
//! writes of deliveries (attempts and positions) go through the [`DeliveryLock`] instead: the
//! right to deliver that exactly one node holds at a time.

use sqlx::{Connection, SqliteConnection};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Backend, Store, StoreError, rows, sqlite_pool};
use crate::domain::event::StoredEvent;

/// Attempts kept per endpoint in the delivery log; older ones are pruned as new ones come.
pub const KEPT_ATTEMPTS: i64 = 1000;
/// The log is pruned at every this many attempts (of all endpoints), so it holds a little more
/// than [`KEPT_ATTEMPTS`] per endpoint between two prunings.
pub(super) const PRUNE_EVERY: i64 = 64;

/// A registered endpoint, secrets included (they sign deliveries; the HTTP edge never sends them
/// after creation, and its `Debug` leaves them out so no log line can carry one).
#[derive(Clone)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub secret: String,
    /// The secret before the last rotation and the unix second until which it also signs.
    pub previous: Option<(String, i64)>,
    /// The id of the last event given to this endpoint.
    pub position: i64,
    pub created_at: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &"<redacted>")
            .field("position", &self.position)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// One row of the delivery log.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub event_id: i64,
    pub event_type: String,
    pub attempt: i64,
    pub status_code: Option<i64>,
    pub outcome: String,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub at: String,
}

/// A change to webhook state, run by the writer (no `Debug`: it may carry a secret).
pub enum Write {
    /// Registers an endpoint at the current end of the log, unless `limit` endpoints exist.
    Create {
        id: Uuid,
        url: String,
        events: Vec<String>,
        secret: String,
        created_at: String,
        limit: i64,
    },
    Delete {
        id: Uuid,
    },
    /// Makes `secret` the current one; the old one keeps signing until `previous_until`.
    Rotate {
        id: Uuid,
        secret: String,
        previous_until: i64,
    },
    /// Logs an attempt and, when given, moves the endpoint's position to `advance_to`.
    Record {
        endpoint: Uuid,
        attempt: Attempt,
        advance_to: Option<i64>,
    },
    /// Moves the endpoint's position past events it did not ask for.
    Advance {
        endpoint: Uuid,
        position: i64,
    },
}

/// What a [`Write`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Created, starting after this event id.
    Created {
        position: i64,
    },
    /// Refused: there are already `limit` endpoints.
    TooMany,
    Done,
    /// No endpoint has that id (deleted meanwhile, or never was).
    NotFound,
}

pub(super) struct WriteRequest {
    write: Write,
    reply: oneshot::Sender<Result<Written, StoreError>>,
}

impl WriteRequest {
    pub(super) fn write(&self) -> &Write {
        &self.write
    }

    pub(super) fn answer(self, result: Result<Written, StoreError>) {
        let _ = self.reply.send(result);
    }
}

/// The right to deliver webhooks, and the way a delivering node writes what its attempts did.
///
/// With SQLite the one process that owns the file always has it. With PostgreSQL one node at a
/// time holds it (a session-level advisory lock, see `postgres::webhooks`); it is lost for good
/// when that session fails, and its holder must then stop delivering.
pub struct DeliveryLock {
    held: Option<super::postgres::webhooks::Held>,
    wait: std::time::Duration,
}

impl DeliveryLock {
    /// How long the new holder waits before its first attempt, so that whatever a previous
    /// holder that lost the database still had in flight has ended. Zero with SQLite.
    pub fn wait_before_delivering(&self) -> std::time::Duration {
        self.wait
    }

    /// Checks that the lock is still held (with PostgreSQL, on its own connection); an error
    /// means it is lost and nothing more may be sent.
    pub async fn confirm(&self) -> Result<(), StoreError> {
        match &self.held {
            None => Ok(()),
            Some(held) => held.confirm().await,
        }
    }

    /// Writes a delivery's [`Write::Record`] or [`Write::Advance`]: through the writer with
    /// SQLite, in a transaction on the lock's connection with PostgreSQL, so that only a holder
    /// of the lock can commit it.
    pub async fn write(&self, store: &Store, write: Write) -> Result<Written, StoreError> {
        match &self.held {
            None => store.webhook_write(write).await,
            Some(held) => held.write(&write).await,
        }
    }

    /// Lets the lock go (a clean shutdown).
    pub async fn release(&self) {
        if let Some(held) = &self.held {
            held.release().await;
        }
    }
}

impl Store {
    /// Sends a webhook write to the writer and waits until it is committed.
    pub async fn webhook_write(&self, write: Write) -> Result<Written, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(super::writer::Work::Webhook(WriteRequest { write, reply }))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The right to deliver webhooks, or `None` while another node holds it. `grace` is the
    /// longest a holder may take between confirming the lock and the end of an attempt.
    pub async fn delivery_lock(
        &self,
        grace: std::time::Duration,
    ) -> Result<Option<DeliveryLock>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite { .. } => Ok(Some(DeliveryLock { held: None, wait: std::time::Duration::ZERO })),
            Backend::Postgres { log, .. } => Ok(log
                .try_delivery_lock(grace)
                .await?
                .map(|held| DeliveryLock { held: Some(held), wait: grace })),
        }
    }

    /// Every endpoint, oldest first.
    pub async fn webhooks(&self) -> Result<Vec<Endpoint>, StoreError> {
        let pool =
            sqlite_pool!(self, log => log.webhooks().await?.into_iter().map(Endpoint::try_from).collect());
        let rows = sqlx::query_as!(EndpointRow, "SELECT * FROM webhook_endpoints ORDER BY created_at, id")
            .fetch_all(pool)
            .await?;
        rows.into_iter().map(Endpoint::try_from).collect()
    }

    pub async fn webhook(&self, id: Uuid) -> Result<Option<Endpoint>, StoreError> {
        let pool = sqlite_pool!(self, log => log.webhook(id).await?.map(Endpoint::try_from).transpose());
        let key = id.to_string();
        let row = sqlx::query_as!(EndpointRow, "SELECT * FROM webhook_endpoints WHERE id = ?", key)
            .fetch_optional(pool)
            .await?;
        row.map(Endpoint::try_from).transpose()
    }

    /// The newest `limit` attempts of an endpoint, newest first.
    pub async fn webhook_attempts(&self, id: Uuid, limit: u32) -> Result<Vec<Attempt>, StoreError> {
        let pool = sqlite_pool!(self, log => log.webhook_attempts(id, limit).await);
        let key = id.to_string();
        let limit = i64::from(limit);
        Ok(sqlx::query_as!(
            Attempt,
            "SELECT event_id, event_type, attempt, status_code, outcome, error, duration_ms, at
             FROM webhook_deliveries WHERE endpoint_id = ? ORDER BY id DESC LIMIT ?",
            key,
            limit
        )
        .fetch_all(pool)
        .await?)
    }

    /// How many attempts an event has had at an endpoint, and when the first one started: a
    /// retry schedule survives a restart.
    pub async fn webhook_tries(&self, id: Uuid, event_id: i64) -> Result<(i64, Option<String>), StoreError> {
        let pool = sqlite_pool!(self, log => log.webhook_tries(id, event_id).await);
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
    pub async fn events_of_types(
        &self,
        types: &[String],
        after: i64,
        through: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let pool = sqlite_pool!(self, log => log.events_of_types(types, after, through, limit).await);
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

/// A `webhook_endpoints` row, column for column.
pub(super) struct EndpointRow {
    pub id: String,
    pub url: String,
    pub events: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_until: Option<i64>,
    pub position: i64,
    pub created_at: String,
}

impl TryFrom<EndpointRow> for Endpoint {
    type Error = StoreError;

    fn try_from(r: EndpointRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(what.to_owned());
        Ok(Endpoint {
            id: Uuid::parse_str(&r.id).map_err(|_| corrupt("webhook_endpoints.id"))?,
            url: r.url,
            events: serde_json::from_str(&r.events).map_err(|_| corrupt("webhook_endpoints.events"))?,
            secret: r.secret,
            previous: r.previous_secret.zip(r.previous_until),
            position: r.position,
            created_at: r.created_at,
        })
    }
}

/// Runs the writes of one turn of the writer in one transaction and answers each. A failed
/// transaction answers every one of them with the cause.
pub(super) async fn write_all(conn: &mut SqliteConnection, requests: impl Iterator<Item = WriteRequest>) {
    let requests: Vec<WriteRequest> = requests.collect();
    let mut results = Vec::with_capacity(requests.len());
    let outcome = async {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        for request in &requests {
            results.push(write_one(&mut tx, &request.write).await?);
        }
        tx.commit().await?;
        Ok::<_, StoreError>(())
    }
    .await;
    match outcome {
        Ok(()) => {
            for (request, result) in requests.into_iter().zip(results) {
                let _ = request.reply.send(Ok(result));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "writing webhook state failed");
            let cause = std::sync::Arc::new(e);
            for request in requests {
                let _ = request.reply.send(Err(StoreError::GroupFailed(cause.clone())));
            }
        }
    }
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
