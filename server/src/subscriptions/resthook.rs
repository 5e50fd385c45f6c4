//! rest-hook delivery: one POST per notification, with Medplum's headers and
//! HMAC signature, to endpoints that are not this server's own network.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sha2::Sha256;

/// How long one POST may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One notification as it goes out.
pub struct Post<'a> {
    pub endpoint: &'a str,
    pub headers: &'a [(String, String)],
    pub subscription_id: &'a str,
    pub interaction: &'a str,
    /// `Type/id`, sent as `X-Medplum-Deleted-Resource` on a delete.
    pub reference: &'a str,
    /// `None`: the subscription asked for no payload.
    pub body: Option<&'a str>,
    pub secret: Option<&'a str>,
}

/// The client rest-hooks go out on: no redirects (a redirect could lead
/// anywhere), and, unless `allow_private`, a resolver that refuses names
/// with private addresses (checked at connection time, so a name cannot
/// pass a check and then resolve elsewhere).
pub fn client(allow_private: bool) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .tcp_nodelay(true)
        .dns_resolver(Arc::new(PublicOnly { allow_private }))
        .build()
}

/// Sends one notification; `Ok` with the status when the receiver answered
/// 2xx, `Err` with what went wrong (the status, or the error).
pub async fn send(
    client: &reqwest::Client,
    allow_private: bool,
    post: &Post<'_>,
) -> Result<u16, String> {
    let url = reqwest::Url::parse(post.endpoint).map_err(|e| format!("bad endpoint: {e}"))?;
    if let Some(host) = url.host_str() {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(address) = literal.parse::<IpAddr>() {
            if !allow_private && is_private(address) {
                return Err(private_refusal(host));
            }
        }
    }
    let mut request = client
        .post(url)
        .header("X-Medplum-Subscription", post.subscription_id)
        .header("X-Medplum-Interaction", post.interaction);
    for (name, value) in post.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    if post.interaction == "delete" {
        request = request.header("X-Medplum-Deleted-Resource", post.reference);
    }
    let body = post.body.unwrap_or("");
    if let Some(secret) = post.secret {
        request = request.header("X-Signature", signature(secret, body));
    }
    if post.body.is_some() {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/fhir+json")
            .body(body.to_string());
    }
    let response = request.send().await.map_err(|e| describe(&e))?;
    let status = response.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// Hex HMAC-SHA256 of `body` keyed with `secret`, as `X-Signature` carries it.
pub fn signature(secret: &str, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The error's chain, so a refused address reads as such.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn private_refusal(host: &str) -> String {
    format!(
        "endpoint host {host} is a loopback, link-local or private address; fhirgate does not call its own network unless FHIRGATE_SUBSCRIPTION_ALLOW_PRIVATE=1"
    )
}

/// Loopback, private, link-local, unique-local, unspecified, shared
/// (100.64/10), broadcast and multicast addresses: none is someone else's
/// server on the internet.
pub fn is_private(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private(IpAddr::V4(v4)),
            None => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local()
            }
        },
    }
}

struct PublicOnly {
    allow_private: bool,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allow_private && addresses.iter().any(|a| is_private(a.ip())) {
                return Err(private_refusal(&host).into());
            }
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
