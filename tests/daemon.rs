//! The daemon under a (test) service manager: systemd notifications, reloads by SIGHUP that
//! must not break anything, drain on SIGTERM, socket activation, the unit file.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::util::*;

/// A daemon whose systemd notifications this test receives, as systemd would.
struct Notified {
    daemon: Daemon,
    socket: UnixDatagram,
    _socket_dir: Scratch,
}

impl Notified {
    /// Starts `betwixt -c CONFIG` with NOTIFY_SOCKET (and `env`) set.
    fn start(test: &str, config_text: &str, env: &[(&str, &str)]) -> Self {
        let socket_dir = Scratch::new(test);
        let path = socket_dir.0.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        let path = path.to_str().unwrap();
        let mut env = env.to_vec();
        env.push(("NOTIFY_SOCKET", path));
        Self {
            daemon: Daemon::spawn(test, config_text, &[], &env),
            socket,
            _socket_dir: socket_dir,
        }
    }

    /// The next notification datagram, as text.
    fn next_message(&self) -> String {
        let mut buffer = [0u8; 4096];
        let read = self
            .socket
            .recv(&mut buffer)
            .expect("a notification within the patience");
        String::from_utf8_lossy(&buffer[..read]).into_owned()
    }
}

fn daemon_config(port: u16, backends: &[SocketAddr], extra_top: &str) -> String {
    let list: Vec<_> = backends.iter().map(|addr| format!("\"{addr}\"")).collect();
    format!(
        "{extra_top}\n[servers.k3s]\nbind = \"127.0.0.1:{port}\"\nbalance = \"roundrobin\"\n\
         [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [{}]\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_and_reloads_good_and_bad() {
    let (a, b) = (name_backend("a").await, name_backend("b").await);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let good = daemon_config(port, &[a.addr], "");
    let notified = Notified::start("notify", &good, &[]);
    let daemon = &notified.daemon;

    let ready = notified.next_message();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains("STATUS=serving 1 servers"), "{ready}");
    assert_eq!(fetch_name(addr).await.unwrap(), "a");

    let port_taken = free_port();
    let bad_configs = [
        (
            "syntax error",
            good.replace("[servers.k3s]", "[servers.k3s"),
        ),
        ("unknown balance", good.replace("roundrobin", "roundrobbin")),
        (
            "duplicate bind",
            format!(
                "{good}\n{}",
                daemon_config(port, &[a.addr], "").replace("servers.k3s", "servers.other")
            ),
        ),
        ("a port in use", daemon_config(port_taken, &[a.addr], "")),
    ];
    let _holder = std::net::TcpListener::bind(("127.0.0.1", port_taken)).unwrap();
    for (what, text) in &bad_configs {
        daemon.rewrite(text);
        daemon.signal(libc::SIGHUP);
        let reloading = notified.next_message();
        assert!(
            reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
            "{what}: {reloading}"
        );
        let after = notified.next_message();
        assert!(
            after.contains("READY=1") && after.contains("reload refused"),
            "{what}: {after}"
        );
        assert_eq!(
            fetch_name(addr).await.unwrap(),
            "a",
            "{what}: no longer serving the old config"
        );
    }
    // A missing file is refused the same way.
    std::fs::remove_file(&daemon.config).unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(notified.next_message().contains("RELOADING=1"));
    assert!(notified.next_message().contains("reload refused"));
    assert_eq!(fetch_name(addr).await.unwrap(), "a");

    // The next valid reload is applied: b joins.
    daemon.rewrite(&daemon_config(port, &[a.addr, b.addr], ""));
    daemon.signal(libc::SIGHUP);
    assert!(notified.next_message().contains("RELOADING=1"));
    let applied = notified.next_message();
    assert!(
        applied.contains("READY=1") && !applied.contains("refused"),
        "{applied}"
    );
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(fetch_name(addr).await.unwrap());
    }
    assert!(
        names.contains(&"a".to_owned()) && names.contains(&"b".to_owned()),
        "{names:?}"
    );

    daemon.signal(libc::SIGTERM);
    assert!(notified.next_message().contains("STOPPING=1"));
    let mut notified = notified;
    assert!(notified.daemon.wait_for_exit().await.success());
}

#[tokio::test]
async fn the_watchdog_is_pinged_when_systemd_asks_for_it() {
    let backend = name_backend("a").await;
    let config = daemon_config(free_port(), &[backend.addr], "");
    let notified = Notified::start("watchdog", &config, &[("WATCHDOG_USEC", "200000")]);
    let mut pings = 0;
    for _ in 0..20 {
        if notified.next_message().contains("WATCHDOG=1") {
            pings += 1;
        }
        if pings == 3 {
            return;
        }
    }
    panic!("only {pings} watchdog pings in 20 messages");
}

#[tokio::test]
async fn sigterm_drains_and_a_second_sigterm_exits_at_once() {
    let backend = silent_backend().await;
    let port = free_port();
    let config = daemon_config(
        port,
        &[backend.addr],
        "[betwixt]\nshutdown_timeout = \"60s\"",
    );
    let mut notified = Notified::start("drain", &config, &[]);
    assert!(notified.next_message().contains("READY=1"));
    let mut session = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    eventually("the session reaches the backend", || {
        backend.accepted() == 1
    })
    .await;

    notified.daemon.signal(libc::SIGTERM);
    assert!(notified.next_message().contains("STOPPING=1"));
    // Still draining: the session is open and the process alive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        notified.daemon.child.try_wait().unwrap().is_none(),
        "exited without draining"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "still accepting while draining"
    );

    notified.daemon.signal(libc::SIGTERM);
    let started = tokio::time::Instant::now();
    let status = notified.daemon.wait_for_exit().await;
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, session.read_to_end(&mut rest)).await;
}

#[tokio::test]
async fn socket_activation_serves_the_connection_that_started_it() {
    let backend = name_backend("master").await;
    let port = free_port();
    let scratch = Scratch::new("activate");
    let config = scratch.file("betwixt.toml", &daemon_config(port, &[backend.addr], ""));
    // systemd-socket-activate listens, and starts betwixt with the socket on the first
    // connection, as systemd does with betwixt.socket.
    let mut activator = Command::new("systemd-socket-activate")
        .args([
            "-l",
            &format!("127.0.0.1:{port}"),
            BINARY,
            "-c",
            config.to_str().unwrap(),
        ])
        .env_remove("GOBETWEEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate is installed (package systemd)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Refused only until systemd-socket-activate listens; the first connection it queues
    // starts betwixt, which must serve it.
    let mut first = fetch_name(addr).await;
    for _ in 0..200 {
        match &first {
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                tokio::time::sleep(Duration::from_millis(25)).await;
                first = fetch_name(addr).await;
            }
            _ => break,
        }
    }
    assert_eq!(first.unwrap(), "master");
    assert_eq!(fetch_name(addr).await.unwrap(), "master");
    send_signal(activator.id() as i32, libc::SIGTERM);
    assert!(wait_for_exit(&mut activator).await.success());
}

/// The unit files as installed, in `dir`: the service, the socket and, with `drop_ins`, the
/// shipped drop-ins in `betwixt.service.d/`; ExecStart points at the binary under test
/// (verify checks that it exists).
fn install_units(dir: &Path, drop_ins: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let copy = |from: &str, to: &Path| {
        let text = std::fs::read_to_string(root.join(from)).unwrap();
        std::fs::write(to, text.replace("/usr/local/bin/betwixt", BINARY)).unwrap();
    };
    for unit in ["betwixt.service", "betwixt.socket"] {
        copy(unit, &dir.join(unit));
    }
    let drop_in_dir = dir.join("betwixt.service.d");
    std::fs::create_dir_all(&drop_in_dir).unwrap();
    for drop_in in drop_ins {
        copy(drop_in, &drop_in_dir.join(drop_in));
    }
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    let scratch = Scratch::new("unit");
    let dir = &scratch.0;
    install_units(
        dir,
        &["low-ports.conf", "api-credentials.conf", "sockmap.conf"],
    );
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("betwixt.service"))
        .arg(dir.join("betwixt.socket"))
        .output()
        .expect("systemd-analyze is installed (package systemd)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let problems: Vec<_> = stderr
        .lines()
        // The test sandbox may lack a running systemd; only findings about our units count
        // (their paths, drop-ins included, all contain "betwixt").
        .filter(|line| line.contains("betwixt"))
        .collect();
    assert!(output.status.success() && problems.is_empty(), "{stderr}");
}

/// `systemd-analyze security --offline`'s verdict lines about binding privileged ports, with
/// the given drop-ins installed.
fn port_privileges(dir: &Path, drop_ins: &[&str]) -> Vec<String> {
    let verdicts = security_verdicts(dir, drop_ins);
    assert!(
        verdicts
            .iter()
            .any(|line| line.contains("CapabilityBoundingSet=")),
        "{verdicts:#?}"
    );
    verdicts
        .into_iter()
        .filter(|line| line.contains("AmbientCapabilities=") || line.contains("CAP_NET_(BIND"))
        .collect()
}

/// The documented way to listen below port 1024 (the low-ports drop-in) grants
/// CAP_NET_BIND_SERVICE, which the unit alone does not.
/// `systemd-analyze security --offline`'s verdict lines, with the given drop-ins installed.
fn security_verdicts(dir: &Path, drop_ins: &[&str]) -> Vec<String> {
    let _ = std::fs::remove_dir_all(dir.join("betwixt.service.d"));
    install_units(dir, drop_ins);
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(dir.join("betwixt.service"))
        .output()
        .expect("systemd-analyze is installed (package systemd)");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The sockmap drop-in grants what loading the BPF program needs (CAP_BPF, CAP_NET_ADMIN, the
/// bpf system call) and nothing else the unit denies.
#[test]
fn the_sockmap_drop_in_grants_bpf_and_nothing_more() {
    let scratch = Scratch::new("unit-sockmap");
    let without = security_verdicts(&scratch.0, &[]);
    let with = security_verdicts(&scratch.0, &["sockmap.conf"]);
    let has = |lines: &[String], text: &str| lines.iter().any(|line| line.contains(text));
    for (granted, denied) in [
        (
            "Service may load BPF programs",
            "Service may not load BPF programs",
        ),
        (
            "Service has network configuration privileges",
            "Service has no network configuration privileges",
        ),
        ("(e.g. bpf is allowed)", "@privileged is not included"),
    ] {
        assert!(has(&without, denied), "{denied}: {without:#?}");
        assert!(has(&with, granted), "{granted}: {with:#?}");
    }
    // Every other verdict is unchanged.
    let changed = |line: &String| {
        [
            "CAP_BPF",
            "CAP_NET_ADMIN",
            "@privileged",
            "AmbientCapabilities",
            "Overall",
            "NAME",
        ]
        .iter()
        .any(|name| line.contains(name))
    };
    let squeeze = |line: &String| line.split_whitespace().collect::<Vec<_>>().join(" ");
    let rest = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|line| !changed(line))
            .map(squeeze)
            .collect()
    };
    assert_eq!(rest(&without), rest(&with));
}

#[test]
fn the_low_ports_drop_in_grants_binding_privileged_ports() {
    let scratch = Scratch::new("unit-caps");
    let without = port_privileges(&scratch.0, &[]);
    assert!(
        without
            .iter()
            .any(|line| line.contains("has no elevated networking")),
        "{without:#?}"
    );
    assert!(
        without
            .iter()
            .any(|line| line.contains("does not receive ambient")),
        "{without:#?}"
    );

    let with = port_privileges(&scratch.0, &["low-ports.conf"]);
    assert!(
        with.iter()
            .any(|line| line.contains("has elevated networking")),
        "{with:#?}"
    );
    assert!(
        with.iter()
            .any(|line| line.contains("receives ambient capabilities")),
        "{with:#?}"
    );
}
