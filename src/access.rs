//! `[access]` rules: which client addresses a server accepts.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use crate::config::{AccessAction, AccessConfig};

/// Evaluates a server's access rules: the first rule whose network contains the client decides,
/// otherwise the default.
///
/// Addresses compare as gobetween's Go `net.IPNet.Contains` compares them: IPv4-mapped IPv6
/// clients (from a dual-stack listener) are matched as IPv4, and so are rules written in
/// IPv4-mapped form (`::ffff:127.0.0.0/104` is `127.0.0.0/8`). So `deny 10.0.0.0/8` means the
/// same on every listener, however the rule or the client address is spelled.
pub fn allows(access: &AccessConfig, client: IpAddr) -> bool {
    let client = client.to_canonical();
    let action = access
        .rules
        .iter()
        .find(|rule| as_ipv4_if_mapped(rule.network).contains(&client))
        .map_or(access.default, |rule| rule.action);
    action == AccessAction::Allow
}

/// The IPv4 network an IPv4-mapped IPv6 network stands for; any other network unchanged.
///
/// Like Go, the network is masked first: only a prefix of 96 bits or more keeps the `ffff`
/// marker, so `::ffff:0:0/80` is the IPv6 network `::/80` and matches no IPv4 client.
fn as_ipv4_if_mapped(network: IpNet) -> IpNet {
    let IpNet::V6(v6) = network else {
        return network;
    };
    let mapped = v6.network().to_ipv4_mapped();
    match (mapped, v6.prefix_len().checked_sub(96)) {
        (Some(v4), Some(prefix)) => Ipv4Net::new(v4, prefix).map_or(network, IpNet::V4),
        _ => network,
    }
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

    /// As with Go's `net.IPNet.Contains`, which gobetween uses: a rule written in IPv4-mapped
    /// form is an IPv4 rule, for IPv4 clients and IPv4-mapped ones alike.
    #[test]
    fn ipv4_mapped_rules_match_ipv4_clients() {
        use AccessAction::{Allow, Deny};
        let access = rules(
            Allow,
            &[
                (Deny, "::ffff:127.0.0.0/104"),
                (Deny, "::ffff:10.1.2.3/128"),
            ],
        );
        let allowed = |ip: &str| allows(&access, ip.parse().unwrap());
        assert!(!allowed("127.0.0.1"));
        assert!(!allowed("::ffff:127.0.0.1"));
        assert!(!allowed("10.1.2.3"));
        assert!(allowed("10.1.2.4"));
        assert!(allowed("128.0.0.1"));
        assert!(allowed("::1"));
    }

    /// Go masks the network first: `::ffff:0:0/80` is `::/80`, an IPv6 network, and `::/0`
    /// matches no IPv4 client.
    #[test]
    fn ipv6_rules_do_not_match_ipv4_clients() {
        use AccessAction::{Allow, Deny};
        let access = rules(Allow, &[(Deny, "::ffff:0.0.0.0/80"), (Deny, "::/0")]);
        assert!(allows(&access, "127.0.0.1".parse().unwrap()));
        assert!(allows(&access, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!allows(&access, "fe80::1".parse().unwrap()));
    }
}
