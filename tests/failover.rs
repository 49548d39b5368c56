//! No client pays for a dead backend: failed connects are retried on another one.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_backend_port_costs_no_client_a_failure() {
    let live = [name_backend("a").await, name_backend("b").await];
    let dead = closed_port().await;
    let addrs = [live[0].addr, dead, live[1].addr];
    for balance in ["weight", "roundrobin", "leastconn", "iphash", "iphash1"] {
        let extra = format!("balance = \"{balance}\"");
        let balancer = start_balancer(&server_config("k3s", &extra, &addrs, "")).await;
        let addr = balancer.local_addr("k3s").unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..200u32 {
            tasks.spawn(async move {
                // Different loopback sources so the hashing algorithms hit the dead one too.
                let source = [127, 0, 3, (client % 250) as u8 + 1];
                fetch_name_from(source, addr).await
            });
            if tasks.len() >= 20 {
                tasks
                    .join_next()
                    .await
                    .unwrap()
                    .unwrap()
                    .expect("client served");
            }
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap().expect("client served");
        }
        let server = server_report(&balancer, "k3s");
        let dead_backend = server.backend(&dead.to_string()).unwrap();
        assert!(
            dead_backend.refused > 0,
            "{balance}: the dead backend was never tried"
        );
        assert_eq!(dead_backend.total, 0);
        assert_eq!(server.unserved, 0, "{balance}");
    }
}

#[tokio::test]
async fn every_backend_down_closes_the_client_promptly_and_counts_it() {
    let dead = [
        closed_port().await,
        closed_port().await,
        closed_port().await,
    ];
    let balancer = start_balancer(&server_config("k3s", "", &dead, "")).await;
    let mut client = TcpStream::connect(balancer.local_addr("k3s").unwrap())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    assert!(closed_by_peer(&mut client).await);
    assert!(started.elapsed() < Duration::from_secs(10));

    eventually("unserved counted", || {
        server_report(&balancer, "k3s").unserved == 1
    })
    .await;
    for backend in server_report(&balancer, "k3s").backends {
        assert_eq!(backend.refused, 1, "{}", backend.target);
    }
}

#[tokio::test]
async fn connect_attempts_caps_the_retries() {
    let dead = [
        closed_port().await,
        closed_port().await,
        closed_port().await,
    ];
    let live = name_backend("live").await;
    // roundrobin over four, at most two attempts: some clients must give up.
    let addrs = [dead[0], dead[1], dead[2], live.addr];
    let config = server_config(
        "k3s",
        "balance = \"roundrobin\"\nconnect_attempts = 2",
        &addrs,
        "",
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("k3s").unwrap();
    let mut failures = 0;
    for _ in 0..8 {
        if fetch_name(addr).await.is_err() {
            failures += 1;
        }
    }
    assert!(failures > 0, "connect_attempts = 2 never gave up");
    let server = server_report(&balancer, "k3s");
    let refused: u64 = server.backends.iter().map(|b| b.refused).sum();
    let unserved = server.unserved;
    assert_eq!(unserved as usize, failures);
    // A client that gave up made exactly two attempts; a served one failed at most once.
    assert!(
        refused >= 2 * unserved && refused <= 2 * unserved + (8 - unserved),
        "{refused}"
    );
}

#[tokio::test]
async fn a_backend_that_never_answers_times_out_and_the_next_one_serves() {
    // A listener whose accept queue is full drops new SYNs: connects to it hang, like a
    // powered-off host.
    let (_listener, blackhole, _queued) = full_backlog_listener().await;
    let live = name_backend("live").await;
    let config = server_config(
        "k3s",
        "balance = \"roundrobin\"\nbackend_connection_timeout = \"300ms\"",
        &[blackhole, live.addr],
        "",
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("k3s").unwrap();
    for _ in 0..4 {
        assert_eq!(fetch_name(addr).await.unwrap(), "live");
    }
    assert!(backend_report(&balancer, "k3s", blackhole).refused >= 1);
}

/// A listener with a backlog of one that never accepts, filled until connects stop completing.
async fn full_backlog_listener() -> (socket2::Socket, std::net::SocketAddr, Vec<TcpStream>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            _ => break,
        }
    }
    (socket, addr, queued)
}
