//! The address a request comes from. Behind a reverse proxy every
//! connection comes from the proxy, so the client is named in
//! `X-Forwarded-For` or `Forwarded` (RFC 7239); but anyone can send those
//! headers, so they are believed only from the proxies the operator lists
//! in `FHIRGATE_TRUSTED_PROXIES`. The rate limit, IP access rules, sessions
//! and AuditEvents all take the address from here.

use std::net::{IpAddr, SocketAddr};

use actix_web::http::header::HeaderMap;
use ipnet::IpNet;

/// The client's address: the peer's, unless the peer is a trusted proxy;
/// then the nearest address in the forwarding chain that is not one.
pub fn client_address(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?.ip();
    let is_trusted = |address: &IpAddr| trusted.iter().any(|range| range.contains(address));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    // Each proxy appends the address it received from: walk from the
    // nearest hop back, past our own proxies, to the first one we did not
    // put there.
    let chain = forwarded_chain(headers);
    chain
        .iter()
        .rev()
        .find(|address| !is_trusted(address))
        .or(chain.first())
        .copied()
        .or(Some(peer))
}

/// The addresses of `Forwarded` (its `for=` parameters) or, without it,
/// `X-Forwarded-For`, farthest first. Unparsable entries (`unknown`,
/// obfuscated names) are left out.
fn forwarded_chain(headers: &HeaderMap) -> Vec<IpAddr> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .collect()
    };
    let forwarded = values("forwarded");
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.trim().split_once('=')?;
                    key.eq_ignore_ascii_case("for").then(|| parse_node(value))?
                })
            })
            .collect();
    }
    values("x-forwarded-for")
        .iter()
        .filter_map(|v| parse_node(v))
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(address) = node.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = node.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    node.strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|inner| inner.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn peer(address: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(address.parse().unwrap(), 40000))
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let spoofed = headers(&[("x-forwarded-for", "203.0.113.9")]);
        // A client that sends the header itself is not believed.
        assert_eq!(
            client_address(&spoofed, peer("198.51.100.7"), &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
        // Through our proxy, the client it names.
        assert_eq!(
            client_address(&spoofed, peer("10.0.0.2"), &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        // A client that forges an earlier hop: the nearest untrusted one counts.
        let forged = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.0.0.5")]);
        assert_eq!(
            client_address(&forged, peer("10.0.0.2"), &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        // Nothing trusted configured: the peer, always.
        assert_eq!(
            client_address(&spoofed, peer("10.0.0.2"), &[]),
            Some("10.0.0.2".parse().unwrap())
        );
    }

    #[test]
    fn forwarded_header_of_rfc_7239() {
        let trusted: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let h = headers(&[(
            "forwarded",
            r#"for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711""#,
        )]);
        assert_eq!(
            client_address(&h, peer("127.0.0.1"), &trusted),
            Some("2001:db8:cafe::17".parse().unwrap())
        );
        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(
            client_address(&unknown, peer("127.0.0.1"), &trusted),
            Some("127.0.0.1".parse().unwrap())
        );
    }
}
