//! `betwixt status`: asks a running daemon's REST API for its servers and backends and prints
//! them as a table, with health, admin state and counters.
//!
//! It reads only gobetween's endpoints (`/`, `/servers`, `/servers/NAME/stats`), so it also
//! works against gobetween itself; betwixt's extra fields (health, admin state) show as `-`
//! there.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::client::{ApiClient, ClientError};
use betwixt::rest::{Backend as BackendReport, ProcessInfo, Server as ServerReport};

/// `betwixt status`'s options.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// The API's URL, default `http://127.0.0.1:8888`.
    pub api: String,
    pub login: Option<String>,
    pub password: Option<String>,
    /// CA certificate(s) to verify an HTTPS API against, instead of the system's.
    pub ca_cert: Option<PathBuf>,
}

/// What the daemon reported.
#[derive(Debug, Clone)]
pub struct Status {
    pub process: ProcessInfo,
    pub servers: Vec<ServerStatus>,
}

/// One server: its listener and balance from `/servers`, its counters from `/stats`.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    pub name: String,
    pub bind: String,
    pub balance: String,
    pub report: ServerReport,
}

/// Asks the API for the daemon's state.
///
/// # Errors
/// The API cannot be reached, refuses the credentials, or answers something unexpected.
pub async fn fetch(options: &StatusOptions) -> Result<Status, ClientError> {
    let credentials = options
        .login
        .as_deref()
        .map(|login| (login, options.password.as_deref().unwrap_or("")));
    let client = ApiClient::new(&options.api, credentials, options.ca_cert.as_deref())?;
    let process: ProcessInfo = client.get("/").await?;
    let servers: BTreeMap<String, serde_json::Value> = client.get("/servers").await?;
    let mut statuses = Vec::with_capacity(servers.len());
    for (name, config) in servers {
        let path = format!("/servers/{}/stats", encode_segment(&name));
        // `null`: removed between the two requests.
        let Some(report) = client.get::<Option<ServerReport>>(&path).await? else {
            continue;
        };
        let text = |key: &str| config[key].as_str().unwrap_or("-").to_owned();
        statuses.push(ServerStatus {
            bind: text("bind"),
            balance: text("balance"),
            name,
            report,
        });
    }
    Ok(Status {
        process,
        servers: statuses,
    })
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let process = &self.process;
        writeln!(
            f,
            "version {}, pid {}, up {}, configuration {}",
            process.version,
            process.pid,
            process.uptime,
            process.configuration.describe()
        )?;
        if self.servers.is_empty() {
            writeln!(f, "\nno servers")?;
        }
        for server in &self.servers {
            writeln!(f)?;
            write_server(f, server)?;
        }
        writeln!(
            f,
            "\nrx: bytes from backends to clients; tx: bytes from clients to backends"
        )
    }
}

fn write_server(f: &mut fmt::Formatter<'_>, server: &ServerStatus) -> fmt::Result {
    let report = &server.report;
    let up = report
        .backends
        .iter()
        .filter(|backend| backend.stats.live)
        .count();
    writeln!(
        f,
        "server {}  listen {}  balance {}  sessions {}  backends up {up}/{}",
        server.name,
        server.bind,
        server.balance,
        report.active_connections,
        report.backends.len()
    )?;
    writeln!(
        f,
        "  rx {} ({}/s)  tx {} ({}/s)",
        bytes(report.rx_total),
        bytes(report.rx_second),
        bytes(report.tx_total),
        bytes(report.tx_second)
    )?;
    let header = [
        "BACKEND", "HEALTH", "ADMIN", "ACTIVE", "TOTAL", "REFUSED", "RX", "TX", "RX/S", "TX/S",
    ];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    rows.extend(report.backends.iter().map(backend_row));
    write_table(f, &rows, 3)
}

fn backend_row(backend: &BackendReport) -> Vec<String> {
    let stats = &backend.stats;
    let health = stats
        .health
        .clone()
        .unwrap_or_else(|| if stats.live { "up" } else { "down" }.to_owned());
    vec![
        format!("{}:{}", backend.host, backend.port),
        health,
        stats.admin.clone().unwrap_or_else(|| "-".to_owned()),
        stats.active_connections.to_string(),
        stats.total_connections.to_string(),
        stats.refused_connections.to_string(),
        bytes(stats.rx),
        bytes(stats.tx),
        bytes(stats.rx_second),
        bytes(stats.tx_second),
    ]
}

/// Indented by two, columns separated by two spaces; the first `left` columns are aligned
/// left, the others (numbers) right.
fn write_table(f: &mut fmt::Formatter<'_>, rows: &[Vec<String>], left: usize) -> fmt::Result {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .map(|row| row.get(column).map_or(0, |cell| cell.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::from(" ");
        for (column, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if column < left {
                line.push_str(&format!(" {cell:<width$}"));
            } else {
                line.push_str(&format!(" {cell:>width$}"));
            }
            line.push(' ');
        }
        writeln!(f, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `512 B`, `1.5 KiB`, `3.0 MiB`.
fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A server name as one path segment: everything but unreserved characters percent-encoded.
fn encode_segment(name: &str) -> String {
    name.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Whether the daemon answers and every server has a live backend (and the node is not
/// drained), as a keepalived `track_script` wants it: `Ok` with the reason when not.
///
/// Asks the public `/healthz` first; against a daemon without it (gobetween) or to say
/// why not, reads the servers' stats (which may need credentials).
///
/// # Errors
/// The API cannot be reached.
pub async fn check(options: &StatusOptions) -> Result<Result<(), String>, ClientError> {
    let client = ApiClient::new(&options.api, None, options.ca_cert.as_deref())?;
    let (code, _) = client.request(hyper::Method::GET, "/healthz").await?;
    if code.is_success() {
        return Ok(Ok(()));
    }
    let status = match fetch(options).await {
        Ok(status) => status,
        Err(error) if code == hyper::StatusCode::SERVICE_UNAVAILABLE => {
            return Ok(Err(format!("/healthz: {code} ({error})")));
        }
        Err(error) => return Err(error),
    };
    if let Some(server) = status.servers.iter().find(|server| {
        !server
            .report
            .backends
            .iter()
            .any(|backend| backend.stats.live)
    }) {
        return Ok(Err(format!(
            "server {} has no live backend (0/{})",
            server.name,
            server.report.backends.len()
        )));
    }
    if code == hyper::StatusCode::SERVICE_UNAVAILABLE {
        // Every server has a live backend: drained, or its live backends are not enabled.
        return Ok(Err("drained, or no live backend is enabled".to_owned()));
    }
    Ok(Ok(()))
}

/// `betwixt status --check`: one line, exit status 0 only when [`check`] passes.
pub fn run_check(options: &StatusOptions) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match runtime.block_on(check(options)) {
        Ok(Ok(())) => {
            println!("ok");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(reason)) => {
            println!("not ok: {reason}");
            Ok(ExitCode::FAILURE)
        }
        Err(error) => {
            println!("not ok: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `betwixt status`: prints the table; exit status 1 when the API cannot be asked.
pub fn run(options: &StatusOptions) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match runtime.block_on(fetch(options)) {
        Ok(status) => {
            print!("{status}");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("betwixt status: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use betwixt::rest::{BackendCounters, ConfigurationSource};

    #[test]
    fn byte_counts_are_readable() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn names_are_encoded_as_one_segment() {
        assert_eq!(encode_segment("k3s-api_1.x"), "k3s-api_1.x");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn table_shows_backends_with_their_state() {
        let backend = BackendReport {
            host: "10.0.0.11".into(),
            port: "6443".into(),
            priority: 1,
            weight: 1,
            max_connections: None,
            sni: None,
            stats: BackendCounters {
                live: false,
                discovered: true,
                total_connections: 12,
                active_connections: 3,
                refused_connections: 1,
                rx: 2048,
                tx: 10,
                rx_second: 0,
                tx_second: 0,
                health: None,
                admin: Some("draining".into()),
            },
        };
        let status = Status {
            process: ProcessInfo {
                configuration: ConfigurationSource::file("/etc/gobetween.toml".as_ref()),
                pid: 7,
                start_time: String::new(),
                time: String::new(),
                uptime: "1m0s".into(),
                version: "0.1.0".into(),
            },
            servers: vec![ServerStatus {
                name: "k3s".into(),
                bind: ":6443".into(),
                balance: "leastconn".into(),
                report: ServerReport {
                    active_connections: 3,
                    rx_total: 2048,
                    tx_total: 10,
                    rx_second: 0,
                    tx_second: 0,
                    backends: vec![backend],
                    tls: None,
                },
            }],
        };
        let text = status.to_string();
        assert!(
            text.contains(
                "server k3s  listen :6443  balance leastconn  sessions 3  backends up 0/1"
            ),
            "{text}"
        );
        let row = text
            .lines()
            .find(|line| line.contains("10.0.0.11:6443"))
            .unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "10.0.0.11:6443",
                "down",
                "draining",
                "3",
                "12",
                "1",
                "2.0",
                "KiB",
                "10",
                "B",
                "0",
                "B",
                "0",
                "B"
            ]
        );
    }
}
