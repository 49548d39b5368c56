//! A readable summary of a validated config, printed by `betwixt check`.

use std::fmt;
use std::time::Duration;

use std::process::ExitCode;

use betwixt::config::{CheckKind, Config, FailPolicy, ServerConfig};
use betwixt::daemon::ConfigSource;

/// Displays each server with its listener, algorithm, limits, check and backends.
pub struct Summary<'a>(pub &'a Config);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.servers.is_empty() {
            writeln!(f, "no servers")?;
        }
        for server in self.0.servers.values() {
            write_server(f, server)?;
        }
        Ok(())
    }
}

fn write_server(f: &mut fmt::Formatter<'_>, server: &ServerConfig) -> fmt::Result {
    let family = if server.bind.dual_stack {
        " (IPv4 and IPv6)"
    } else {
        ""
    };
    writeln!(f, "server {}", server.name)?;
    writeln!(
        f,
        "  listen {}{family}, balance {}, max_connections {}",
        server.bind.text,
        server.balance,
        server
            .max_connections
            .map_or("unlimited".to_owned(), |n| n.to_string())
    )?;
    writeln!(
        f,
        "  connect timeout {}, client idle timeout {}, backend idle timeout {}",
        duration(server.backend_connection_timeout),
        duration(server.client_idle_timeout),
        duration(server.backend_idle_timeout)
    )?;
    if let Some(udp) = &server.udp {
        let count = |value: Option<u64>| value.map_or("unlimited".to_owned(), |n| n.to_string());
        writeln!(
            f,
            "  protocol udp, max_requests {}, max_responses {}, transparent {}",
            count(udp.max_requests),
            count(udp.max_responses),
            udp.transparent
        )?;
        if server.client_idle_timeout.is_none() && server.backend_idle_timeout.is_none() {
            writeln!(
                f,
                "  udp sessions end after 60s without a datagram either way"
            )?;
        }
    }
    let check = &server.healthcheck;
    match &check.kind {
        CheckKind::None => writeln!(f, "  healthcheck none")?,
        kind => writeln!(
            f,
            "  healthcheck {} every {:?}, timeout {}, down after {} failures, up after {} passes",
            kind_name(kind),
            check.interval,
            duration(check.timeout),
            check.fails,
            check.passes
        )?,
    }
    if let Some(access) = &server.access {
        writeln!(
            f,
            "  access default {:?}, {} rules",
            access.default,
            access.rules.len()
        )?;
    }
    let discovery = &server.discovery;
    if discovery.is_dynamic() {
        let every = discovery
            .interval
            .map_or("once".to_owned(), |interval| format!("every {interval:?}"));
        let policy = match discovery.failpolicy {
            FailPolicy::KeepLast => "keeplast",
            FailPolicy::SetEmpty => "setempty",
        };
        writeln!(
            f,
            "  discovery {} {every}, timeout {}, failpolicy {policy}: backends are fetched at run time",
            discovery.kind.name(),
            duration(discovery.timeout),
        )?;
        return Ok(());
    }
    writeln!(f, "  backends ({}):", server.backends.len())?;
    for backend in &server.backends {
        write!(
            f,
            "    {:<24} weight {} priority {}",
            backend.target(),
            backend.weight,
            backend.priority
        )?;
        if let Some(max) = backend.max_connections {
            write!(f, " max_connections {max}")?;
        }
        if let Some(sni) = &backend.sni {
            write!(f, " sni {sni}")?;
        }
        writeln!(f)?;
    }
    Ok(())
}

fn kind_name(kind: &CheckKind) -> &'static str {
    match kind {
        CheckKind::None => "none",
        CheckKind::Ping => "ping",
        CheckKind::Probe(_) => "probe",
        CheckKind::Exec(_) => "exec",
        CheckKind::Tls(_) => "tls",
        CheckKind::Https(_) => "https",
    }
}

fn duration(value: Option<Duration>) -> String {
    value.map_or("none".to_owned(), |d| format!("{d:?}"))
}

/// `betwixt check`: reads (or fetches) the config, validates it and prints a summary; exit
/// status 0 or 1.
///
/// # Errors
/// The async runtime a fetch needs cannot start.
pub fn run(source: &ConfigSource) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let name = source.name();
    Ok(match runtime.block_on(source.load()) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", Summary(&loaded.config));
            println!("{name}: configuration is valid");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{name}: configuration is invalid");
            ExitCode::FAILURE
        }
    })
}
