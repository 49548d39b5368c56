//! `[client_limits]`: sessions at once and new sessions per second from one client address
//! or prefix, refused at accept and counted.

use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use crate::util::*;

/// A session from `source` that reached the backend, held open.
async fn hold_from(source: [u8; 4], addr: std::net::SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let mut stream = socket.connect(addr).await.ok()?;
    read_line(&mut stream).await.ok()?;
    Some(stream)
}

#[tokio::test]
async fn concurrent_sessions_per_client_and_per_prefix() {
    let backend = name_backend("a").await;
    let tail = "[servers.c.client_limits]\nmax_connections = 2\nipv4_prefix = 24";
    let balancer = start_balancer(&server_config("c", "", &[backend.addr], tail)).await;
    let addr = balancer.local_addr("c").unwrap();

    let first = hold_from([127, 0, 7, 1], addr).await.expect("first");
    let _second = hold_from([127, 0, 7, 2], addr).await.expect("same /24");
    assert!(
        hold_from([127, 0, 7, 3], addr).await.is_none(),
        "third in /24"
    );
    assert_eq!(server_report(&balancer, "c").client_over_connections, 1);
    let _other = hold_from([127, 0, 8, 1], addr).await.expect("another /24");

    drop(first);
    eventually("the first session ends", || {
        server_report(&balancer, "c").active == 2
    })
    .await;
    let _again = hold_from([127, 0, 7, 3], addr).await.expect("a slot again");
    assert_eq!(server_report(&balancer, "c").client_over_connections, 1);
}

#[tokio::test]
async fn new_sessions_per_second_are_capped_and_recover() {
    let backend = name_backend("a").await;
    let tail = "[servers.r.client_limits]\nmax_rate = 3";
    let balancer = start_balancer(&server_config("r", "", &[backend.addr], tail)).await;
    let addr = balancer.local_addr("r").unwrap();

    let started = tokio::time::Instant::now();
    let mut served = 0u64;
    for _ in 0..12 {
        if fetch_name_from([127, 0, 9, 1], addr).await.is_ok() {
            served += 1;
        }
    }
    // A burst of 3, then 3 a second: never more, however slow the machine.
    let allowed = 3 + (3.0 * started.elapsed().as_secs_f64()).floor() as u64;
    assert!(served <= allowed, "{served} served, {allowed} allowed");
    assert!(served >= 3, "the burst is served: {served}");
    let report = server_report(&balancer, "r");
    assert_eq!(report.client_over_rate, 12 - served);
    // Another client is not slowed by this one.
    assert_eq!(fetch_name_from([127, 0, 9, 2], addr).await.unwrap(), "a");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(fetch_name_from([127, 0, 9, 1], addr).await.unwrap(), "a");
}

/// A table of two clients: a third with both holding sessions is refused; once one leaves,
/// its entry goes and the third gets in.
#[tokio::test]
async fn the_client_table_is_capped() {
    let backend = name_backend("a").await;
    let tail = "[servers.t.client_limits]\nmax_connections = 5\ntable_size = 2";
    let balancer = start_balancer(&server_config("t", "", &[backend.addr], tail)).await;
    let addr = balancer.local_addr("t").unwrap();

    let first = hold_from([127, 0, 10, 1], addr).await.expect("first");
    let _second = hold_from([127, 0, 10, 2], addr).await.expect("second");
    let _again = hold_from([127, 0, 10, 2], addr)
        .await
        .expect("a known client");
    assert!(hold_from([127, 0, 10, 3], addr).await.is_none());
    assert_eq!(server_report(&balancer, "t").client_table_full, 1);

    drop(first);
    eventually("the first session ends", || {
        server_report(&balancer, "t").active == 2
    })
    .await;
    let _third = hold_from([127, 0, 10, 3], addr).await.expect("room again");
    assert_eq!(server_report(&balancer, "t").client_table_full, 1);
}
