//! `AccessPolicy.ipAccessRule[]`: CIDR ranges (IPv4 and IPv6) that allow or
//! block the caller's address. The first rule whose range holds the address
//! decides; an address no rule names is allowed, as in Medplum (end with
//! `{"value": "*", "action": "block"}` to allow only the listed ranges).

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::PolicyError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRule {
    pub range: IpNet,
    pub allow: bool,
}

impl IpRule {
    pub(crate) fn from_json(rule: &Value, path: &str) -> Result<IpRule, PolicyError> {
        let text = rule["value"].as_str().unwrap_or_default().trim();
        let any: IpNet = "::/0".parse().expect("valid");
        let range = (text == "*")
            .then_some(any)
            .ok_or(())
            .or_else(|_| text.parse::<IpNet>())
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                PolicyError::new(
                    format!("{path}.value"),
                    format!("'{text}' is not an IP address or CIDR range (e.g. 192.0.2.0/24, 2001:db8::/32)"),
                )
            })?;
        let allow = match rule["action"].as_str() {
            Some("allow") => true,
            Some("block") => false,
            other => {
                return Err(PolicyError::new(
                    format!("{path}.action"),
                    format!("action must be 'allow' or 'block', not {other:?}"),
                ))
            }
        };
        Ok(IpRule { range, allow })
    }

    pub(crate) fn to_json(&self) -> Value {
        let action = if self.allow { "allow" } else { "block" };
        serde_json::json!({"value": self.range.to_string(), "action": action})
    }
}

/// Whether `rules` let `address` in. IPv4-mapped IPv6 addresses count as IPv4.
pub(crate) fn allows(rules: &[IpRule], address: IpAddr) -> bool {
    let address = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    };
    let any_v6: IpNet = "::/0".parse().expect("valid");
    rules
        .iter()
        .find(|rule| rule.range.contains(&address) || rule.range == any_v6)
        .is_none_or(|rule| rule.allow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(value: &str, action: &str) -> IpRule {
        IpRule::from_json(&json!({"value": value, "action": action}), "r").unwrap()
    }

    #[test]
    fn first_matching_range_decides() {
        let rules = [
            rule("192.0.2.7", "block"),
            rule("192.0.2.0/24", "allow"),
            rule("2001:db8::/32", "allow"),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(allows(&rules, ip("192.0.2.8")));
        assert!(!allows(&rules, ip("192.0.2.7")));
        assert!(allows(&rules, ip("2001:db8::1")));
        assert!(allows(&rules, ip("::ffff:192.0.2.9")));
        // No rule names it: allowed, unless a catch-all blocks.
        assert!(allows(&rules, ip("198.51.100.1")));
        let mut strict = rules.to_vec();
        strict.push(rule("*", "block"));
        assert!(!allows(&strict, ip("198.51.100.1")));
        assert!(!allows(&strict, ip("2001:db9::1")));
        assert!(allows(&strict, ip("192.0.2.8")));
        assert!(allows(&[], ip("127.0.0.1")));
    }
}
