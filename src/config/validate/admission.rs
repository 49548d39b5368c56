//! Who may open a session before a backend is picked, beyond `[access]`: betwixt's
//! `[client_limits]` (per-client caps, inheritable from `[defaults]`) and `[accept_proxy]`
//! (a PROXY header read from trusted balancers in front).

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::value::{self, text};
use super::{Key, Report};
use crate::config::raw::{RawAcceptProxy, RawClientLimits, RawDefaults, RawServer};
use crate::config::{AcceptProxy, ClientLimits};

/// `[accept_proxy] read_timeout` when unset.
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// `[client_limits] table_size` when unset.
const DEFAULT_TABLE_SIZE: i64 = 65_536;

/// The most entries a table may be given: a few hundred MiB at most, a typo cannot ask more.
const MAX_TABLE_SIZE: i64 = 1 << 24;

/// `[client_limits]`, each key from the server's table or else `[defaults.client_limits]`.
/// `None` when neither limit is set.
pub(super) fn client_limits(
    report: &mut Report<'_>,
    server: &Key,
    raw: &RawServer,
    defaults: &RawDefaults,
) -> Option<ClientLimits> {
    let empty = RawClientLimits::default();
    let own = raw.client_limits.as_ref().unwrap_or(&empty);
    let inherited = defaults.client_limits.as_ref().unwrap_or(&empty);
    let number = |name: &str, pick: fn(&RawClientLimits) -> Option<i64>| match (
        pick(own),
        pick(inherited),
    ) {
        (Some(value), _) => (Some(value), server.child("client_limits").child(name)),
        (None, Some(value)) => (
            Some(value),
            Key::root("defaults").child("client_limits").child(name),
        ),
        (None, None) => (None, server.child("client_limits").child(name)),
    };
    let (max, max_key) = number("max_connections", |table| table.max_connections);
    let (rate, rate_key) = number("max_rate", |table| table.max_rate);
    let (v4, v4_key) = number("ipv4_prefix", |table| table.ipv4_prefix);
    let (v6, v6_key) = number("ipv6_prefix", |table| table.ipv6_prefix);
    let (size, size_key) = number("table_size", |table| table.table_size);
    let max_connections = value::limit(report, &max_key, max);
    let max_rate = value::limit(report, &rate_key, rate);
    let ipv4_prefix = value::bounded(report, &v4_key, v4, (1, 32, 32));
    let ipv6_prefix = value::bounded(report, &v6_key, v6, (1, 128, 64));
    let table_size = value::bounded(
        report,
        &size_key,
        size,
        (1, MAX_TABLE_SIZE, DEFAULT_TABLE_SIZE),
    );
    if max_connections.is_none() && max_rate.is_none() {
        return None;
    }
    if text(&raw.protocol) == Some("udp") {
        report.warn(
            &server.child("client_limits"),
            "ignored: client limits apply to TCP connections; a udp server has none",
        );
        return None;
    }
    Some(ClientLimits {
        max_connections,
        max_rate,
        ipv4_prefix: u8::try_from(ipv4_prefix).unwrap_or(32),
        ipv6_prefix: u8::try_from(ipv6_prefix).unwrap_or(64),
        table_size: u32::try_from(table_size).unwrap_or(u32::MAX),
    })
}

/// `[accept_proxy]`: `trusted` (required, addresses or CIDR networks) and `read_timeout`.
pub(super) fn accept_proxy(
    report: &mut Report<'_>,
    key: &Key,
    raw: &RawAcceptProxy,
    udp: bool,
) -> Option<AcceptProxy> {
    if udp {
        report.error(
            key,
            "a PROXY header is read from TCP streams only; a udp server cannot accept one",
        );
        return None;
    }
    let trusted_key = key.child("trusted");
    let mut trusted = Vec::new();
    for (index, source) in raw.trusted.iter().flatten().enumerate() {
        match parse_network(source) {
            Some(network) => trusted.push(network),
            None => report.error(
                &trusted_key.index(index),
                format!("{source:?} is not an IP address or CIDR network, such as \"10.0.0.0/8\""),
            ),
        }
    }
    if raw.trusted.as_ref().is_none_or(Vec::is_empty) {
        report.error(
            &trusted_key,
            "missing; list the balancers in front that may send a PROXY header, such as \
             [\"10.0.0.0/8\"] (a header from anyone else would let a client pick its address)",
        );
        return None;
    }
    let read_timeout = value::timeout(
        report,
        &key.child("read_timeout"),
        text(&raw.read_timeout),
        Some(DEFAULT_HEADER_TIMEOUT),
    )
    .unwrap_or(DEFAULT_HEADER_TIMEOUT);
    Some(AcceptProxy {
        trusted,
        read_timeout,
    })
}

fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    match text.parse::<IpAddr>() {
        Ok(ip) => Some(IpNet::from(ip)),
        Err(_) => text.parse::<IpNet>().ok().map(|network| network.trunc()),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{LoadOptions, load_str};

    fn errors(tables: &str) -> String {
        let text = format!(
            "{tables}\n[servers.k3s]\nbind = \"127.0.0.1:6443\"\n\
             [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [\"10.0.0.1:6443\"]\n"
        );
        match load_str("f.toml", &text, &LoadOptions::default()) {
            Ok(_) => String::new(),
            Err(errors) => errors.to_string(),
        }
    }

    #[test]
    fn client_limits_inherit_from_defaults_and_name_the_key() {
        let text = "[defaults.client_limits]\nmax_connections = 10\nipv6_prefix = 56\n\
                    [servers.k3s]\nbind = \"127.0.0.1:6443\"\n\
                    [servers.k3s.client_limits]\nmax_rate = 5\n\
                    [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [\"10.0.0.1:1\"]\n";
        let config = load_str("f.toml", text, &LoadOptions::default())
            .unwrap()
            .config;
        let limits = config.servers["k3s"].client_limits.unwrap();
        assert_eq!(limits.max_connections, Some(10));
        assert_eq!(limits.max_rate, Some(5));
        assert_eq!((limits.ipv4_prefix, limits.ipv6_prefix), (32, 56));
        assert_eq!(limits.table_size, 65_536);

        assert_eq!(
            errors("[defaults.client_limits]\nmax_connections = -1\nipv4_prefix = 33"),
            "f.toml: defaults.client_limits.max_connections: must be a whole number from 0 to \
             4294967295, found -1\n\
             f.toml: defaults.client_limits.ipv4_prefix: must be from 1 to 32, found 33"
        );
    }

    #[test]
    fn accept_proxy_needs_trusted_networks() {
        let server = |table: &str| {
            let text = format!(
                "[servers.k3s]\nbind = \"127.0.0.1:6443\"\n[servers.k3s.accept_proxy]\n{table}\n\
                 [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [\"10.0.0.1:1\"]\n"
            );
            load_str("f.toml", &text, &LoadOptions::default())
        };
        let config = server("trusted = [\"10.1.2.3/8\", \"::1\"]\nread_timeout = \"2s\"")
            .unwrap()
            .config;
        let accept = config.servers["k3s"].accept_proxy.clone().unwrap();
        assert_eq!(accept.trusted[0].to_string(), "10.0.0.0/8");
        assert_eq!(accept.trusted[1].to_string(), "::1/128");
        assert_eq!(accept.read_timeout, std::time::Duration::from_secs(2));

        let missing = server("read_timeout = \"2s\"").unwrap_err().to_string();
        assert!(
            missing.starts_with("f.toml: servers.k3s.accept_proxy.trusted: missing;"),
            "{missing}"
        );
        let bad = server("trusted = [\"10.0.0.0/8\", \"lb.example\"]")
            .unwrap_err()
            .to_string();
        assert!(
            bad.starts_with("f.toml: servers.k3s.accept_proxy.trusted[1]: \"lb.example\" is not"),
            "{bad}"
        );
    }
}
