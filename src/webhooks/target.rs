//! Where a webhook may point: the URL rules and the addresses Aura refuses to call.
//!
//! A webhook makes the server send requests on a user's behalf, so without care it is a way to
//! reach what only the server can reach (its loopback services, the cloud metadata address, the
//! private network). Every address is checked against [`SPECIAL`], the IANA special-purpose
//! address registries of RFC 6890 in full (IPv4 and IPv6, plus multicast and the deprecated
//! IPv4-compatible and site-local ranges). A URL whose host resolves to any such address is
//! refused when it is registered, and every delivery connects only to addresses checked again at
//! that moment ([`CheckedResolver`]; the client follows no redirect and uses no proxy, see
//! `Webhooks::start`): a name that resolved to a public address at registration and to 127.0.0.1
//! later (DNS rebinding) gets no request.
//!
//! `AURA_WEBHOOK_ALLOW_PRIVATE=true` (for tests and closed networks) allows the ranges marked
//! [`Rule::Private`] — loopback, private-use, shared, link-local and unique-local — and nothing
//! else: a documentation, benchmarking, reserved, multicast or translation address is never a
//! webhook's. IPv4 inside IPv6 is judged by the IPv4 address it stands for: an IPv4-mapped
//! address (`::ffff:a.b.c.d`, which a dual-stack socket connects to over IPv4) as that address,
//! a NAT64 one (`64:ff9b::a.b.c.d`) is refused when the IPv4 address is special at all; 6to4,
//! Teredo and local-use NAT64 addresses are refused outright.
//!
//! Why a table of our own: the standard library's `is_global` is still unstable, and no crate
//! that implements the registries is both maintained and widely used; one table, each entry with
//! its RFC, is easy to check against the registry.

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
    #[error("resolves to {ip}, a {name} address ({rfc}), which is never a webhook's")]
    Special { ip: IpAddr, name: &'static str, rfc: &'static str },
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

/// What an address in a special-purpose range means for a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Refused unless `AURA_WEBHOOK_ALLOW_PRIVATE=true`: loopback and private networks.
    Private,
    /// Always refused: no webhook receiver is there, or whatever is there is not for us to call.
    Refused,
    /// IPv4-mapped IPv6: judged as the IPv4 address in its last 32 bits.
    Mapped,
    /// NAT64 well-known prefix: refused when the IPv4 address in its last 32 bits is special.
    Translated,
}

/// One special-purpose range: `net/len`, its registry name and the RFC that defines it.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub net: IpAddr,
    pub len: u8,
    pub name: &'static str,
    pub rfc: &'static str,
    pub rule: Rule,
}

const fn v4(octets: [u8; 4], len: u8, name: &'static str, rfc: &'static str, rule: Rule) -> Range {
    let [a, b, c, d] = octets;
    Range { net: IpAddr::V4(Ipv4Addr::new(a, b, c, d)), len, name, rfc, rule }
}

const fn v6(segments: [u16; 8], len: u8, name: &'static str, rfc: &'static str, rule: Rule) -> Range {
    let [a, b, c, d, e, f, g, h] = segments;
    Range { net: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), len, name, rfc, rule }
}

use Rule::{Mapped, Private, Refused, Translated};

/// The IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and its updates), every
/// entry, plus multicast and two deprecated IPv6 ranges. The most specific range that holds an
/// address decides (`::1` is loopback although `::/96` holds it).
#[rustfmt::skip]
pub const SPECIAL: &[Range] = &[
    v4([0, 0, 0, 0], 8, "\"this network\"", "RFC 791 §3.2", Refused),
    v4([10, 0, 0, 0], 8, "private-use", "RFC 1918", Private),
    v4([100, 64, 0, 0], 10, "shared address space (carrier-grade NAT)", "RFC 6598", Private),
    v4([127, 0, 0, 0], 8, "loopback", "RFC 1122 §3.2.1.3", Private),
    v4([169, 254, 0, 0], 16, "link-local", "RFC 3927", Private),
    v4([172, 16, 0, 0], 12, "private-use", "RFC 1918", Private),
    v4([192, 0, 0, 0], 24, "IETF protocol assignments", "RFC 6890 §2.1", Refused),
    v4([192, 0, 2, 0], 24, "documentation (TEST-NET-1)", "RFC 5737", Refused),
    v4([192, 31, 196, 0], 24, "AS112-v4", "RFC 7535", Refused),
    v4([192, 52, 193, 0], 24, "AMT", "RFC 7450", Refused),
    v4([192, 88, 99, 0], 24, "deprecated 6to4 relay anycast", "RFC 7526", Refused),
    v4([192, 168, 0, 0], 16, "private-use", "RFC 1918", Private),
    v4([192, 175, 48, 0], 24, "direct delegation AS112 service", "RFC 7534", Refused),
    v4([198, 18, 0, 0], 15, "benchmarking", "RFC 2544", Refused),
    v4([198, 51, 100, 0], 24, "documentation (TEST-NET-2)", "RFC 5737", Refused),
    v4([203, 0, 113, 0], 24, "documentation (TEST-NET-3)", "RFC 5737", Refused),
    v4([224, 0, 0, 0], 4, "multicast", "RFC 5771", Refused),
    v4([240, 0, 0, 0], 4, "reserved", "RFC 1112 §4", Refused),
    v4([255, 255, 255, 255], 32, "limited broadcast", "RFC 919 §7", Refused),
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified", "RFC 4291", Refused),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback", "RFC 4291", Private),
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96, "IPv4-compatible (deprecated)", "RFC 4291 §2.5.5.1", Refused),
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, "IPv4-mapped", "RFC 4291", Mapped),
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, "IPv4-IPv6 translation (NAT64)", "RFC 6052", Translated),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "local-use IPv4-IPv6 translation", "RFC 8215", Refused),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only", "RFC 6666", Refused),
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, "dummy IPv6 prefix", "RFC 9780", Refused),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "IETF protocol assignments", "RFC 2928", Refused),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "Teredo", "RFC 4380", Refused),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, "benchmarking", "RFC 5180", Refused),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation", "RFC 3849", Refused),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4", "RFC 3056", Refused),
    v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48, "direct delegation AS112 service", "RFC 7534", Refused),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation", "RFC 9637", Refused),
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "segment routing SIDs", "RFC 9602", Refused),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique-local", "RFC 4193", Private),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local unicast", "RFC 4291", Private),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local (deprecated)", "RFC 3879", Private),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast", "RFC 4291", Refused),
];

impl Range {
    /// Whether `ip` lies in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_match(net.to_bits().into(), ip.to_bits().into(), 32, self.len)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_match(net.to_bits(), ip.to_bits(), 128, self.len),
            _ => false,
        }
    }
}

fn prefix_match(net: u128, ip: u128, bits: u8, len: u8) -> bool {
    let shift = u32::from(bits.saturating_sub(len.min(bits)));
    net.checked_shr(shift).unwrap_or(0) == ip.checked_shr(shift).unwrap_or(0)
}

/// The most specific special-purpose range that holds `ip`, if any.
pub fn special(ip: IpAddr) -> Option<&'static Range> {
    SPECIAL.iter().filter(|r| r.contains(ip)).max_by_key(|r| r.len)
}

/// Why `ip` may not be a webhook's address: the range that refuses it (for an IPv4-mapped
/// address, the range of the IPv4 address). `None` when it may be called.
pub fn refusal(ip: IpAddr, allow_private: bool) -> Option<&'static Range> {
    let range = special(ip)?;
    let embedded = || match ip {
        IpAddr::V6(v6) => Ipv4Addr::from_bits((v6.to_bits() & 0xffff_ffff) as u32),
        IpAddr::V4(v4) => v4,
    };
    match range.rule {
        Private if allow_private => None,
        Private | Refused => Some(range),
        Mapped => refusal(IpAddr::V4(embedded()), allow_private),
        Translated => special(IpAddr::V4(embedded())).map(|_| range),
    }
}

/// Whether `ip` may not be a webhook's address (see [`refusal`]).
pub fn is_forbidden(ip: IpAddr, allow_private: bool) -> bool {
    refusal(ip, allow_private).is_some()
}

/// Resolves the URL's host and checks every address it resolves to.
pub async fn check_addresses(url: &Url, allow_private: bool) -> Result<(), UrlError> {
    let host = url.host_str().ok_or(UrlError::NotHttp)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host((host, port)).await.map_err(|_| UrlError::Unresolved)?.collect();
    if addrs.is_empty() {
        return Err(UrlError::Unresolved);
    }
    for ip in addrs.iter().map(SocketAddr::ip) {
        if let Some(range) = refusal(ip, allow_private) {
            return Err(match range.rule {
                Private => UrlError::Private(ip),
                _ => UrlError::Special { ip, name: range.name, rfc: range.rfc },
            });
        }
    }
    Ok(())
}

/// The resolver deliveries use: the system's, then every forbidden address refused, so the
/// connection can only go to an address checked at delivery time.
pub struct CheckedResolver {
    pub allow_private: bool,
}

/// A delivery refused because its host now resolves only to forbidden addresses.
#[derive(Debug, thiserror::Error)]
#[error("the host resolves only to addresses a webhook may not call")]
pub struct Blocked;

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let allowed = checked_lookup(name.as_str(), allow_private).await?;
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What a delivery may connect to for `host`: the system's answer without every address a
/// webhook may not call; [`Blocked`] when nothing is left.
pub async fn checked_lookup(
    host: &str,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    let allowed: Vec<SocketAddr> =
        addrs.into_iter().filter(|a| !is_forbidden(a.ip(), allow_private)).collect();
    if allowed.is_empty() {
        return Err(Box::new(Blocked));
    }
    Ok(allowed)
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

    /// The first and the last address of a range.
    fn ends(range: &Range) -> [IpAddr; 2] {
        match range.net {
            IpAddr::V4(net) => {
                let host = u32::MAX.checked_shr(u32::from(range.len)).unwrap_or(0);
                [IpAddr::V4(net), IpAddr::V4(Ipv4Addr::from_bits(net.to_bits() | host))]
            }
            IpAddr::V6(net) => {
                let host = u128::MAX.checked_shr(u32::from(range.len)).unwrap_or(0);
                [IpAddr::V6(net), IpAddr::V6(Ipv6Addr::from_bits(net.to_bits() | host))]
            }
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn every_range_of_the_table_is_refused_at_both_ends_and_only_private_ones_are_allowed_by_the_switch() {
        for range in SPECIAL {
            for addr in ends(range) {
                assert!(range.contains(addr), "{addr} in {}/{}", range.net, range.len);
                let strict = refusal(addr, false);
                let open = refusal(addr, true);
                match range.rule {
                    Rule::Private => {
                        assert!(strict.is_some(), "{addr} ({}) is refused", range.name);
                        assert!(open.is_none(), "{addr} ({}) is allowed by the switch", range.name);
                    }
                    Rule::Refused => {
                        // The range itself, or a more specific one inside it (`::1` in `::/96`).
                        assert!(
                            strict.is_some() && open.is_some_and(|r| r.rule == Rule::Refused)
                                || special(addr).is_some_and(|r| r.len > range.len),
                            "{addr} ({}) is always refused",
                            range.name
                        );
                    }
                    // ::ffff:0.0.0.0 and ::ffff:255.255.255.255 are special IPv4 addresses.
                    Rule::Mapped | Rule::Translated => assert!(strict.is_some() && open.is_some(), "{addr}"),
                }
            }
        }
    }

    #[test]
    fn every_newly_refused_family_is_refused_even_with_the_switch() {
        for addr in [
            "198.18.0.1",
            "198.19.255.254",
            "240.0.0.1",
            "255.255.255.254",
            "255.255.255.255",
            "192.0.0.1",
            "192.0.0.170",
            "192.0.2.10",
            "192.88.99.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "0.0.0.0",
            "0.1.2.3",
            "192.31.196.1",
            "192.52.193.1",
            "192.175.48.1",
            "::",
            "::7f00:1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b::c612:1",
            "64:ff9b:1::1",
            "100::1",
            "100:0:0:1::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "2002:808:808::1",
            "2620:4f:8000::1",
            "3fff::1",
            "5f00::1",
            "ff02::1",
            "::ffff:198.18.0.1",
            "::ffff:240.0.0.1",
        ] {
            assert!(refusal(ip(addr), true).is_some(), "{addr} is refused even with the switch");
            assert!(refusal(ip(addr), false).is_some(), "{addr}");
        }
    }

    #[test]
    fn loopback_private_link_local_and_mapped_addresses_need_the_switch_public_ones_never_do() {
        for addr in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(refusal(ip(addr), false).is_some_and(|r| r.rule == Rule::Private), "{addr}");
            assert!(refusal(ip(addr), true).is_none(), "{addr} with the switch");
        }
        for addr in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "198.17.255.255",
            "198.20.0.0",
            "192.0.1.1",
            "223.255.255.255",
            "2001:200::1",
            "2003::1",
        ] {
            assert!(refusal(ip(addr), false).is_none(), "{addr} is public");
        }
    }

    #[tokio::test]
    async fn a_delivery_connects_to_no_address_of_the_table_whatever_it_resolves_to() {
        // The resolver is handed each range's first address as a name: what a name that
        // resolves there at delivery time (DNS rebinding) would give it.
        for range in SPECIAL {
            let [first, _] = ends(range);
            let strict = checked_lookup(&first.to_string(), false).await;
            assert!(
                strict.as_ref().is_err_and(|e| e.downcast_ref::<Blocked>().is_some()),
                "{first} ({}): {strict:?}",
                range.name
            );
        }
        let allowed = checked_lookup("127.0.0.1", true).await.expect("loopback with the switch");
        assert_eq!(allowed.iter().map(SocketAddr::ip).collect::<Vec<_>>(), [ip("127.0.0.1")]);
        let refused = checked_lookup("198.18.0.1", true).await;
        assert!(refused.is_err_and(|e| e.downcast_ref::<Blocked>().is_some()));
    }
}
