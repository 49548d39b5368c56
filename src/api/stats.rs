//! `GET /servers/NAME/stats`: gobetween's JSON shape of a server's and its backends' counters,
//! read from the live atomics, plus betwixt's health and admin state.
//!
//! Field names and types are gobetween's (`core.Backend`, `stats.Stats`): `port` is a string,
//! `rx` counts bytes from the backend to the client and `tx` the other way, `discovered` is
//! true for every backend in the config (betwixt only has static discovery). The types also
//! deserialise gobetween's own answers, so `betwixt status` can read either.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::backend::{Admin, Backend, Health};
use crate::config::BackendSpec;
use crate::snapshot::Server;
use crate::stats::Traffic;

/// A server's counters and its backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerReport {
    /// Client sessions open now.
    pub active_connections: u64,
    /// Bytes sent to clients.
    pub rx_total: u64,
    /// Bytes received from clients.
    pub tx_total: u64,
    pub rx_second: u64,
    pub tx_second: u64,
    pub backends: Vec<BackendReport>,
}

/// One backend: its spec and its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendReport {
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

impl ServerReport {
    /// Reads `server`'s counters now.
    pub fn of(server: &Server) -> Self {
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
                .map(|backend| BackendReport::of(backend))
                .collect(),
        }
    }
}

impl BackendReport {
    /// Reads `backend`'s state and counters now.
    pub fn of(backend: &Backend) -> Self {
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
                health: Some(health_name(state.health()).to_owned()),
                admin: Some(admin_name(state.admin()).to_owned()),
            },
        }
    }
}

/// The `host` of a backend as gobetween shows it: an IPv6 address in brackets (its
/// `static_list` parser keeps them), so that `host:port` is the backend's address.
pub fn host_label(spec: &BackendSpec) -> String {
    if spec.host.contains(':') {
        format!("[{}]", spec.host)
    } else {
        spec.host.clone()
    }
}

/// `up` or `down`.
pub fn health_name(health: Health) -> &'static str {
    match health {
        Health::Up => "up",
        Health::Down => "down",
    }
}

/// `enabled`, `draining` or `disabled`.
pub fn admin_name(admin: Admin) -> &'static str {
    match admin {
        Admin::Enabled => "enabled",
        Admin::Draining => "draining",
        Admin::Disabled => "disabled",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::BackendState;
    use crate::forward::Direction;

    fn backend(host: &str, max_connections: Option<u32>) -> Backend {
        let spec = BackendSpec {
            host: host.into(),
            port: 6443,
            weight: 2,
            priority: 1,
            max_connections,
            sni: None,
        };
        Backend::new(spec, Arc::new(BackendState::default()))
    }

    #[test]
    fn backend_report_has_gobetween_fields_and_types() {
        let backend = backend("::1", None);
        backend.state.stats.traffic.add(Direction::ToClient, 100);
        backend.state.stats.traffic.add(Direction::ToBackend, 7);
        backend.state.set_admin(Admin::Draining);
        let json = serde_json::to_value(BackendReport::of(&backend)).unwrap();
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
        let report: BackendReport = serde_json::from_str(text).unwrap();
        assert_eq!(report.stats.refused_connections, 2);
        assert_eq!(report.stats.admin, None);
        let limited = BackendReport::of(&backend("10.0.0.1", Some(5)));
        let json = serde_json::to_value(limited).unwrap();
        assert_eq!(json["max_connections"], 5);
    }
}
