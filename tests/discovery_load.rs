//! Discovery's acceptance test (issue 11): while about 400 new connections a second and 200
//! long sessions run through a server, its exec source swaps one backend for another, then
//! fails and then times out; nobody may notice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use betwixt::{LoadBalancer, SessionEnd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::discovery::{ListSource, exec_server, is_up, slow_ping, sorted, targets};
use crate::util::*;

const LONG_SESSIONS: u32 = 200;
/// How often a long session sends a chunk and waits for its echo.
const EXCHANGE_EVERY: Duration = Duration::from_millis(100);
const CHUNK: usize = 64;
const ARRIVALS_PER_SECOND: u32 = 400;
/// The most new connections the load opens: 20 s worth, far more than the test needs.
const MAX_ARRIVALS: u32 = 20 * ARRIVALS_PER_SECOND;

/// What session `id` sends in round `round`: bytes no other session or round sends in the
/// same order, so an echo from the wrong stream or a lost chunk shows.
fn chunk(id: u32, round: u32) -> [u8; CHUNK] {
    let mut chunk = [0u8; CHUNK];
    chunk[..4].copy_from_slice(&id.to_be_bytes());
    chunk[4..8].copy_from_slice(&round.to_be_bytes());
    for (offset, byte) in chunk.iter_mut().enumerate().skip(8) {
        *byte = (id as usize * 31 + round as usize * 7 + offset) as u8;
    }
    chunk
}

/// A long session: every [`EXCHANGE_EVERY`] it sends a chunk and expects it echoed, until
/// `stop`; then it closes its side and expects the backend to close with nothing more.
/// Returns the bytes echoed, or what went wrong.
async fn long_session(addr: SocketAddr, id: u32, stop: Arc<AtomicBool>) -> Result<u64, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|error| format!("session {id}: connect: {error}"))?;
    let mut echoed = 0;
    // 1000 rounds are 100 s: `stop` comes long before.
    for round in 0..1000 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let sent = chunk(id, round);
        let mut echo = [0u8; CHUNK];
        let exchange = async {
            stream.write_all(&sent).await?;
            stream.read_exact(&mut echo).await
        };
        match tokio::time::timeout(PATIENCE, exchange).await {
            Ok(Ok(_)) if echo == sent => echoed += CHUNK as u64,
            Ok(Ok(_)) => return Err(format!("session {id}: round {round} echoed other bytes")),
            Ok(Err(error)) => return Err(format!("session {id}: round {round}: {error}")),
            Err(_) => return Err(format!("session {id}: round {round}: no echo")),
        }
        tokio::time::sleep(EXCHANGE_EVERY).await;
    }
    let close = async {
        stream.shutdown().await?;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.map(|_| rest)
    };
    match tokio::time::timeout(PATIENCE, close).await {
        Ok(Ok(rest)) if rest.is_empty() => Ok(echoed),
        Ok(Ok(rest)) => Err(format!("session {id}: {} bytes after close", rest.len())),
        Ok(Err(error)) => Err(format!("session {id}: close: {error}")),
        Err(_) => Err(format!("session {id}: the backend did not close")),
    }
}

/// One new connection: sends its own line and expects it echoed.
async fn arrival(addr: SocketAddr, number: u32) -> Result<(), String> {
    let line = format!("arrival {number}\n");
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(line.as_bytes()).await?;
        let mut echo = vec![0u8; line.len()];
        stream.read_exact(&mut echo).await?;
        Ok::<_, std::io::Error>(echo)
    };
    match tokio::time::timeout(PATIENCE, attempt).await {
        Ok(Ok(echo)) if echo == line.as_bytes() => Ok(()),
        Ok(Ok(_)) => Err(format!("arrival {number}: echoed other bytes")),
        Ok(Err(error)) => Err(format!("arrival {number}: {error}")),
        Err(_) => Err(format!("arrival {number}: no echo")),
    }
}

/// What the load of new connections saw.
struct Arrivals {
    opened: u32,
    failures: Vec<String>,
    per_second: f64,
}

/// Opens new connections at [`ARRIVALS_PER_SECOND`] (never faster: a late tick is not made up
/// with a burst), each on its own task, until `stop` or [`MAX_ARRIVALS`]; `answered` counts
/// those echoed so far.
async fn arrivals(addr: SocketAddr, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>) -> Arrivals {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / ARRIVALS_PER_SECOND);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut connections = JoinSet::new();
    let mut opened = 0;
    while opened < MAX_ARRIVALS && !stop.load(Ordering::SeqCst) {
        ticks.tick().await;
        let answered = Arc::clone(&answered);
        connections.spawn(async move {
            let result = arrival(addr, opened).await;
            if result.is_ok() {
                answered.fetch_add(1, Ordering::SeqCst);
            }
            result
        });
        opened += 1;
    }
    let per_second = f64::from(opened) / started.elapsed().as_secs_f64();
    let mut failures = Vec::new();
    while let Some(result) = connections.join_next().await {
        if let Err(failure) = result.unwrap() {
            failures.push(failure);
        }
    }
    Arrivals {
        opened,
        failures,
        per_second,
    }
}

fn serves(balancer: &LoadBalancer, target: SocketAddr) -> bool {
    server_report(balancer, "k3s")
        .backend(&target.to_string())
        .is_some_and(|backend| backend.total > 0)
}

/// Waits until `more` further new connections were echoed: the data path is moving.
async fn load_moves(what: &str, answered: &AtomicU64, more: u64) {
    let from = answered.load(Ordering::SeqCst);
    eventually(what, || answered.load(Ordering::SeqCst) >= from + more).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_a_list_change_and_a_failing_source_drop_nothing() {
    let (a, b, c) = (
        echo_backend().await,
        echo_backend().await,
        echo_backend().await,
    );
    let source = ListSource::new("discovery-load", &[a.addr, b.addr]);
    let config = exec_server(
        "k3s",
        &source.command(),
        "balance = \"leastconn\"",
        "interval = \"500ms\"\ntimeout = \"2s\"",
    ) + &slow_ping("k3s");
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("k3s").unwrap();
    eventually("a and b pass their first check", || {
        is_up(&balancer, "k3s", a.addr) && is_up(&balancer, "k3s", b.addr)
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut sessions = JoinSet::new();
    for id in 0..LONG_SESSIONS {
        sessions.spawn(long_session(addr, id, Arc::clone(&stop)));
    }
    eventually("the long sessions reach a and b", || {
        let active = |target| backend_report(&balancer, "k3s", target).active;
        active(a.addr) + active(b.addr) >= u64::from(LONG_SESSIONS)
    })
    .await;
    let a_before = backend_report(&balancer, "k3s", a.addr);
    let on_b = backend_report(&balancer, "k3s", b.addr).active;
    assert!(on_b > 0, "leastconn put long sessions on b too");

    let answered = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(arrivals(addr, Arc::clone(&stop), Arc::clone(&answered)));
    load_moves("the load runs", &answered, 200).await;

    // The change: c in, b out, mid-load.
    let changed = Instant::now();
    source.set(&[a.addr, c.addr]);
    eventually("c is discovered, passes its first check and serves", || {
        serves(&balancer, c.addr)
    })
    .await;
    let c_served_after = changed.elapsed();
    assert_eq!(targets(&balancer, "k3s"), sorted(&[a.addr, c.addr]));
    // Connections that chose b just before the change may still be connecting.
    load_moves("the load runs on a and c", &answered, 200).await;
    let b_accepted = b.accepted();

    // A failing source, then one that times out: keeplast keeps a and c.
    source.fail(true);
    eventually("the failed fetch is counted", || {
        let discovery = server_report(&balancer, "k3s").discovery.unwrap();
        discovery.failures >= 1
            && discovery
                .last_error
                .is_some_and(|reason| reason.contains("source down"))
    })
    .await;
    load_moves("the load runs while the source fails", &answered, 200).await;
    source.fail(false);
    source.hang(true);
    eventually("the timed-out fetch is counted", || {
        let discovery = server_report(&balancer, "k3s").discovery.unwrap();
        discovery.last_error.as_deref() == Some("timed out after 2s")
    })
    .await;
    load_moves("the load runs while the source hangs", &answered, 200).await;
    assert_eq!(targets(&balancer, "k3s"), sorted(&[a.addr, c.addr]));

    stop.store(true, Ordering::SeqCst);
    let load = load.await.unwrap();
    let mut echoed = 0;
    let mut broken = Vec::new();
    while let Some(session) = sessions.join_next().await {
        match session.unwrap() {
            Ok(bytes) => echoed += bytes,
            Err(failure) => broken.push(failure),
        }
    }
    eprintln!(
        "{} new connections at {:.0}/s; c served {c_served_after:?} after its listing \
         (interval 500ms); {on_b} long sessions drained from b; {echoed} bytes echoed in \
         long sessions",
        load.opened, load.per_second
    );
    assert!(
        load.failures.is_empty(),
        "{} of {} new connections failed: {:?}",
        load.failures.len(),
        load.opened,
        &load.failures[..load.failures.len().min(5)]
    );
    assert!(broken.is_empty(), "long sessions broke: {broken:?}");
    // Every session exchanged at least its first chunk before the change.
    assert!(echoed >= u64::from(LONG_SESSIONS) * CHUNK as u64);

    let report = server_report(&balancer, "k3s");
    assert!(
        report.to_backends >= echoed && report.to_clients >= echoed,
        "the server counted the bytes: {report:?}"
    );
    assert_eq!(report.unserved, 0);
    assert_eq!(report.ended(SessionEnd::BackendRemoved), 0);
    assert_eq!(
        b.accepted(),
        b_accepted,
        "the removed b got new connections"
    );
    let a_after = backend_report(&balancer, "k3s", a.addr);
    assert!(
        a_after.total >= a_before.total,
        "a kept its counters: {a_before:?} then {a_after:?}"
    );
    assert_eq!(
        backend_report(&balancer, "k3s", c.addr).health,
        betwixt::Health::Up
    );
}

/// What the new connections of [`classified_arrivals`] saw so far.
#[derive(Default)]
struct Outcomes {
    /// Echoed.
    served: AtomicU64,
    /// Closed by the balancer without an echo, at once.
    refused: AtomicU64,
}

/// New connections at [`ARRIVALS_PER_SECOND`] until `stop` or [`MAX_ARRIVALS`], each counted
/// as served or refused; returns those that got neither within the patience (a stall).
async fn classified_arrivals(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Outcomes>,
) -> Vec<String> {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / ARRIVALS_PER_SECOND);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut connections = JoinSet::new();
    let mut opened = 0;
    while opened < MAX_ARRIVALS && !stop.load(Ordering::SeqCst) {
        ticks.tick().await;
        let outcomes = Arc::clone(&outcomes);
        connections.spawn(async move {
            match arrival(addr, opened).await {
                Ok(()) => outcomes.served.fetch_add(1, Ordering::SeqCst),
                Err(stalled) if stalled.ends_with("no echo") => return Some(stalled),
                Err(_) => outcomes.refused.fetch_add(1, Ordering::SeqCst),
            };
            None
        });
        opened += 1;
    }
    let mut stalled = Vec::new();
    while let Some(result) = connections.join_next().await {
        stalled.extend(result.unwrap());
    }
    stalled
}

/// Waits until `more` further arrivals were counted in `counter`.
async fn counted(what: &str, counter: &AtomicU64, more: u64) {
    let from = counter.load(Ordering::SeqCst);
    eventually(what, || counter.load(Ordering::SeqCst) >= from + more).await;
}

/// `failpolicy = "setempty"` under load: while the source fails the server has no backend;
/// each new client is closed at once (and counted unserved), none waits. The sessions already
/// open stay: the emptied list removes their backend, and a removed backend's sessions drain
/// unless `close_sessions_on_backend_removal` says otherwise, as with any other list change.
/// When the source recovers, new clients are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_setempty_refuses_new_clients_while_the_source_fails_and_serves_again() {
    const SESSIONS: u32 = 50;
    let a = echo_backend().await;
    let source = ListSource::new("discovery-load-setempty", &[a.addr]);
    let config = exec_server(
        "k3s",
        &source.command(),
        "",
        "interval = \"200ms\"\ntimeout = \"2s\"\nfailpolicy = \"setempty\"",
    ) + &slow_ping("k3s");
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("k3s").unwrap();
    eventually("a passes its first check", || {
        is_up(&balancer, "k3s", a.addr)
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut sessions = JoinSet::new();
    for id in 0..SESSIONS {
        sessions.spawn(long_session(addr, id, Arc::clone(&stop)));
    }
    eventually("the long sessions reach a", || {
        backend_report(&balancer, "k3s", a.addr).active >= u64::from(SESSIONS)
    })
    .await;
    let outcomes = Arc::new(Outcomes::default());
    let load = tokio::spawn(classified_arrivals(
        addr,
        Arc::clone(&stop),
        Arc::clone(&outcomes),
    ));
    counted("the load is served", &outcomes.served, 200).await;

    source.fail(true);
    eventually("the failure empties the server", || {
        targets(&balancer, "k3s").is_empty()
    })
    .await;
    counted("new clients are refused", &outcomes.refused, 200).await;
    let served_while_empty = outcomes.served.load(Ordering::SeqCst);
    counted("more new clients are refused", &outcomes.refused, 200).await;
    // Connections that picked a just before the list emptied may still have been echoed.
    assert!(
        outcomes.served.load(Ordering::SeqCst) <= served_while_empty + 10,
        "clients were served by an empty server"
    );
    assert!(
        server_report(&balancer, "k3s").active >= u64::from(SESSIONS),
        "the open sessions stay while the server is empty"
    );

    source.fail(false);
    eventually("a is discovered again and passes its first check", || {
        is_up(&balancer, "k3s", a.addr)
    })
    .await;
    counted("new clients are served again", &outcomes.served, 200).await;

    stop.store(true, Ordering::SeqCst);
    let stalled = load.await.unwrap();
    assert!(stalled.is_empty(), "new clients stalled: {stalled:?}");
    let mut broken = Vec::new();
    while let Some(session) = sessions.join_next().await {
        if let Err(failure) = session.unwrap() {
            broken.push(failure);
        }
    }
    assert!(broken.is_empty(), "long sessions broke: {broken:?}");
    let report = server_report(&balancer, "k3s");
    assert!(
        report.unserved >= 400,
        "refused clients are counted: {report:?}"
    );
    assert_eq!(report.ended(SessionEnd::BackendRemoved), 0);
    eprintln!(
        "setempty under load: {} served, {} refused while empty, {SESSIONS} sessions kept",
        outcomes.served.load(Ordering::SeqCst),
        outcomes.refused.load(Ordering::SeqCst)
    );
}
