//! Where a webhook may point: the URL rules and the addresses Aura refuses to call.
//!
//! A webhook makes the server send requests on a user's behalf, so without care it is a way to
//! reach what only the server can reach (its loopback services, the cloud metadata address, the
//! private network). Unless `AURA_WEBHOOK_ALLOW_PRIVATE=true`, a URL whose host resolves to any
//! such address is refused when it is registered, and every delivery connects only to addresses
//! checked again at that moment ([`CheckedResolver`]): a name that resolved to a public address
//! at registration and to 127.0.0.1 later (DNS rebinding) gets no request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

/// The longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Why a URL cannot be a webhook's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("must be an absolute http or https URL")]
    NotHttp,
    #[error("must be at most {MAX_URL_LEN} characters long")]
    TooLong,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("names a host that does not resolve")]
    Unresolved,
    #[error(
        "resolves to a loopback, private or link-local address ({0}); set AURA_WEBHOOK_ALLOW_PRIVATE=true to allow it"
    )]
    Private(IpAddr),
}

/// Parses a webhook URL: absolute, http or https, with a host, without credentials.
pub fn parse_url(raw: &str) -> Result<Url, UrlError> {
    if raw.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong);
    }
    let url = Url::parse(raw).map_err(|_| UrlError::NotHttp)?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NotHttp);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    Ok(url)
}

/// Resolves the URL's host and checks every address it resolves to (unless `allow_private`).
pub async fn check_addresses(url: &Url, allow_private: bool) -> Result<(), UrlError> {
    let host = url.host_str().ok_or(UrlError::NotHttp)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host((host, port)).await.map_err(|_| UrlError::Unresolved)?.collect();
    if addrs.is_empty() {
        return Err(UrlError::Unresolved);
    }
    if !allow_private && let Some(bad) = addrs.iter().map(SocketAddr::ip).find(|ip| is_forbidden(*ip)) {
        return Err(UrlError::Private(bad));
    }
    Ok(())
}

/// Loopback, private, link-local, unspecified, shared (CGNAT), multicast or broadcast — any
/// address that is not plainly on the public internet.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_v4(v4),
            None => forbidden_v6(v6),
        },
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated, still private)
        || ip.to_ipv4().is_some_and(|v4| ip.segments()[..6] == [0; 6] && forbidden_v4(v4))
}

/// The resolver deliveries use: the system's, then every forbidden address refused, so the
/// connection can only go to an address checked at delivery time.
pub struct CheckedResolver {
    pub allow_private: bool,
}

/// A delivery refused because its host now resolves only to forbidden addresses.
#[derive(Debug, thiserror::Error)]
#[error("the host resolves only to loopback, private or link-local addresses")]
pub struct Blocked;

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                addrs.into_iter().filter(|a| allow_private || !is_forbidden(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(Blocked) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_without_credentials_and_of_sane_length_parse() {
        assert!(parse_url("https://example.com/hook").is_ok());
        assert!(parse_url("http://example.com:8080/a?b=c").is_ok());
        assert_eq!(parse_url("file:///etc/passwd"), Err(UrlError::NotHttp));
        assert_eq!(parse_url("ftp://example.com/"), Err(UrlError::NotHttp));
        assert_eq!(parse_url("/relative"), Err(UrlError::NotHttp));
        assert_eq!(parse_url("https://user:pw@example.com/"), Err(UrlError::Credentials));
        let long = format!("https://example.com/{}", "a".repeat(10 * 1024));
        assert_eq!(parse_url(&long), Err(UrlError::TooLong));
    }

    #[test]
    fn loopback_private_link_local_and_mapped_addresses_are_forbidden_public_ones_not() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_forbidden(ip.parse().expect("an address")), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!is_forbidden(ip.parse().expect("an address")), "{ip}");
        }
    }
}
