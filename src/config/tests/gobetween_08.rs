//! Configs that gobetween 0.8 accepts and that betwixt must load too.

use super::{load_ok, load_str};
use crate::config::{CheckKind, Format, LoadOptions};

#[test]
fn zero_weights_load() {
    let loaded = load_ok(
        "[servers.k3s]\nbind = \":6443\"\n[servers.k3s.discovery]\nkind = \"static\"\n\
         static_list = [\"10.0.0.1:6443 weight=0\", \"10.0.0.2:6443 weight=3\"]\n",
    );
    let weights: Vec<u32> = loaded.config.servers["k3s"]
        .backends
        .iter()
        .map(|backend| backend.weight)
        .collect();
    assert_eq!(weights, [0, 3]);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn an_empty_static_list_loads_with_a_warning() {
    for list in ["static_list = []\n", ""] {
        let loaded = load_ok(&format!(
            "[servers.k3s]\nbind = \":6443\"\n[servers.k3s.discovery]\nkind = \"static\"\n{list}"
        ));
        assert!(loaded.config.servers["k3s"].backends.is_empty());
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert_eq!(loaded.warnings[0].key, "servers.k3s.discovery.static_list");
        assert!(loaded.warnings[0].message.contains("closes every client"));
    }
}

#[test]
fn keys_match_in_any_case() {
    let toml = "[Logging]\nLevel = \"debug\"\n[servers.K3s]\nBIND = \":6443\"\nBalance = \"roundrobin\"\n\
                [servers.K3s.Discovery]\nKind = \"static\"\nStatic_List = [\"10.0.0.1:6443\"]\n\
                [servers.K3s.HealthCheck]\nKind = \"ping\"\nInterval = \"3s\"\n";
    let loaded = load_ok(toml);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let server = &loaded.config.servers["K3s"];
    assert_eq!(server.bind.addr.port(), 6443);
    assert_eq!(server.backends.len(), 1);
    assert_eq!(server.balance.to_string(), "roundrobin");
    assert!(matches!(server.healthcheck.kind, CheckKind::Ping));
    assert_eq!(loaded.config.logging.level, crate::config::LogLevel::Debug);

    let json = r#"{"Servers": {"k3s": {"Bind": ":6443",
        "Discovery": {"KIND": "static", "static_LIST": ["10.0.0.1:6443"]}}}}"#;
    let options = LoadOptions {
        format: Format::Json,
        ..LoadOptions::default()
    };
    let loaded = load_str("gobetween.json", json, &options).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.config.servers["k3s"].backends.len(), 1);
}

#[test]
fn ports_may_be_service_names() {
    // https is in Go's built-in table too, so this holds without /etc/services.
    let loaded = load_ok(
        "[servers.web]\nbind = \"127.0.0.1:https\"\n[servers.web.discovery]\nkind = \"static\"\n\
         static_list = [\"10.0.0.1:HTTPS\"]\n",
    );
    let server = &loaded.config.servers["web"];
    assert_eq!(server.bind.addr.port(), 443);
    assert_eq!(server.backends[0].port, 443);
    assert_eq!(server.backends[0].target(), "10.0.0.1:443");
}

#[test]
fn exec_command_is_one_program_path() {
    let server = |command: &str| {
        format!(
            "[servers.k3s]\nbind = \":6443\"\n[servers.k3s.discovery]\nkind = \"static\"\n\
             static_list = [\"10.0.0.1:6443\"]\n[servers.k3s.healthcheck]\nkind = \"exec\"\n\
             interval = \"2s\"\nexec_command = \"{command}\"\n"
        )
    };
    let exec = |loaded: &crate::config::Loaded| match &loaded.config.servers["k3s"].healthcheck.kind
    {
        CheckKind::Exec(exec) => exec.command.clone(),
        other => panic!("{other:?}"),
    };
    let loaded = load_ok(&server("/bin/true"));
    assert_eq!(exec(&loaded), ["/bin/true"]);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    let loaded = load_ok(&server("/bin/check --fast"));
    assert_eq!(exec(&loaded), ["/bin/check --fast"]);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].message.contains("one program path"));
}
