//! `GET /metrics` on the `[metrics]` listener: gobetween's gauges under their names and labels,
//! and betwixt's own families under `betwixt_`, read from the live atomics at scrape time.
//!
//! Nothing is counted twice: the data path increments the counters in [`crate::stats`] and a
//! scrape walks the current snapshot. Servers and backends that a reload removed disappear
//! from the next scrape, as gobetween deletes their label sets.

mod exposition;
mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio_rustls::TlsAcceptor;

use crate::backend::{Admin, Backend, Health};
use crate::http::listener::Site;
use crate::http::response::{self, Body};
use crate::snapshot::Server;
use crate::stats::{HandshakeFailure, ReplayStats, SessionEnd};
use crate::supervisor::Supervisor;
use exposition::{Exposition, Kind};

/// Answers a request to the metrics listener: `GET /metrics`, else 404 or 405.
/// The `[metrics]` listener's site: `GET /metrics`, plain HTTP.
#[derive(Debug)]
pub(crate) struct Metrics(pub(crate) Arc<Supervisor>);

impl Site for Metrics {
    fn tls(&self) -> Option<TlsAcceptor> {
        None
    }

    async fn respond(&self, request: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        respond(&self.0, request.method(), request.uri().path())
    }
}

fn respond(supervisor: &Supervisor, method: &Method, path: &str) -> Response<Body> {
    match (method, path) {
        (&Method::GET, "/metrics") => {
            let text = render(supervisor);
            response::with_type(StatusCode::OK, exposition::CONTENT_TYPE, text.into())
        }
        (_, "/metrics") => response::text(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics"),
        _ => response::text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// Every family, in the text format.
pub fn render(supervisor: &Supervisor) -> String {
    let snapshot = supervisor.snapshot();
    let servers: Vec<&Arc<Server>> = snapshot.servers().collect();
    let mut out = Exposition::default();
    build_info(&mut out);
    server_gauges(&mut out, &servers);
    backend_gauges(&mut out, &servers);
    process(&mut out, supervisor);
    process::render(&mut out);
    server_counters(&mut out, &servers);
    discovery(&mut out, &servers);
    backend_states(&mut out, &servers);
    backend_histograms(&mut out, &servers);
    out.finish()
}

fn build_info(out: &mut Exposition) {
    let version = env!("CARGO_PKG_VERSION");
    out.family(
        "gobetween_build_info",
        Kind::Gauge,
        "Always 1, labelled with the version (betwixt's; revision, branch and goversion are empty).",
    )
    .sample(
        &[
            ("version", version),
            ("revision", ""),
            ("branch", ""),
            ("goversion", ""),
        ],
        1,
    );
    out.family(
        "betwixt_build_info",
        Kind::Gauge,
        "Always 1, labelled with betwixt's version.",
    )
    .sample(&[("version", version)], 1);
}

/// A gauge read from each server or backend: its name, help text and how to read it.
type Gauge<T> = (&'static str, &'static str, fn(&T) -> u64);

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn server_gauges(out: &mut Exposition, servers: &[&Arc<Server>]) {
    let gauges: [Gauge<Server>; 6] = [
        (
            "gobetween_server_count",
            "Backends configured for the server.",
            |server| server.pool.backends().len() as u64,
        ),
        (
            "gobetween_server_active_connections",
            "Client sessions open now.",
            |server| load(&server.stats.active),
        ),
        (
            "gobetween_server_rx_total",
            "Bytes sent to clients (received from backends).",
            |server| load(&server.stats.traffic.rx),
        ),
        (
            "gobetween_server_tx_total",
            "Bytes received from clients (sent to backends).",
            |server| load(&server.stats.traffic.tx),
        ),
        (
            "gobetween_server_rx_second",
            "Bytes sent to clients over the last second.",
            |server| load(&server.stats.traffic.rx_second),
        ),
        (
            "gobetween_server_tx_second",
            "Bytes received from clients over the last second.",
            |server| load(&server.stats.traffic.tx_second),
        ),
    ];
    for (name, help, value) in gauges {
        let mut family = out.family(name, Kind::Gauge, help);
        for server in servers {
            family.sample(&[("server", server.name())], value(server));
        }
    }
}

/// The `server`, `host` and `port` labels of a backend, gobetween's.
struct BackendLabels<'a> {
    server: &'a str,
    host: String,
    port: String,
}

impl<'a> BackendLabels<'a> {
    fn of(server: &'a Server, backend: &Backend) -> Self {
        Self {
            server: server.name(),
            host: crate::api::wire::host_label(&backend.spec),
            port: backend.spec.port.to_string(),
        }
    }

    fn with<'b>(&'b self, extra: Option<(&'b str, &'b str)>) -> Vec<(&'b str, &'b str)> {
        let mut labels = vec![
            ("server", self.server),
            ("host", self.host.as_str()),
            ("port", self.port.as_str()),
        ];
        labels.extend(extra);
        labels
    }
}

/// Calls `each` for every backend of every server, with its labels.
fn for_backends(servers: &[&Arc<Server>], mut each: impl FnMut(&BackendLabels<'_>, &Backend)) {
    for server in servers {
        for backend in server.pool.backends() {
            each(&BackendLabels::of(server, backend), backend);
        }
    }
}

fn backend_gauges(out: &mut Exposition, servers: &[&Arc<Server>]) {
    let gauges: [Gauge<Backend>; 8] = [
        (
            "gobetween_backend_active_connections",
            "Sessions open to the backend now.",
            |backend| load(&backend.state.stats.active),
        ),
        (
            "gobetween_backend_refused_connections",
            "Connects to the backend that failed.",
            |backend| load(&backend.state.stats.refused),
        ),
        (
            "gobetween_backend_total_connections",
            "Sessions ever established with the backend.",
            |backend| load(&backend.state.stats.total),
        ),
        (
            "gobetween_backend_rx_bytes",
            "Bytes received from the backend.",
            |backend| load(&backend.state.stats.traffic.rx),
        ),
        (
            "gobetween_backend_tx_bytes",
            "Bytes sent to the backend.",
            |backend| load(&backend.state.stats.traffic.tx),
        ),
        (
            "gobetween_backend_rx_second",
            "Bytes received from the backend over the last second.",
            |backend| load(&backend.state.stats.traffic.rx_second),
        ),
        (
            "gobetween_backend_tx_second",
            "Bytes sent to the backend over the last second.",
            |backend| load(&backend.state.stats.traffic.tx_second),
        ),
        (
            "gobetween_backend_live",
            "1 when the backend passes its health checks.",
            |backend| u64::from(backend.state.health() == Health::Up),
        ),
    ];
    for (name, help, value) in gauges {
        let mut family = out.family(name, Kind::Gauge, help);
        for_backends(servers, |labels, backend| {
            family.sample(&labels.with(None), value(backend));
        });
    }
}

/// The fetches of each server with a dynamic discovery kind.
fn discovery(out: &mut Exposition, servers: &[&Arc<Server>]) {
    let dynamic: Vec<&Arc<Server>> = servers
        .iter()
        .copied()
        .filter(|server| server.config.discovery.is_dynamic())
        .collect();
    let mut fetches = out.family(
        "betwixt_discovery_fetches_total",
        Kind::Counter,
        "Backend list fetches of a server's discovery, by result (ok or failed; a timeout fails).",
    );
    for server in &dynamic {
        let (name, kind) = (server.name(), server.config.discovery.kind.name());
        let stats = &server.stats.discovery;
        for (result, count) in [("ok", &stats.fetches), ("failed", &stats.failures)] {
            fetches.sample(
                &[("server", name), ("kind", kind), ("result", result)],
                load(count),
            );
        }
    }
    let mut last = out.family(
        "betwixt_discovery_last_success_timestamp_seconds",
        Kind::Gauge,
        "When a fetch of the server's discovery last succeeded, in seconds since the Unix epoch; 0 for never.",
    );
    for server in &dynamic {
        let millis = load(&server.stats.discovery.last_success_ms);
        last.sample(
            &[
                ("server", server.name()),
                ("kind", server.config.discovery.kind.name()),
            ],
            millis as f64 / 1000.0,
        );
    }
}

fn process(out: &mut Exposition, supervisor: &Supervisor) {
    let stats = supervisor.process_stats();
    let started = stats
        .started_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    out.family(
        "betwixt_start_time_seconds",
        Kind::Gauge,
        "When the balancer started, in seconds since the Unix epoch.",
    )
    .sample(&[], started);
    let mut reloads = out.family(
        "betwixt_reloads_total",
        Kind::Counter,
        "Configuration changes (SIGHUP or the REST API) by result.",
    );
    reloads.sample(&[("result", "applied")], load(&stats.reloads_applied));
    reloads.sample(&[("result", "refused")], load(&stats.reloads_refused));
    out.family(
        "betwixt_config_applied_timestamp_seconds",
        Kind::Gauge,
        "When the running configuration was applied, in seconds since the Unix epoch.",
    )
    .sample(&[], load(&stats.config_applied_at));
    out.family(
        "betwixt_sessions_open",
        Kind::Gauge,
        "Sessions open now, including those of servers a reload removed that still drain.",
    )
    .sample(&[], supervisor.open_sessions());
    forwarding_memory(out, &supervisor.snapshot().forwarding_budget);
    out.family(
        "betwixt_access_log_dropped_total",
        Kind::Counter,
        "Access log lines dropped: the writer's queue was full, or the file could not be written.",
    )
    .sample(&[], load(&supervisor.snapshot().access_log_dropped));
}

/// `[betwixt] forwarding_memory`: what the pipes and grown copy buffers hold now, the cap, and
/// how often a burst copied through its small buffer because the cap was reached.
fn forwarding_memory(out: &mut Exposition, budget: &crate::forward::Budget) {
    out.family(
        "betwixt_forwarding_memory_bytes",
        Kind::Gauge,
        "Bytes of splice pipes and grown copy buffers held by sessions now.",
    )
    .sample(&[], budget.charged());
    out.family(
        "betwixt_forwarding_memory_limit_bytes",
        Kind::Gauge,
        "The forwarding_memory cap.",
    )
    .sample(&[], budget.limit());
    out.family(
        "betwixt_forwarding_memory_refusals_total",
        Kind::Counter,
        "Bursts that copied through their first 16 KiB because the cap was reached.",
    )
    .sample(&[], budget.refused());
}

/// `first_response_timeout` and `replay`: first flights sent again, and how that ended.
fn replay_counters(out: &mut Exposition, servers: &[&Arc<Server>]) {
    type Counter = fn(&ReplayStats) -> &AtomicU64;
    let families: [(&'static str, &str, Counter); 3] = [
        (
            "betwixt_server_replays_total",
            "First flights sent again to another backend after one was silent, closed or reset before its first byte.",
            |replay| &replay.replays,
        ),
        (
            "betwixt_server_replays_succeeded_total",
            "Sessions whose first response came from a backend they were replayed to.",
            |replay| &replay.succeeded,
        ),
        (
            "betwixt_server_replays_exhausted_total",
            "Sessions whose backend failed before its first byte with no candidate left to try.",
            |replay| &replay.exhausted,
        ),
    ];
    for (name, help, counter) in families {
        let mut family = out.family(name, Kind::Counter, help);
        for server in servers {
            family.sample(
                &[("server", server.name())],
                load(counter(&server.stats.replay)),
            );
        }
    }
}

fn server_counters(out: &mut Exposition, servers: &[&Arc<Server>]) {
    let mut family = out.family(
        "betwixt_server_sessions_total",
        Kind::Counter,
        "Client connections admitted (past the access rules and max_connections).",
    );
    for server in servers {
        family.sample(&[("server", server.name())], load(&server.stats.total));
    }
    let mut family = out.family(
        "betwixt_server_clients_rejected_total",
        Kind::Counter,
        "Clients closed without a session: denied by [access], over max_connections, unserved (no backend could be connected), refused by [client_limits] (client_connections, client_rate, client_table_full) or by [accept_proxy] (proxy_untrusted, proxy_header).",
    );
    for server in servers {
        let stats = &server.stats;
        for (reason, counter) in [
            ("denied", &stats.denied),
            ("over_limit", &stats.over_limit),
            ("unserved", &stats.unserved),
            ("client_connections", &stats.client_over_connections),
            ("client_rate", &stats.client_over_rate),
            ("client_table_full", &stats.client_table_full),
            ("proxy_untrusted", &stats.proxy_untrusted),
            ("proxy_header", &stats.proxy_header_failed),
        ] {
            family.sample(
                &[("server", server.name()), ("reason", reason)],
                load(counter),
            );
        }
    }
    let mut family = out.family(
        "betwixt_server_datagrams_dropped_total",
        Kind::Counter,
        "UDP datagrams not forwarded: no backend, a full socket buffer, or no session possible.",
    );
    for server in servers {
        family.sample(
            &[("server", server.name())],
            load(&server.stats.datagrams_dropped),
        );
    }
    let mut family = out.family(
        "betwixt_server_connect_retries_total",
        Kind::Counter,
        "Connects tried on another backend after one failed.",
    );
    for server in servers {
        family.sample(
            &[("server", server.name())],
            load(&server.stats.connect_retries),
        );
    }
    replay_counters(out, servers);
    let mut family = out.family(
        "betwixt_server_sessions_closed_total",
        Kind::Counter,
        "Established sessions that ended, by reason.",
    );
    for server in servers {
        for end in SessionEnd::ALL {
            let labels = [("server", server.name()), ("reason", end.as_str())];
            family.sample(&labels, server.stats.ended.get(end));
        }
    }
    tls_counters(out, servers);
}

/// `[tls]` and `[sni]`, for the servers that have either.
fn tls_counters(out: &mut Exposition, servers: &[&Arc<Server>]) {
    let tls_servers: Vec<_> = servers
        .iter()
        .filter(|server| server.config.tls.is_some() || server.config.sni.is_some())
        .collect();
    let mut family = out.family(
        "betwixt_tls_handshakes_total",
        Kind::Counter,
        "TLS handshakes completed (termination), or ClientHellos read and routed (SNI passthrough).",
    );
    for server in &tls_servers {
        family.sample(
            &[("server", server.name())],
            load(&server.stats.tls.handshakes),
        );
    }
    let mut family = out.family(
        "betwixt_tls_handshake_failures_total",
        Kind::Counter,
        "Clients closed before their TLS handshake or ClientHello completed, by reason.",
    );
    for server in &tls_servers {
        for reason in HandshakeFailure::ALL {
            let labels = [("server", server.name()), ("reason", reason.as_str())];
            family.sample(&labels, server.stats.tls.failures.get(reason));
        }
    }
    let mut family = out.family(
        "betwixt_sni_unmatched_total",
        Kind::Counter,
        "Clients whose server name matched no backend's sni= tag.",
    );
    for server in &tls_servers {
        family.sample(
            &[("server", server.name())],
            load(&server.stats.tls.sni_unmatched),
        );
    }
}

fn backend_states(out: &mut Exposition, servers: &[&Arc<Server>]) {
    let mut family = out.family(
        "betwixt_backend_healthy",
        Kind::Gauge,
        "1 when the backend passes its health checks, 0 when marked down.",
    );
    for_backends(servers, |labels, backend| {
        let healthy = backend.state.health() == Health::Up;
        family.sample(&labels.with(None), u64::from(healthy));
    });
    let mut family = out.family(
        "betwixt_backend_admin_state",
        Kind::Gauge,
        "1 for the backend's operator state (enabled, draining, disabled), 0 for the others.",
    );
    for_backends(servers, |labels, backend| {
        let current = backend.state.admin();
        for state in [Admin::Enabled, Admin::Draining, Admin::Disabled] {
            let labels = labels.with(Some(("state", state.as_str())));
            family.sample(&labels, u64::from(state == current));
        }
    });
    let mut family = out.family(
        "betwixt_backend_rebalanced_sessions_total",
        Kind::Counter,
        "Sessions on the backend closed by [rebalance] so their clients reconnect elsewhere.",
    );
    for_backends(servers, |labels, backend| {
        family.sample(&labels.with(None), load(&backend.state.stats.rebalanced));
    });
}

fn backend_histograms(out: &mut Exposition, servers: &[&Arc<Server>]) {
    let mut family = out.family(
        "betwixt_backend_connect_duration_seconds",
        Kind::Histogram,
        "Time to establish each successful connection to the backend.",
    );
    for_backends(servers, |labels, backend| {
        family.histogram(&labels.with(None), &backend.state.stats.connect_latency);
    });
    let mut family = out.family(
        "betwixt_backend_check_duration_seconds",
        Kind::Histogram,
        "Duration of each active health check of the backend, passed or failed.",
    );
    for_backends(servers, |labels, backend| {
        family.histogram(&labels.with(None), &backend.state.stats.check_duration);
    });
}
