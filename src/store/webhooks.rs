//! Webhook endpoints, their stored positions and their delivery log, as the rest of the crate
//! sees them: the reads, the delivery lock, and the writes sent to the writer (`webhook_writes`
//! holds what they are, as data; each backend's `webhooks` runs them).
//!
//! Writes are sent to the process's writer task (see [`super::writer::Work`]), which runs them in
//! a transaction of their own after each group of appends. With a shared database the writes of
//! deliveries (attempts and positions) go through the [`DeliveryLock`] instead: the right to
//! deliver that exactly one node holds at a time.

use tokio::sync::oneshot;
use uuid::Uuid;

use super::webhook_writes::WriteRequest;
pub use super::webhook_writes::{Attempt, Endpoint, KEPT_ATTEMPTS, Write, Written};
use super::{Backend, Store, StoreError};
use crate::domain::event::StoredEvent;

/// The right to deliver webhooks, and the way a delivering node writes what its attempts did.
///
/// With one process that owns the database it is always held. With a shared one, one node at a
/// time holds it (see each backend's `webhooks`); it is lost for good when its session fails,
/// and its holder must then stop delivering.
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
            Backend::Sqlite(_) => Ok(Some(DeliveryLock { held: None, wait: std::time::Duration::ZERO })),
            Backend::Postgres { log, .. } => Ok(log
                .try_delivery_lock(grace)
                .await?
                .map(|held| DeliveryLock { held: Some(held), wait: grace })),
        }
    }

    /// Every endpoint, oldest first.
    pub async fn webhooks(&self) -> Result<Vec<Endpoint>, StoreError> {
        let rows = match &self.inner.backend {
            Backend::Sqlite(log) => log.webhooks().await?,
            Backend::Postgres { log, .. } => log.webhooks().await?,
        };
        rows.into_iter().map(Endpoint::try_from).collect()
    }

    pub async fn webhook(&self, id: Uuid) -> Result<Option<Endpoint>, StoreError> {
        let row = match &self.inner.backend {
            Backend::Sqlite(log) => log.webhook(id).await?,
            Backend::Postgres { log, .. } => log.webhook(id).await?,
        };
        row.map(Endpoint::try_from).transpose()
    }

    /// The newest `limit` attempts of an endpoint, newest first.
    pub async fn webhook_attempts(&self, id: Uuid, limit: u32) -> Result<Vec<Attempt>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.webhook_attempts(id, limit).await,
            Backend::Postgres { log, .. } => log.webhook_attempts(id, limit).await,
        }
    }

    /// How many attempts an event has had at an endpoint, and when the first one started: a
    /// retry schedule survives a restart.
    pub async fn webhook_tries(&self, id: Uuid, event_id: i64) -> Result<(i64, Option<String>), StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.webhook_tries(id, event_id).await,
            Backend::Postgres { log, .. } => log.webhook_tries(id, event_id).await,
        }
    }

    /// Up to `limit` events of the given types with ids in `after+1 ..= through`, in id order.
    pub async fn events_of_types(
        &self,
        types: &[String],
        after: i64,
        through: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite(log) => log.events_of_types(types, after, through, limit).await,
            Backend::Postgres { log, .. } => log.events_of_types(types, after, through, limit).await,
        }
    }
}
