//! The JSON of gobetween's REST API, as betwixt serves it and as `betwixt status` reads it.
//!
//! Field names and types are gobetween's (`core.Backend`, `stats.Stats`, `info`): `port` is a
//! string, `rx` counts bytes from the backend to the client and `tx` the other way,
//! `discovered` is true for every backend in the server's current list (static, or the last
//! one discovery applied), as gobetween marks the backends its discovery returned.
//! betwixt adds `health` and `admin`, optional, so the types also read gobetween's own answers.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::backend::{self, Health};
use crate::config::BackendSpec;
use crate::snapshot;
use crate::stats::{HandshakeFailure, Traffic};

/// `GET /`: gobetween's keys, in the order its JSON has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Where the configuration came from: `{"kind": "file", "path": ...}`.
    pub configuration: ConfigurationSource,
    pub pid: u32,
    /// RFC 3339.
    #[serde(rename = "startTime")]
    pub start_time: String,
    /// RFC 3339, now.
    pub time: String,
    /// Go's duration syntax, `1h2m3.5s`.
    pub uptime: String,
    pub version: String,
}

/// gobetween's `info.Configuration`: `{"kind": "file", "path"}` for `from-file`,
/// `{"kind": "url", "url"}` for `from-url`, `{"kind": "consul", "host", "key"}` for
/// `from-consul`. Only the fields of the kind are written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigurationSource {
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Consul's `HOST:PORT`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// The Consul key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
}

impl ConfigurationSource {
    /// `from-file PATH` (and `-c PATH`).
    pub fn file(path: &std::path::Path) -> Self {
        Self::of_kind("file", |source| source.path = path.display().to_string())
    }

    /// `from-url URL`.
    pub fn url(url: &str) -> Self {
        Self::of_kind("url", |source| source.url = url.to_owned())
    }

    /// `from-consul HOST:PORT -k KEY`.
    pub fn consul(host: &str, key: &str) -> Self {
        Self::of_kind("consul", |source| {
            source.host = host.to_owned();
            source.key = key.to_owned();
        })
    }

    fn of_kind(kind: &str, fill: impl FnOnce(&mut Self)) -> Self {
        let mut source = Self {
            kind: kind.to_owned(),
            path: String::new(),
            url: String::new(),
            host: String::new(),
            key: String::new(),
        };
        fill(&mut source);
        source
    }

    /// One line for people: the path, the URL, or `KEY at consul HOST`.
    pub fn describe(&self) -> String {
        match self.kind.as_str() {
            "url" => self.url.clone(),
            "consul" => format!("key {} at consul {}", self.key, self.host),
            _ => self.path.clone(),
        }
    }
}

/// `GET /servers/NAME/stats`: a server's counters and its backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// Client sessions open now.
    pub active_connections: u64,
    /// Bytes sent to clients.
    pub rx_total: u64,
    /// Bytes received from clients.
    pub tx_total: u64,
    pub rx_second: u64,
    pub tx_second: u64,
    pub backends: Vec<Backend>,
    /// betwixt, for a server with `[tls]` or `[sni]`. Absent in gobetween's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsCounters>,
}

/// betwixt: a server's handshakes, handshake failures by reason, SNI misses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsCounters {
    pub handshakes: u64,
    /// By reason: `timeout`, `closed`, `malformed`, `incompatible`, `alert`, `other`.
    pub handshake_failures: std::collections::BTreeMap<String, u64>,
    pub sni_unmatched: u64,
}

/// One backend: its spec and its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// IPv6 addresses in brackets, as gobetween reads them from `static_list`.
    pub host: String,
    /// A string, as in gobetween.
    pub port: String,
    pub priority: u32,
    pub weight: u32,
    /// Absent when unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    pub stats: BackendCounters,
}

/// gobetween's `BackendStats`, plus `health` and `admin` (betwixt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendCounters {
    /// Passes its health checks.
    pub live: bool,
    pub discovered: bool,
    /// Sessions ever established.
    pub total_connections: u64,
    /// Sessions open now.
    pub active_connections: u64,
    /// Connects that failed.
    pub refused_connections: u64,
    /// Bytes from the backend to clients.
    pub rx: u64,
    /// Bytes from clients to the backend.
    pub tx: u64,
    pub rx_second: u64,
    pub tx_second: u64,
    /// betwixt: `up` or `down`. Absent in gobetween's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// betwixt: `enabled`, `draining` or `disabled`, set through the API. Absent in
    /// gobetween's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
}

impl Server {
    /// Reads `server`'s counters now.
    pub(crate) fn of(server: &snapshot::Server) -> Self {
        let traffic = &server.stats.traffic;
        Self {
            active_connections: server.stats.active.load(Ordering::Relaxed),
            rx_total: traffic.rx.load(Ordering::Relaxed),
            tx_total: traffic.tx.load(Ordering::Relaxed),
            rx_second: traffic.rx_second.load(Ordering::Relaxed),
            tx_second: traffic.tx_second.load(Ordering::Relaxed),
            backends: server
                .pool
                .backends()
                .iter()
                .map(|backend| Backend::of(backend))
                .collect(),
            tls: (server.config.tls.is_some() || server.config.sni.is_some()).then(|| {
                let tls = &server.stats.tls;
                TlsCounters {
                    handshakes: tls.handshakes.load(Ordering::Relaxed),
                    handshake_failures: HandshakeFailure::ALL
                        .iter()
                        .map(|&reason| (reason.as_str().to_owned(), tls.failures.get(reason)))
                        .collect(),
                    sni_unmatched: tls.sni_unmatched.load(Ordering::Relaxed),
                }
            }),
        }
    }
}

impl Backend {
    /// Reads `backend`'s state and counters now.
    pub(crate) fn of(backend: &backend::Backend) -> Self {
        let state = &backend.state;
        let stats = &state.stats;
        let Traffic {
            rx,
            tx,
            rx_second,
            tx_second,
            ..
        } = &stats.traffic;
        Self {
            host: host_label(&backend.spec),
            port: backend.spec.port.to_string(),
            priority: backend.spec.priority,
            weight: backend.spec.weight,
            max_connections: backend.spec.max_connections,
            sni: backend.spec.sni.clone(),
            stats: BackendCounters {
                live: state.health() == Health::Up,
                discovered: true,
                total_connections: stats.total.load(Ordering::Relaxed),
                active_connections: stats.active.load(Ordering::Relaxed),
                refused_connections: stats.refused.load(Ordering::Relaxed),
                rx: rx.load(Ordering::Relaxed),
                tx: tx.load(Ordering::Relaxed),
                rx_second: rx_second.load(Ordering::Relaxed),
                tx_second: tx_second.load(Ordering::Relaxed),
                health: Some(state.health().to_string()),
                admin: Some(state.admin().to_string()),
            },
        }
    }
}

/// The `host` of a backend as gobetween shows it: an IPv6 address in brackets (its
/// `static_list` parser keeps them), so that `host:port` is the backend's address.
pub(crate) fn host_label(spec: &BackendSpec) -> String {
    if spec.host.contains(':') {
        format!("[{}]", spec.host)
    } else {
        spec.host.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::{Admin, BackendState};
    use crate::forward::Direction;

    fn backend(host: &str, max_connections: Option<u32>) -> backend::Backend {
        let spec = BackendSpec {
            host: host.into(),
            port: 6443,
            weight: 2,
            priority: 1,
            max_connections,
            sni: None,
        };
        backend::Backend::new(spec, Arc::new(BackendState::default()))
    }

    #[test]
    fn backend_report_has_gobetween_fields_and_types() {
        let runtime = backend("::1", None);
        runtime.state.stats.traffic.add(Direction::ToClient, 100);
        runtime.state.stats.traffic.add(Direction::ToBackend, 7);
        runtime.state.set_admin(Admin::Draining);
        let json = serde_json::to_value(Backend::of(&runtime)).unwrap();
        assert_eq!(json["host"], "[::1]");
        assert_eq!(json["port"], "6443");
        assert_eq!(json["weight"], 2);
        assert!(json.get("max_connections").is_none() && json.get("sni").is_none());
        let stats = &json["stats"];
        assert_eq!(
            (stats["rx"].as_u64(), stats["tx"].as_u64()),
            (Some(100), Some(7))
        );
        assert_eq!(stats["live"], true);
        assert_eq!(stats["discovered"], true);
        assert_eq!(stats["admin"], "draining");
        assert_eq!(stats["health"], "up");
    }

    #[test]
    fn gobetween_answers_deserialise() {
        let text = r#"{"host": "10.0.0.1", "port": "6443", "priority": 1, "weight": 1,
            "stats": {"live": false, "discovered": true, "total_connections": 1,
              "active_connections": 0, "refused_connections": 2, "rx": 3, "tx": 4,
              "rx_second": 0, "tx_second": 0}}"#;
        let report: Backend = serde_json::from_str(text).unwrap();
        assert_eq!(report.stats.refused_connections, 2);
        assert_eq!(report.stats.admin, None);
        let limited = Backend::of(&backend("10.0.0.1", Some(5)));
        let json = serde_json::to_value(limited).unwrap();
        assert_eq!(json["max_connections"], 5);
    }
}
