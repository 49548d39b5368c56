//! Each algorithm seen from the client side: rotation, priorities, stickiness.

use std::collections::BTreeMap;
use std::time::Duration;

use betwixt::config::{self, LoadOptions};
use tokio::net::TcpStream;

use crate::util::*;

#[tokio::test]
async fn roundrobin_rotates_in_host_port_order() {
    let backends = [
        name_backend("a").await,
        name_backend("b").await,
        name_backend("c").await,
    ];
    let mut by_addr: Vec<_> = backends
        .iter()
        .map(|b| b.addr)
        .zip(["a", "b", "c"])
        .collect();
    let addrs: Vec<_> = by_addr.iter().map(|(addr, _)| *addr).collect();
    let balancer =
        start_balancer(&server_config("rr", "balance = \"roundrobin\"", &addrs, "")).await;
    let addr = balancer.local_addr("rr").unwrap();

    by_addr.sort_by_key(|(addr, _)| addr.to_string());
    let order: Vec<_> = by_addr.iter().map(|(_, name)| *name).collect();
    let mut names = Vec::new();
    for _ in 0..9 {
        names.push(fetch_name(addr).await.unwrap());
    }
    let first = order.iter().position(|n| *n == names[0]).unwrap();
    for (i, name) in names.iter().enumerate() {
        assert_eq!(name, order[(first + i) % 3], "rotation broken: {names:?}");
    }
}

#[tokio::test]
async fn weight_prefers_the_lowest_priority_and_fails_over_to_backups() {
    let primary = name_backend("primary").await;
    let backup = name_backend("backup").await;
    let list = format!(
        "\"{} weight=5 priority=1\", \"{} weight=5 priority=2\"",
        primary.addr, backup.addr
    );
    let config = format!(
        "[servers.w]\nbind = \"127.0.0.1:0\"\n[servers.w.discovery]\nkind = \"static\"\n\
         static_list = [{list}]\n"
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("w").unwrap();
    for _ in 0..20 {
        assert_eq!(fetch_name(addr).await.unwrap(), "primary");
    }
    primary.stop();
    for _ in 0..20 {
        assert_eq!(fetch_name(addr).await.unwrap(), "backup");
    }
}

#[tokio::test]
async fn weight_spreads_by_weight() {
    let heavy = name_backend("heavy").await;
    let light = name_backend("light").await;
    let config = format!(
        "[servers.w]\nbind = \"127.0.0.1:0\"\n[servers.w.discovery]\nkind = \"static\"\n\
         static_list = [\"{} weight=4\", \"{} weight=1\"]\n",
        heavy.addr, light.addr
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("w").unwrap();
    let mut counts = BTreeMap::new();
    for _ in 0..300 {
        *counts.entry(fetch_name(addr).await.unwrap()).or_insert(0) += 1;
    }
    // Expected 240 / 60; the bounds are many standard deviations wide.
    assert!((190..=290).contains(&counts["heavy"]), "{counts:?}");
    assert!(counts["light"] >= 10, "{counts:?}");
}

#[tokio::test]
async fn iphash_keeps_each_client_on_one_backend() {
    let backends = [
        name_backend("a").await,
        name_backend("b").await,
        name_backend("c").await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    for balance in ["iphash", "iphash1"] {
        let extra = format!("balance = \"{balance}\"");
        let balancer = start_balancer(&server_config("ip", &extra, &addrs, "")).await;
        let addr = balancer.local_addr("ip").unwrap();
        let mut seen = BTreeMap::new();
        for source in 1..=24u8 {
            let first = fetch_name_from([127, 0, 1, source], addr).await.unwrap();
            for _ in 0..3 {
                let again = fetch_name_from([127, 0, 1, source], addr).await.unwrap();
                assert_eq!(again, first, "{balance}: client 127.0.1.{source} moved");
            }
            seen.insert(source, first);
        }
        let distinct: std::collections::BTreeSet<_> = seen.values().collect();
        assert!(
            distinct.len() >= 2,
            "{balance} sent every client to one backend: {seen:?}"
        );
    }
}

#[tokio::test]
async fn iphash1_moves_only_the_clients_of_a_removed_backend() {
    let backends = [
        name_backend("a").await,
        name_backend("b").await,
        name_backend("c").await,
        name_backend("d").await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let config = server_config("ip", "balance = \"iphash1\"", &addrs, "");
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("ip").unwrap();
    let mut before = BTreeMap::new();
    for source in 1..=40u8 {
        before.insert(
            source,
            fetch_name_from([127, 0, 2, source], addr).await.unwrap(),
        );
    }
    // Remove backend "c" from the config and reload.
    let reduced = server_config(
        "ip",
        "balance = \"iphash1\"",
        &[addrs[0], addrs[1], addrs[3]],
        "",
    );
    let loaded = config::load_str("test.toml", &reduced, &LoadOptions::default()).unwrap();
    balancer.reload(loaded.config).await.unwrap();
    for (source, was) in &before {
        let now = fetch_name_from([127, 0, 2, *source], addr).await.unwrap();
        if was == "c" {
            assert_ne!(now, "c");
        } else {
            assert_eq!(
                &now, was,
                "client 127.0.2.{source} moved off a backend that stayed"
            );
        }
    }
}

#[tokio::test]
async fn leastconn_sends_new_clients_to_the_least_busy() {
    let backends = [name_backend("a").await, name_backend("b").await];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let balancer =
        start_balancer(&server_config("lc", "balance = \"leastconn\"", &addrs, "")).await;
    let addr = balancer.local_addr("lc").unwrap();
    // Hold three sessions open: two land on one backend, one on the other.
    let mut held = Vec::new();
    let mut names = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        names.push(read_line(&mut stream).await.unwrap());
        held.push(stream);
    }
    let busy = if names.iter().filter(|n| *n == "a").count() == 2 {
        "a"
    } else {
        "b"
    };
    let idle = if busy == "a" { "b" } else { "a" };
    // Every new short session goes to the backend with fewer open sessions.
    for _ in 0..5 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_line(&mut stream).await.unwrap(), idle);
        drop(stream);
        tokio::time::sleep(Duration::from_millis(20)).await;
        eventually("the short session to end", || {
            server_report(&balancer, "lc").active == 3
        })
        .await;
    }
}

/// `slow_start`: a backend coming back into service (here: enabled after a drain) is not given
/// every new client at once by leastconn, which would otherwise send it sessions until it
/// caught up with the others.
#[tokio::test]
async fn slow_start_spreads_a_returning_backends_first_clients() {
    async fn newcomer_share(slow_start: &str) -> usize {
        let (a, b) = (name_backend("a").await, name_backend("b").await);
        let config = server_config(
            "ss",
            &format!("balance = \"leastconn\"\nslow_start = \"{slow_start}\""),
            &[a.addr, b.addr],
            "",
        );
        let balancer = start_balancer(&config).await;
        let addr = balancer.local_addr("ss").unwrap();
        let b_target = b.addr.to_string();
        balancer
            .set_backend_admin("ss", &b_target, betwixt::Admin::Draining)
            .unwrap();
        let mut held = Vec::new();
        for _ in 0..10 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            assert_eq!(read_line(&mut stream).await.unwrap(), "a");
            held.push(stream);
        }
        balancer
            .set_backend_admin("ss", &b_target, betwixt::Admin::Enabled)
            .unwrap();
        let mut to_b = 0;
        for _ in 0..30 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            if read_line(&mut stream).await.unwrap() == "b" {
                to_b += 1;
            }
            held.push(stream);
        }
        to_b
    }
    let without = newcomer_share("0").await;
    assert!(
        without >= 18,
        "leastconn alone fills the newcomer: {without} of 30"
    );
    let with = newcomer_share("60s").await;
    assert!(with <= 6, "a minute's slow start, seconds in: {with} of 30");
}
