//! Requests from other sites and host names: what keeps a web page the user merely visits from
//! acting on an Aura its browser can reach (API.md "Access and limits").
//!
//! Open mode on loopback has no credential to stop such a page, so two checks run before
//! anything else, on every route, streams and `/metrics` included:
//! - **Host names (DNS rebinding).** A page whose own name is re-pointed at 127.0.0.1 talks to
//!   Aura as a same-origin page, with its own name in `Host`. On a loopback address only the
//!   loopback names (`localhost`, loopback IP literals, any port) and `AURA_ALLOWED_HOSTS` are
//!   answered; anything else is `403 host-not-allowed`. On another address the check runs only
//!   when `AURA_ALLOWED_HOSTS` is set (there tokens guard the API).
//! - **Other sites.** A `POST` or `DELETE` (any method that changes something) whose `Origin`
//!   is neither this server's own (its authority equals `Host`) nor one of `AURA_CORS_ORIGINS`,
//!   or that says `Sec-Fetch-Site: cross-site`, is `403 cross-site`. A request with no `Origin`
//!   and no fetch metadata is not a browser's (curl, the CLI, scripts) and passes. The
//!   WebSocket handshake, a `GET`, is held to the same rule by `ws.rs` through [`Sites::check_origin`].
//!
//! The third browser rule, bodies only as `application/json` (so that an HTML form, which can
//! send `text/plain` without a preflight, never reaches a handler), is the body extractor's:
//! see `extract::Body`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::config::ServeConfig;
use crate::error::AppError;

/// The host and origin rules, parsed once from the settings.
#[derive(Debug, Clone)]
pub struct Sites {
    /// Whether `Host` is checked at all: on a loopback address, or when hosts are listed.
    check_hosts: bool,
    /// `AURA_ALLOWED_HOSTS`, lower-cased: `name` (any port) or `name:port`.
    allowed_hosts: Vec<String>,
    /// `AURA_CORS_ORIGINS`, exact.
    cors_origins: Vec<String>,
}

impl Sites {
    pub fn from_config(config: &ServeConfig) -> Sites {
        let allowed_hosts: Vec<String> = config
            .allowed_hosts
            .iter()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        Sites {
            check_hosts: config.is_loopback() || !allowed_hosts.is_empty(),
            allowed_hosts,
            cors_origins: config
                .cors_origins
                .iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    /// `403 host-not-allowed` for a `Host` this server does not answer to. A request with no
    /// `Host` at all (HTTP/1.0) is not a browser's and passes.
    pub fn check_host(&self, headers: &HeaderMap) -> Result<(), AppError> {
        if !self.check_hosts {
            return Ok(());
        }
        let Some(host) = headers.get(header::HOST) else { return Ok(()) };
        let host = host.to_str().map_err(|_| AppError::HostNotAllowed)?.trim().to_ascii_lowercase();
        let (name, _port) = split_host(&host).ok_or(AppError::HostNotAllowed)?;
        let name = name.trim_end_matches('.');
        if is_loopback_name(name) || self.allowed_hosts.iter().any(|a| *a == host || a == name) {
            Ok(())
        } else {
            Err(AppError::HostNotAllowed)
        }
    }

    /// `403 cross-site` for a request another web site made through the user's browser: an
    /// `Origin` that is neither this server's own nor listed, or `Sec-Fetch-Site: cross-site`
    /// from an origin that is not listed.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), AppError> {
        let origin = headers.get(header::ORIGIN).map(|o| o.to_str().unwrap_or("null"));
        if origin.is_some_and(|o| self.cors_origins.iter().any(|c| c == o)) {
            return Ok(());
        }
        let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if fetch_site.is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
            return Err(AppError::CrossSite("this request came from another web site".into()));
        }
        match origin {
            None => Ok(()),
            Some(origin) if is_own_origin(origin, headers) => Ok(()),
            Some(_) => Err(AppError::CrossSite(
                "requests from this origin are refused; list it in AURA_CORS_ORIGINS to allow it".into(),
            )),
        }
    }
}

/// The middleware: the host check on every request, the origin check on every method that
/// may change something.
pub async fn guard(
    State(sites): State<Arc<Sites>>,
    request: Request,
    next: Next,
) -> Result<Response, AppError> {
    sites.check_host(request.headers())?;
    if !is_safe(request.method()) {
        sites.check_origin(request.headers())?;
    }
    Ok(next.run(request).await)
}

/// Methods that change nothing; everything else is held to the origin rule.
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `name` or `name:port`, with an IPv6 literal in brackets; `None` when malformed.
fn split_host(host: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        return match after {
            "" => Some((inside, None)),
            _ => Some((inside, Some(after.strip_prefix(':')?))),
        };
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => Some((name, Some(port))),
        Some(_) => None,
        None => Some((host, None)),
    }
}

/// `localhost`, or an IP literal on the loopback interface (127.0.0.0/8, `::1`).
fn is_loopback_name(name: &str) -> bool {
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `Origin` names this server: its authority equals the request's `Host`.
fn is_own_origin(origin: &str, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.split_once("://"), host) {
        (Some((_, authority)), Some(host)) => authority.eq_ignore_ascii_case(host.trim()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn sites(addr: [u8; 4], hosts: &[&str], origins: &[&str]) -> Sites {
        let mut cfg = ServeConfig::for_data_dir("unused".into());
        cfg.addr = SocketAddr::from((addr, 5005));
        cfg.allowed_hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        cfg.cors_origins = origins.iter().map(|o| (*o).to_owned()).collect();
        Sites::from_config(&cfg)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().expect("a header value"));
        }
        h
    }

    #[test]
    fn on_loopback_only_loopback_names_and_listed_hosts_are_answered() {
        let s = sites([127, 0, 0, 1], &["aura.example.com", "other.example:8443"], &[]);
        for ok in [
            "localhost",
            "LOCALHOST:5005",
            "localhost.:5005",
            "127.0.0.1",
            "127.0.0.1:5005",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:5005",
            "aura.example.com",
            "aura.example.com:443",
            "other.example:8443",
        ] {
            assert!(s.check_host(&headers(&[("host", ok)])).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:5005",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:5005",
            "[::2]:5005",
            "other.example:8444",
            "[::1",
            "a:b:c",
        ] {
            assert!(
                matches!(s.check_host(&headers(&[("host", bad)])), Err(AppError::HostNotAllowed)),
                "{bad}"
            );
        }
        assert!(s.check_host(&HeaderMap::new()).is_ok(), "no Host is not a browser");
    }

    #[test]
    fn off_loopback_hosts_are_checked_only_when_listed() {
        assert!(sites([0, 0, 0, 0], &[], &[]).check_host(&headers(&[("host", "anything.example")])).is_ok());
        let listed = sites([0, 0, 0, 0], &["aura.example.com"], &[]);
        assert!(listed.check_host(&headers(&[("host", "aura.example.com")])).is_ok());
        assert!(listed.check_host(&headers(&[("host", "evil.example")])).is_err());
    }

    #[test]
    fn only_no_origin_the_same_host_or_a_listed_origin_passes() {
        let s = sites([127, 0, 0, 1], &[], &["https://app.example.com"]);
        let check = |pairs: &[(&'static str, &str)]| s.check_origin(&headers(pairs)).is_ok();
        assert!(check(&[]), "curl and the CLI send no Origin");
        assert!(check(&[("host", "localhost:5005"), ("origin", "http://localhost:5005")]));
        assert!(check(&[
            ("host", "localhost:5005"),
            ("origin", "http://localhost:5005"),
            ("sec-fetch-site", "same-origin")
        ]));
        assert!(check(&[
            ("host", "localhost:5005"),
            ("origin", "https://app.example.com"),
            ("sec-fetch-site", "cross-site")
        ]));
        assert!(!check(&[("host", "localhost:5005"), ("origin", "https://evil.example")]));
        assert!(
            !check(&[("host", "localhost:5005"), ("origin", "http://localhost:3000")]),
            "another port is another origin"
        );
        assert!(!check(&[("host", "localhost:5005"), ("origin", "null")]));
        assert!(!check(&[("origin", "http://localhost:5005")]), "no Host to compare with");
        assert!(!check(&[("sec-fetch-site", "cross-site")]), "a cross-site fetch without Origin");
        assert!(check(&[("sec-fetch-site", "none")]), "typed into the address bar");
    }
}
