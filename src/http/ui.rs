//! The web UI: three pages and their static assets, compiled into the binary.
//!
//! Every file under `assets/` is embedded with `include_str!` at build time, so the binary
//! serves the UI offline with no Node build step, no CDN and nothing read from disk. The pages
//! are static HTML: they never contain a server string, and their scripts (ES modules, no
//! inline script) read everything from the JSON API and the event streams and insert it as
//! text. Every response of this router carries a strict `Content-Security-Policy` and the
//! other hardening headers API.md asks of the UI.
//!
//! The scripts, each with its own header comment: `sse-client.js` (a resumable EventSource
//! wrapper that falls back to `/api/ws` when EventSource fails to open three times in a row),
//! `<video-generation-progress>` (one job's stages and bars), `<job-progress-drawer>` (the page's
//! one `/api/events` stream; it announces every job change on `document` as `job-updated`,
//! which the home page's list in `page-index.js` follows) and `job-replay.js` (a finished job
//! re-enacted from `/history` through the same `apply()` the live view uses).
//!
//! `include_str!` was chosen over `rust-embed`: the assets are a dozen small text files, the
//! macro needs no new dependency, and it always embeds (rust-embed reads from disk in debug
//! builds unless a feature says otherwise).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::AppError;
use crate::http::extract::parse_job_id;
use crate::http::state::AppState;

/// No inline script or style, nothing from another origin, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; media-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

/// One embedded file: its name under `/assets/`, its media type and its text.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset { name: $name, content_type: $type, body: include_str!(concat!("../../assets/", $name)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every asset served under `/assets/`.
const ASSETS: &[Asset] = &[
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("format.js", JS),
    asset!("sse-client.js", JS),
    asset!("sign-in.js", JS),
    asset!("video-generation-progress.js", JS),
    asset!("job-progress-drawer.js", JS),
    asset!("page-index.js", JS),
    asset!("job-replay.js", JS),
    asset!("page-job.js", JS),
    asset!("page-example.js", JS),
];

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const JOB_HTML: &str = include_str!("../../assets/job.html");
const EXAMPLE_HTML: &str = include_str!("../../assets/example.html");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { html(INDEX_HTML) }))
        .route("/jobs/{job_id}", get(job_page))
        .route("/examples/progress", get(|| async { html(EXAMPLE_HTML) }))
        .route("/assets/{name}", get(asset))
        .layer(header_layer(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .layer(header_layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header_layer(header::REFERRER_POLICY, "no-referrer"))
        .layer(header_layer(header::X_FRAME_OPTIONS, "DENY"))
}

fn header_layer(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}

fn html(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], body)
        .into_response()
}

/// The job page is the same static HTML for every job; its script reads the id from the path.
/// An id that is not a UUID is refused here, as the API refuses it.
async fn job_page(Path(job_id): Path<String>) -> Result<Response, AppError> {
    parse_job_id(&job_id)?;
    Ok(html(JOB_HTML))
}

async fn asset(Path(name): Path<String>) -> Result<Response, AppError> {
    let asset = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| AppError::NotFound("there is no asset with this name".into()))?;
    // `no-cache` revalidates on every load, so a new binary never serves stale scripts.
    Ok(([(header::CONTENT_TYPE, asset.content_type), (header::CACHE_CONTROL, "no-cache")], asset.body)
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_contain_no_inline_script_or_style() {
        for page in [INDEX_HTML, JOB_HTML, EXAMPLE_HTML] {
            for tag in page.split("<script").skip(1) {
                let open = tag.split('>').next().unwrap_or_default();
                assert!(open.contains("src=\"/assets/"), "inline or foreign script: <script{open}>");
            }
            assert!(!page.contains("<style"), "inline style element");
            assert!(!page.contains("style=\""), "inline style attribute");
            for rest in page.split(" on").skip(1) {
                let attr: String = rest.chars().take_while(|c| c.is_ascii_lowercase()).collect();
                let inline = !attr.is_empty() && rest[attr.len()..].starts_with('=');
                assert!(!inline, "inline event handler on{attr}=");
            }
        }
    }

    #[test]
    fn every_page_asset_reference_is_embedded() {
        for page in [INDEX_HTML, JOB_HTML, EXAMPLE_HTML] {
            for part in page.split("/assets/").skip(1) {
                // Links in attributes end at a quote; names mentioned in the page's text at markup.
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                    .collect();
                assert!(ASSETS.iter().any(|a| a.name == name), "page links /assets/{name}, not embedded");
            }
        }
    }
}
