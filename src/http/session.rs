//! `POST /api/session` and `DELETE /api/session`: how a browser, whose EventSource cannot send
//! headers, gets in: a token is exchanged for an `HttpOnly` session cookie (see `access::auth`
//! for what the server keeps of it).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::access::auth::{SESSION_COOKIE, SESSION_SECS, session_cookie};
use crate::access::lookups::ClientIp;
use crate::error::AppError;
use crate::http::extract::Body;
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/session", post(sign_in).delete(sign_out))
}

#[derive(serde::Deserialize)]
struct SignIn {
    token: String,
}

fn cookie(app: &AppState, value: &str, max_age: u64) -> Result<HeaderValue, AppError> {
    let secure = if app.auth().secure_cookie() { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .map_err(|e| AppError::Internal(anyhow::Error::new(e).context("building the session cookie")))
}

/// `POST /api/session {"token": "…"}`: a browser session for that token's owner, as a cookie.
/// A bad token is charged to the client address's budget of unknown credentials, as on any route.
async fn sign_in(
    State(app): State<AppState>,
    ClientIp(from): ClientIp,
    Body(body): Body,
) -> Result<Response, AppError> {
    let request: SignIn = serde_json::from_slice(&body)
        .map_err(|_| AppError::bad_request("Malformed JSON", "send {\"token\": \"<token>\"}"))?;
    let (id, name) = app.auth().start_session(&request.token, from).await?;
    tracing::info!(owner = %name, "browser session started");
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut().insert(header::SET_COOKIE, cookie(&app, &id, SESSION_SECS)?);
    Ok(res)
}

/// `DELETE /api/session`: ends the session on the server and clears the cookie.
async fn sign_out(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, AppError> {
    if let Some(id) = session_cookie(&headers) {
        app.auth().end_session(id).await?;
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut().insert(header::SET_COOKIE, cookie(&app, "", 0)?);
    Ok(res)
}
