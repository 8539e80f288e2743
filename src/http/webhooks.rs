//! The webhook resources: register, list, delete, rotate a secret, read the delivery log.
//!
//! Endpoints are server-wide (they receive every job's events), so every route needs an admin
//! (or open mode); any other caller gets 403. A secret appears in exactly two answers — the
//! registration's and the rotation's — and nowhere else, logs included.

use axum::Router;
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::auth::Caller;
use crate::error::{AppError, Problem};
use crate::http::extract::{Body, parse_query, query_u32};
use crate::http::state::AppState;
use crate::store::webhooks::{Attempt, Endpoint};
use crate::webhooks::MAX_ENDPOINTS;

const DEFAULT_DELIVERIES: u32 = 100;
const MAX_DELIVERIES: u32 = crate::store::webhooks::KEPT_ATTEMPTS as u32;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/webhooks", post(create).get(list))
        .route("/api/webhooks/{webhook_id}", delete(remove))
        .route("/api/webhooks/{webhook_id}/deliveries", get(deliveries))
        .route("/api/webhooks/{webhook_id}/rotate", post(rotate))
}

/// What `POST /api/webhooks` takes.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct WebhookRequest {
    /// An absolute http or https URL, at most 2048 characters.
    url: String,
    /// The event types to deliver; every type when left out.
    events: Option<Vec<String>>,
}

/// A registered endpoint (never with its secret).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    id: Uuid,
    url: String,
    events: Vec<String>,
    created_at: String,
    /// The id of the last event given to this endpoint (delivered, given up on, or not of its
    /// types): its stored `Last-Event-ID`.
    last_event_id: i64,
}

impl From<Endpoint> for Webhook {
    fn from(e: Endpoint) -> Self {
        Webhook {
            id: e.id,
            url: e.url,
            events: e.events,
            created_at: e.created_at,
            last_event_id: e.position,
        }
    }
}

/// The registration's answer: the endpoint and its secret, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedWebhook {
    id: Uuid,
    url: String,
    events: Vec<String>,
    created_at: String,
    last_event_id: i64,
    /// `whsec_<base64 of 32 random bytes>`; the HMAC key is the decoded bytes. Never shown again.
    secret: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookList {
    webhooks: Vec<Webhook>,
}

/// One delivery attempt.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    event_id: i64,
    event_type: String,
    /// 1 for an event's first attempt at this endpoint.
    attempt: i64,
    /// The answer's status; null when there was none (see `error`).
    status_code: Option<i64>,
    /// `delivered` (a 2xx), `retrying` (it will be tried again), `failed` (given up after 24 h),
    /// or `missed`: events of its types were deleted (a job's deletion, retention) before they
    /// were delivered; `missed` says how many, `eventId` is the last of them.
    outcome: String,
    /// Why there was no answer: `timeout`, `connect`, `blocked-address`, `request`;
    /// `deleted-before-delivery` for `missed`.
    error: Option<String>,
    duration_ms: i64,
    /// When the attempt started (RFC 3339 UTC, microseconds).
    at: String,
    /// For `missed`: how many events the endpoint never received.
    #[serde(skip_serializing_if = "Option::is_none")]
    missed: Option<i64>,
}

impl From<Attempt> for Delivery {
    fn from(a: Attempt) -> Self {
        Delivery {
            event_id: a.event_id,
            event_type: a.event_type,
            attempt: a.attempt,
            status_code: a.status_code,
            outcome: a.outcome,
            error: a.error,
            duration_ms: a.duration_ms,
            at: a.at,
            missed: a.missed,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    deliveries: Vec<Delivery>,
}

/// A rotation's answer.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedSecret {
    id: Uuid,
    /// The new secret, shown this once.
    secret: String,
    /// Until when the previous secret also signs (its signature is the second in
    /// `webhook-signature`), RFC 3339 UTC.
    previous_secret_expires_at: String,
}

/// Webhooks are server-wide: admins only (everyone in open mode).
fn require_admin(caller: &Caller) -> Result<(), AppError> {
    if caller.sees_all() { Ok(()) } else { Err(AppError::Forbidden("webhooks need an admin token".into())) }
}

fn parse_webhook_id(raw: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(raw).map_err(|_| AppError::bad_request("Invalid webhook id", "webhook ids are UUIDs"))
}

/// The endpoint id of the path, for an admin: `403` for anyone else first, then `400` for an id
/// that is not a UUID. A handler that takes one cannot skip the admin check.
pub struct AdminWebhookId(Uuid);

impl FromRequestParts<AppState> for AdminWebhookId {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, AppError> {
        let caller = Caller::from_request_parts(parts, app).await?;
        require_admin(&caller)?;
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, app).await.map_err(|_| {
                AppError::bad_request("Invalid webhook id", "the path does not name a webhook id")
            })?;
        Ok(AdminWebhookId(parse_webhook_id(&raw)?))
    }
}

fn unknown() -> AppError {
    AppError::NotFound("no webhook has this id".into())
}

/// Register an endpoint.
#[utoipa::path(post, path = "/api/webhooks", tag = "webhooks",
    request_body(content = WebhookRequest, description = "`events` defaults to every type"),
    responses(
        (status = 201, description = "Registered; the secret is shown only in this answer", body = CreatedWebhook),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body not sent as Content-Type: application/json", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already 100 endpoints", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad URL (not http/https, too long, a private address) or an unknown event type", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(app): State<AppState>,
    caller: Caller,
    Body(body): Body,
) -> Result<Response, AppError> {
    require_admin(&caller)?;
    let body: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| AppError::bad_request("Malformed JSON", "the request body is not JSON"))?;
    if !body.is_object() {
        return Err(AppError::bad_request("Malformed JSON", "the request body must be a JSON object"));
    }
    let new = app.webhooks().check(&body).await.map_err(AppError::InvalidWebhook)?;
    let endpoint = app.webhooks().create(new).await?.ok_or_else(|| {
        AppError::Conflict(format!("at most {MAX_ENDPOINTS} webhook endpoints; delete one first"))
    })?;
    let location = format!("/api/webhooks/{}", endpoint.id);
    let body = CreatedWebhook {
        id: endpoint.id,
        url: endpoint.url,
        events: endpoint.events,
        created_at: endpoint.created_at,
        last_event_id: endpoint.position,
        secret: endpoint.secret,
    };
    let mut res = (StatusCode::CREATED, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// Every endpoint, oldest first, without secrets.
#[utoipa::path(get, path = "/api/webhooks", tag = "webhooks",
    responses(
        (status = 200, description = "The endpoints", body = WebhookList),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(State(app): State<AppState>, caller: Caller) -> Result<Response, AppError> {
    require_admin(&caller)?;
    let webhooks = app.store().webhooks().await?.into_iter().map(Webhook::from).collect();
    Ok(axum::Json(WebhookList { webhooks }).into_response())
}

/// Delete an endpoint; its deliveries stop and its log goes with it.
#[utoipa::path(delete, path = "/api/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = Uuid, Path, description = "The endpoint's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn remove(
    State(app): State<AppState>,
    AdminWebhookId(id): AdminWebhookId,
) -> Result<Response, AppError> {
    if !app.webhooks().delete(id).await? {
        return Err(unknown());
    }
    tracing::info!(webhook_id = %id, "webhook endpoint deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The newest delivery attempts of an endpoint.
#[utoipa::path(get, path = "/api/webhooks/{webhook_id}/deliveries", tag = "webhooks",
    params(
        ("webhook_id" = Uuid, Path, description = "The endpoint's id"),
        ("limit" = Option<u32>, Query, description = "How many, 1..=1000, default 100"),
    ),
    responses(
        (status = 200, description = "Attempts, newest first", body = DeliveryList),
        (status = 400, description = "Not a UUID, or a bad limit", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn deliveries(
    State(app): State<AppState>,
    AdminWebhookId(id): AdminWebhookId,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let query = parse_query(query.as_deref())?;
    let limit = query_u32(&query, "limit", DEFAULT_DELIVERIES, MAX_DELIVERIES)?;
    app.store().webhook(id).await?.ok_or_else(unknown)?;
    let deliveries = app.store().webhook_attempts(id, limit).await?.into_iter().map(Delivery::from).collect();
    Ok(axum::Json(DeliveryList { deliveries }).into_response())
}

/// Issue a new secret; the old one keeps signing beside it for 24 hours.
#[utoipa::path(post, path = "/api/webhooks/{webhook_id}/rotate", tag = "webhooks",
    params(("webhook_id" = Uuid, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "The new secret, shown only in this answer", body = RotatedSecret),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rotate(
    State(app): State<AppState>,
    AdminWebhookId(id): AdminWebhookId,
) -> Result<Response, AppError> {
    let (secret, until) = app.webhooks().rotate(id).await?.ok_or_else(unknown)?;
    let until = time::OffsetDateTime::from_unix_timestamp(until)
        .map(crate::domain::event::format_at)
        .map_err(|e| AppError::Internal(anyhow::anyhow!("formatting a rotation's end: {e}")))?;
    tracing::info!(webhook_id = %id, "webhook secret rotated");
    let mut res = axum::Json(RotatedSecret { id, secret, previous_secret_expires_at: until }).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
