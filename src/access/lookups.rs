//! The budget of unknown credentials, per client address: what a flood of made-up tokens costs
//! the flooder, and nobody else.
//!
//! Every bearer token or session cookie that proves no caller is charged to the address of the
//! connection it came on: [`PER_SEC`] a second, [`BURST`] at once. Past that, the address gets
//! `429` (`too-many-requests`, reason `credential-lookups`) with `Retry-After` instead of `401`,
//! and with PostgreSQL no query. Credentials that prove a caller never draw on it, so a client
//! that shares its address with a flooder (all of a test's clients are on 127.0.0.1) keeps
//! getting in with them. With PostgreSQL a node cannot tell a credential it has never seen from
//! a made-up one without asking the database, so such a lookup is taken from the budget first
//! and given back when the credential proves a caller: from an address that has spent its
//! budget, a credential the node has not seen yet waits for the budget to refill.
//!
//! A client is an IPv4 address, or an IPv6 address's /64 (what one host usually gets; per whole
//! address, a flooder would have 2^64 budgets); an IPv4-mapped IPv6 address counts as the IPv4
//! one. A request whose connection address is not known (only code that calls `Auth` directly,
//! such as tests) shares one budget with all others like it. The budgets are kept for the
//! [`ADDRESSES`] clients seen last (an LRU): forgetting the least recently seen one costs nothing
//! but a full budget for it, which an idle client's has refilled to anyway.
//!
//! The address is the TCP peer's, which the accept loop (`streaming::server`) puts in every
//! request's extensions as axum's `ConnectInfo<SocketAddr>`; behind a reverse proxy every
//! client has the proxy's address, so they share one budget (and only for unknown credentials).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::Extensions;
use axum::http::request::Parts;
use hashlink::LruCache;

use crate::error::AppError;
use crate::sync::lock;

/// Unknown credentials a client address may present a second, once its burst is spent.
pub const PER_SEC: f64 = 10.0;
/// Unknown credentials a client address may present at once.
pub const BURST: f64 = 30.0;
/// Client addresses whose budget is remembered (the least recently seen is forgotten first).
const ADDRESSES: usize = 65_536;

/// Who a budget belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    /// The connection's address is not known.
    Unknown,
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl Client {
    fn of(ip: Option<IpAddr>) -> Client {
        match ip.map(|ip| ip.to_canonical()) {
            None => Client::Unknown,
            Some(IpAddr::V4(v4)) => Client::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Client::V6(prefix)
            }
        }
    }
}

/// One client's budget: a token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant) -> Bucket {
        let tokens = self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * PER_SEC;
        Bucket { tokens: tokens.min(BURST), at: now }
    }
}

/// Every client address's budget of unknown credentials.
pub struct Lookups {
    buckets: Mutex<LruCache<Client, Bucket>>,
}

impl Default for Lookups {
    fn default() -> Self {
        Lookups { buckets: Mutex::new(LruCache::new(ADDRESSES)) }
    }
}

impl Lookups {
    /// Charges one unknown credential (or one lookup) to the client at `from`; `429` with the
    /// seconds until one is back when its budget is spent.
    pub fn take(&self, from: Option<IpAddr>) -> Result<(), AppError> {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets, "credential lookups")?;
        let client = Client::of(from);
        let bucket = match buckets.get(&client) {
            Some(b) => b.refilled(now),
            None => Bucket { tokens: BURST, at: now },
        };
        if bucket.tokens >= 1.0 {
            buckets.insert(client, Bucket { tokens: bucket.tokens - 1.0, at: now });
            return Ok(());
        }
        buckets.insert(client, bucket);
        let wait = ((1.0 - bucket.tokens) / PER_SEC).ceil().clamp(1.0, 60.0);
        Err(AppError::TooManyRequests {
            reason: "credential-lookups",
            detail: "too many unknown credentials from this address; retry shortly".into(),
            retry_after_secs: wait as u64,
        })
    }

    /// Gives back what [`Lookups::take`] charged for a lookup whose credential proved a caller.
    pub fn refund(&self, from: Option<IpAddr>) -> Result<(), AppError> {
        let mut buckets = lock(&self.buckets, "credential lookups")?;
        if let Some(bucket) = buckets.get_mut(&Client::of(from)) {
            bucket.tokens = (bucket.tokens + 1.0).min(BURST);
        }
        Ok(())
    }
}

/// The client address of a request, as the accept loop recorded it; `None` when it did not.
pub fn client_ip(extensions: &Extensions) -> Option<IpAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())
}

/// A handler's argument: the request's client address, if known (never a rejection).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(&parts.extensions)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn each_address_has_its_own_burst_and_a_refund_gives_one_back() {
        let lookups = Lookups::default();
        for _ in 0..BURST as usize {
            assert!(lookups.take(ip("192.0.2.1")).is_ok());
        }
        let refused = lookups.take(ip("192.0.2.1"));
        assert!(matches!(refused, Err(AppError::TooManyRequests { retry_after_secs: 1, .. })), "{refused:?}");
        assert!(lookups.take(ip("192.0.2.2")).is_ok(), "another address is not held back");
        assert!(lookups.refund(ip("192.0.2.1")).is_ok());
        assert!(lookups.take(ip("192.0.2.1")).is_ok(), "the refunded lookup");
    }

    #[test]
    fn an_ipv6_client_is_its_64_prefix_and_a_mapped_ipv4_is_the_ipv4_address() {
        assert_eq!(Client::of(ip("2001:db8:1:2::1")), Client::of(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(Client::of(ip("2001:db8:1:2::1")), Client::of(ip("2001:db8:1:3::1")));
        assert_eq!(Client::of(ip("::ffff:192.0.2.1")), Client::of(ip("192.0.2.1")));
        assert_eq!(Client::of(None), Client::Unknown);
    }
}
