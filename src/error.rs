//! One error type for every HTTP answer that is not a success.
//!
//! Every variant becomes an `application/problem+json` body (RFC 9457) with `type`, `title`,
//! `status` and `detail`. Client mistakes say exactly what to fix; server faults get a fixed
//! title and detail, and their cause goes to the log only, so no path, SQL or stack trace ever
//! reaches a response.

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::domain::spec::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{detail}")]
    BadRequest { title: &'static str, detail: String },
    #[error("credentials missing or unknown")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid job request")]
    Invalid(Vec<FieldError>),
    #[error("invalid webhook")]
    InvalidWebhook(Vec<FieldError>),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("{detail}")]
    TooManyRequests { reason: &'static str, detail: String, retry_after_secs: u64 },
    /// `503` with `Retry-After`; `reason` labels `aura_rejections_total`.
    #[error("{detail}")]
    Unavailable { reason: &'static str, detail: String, retry_after_secs: u64 },
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A body that is not `application/json`: 415.
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    /// A request another web site made through the user's browser: 403 `cross-site`.
    #[error("{0}")]
    CrossSite(String),
    /// A `Host` this server does not answer to (DNS rebinding): 403 `host-not-allowed`.
    #[error("this server does not answer to that host name")]
    HostNotAllowed,
    /// The data folder's disk is below `AURA_MIN_FREE_MB`: 507.
    #[error("not enough free disk space")]
    InsufficientStorage,
    /// A completed job's video was deleted by `AURA_OUTPUT_RETENTION`: 410.
    #[error("the output has expired")]
    OutputExpired,
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    pub fn bad_request(title: &'static str, detail: impl Into<String>) -> Self {
        AppError::BadRequest { title, detail: detail.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Invalid(_) | AppError::InvalidWebhook(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::CrossSite(_) | AppError::HostNotAllowed => StatusCode::FORBIDDEN,
            AppError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            AppError::OutputExpired => StatusCode::GONE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::store::StoreError> for AppError {
    fn from(e: crate::store::StoreError) -> Self {
        AppError::Internal(anyhow::Error::new(e))
    }
}

/// A job's command that was refused: the one mapping of every refusal to HTTP.
impl From<crate::domain::command::Refusal> for AppError {
    fn from(r: crate::domain::command::Refusal) -> Self {
        use crate::domain::command::{Refusal, Refused};
        match r {
            Refusal::NotFound | Refusal::Report(Refused::NotFound) => {
                AppError::NotFound("no job has this id".into())
            }
            Refusal::Conflict(detail) | Refusal::Invalid(detail) => AppError::Conflict(detail),
            Refusal::Report(refused) => AppError::Conflict(refused.detail()),
        }
    }
}

/// A command that appended nothing: refused (`404`/`409`), or the store failed (`500`).
impl From<crate::store::ApplyError> for AppError {
    fn from(e: crate::store::ApplyError) -> Self {
        match e {
            crate::store::ApplyError::Refused(r) => r.into(),
            crate::store::ApplyError::Store(e) => e.into(),
        }
    }
}

/// A poisoned lock on a request's path fails closed: a 500, whose cause goes to the log.
impl From<crate::sync::Poisoned> for AppError {
    fn from(e: crate::sync::Poisoned) -> Self {
        AppError::Internal(anyhow::Error::new(e))
    }
}

impl From<BytesRejection> for AppError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge
        } else {
            AppError::bad_request("Unreadable request body", "the request body could not be read")
        }
    }
}

impl From<QueryRejection> for AppError {
    fn from(_: QueryRejection) -> Self {
        AppError::bad_request("Invalid query string", "the query string could not be parsed")
    }
}

/// An `application/problem+json` body (RFC 9457), as every error answer carries it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:aura:problem:<kind>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Validation errors only: the first offending field's path, e.g. `brief.topic`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Validation errors only: every offending field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// Builds a problem+json response.
pub fn problem(
    status: StatusCode,
    kind: &str,
    title: &str,
    detail: &str,
    errors: Option<Vec<FieldError>>,
) -> Response {
    let body = Problem {
        kind: format!("urn:aura:problem:{kind}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail: detail.to_owned(),
        field: errors.as_ref().and_then(|e| e.first()).map(|e| e.field.clone()),
        errors,
    };
    let mut res = (status, serde_json::to_string(&body).unwrap_or_default()).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    res
}

/// Counts a refused request by why it was refused (`aura_rejections_total{reason}`).
fn rejected(reason: &'static str) {
    metrics::counter!("aura_rejections_total", "reason" => reason).increment(1);
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let none = None;
        match self {
            AppError::BadRequest { title, detail } => problem(status, "bad-request", title, &detail, none),
            AppError::Unauthorized => {
                rejected("unauthorized");
                let mut res = problem(
                    status,
                    "unauthorized",
                    "Unauthorized",
                    "send Authorization: Bearer <token> or sign in with POST /api/session",
                    none,
                );
                res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                res
            }
            AppError::Forbidden(detail) => {
                rejected("forbidden");
                problem(status, "forbidden", "Forbidden", &detail, none)
            }
            AppError::NotFound(detail) => problem(status, "not-found", "Not found", &detail, none),
            AppError::Conflict(detail) => problem(status, "conflict", "Conflict", &detail, none),
            AppError::Invalid(errors) => {
                let detail =
                    errors.iter().map(|e| format!("{} {}", e.field, e.detail)).collect::<Vec<_>>().join("; ");
                problem(status, "validation", "Invalid job request", &detail, Some(errors))
            }
            AppError::InvalidWebhook(errors) => {
                let detail =
                    errors.iter().map(|e| format!("{} {}", e.field, e.detail)).collect::<Vec<_>>().join("; ");
                problem(status, "validation", "Invalid webhook", &detail, Some(errors))
            }
            AppError::PayloadTooLarge => problem(
                status,
                "payload-too-large",
                "Request body too large",
                "the request body must be at most 64 KiB",
                none,
            ),
            AppError::TooManyRequests { reason, detail, retry_after_secs } => {
                rejected(reason);
                let mut res = problem(status, "too-many-requests", "Too many requests", &detail, none);
                res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
                res
            }
            AppError::Unavailable { reason, detail, retry_after_secs } => {
                rejected(reason);
                let mut res = problem(status, "unavailable", "Service unavailable", &detail, none);
                res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                res
            }
            AppError::MethodNotAllowed => problem(
                status,
                "method-not-allowed",
                "Method not allowed",
                "this resource does not answer that method",
                none,
            ),
            AppError::UnsupportedMediaType => problem(
                status,
                "unsupported-media-type",
                "Unsupported media type",
                "the request body must be JSON sent as Content-Type: application/json",
                none,
            ),
            AppError::CrossSite(detail) => {
                rejected("cross-site");
                problem(status, "cross-site", "Cross-site request refused", &detail, none)
            }
            AppError::HostNotAllowed => {
                rejected("host-not-allowed");
                problem(
                    status,
                    "host-not-allowed",
                    "Host not allowed",
                    "this server answers only to loopback names and the names in AURA_ALLOWED_HOSTS",
                    none,
                )
            }
            AppError::InsufficientStorage => {
                rejected("insufficient-storage");
                let mut res = problem(
                    status,
                    "insufficient-storage",
                    "Insufficient storage",
                    "the server is low on disk space and accepts no new job until space is freed",
                    none,
                );
                res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(60u32));
                res
            }
            AppError::OutputExpired => problem(
                status,
                "output-expired",
                "Output expired",
                "the job's video was deleted after the server's output retention period",
                none,
            ),
            AppError::Internal(e) => {
                tracing::error!(error = ?e, "request failed");
                problem(
                    status,
                    "internal",
                    "Internal server error",
                    "the server could not complete the request; the cause is in its log",
                    none,
                )
            }
        }
    }
}
