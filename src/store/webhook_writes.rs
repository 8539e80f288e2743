//! The webhook writes as data ([`Write`], [`Written`], the [`WriteRequest`] the writer task
//! answers), the rows they touch, and how the SQLite writer applies them in a transaction of
//! their own (`write_all`). The store's front (`webhooks`), its writer (`writer`) and the
//! PostgreSQL side (`postgres::webhooks`) all import this module and none of them import each
//! other through it.

use sqlx::{Connection, SqliteConnection};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::StoreError;

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
    pub(super) fn new(write: Write, reply: oneshot::Sender<Result<Written, StoreError>>) -> Self {
        WriteRequest { write, reply }
    }

    pub(super) fn write(&self) -> &Write {
        &self.write
    }

    pub(super) fn answer(self, result: Result<Written, StoreError>) {
        let _ = self.reply.send(result);
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
