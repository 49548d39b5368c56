//! One `[servers.NAME]` table: bind, protocol, balance, the connection options merged with
//! `[defaults]`, access rules, PROXY protocol and `[udp]`; discovery and healthcheck have their own files.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

use super::value::{self, Given, choice, text};
use super::{Key, Report, admission, bind, discovery, healthcheck, rebalance, tls};
use crate::config::duration::parse_duration;
use crate::config::raw::{RawAccess, RawAcme, RawDefaults, RawProxyProtocol, RawServer, RawUdp};
use crate::config::{
    AccessAction, AccessConfig, AccessRule, BackendSpec, BalanceKind, BindAddr, CheckKind,
    HealthcheckConfig, ProxyProtocolVersion, Rebalance, ReplayConfig, ReplayMode, ServerConfig,
    UdpConfig,
};

/// `backend_connection_timeout` when neither the server nor `[defaults]` sets it. gobetween
/// has none, so a powered-off backend takes the kernel's SYN retries (minutes) to fail over.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[defaults]`-inheritable keys of one server, resolved.
struct ConnectionOptions {
    max_connections: Option<u32>,
    client_idle_timeout: Option<Duration>,
    backend_idle_timeout: Option<Duration>,
    backend_connection_timeout: Option<Duration>,
    connect_attempts: Option<u32>,
    close_sessions_on_backend_down: bool,
    close_sessions_on_backend_removal: bool,
    slow_start: Option<Duration>,
    rebalance: Option<Rebalance>,
    replay: ReplayConfig,
}

/// The server's `bind`, required. Validated apart from the rest so that listener conflicts
/// are found even between servers with other errors. `None` also for a refused name.
pub(super) fn bind(report: &mut Report<'_>, name: &str, raw: &RawServer) -> Option<BindAddr> {
    if !check_name(report, name) {
        return None;
    }
    let bind_key = Key::server(name).child("bind");
    let Some(text) = text(&raw.bind) else {
        report.error(
            &bind_key,
            "missing; expected \"host:port\", such as \":6443\"",
        );
        return None;
    };
    bind::parse_bind(report, &bind_key, text)
}

/// Validates the rest of one server, given its [`bind()`]; `None` when something failed (the
/// report has it).
pub(super) fn server(
    report: &mut Report<'_>,
    name: &str,
    raw: &RawServer,
    defaults: &RawDefaults,
    acme: Option<&RawAcme>,
    bind: Option<BindAddr>,
) -> Option<ServerConfig> {
    if !check_name(report, name) {
        return None;
    }
    let key = Key::server(name);
    let (udp, terminate) = protocol(report, &key, raw);
    let balance = balance(report, &key, raw);
    let options = connection_options(report, &key, raw, defaults);
    let access = raw
        .access
        .as_ref()
        .map(|access| self::access(report, &key.child("access"), access));
    let proxy_protocol = raw
        .proxy_protocol
        .as_ref()
        .and_then(|proxy| proxy_protocol(report, &key.child("proxy_protocol"), proxy));
    let client_limits = admission::client_limits(report, &key, raw, defaults);
    let accept_proxy = raw.accept_proxy.as_ref().and_then(|table| {
        admission::accept_proxy(report, &key.child("accept_proxy"), table, udp.is_some())
    });
    let (discovery, backends) = discovery::discovery(report, &key, raw.discovery.as_ref());
    let healthcheck =
        healthcheck::healthcheck(report, &key.child("healthcheck"), raw.healthcheck.as_ref());
    if udp.is_some() {
        check_udp_healthcheck(report, &key, &healthcheck);
        check_udp_backends(report, &key, &backends);
    }
    let tls_termination = raw
        .tls
        .as_ref()
        .filter(|_| terminate)
        .and_then(|table| tls::termination(report, &key.child("tls"), table, acme));
    let backends_tls = raw
        .backends_tls
        .as_ref()
        .filter(|_| udp.is_none())
        .and_then(|table| tls::backends(report, &key.child("backends_tls"), table));
    let sni = raw
        .sni
        .as_ref()
        .filter(|_| udp.is_none())
        .map(|table| tls::sni(report, &key, table, &backends));
    Some(ServerConfig {
        name: name.to_owned(),
        bind: bind?,
        balance,
        max_connections: options.max_connections,
        client_idle_timeout: options.client_idle_timeout,
        backend_idle_timeout: options.backend_idle_timeout,
        backend_connection_timeout: options.backend_connection_timeout,
        connect_attempts: options.connect_attempts,
        close_sessions_on_backend_down: options.close_sessions_on_backend_down,
        close_sessions_on_backend_removal: options.close_sessions_on_backend_removal,
        slow_start: options.slow_start,
        rebalance: options.rebalance,
        replay: options.replay,
        proxy_protocol,
        udp,
        access,
        client_limits,
        accept_proxy,
        tls: tls_termination,
        sni,
        backends_tls,
        backends,
        discovery,
        healthcheck,
    })
}

/// Refuses a server name with a control character: names are printed in log lines, error
/// messages and API replies, and a newline or terminal escape in one could forge a log line.
/// No other error is reported for such a server, so its raw name is printed nowhere. Reported
/// by both [`bind()`] and [`server()`]; the report lists it once.
fn check_name(report: &mut Report<'_>, name: &str) -> bool {
    if !name.chars().any(char::is_control) {
        return true;
    }
    report.error(
        &Key::root("servers").child(&format!("{name:?}")),
        "a server name must not contain control characters (such as a newline or an escape), \
         which would be printed raw in log lines",
    );
    false
}

/// Validates `[defaults]` on its own, so its errors show even with no server inheriting them.
pub(super) fn check_defaults(report: &mut Report<'_>, defaults: &RawDefaults) {
    let key = Key::root("defaults");
    connection_options(report, &key, &RawServer::default(), defaults);
    admission::client_limits(report, &key, &RawServer::default(), defaults);
}

/// tcp, tls and udp. Returns the `[udp]` settings when `protocol = "udp"`, and whether the
/// server terminates TLS: protocol tls, or (as gobetween) tcp with a `[tls]` table.
fn protocol(report: &mut Report<'_>, key: &Key, raw: &RawServer) -> (Option<UdpConfig>, bool) {
    let protocol_key = key.child("protocol");
    let udp = match text(&raw.protocol) {
        None | Some("tcp") => false,
        Some("udp") => true,
        Some("tls") => {
            if raw.tls.is_none() {
                report.error(
                    &protocol_key,
                    format!(
                        "protocol \"tls\" needs a [{key}.tls] table with cert_path and key_path"
                    ),
                );
            }
            false
        }
        Some(protocol) => {
            report.error(
                &protocol_key,
                format!("unknown protocol {protocol:?}; expected tcp, tls or udp"),
            );
            false
        }
    };
    if udp {
        let tables = [
            ("tls", raw.tls.is_some()),
            ("backends_tls", raw.backends_tls.is_some()),
            ("sni", raw.sni.is_some()),
        ];
        for (table, _) in tables.iter().filter(|(_, present)| *present) {
            report.error(
                &key.child(table),
                "TLS and SNI are for TCP streams; a udp server cannot use this table",
            );
        }
    }
    let terminate = !udp && raw.tls.is_some();
    if !udp {
        if raw.udp.is_some() {
            report.warn(
                &key.child("udp"),
                "ignored: the server's protocol is not \"udp\"",
            );
        }
        return (None, terminate);
    }
    let version = raw
        .proxy_protocol
        .as_ref()
        .and_then(|proxy| proxy.version.as_deref());
    if version == Some("1") {
        report.error(
            &key.child("proxy_protocol").child("version"),
            "version 1 is a line for TCP streams; a udp server can send version \"2\", \
             whose header goes before each datagram",
        );
    }
    let udp = raw.udp.as_ref().map_or_else(UdpConfig::default, |table| {
        udp_options(report, &key.child("udp"), table)
    });
    (Some(udp), false)
}

/// `[udp]`: `max_requests`, `max_responses` (0 = unlimited) and `transparent`.
fn udp_options(report: &mut Report<'_>, key: &Key, raw: &RawUdp) -> UdpConfig {
    let mut count = |name: &str, value: Option<i64>| {
        let value = value?;
        match u64::try_from(value) {
            Ok(0) => None,
            Ok(count) => Some(count),
            Err(_) => {
                report.error(
                    &key.child(name),
                    format!("must be a whole number from 0 (unlimited) up, found {value}"),
                );
                None
            }
        }
    };
    let max_requests = count("max_requests", raw.max_requests);
    let max_responses = count("max_responses", raw.max_responses);
    let transparent = raw.transparent.unwrap_or(false);
    if max_requests == Some(1) && max_responses.is_some() && !transparent {
        report.warn(
            &key.child("max_responses"),
            "ignored with max_requests = 1 (fire-and-forget): replies are not read, as in gobetween",
        );
    }
    UdpConfig {
        max_requests,
        max_responses,
        transparent,
    }
}

/// A UDP session opens its backend socket on the receive path, which cannot wait for a DNS
/// lookup: backends of a udp server are IP addresses.
fn check_udp_backends(report: &mut Report<'_>, key: &Key, backends: &[BackendSpec]) {
    for (index, backend) in backends.iter().enumerate() {
        if backend.ip_addr().is_none() {
            report.error(
                &key.child("discovery").child("static_list").index(index),
                format!(
                    "{:?}: a udp server's backends must be IP addresses, not host names",
                    backend.target()
                ),
            );
        }
    }
}

/// gobetween refuses `kind = "ping"` on a udp server: it is a TCP connect, which says nothing
/// about a UDP service.
fn check_udp_healthcheck(report: &mut Report<'_>, key: &Key, healthcheck: &HealthcheckConfig) {
    if matches!(healthcheck.kind, CheckKind::Ping) {
        report.error(
            &key.child("healthcheck").child("kind"),
            "kind \"ping\" is a TCP connect and cannot check a udp server (gobetween refuses it \
             too); use kind = \"probe\" with probe_protocol = \"udp\", or kind = \"exec\"",
        );
    }
}

fn balance(report: &mut Report<'_>, key: &Key, raw: &RawServer) -> BalanceKind {
    let Some(name) = text(&raw.balance) else {
        return BalanceKind::default();
    };
    BalanceKind::from_str(name).unwrap_or_else(|error| {
        report.error(&key.child("balance"), error.to_string());
        BalanceKind::default()
    })
}

/// The server's own value if it has one, else the `[defaults]` one, with the key it came from.
fn pick<'a, T>(
    server: &Key,
    own: &'a Option<T>,
    default: &'a Option<T>,
    name: &str,
) -> (Option<&'a T>, Key) {
    match (own, default) {
        (Some(value), _) => (Some(value), server.child(name)),
        (None, Some(value)) => (Some(value), Key::root("defaults").child(name)),
        (None, None) => (None, server.child(name)),
    }
}

fn connection_options(
    report: &mut Report<'_>,
    key: &Key,
    raw: &RawServer,
    defaults: &RawDefaults,
) -> ConnectionOptions {
    let (max, max_key) = pick(
        key,
        &raw.max_connections,
        &defaults.max_connections,
        "max_connections",
    );
    let max_connections = value::limit(report, &max_key, max.copied());
    let (idle, idle_key) = pick(
        key,
        &raw.client_idle_timeout,
        &defaults.client_idle_timeout,
        "client_idle_timeout",
    );
    let client_idle_timeout = value::timeout(report, &idle_key, idle.map(String::as_str), None);
    let (idle, idle_key) = pick(
        key,
        &raw.backend_idle_timeout,
        &defaults.backend_idle_timeout,
        "backend_idle_timeout",
    );
    let backend_idle_timeout = value::timeout(report, &idle_key, idle.map(String::as_str), None);
    let backend_connection_timeout = connect_timeout(report, key, raw, defaults);
    let (attempts, attempts_key) = pick(
        key,
        &raw.connect_attempts,
        &defaults.connect_attempts,
        "connect_attempts",
    );
    let connect_attempts = value::limit(report, &attempts_key, attempts.copied());
    let (down, _) = pick(
        key,
        &raw.close_sessions_on_backend_down,
        &defaults.close_sessions_on_backend_down,
        "",
    );
    let (removal, _) = pick(
        key,
        &raw.close_sessions_on_backend_removal,
        &defaults.close_sessions_on_backend_removal,
        "",
    );
    let (slow, slow_key) = pick(key, &raw.slow_start, &defaults.slow_start, "slow_start");
    let slow_start = value::timeout(report, &slow_key, slow.map(String::as_str), None);
    if slow_start.is_some() && matches!(raw.balance.as_deref(), Some("iphash" | "iphash1")) {
        report.warn(
            &slow_key,
            "ignored with balance iphash/iphash1: a hashed client keeps its backend",
        );
    }
    ConnectionOptions {
        max_connections,
        client_idle_timeout,
        backend_idle_timeout,
        backend_connection_timeout,
        connect_attempts,
        close_sessions_on_backend_down: down.copied().unwrap_or(true),
        close_sessions_on_backend_removal: removal.copied().unwrap_or(false),
        slow_start,
        rebalance: rebalance::rebalance(
            report,
            key,
            raw.rebalance.as_ref(),
            defaults.rebalance.as_ref(),
            raw.balance.as_deref(),
        ),
        replay: replay(report, key, raw, defaults),
    }
}

/// `first_response_timeout` (default 3s, "0" = off) and `replay` (safe, always or off).
fn replay(
    report: &mut Report<'_>,
    key: &Key,
    raw: &RawServer,
    defaults: &RawDefaults,
) -> ReplayConfig {
    let name = "first_response_timeout";
    let (timeout, at) = pick(
        key,
        &raw.first_response_timeout,
        &defaults.first_response_timeout,
        name,
    );
    let default = ReplayConfig::default();
    let first_response_timeout = value::timeout(
        report,
        &at,
        timeout.map(String::as_str),
        default.first_response_timeout,
    );
    let (mode, at) = pick(key, &raw.replay, &defaults.replay, "replay");
    let modes = [
        ("safe", ReplayMode::Safe),
        ("always", ReplayMode::Always),
        ("off", ReplayMode::Off),
    ];
    let mode = choice(report, &at, &mode.cloned(), default.mode, &modes);
    ReplayConfig {
        first_response_timeout,
        mode,
    }
}

/// `backend_connection_timeout`: 5s when unset; an explicit "0" disables it, with a warning.
fn connect_timeout(
    report: &mut Report<'_>,
    key: &Key,
    raw: &RawServer,
    defaults: &RawDefaults,
) -> Option<Duration> {
    let name = "backend_connection_timeout";
    let (value, at) = pick(
        key,
        &raw.backend_connection_timeout,
        &defaults.backend_connection_timeout,
        name,
    );
    let text = value.map(String::as_str).filter(|text| !text.is_empty());
    if text.and_then(|text| parse_duration(text).ok()) == Some(Duration::ZERO) {
        report.warn(
            &at,
            "\"0\" disables the connect timeout: a powered-off backend then takes minutes (the \
             kernel's SYN retries) to fail over; betwixt's default is 5s",
        );
    }
    value::timeout(report, &at, text, Some(DEFAULT_CONNECT_TIMEOUT))
}

/// `[access]`: default allow; rules `"allow CIDR"` or `"deny IP"`, first match wins.
fn access(report: &mut Report<'_>, key: &Key, raw: &RawAccess) -> AccessConfig {
    let actions = [("allow", AccessAction::Allow), ("deny", AccessAction::Deny)];
    let default = choice(
        report,
        &key.child("default"),
        &raw.default,
        AccessAction::Allow,
        &actions,
    );
    let mut rules = Vec::new();
    for (index, rule) in raw.rules.iter().flatten().enumerate() {
        match parse_rule(rule) {
            Ok(parsed) => rules.push(parsed),
            Err(problem) => report.error(
                &key.child("rules").index(index),
                format!(
                    "{rule:?} is not a valid rule; expected \"allow ADDRESS\" or \"deny ADDRESS\" \
                     with an IP address or CIDR network, such as \"allow 10.0.0.0/8\" ({problem})"
                ),
            ),
        }
    }
    if default == AccessAction::Deny && !raw.rules.given() {
        report.warn(
            key,
            "default = \"deny\" and no rules: every client is refused",
        );
    }
    AccessConfig { default, rules }
}

fn parse_rule(rule: &str) -> Result<AccessRule, String> {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let [action, target] = words[..] else {
        return Err(match words.len() {
            0 => "it is empty".to_owned(),
            1 => "the address is missing".to_owned(),
            _ => "it has more than two words".to_owned(),
        });
    };
    let action = match action {
        "allow" => AccessAction::Allow,
        "deny" => AccessAction::Deny,
        other => return Err(format!("{other:?} is neither allow nor deny")),
    };
    let network = match target.parse::<IpAddr>() {
        Ok(ip) => IpNet::from(ip),
        Err(_) => target
            .parse::<IpNet>()
            .map_err(|_| format!("{target:?} is not an IP address or CIDR network"))?
            .trunc(),
    };
    Ok(AccessRule { action, network })
}

/// `[proxy_protocol]`: `version = "1"` (gobetween's) or `"2"`.
fn proxy_protocol(
    report: &mut Report<'_>,
    key: &Key,
    raw: &RawProxyProtocol,
) -> Option<ProxyProtocolVersion> {
    let version_key = key.child("version");
    match text(&raw.version) {
        Some("1") => return Some(ProxyProtocolVersion::V1),
        Some("2") => return Some(ProxyProtocolVersion::V2),
        None => report.error(&version_key, "missing; expected \"1\" or \"2\""),
        Some(version) => report.error(
            &version_key,
            format!("unsupported version {version:?}; expected \"1\" or \"2\""),
        ),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, LoadOptions, load_str};

    #[test]
    fn server_names_with_control_characters_are_refused() {
        let text = "[servers.\"k3s\\nERROR forged\"]\nbind = \":6443\"\nbalance = \"nope\"\n\
                    [servers.\"k3s\\nERROR forged\".discovery]\nkind = \"static\"\n\
                    static_list = [\"10.0.0.1:6443\"]\n";
        let errors = load_str("f.toml", text, &LoadOptions::default()).expect_err("refused");
        let [ConfigError::Invalid { key, message, .. }] = errors.0.as_slice() else {
            panic!("one error expected: {errors}");
        };
        assert_eq!(key, r#"servers."k3s\nERROR forged""#);
        assert!(message.contains("control characters"), "{message}");
        assert!(!errors.to_string().contains('\n'), "{errors}");

        let raw = RawServer {
            bind: Some(":1".into()),
            ..RawServer::default()
        };
        let errors =
            crate::config::validate::server("POST", "a\u{1b}[2Jb", &raw, &RawDefaults::default())
                .expect_err("refused");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .to_string()
                .starts_with(r#"POST: servers."a\u{1b}[2Jb": "#)
        );
    }

    #[test]
    fn access_rules() {
        let rule =
            |text: &str| parse_rule(text).map(|rule| (rule.action, rule.network.to_string()));
        assert_eq!(
            rule("allow 10.0.0.0/8"),
            Ok((AccessAction::Allow, "10.0.0.0/8".into()))
        );
        assert_eq!(
            rule("deny 1.2.3.4"),
            Ok((AccessAction::Deny, "1.2.3.4/32".into()))
        );
        assert_eq!(rule("deny ::1"), Ok((AccessAction::Deny, "::1/128".into())));
        assert_eq!(
            rule("allow 10.1.2.3/8"),
            Ok((AccessAction::Allow, "10.0.0.0/8".into()))
        );
        assert_eq!(
            rule("allow  fd00::/8"),
            Ok((AccessAction::Allow, "fd00::/8".into()))
        );
        assert!(rule("permit 10.0.0.0/8").is_err());
        assert!(rule("allow").is_err());
        assert!(rule("allow 10.0.0.0/33").is_err());
        assert!(rule("allow 10.0.0.0/8 extra").is_err());
        assert!(rule("allow example.com").is_err());
    }
}
