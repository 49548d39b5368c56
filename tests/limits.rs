//! `max_connections` per server and per backend, and `[access]` rules.

use tokio::net::TcpStream;

use crate::util::*;

#[tokio::test]
async fn server_max_connections_refuses_the_excess_and_recovers() {
    let backend = name_backend("a").await;
    let config = server_config("cap", "max_connections = 2", &[backend.addr], "");
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("cap").unwrap();
    let mut first = TcpStream::connect(addr).await.unwrap();
    let second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_line(&mut first).await.unwrap(), "a");

    let mut third = TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_peer(&mut third).await);
    assert_eq!(server_report(&balancer, "cap").over_limit, 1);

    drop(first);
    eventually("a place frees up", || {
        server_report(&balancer, "cap").active < 2
    })
    .await;
    assert_eq!(fetch_name(addr).await.unwrap(), "a");
    drop(second);
}

#[tokio::test]
async fn a_full_backend_is_skipped() {
    let small = name_backend("small").await;
    let big = name_backend("big").await;
    let config = format!(
        "[servers.b]\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"\n[servers.b.discovery]\n\
         kind = \"static\"\nstatic_list = [\"{} max_connections=1\", \"{}\"]\n",
        small.addr, big.addr
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("b").unwrap();
    let mut held = Vec::new();
    let mut names = Vec::new();
    for _ in 0..6 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        names.push(read_line(&mut stream).await.unwrap());
        held.push(stream);
    }
    assert_eq!(
        names.iter().filter(|n| *n == "small").count(),
        1,
        "{names:?}"
    );
    assert_eq!(names.iter().filter(|n| *n == "big").count(), 5, "{names:?}");
}

#[tokio::test]
async fn access_rules_deny_and_allow_by_source() {
    let backend = name_backend("a").await;
    let tail = "[servers.acl.access]\ndefault = \"deny\"\nrules = [\"deny 127.0.4.9\", \"allow 127.0.4.0/24\"]";
    let balancer = start_balancer(&server_config("acl", "", &[backend.addr], tail)).await;
    let addr = balancer.local_addr("acl").unwrap();
    assert_eq!(fetch_name_from([127, 0, 4, 1], addr).await.unwrap(), "a");
    assert!(
        fetch_name_from([127, 0, 4, 9], addr).await.is_err(),
        "denied by rule"
    );
    assert!(
        fetch_name_from([127, 0, 5, 1], addr).await.is_err(),
        "denied by default"
    );
    assert_eq!(server_report(&balancer, "acl").denied, 2);
    assert_eq!(
        backend.accepted(),
        1,
        "a denied client must never reach a backend"
    );
}
