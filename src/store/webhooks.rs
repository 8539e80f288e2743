//! Webhook endpoints, their stored positions and their delivery log: the reads, the delivery
//! lock, and the writes sent to the writer (`webhook_writes` holds what they are, as data, and
//! how the SQLite writer applies them).
//!
//! Reads use the pool like every other read. Writes are sent to the single writer task (see
//! [`super::writer::Work`]), which runs them in a transaction of their own after each group of
//! appends: webhooks add no second writer that appends would wait for, and a registration's
//! limit check and insert cannot race with another registration.
//!
//! With PostgreSQL the same reads and writes run there (see `postgres::webhooks`), and the
//! writes of deliveries (attempts and positions) go through the [`DeliveryLock`] instead: the
//! right to deliver that exactly one node holds at a time.

use tokio::sync::oneshot;
use uuid::Uuid;

pub use super::webhook_writes::{Attempt, Endpoint, KEPT_ATTEMPTS, Write, Written};
use super::webhook_writes::{EndpointRow, WriteRequest};
use super::{Backend, Store, StoreError, rows, sqlite_pool};
use crate::domain::event::StoredEvent;

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
            .send(super::writer::Work::Webhook(WriteRequest::new(write, reply)))
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
