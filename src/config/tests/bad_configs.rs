//! Configs that must be refused, each with a piece of the message that must name the file, the
//! key and the problem.

use super::{load, load_errors};

const BIND: &str = "bind = \":6443\"";
const DISCOVERY: &str = "kind = \"static\"\nstatic_list = [\"10.0.0.1:6443\", \"10.0.0.2:6443\"]";

/// A server `k3s` with the given server keys, discovery keys and further tables.
fn k3s(server_keys: &str, discovery_keys: &str, tail: &str) -> String {
    format!("[servers.k3s]\n{server_keys}\n[servers.k3s.discovery]\n{discovery_keys}\n{tail}\n")
}

/// A valid `k3s` server plus a healthcheck table with `keys`.
fn check(keys: &str) -> String {
    k3s(
        BIND,
        DISCOVERY,
        &format!("[servers.k3s.healthcheck]\n{keys}"),
    )
}

fn rows() -> Vec<(String, &'static str)> {
    vec![
        (
            k3s("", DISCOVERY, ""),
            "gobetween.toml: servers.k3s.bind: missing; expected \"host:port\"",
        ),
        (
            k3s("bind = \"6443\"", DISCOVERY, ""),
            "gobetween.toml: servers.k3s.bind: \"6443\" is not a valid listen address: expected",
        ),
        (
            k3s("bind = \"::1:6443\"", DISCOVERY, ""),
            "servers.k3s.bind: \"::1:6443\" is not a valid listen address: write an IPv6 address in brackets",
        ),
        (
            k3s(
                &format!("{BIND}\nprotocol = \"udp\""),
                DISCOVERY,
                "[servers.k3s.healthcheck]\nkind = \"ping\"\ninterval = \"2s\"",
            ),
            "gobetween.toml: servers.k3s.healthcheck.kind: kind \"ping\" is a TCP connect and cannot check a udp server",
        ),
        (
            k3s(
                &format!("{BIND}\nprotocol = \"udp\""),
                DISCOVERY,
                "[servers.k3s.udp]\nmax_requests = -1",
            ),
            "gobetween.toml: servers.k3s.udp.max_requests: must be a whole number from 0 (unlimited) up, found -1",
        ),
        (
            k3s(
                &format!("{BIND}\nprotocol = \"udp\""),
                DISCOVERY,
                "[servers.k3s.proxy_protocol]\nversion = \"1\"",
            ),
            "gobetween.toml: servers.k3s.proxy_protocol.version: version 1 is a line for TCP streams; a udp server can send version \"2\"",
        ),
        (
            k3s(&format!("{BIND}\nprotocol = \"quic\""), DISCOVERY, ""),
            "gobetween.toml: servers.k3s.protocol: unknown protocol \"quic\"; expected tcp, tls or udp",
        ),
        (
            k3s(&format!("{BIND}\nprotocol = \"tls\""), DISCOVERY, ""),
            "gobetween.toml: servers.k3s.protocol: protocol \"tls\" needs a [servers.k3s.tls] table with cert_path and key_path",
        ),
        (
            k3s(
                BIND,
                DISCOVERY,
                "[servers.k3s.tls]\ncert_path = \"/c\"\nkey_path = \"/k\"\nmax_version = \"tls1\"",
            ),
            "gobetween.toml: servers.k3s.tls.max_version: \"tls1\" leaves no usable version",
        ),
        (
            k3s(
                BIND,
                DISCOVERY,
                "[servers.k3s.tls]\ncert_path = \"/c\"\nkey_path = \"/k\"\nhandshake_timeout = \"0\"",
            ),
            "gobetween.toml: servers.k3s.tls.handshake_timeout: must be above 0: a client that stalls",
        ),
        (
            k3s(
                BIND,
                DISCOVERY,
                "[servers.k3s.rebalance]\ninterval = \"1s\"\ntolerance = -1",
            ),
            "gobetween.toml: servers.k3s.rebalance.tolerance: -1 is out of range; expected 0 to 10",
        ),
        (
            k3s(
                BIND,
                DISCOVERY,
                "[servers.k3s.rebalance]\ninterval = \"1s\"\nmax_fraction = 0",
            ),
            "gobetween.toml: servers.k3s.rebalance.max_fraction: 0 is out of range; expected above 0",
        ),
        (
            k3s(
                BIND,
                DISCOVERY,
                "[servers.k3s.rebalance]\ninterval = \"soon\"",
            ),
            "gobetween.toml: servers.k3s.rebalance.interval:",
        ),
        (
            k3s(BIND, DISCOVERY, "[servers.k3s.sni]\nread_timeout = \"0\""),
            "gobetween.toml: servers.k3s.sni.read_timeout: must be above 0",
        ),
        (
            k3s(
                BIND,
                DISCOVERY,
                "[servers.k3s.backends_tls]\ncert_path = \"/client.pem\"",
            ),
            "gobetween.toml: servers.k3s.backends_tls.key_path: missing; cert_path and key_path must be given together",
        ),
        (
            k3s(&format!("{BIND}\nbalance = \"random\""), DISCOVERY, ""),
            "gobetween.toml: servers.k3s.balance: unknown balance \"random\"; expected one of weight, roundrobin, leastconn, leastbandwidth, iphash, iphash1",
        ),
        (
            k3s(&format!("{BIND}\nmax_connections = -1"), DISCOVERY, ""),
            "gobetween.toml: servers.k3s.max_connections: must be a whole number from 0 to 4294967295, found -1",
        ),
        (
            format!(
                "[defaults]\nclient_idle_timeout = \"10\"\n{}",
                k3s(BIND, DISCOVERY, "")
            ),
            "gobetween.toml: defaults.client_idle_timeout: invalid duration \"10\": missing unit (use ns, us, ms, s, m or h)",
        ),
        (
            k3s(
                &format!("{BIND}\nbackend_idle_timeout = \"1d\""),
                DISCOVERY,
                "",
            ),
            "gobetween.toml: servers.k3s.backend_idle_timeout: invalid duration \"1d\": unknown unit \"d\"",
        ),
        (
            k3s(
                &format!("{BIND}\nbackend_connection_timeout = \"-5s\""),
                DISCOVERY,
                "",
            ),
            "gobetween.toml: servers.k3s.backend_connection_timeout: invalid duration \"-5s\": negative",
        ),
        (
            format!("[servers.k3s]\n{BIND}\n"),
            "gobetween.toml: servers.k3s.discovery: missing; add a [servers.k3s.discovery] table",
        ),
        (
            k3s(BIND, "static_list = [\"10.0.0.1:6443\"]", ""),
            "gobetween.toml: servers.k3s.discovery.kind: missing; expected kind = \"static\"",
        ),
        (
            k3s(
                BIND,
                "kind = \"lxd\"\nlxd_server_address = \"unix:///var/lib/lxd/unix.socket\"",
                "",
            ),
            "gobetween.toml: servers.k3s.discovery.kind: discovery kind \"lxd\" is not supported by betwixt yet (supported: static, srv, docker, json, exec, plaintext, consul, kubernetes)",
        ),
        (
            k3s(BIND, "kind = \"dns\"", ""),
            "gobetween.toml: servers.k3s.discovery.kind: unknown discovery kind \"dns\"; gobetween has static, srv, docker, json, exec, plaintext, consul, lxd",
        ),
        (
            k3s(
                BIND,
                "kind = \"static\"\nstatic_list = [\"10.0.0.1:6443\", \"10.0.0.2:6443 weigth=2\"]",
                "",
            ),
            "gobetween.toml: servers.k3s.discovery.static_list[1]: \"10.0.0.2:6443 weigth=2\" is not a valid backend; expected host:port[ weight=N][ priority=N][ max_connections=N][ sni=NAME]",
        ),
        (
            k3s(
                BIND,
                "kind = \"static\"\nstatic_list = [\"10.0.0.1:6443\", \"b:1\", \"10.0.0.1:6443 weight=3\"]",
                "",
            ),
            "gobetween.toml: servers.k3s.discovery.static_list[2]: \"10.0.0.1:6443 weight=3\" repeats backend 10.0.0.1:6443, already at static_list[0]",
        ),
        (
            k3s(BIND, &format!("{DISCOVERY}\nfailpolicy = \"drop\""), ""),
            "gobetween.toml: servers.k3s.discovery.failpolicy: unknown value \"drop\"; expected keeplast or setempty",
        ),
        (
            k3s(BIND, &format!("{DISCOVERY}\ninterval = \"5\""), ""),
            "gobetween.toml: servers.k3s.discovery.interval: invalid duration \"5\": missing unit",
        ),
        (
            check("kind = \"ping\""),
            "gobetween.toml: servers.k3s.healthcheck.interval: missing; kind ping needs an interval",
        ),
        (
            check("kind = \"ping\"\ninterval = \"0\""),
            "gobetween.toml: servers.k3s.healthcheck.interval: must be greater than 0 for kind ping",
        ),
        (
            check("interval = \"2s\""),
            "gobetween.toml: servers.k3s.healthcheck.kind: missing; expected ping, probe, exec or none",
        ),
        (
            check("kind = \"http\"\ninterval = \"2s\""),
            "gobetween.toml: servers.k3s.healthcheck.kind: unknown kind \"http\"",
        ),
        (
            check("kind = \"ping\"\ninterval = \"2s\"\nfails = -1"),
            "gobetween.toml: servers.k3s.healthcheck.fails: must be 1 or more, found -1",
        ),
        (
            check("kind = \"ping\"\ninterval = \"2s\"\ninitial_status = \"live\""),
            "gobetween.toml: servers.k3s.healthcheck.initial_status: unknown value \"live\"; expected healthy or unhealthy",
        ),
        (
            check("kind = \"ping\"\ninterval = \"2s\"\ntimeout = \"1 s\""),
            "gobetween.toml: servers.k3s.healthcheck.timeout: invalid duration \"1 s\"",
        ),
        (
            check("kind = \"probe\"\ninterval = \"2s\"\nprobe_send = \"PING\""),
            "gobetween.toml: servers.k3s.healthcheck.probe_recv: missing; kind probe needs probe_send and probe_recv",
        ),
        (
            check("kind = \"probe\"\ninterval = \"2s\"\nprobe_send = 'x\\q'\nprobe_recv = \"y\""),
            "gobetween.toml: servers.k3s.healthcheck.probe_send: \"x\\\\q\" has an invalid escape: unknown escape \\q",
        ),
        (
            check(
                "kind = \"probe\"\ninterval = \"2s\"\nprobe_send = \"x\"\nprobe_recv = \"(\"\n\
                 probe_strategy = \"regexp\"\nprobe_recv_len = 10",
            ),
            "gobetween.toml: servers.k3s.healthcheck.probe_recv: \"(\" is not a valid regular expression",
        ),
        (
            check(
                "kind = \"probe\"\ninterval = \"2s\"\nprobe_send = \"x\"\nprobe_recv = \"^OK\"\n\
                 probe_strategy = \"regexp\"",
            ),
            "gobetween.toml: servers.k3s.healthcheck.probe_recv_len: missing; probe_strategy regexp needs probe_recv_len",
        ),
        (
            check(
                "kind = \"probe\"\ninterval = \"2s\"\nprobe_send = \"x\"\nprobe_recv = \"y\"\nprobe_protocol = \"sctp\"",
            ),
            "gobetween.toml: servers.k3s.healthcheck.probe_protocol: unknown value \"sctp\"; expected tcp, udp or tls",
        ),
        (
            check("kind = \"exec\"\ninterval = \"2s\""),
            "gobetween.toml: servers.k3s.healthcheck.exec_command: missing; kind exec needs a command",
        ),
        (
            check(
                "kind = \"exec\"\ninterval = \"2s\"\nexec_command = \"/bin/check\"\n\
                 exec_expected_positive_output = \"0\"",
            ),
            "gobetween.toml: servers.k3s.healthcheck.exec_expected_negative_output: \"0\" equals exec_expected_positive_output",
        ),
        (
            check("kind = \"https\"\ninterval = \"2s\"\nhttps_path = \"ping\""),
            "gobetween.toml: servers.k3s.healthcheck.https_path: \"ping\" must start with '/'",
        ),
        (
            check("kind = \"https\"\ninterval = \"2s\"\nhttps_expected_status = [200, 99]"),
            "gobetween.toml: servers.k3s.healthcheck.https_expected_status[1]: 99 is not an HTTP status (100 to 599)",
        ),
        (
            check("kind = \"https\"\ninterval = \"2s\"\nhttps_expected_status = []"),
            "gobetween.toml: servers.k3s.healthcheck.https_expected_status: empty; list at least one HTTP status",
        ),
        (
            check("kind = \"tls\"\ninterval = \"2s\"\ntls_cert_path = \"/c.pem\""),
            "gobetween.toml: servers.k3s.healthcheck.tls_key_path: missing; tls_cert_path and tls_key_path must be given together",
        ),
        (
            k3s(
                BIND,
                DISCOVERY,
                "[servers.k3s.access]\nrules = [\"allow 10.0.0.0/8\", \"permit 10.0.0.0/8\"]",
            ),
            "gobetween.toml: servers.k3s.access.rules[1]: \"permit 10.0.0.0/8\" is not a valid rule; expected \"allow ADDRESS\" or \"deny ADDRESS\"",
        ),
        (
            k3s(
                BIND,
                DISCOVERY,
                "[servers.k3s.access]\ndefault = \"reject\"",
            ),
            "gobetween.toml: servers.k3s.access.default: unknown value \"reject\"; expected allow or deny",
        ),
        (
            k3s(
                BIND,
                DISCOVERY,
                "[servers.k3s.proxy_protocol]\nversion = \"3\"",
            ),
            "gobetween.toml: servers.k3s.proxy_protocol.version: unsupported version \"3\"; expected \"1\" or \"2\"",
        ),
        (
            format!(
                "{}[servers.other]\nbind = \"10.0.0.9:6443\"\n[servers.other.discovery]\n{DISCOVERY}\n",
                k3s(BIND, DISCOVERY, "")
            ),
            "gobetween.toml: servers.other.bind: \"10.0.0.9:6443\" conflicts with servers.k3s.bind (\":6443\"): both listen on port 6443",
        ),
        (
            format!(
                "[api]\nenabled = true\nbind = \":6443\"\n{}",
                k3s(BIND, DISCOVERY, "")
            ),
            "gobetween.toml: api.bind: \":6443\" conflicts with servers.k3s.bind (\":6443\")",
        ),
        (
            "[api]\nenabled = true\n[api.tls]\ncert_path = \"/c.pem\"\n".to_owned(),
            "gobetween.toml: api.tls.key_path: missing; [api.tls] needs key_path",
        ),
        (
            "[api.basic_auth]\nlogin = \"admin\"\n".to_owned(),
            "gobetween.toml: api.basic_auth.password: missing; [api.basic_auth] needs password",
        ),
        (
            "[logging]\nlevel = \"verbose\"\n".to_owned(),
            "gobetween.toml: logging.level: unknown value \"verbose\"; expected trace, debug, info, warn, warning, error, fatal or panic",
        ),
        (
            "[logging]\nformat = \"logfmt\"\n".to_owned(),
            "gobetween.toml: logging.format: unknown value \"logfmt\"; expected text, json, gobetween-text or gobetween-json",
        ),
        (
            "[betwixt]\npipe_size = 100\n".to_owned(),
            "gobetween.toml: betwixt.pipe_size: must be from 4096 to 16777216, found 100",
        ),
        (
            "[betwixt]\ncopy_buffer_size = 33554432\n".to_owned(),
            "gobetween.toml: betwixt.copy_buffer_size: must be from 1024 to 16777216, found 33554432",
        ),
        (
            "[betwixt]\nforwarding = \"zerocopy\"\n".to_owned(),
            "gobetween.toml: betwixt.forwarding: unknown value \"zerocopy\"; expected auto, splice, copy or sockmap",
        ),
        (
            "[betwixt]\nshutdown_timeout = \"30\"\n".to_owned(),
            "gobetween.toml: betwixt.shutdown_timeout: invalid duration \"30\": missing unit",
        ),
        (
            "[defaults]\nreplay = \"sometimes\"\n".to_owned(),
            "gobetween.toml: defaults.replay: unknown value \"sometimes\"; expected safe, always or off",
        ),
        (
            k3s(
                &format!("{BIND}\nfirst_response_timeout = \"3\""),
                DISCOVERY,
                "",
            ),
            "gobetween.toml: servers.k3s.first_response_timeout: invalid duration \"3\": missing unit",
        ),
        (
            "[defaults]\nconnect_attempts = -2\n".to_owned(),
            "gobetween.toml: defaults.connect_attempts: must be a whole number from 0 to 4294967295, found -2",
        ),
        (
            k3s(&format!("{BIND}\nmax_connections = \"10\""), DISCOVERY, ""),
            "gobetween.toml: servers.k3s.max_connections: line 3, column 19: invalid type: string \"10\", expected an integer",
        ),
        (
            k3s(BIND, DISCOVERY, "[servers.k3s.healthcheck]\nkind = ping"),
            "gobetween.toml: line 7, column 8: string values must be quoted",
        ),
    ]
}

#[test]
fn every_bad_config_is_refused_with_a_precise_message() {
    let rows = rows();
    assert!(rows.len() >= 20);
    for (text, expected) in rows {
        let errors = load_errors(&text);
        assert!(
            errors.iter().any(|error| error.contains(expected)),
            "expected an error containing\n  {expected}\ngot\n  {}\nfor\n{text}",
            errors.join("\n  ")
        );
    }
}

#[test]
fn every_error_of_a_file_is_reported() {
    let text = "[defaults]\nclient_idle_timeout = \"10\"\n\
                [servers.a]\nbind = \":1\"\nbalance = \"fastest\"\n\
                [servers.a.discovery]\nkind = \"static\"\nstatic_list = [\"h:1 weigth=2\", \"h:0\"]\n\
                [servers.a.healthcheck]\nkind = \"ping\"\n\
                [servers.b]\nbind = \":1\"\n[servers.b.discovery]\nkind = \"consul\"\n";
    let errors = load_errors(text);
    let keys: Vec<&str> = errors
        .iter()
        .map(|error| error.split(": ").nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        [
            "defaults.client_idle_timeout",
            "servers.a.balance",
            "servers.a.discovery.static_list[0]",
            "servers.a.discovery.static_list[1]",
            "servers.a.healthcheck.interval",
            "servers.b.discovery.consul_service_name",
            "servers.b.bind",
        ],
        "{errors:#?}"
    );
}

#[test]
fn a_defaults_error_is_reported_once() {
    let server = |name: &str, port: u16| {
        format!(
            "[servers.{name}]\nbind = \":{port}\"\n[servers.{name}.discovery]\nkind = \"static\"\n\
             static_list = [\"h:1\"]\n"
        )
    };
    let text = format!(
        "[defaults]\nbackend_idle_timeout = \"1x\"\n{}{}",
        server("a", 1),
        server("b", 2)
    );
    let errors = load_errors(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(load("[servers.a]\nbind = \":1\"\n").is_err());
}
