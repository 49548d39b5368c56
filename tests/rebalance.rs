//! `[rebalance]`: after two of three backends fail and return, 300 long sessions that all moved
//! to the survivor spread out again, within the rate limit; without it they stay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use betwixt::LoadBalancer;
use betwixt::SessionEnd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::util::*;

const CLIENTS: usize = 300;
/// The most reconnects one client makes; far more than a run needs.
const MAX_RECONNECTS: usize = 40;

/// A long-lived client (an API watch): connects, sends its request and reads the echo, waits
/// until the balancer closes it, and reconnects after a short pause, as client-go does.
async fn long_lived_client(addr: SocketAddr, reconnects: Arc<AtomicUsize>) {
    for attempt in 0..MAX_RECONNECTS {
        if attempt > 0 {
            reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            continue;
        };
        if stream.write_all(b"watch\n").await.is_err() {
            continue;
        }
        let mut buffer = [0u8; 64];
        while let Ok(read) = stream.read(&mut buffer).await {
            if read == 0 {
                break;
            }
        }
    }
}

fn config(backends: &[SocketAddr], rebalance: &str) -> String {
    server_config(
        "k3s",
        "balance = \"leastconn\"",
        backends,
        &format!(
            "[servers.k3s.healthcheck]\nkind = \"ping\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\
             fails = 1\npasses = 1\n{rebalance}"
        ),
    )
}

fn actives(balancer: &LoadBalancer, backends: &[SocketAddr]) -> Vec<u64> {
    backends
        .iter()
        .map(|addr| backend_report(balancer, "k3s", addr).active)
        .collect()
}

/// Starts [`CLIENTS`] clients, then stops backends 1 and 2 until every client is on backend 0,
/// then starts them again on the same ports. Returns the clients and when the two returned.
async fn fail_and_return_two(
    balancer: &LoadBalancer,
    backends: &mut [TestBackend],
    reconnects: &Arc<AtomicUsize>,
) -> (JoinSet<()>, tokio::time::Instant) {
    let addr = balancer.local_addr("k3s").unwrap();
    let targets: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        clients.spawn(long_lived_client(addr, Arc::clone(reconnects)));
    }
    eventually("every client is connected", || {
        actives(balancer, &targets).iter().sum::<u64>() == CLIENTS as u64
    })
    .await;
    backends[1].stop();
    backends[2].stop();
    eventually("every client moved to the survivor", || {
        actives(balancer, &targets) == [CLIENTS as u64, 0, 0]
    })
    .await;
    let returned = tokio::time::Instant::now();
    for index in [1, 2] {
        backends[index] = echo_backend_on(targets[index]).await;
    }
    eventually("both are back up", || {
        targets
            .iter()
            .all(|t| backend_report(balancer, "k3s", t).health == betwixt::Health::Up)
    })
    .await;
    (clients, returned)
}

async fn echo_backend_on(addr: SocketAddr) -> TestBackend {
    spawn_backend_on(addr, |mut stream| async move {
        let (mut reader, mut writer) = stream.split();
        let _ = tokio::io::copy(&mut reader, &mut writer).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_out_again_after_two_backends_return() {
    let mut backends = vec![
        echo_backend().await,
        echo_backend().await,
        echo_backend().await,
    ];
    let targets: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    // 5 % of 300: at most 15 sessions closed per 300 ms.
    let balancer = start_balancer(&config(
        &targets,
        "[servers.k3s.rebalance]\ninterval = \"300ms\"\ntolerance = 0.2\nmax_fraction = 0.05\n\
         min_age = \"0s\"",
    ))
    .await;
    let reconnects = Arc::new(AtomicUsize::new(0));
    let (mut clients, returned) = fail_and_return_two(&balancer, &mut backends, &reconnects).await;
    let rebalanced = || -> u64 {
        targets
            .iter()
            .map(|t| backend_report(&balancer, "k3s", t).rebalanced)
            .sum()
    };

    // The survivor may keep up to (1 + 0.2) x 100 = 120; the others fill up to the rest.
    eventually("each backend holds its share within the tolerance", || {
        let now = actives(&balancer, &targets);
        now.iter().sum::<u64>() == CLIENTS as u64 && now.iter().all(|&n| (80..=120).contains(&n))
    })
    .await;
    let elapsed = returned.elapsed();
    let closed = rebalanced();
    // Rounds that can have run since the return (one per interval, plus the one in progress),
    // each closing at most 15.
    let rounds = elapsed.as_millis() as u64 / 300 + 2;
    assert!(
        closed <= rounds * 15,
        "{closed} sessions closed in {elapsed:?}: more than 15 per 300 ms"
    );
    assert!(closed >= 60, "the survivor shed its excess: {closed}");
    assert_eq!(
        server_report(&balancer, "k3s").ended(SessionEnd::Rebalanced),
        closed
    );
    // Balanced now: nothing more is closed.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(rebalanced(), closed, "no closes once within the tolerance");
    clients.abort_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rebalance_or_below_min_age_the_sessions_stay_where_they_moved() {
    for rebalance in [
        "",
        "[servers.k3s.rebalance]\ninterval = \"300ms\"\nmin_age = \"1h\"",
    ] {
        let mut backends = vec![
            echo_backend().await,
            echo_backend().await,
            echo_backend().await,
        ];
        let targets: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        let balancer = start_balancer(&config(&targets, rebalance)).await;
        let reconnects = Arc::new(AtomicUsize::new(0));
        let (mut clients, _) = fail_and_return_two(&balancer, &mut backends, &reconnects).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            actives(&balancer, &targets),
            [CLIENTS as u64, 0, 0],
            "{rebalance:?}"
        );
        clients.abort_all();
    }
}
