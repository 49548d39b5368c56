//! Reload without dropping a connection, and graceful shutdown, through the library API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

fn pool_config(backends: &[SocketAddr]) -> String {
    server_config("k3s", "balance = \"leastconn\"", backends, "")
}

/// A session that keeps streaming: every 20 ms it sends 512 bytes and expects them echoed.
/// Returns false as soon as an exchange fails.
async fn stream_until(addr: SocketAddr, stop: Arc<AtomicBool>) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let chunk = [0x5au8; 512];
    let mut echo = [0u8; 512];
    for _ in 0..5000 {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let exchange = async {
            stream.write_all(&chunk).await?;
            stream.read_exact(&mut echo).await?;
            Ok::<_, std::io::Error>(echo == chunk)
        };
        match tokio::time::timeout(PATIENCE, exchange).await {
            Ok(Ok(true)) => {}
            _ => return false,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Opens short connections one after another, each doing one echo exchange, until stopped.
/// Returns (succeeded, failed).
async fn arrivals(addr: SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64) {
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..100_000 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let attempt = async {
            let mut stream = TcpStream::connect(addr).await?;
            stream.write_all(b"new").await?;
            let mut reply = [0u8; 3];
            stream.read_exact(&mut reply).await?;
            Ok::<_, std::io::Error>(&reply == b"new")
        };
        match tokio::time::timeout(PATIENCE, attempt).await {
            Ok(Ok(true)) => ok += 1,
            _ => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ok, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_adds_and_removes_backends_without_losing_anyone() {
    let (a, b, c) = (
        echo_backend().await,
        echo_backend().await,
        echo_backend().await,
    );
    let balancer = start_balancer(&pool_config(&[a.addr, b.addr])).await;
    let addr = balancer.local_addr("k3s").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sessions: Vec<_> = (0..200)
        .map(|_| tokio::spawn(stream_until(addr, Arc::clone(&stop))))
        .collect();
    let arrivals_task = tokio::spawn(arrivals(addr, Arc::clone(&stop)));
    eventually("200 sessions established", || {
        a.accepted() + b.accepted() >= 200
    })
    .await;
    let on_b = b.accepted();
    assert!(on_b > 0);

    // Add c, remove b.
    let summary = balancer
        .reload(parse_config(&pool_config(&[a.addr, c.addr])))
        .await
        .unwrap();
    assert_eq!(summary.backends_added.len(), 1, "{summary}");
    assert_eq!(summary.backends_removed.len(), 1, "{summary}");
    assert!(summary.servers_rebound.is_empty() && summary.servers_added.is_empty());

    // Let traffic run on the new pool for a while: sessions on b keep streaming (drain).
    eventually("new connections reach the added backend", || {
        c.accepted() > 10
    })
    .await;
    let b_after_reload = b.accepted();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);

    for session in sessions {
        assert!(
            session.await.unwrap(),
            "an established session was dropped by the reload"
        );
    }
    let (ok, failed) = arrivals_task.await.unwrap();
    assert_eq!(
        failed, 0,
        "{failed} new connections failed ({ok} succeeded)"
    );
    assert!(ok > 20);
    assert_eq!(
        b.accepted(),
        b_after_reload,
        "the removed backend got new connections"
    );
}

#[tokio::test]
async fn an_unchanged_config_rebinds_nothing_and_a_changed_bind_moves_the_listener() {
    let backend = echo_backend().await;
    let text = pool_config(&[backend.addr]);
    let balancer = start_balancer(&text).await;
    let before = balancer.local_addr("k3s").unwrap();

    let summary = balancer.reload(parse_config(&text)).await.unwrap();
    assert!(summary.is_empty(), "{summary}");
    assert_eq!(balancer.local_addr("k3s").unwrap(), before);

    // Held through the old listener, it must survive the move.
    let mut old_session = TcpStream::connect(before).await.unwrap();
    let moved = text.replace("127.0.0.1:0", "127.0.0.2:0");
    let summary = balancer.reload(parse_config(&moved)).await.unwrap();
    assert_eq!(summary.servers_rebound, ["k3s"]);
    let after = balancer.local_addr("k3s").unwrap();
    assert_eq!(after.ip().to_string(), "127.0.0.2");
    eventually("the old listener closes", || {
        std::net::TcpStream::connect_timeout(&before, Duration::from_millis(200)).is_err()
    })
    .await;
    let mut new_session = TcpStream::connect(after).await.unwrap();
    for stream in [&mut old_session, &mut new_session] {
        stream.write_all(b"ok").await.unwrap();
        let mut reply = [0u8; 2];
        stream.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"ok");
    }
}

#[tokio::test]
async fn servers_come_and_go_and_backend_state_carries_over() {
    let (a, b) = (name_backend("a").await, name_backend("b").await);
    let one = server_config("one", "", &[a.addr], "");
    let two = server_config("two", "", &[b.addr], "");
    let balancer = start_balancer(&one).await;
    let one_addr = balancer.local_addr("one").unwrap();
    assert_eq!(fetch_name(one_addr).await.unwrap(), "a");

    let summary = balancer
        .reload(parse_config(&format!("{one}\n{two}")))
        .await
        .unwrap();
    assert_eq!(summary.servers_added, ["two"]);
    assert_eq!(balancer.local_addr("one").unwrap(), one_addr);
    assert_eq!(
        fetch_name(balancer.local_addr("two").unwrap())
            .await
            .unwrap(),
        "b"
    );
    // Counters of the server and backend that stayed were not reset.
    assert_eq!(backend_report(&balancer, "one", a.addr).total, 1);
    assert_eq!(server_report(&balancer, "one").total, 1);

    let summary = balancer.reload(parse_config(&two)).await.unwrap();
    assert_eq!(summary.servers_removed, ["one"]);
    assert!(balancer.local_addr("one").is_none());
    eventually("the removed server stops listening", || {
        std::net::TcpStream::connect_timeout(&one_addr, Duration::from_millis(200)).is_err()
    })
    .await;
}

#[tokio::test]
async fn removed_backend_sessions_can_be_closed_instead_of_drained() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let extra = "balance = \"roundrobin\"\nclose_sessions_on_backend_removal = true";
    let balancer = start_balancer(&server_config("k3s", extra, &[a.addr, b.addr], "")).await;
    let addr = balancer.local_addr("k3s").unwrap();
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(TcpStream::connect(addr).await.unwrap());
    }
    eventually("both backends hold sessions", || {
        a.accepted() == 2 && b.accepted() == 2
    })
    .await;
    balancer
        .reload(parse_config(&server_config("k3s", extra, &[a.addr], "")))
        .await
        .unwrap();
    let (mut closed, mut alive) = (0, 0);
    for stream in &mut streams {
        stream.write_all(b"x").await.ok();
        let mut reply = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut reply)).await {
            Ok(Ok(1)) => alive += 1,
            _ => closed += 1,
        }
    }
    assert_eq!((alive, closed), (2, 2));
    eventually("the closes are counted", || {
        server_report(&balancer, "k3s").ended(betwixt::SessionEnd::BackendRemoved) == 2
    })
    .await;
}

#[tokio::test]
async fn shutdown_drains_then_closes_what_is_left() {
    let backend = silent_backend().await;
    let balancer = start_balancer(&server_config("k3s", "", &[backend.addr], "")).await;
    let addr = balancer.local_addr("k3s").unwrap();
    let mut quick = TcpStream::connect(addr).await.unwrap();
    let mut stubborn = TcpStream::connect(addr).await.unwrap();
    eventually("sessions up", || backend.accepted() == 2).await;

    let finished = Arc::new(AtomicU64::new(0));
    let flag = Arc::clone(&finished);
    let closer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        quick.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = quick.read_to_end(&mut rest).await;
        flag.store(1, Ordering::SeqCst);
    });
    let summary = balancer.stop(Duration::from_millis(1500)).await;
    assert_eq!(
        summary.closed_by_force, 1,
        "only the stubborn session outlived the grace period"
    );
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    closer.await.unwrap();
    assert!(closed_by_peer(&mut stubborn).await);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn a_reload_may_rebind_a_port_this_process_holds_but_not_a_foreign_one() {
    let backend = echo_backend().await;
    let port = wildcard_free_port();
    let text = pool_config(&[backend.addr]).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let balancer = start_balancer(&text).await;
    // Widened to the wildcard on the same port while the old listener still holds it.
    let widened = text.replace(&format!("127.0.0.1:{port}"), &format!("0.0.0.0:{port}"));
    let summary = balancer.reload(parse_config(&widened)).await.unwrap();
    assert_eq!(summary.servers_rebound, ["k3s"]);

    let foreign = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = foreign.local_addr().unwrap().port();
    let clash = format!(
        "{widened}\n{}",
        server_config("other", "", &[backend.addr], "")
            .replace("127.0.0.1:0", &format!("127.0.0.1:{taken}"))
    );
    let error = balancer
        .reload(parse_config(&clash))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("\"other\""), "{error}");
    assert!(error.contains("another process already listens"), "{error}");
}

/// A port free on every address and below the ephemeral range (32768 and up on Linux), so no
/// other test's outgoing connection takes it before the wildcard rebind (which would then be
/// refused as rightly as a foreign listener is).
fn wildcard_free_port() -> u16 {
    for _ in 0..100 {
        let port = fastrand::u16(20_000..32_000);
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}
