//! Runtime control of a backend (drain, disable, enable), and `leastbandwidth` preferring the
//! quiet backend, observed end to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

async fn two_backends(balance: &str, a: &TestBackend, b: &TestBackend) -> Balancer {
    let extra = format!("balance = \"{balance}\"");
    let server = server_config("k3s", &extra, &[a.addr, b.addr], "");
    Balancer::start(&format!("{ENDPOINTS}{server}")).await
}

async fn set(lb: &Balancer, target: SocketAddr, action: &str) -> Value {
    let path = format!("/servers/k3s/backends/{target}/{action}");
    let reply = lb.call(Method::POST, &path, "").await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
    reply.json()
}

/// Opens sessions until one reaches `wanted`.
async fn session_on(lb: &Balancer, wanted: &str) -> TcpStream {
    for _ in 0..20 {
        let (stream, name) = open_named(lb.server("k3s")).await;
        if name == wanted {
            return stream;
        }
    }
    panic!("no session reached {wanted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_sessions_and_sends_new_ones_elsewhere() {
    let (a, b) = (echo_named("a").await, echo_named("b").await);
    let lb = two_backends("roundrobin", &a, &b).await;
    let mut held = session_on(&lb, "a").await;

    let report = set(&lb, a.addr, "drain").await;
    assert_eq!(report["stats"]["admin"], "draining");
    assert_eq!(report["stats"]["active_connections"], 1);
    for _ in 0..6 {
        let (_, name) = open_named(lb.server("k3s")).await;
        assert_eq!(name, "b", "a drained backend gets no new session");
    }
    assert!(
        echoes(&mut held, b"still here").await,
        "the drained session goes on"
    );
    let stats = lb.get_json("/servers/k3s/stats").await;
    let port = a.addr.port().to_string();
    let entry = stats["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|backend| backend["port"] == port.as_str())
        .unwrap();
    assert_eq!(entry["stats"]["admin"], "draining");
    assert_eq!(entry["stats"]["active_connections"], 1);

    // A reload that keeps the backend keeps its admin state.
    let config = lb.balancer.config().as_ref().clone();
    lb.balancer.reload(config).await.unwrap();
    let (_, name) = open_named(lb.server("k3s")).await;
    assert_eq!(name, "b");

    assert_eq!(
        set(&lb, a.addr, "enable").await["stats"]["admin"],
        "enabled"
    );
    let _back_on_a = session_on(&lb, "a").await;
    assert!(echoes(&mut held, b"and still").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_closes_sessions_and_counts_them() {
    let (a, b) = (echo_named("a").await, echo_named("b").await);
    let lb = two_backends("roundrobin", &a, &b).await;
    let mut on_a = session_on(&lb, "a").await;
    let (mut on_b, _) = loop {
        let (stream, name) = open_named(lb.server("k3s")).await;
        if name == "b" {
            break (stream, name);
        }
    };

    // IPv4 written percent-encoded works as well as raw.
    let path = format!(
        "/servers/k3s/backends/127.0.0.1%3A{}/disable",
        a.addr.port()
    );
    let reply = lb.call(Method::POST, &path, "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["stats"]["admin"], "disabled");
    assert!(
        closed_by_peer(&mut on_a).await,
        "the disabled backend's session is closed"
    );
    assert!(echoes(&mut on_b, b"unaffected").await);
    for _ in 0..4 {
        assert_eq!(open_named(lb.server("k3s")).await.1, "b");
    }
    let reason = [("server", "k3s"), ("reason", "backend_disabled")];
    let mut closed = 0.0;
    for _ in 0..100 {
        closed = lb
            .scrape()
            .await
            .value("betwixt_server_sessions_closed_total", &reason);
        if closed == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(closed, 1.0);

    let missing = lb
        .call(Method::POST, "/servers/k3s/backends/127.0.0.1:1/drain", "")
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let missing = lb
        .call(Method::POST, "/servers/nope/backends/127.0.0.1:1/drain", "")
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leastbandwidth_prefers_the_quiet_backend() {
    let (a, b) = (echo_named("a").await, echo_named("b").await);
    let lb = two_backends("leastbandwidth", &a, &b).await;
    let (mut busy, busy_name) = open_named(lb.server("k3s")).await;
    let (busy_addr, quiet_name) = if busy_name == "a" {
        (a.addr, "b")
    } else {
        (b.addr, "a")
    };

    let stop = Arc::new(AtomicBool::new(false));
    let streaming = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            let mut back = vec![0u8; chunk.len()];
            while !stop.load(Ordering::SeqCst) {
                busy.write_all(&chunk).await.unwrap();
                busy.read_exact(&mut back).await.unwrap();
            }
        })
    };
    let port = busy_addr.port().to_string();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stats = lb.get_json("/servers/k3s/stats").await;
        let busy_rate = stats["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|backend| backend["port"] == port.as_str())
            .map(|backend| backend["stats"]["rx_second"].as_u64().unwrap())
            .unwrap();
        if busy_rate > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rates never sampled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        let (_, name) = open_named(lb.server("k3s")).await;
        assert_eq!(name, quiet_name, "a new session goes to the quiet backend");
    }
    stop.store(true, Ordering::SeqCst);
    streaming.await.unwrap();
}
