//! `[access]` rules: which client addresses a server accepts.

use std::net::IpAddr;

use crate::config::{AccessAction, AccessConfig};

/// Evaluates a server's access rules: the first rule whose network contains the client decides,
/// otherwise the default. IPv4-mapped IPv6 clients (from a dual-stack listener) are matched as
/// IPv4, so `allow 10.0.0.0/8` means the same on every listener.
pub fn allows(access: &AccessConfig, client: IpAddr) -> bool {
    let client = client.to_canonical();
    let action = access
        .rules
        .iter()
        .find(|rule| rule.network.contains(&client))
        .map_or(access.default, |rule| rule.action);
    action == AccessAction::Allow
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccessRule;

    fn rules(default: AccessAction, rules: &[(AccessAction, &str)]) -> AccessConfig {
        AccessConfig {
            default,
            rules: rules
                .iter()
                .map(|&(action, network)| AccessRule {
                    action,
                    network: network.parse().unwrap(),
                })
                .collect(),
        }
    }

    #[test]
    fn first_match_wins_then_default() {
        use AccessAction::{Allow, Deny};
        let access = rules(
            Deny,
            &[
                (Deny, "10.1.2.3/32"),
                (Allow, "10.0.0.0/8"),
                (Allow, "fd00::/8"),
            ],
        );
        let allowed = |ip: &str| allows(&access, ip.parse().unwrap());
        assert!(!allowed("10.1.2.3"));
        assert!(allowed("10.1.2.4"));
        assert!(allowed("::ffff:10.9.9.9"));
        assert!(allowed("fd12::1"));
        assert!(!allowed("192.168.1.1"));
        assert!(!allowed("::1"));
    }
}
