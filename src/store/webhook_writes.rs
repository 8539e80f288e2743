//! The webhook writes as data ([`Write`], [`Written`], the [`WriteRequest`] the writer task
//! answers) and the rows they touch, shared by both backends: the store's front (`webhooks`),
//! the shared writer (`writer`) and each backend's `webhooks` import this module, and none of
//! them import each other through it.

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
    /// For outcome `missed`: how many events of the endpoint's types were deleted before they
    /// were delivered.
    pub missed: Option<i64>,
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

/// Answers every write of one turn once its transaction has ended: each with its own result
/// when the transaction committed (`outcome` holds them in order), every one with the cause
/// when it failed. Both backends' `write_all` end here.
pub(super) fn answer_all(requests: Vec<WriteRequest>, outcome: Result<Vec<Written>, StoreError>) {
    match outcome {
        Ok(results) => {
            for (request, result) in requests.into_iter().zip(results) {
                request.answer(Ok(result));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "writing webhook state failed");
            let cause = std::sync::Arc::new(e);
            for request in requests {
                request.answer(Err(StoreError::GroupFailed(cause.clone())));
            }
        }
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
