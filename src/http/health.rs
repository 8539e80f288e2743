//! `GET /api/health` and `GET /metrics`: is this node able to work, and how is it doing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::domain::job::JobStatus;
use crate::engine::process;
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/health", get(health)).route("/metrics", get(metrics))
}

/// What `/api/health` answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    status: &'static str,
    /// `ok` or `unavailable`.
    database: String,
    /// ffmpeg's version, or why it is unavailable.
    ffmpeg: String,
    /// `ok`, or `low` while the data folder's disk is below `AURA_MIN_FREE_MB`.
    disk: &'static str,
}

/// Whether this node can work: the database answers, ffmpeg runs and the disk has room.
#[utoipa::path(get, path = "/api/health", tag = "operations",
    responses(
        (status = 200, description = "Everything works", body = Health),
        (status = 503, description = "A dependency is down", body = Health),
    ))]
pub async fn health(State(app): State<AppState>) -> Response {
    let database = match app.store().ping().await {
        Ok(()) => "ok".to_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "health: database check failed");
            "unavailable".to_owned()
        }
    };
    let ffmpeg = ffmpeg_version(&app.settings().ffmpeg).await;
    let disk = if app.engine().disk().is_low() { "low" } else { "ok" };
    let ok = database == "ok" && ffmpeg.is_ok() && disk == "ok";
    let ffmpeg = ffmpeg.unwrap_or_else(|e| format!("unavailable: {e}"));
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Health { status: if ok { "ok" } else { "unavailable" }, database, ffmpeg, disk };
    (status, axum::Json(body)).into_response()
}

/// How long a working ffmpeg's version is trusted before it is asked again.
const FFMPEG_OK_FOR: Duration = Duration::from_secs(10);
/// How long a failed check stands, so that a fixed install is seen soon.
const FFMPEG_FAILED_FOR: Duration = Duration::from_secs(1);

/// ffmpeg's version, checked at most once per [`FFMPEG_OK_FOR`] per binary, and by one caller at
/// a time: a flood of health checks must not become a flood of `ffmpeg -version` children, and
/// each check answering in milliseconds is what lets health answer while connections pile up.
async fn ffmpeg_version(ffmpeg: &Path) -> Result<String, String> {
    type Checks = tokio::sync::Mutex<HashMap<PathBuf, (Instant, Result<String, String>)>>;
    static CHECKS: OnceLock<Checks> = OnceLock::new();
    let mut checks = CHECKS.get_or_init(Checks::default).lock().await;
    if let Some((at, result)) = checks.get(ffmpeg) {
        let fresh_for = if result.is_ok() { FFMPEG_OK_FOR } else { FFMPEG_FAILED_FOR };
        if at.elapsed() < fresh_for {
            return result.clone();
        }
    }
    let result = process::ffmpeg_version(ffmpeg).await.map_err(|e| e.to_string());
    checks.insert(ffmpeg.to_path_buf(), (Instant::now(), result.clone()));
    result
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics in the Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(app): State<AppState>) -> Response {
    match app.store().job_counts().await {
        Ok(counts) => {
            for status in JobStatus::ALL {
                let n = counts.iter().find(|(s, _)| s == status.name()).map_or(0, |(_, n)| *n);
                metrics::gauge!("aura_jobs", "status" => status.name()).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: counting jobs failed"),
    }
    metrics::gauge!("aura_open_streams_total").set(app.streams().open() as f64);
    let mut res = app.metrics().render().into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    res
}
