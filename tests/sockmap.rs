//! `forwarding = "sockmap"` end to end (tests run as root, so the kernel takes the sessions):
//! counters, resets both ways, idle timeouts, a backend marked down or removed, reload and
//! drain, and the fallback to splice without capabilities.
//! Integrity, half-close both ways and a slow reader run on this path in `forwarding`.

use std::time::Duration;

use betwixt::SessionEnd;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

fn sockmap(config: &str) -> String {
    format!("[betwixt]\nforwarding = \"sockmap\"\n{config}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_what_the_kernel_moved() {
    const SIZE: usize = 4 << 20;
    let backend = echo_backend().await;
    let balancer = start_balancer(&sockmap(&server_config("count", "", &[backend.addr], ""))).await;
    let client = TcpStream::connect(balancer.local_addr("count").unwrap())
        .await
        .unwrap();
    let (mut reader, mut writer) = client.into_split();
    let send = tokio::spawn(async move {
        writer.write_all(&vec![5u8; SIZE]).await.unwrap();
        writer.shutdown().await.unwrap();
    });
    let mut echoed = Vec::new();
    tokio::time::timeout(PATIENCE, reader.read_to_end(&mut echoed))
        .await
        .expect("the echo ends")
        .unwrap();
    send.await.unwrap();
    assert_eq!(echoed.len(), SIZE);
    eventually("the backend's counters match the bytes moved", || {
        let report = backend_report(&balancer, "count", backend.addr);
        report.to_backend == SIZE as u64 && report.to_client == SIZE as u64
    })
    .await;
}

#[tokio::test]
async fn a_client_reset_resets_the_backend() {
    let (reset_tx, reset_rx) = tokio::sync::oneshot::channel();
    let reset_tx = std::sync::Mutex::new(Some(reset_tx));
    let backend = spawn_backend_on("127.0.0.1:0".parse().unwrap(), move |mut stream| {
        let sender = reset_tx.lock().unwrap().take();
        async move {
            let mut buffer = [0u8; 64];
            let mut outcome = Ok(0);
            for _ in 0..100 {
                outcome = stream.read(&mut buffer).await;
                if !matches!(outcome, Ok(n) if n > 0) {
                    break;
                }
                let _ = stream.write_all(&buffer[..1]).await;
            }
            if let Some(sender) = sender {
                let _ = sender.send(outcome.map_err(|error| error.kind()));
            }
        }
    })
    .await;
    let balancer = start_balancer(&sockmap(&server_config("rst", "", &[backend.addr], ""))).await;
    let mut client = TcpStream::connect(balancer.local_addr("rst").unwrap())
        .await
        .unwrap();
    // One exchange, so the session is past its first flight and in the kernel.
    client.write_all(b"hello").await.unwrap();
    let mut reply = [0u8; 1];
    client.read_exact(&mut reply).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    let outcome = tokio::time::timeout(PATIENCE, reset_rx)
        .await
        .expect("the backend sees the end")
        .unwrap();
    assert_eq!(outcome, Err(std::io::ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn a_backend_reset_resets_the_client() {
    let backend = spawn_backend_on("127.0.0.1:0".parse().unwrap(), |mut stream| async move {
        let mut first = [0u8; 5];
        let _ = stream.read_exact(&mut first).await;
        let _ = stream.write_all(b"!").await;
        // The second request arrives through the kernel; the backend resets.
        let _ = stream.read_exact(&mut first).await;
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream);
    })
    .await;
    let balancer = start_balancer(&sockmap(&server_config("rst", "", &[backend.addr], ""))).await;
    let mut client = TcpStream::connect(balancer.local_addr("rst").unwrap())
        .await
        .unwrap();
    client.write_all(b"hello").await.unwrap();
    let mut buffer = [0u8; 16];
    client.read_exact(&mut buffer[..1]).await.unwrap();
    client.write_all(b"again").await.unwrap();
    let result = tokio::time::timeout(PATIENCE, client.read(&mut buffer))
        .await
        .unwrap();
    let error = result.expect_err("a reset backend must reset the client, not close cleanly");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn the_client_idle_timeout_cuts_a_quiet_client_while_the_backend_talks() {
    let backend = ticking_backend().await;
    let config = server_config(
        "idle",
        "client_idle_timeout = \"600ms\"",
        &[backend.addr],
        "",
    );
    let balancer = start_balancer(&sockmap(&config)).await;
    let mut client = TcpStream::connect(balancer.local_addr("idle").unwrap())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    assert!(
        closed_by_peer(&mut client).await,
        "idle client was never cut"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(600),
        "cut after {elapsed:?}"
    );
    eventually("the end is counted as an idle timeout", || {
        server_report(&balancer, "idle").ended(SessionEnd::IdleTimeout) == 1
    })
    .await;
}

/// Without CAP_BPF and CAP_NET_ADMIN the program cannot load: one warning, and sessions
/// still forward (by splice).
#[tokio::test]
async fn without_capabilities_sessions_splice_after_one_warning() {
    let backend = echo_backend().await;
    let port = free_port();
    let scratch = Scratch::new("sockmap-fallback");
    let config = scratch.file(
        "betwixt.toml",
        &sockmap(&server_config("echo", "", &[backend.addr], "").replace(
            "bind = \"127.0.0.1:0\"",
            &format!("bind = \"127.0.0.1:{port}\""),
        )),
    );
    let mut child = tokio::process::Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(BINARY)
        .arg("-c")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("setpriv runs (util-linux)");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut echoed = Vec::new();
    for attempt in 0..3 {
        let mut stream = None;
        for _ in 0..100 {
            if let Ok(connected) = TcpStream::connect(addr).await {
                stream = Some(connected);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut stream = stream.expect("the daemon listens");
        stream.write_all(b"through splice").await.unwrap();
        let mut reply = [0u8; 14];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut reply))
            .await
            .expect("the echo comes back")
            .unwrap();
        echoed.push((attempt, reply == *b"through splice"));
    }
    assert!(echoed.iter().all(|(_, same)| *same), "{echoed:?}");
    send_signal(child.id().unwrap() as i32, libc::SIGTERM);
    let output = tokio::time::timeout(PATIENCE, async {
        let mut said = String::new();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            said.push_str(&line);
            said.push('\n');
        }
        said
    })
    .await
    .expect("the daemon exits");
    let warnings = output
        .matches("forwarding = \\\"sockmap\\\" is unavailable")
        .count()
        + output
            .matches("forwarding = \"sockmap\" is unavailable")
            .count();
    assert_eq!(warnings, 1, "one warning for three sessions:\n{output}");
    assert!(
        output.contains("CAP_BPF"),
        "the warning names the cause:\n{output}"
    );
}

/// An echo backend whose listener can be closed while the sessions it accepted go on: a ping
/// check then fails although no session noticed anything.
struct DetachedEcho {
    addr: std::net::SocketAddr,
    listener: tokio::task::JoinHandle<()>,
}

impl DetachedEcho {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // Not owned by the accept task: the session outlives the listener.
                tokio::spawn(async move {
                    let (mut from, mut to) = stream.into_split();
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                });
            }
        });
        Self { addr, listener }
    }

    fn close_listener(&self) {
        self.listener.abort();
    }
}

impl Drop for DetachedEcho {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_in_the_kernel_close_when_their_backend_is_marked_down() {
    let doomed = DetachedEcho::start().await;
    let steady = DetachedEcho::start().await;
    let config = server_config(
        "api",
        "balance = \"roundrobin\"",
        &[doomed.addr, steady.addr],
        "[servers.api.healthcheck]\nkind = \"ping\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nfails = 1\npasses = 1",
    );
    let balancer = start_balancer(&sockmap(&config)).await;
    let addr = balancer.local_addr("api").unwrap();
    let mut sessions = Vec::new();
    for _ in 0..6 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert!(echo_round(&mut stream, b"first").await);
        sessions.push(stream);
    }
    assert_eq!(backend_report(&balancer, "api", doomed.addr).total, 3);
    doomed.close_listener();
    eventually("the doomed backend is marked down", || {
        backend_report(&balancer, "api", doomed.addr).health == betwixt::Health::Down
    })
    .await;
    // The kernel forwards without waking the session, so an exchange could beat the close:
    // wait for the closes to be counted first.
    eventually("the closes are counted", || {
        server_report(&balancer, "api").ended(SessionEnd::BackendDown) == 3
    })
    .await;
    let mut closed = 0;
    for stream in &mut sessions {
        if echo_round(stream, b"again").await {
            continue;
        }
        assert!(closed_by_peer(stream).await, "a session hangs");
        closed += 1;
    }
    assert_eq!(closed, 3, "exactly the doomed backend's sessions close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_in_the_kernel_survive_a_reload_or_close_with_their_removed_backend() {
    let (a, b) = (DetachedEcho::start().await, DetachedEcho::start().await);
    let extra = "balance = \"roundrobin\"\nclose_sessions_on_backend_removal = true";
    let balancer = start_balancer(&sockmap(&server_config(
        "k3s",
        extra,
        &[a.addr, b.addr],
        "",
    )))
    .await;
    let addr = balancer.local_addr("k3s").unwrap();
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert!(echo_round(&mut stream, b"first").await);
        sessions.push(stream);
    }
    // A reload that changes something else: every session goes on.
    let other = server_config("other", "", &[a.addr], "");
    let both = sockmap(&format!(
        "{}\n{other}",
        server_config("k3s", extra, &[a.addr, b.addr], "")
    ));
    balancer.reload(parse_config(&both)).await.unwrap();
    for stream in &mut sessions {
        assert!(echo_round(stream, b"after the reload").await);
    }
    // A reload that removes `b`: its sessions close, `a`'s go on.
    let only_a = sockmap(&format!(
        "{}\n{other}",
        server_config("k3s", extra, &[a.addr], "")
    ));
    balancer.reload(parse_config(&only_a)).await.unwrap();
    eventually("the closes are counted", || {
        server_report(&balancer, "k3s").ended(SessionEnd::BackendRemoved) == 2
    })
    .await;
    let (mut alive, mut closed) = (0, 0);
    for stream in &mut sessions {
        if echo_round(stream, b"after the removal").await {
            alive += 1;
        } else {
            assert!(closed_by_peer(stream).await, "a session hangs");
            closed += 1;
        }
    }
    assert_eq!((alive, closed), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_drains_sessions_in_the_kernel_then_closes_what_is_left() {
    let backend = DetachedEcho::start().await;
    let balancer = start_balancer(&sockmap(&server_config("k3s", "", &[backend.addr], ""))).await;
    let addr = balancer.local_addr("k3s").unwrap();
    let mut quick = TcpStream::connect(addr).await.unwrap();
    let mut stubborn = TcpStream::connect(addr).await.unwrap();
    assert!(echo_round(&mut quick, b"first").await);
    assert!(echo_round(&mut stubborn, b"first").await);
    let closer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Still served while the balancer drains.
        assert!(echo_round(&mut quick, b"during the drain").await);
        quick.shutdown().await.unwrap();
        let mut rest = Vec::new();
        quick.read_to_end(&mut rest).await.unwrap();
        rest
    });
    let summary = balancer.stop(Duration::from_millis(1500)).await;
    assert_eq!(
        summary.closed_by_force, 1,
        "only the stubborn session outlived the grace period"
    );
    assert!(closer.await.unwrap().is_empty());
    assert!(closed_by_peer(&mut stubborn).await);
}
