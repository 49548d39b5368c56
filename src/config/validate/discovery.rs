//! `[servers.NAME.discovery]`: the common keys, then each kind's own. A static list becomes
//! the server's backends; the dynamic kinds get typed settings and start with no backends
//! (their task fills them in). lxd is refused by name.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use super::discovery_sources;
use super::value::{self, choice, given_keys, text};
use super::{Key, Report};
use crate::config::raw::RawDiscovery;
use crate::config::static_list::parse_backend;
use crate::config::{
    BackendSpec, DiscoveryConfig, DiscoveryKind, DnsProtocol, ExecDiscovery, FailPolicy,
    JsonDiscovery, JsonPaths, PlaintextDiscovery, SrvDiscovery,
};

/// Every discovery kind gobetween has, in its documentation's order.
const KINDS: [&str; 8] = [
    "static",
    "srv",
    "docker",
    "json",
    "exec",
    "plaintext",
    "consul",
    "lxd",
];

/// The kinds betwixt implements.
const SUPPORTED: &str = "static, srv, docker, json, exec, plaintext, consul, kubernetes";

/// Keys every kind uses; every other key starts with its kind's name (`srv_lookup_server`).
const COMMON_KEYS: [&str; 4] = ["kind", "failpolicy", "interval", "timeout"];

/// The server's discovery settings and its backends to start with (the static list; empty
/// for a dynamic kind, or when something failed).
pub(super) fn discovery(
    report: &mut Report<'_>,
    server: &Key,
    raw: Option<&RawDiscovery>,
) -> (DiscoveryConfig, Vec<BackendSpec>) {
    let key = server.child("discovery");
    let Some(raw) = raw else {
        report.error(
            &key,
            format!("missing; add a [{key}] table with kind = \"static\" and a static_list"),
        );
        return (DiscoveryConfig::fixed(), Vec::new());
    };
    let (interval, timeout, failpolicy) = check_common(report, &key, raw);
    let kind_key = key.child("kind");
    let kind = match text(&raw.kind) {
        Some("static") => {
            warn_foreign_keys(report, &key, raw, "static");
            return (DiscoveryConfig::fixed(), static_list(report, &key, raw));
        }
        Some(name @ "exec") => exec(report, &key, raw).map(|kind| (name, kind)),
        Some(name @ "plaintext") => plaintext(report, &key, raw).map(|kind| (name, kind)),
        Some(name @ "json") => json(report, &key, raw).map(|kind| (name, kind)),
        Some(name @ "srv") => srv(report, &key, raw).map(|kind| (name, kind)),
        Some(name @ "docker") => discovery_sources::docker(report, &key, raw)
            .map(|source| (name, DiscoveryKind::Docker(source))),
        Some(name @ "consul") => discovery_sources::consul(report, &key, raw)
            .map(|source| (name, DiscoveryKind::Consul(source))),
        Some(name @ "kubernetes") => discovery_sources::kubernetes(report, &key, raw)
            .map(|source| (name, DiscoveryKind::Kubernetes(source))),
        None => {
            report.error(&kind_key, "missing; expected kind = \"static\"");
            None
        }
        Some(kind) if KINDS.contains(&kind) => {
            report.error(
                &kind_key,
                format!(
                    "discovery kind {kind:?} is not supported by betwixt yet (supported: \
                     {SUPPORTED})"
                ),
            );
            None
        }
        Some(kind) => {
            report.error(
                &kind_key,
                format!(
                    "unknown discovery kind {kind:?}; gobetween has {} (betwixt supports \
                     {SUPPORTED})",
                    KINDS.join(", ")
                ),
            );
            None
        }
    };
    let Some((name, kind)) = kind else {
        return (DiscoveryConfig::fixed(), Vec::new());
    };
    warn_foreign_keys(report, &key, raw, name);
    // Kubernetes starts from its seed list (also its way to the API); the others from none.
    let backends = match &kind {
        DiscoveryKind::Kubernetes(source) => source.seed.clone(),
        _ => Vec::new(),
    };
    let timeout = match timeout {
        Some(timeout) => timeout,
        None => kind.default_timeout(),
    };
    let config = DiscoveryConfig {
        kind,
        interval,
        timeout,
        failpolicy,
    };
    (config, backends)
}

/// `interval` (`None`: fetch once), `timeout` (outer `None`: absent, so the kind's default;
/// inner `None`: "0", no limit) and `failpolicy`, checked for every kind (static ignores them).
fn check_common(
    report: &mut Report<'_>,
    key: &Key,
    raw: &RawDiscovery,
) -> (Option<Duration>, Option<Option<Duration>>, FailPolicy) {
    let policies = [
        ("keeplast", FailPolicy::KeepLast),
        ("setempty", FailPolicy::SetEmpty),
    ];
    let failpolicy = choice(
        report,
        &key.child("failpolicy"),
        &raw.failpolicy,
        FailPolicy::KeepLast,
        &policies,
    );
    let interval = text(&raw.interval)
        .and_then(|text| value::duration(report, &key.child("interval"), text))
        .filter(|interval| !interval.is_zero());
    let timeout = text(&raw.timeout).map(|text| {
        value::duration(report, &key.child("timeout"), text).filter(|timeout| !timeout.is_zero())
    });
    (interval, timeout, failpolicy)
}

/// Warns about keys of other discovery kinds, which `kind` ignores.
fn warn_foreign_keys(report: &mut Report<'_>, key: &Key, raw: &RawDiscovery, kind: &str) {
    let own = format!("{kind}_");
    for name in given_keys(raw) {
        let seed = kind == "kubernetes" && name == "static_list";
        if !name.starts_with(&own) && !COMMON_KEYS.contains(&name.as_str()) && !seed {
            report.warn(&key.child(&name), format!("ignored for kind {kind}"));
        }
    }
}

/// `exec_command`: a non-empty argv array whose program is named.
fn exec(report: &mut Report<'_>, key: &Key, raw: &RawDiscovery) -> Option<DiscoveryKind> {
    let command_key = key.child("exec_command");
    let command = raw.exec_command.clone().unwrap_or_default();
    match command.first() {
        None => {
            report.error(
                &command_key,
                "missing; expected the program and its arguments, such as \
                 [\"/usr/local/bin/masters\", \"--port\", \"6443\"]",
            );
            None
        }
        Some(program) if program.is_empty() => {
            report.error(&command_key.index(0), "the program name is empty");
            None
        }
        Some(_) => Some(DiscoveryKind::Exec(ExecDiscovery { command })),
    }
}

/// `plaintext_endpoint` and an optional `plaintext_regex_pattern` with groups host and port.
fn plaintext(report: &mut Report<'_>, key: &Key, raw: &RawDiscovery) -> Option<DiscoveryKind> {
    let endpoint = endpoint(
        report,
        &key.child("plaintext_endpoint"),
        &raw.plaintext_endpoint,
    );
    let pattern_key = key.child("plaintext_regex_pattern");
    let pattern = match text(&raw.plaintext_regex_pattern) {
        None => Ok(None),
        Some(text) => match regex::Regex::new(text) {
            Err(error) => {
                report.error(&pattern_key, format!("not a regular expression: {error}"));
                Err(())
            }
            Ok(pattern) => {
                let names: Vec<&str> = pattern.capture_names().flatten().collect();
                let missing: Vec<&str> = ["host", "port"]
                    .into_iter()
                    .filter(|group| !names.contains(group))
                    .collect();
                if missing.is_empty() {
                    Ok(Some(pattern))
                } else {
                    report.error(
                        &pattern_key,
                        format!(
                            "needs the named groups (?P<host>...) and (?P<port>...); missing: {}",
                            missing.join(", ")
                        ),
                    );
                    Err(())
                }
            }
        },
    };
    Some(DiscoveryKind::Plaintext(PlaintextDiscovery {
        endpoint: endpoint?,
        pattern: pattern.ok()?,
    }))
}

/// `json_endpoint` and the `json_*_pattern` paths, each defaulting to its field's name.
fn json(report: &mut Report<'_>, key: &Key, raw: &RawDiscovery) -> Option<DiscoveryKind> {
    let endpoint = endpoint(report, &key.child("json_endpoint"), &raw.json_endpoint);
    let path = |value: &Option<String>, default: &str| text(value).unwrap_or(default).to_owned();
    let paths = JsonPaths {
        host: path(&raw.json_host_pattern, "host"),
        port: path(&raw.json_port_pattern, "port"),
        weight: path(&raw.json_weight_pattern, "weight"),
        priority: path(&raw.json_priority_pattern, "priority"),
        sni: path(&raw.json_sni_pattern, "sni"),
        max_connections: path(&raw.json_max_connections_pattern, "max_connections"),
    };
    Some(DiscoveryKind::Json(JsonDiscovery {
        endpoint: endpoint?,
        paths,
    }))
}

/// `srv_lookup_server` (`host:port`), `srv_lookup_pattern` and `srv_dns_protocol`.
fn srv(report: &mut Report<'_>, key: &Key, raw: &RawDiscovery) -> Option<DiscoveryKind> {
    let server_key = key.child("srv_lookup_server");
    let server = match text(&raw.srv_lookup_server) {
        None => {
            report.error(
                &server_key,
                "missing; expected the name server as \"host:port\"",
            );
            None
        }
        Some(server) => match server.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Some(server.to_owned())
            }
            _ => {
                report.error(
                    &server_key,
                    format!("{server:?} is not \"host:port\", such as \"10.0.0.2:53\""),
                );
                None
            }
        },
    };
    let name_key = key.child("srv_lookup_pattern");
    let name = match text(&raw.srv_lookup_pattern) {
        None => {
            report.error(
                &name_key,
                "missing; expected the SRV name, such as \"_api._tcp.k3s.example.\"",
            );
            None
        }
        Some(name) if name.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            report.error(&name_key, format!("{name:?} is not a DNS name"));
            None
        }
        Some(name) if name.ends_with('.') => Some(name.to_owned()),
        Some(name) => Some(format!("{name}.")),
    };
    let protocols = [("udp", DnsProtocol::Udp), ("tcp", DnsProtocol::Tcp)];
    let protocol = choice(
        report,
        &key.child("srv_dns_protocol"),
        &raw.srv_dns_protocol,
        DnsProtocol::Udp,
        &protocols,
    );
    Some(DiscoveryKind::Srv(SrvDiscovery {
        server: server?,
        name: name?,
        protocol,
    }))
}

/// An `http://` or `https://` URL with a host.
fn endpoint(report: &mut Report<'_>, key: &Key, value: &Option<String>) -> Option<String> {
    let Some(url) = text(value) else {
        report.error(key, "missing; expected an http:// or https:// URL");
        return None;
    };
    let problem = match url.parse::<hyper::Uri>() {
        Err(error) => Some(error.to_string()),
        Ok(uri) if !matches!(uri.scheme_str(), Some("http" | "https")) => {
            Some("the scheme must be http or https".to_owned())
        }
        Ok(uri) if uri.host().is_none_or(str::is_empty) => Some("no host".to_owned()),
        Ok(_) => None,
    };
    match problem {
        None => Some(url.to_owned()),
        Some(problem) => {
            report.error(
                key,
                format!("{url:?} is not an http:// or https:// URL: {problem}"),
            );
            None
        }
    }
}

/// Each entry parsed; a malformed or repeated entry is an error under its index. Repeats are
/// found through a map by target, so a list of thousands of backends (posted to the API,
/// validated while reloads wait) costs time in proportion to its length.
fn static_list(report: &mut Report<'_>, key: &Key, raw: &RawDiscovery) -> Vec<BackendSpec> {
    let list_key = key.child("static_list");
    let entries = raw.static_list.as_deref().unwrap_or_default();
    if entries.is_empty() {
        // Valid in gobetween: the server listens and closes every client until a reload or
        // the API gives it backends.
        let problem = if raw.static_list.is_none() {
            "missing"
        } else {
            "empty"
        };
        report.warn(
            &list_key,
            format!("{problem}: the server has no backends and closes every client at once"),
        );
        return Vec::new();
    }
    let mut backends: Vec<BackendSpec> = Vec::with_capacity(entries.len());
    let mut first_index: HashMap<String, usize> = HashMap::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let entry_key = list_key.index(index);
        let backend = match parse_backend(entry) {
            Ok(backend) => backend,
            Err(error) => {
                report.error(&entry_key, error.to_string());
                continue;
            }
        };
        match first_index.entry(backend.target()) {
            Entry::Occupied(first) => report.error(
                &entry_key,
                format!(
                    "{entry:?} repeats backend {}, already at static_list[{}]",
                    first.key(),
                    first.get()
                ),
            ),
            Entry::Vacant(slot) => {
                slot.insert(index);
                backends.push(backend);
            }
        }
    }
    backends
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw::RawDiscovery;

    /// 20,000 distinct IPv4 backends, `10.0.0.0` upwards.
    fn entries(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| format!("10.{}.{}.{}:6443", i >> 16, (i >> 8) & 0xff, i & 0xff))
            .collect()
    }

    #[test]
    fn twenty_thousand_backends_with_repeats_named_by_both_positions() {
        let mut list = entries(20_000);
        list[12_345] = list[10_000].clone();
        list[19_999] = format!("{} weight=2", list[3]);
        let raw = RawDiscovery {
            kind: Some("static".into()),
            static_list: Some(list.clone()),
            ..RawDiscovery::default()
        };
        let mut report = Report::new("t.toml");
        let server = Key::server("big");
        let (_, backends) = discovery(&mut report, &server, Some(&raw));

        assert_eq!(backends.len(), 19_998);
        assert_eq!(backends[0].target(), "10.0.0.0:6443");
        assert_eq!(backends[19_997].target(), list[19_998]);
        let messages: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "t.toml: servers.big.discovery.static_list[12345]: \"10.0.39.16:6443\" repeats \
                 backend 10.0.39.16:6443, already at static_list[10000]",
                "t.toml: servers.big.discovery.static_list[19999]: \"10.0.0.3:6443 weight=2\" \
                 repeats backend 10.0.0.3:6443, already at static_list[3]",
            ]
        );
    }

    /// Loads one server `d` with the given discovery keys: the config or every message.
    fn load(discovery_keys: &str) -> Result<(DiscoveryConfig, Vec<String>), Vec<String>> {
        let text = format!(
            "[servers.d]\nbind = \"127.0.0.1:0\"\n[servers.d.discovery]\n{discovery_keys}\n"
        );
        match crate::config::load_str("d.toml", &text, &Default::default()) {
            Ok(loaded) => {
                let warnings = loaded.warnings.iter().map(ToString::to_string).collect();
                let server = &loaded.config.servers["d"];
                assert!(server.backends.is_empty(), "a dynamic server starts empty");
                Ok((server.discovery.clone(), warnings))
            }
            Err(errors) => Err(errors.0.iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn each_kind_gets_gobetweens_defaults() {
        let (exec, warnings) =
            load("kind = \"exec\"\nexec_command = [\"/bin/masters\", \"-a\"]").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            exec,
            DiscoveryConfig {
                kind: DiscoveryKind::Exec(ExecDiscovery {
                    command: vec!["/bin/masters".into(), "-a".into()],
                }),
                interval: None,
                timeout: Some(Duration::from_secs(3)),
                failpolicy: FailPolicy::KeepLast,
            }
        );
        let (srv, _) = load(
            "kind = \"srv\"\nsrv_lookup_server = \"127.0.0.1:53\"\n\
             srv_lookup_pattern = \"_api._tcp.k3s\"\ninterval = \"0\"\ntimeout = \"0\"\n\
             failpolicy = \"setempty\"",
        )
        .unwrap();
        assert_eq!(
            srv,
            DiscoveryConfig {
                kind: DiscoveryKind::Srv(SrvDiscovery {
                    server: "127.0.0.1:53".into(),
                    name: "_api._tcp.k3s.".into(),
                    protocol: DnsProtocol::Udp,
                }),
                interval: None,
                timeout: None,
                failpolicy: FailPolicy::SetEmpty,
            }
        );
        let (json, _) = load(
            "kind = \"json\"\njson_endpoint = \"https://d.example/list\"\n\
                              json_host_pattern = \"node.ip\"\ninterval = \"10s\"",
        )
        .unwrap();
        let DiscoveryKind::Json(settings) = &json.kind else {
            panic!("{json:?}");
        };
        assert_eq!(
            (settings.paths.host.as_str(), settings.paths.port.as_str()),
            ("node.ip", "port")
        );
        assert_eq!(settings.paths.max_connections, "max_connections");
        assert_eq!(
            (json.interval, json.timeout),
            (Some(Duration::from_secs(10)), Some(Duration::from_secs(5)))
        );
        let (plain, _) =
            load("kind = \"plaintext\"\nplaintext_endpoint = \"http://127.0.0.1:8080/m\"").unwrap();
        let DiscoveryKind::Plaintext(settings) = &plain.kind else {
            panic!("{plain:?}");
        };
        assert!(settings.pattern.is_none());
    }

    #[test]
    fn each_problem_is_named_by_its_key() {
        let cases = [
            (
                "kind = \"exec\"",
                "d.toml: servers.d.discovery.exec_command: missing; expected the program and its arguments",
            ),
            (
                "kind = \"exec\"\nexec_command = [\"\"]",
                "d.toml: servers.d.discovery.exec_command[0]: the program name is empty",
            ),
            (
                "kind = \"plaintext\"\nplaintext_endpoint = \"ftp://h/x\"",
                "d.toml: servers.d.discovery.plaintext_endpoint: \"ftp://h/x\" is not an http:// or https:// URL: the scheme must be http or https",
            ),
            (
                "kind = \"plaintext\"\nplaintext_endpoint = \"http://h/x\"\nplaintext_regex_pattern = \"^(?P<host>\\\\S+)$\"",
                "d.toml: servers.d.discovery.plaintext_regex_pattern: needs the named groups (?P<host>...) and (?P<port>...); missing: port",
            ),
            (
                "kind = \"plaintext\"\nplaintext_endpoint = \"http://h/x\"\nplaintext_regex_pattern = \"(\"",
                "d.toml: servers.d.discovery.plaintext_regex_pattern: not a regular expression: ",
            ),
            (
                "kind = \"json\"",
                "d.toml: servers.d.discovery.json_endpoint: missing; expected an http:// or https:// URL",
            ),
            (
                "kind = \"srv\"\nsrv_lookup_pattern = \"_a._tcp.k.\"",
                "d.toml: servers.d.discovery.srv_lookup_server: missing; expected the name server as \"host:port\"",
            ),
            (
                "kind = \"srv\"\nsrv_lookup_server = \"10.0.0.2\"\nsrv_lookup_pattern = \"_a._tcp.k.\"",
                "d.toml: servers.d.discovery.srv_lookup_server: \"10.0.0.2\" is not \"host:port\"",
            ),
            (
                "kind = \"srv\"\nsrv_lookup_server = \"10.0.0.2:53\"",
                "d.toml: servers.d.discovery.srv_lookup_pattern: missing; expected the SRV name",
            ),
            (
                "kind = \"srv\"\nsrv_lookup_server = \"10.0.0.2:53\"\nsrv_lookup_pattern = \"a.\"\nsrv_dns_protocol = \"tls\"",
                "d.toml: servers.d.discovery.srv_dns_protocol: unknown value \"tls\"; expected udp or tcp",
            ),
            (
                "kind = \"exec\"\nexec_command = [\"/bin/m\"]\ntimeout = \"5\"",
                "d.toml: servers.d.discovery.timeout: invalid duration \"5\"",
            ),
            (
                "kind = \"lxd\"",
                "d.toml: servers.d.discovery.kind: discovery kind \"lxd\" is not supported by betwixt yet",
            ),
        ];
        for (keys, expected) in cases {
            let errors = load(keys).map(|_| ()).unwrap_err();
            assert!(
                errors.iter().any(|error| error.starts_with(expected)),
                "expected {expected:?} for {keys:?}, got {errors:#?}"
            );
        }
    }

    #[test]
    fn keys_of_other_kinds_warn_as_ignored() {
        let (_, warnings) = load(
            "kind = \"exec\"\nexec_command = [\"/bin/m\"]\nstatic_list = [\"10.0.0.1:1\"]\n\
             json_endpoint = \"http://h/\"",
        )
        .unwrap();
        assert_eq!(
            warnings,
            [
                "d.toml: servers.d.discovery.json_endpoint: ignored for kind exec",
                "d.toml: servers.d.discovery.static_list: ignored for kind exec",
            ]
        );
    }
}
