//! Health checks against real servers: a k3s-like API server over TLS, a hung server, a
//! backend that freezes with sessions on it, exec and probe checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use betwixt::{Health, LoadBalancer, SessionEnd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::fake_apiserver::{FakeApiServer, Pki};
use crate::util::*;

fn scratch(test: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("betwixt-health-{test}-{}", std::process::id()))
}

fn health_of(balancer: &LoadBalancer, server: &str, target: SocketAddr) -> Health {
    backend_report(balancer, server, target).health
}

async fn wait_health(balancer: &LoadBalancer, server: &str, target: SocketAddr, want: Health) {
    let what = format!("{target} to be {want:?}");
    eventually(&what, || health_of(balancer, server, target) == want).await;
}

/// Checks that health stays `want` over several check intervals.
async fn stays(balancer: &LoadBalancer, server: &str, target: SocketAddr, want: Health) {
    for _ in 0..10 {
        assert_eq!(
            health_of(balancer, server, target),
            want,
            "{target} flipped"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

/// One server over `backend` with the given healthcheck table body.
fn checked(backend: SocketAddr, healthcheck: &str) -> String {
    server_config(
        "api",
        "",
        &[backend],
        &format!(
            "[servers.api.healthcheck]\ninterval = \"100ms\"\ntimeout = \"300ms\"\n{healthcheck}"
        ),
    )
}

#[tokio::test]
async fn https_checks_against_a_k3s_like_api_server() {
    let pki = Pki::generate(&scratch("https"));
    let api = FakeApiServer::start(&pki).await;
    let ca = pki.ca.display();
    let (cert, key) = (pki.client_cert.display(), pki.client_key.display());
    let cases = [
        // kubeadm's "expect 200 from /readyz" without credentials: k3s answers 401.
        (
            format!("kind = \"https\"\nhttps_path = \"/readyz\"\ntls_ca_cert_path = \"{ca}\""),
            Health::Down,
        ),
        // The same with a client certificate.
        (
            format!(
                "kind = \"https\"\nhttps_path = \"/readyz\"\ntls_ca_cert_path = \"{ca}\"\n\
                 tls_cert_path = \"{cert}\"\ntls_key_path = \"{key}\""
            ),
            Health::Up,
        ),
        // k3s's unauthenticated /ping, skipping verification.
        (
            "kind = \"https\"\nhttps_path = \"/ping\"\ntls_skip_verify = true".to_owned(),
            Health::Up,
        ),
        // "HTTPS answers at all": 401 counts as alive.
        (
            format!(
                "kind = \"https\"\nhttps_path = \"/readyz\"\nhttps_expected_status = [200, 401]\ntls_ca_cert_path = \"{ca}\""
            ),
            Health::Up,
        ),
        // A complete handshake verified against the CA.
        (
            format!("kind = \"tls\"\ntls_ca_cert_path = \"{ca}\""),
            Health::Up,
        ),
        // The name sent as SNI and verified: the certificate says "kubernetes", not "wrong".
        (
            format!(
                "kind = \"tls\"\ntls_ca_cert_path = \"{ca}\"\ntls_server_name = \"kubernetes\""
            ),
            Health::Up,
        ),
        (
            format!("kind = \"tls\"\ntls_ca_cert_path = \"{ca}\"\ntls_server_name = \"wrong\""),
            Health::Down,
        ),
        // Verified against the system roots: the private CA is unknown there.
        ("kind = \"tls\"".to_owned(), Health::Down),
    ];
    for (healthcheck, expected) in cases {
        let initial = match expected {
            Health::Up => "unhealthy",
            Health::Down => "healthy",
        };
        let config = checked(
            api.addr,
            &format!("{healthcheck}\ninitial_status = \"{initial}\""),
        );
        let balancer = start_balancer(&config).await;
        wait_health(&balancer, "api", api.addr, expected).await;
        stays(&balancer, "api", api.addr, expected).await;
    }
    // Every check that got past the handshake ended it with close_notify.
    eventually("checks to close their connections", || {
        api.closes.clean.load(Ordering::SeqCst) >= 10
    })
    .await;
    assert_eq!(api.closes.unclean.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn readyz_failing_during_a_graceful_shutdown_drains_the_master() {
    let pki = Pki::generate(&scratch("readyz"));
    let api = FakeApiServer::start(&pki).await;
    let config = checked(
        api.addr,
        &format!(
            "kind = \"https\"\nhttps_path = \"/readyz\"\nfails = 2\ntls_ca_cert_path = \"{}\"\n\
             tls_cert_path = \"{}\"\ntls_key_path = \"{}\"",
            pki.ca.display(),
            pki.client_cert.display(),
            pki.client_key.display()
        ),
    );
    let balancer = start_balancer(&config).await;
    stays(&balancer, "api", api.addr, Health::Up).await;
    api.readyz_status.store(500, Ordering::SeqCst);
    wait_health(&balancer, "api", api.addr, Health::Down).await;
    api.readyz_status.store(200, Ordering::SeqCst);
    wait_health(&balancer, "api", api.addr, Health::Up).await;
}

#[tokio::test]
async fn a_hung_server_passes_ping_but_fails_tls_and_https() {
    // Accepts TCP connections and never says a word: a hung API server.
    let hung = silent_backend().await;
    for (healthcheck, expected) in [
        (
            "kind = \"ping\"\ninitial_status = \"unhealthy\"",
            Health::Up,
        ),
        ("kind = \"tls\"\ntls_skip_verify = true", Health::Down),
        ("kind = \"https\"\ntls_skip_verify = true", Health::Down),
    ] {
        let balancer = start_balancer(&checked(hung.addr, healthcheck)).await;
        wait_health(&balancer, "api", hung.addr, expected).await;
        stays(&balancer, "api", hung.addr, expected).await;
    }
    assert!(hung.accepted() > 0);
}

/// An echo backend that can freeze: its port closes and its open connections go silent
/// without closing, like a master that lost power.
struct FreezableBackend {
    backend: TestBackend,
    frozen: Arc<AtomicBool>,
}

impl FreezableBackend {
    async fn start_on(addr: SocketAddr) -> Self {
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&frozen);
        let backend = spawn_backend_on(addr, move |mut stream| {
            let flag = Arc::clone(&flag);
            async move {
                let mut buffer = [0u8; 1024];
                loop {
                    let read = tokio::select! {
                        read = stream.read(&mut buffer) => read,
                        () = tokio::time::sleep(Duration::from_millis(20)) => {
                            if flag.load(Ordering::SeqCst) { break } else { continue }
                        }
                    };
                    match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if flag.load(Ordering::SeqCst)
                                || stream.write_all(&buffer[..n]).await.is_err()
                            {
                                break;
                            }
                        }
                    }
                }
                // Frozen: hold the socket open, answer nothing.
                tokio::time::sleep(PATIENCE * 3).await;
                drop(stream);
            }
        })
        .await;
        Self { backend, frozen }
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
        self.backend.stop();
    }
}

async fn echo_once(stream: &mut TcpStream) -> bool {
    echo_round(stream, b"ping").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_loses_its_sessions_and_comes_back_after_passes() {
    let doomed = FreezableBackend::start_on("127.0.0.1:0".parse().unwrap()).await;
    let doomed_addr = doomed.backend.addr;
    let steady = echo_backend().await;
    let config = server_config(
        "api",
        "balance = \"roundrobin\"",
        &[doomed_addr, steady.addr],
        "[servers.api.healthcheck]\nkind = \"ping\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nfails = 2\npasses = 2",
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("api").unwrap();

    let mut sessions = Vec::new();
    for _ in 0..10 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert!(echo_once(&mut stream).await);
        sessions.push(stream);
    }
    let sessions_on = |target: SocketAddr| backend_report(&balancer, "api", target).total;
    let on_doomed = sessions_on(doomed_addr);
    assert_eq!(on_doomed, 5, "roundrobin should split the sessions");

    doomed.freeze();
    wait_health(&balancer, "api", doomed_addr, Health::Down).await;
    // Sessions on the frozen master are closed by the balancer; the others keep working.
    let mut closed = 0;
    for stream in &mut sessions {
        if echo_once(stream).await {
            continue;
        }
        assert!(
            closed_by_peer(stream).await,
            "a session on the frozen master hangs"
        );
        closed += 1;
    }
    assert_eq!(closed, on_doomed as usize);
    eventually("the closes are counted", || {
        server_report(&balancer, "api").ended(SessionEnd::BackendDown) == on_doomed
    })
    .await;

    // New connections all reach the steady backend, with no failure.
    for _ in 0..20 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert!(echo_once(&mut stream).await);
    }
    assert_eq!(sessions_on(doomed_addr), on_doomed);

    // The master comes back on the same port: after two passed checks it takes new sessions.
    let revived = FreezableBackend::start_on(doomed_addr).await;
    wait_health(&balancer, "api", doomed_addr, Health::Up).await;
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert!(echo_once(&mut stream).await);
    }
    assert!(
        sessions_on(doomed_addr) >= on_doomed + 2,
        "the revived master gets no traffic"
    );
    drop(revived);
}

#[tokio::test]
async fn passive_checks_mark_a_refusing_backend_down_before_the_next_check() {
    let live = name_backend("live").await;
    let dead = closed_port().await;
    // Checks 30 s apart and 5 failures needed: the one active check of this test (at start)
    // cannot mark the dead backend down; only client traffic can.
    let config = server_config(
        "api",
        "balance = \"roundrobin\"",
        &[dead, live.addr],
        "[servers.api.healthcheck]\nkind = \"ping\"\ninterval = \"30s\"\nfails = 5\npassive_fails = 2",
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("api").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        health_of(&balancer, "api", dead),
        Health::Up,
        "the active check alone"
    );
    for _ in 0..10 {
        assert_eq!(fetch_name(addr).await.unwrap(), "live");
    }
    assert_eq!(health_of(&balancer, "api", dead), Health::Down);
    // Down after two failed client connects: no client was sent there afterwards.
    assert_eq!(backend_report(&balancer, "api", dead).refused, 2);
    // The flip is among the recent transitions, with its reason (the status page shows them).
    let transitions = balancer.report().transitions;
    let flip = transitions
        .iter()
        .find(|t| *t.backend == dead.to_string())
        .expect("the passive flip is recorded");
    assert!(!flip.up && flip.server == "api");
    assert!(
        flip.reason.contains("2 failed connects of client traffic"),
        "{}",
        flip.reason
    );
}

#[tokio::test]
async fn exec_check_output_is_compared_without_its_newline() {
    let backend = name_backend("a").await;
    let dir = scratch("exec");
    std::fs::create_dir_all(&dir).unwrap();
    let script = |name: &str, says: &str| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\n# called as: {name} HOST PORT\necho {says}\n"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let (healthy, sick) = (script("healthy.sh", "1"), script("sick.sh", "0"));
    let cases = [
        (
            format!(
                "kind = \"exec\"\nexec_command = \"{}\"\ninitial_status = \"unhealthy\"",
                healthy.display()
            ),
            Health::Up,
        ),
        (
            format!("kind = \"exec\"\nexec_command = \"{}\"", sick.display()),
            Health::Down,
        ),
    ];
    for (healthcheck, expected) in cases {
        let balancer = start_balancer(&checked(backend.addr, &healthcheck)).await;
        wait_health(&balancer, "api", backend.addr, expected).await;
        stays(&balancer, "api", backend.addr, expected).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_exec_check_that_hangs_is_killed_with_its_children() {
    let backend = name_backend("a").await;
    let dir = scratch("exec-hang");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("hang.sh");
    let pids = dir.join("pids");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nsleep 30 &\necho $! >> {0}\necho $$ >> {0}\nwait\necho 1\n",
            pids.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let healthcheck = format!(
        "kind = \"exec\"\nexec_command = \"{}\"\ninterval = \"300ms\"\ntimeout = \"200ms\"",
        script.display()
    );
    let config = server_config(
        "api",
        "",
        &[backend.addr],
        &format!("[servers.api.healthcheck]\n{healthcheck}"),
    );
    let balancer = start_balancer(&config).await;
    wait_health(&balancer, "api", backend.addr, Health::Down).await;
    drop(balancer);
    // Every process the check started (the script and its sleep) is gone or a zombie.
    let started = std::fs::read_to_string(&pids).unwrap();
    for pid in started.split_whitespace() {
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                !stat
                    .rsplit_once(')')
                    .unwrap()
                    .1
                    .trim_start()
                    .starts_with('Z')
            })
        };
        eventually(&format!("process {pid} to be killed"), || !running()).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn probe_with_go_escapes() {
    // A Redis-like backend: PING\r\n -> +PONG\r\n, anything else -> -ERR.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 6];
                if stream.read_exact(&mut request).await.is_ok() {
                    let reply: &[u8] = if &request == b"PING\r\n" {
                        b"+PONG\r\n"
                    } else {
                        b"-ERR\r\n"
                    };
                    let _ = stream.write_all(reply).await;
                }
            });
        }
    });
    let cases = [
        (
            r#"probe_send = '\x50ING\r\n'
probe_recv = '+PONG\r\n'"#,
            Health::Up,
        ),
        (
            r#"probe_send = 'PING\n\n'
probe_recv = '+PONG'"#,
            Health::Down,
        ),
        (
            r#"probe_send = 'PING\r\n'
probe_strategy = "regexp"
probe_recv = '^.P[O]NG'
probe_recv_len = 5"#,
            Health::Up,
        ),
    ];
    for (probe, expected) in cases {
        let initial = if expected == Health::Up {
            "unhealthy"
        } else {
            "healthy"
        };
        let healthcheck = format!("kind = \"probe\"\ninitial_status = \"{initial}\"\n{probe}");
        let balancer = start_balancer(&checked(addr, &healthcheck)).await;
        wait_health(&balancer, "api", addr, expected).await;
        stays(&balancer, "api", addr, expected).await;
    }
}

#[tokio::test]
async fn all_backends_down_still_tries_them() {
    // Both checks fail (exec says 0) but the backends work: clients must still be served.
    let backends = [name_backend("a").await, name_backend("b").await];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let config = server_config(
        "api",
        "",
        &addrs,
        "[servers.api.healthcheck]\nkind = \"exec\"\nexec_command = \"/bin/false\"\ninterval = \"100ms\"\ninitial_status = \"unhealthy\"",
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("api").unwrap();
    for _ in 0..5 {
        let name = fetch_name(addr).await.unwrap();
        assert!(name == "a" || name == "b");
    }
}

#[tokio::test]
async fn a_backend_added_by_a_reload_gets_no_client_before_its_first_check() {
    let live = name_backend("live").await;
    let dead = closed_port().await;
    let check = "[servers.api.healthcheck]\nkind = \"ping\"\ninterval = \"200ms\"";
    let balancer = start_balancer(&server_config(
        "api",
        "balance = \"roundrobin\"",
        &[live.addr],
        check,
    ))
    .await;
    let addr = balancer.local_addr("api").unwrap();
    let reloaded = server_config("api", "balance = \"roundrobin\"", &[live.addr, dead], check);
    let loaded = betwixt::config::load_str("test.toml", &reloaded, &Default::default()).unwrap();
    balancer.reload(loaded.config).await.unwrap();
    for _ in 0..30 {
        assert_eq!(fetch_name(addr).await.unwrap(), "live");
    }
    let added = backend_report(&balancer, "api", dead);
    assert_eq!(
        added.refused, 0,
        "a client was sent to a backend nobody had checked"
    );
    assert_eq!(added.health, Health::Down);
}

#[tokio::test]
async fn a_udp_probe_checks_a_datagram_answer() {
    // The TCP port the balancer forwards to, and a UDP responder on the same port number.
    let backend = name_backend("a").await;
    let udp = tokio::net::UdpSocket::bind(backend.addr).await.unwrap();
    tokio::spawn(async move {
        let mut datagram = [0u8; 64];
        for _ in 0..10_000 {
            let Ok((len, from)) = udp.recv_from(&mut datagram).await else {
                return;
            };
            let reply: &[u8] = if &datagram[..len] == b"status?" {
                b"ok"
            } else {
                b"??"
            };
            let _ = udp.send_to(reply, from).await;
        }
    });
    let cases = [
        ("probe_send = 'status?'\nprobe_recv = 'ok'", Health::Up),
        ("probe_send = 'other'\nprobe_recv = 'ok'", Health::Down),
    ];
    for (probe, expected) in cases {
        let initial = if expected == Health::Up {
            "unhealthy"
        } else {
            "healthy"
        };
        let healthcheck = format!(
            "kind = \"probe\"\nprobe_protocol = \"udp\"\ninitial_status = \"{initial}\"\n{probe}"
        );
        let balancer = start_balancer(&checked(backend.addr, &healthcheck)).await;
        wait_health(&balancer, "api", backend.addr, expected).await;
        stays(&balancer, "api", backend.addr, expected).await;
    }
}

/// A CA file whose read blocks (here a FIFO nobody writes to, in production a hung network
/// mount) must not stall the runtime: checks are prepared off its workers. The balancer runs
/// on a one-worker runtime in its own thread, so a blocked worker would stop it entirely.
#[test]
fn a_blocking_ca_file_does_not_stall_the_runtime() {
    let dir = scratch("fifo-ca");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("ca.pem");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (served_tx, served_rx) = std::sync::mpsc::channel();
    let ca = fifo.clone();
    let balancer_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let backend = name_backend("a").await;
            let healthcheck = format!("kind = \"tls\"\ntls_ca_cert_path = \"{}\"", ca.display());
            let balancer = start_balancer(&checked(backend.addr, &healthcheck)).await;
            let addr = balancer.local_addr("api").unwrap();
            // Several check intervals: every check task has been polled.
            tokio::time::sleep(Duration::from_millis(500)).await;
            // The receiver is gone when the test already failed.
            let _ = served_tx.send(fetch_name(addr).await.ok());
        });
    });
    let served = served_rx.recv_timeout(Duration::from_secs(10));
    // Let the reader of the FIFO go (it reads an empty file), so the thread can end: opening
    // the writing end without blocking succeeds once a reader waits.
    let mut released = false;
    for _ in 0..200 {
        use std::os::unix::fs::OpenOptionsExt;
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
        if writer.is_ok() {
            released = true;
            break;
        }
        if balancer_thread.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(released, "nothing ever read the CA file");
    balancer_thread.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        served,
        Ok(Some("a".to_owned())),
        "the balancer stalled while a check read its CA file"
    );
}

/// An echo listener on `addr` whose sessions outlive it: aborting the returned task closes
/// only the listening socket.
async fn echo_listener(addr: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut reader, mut writer) = stream.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_check_with_gobetweens_default_fails_keeps_the_sessions() {
    let (flaky_addr, listener) = echo_listener("127.0.0.1:0".parse().unwrap()).await;
    let config = server_config(
        "api",
        "",
        &[flaky_addr],
        "[servers.api.healthcheck]\nkind = \"ping\"\ninterval = \"400ms\"\ntimeout = \"100ms\"\nfails = 1\npasses = 1",
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("api").unwrap();
    let mut session = TcpStream::connect(addr).await.unwrap();
    assert!(echo_once(&mut session).await);

    // The listener goes away for one check (established sessions stay), then comes back.
    listener.abort();
    wait_health(&balancer, "api", flaky_addr, Health::Down).await;
    let (_, back) = echo_listener(flaky_addr).await;
    wait_health(&balancer, "api", flaky_addr, Health::Up).await;

    assert!(
        echo_once(&mut session).await,
        "a healthy backend's session was cut"
    );
    assert_eq!(
        server_report(&balancer, "api").ended(SessionEnd::BackendDown),
        0
    );
    back.abort();
}
