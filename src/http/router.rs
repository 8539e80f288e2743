//! The router: every resource's routes merged, the host and origin checks, the credentials
//! middleware, the body limit, tracing and CORS. Each resource module owns its routes; this file only puts them together.

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::AppError;
use crate::http::extract::MAX_BODY_BYTES;
use crate::http::sites;
use crate::http::state::AppState;
use crate::http::{events, health, jobs, openapi, session, ui, webhooks, ws};

/// The whole HTTP surface: each module owns its routes, the root only merges them.
pub fn router(state: AppState) -> Router {
    let sites = state.sites().clone();
    Router::new()
        .merge(jobs::router())
        .merge(events::router())
        .merge(ws::router())
        .merge(health::router())
        .merge(session::router())
        .merge(webhooks::router())
        .merge(openapi::router())
        .merge(ui::router())
        .fallback(fallback)
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_credentials))
        // Outside the credentials: a foreign host or site is refused before anything else.
        .layer(axum::middleware::from_fn_with_state(sites, sites::guard))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// CORS for the exact origins of `AURA_CORS_ORIGINS` only, with credentials; none by default.
/// It is the outermost layer, so preflights are answered before credentials are asked for.
pub fn cors_layer(origins: &[String]) -> anyhow::Result<CorsLayer> {
    let mut allowed = Vec::new();
    for origin in origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        anyhow::ensure!(
            origin != "*" && origin.contains("://"),
            "AURA_CORS_ORIGINS lists exact origins such as https://app.example.com, not {origin:?}"
        );
        allowed.push(
            HeaderValue::from_str(origin)
                .with_context(|| format!("AURA_CORS_ORIGINS: {origin:?} is not an origin"))?,
        );
    }
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_credentials(true)
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        // A listed site that reads a stream with fetch may see where its history starts.
        .expose_headers([HeaderName::from_static("aura-history-start")]))
}

async fn fallback() -> impl IntoResponse {
    crate::error::problem(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "there is no resource at this path",
        None,
    )
}

/// Whether a path needs credentials: every `/api` route but health and the session routes,
/// and `/metrics`. The UI pages and assets hold no data and stay public.
fn needs_credentials(path: &str) -> bool {
    if path == "/metrics" {
        return true;
    }
    (path == "/api" || path.starts_with("/api/")) && path != "/api/health" && path != "/api/session"
}

/// The credentials middleware: authenticates every request that needs it and hands the
/// [`Caller`] to the handlers; `/metrics` also needs an admin. CORS preflights pass.
pub async fn require_credentials(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, AppError> {
    if request.method() == Method::OPTIONS || !needs_credentials(request.uri().path()) {
        return Ok(next.run(request).await);
    }
    let from = crate::access::lookups::client_ip(request.extensions());
    let caller = app.auth().authenticate(request.headers(), from).await?;
    if request.uri().path() == "/metrics" && !caller.sees_all() {
        return Err(AppError::Forbidden("metrics need an admin token".into()));
    }
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_api_routes_but_health_and_session_need_credentials() {
        for path in ["/api/jobs", "/api/events", "/api/openapi.json", "/metrics", "/api/nothing"] {
            assert!(needs_credentials(path), "{path}");
        }
        for path in ["/", "/jobs/x", "/assets/app.css", "/api/health", "/api/session", "/apix"] {
            assert!(!needs_credentials(path), "{path}");
        }
    }
}
