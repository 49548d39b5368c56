//! `testdata/every-key.toml` holds every key gobetween reads: betwixt must know them all, refuse
//! the features it lacks by name, and round-trip the raw form through TOML and JSON (`/dump`).

use std::path::PathBuf;
use std::time::Duration;

use super::{FILE, load_ok};
use crate::config::raw::{self, Parsed, RawConfig};
use crate::config::{CheckKind, Format, LogLevel, LogOutput, ProbeProtocol, validate};

const EVERY_KEY: &str = include_str!("../testdata/every-key.toml");

fn parsed() -> Parsed<RawConfig> {
    raw::parse(FILE, EVERY_KEY, Format::Toml).unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn every_gobetween_key_is_known() {
    let parsed = parsed();
    assert_eq!(parsed.unknown_keys, Vec::<String>::new());
    let server = &parsed.value.servers["everything"];
    let discovery = server.discovery.as_ref().expect("discovery");
    assert_eq!(
        discovery.lxd_container_address_type.as_deref(),
        Some("IPv4")
    );
    assert_eq!(discovery.exec_command.as_ref().map(Vec::len), Some(2));
    let check = server.healthcheck.as_ref().expect("healthcheck");
    assert_eq!(check.https_expected_status, Some(vec![200, 204]));
}

#[test]
fn json_uses_the_same_keys() {
    let value: toml::Value = toml::from_str(EVERY_KEY).expect("toml value");
    let json = serde_json::to_string(&value).expect("json");
    let from_json: Parsed<RawConfig> =
        raw::parse("gobetween.json", &json, Format::Json).expect("json parses");
    assert_eq!(from_json.unknown_keys, Vec::<String>::new());
    assert_eq!(from_json.value, parsed().value);
}

#[test]
fn raw_form_round_trips_for_dump() {
    let raw = parsed().value;
    let toml_text = toml::to_string(&raw).expect("serialises to toml");
    let again: Parsed<RawConfig> = raw::parse(FILE, &toml_text, Format::Toml).expect("reparses");
    assert_eq!(again.value, raw, "{toml_text}");
    let json_text = serde_json::to_string_pretty(&raw).expect("serialises to json");
    let again: Parsed<RawConfig> =
        raw::parse(FILE, &json_text, Format::Json).expect("reparses json");
    assert_eq!(again.value, raw);
    let empty = toml::to_string(&RawConfig::default()).expect("empty");
    assert_eq!(empty.trim(), "");
}

/// Every table and key gobetween documents now loads: nothing is refused any more.
#[test]
fn every_gobetween_key_loads() {
    load_ok(EVERY_KEY);
}

/// With the unsupported parts removed, the rest validates, and the keys that do nothing are
/// pointed out.
#[test]
fn supported_keys_validate_and_ignored_ones_warn() {
    let mut raw = parsed().value;
    let server = raw.servers.get_mut("everything").expect("server");
    server.protocol = None;
    (server.tls, server.backends_tls, server.sni, server.udp) = (None, None, None, None);
    if let Some(discovery) = server.discovery.as_mut() {
        discovery.kind = Some("static".into());
    }
    let (config, warnings) = validate::validate(FILE, &raw).unwrap_or_else(|errors| {
        panic!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let warned: Vec<String> = warnings
        .iter()
        .map(|w| format!("{}: {}", w.key, w.message))
        .collect();
    for expected in [
        "profiler: ignored: betwixt has no pprof profiler",
        "acme: ignored: no server's [tls] has acme_hosts",
        "servers.everything.discovery.consul_host: ignored for kind static",
        "servers.everything.discovery.srv_lookup_server: ignored for kind static",
        "servers.everything.healthcheck.exec_command: ignored for kind probe (used by exec)",
        "servers.everything.healthcheck.https_path: ignored for kind probe (used by https)",
    ] {
        assert!(
            warned.iter().any(|w| w == expected),
            "missing {expected:?} in {warned:#?}"
        );
    }
    assert!(
        !warned.iter().any(|w| w.contains("tls_server_name")),
        "{warned:#?}"
    );

    assert_eq!(config.logging.level, LogLevel::Debug);
    assert_eq!(config.logging.output, LogOutput::Stderr);
    assert_eq!(config.runtime.shutdown_timeout, Duration::from_secs(45));
    assert_eq!(
        (config.runtime.pipe_size, config.runtime.copy_buffer_size),
        (131072, 32768)
    );
    let api = &config.api;
    assert!(api.enabled && api.cors);
    assert_eq!(
        api.tls.as_ref().map(|tls| tls.key_path.clone()),
        Some(PathBuf::from("/etc/betwixt/api.key"))
    );
    let server = &config.servers["everything"];
    assert_eq!(server.max_connections, Some(100));
    assert_eq!(
        server.backend_connection_timeout,
        Some(Duration::from_secs(1))
    );
    assert_eq!(server.connect_attempts, Some(3));
    assert!(!server.close_sessions_on_backend_down && server.close_sessions_on_backend_removal);
    assert_eq!(server.backends[0].sni.as_deref(), Some("example.com"));
    assert_eq!(server.healthcheck.passive_fails, 5);
    let CheckKind::Probe(probe) = &server.healthcheck.kind else {
        panic!("probe expected: {:?}", server.healthcheck.kind);
    };
    assert_eq!(probe.send, b"PING\r\n");
    let ProbeProtocol::Tls(tls) = &probe.protocol else {
        panic!("tls probe expected");
    };
    assert_eq!(tls.server_name.as_deref(), Some("redis.local"));
    assert!(tls.client_cert.is_some());
}
