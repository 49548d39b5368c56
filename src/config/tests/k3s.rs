//! A realistic supported config (three k3s masters behind `:6443` and `:9345`) validates into
//! exactly the expected [`Config`], from TOML and from JSON; unknown keys warn or, in strict
//! mode, fail; `${NAME}` substitution works end to end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::{FILE, load, load_errors, load_ok};
use crate::config::*;

const K3S_TOML: &str = r#"
[logging]
level = "warning"
output = "/var/log/gobetween.log"

[api]
enabled = true
bind = "127.0.0.1:8888"

[metrics]
enabled = true

[defaults]
max_connections = 0
client_idle_timeout = "0"
backend_idle_timeout = "0"
backend_connection_timeout = "2s"

[servers.k3s]
bind = ":6443"
protocol = "tcp"
balance = "roundrobin"
client_idle_timeout = "10m"

  [servers.k3s.discovery]
  kind = "static"
  static_list = [
    "10.0.0.11:6443",
    "10.0.0.12:6443 weight=2",
    "10.0.0.13:6443 priority=2",
  ]

  [servers.k3s.healthcheck]
  kind = "ping"
  interval = "2s"
  timeout = "1s"
  fails = 2

  [servers.k3s.access]
  default = "deny"
  rules = ["allow 10.0.0.0/8", "allow 192.168.1.5", "deny ::1"]

[servers.supervisor]
bind = "0.0.0.0:9345"
max_connections = 500
connect_attempts = 2

  [servers.supervisor.discovery]
  kind = "static"
  static_list = ["10.0.0.11:9345", "10.0.0.12:9345", "10.0.0.13:9345"]
"#;

const K3S_JSON: &str = r#"{
  "logging": {"level": "warning", "output": "/var/log/gobetween.log"},
  "api": {"enabled": true, "bind": "127.0.0.1:8888"},
  "metrics": {"enabled": true},
  "defaults": {
    "max_connections": 0,
    "client_idle_timeout": "0",
    "backend_idle_timeout": "0",
    "backend_connection_timeout": "2s"
  },
  "servers": {
    "k3s": {
      "bind": ":6443",
      "protocol": "tcp",
      "balance": "roundrobin",
      "client_idle_timeout": "10m",
      "discovery": {
        "kind": "static",
        "static_list": ["10.0.0.11:6443", "10.0.0.12:6443 weight=2", "10.0.0.13:6443 priority=2"]
      },
      "healthcheck": {"kind": "ping", "interval": "2s", "timeout": "1s", "fails": 2},
      "access": {
        "default": "deny",
        "rules": ["allow 10.0.0.0/8", "allow 192.168.1.5", "deny ::1"]
      }
    },
    "supervisor": {
      "bind": "0.0.0.0:9345",
      "max_connections": 500,
      "connect_attempts": 2,
      "sni": null,
      "discovery": {
        "kind": "static",
        "static_list": ["10.0.0.11:9345", "10.0.0.12:9345", "10.0.0.13:9345"]
      }
    }
  }
}"#;

fn backend(host: &str, port: u16, weight: u32, priority: u32) -> BackendSpec {
    BackendSpec {
        host: host.into(),
        port,
        weight,
        priority,
        max_connections: None,
        sni: None,
    }
}

fn wildcard(text: &str, port: u16) -> BindAddr {
    BindAddr {
        text: text.into(),
        addr: SocketAddr::from(([0, 0, 0, 0], port)),
        dual_stack: true,
    }
}

fn rule(action: AccessAction, network: &str) -> AccessRule {
    let network = network.parse().unwrap_or_else(|_| panic!("{network}"));
    AccessRule { action, network }
}

fn expected_k3s() -> ServerConfig {
    let backends = vec![
        backend("10.0.0.11", 6443, 1, 1),
        backend("10.0.0.12", 6443, 2, 1),
        backend("10.0.0.13", 6443, 1, 2),
    ];
    ServerConfig {
        name: "k3s".into(),
        bind: wildcard(":6443", 6443),
        balance: BalanceKind::RoundRobin,
        max_connections: None,
        client_idle_timeout: Some(Duration::from_secs(600)),
        backend_idle_timeout: None,
        backend_connection_timeout: Some(Duration::from_secs(2)),
        connect_attempts: None,
        close_sessions_on_backend_down: true,
        close_sessions_on_backend_removal: false,
        slow_start: None,
        rebalance: None,
        replay: ReplayConfig::default(),
        client_limits: None,
        accept_proxy: None,
        proxy_protocol: None,
        udp: None,
        tls: None,
        sni: None,
        backends_tls: None,
        access: Some(AccessConfig {
            default: AccessAction::Deny,
            rules: vec![
                rule(AccessAction::Allow, "10.0.0.0/8"),
                rule(AccessAction::Allow, "192.168.1.5/32"),
                rule(AccessAction::Deny, "::1/128"),
            ],
        }),
        backends,
        discovery: DiscoveryConfig::fixed(),
        healthcheck: HealthcheckConfig {
            kind: CheckKind::Ping,
            interval: Duration::from_secs(2),
            timeout: Some(Duration::from_secs(1)),
            fails: 2,
            passes: 1,
            initial_status: InitialStatus::Healthy,
            passive_fails: 3,
        },
    }
}

fn expected_supervisor() -> ServerConfig {
    let backends = (11..=13)
        .map(|n| backend(&format!("10.0.0.{n}"), 9345, 1, 1))
        .collect();
    ServerConfig {
        name: "supervisor".into(),
        bind: wildcard("0.0.0.0:9345", 9345),
        balance: BalanceKind::Weight,
        max_connections: Some(500),
        client_idle_timeout: None,
        backend_idle_timeout: None,
        backend_connection_timeout: Some(Duration::from_secs(2)),
        connect_attempts: Some(2),
        close_sessions_on_backend_down: true,
        close_sessions_on_backend_removal: false,
        slow_start: None,
        rebalance: None,
        replay: ReplayConfig::default(),
        client_limits: None,
        accept_proxy: None,
        proxy_protocol: None,
        udp: None,
        tls: None,
        sni: None,
        backends_tls: None,
        access: None,
        backends,
        discovery: DiscoveryConfig::fixed(),
        healthcheck: HealthcheckConfig {
            kind: CheckKind::None,
            interval: Duration::ZERO,
            timeout: None,
            fails: 1,
            passes: 1,
            initial_status: InitialStatus::Healthy,
            passive_fails: 3,
        },
    }
}

fn expected_config() -> Config {
    let servers = BTreeMap::from([
        ("k3s".to_owned(), expected_k3s()),
        ("supervisor".to_owned(), expected_supervisor()),
    ]);
    Config {
        logging: LoggingConfig {
            level: LogLevel::Warn,
            output: LogOutput::File("/var/log/gobetween.log".into()),
            format: LogFormat::Text,
            access_log: None,
        },
        api: ApiConfig {
            enabled: true,
            bind: "127.0.0.1:8888".into(),
            cors: false,
            allow_exec: false,
            basic_auth: None,
            tls: None,
        },
        metrics: MetricsConfig {
            enabled: true,
            bind: ":9284".into(),
        },
        runtime: RuntimeConfig {
            shutdown_timeout: Duration::from_secs(30),
            forwarding: ForwardingMode::Auto,
            pipe_size: 1 << 20,
            copy_buffer_size: 1 << 20,
            forwarding_memory: 256 << 20,
        },
        servers,
        raw: raw::RawConfig::default(),
    }
}

#[test]
fn k3s_config_validates_into_expected_values() {
    let loaded = load_ok(K3S_TOML);
    let expected = Config {
        raw: loaded.config.raw.clone(),
        ..expected_config()
    };
    assert_eq!(loaded.config, expected);
    assert_eq!(loaded.warnings, Vec::<ConfigWarning>::new());
}

#[test]
fn json_gives_the_same_config() {
    let options = LoadOptions {
        format: Format::Json,
        ..LoadOptions::default()
    };
    let loaded =
        load_str("gobetween.json", K3S_JSON, &options).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(loaded.config, load_ok(K3S_TOML).config);
    assert_eq!(loaded.warnings, Vec::<ConfigWarning>::new());
}

#[test]
fn one_posted_server_validates_alone() {
    let raw: raw::Parsed<raw::RawServer> = raw::parse(
        "POST /servers/k3s",
        r#"{"bind": ":6443", "balance": "roundrobin", "client_idle_timeout": "10m",
            "discovery": {"kind": "static",
              "static_list": ["10.0.0.11:6443", "10.0.0.12:6443 weight=2", "10.0.0.13:6443 priority=2"]},
            "healthcheck": {"kind": "ping", "interval": "2s", "timeout": "1s", "fails": 2},
            "access": {"default": "deny", "rules": ["allow 10.0.0.0/8", "allow 192.168.1.5", "deny ::1"]}}"#,
        Format::Json,
    )
    .expect("parses");
    let defaults = raw::RawDefaults {
        backend_connection_timeout: Some("2s".into()),
        ..raw::RawDefaults::default()
    };
    let (server, warnings) = validate::server("POST /servers/k3s", "k3s", &raw.value, &defaults)
        .unwrap_or_else(|errors| panic!("{errors:?}"));
    assert_eq!(server, expected_k3s());
    assert!(warnings.is_empty());
    let errors = validate::server("POST", "x", &raw::RawServer::default(), &defaults)
        .expect_err("empty server");
    let keys: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        keys,
        [
            "POST: servers.x.bind: missing; expected \"host:port\", such as \":6443\"",
            "POST: servers.x.discovery: missing; add a [servers.x.discovery] table with kind = \"static\" and a static_list"
        ]
    );
}

const UNKNOWN_KEYS: &str = r#"
[defaults]
balance = "roundrobin"

[servers.k3s]
bind = ":6443"
  [servers.k3s.discovery]
  kind = "static"
  static_list = ["10.0.0.11:6443"]
  [servers.k3s.healthcheck]
  kind = "ping"
  interval = "2s"
  ping_timeout_duration = "500ms"
"#;

#[test]
fn unknown_keys_warn_with_their_path() {
    let loaded = load_ok(UNKNOWN_KEYS);
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "gobetween.toml: defaults.balance: unknown key, ignored (as gobetween does); \
             balance is set per server, in [servers.NAME]",
            "gobetween.toml: servers.k3s.healthcheck.ping_timeout_duration: unknown key, ignored \
             (as gobetween does); the check timeout is the healthcheck's \"timeout\" key",
        ]
    );
}

#[test]
fn strict_mode_refuses_unknown_keys() {
    let options = LoadOptions {
        strict: true,
        ..LoadOptions::default()
    };
    let errors = load_str(FILE, UNKNOWN_KEYS, &options).expect_err("strict");
    let keys: Vec<String> = errors
        .0
        .iter()
        .map(|error| match error {
            ConfigError::Invalid { key, message, .. } => format!("{key}: {message}"),
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(keys[0].starts_with("defaults.balance: unknown key, refused in strict mode"));
    assert!(keys[1].starts_with("servers.k3s.healthcheck.ping_timeout_duration: unknown key"));
}

#[test]
fn environment_placeholders_are_substituted() {
    // An unset variable becomes empty, so the bind below becomes ":6443".
    let text = "[servers.k3s]\nbind = \"${BETWIXT_TEST_UNSET_VARIABLE_7Q2}:6443\"\n\
                [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [\"10.0.0.11:6443\"]\n";
    let options = LoadOptions {
        substitute_env: true,
        ..LoadOptions::default()
    };
    let loaded = load_str(FILE, text, &options).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(loaded.config.servers["k3s"].bind.text, ":6443");
    let errors = load_errors(text);
    assert!(errors[0].contains("servers.k3s.bind"), "{errors:?}");
}

#[test]
fn connect_timeout_defaults_to_5s_and_zero_warns() {
    let server = |extra: &str| {
        format!(
            "{extra}[servers.k3s]\nbind = \":6443\"\n[servers.k3s.discovery]\nkind = \"static\"\n\
             static_list = [\"10.0.0.11:6443\"]\n"
        )
    };
    let loaded = load_ok(&server(""));
    let k3s = &loaded.config.servers["k3s"];
    assert_eq!(k3s.backend_connection_timeout, Some(Duration::from_secs(5)));
    assert_eq!(k3s.healthcheck.kind, CheckKind::None);
    let loaded = load_ok(&server("[defaults]\nbackend_connection_timeout = \"0\"\n"));
    assert_eq!(
        loaded.config.servers["k3s"].backend_connection_timeout,
        None
    );
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(
        loaded.warnings[0].key,
        "defaults.backend_connection_timeout"
    );
    assert!(loaded.warnings[0].message.contains("SYN retries"));
}

#[test]
fn no_servers_is_valid_but_warned() {
    let loaded = load_ok("[api]\nenabled = true\n");
    assert!(loaded.config.servers.is_empty());
    assert_eq!(loaded.config.api.bind, "127.0.0.1:8888");
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(loaded.warnings[0].key, "servers");
    assert!(load("").is_ok());
}

#[test]
fn rebalance_keys_fall_back_one_by_one_to_defaults() {
    let text = "[defaults.rebalance]\ninterval = \"10s\"\nmin_age = \"2m\"\n\
        [servers.a]\nbind = \":1\"\n[servers.a.rebalance]\ntolerance = 0.5\n\
        [servers.a.discovery]\nkind = \"static\"\nstatic_list = [\"10.0.0.1:1\"]\n\
        [servers.b]\nbind = \":2\"\nbalance = \"iphash\"\n\
        [servers.b.discovery]\nkind = \"static\"\nstatic_list = [\"10.0.0.1:1\"]\n";
    let loaded = load_ok(text);
    let a = loaded.config.servers["a"].rebalance.clone().unwrap();
    assert_eq!(
        a,
        crate::config::Rebalance {
            interval: Duration::from_secs(10),
            tolerance: 0.5,
            max_fraction: 0.02,
            min_age: Duration::from_secs(120),
        }
    );
    assert_eq!(
        loaded.config.servers["b"].rebalance, None,
        "iphash: ignored"
    );
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.key == "defaults.rebalance.interval" && w.message.contains("iphash"))
    );
    let file =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/k3s.toml")).unwrap();
    let shipped = load_ok(&file).config.servers["k3s"].rebalance.clone();
    assert_eq!(shipped.map(|r| r.interval), Some(Duration::from_secs(10)));
}

#[test]
fn replay_settings_inherit_from_defaults() {
    let server = |name: &str, extra: &str| {
        format!(
            "[servers.{name}]\nbind = \"127.0.0.1:0\"\n{extra}\n[servers.{name}.discovery]\n\
             kind = \"static\"\nstatic_list = [\"10.0.0.11:6443\"]\n"
        )
    };
    let text = format!(
        "[defaults]\nreplay = \"always\"\nfirst_response_timeout = \"2s\"\n{}{}{}",
        server("inherits", ""),
        server(
            "own",
            "replay = \"safe\"\nfirst_response_timeout = \"500ms\""
        ),
        server("none", "first_response_timeout = \"0\""),
    );
    let config = load_ok(&text).config;
    let replay = |name: &str| config.servers[name].replay;
    assert_eq!(replay("inherits").mode, ReplayMode::Always);
    assert_eq!(replay("inherits").timeout(), Some(Duration::from_secs(2)));
    assert_eq!(replay("own").mode, ReplayMode::Safe);
    assert_eq!(replay("own").timeout(), Some(Duration::from_millis(500)));
    assert_eq!(replay("none").timeout(), None);
    let default = load_ok(&server("plain", "")).config.servers["plain"].replay;
    assert_eq!(default.mode, ReplayMode::Safe);
    assert_eq!(default.timeout(), Some(Duration::from_secs(3)));
}
