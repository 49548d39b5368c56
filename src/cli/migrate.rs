//! `betwixt migrate`: what changes, server by server, when a gobetween config runs under
//! betwixt, so an operator can review a cutover before making it.
//!
//! Each line is derived from the loaded config (and, to tell "unset" from "set", the raw file
//! it was validated from); the README's "Differences from gobetween" gives the full table.

use std::path::Path;
use std::process::ExitCode;

use betwixt::config::raw::RawConfig;
use betwixt::config::{
    self, BalanceKind, CheckKind, Config, DiscoveryKind, LoadOptions, LogFormat, ServerConfig,
};

/// The differences found in one config: process-wide ones, one list per server, then the
/// loader's warnings (which gobetween would not have printed).
pub struct Review {
    pub process: Vec<String>,
    pub warnings: Vec<String>,
    pub servers: Vec<(String, Vec<String>)>,
}

impl Review {
    /// Reviews `config`; `warnings` are the loader's (unknown keys, ignored tables), each a
    /// place where gobetween stays silent.
    pub fn new(config: &Config, warnings: &[config::ConfigWarning]) -> Self {
        let process = process_differences(config);
        let warnings = warnings.iter().map(ToString::to_string).collect();
        let servers = config
            .servers
            .values()
            .map(|server| (server.name.clone(), server_differences(server, &config.raw)))
            .collect();
        Self {
            process,
            warnings,
            servers,
        }
    }
}

impl std::fmt::Display for Review {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "process")?;
        for line in &self.process {
            writeln!(f, "  - {line}")?;
        }
        for (name, lines) in &self.servers {
            writeln!(f, "server {name}")?;
            if lines.is_empty() {
                writeln!(f, "  (no difference for these settings)")?;
            }
            for line in lines {
                writeln!(f, "  - {line}")?;
            }
        }
        if !self.warnings.is_empty() {
            writeln!(f, "warnings (gobetween loads these silently)")?;
            for warning in &self.warnings {
                writeln!(f, "  - {warning}")?;
            }
        }
        Ok(())
    }
}

fn process_differences(config: &Config) -> Vec<String> {
    let raw = &config.raw;
    let mut lines = vec![
        "SIGHUP re-reads the file and applies the difference without dropping a connection; \
         gobetween exits on it"
            .to_owned(),
        format!(
            "SIGTERM/SIGINT stop accepting and let sessions finish for up to {:?} \
             ([betwixt] shutdown_timeout); gobetween drops every connection",
            config.runtime.shutdown_timeout
        ),
        "`betwixt drain` stops listening and lets sessions finish, for a switchover to a VRRP \
         peer; gobetween has no equivalent"
            .to_owned(),
    ];
    match config.logging.format {
        LogFormat::Text | LogFormat::Json => lines.push(format!(
            "logging: format {:?} prints betwixt's own lines (level, module, message, key=value \
             fields); format = \"gobetween-{0}\" prints gobetween's shape for parsers written \
             against it",
            if config.logging.format == LogFormat::Json {
                "json"
            } else {
                "text"
            },
        )),
        LogFormat::GobetweenText | LogFormat::GobetweenJson => {}
    }
    if config.api.enabled {
        let bind_unset = raw.api.as_ref().and_then(|api| api.bind.as_ref()).is_none();
        if bind_unset {
            lines.push(format!(
                "api: bind unset, so the API listens on {} (loopback only); gobetween's \
                 default :8888 listens on every interface",
                config.api.bind
            ));
        }
        if !config.api.allow_exec {
            lines.push(
                "api: allow_exec is false, so POST /servers/NAME with an exec check answers 403; \
                 gobetween runs any command the API sends"
                    .to_owned(),
            );
        }
        lines.push(
            "api: DELETE /servers/NAME lets the server's sessions drain; gobetween cuts them"
                .to_owned(),
        );
    }
    lines
}

fn server_differences(server: &ServerConfig, raw: &RawConfig) -> Vec<String> {
    let mut lines = Vec::new();
    connect_differences(server, raw, &mut lines);
    discovery_differences(server, raw, &mut lines);
    if !matches!(server.healthcheck.kind, CheckKind::None) {
        check_differences(server, &mut lines);
    }
    if server.udp.is_none() {
        tcp_differences(server, &mut lines);
    } else {
        udp_differences(server, &mut lines);
    }
    if matches!(server.balance, BalanceKind::IpHash | BalanceKind::IpHash1)
        && !server.bind.dual_stack
        && server.bind.addr.is_ipv4()
    {
        lines.push(format!(
            "{}: on the specific IPv4 bind {} the client address is hashed in its 4-byte form, \
             as gobetween does: sticky clients keep their backend",
            server.balance, server.bind.text
        ));
    }
    lines
}

/// How a dynamic discovery kind behaves unlike gobetween's.
fn discovery_differences(server: &ServerConfig, raw: &RawConfig, lines: &mut Vec<String>) {
    let discovery = &server.discovery;
    let kind = discovery.kind.name();
    let strict_lines = match &discovery.kind {
        DiscoveryKind::Static => return,
        DiscoveryKind::Exec(_) => true,
        DiscoveryKind::Plaintext(plaintext) => plaintext.pattern.is_none(),
        DiscoveryKind::Json(_)
        | DiscoveryKind::Srv(_)
        | DiscoveryKind::Docker(_)
        | DiscoveryKind::Consul(_)
        | DiscoveryKind::Kubernetes(_) => false,
    };
    if strict_lines {
        lines.push(format!(
            "discovery {kind}: a line that is not a backend fails the whole fetch (failpolicy \
             applies); gobetween skips the line"
        ));
    }
    if !matches!(
        discovery.kind,
        DiscoveryKind::Plaintext(_) | DiscoveryKind::Json(_)
    ) {
        return health_wait(server, kind, lines);
    }
    lines.push(format!(
        "discovery {kind}: an answer that is not 2xx fails the fetch; gobetween parses any body"
    ));
    let timeout_given = raw
        .servers
        .get(&server.name)
        .and_then(|raw_server| raw_server.discovery.as_ref())
        .is_some_and(|raw_discovery| raw_discovery.timeout.is_some());
    if let (false, Some(limit)) = (timeout_given, discovery.timeout) {
        lines.push(format!(
            "discovery {kind}: timeout unset, so each fetch may take {limit:?}; gobetween's HTTP \
             client waits without limit"
        ));
    }
    health_wait(server, kind, lines);
}

/// New backends wait for a first passed check, which gobetween never waited for.
fn health_wait(server: &ServerConfig, kind: &str, lines: &mut Vec<String>) {
    if !matches!(server.healthcheck.kind, CheckKind::None) {
        lines.push(format!(
            "discovery {kind}: a newly discovered backend gets clients once its first health \
             check (run at once) passes; gobetween sends clients to it at once"
        ));
    }
}

/// Whether the file (server or `[defaults]`) sets `backend_connection_timeout`.
fn connect_timeout_given(server: &ServerConfig, raw: &RawConfig) -> bool {
    let in_server = raw
        .servers
        .get(&server.name)
        .is_some_and(|raw_server| raw_server.backend_connection_timeout.is_some());
    let in_defaults = raw
        .defaults
        .as_ref()
        .is_some_and(|defaults| defaults.backend_connection_timeout.is_some());
    in_server || in_defaults
}

fn connect_differences(server: &ServerConfig, raw: &RawConfig, lines: &mut Vec<String>) {
    match server.backend_connection_timeout {
        Some(timeout) if !connect_timeout_given(server, raw) => lines.push(format!(
            "backend_connection_timeout unset: betwixt gives up a connect after {timeout:?}; \
             gobetween waits for the kernel's SYN retries (minutes) on a powered-off backend"
        )),
        Some(_) => {}
        None => lines.push(
            "backend_connection_timeout \"0\": no connect timeout, as in gobetween (betwixt \
             warns: a powered-off backend holds clients for the kernel's SYN retries)"
                .to_owned(),
        ),
    }
    let attempts = server
        .connect_attempts
        .map_or("every other backend once".to_owned(), |n| {
            format!("up to {n} backends in all")
        });
    lines.push(format!(
        "a failed connect is retried on {attempts} (connect_attempts), the whole wait bounded by \
         one connect timeout when all are down; gobetween closes the client"
    ));
}

fn check_differences(server: &ServerConfig, lines: &mut Vec<String>) {
    let check = &server.healthcheck;
    if server.close_sessions_on_backend_down {
        lines.push(format!(
            "close_sessions_on_backend_down (default true): sessions on a backend marked down \
             are closed once its next check fails too (within about {} intervals of {:?}); \
             gobetween keeps them open",
            check.fails + 1,
            check.interval
        ));
    }
    if check.passive_fails > 0 {
        lines.push(format!(
            "passive_fails = {}: that many consecutive failed client connects mark a backend \
             down before its next check; gobetween has no passive checks",
            check.passive_fails
        ));
    }
    lines.push(
        "a backend added by a reload starts down until its first check passes; gobetween \
         sends clients to it at once"
            .to_owned(),
    );
    lines.push(format!(
        "fails = {} counts consecutive failures only; gobetween also counts failures \
         separated by successes",
        check.fails
    ));
    if let CheckKind::Exec(exec) = &check.kind {
        lines.push(
            "exec output is compared without its trailing newline, and a hung command is \
             killed with its children"
                .to_owned(),
        );
        if let Some(program) = exec.command.first()
            && program.contains(char::is_whitespace)
        {
            lines.push(format!(
                "exec_command {program:?} contains spaces: it is run as one program path, \
                 never split, exactly as gobetween runs it; put arguments in a script"
            ));
        }
    }
}

fn tcp_differences(server: &ServerConfig, lines: &mut Vec<String>) {
    lines.push(
        "a half-closed direction is forwarded and the other goes on; gobetween ends both"
            .to_owned(),
    );
    if let Some(timeout) = server.client_idle_timeout {
        lines.push(format!(
            "client_idle_timeout {timeout:?} is reset only by bytes from the client (as in \
             gobetween): in front of an API server it cuts silent watches such as \
             `kubectl get -w`; consider \"0\""
        ));
    }
    if let Some(timeout) = server.backend_idle_timeout {
        lines.push(format!(
            "backend_idle_timeout {timeout:?} is reset only by bytes from the backend (as in \
             gobetween): in front of an API server it cuts watches with no events; consider \"0\""
        ));
    }
}

fn udp_differences(server: &ServerConfig, lines: &mut Vec<String>) {
    let Some(udp) = &server.udp else {
        return;
    };
    if let Some(responses) = udp.max_responses {
        lines.push(format!(
            "udp max_responses = {responses} counts replies per request; gobetween ends the \
             session at the {responses}-th reply in all, losing replies still in flight"
        ));
    }
    if server.client_idle_timeout.is_none() && server.backend_idle_timeout.is_none() {
        lines.push(
            "udp sessions end after 60s without a datagram either way; with no timeout set \
             gobetween keeps them forever"
                .to_owned(),
        );
    }
}

/// `betwixt migrate`: loads the config like `check`, then prints the review. Exit 0 when the
/// config loads (whatever the differences), 1 when it does not.
pub fn run(path: &Path, options: &LoadOptions) -> ExitCode {
    match config::load_file(path, options) {
        Ok(loaded) => {
            print!("{}", Review::new(&loaded.config, &loaded.warnings));
            println!(
                "{}: loads in betwixt; review the differences above before the cutover",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: configuration is invalid", path.display());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(toml: &str) -> Review {
        let loaded = config::load_str("gobetween.toml", toml, &LoadOptions::default()).unwrap();
        Review::new(&loaded.config, &loaded.warnings)
    }

    fn server_lines(review: &Review) -> String {
        review.servers[0].1.join("\n")
    }

    #[test]
    fn udp_counts_responses_per_request_and_ends_idle_sessions() {
        let review = review(
            r#"
[servers.dns]
bind = "127.0.0.1:5353"
protocol = "udp"
[servers.dns.udp]
max_responses = 2
[servers.dns.discovery]
kind = "static"
static_list = ["127.0.0.1:53"]
"#,
        );
        let lines = server_lines(&review);
        assert!(lines.contains("max_responses = 2 counts replies per request"));
        assert!(lines.contains("after 60s without a datagram"));
        assert!(!lines.contains("half-closed"), "{lines}");
        assert!(
            !lines.contains("passive_fails"),
            "no check, no passive checks"
        );
    }

    #[test]
    fn set_timeouts_and_a_disabled_session_close_are_reported_as_such() {
        let review = review(
            r#"
[defaults]
backend_connection_timeout = "3s"
client_idle_timeout = "10m"
close_sessions_on_backend_down = false
[api]
enabled = true
bind = "127.0.0.1:9999"
[servers.k3s]
bind = "10.0.0.1:6443"
balance = "iphash"
[servers.k3s.discovery]
kind = "static"
static_list = ["127.0.0.1:6443"]
[servers.k3s.healthcheck]
kind = "ping"
interval = "2s"
passive_fails = 0
"#,
        );
        let lines = server_lines(&review);
        assert!(!lines.contains("backend_connection_timeout"), "{lines}");
        assert!(!lines.contains("close_sessions_on_backend_down"), "{lines}");
        assert!(!lines.contains("passive_fails"), "{lines}");
        assert!(lines.contains("client_idle_timeout 600s"), "{lines}");
        assert!(lines.contains("hashed in its 4-byte form"), "{lines}");
        let process = review.process.join("\n");
        assert!(!process.contains("bind unset"), "{process}");
        assert!(process.contains("allow_exec is false"), "{process}");
        assert!(process.contains("format = \"gobetween-text\""), "{process}");
    }

    #[test]
    fn a_gobetween_log_format_is_no_difference() {
        let review = review(
            r#"
[logging]
format = "gobetween-json"
[servers.k3s]
bind = "10.0.0.1:6443"
[servers.k3s.discovery]
kind = "static"
static_list = ["127.0.0.1:6443"]
"#,
        );
        let process = review.process.join("\n");
        assert!(!process.contains("logging"), "{process}");
    }

    #[test]
    fn dynamic_discovery_names_its_stricter_parsing_and_the_first_check() {
        let review = review(
            r#"
[servers.k3s]
bind = "10.0.0.1:6443"
[servers.k3s.discovery]
kind = "plaintext"
plaintext_endpoint = "http://10.0.0.9/masters.txt"
[servers.k3s.healthcheck]
kind = "ping"
interval = "2s"
"#,
        );
        let lines = server_lines(&review);
        for expected in [
            "discovery plaintext: a line that is not a backend fails the whole fetch",
            "discovery plaintext: an answer that is not 2xx fails the fetch",
            "discovery plaintext: timeout unset, so each fetch may take 5s",
            "discovery plaintext: a newly discovered backend gets clients once its first health",
        ] {
            assert!(lines.contains(expected), "{expected:?} in {lines}");
        }
    }
}
