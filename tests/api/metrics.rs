//! `GET /metrics` after real traffic: gobetween's gauges and betwixt's counters match what
//! happened.

use hyper::header::{CONTENT_TYPE, HeaderMap};
use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Sends `payload`, reads it back, closes its side and waits for the backend's close.
async fn complete_session(addr: SocketAddr, payload: &[u8]) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert!(echoes_raw(&mut stream, payload).await);
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("backend closes")
        .unwrap();
    assert!(rest.is_empty());
}

async fn echoes_raw(stream: &mut TcpStream, payload: &[u8]) -> bool {
    stream.write_all(payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).await.is_ok() && back == payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_real_traffic() {
    let backend = echo_backend().await;
    let dead = closed_port().await;
    let k3s = server_config("k3s", "balance = \"roundrobin\"", &[backend.addr, dead], "");
    let denied = server_config(
        "denied",
        "",
        &[backend.addr],
        "[servers.denied.access]\ndefault = \"deny\"\n",
    );
    let lb = Balancer::start(&format!("{ENDPOINTS}{k3s}{denied}")).await;

    let payload = vec![0x42u8; 1000];
    for _ in 0..4 {
        complete_session(lb.server("k3s"), &payload).await;
    }
    let mut refused = TcpStream::connect(lb.server("denied")).await.unwrap();
    assert!(closed_by_peer(&mut refused).await);

    let server = [("server", "k3s")];
    let port = backend.addr.port().to_string();
    let live = [
        ("server", "k3s"),
        ("host", "127.0.0.1"),
        ("port", port.as_str()),
    ];
    let dead_port = dead.port().to_string();
    let down = [
        ("server", "k3s"),
        ("host", "127.0.0.1"),
        ("port", dead_port.as_str()),
    ];
    let completed = [("server", "k3s"), ("reason", "completed")];
    let mut metrics = lb.scrape().await;
    for _ in 0..200 {
        if metrics.value("betwixt_server_sessions_closed_total", &completed) == 4.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        metrics = lb.scrape().await;
    }

    assert_eq!(metrics.value("gobetween_server_count", &server), 2.0);
    // Go's default registry exports these; dashboards written for gobetween use them.
    assert!(metrics.value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(metrics.value("process_virtual_memory_bytes", &[]) > 0.0);
    assert!(metrics.value("process_open_fds", &[]) >= 3.0);
    assert!(metrics.value("process_max_fds", &[]) >= metrics.value("process_open_fds", &[]));
    assert!(metrics.value("process_start_time_seconds", &[]) > 1.5e9);
    assert!(metrics.value("process_cpu_seconds_total", &[]) >= 0.0);
    assert_eq!(
        metrics.value("gobetween_server_active_connections", &server),
        0.0
    );
    assert_eq!(metrics.value("gobetween_server_rx_total", &server), 4000.0);
    assert_eq!(metrics.value("gobetween_server_tx_total", &server), 4000.0);
    assert_eq!(
        metrics.value("gobetween_backend_total_connections", &live),
        4.0
    );
    assert_eq!(metrics.value("gobetween_backend_rx_bytes", &live), 4000.0);
    assert_eq!(metrics.value("gobetween_backend_tx_bytes", &live), 4000.0);
    assert_eq!(
        metrics.value("gobetween_backend_active_connections", &live),
        0.0
    );
    assert_eq!(metrics.value("gobetween_backend_live", &live), 1.0);
    assert_eq!(
        metrics.value("gobetween_backend_total_connections", &down),
        0.0
    );
    let refused_connects = metrics.value("gobetween_backend_refused_connections", &down);
    assert!(refused_connects >= 1.0, "roundrobin tried the dead backend");
    assert_eq!(
        metrics.value("betwixt_server_connect_retries_total", &server),
        refused_connects,
        "every refused connect was retried on the live backend"
    );
    assert_eq!(
        metrics.value("betwixt_server_sessions_closed_total", &completed),
        4.0
    );
    let error = [("server", "k3s"), ("reason", "error")];
    assert_eq!(
        metrics.value("betwixt_server_sessions_closed_total", &error),
        0.0
    );
    assert_eq!(metrics.value("betwixt_server_sessions_total", &server), 4.0);
    let denied_clients = [("server", "denied"), ("reason", "denied")];
    assert_eq!(
        metrics.value("betwixt_server_clients_rejected_total", &denied_clients),
        1.0
    );
    assert_eq!(
        metrics.value("betwixt_backend_connect_duration_seconds_count", &live),
        4.0
    );
    let inf = [
        ("server", "k3s"),
        ("host", "127.0.0.1"),
        ("port", port.as_str()),
        ("le", "+Inf"),
    ];
    assert_eq!(
        metrics.value("betwixt_backend_connect_duration_seconds_bucket", &inf),
        4.0
    );
    let enabled = [
        ("server", "k3s"),
        ("host", "127.0.0.1"),
        ("port", port.as_str()),
        ("state", "enabled"),
    ];
    assert_eq!(metrics.value("betwixt_backend_admin_state", &enabled), 1.0);
    assert_eq!(metrics.value("betwixt_backend_healthy", &live), 1.0);
    assert_eq!(
        metrics.value("betwixt_reloads_total", &[("result", "applied")]),
        0.0
    );
    assert!(metrics.value("betwixt_config_applied_timestamp_seconds", &[]) > 1.6e9);
    // The default cap, and nothing held once the sessions ended.
    assert_eq!(
        metrics.value("betwixt_forwarding_memory_limit_bytes", &[]),
        268_435_456.0
    );
    assert_eq!(metrics.value("betwixt_forwarding_memory_bytes", &[]), 0.0);
    assert_eq!(
        metrics.types["betwixt_forwarding_memory_refusals_total"],
        "counter"
    );
    let build = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("revision", ""),
        ("branch", ""),
        ("goversion", ""),
    ];
    assert_eq!(metrics.value("gobetween_build_info", &build), 1.0);
    for (name, kind) in [
        ("gobetween_backend_live", "gauge"),
        ("betwixt_server_sessions_closed_total", "counter"),
        ("betwixt_backend_check_duration_seconds", "histogram"),
    ] {
        assert_eq!(metrics.types[name], kind);
    }
}

#[tokio::test]
async fn removed_servers_leave_the_scrape_and_only_get_metrics_is_served() {
    let k3s = server_config("k3s", "", &[closed_port().await], "");
    let other = server_config("other", "", &[closed_port().await], "");
    let lb = Balancer::start(&format!("{ENDPOINTS}{k3s}{other}")).await;
    assert!(
        lb.scrape()
            .await
            .has("gobetween_server_count", "server", "other")
    );
    let reply = lb.call(Method::DELETE, "/servers/other", "").await;
    assert_eq!(reply.status, StatusCode::OK);
    let metrics = lb.scrape().await;
    assert!(!metrics.has("gobetween_server_count", "server", "other"));
    assert!(!metrics.has("gobetween_backend_live", "server", "other"));
    assert_eq!(
        metrics.value("betwixt_reloads_total", &[("result", "applied")]),
        1.0
    );

    let addr = lb.metrics_addr();
    let reply = request(addr, Method::GET, "/metrics", HeaderMap::new(), "").await;
    assert_eq!(
        reply.headers[CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let reply = request(addr, Method::GET, "/", HeaderMap::new(), "").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = request(addr, Method::POST, "/metrics", HeaderMap::new(), "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
}
