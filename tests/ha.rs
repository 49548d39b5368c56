//! Two LB nodes behind one virtual address: keepalived (`deploy/keepalived/`) and betwixt in
//! network namespaces, under load through the address, through four faults.
//!
//! Namespaces `client`, `lb1`, `lb2`, `be1`..`be3` hang off one bridge (in a namespace of its
//! own) with addresses from 198.18.0.0/24; the virtual address is 198.18.0.100:6443. The
//! client opens 200 new connections a second and keeps 50 sessions of 1-3 s each open, each
//! exchanging a message every 200 ms. Backends start each connection with the address of the
//! LB node they see, so the client knows which node served it.
//!
//! Faults, in order: kill -9 betwixt on lb1 (its track_script fails, lb2 takes over), bring
//! lb1's betwixt back (nopreempt: the address stays on lb2), a planned switchover of lb2
//! (`betwixt-switchover.sh`: drain, then keepalived moves the address), stop keepalived on
//! lb1, start it again. Needs root and keepalived; skipped with a reason otherwise.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::util::{BINARY, Scratch};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const LB: [(&str, Ipv4Addr); 2] = [
    ("lb1", Ipv4Addr::new(198, 18, 0, 11)),
    ("lb2", Ipv4Addr::new(198, 18, 0, 12)),
];
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const BACKENDS: [(&str, Ipv4Addr); 3] = [
    ("be1", Ipv4Addr::new(198, 18, 0, 21)),
    ("be2", Ipv4Addr::new(198, 18, 0, 22)),
    ("be3", Ipv4Addr::new(198, 18, 0, 23)),
];
const BACKEND_PORT: u16 = 7000;
const NEW_CONNECTIONS_PER_SECOND: u64 = 200;
const LONG_SESSIONS: usize = 50;
/// A client gives up a connection attempt (or its first line) after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The test's own bound on any wait; far beyond what a failover takes.
const PATIENCE: Duration = Duration::from_secs(15);

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The namespaces of one test run, deleted on drop (also when the test fails).
struct Namespaces {
    prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    fn name(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    fn create() -> Self {
        let mut namespaces = Self {
            prefix: format!("bxha{}-", std::process::id()),
            names: Vec::new(),
        };
        let bridge = namespaces.add("br");
        run(
            "ip",
            &["-n", &bridge, "link", "add", "br0", "type", "bridge"],
        );
        run("ip", &["-n", &bridge, "link", "set", "br0", "up"]);
        let mut nodes = vec![("client", CLIENT)];
        nodes.extend(LB);
        nodes.extend(BACKENDS);
        for (role, address) in nodes {
            let namespace = namespaces.add(role);
            let port = format!("p-{role}");
            run(
                "ip",
                &[
                    "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &namespace,
                ],
            );
            run(
                "ip",
                &["-n", &bridge, "link", "set", &port, "master", "br0", "up"],
            );
            let cidr = format!("{address}/24");
            run(
                "ip",
                &["-n", &namespace, "addr", "add", &cidr, "dev", "eth0"],
            );
            run("ip", &["-n", &namespace, "link", "set", "eth0", "up"]);
            run("ip", &["-n", &namespace, "link", "set", "lo", "up"]);
        }
        namespaces
    }

    fn add(&mut self, role: &str) -> String {
        let name = self.name(role);
        run("ip", &["netns", "add", &name]);
        self.names.push(name.clone());
        name
    }

    fn has_vip(&self, role: &str) -> bool {
        let output = Command::new("ip")
            .args(["-n", &self.name(role), "-o", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).contains(&format!("inet {VIP}/"))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs `body` on a new thread inside network namespace `name`: sockets it creates belong to
/// that namespace.
fn in_namespace<T: Send + 'static>(
    name: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns(2) on a descriptor we own; it changes only this thread's namespace.
        let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            result,
            0,
            "setns {path}: {}",
            std::io::Error::last_os_error()
        );
        body()
    })
}

/// A process started by the test, stopped on drop.
struct Process {
    name: String,
    child: Child,
}

impl Process {
    fn start(namespace: &str, name: &str, log: &Path, program: &str, args: &[&str]) -> Self {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", namespace, program])
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            name: name.to_owned(),
            child,
        }
    }

    fn signal(&self, signal: i32) {
        crate::util::send_signal(self.child.id() as i32, signal);
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill(2) on a child this test spawned and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..250 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} still running 5 s after SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A new connection reached a backend through `lb`.
    Connected { lb: Ipv4Addr },
    /// A new connection attempt failed: one of the 200 a second, or (`session`) the opening
    /// of a long session, retried every 50 ms.
    ConnectFailed { session: bool },
    /// A session ended before its time; it had gone through `lb`.
    Lost { lb: Ipv4Addr },
    /// A session ended when the client chose.
    Completed,
}

type Log = Arc<Mutex<Vec<(Instant, Event)>>>;

fn record(log: &Log, event: Event) {
    log.lock().unwrap().push((Instant::now(), event));
}

/// Connects through the virtual address and reads which LB node the backend saw.
async fn open() -> Option<(BufReader<TcpStream>, Ipv4Addr)> {
    let vip = SocketAddr::V4(SocketAddrV4::new(VIP, 6443));
    let attempt = async {
        let stream = TcpStream::connect(vip).await.ok()?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.ok()?;
        Some((reader, line.trim().parse().ok()?))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
}

/// One long-session slot: sessions of 1-3 s back to back until `stop`.
async fn long_sessions(log: Log, stop: Arc<AtomicBool>) {
    for _ in 0..10_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Some((mut stream, lb)) = open().await else {
            record(&log, Event::ConnectFailed { session: true });
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        record(&log, Event::Connected { lb });
        let exchanges = fastrand::u32(5..=15);
        let mut lost = false;
        for _ in 0..exchanges {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut reply = [0u8; 4];
            let exchange = async {
                stream.get_mut().write_all(b"ping").await?;
                stream.read_exact(&mut reply).await
            };
            if !matches!(
                tokio::time::timeout(CONNECT_TIMEOUT, exchange).await,
                Ok(Ok(_))
            ) {
                lost = true;
                break;
            }
        }
        record(
            &log,
            if lost {
                Event::Lost { lb }
            } else {
                Event::Completed
            },
        );
    }
}

/// The client: 200 new connections a second and 50 long-session slots, until `stop`.
async fn load(log: Log, stop: Arc<AtomicBool>) {
    let slots: Vec<_> = (0..LONG_SESSIONS)
        .map(|_| tokio::spawn(long_sessions(log.clone(), stop.clone())))
        .collect();
    let mut ticker = tokio::time::interval(Duration::from_micros(
        1_000_000 / NEW_CONNECTIONS_PER_SECOND,
    ));
    // At most two minutes of new connections, whatever happens to `stop`.
    for _ in 0..NEW_CONNECTIONS_PER_SECOND * 120 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        ticker.tick().await;
        let log = log.clone();
        tokio::spawn(async move {
            match open().await {
                Some((_, lb)) => record(&log, Event::Connected { lb }),
                None => record(&log, Event::ConnectFailed { session: false }),
            }
        });
    }
    for slot in slots {
        slot.await.unwrap();
    }
}

/// Backends: each connection gets the LB node's address as its first line, then an echo.
async fn serve_backend(listener: std::net::TcpListener) {
    listener.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    while let Ok((mut stream, peer)) = listener.accept().await {
        tokio::spawn(async move {
            if stream
                .write_all(format!("{}\n", peer.ip()).as_bytes())
                .await
                .is_ok()
            {
                let (mut reader, mut writer) = stream.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            }
        });
    }
}

fn betwixt_config() -> String {
    let backends: Vec<String> = BACKENDS
        .iter()
        .map(|(_, address)| format!("\"{address}:{BACKEND_PORT}\""))
        .collect();
    format!(
        "[logging]\nlevel = \"info\"\noutput = \"stderr\"\n\
         [api]\nenabled = true\nbind = \"127.0.0.1:8888\"\n\
         [servers.k3s]\nbind = \"0.0.0.0:6443\"\nbalance = \"roundrobin\"\n\
         [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [{}]\n\
         [servers.k3s.healthcheck]\nkind = \"ping\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n",
        backends.join(", ")
    )
}

/// `deploy/keepalived/keepalived.conf` with this test's addresses, paths and, for lb2, its
/// priority and peer.
fn keepalived_config(lb: usize, state_file: &Path) -> String {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/keepalived");
    let text = std::fs::read_to_string(deploy.join("keepalived.conf")).unwrap();
    let (own, peer) = (LB[lb].1, LB[1 - lb].1);
    let text = text
        .replace("unicast_src_ip 10.0.0.11", &format!("unicast_src_ip {own}"))
        .replace("        10.0.0.12\n", &format!("        {peer}\n"))
        .replace("10.0.0.100/24", &format!("{VIP}/24"))
        .replace("/usr/bin/betwixt", BINARY)
        .replace(
            "/usr/share/betwixt/keepalived/betwixt-notify.sh",
            &deploy.join("betwixt-notify.sh").display().to_string(),
        )
        .replace("/run/betwixt-vrrp.state", &state_file.display().to_string());
    let unreplaced = text
        .lines()
        .any(|line| !line.trim_start().starts_with('#') && line.contains("10.0.0."));
    assert!(!unreplaced, "an address left unreplaced");
    if lb == 0 {
        text
    } else {
        text.replace("priority 150", "priority 100")
    }
}

/// One LB node: its betwixt and its keepalived.
struct Node {
    role: &'static str,
    namespace: String,
    dir: PathBuf,
    betwixt: Option<Process>,
    keepalived: Option<Process>,
}

impl Node {
    fn start_betwixt(&mut self) {
        let config = self.dir.join("betwixt.toml");
        let log = self.dir.join(format!("betwixt-{}.log", fastrand::u32(..)));
        self.betwixt = Some(Process::start(
            &self.namespace,
            &format!("betwixt on {}", self.role),
            &log,
            BINARY,
            &["-c", config.to_str().unwrap()],
        ));
    }

    fn start_keepalived(&mut self) {
        let dir = self.dir.display().to_string();
        let log = self
            .dir
            .join(format!("keepalived-{}.log", fastrand::u32(..)));
        self.keepalived = Some(Process::start(
            &self.namespace,
            &format!("keepalived on {}", self.role),
            &log,
            "keepalived",
            &[
                "-n",
                "-l",
                "-D",
                "-P",
                "-f",
                &format!("{dir}/keepalived.conf"),
                "-p",
                &format!("{dir}/keepalived.pid"),
                "-r",
                &format!("{dir}/vrrp.pid"),
                "-c",
                &format!("{dir}/checkers.pid"),
            ],
        ));
    }
}

/// Waits up to [`PATIENCE`] for `done`, checking every 20 ms.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Instant {
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        if done() {
            return Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {PATIENCE:?} waiting for {what}");
}

/// The first connection through `lb` recorded after `since`.
fn first_through(log: &Log, lb: Ipv4Addr, since: Instant) -> Option<Instant> {
    log.lock()
        .unwrap()
        .iter()
        .find(|(at, event)| *at > since && *event == Event::Connected { lb })
        .map(|(at, _)| *at)
}

/// One fault and what the client saw from it until the next.
#[derive(Debug)]
struct Phase {
    name: &'static str,
    start: Instant,
    /// The first new connection through the node that took over, if the address moved.
    recovered: Option<Instant>,
    /// The node whose sessions may be lost in this phase.
    failed_node: Option<Ipv4Addr>,
}

fn ha_prerequisites() -> Result<(), String> {
    // SAFETY: geteuid(2) reads a process attribute and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (network namespaces need it)".into());
    }
    let found = Command::new("keepalived").arg("--version").output();
    if !found.is_ok_and(|output| output.status.success()) {
        return Err("keepalived is not installed (apt-get install keepalived)".into());
    }
    Ok(())
}

#[test]
fn two_lb_nodes_fail_over_through_keepalived() {
    if let Err(reason) = ha_prerequisites() {
        eprintln!("SKIPPED two_lb_nodes_fail_over_through_keepalived: {reason}");
        return;
    }
    let scratch = Scratch::new("ha");
    let namespaces = Namespaces::create();
    let listeners: Vec<_> = BACKENDS
        .iter()
        .map(|(role, address)| {
            in_namespace(&namespaces.name(role), move || {
                std::net::TcpListener::bind((*address, BACKEND_PORT)).unwrap()
            })
            .join()
            .unwrap()
        })
        .collect();
    let backends = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let tasks: Vec<_> = listeners
                .into_iter()
                .map(|listener| tokio::spawn(serve_backend(listener)))
                .collect();
            // Serve until the process ends; the namespaces go away first.
            for task in tasks {
                let _ = task.await;
            }
        });
    });
    drop(backends);

    let mut nodes: Vec<Node> = LB
        .iter()
        .enumerate()
        .map(|(index, (role, _))| {
            let dir = scratch.0.join(role);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("betwixt.toml"), betwixt_config()).unwrap();
            let state = dir.join("vrrp.state");
            std::fs::write(
                dir.join("keepalived.conf"),
                keepalived_config(index, &state),
            )
            .unwrap();
            Node {
                role,
                namespace: namespaces.name(role),
                dir,
                betwixt: None,
                keepalived: None,
            }
        })
        .collect();
    // betwixt ready on both nodes before keepalived starts: otherwise lb1's first track check
    // can fail, lb2 wins the first election, and with nopreempt the VIP stays there.
    for node in &mut nodes {
        node.start_betwixt();
    }
    for node in &nodes {
        wait_until(&format!("betwixt ready on {}", node.role), || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &node.namespace,
                    BINARY,
                    "status",
                    "--check",
                ])
                .args(["--api", "http://127.0.0.1:8888"])
                .output()
                .is_ok_and(|output| output.status.success())
        });
    }
    for node in &mut nodes {
        node.start_keepalived();
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        exercise(&namespaces, &mut nodes)
    }));
    for node in &mut nodes {
        node.keepalived.take();
        node.betwixt.take();
    }
    if let Err(panic) = outcome {
        for node in &nodes {
            for entry in std::fs::read_dir(&node.dir).unwrap().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|ext| ext == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<_> = text.lines().rev().take(30).collect();
                    eprintln!("--- {} (last lines)", path.display());
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        std::panic::resume_unwind(panic);
    }
}

fn exercise(namespaces: &Namespaces, nodes: &mut [Node]) {
    let (lb1, lb2) = (LB[0].1, LB[1].1);
    wait_until("the address on lb1", || namespaces.has_vip("lb1"));

    let log: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (log, stop) = (log.clone(), stop.clone());
        in_namespace(&namespaces.name("client"), move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(load(log, stop));
        })
    };
    let settle = || std::thread::sleep(Duration::from_secs(2));
    let begin = Instant::now();
    wait_until("a connection through lb1", || {
        first_through(&log, lb1, begin).is_some()
    });
    settle();

    let mut phases = Vec::new();
    // 1. betwixt on lb1 dies: its check fails, lb1 goes to FAULT, lb2 takes the address.
    let start = Instant::now();
    nodes[0].betwixt.as_ref().unwrap().signal(libc::SIGKILL);
    let recovered = wait_until("a connection through lb2", || {
        first_through(&log, lb2, start).is_some()
    });
    phases.push(Phase {
        name: "kill -9 betwixt on lb1",
        start,
        recovered: first_through(&log, lb2, start).or(Some(recovered)),
        failed_node: Some(lb1),
    });
    settle();

    // 2. lb1's betwixt comes back: lb1 becomes a BACKUP, the address stays on lb2.
    let start = Instant::now();
    nodes[0].start_betwixt();
    wait_until("lb1 back as BACKUP", || {
        std::fs::read_to_string(nodes[0].dir.join("vrrp.state"))
            .is_ok_and(|state| state.trim() == "BACKUP")
    });
    settle();
    assert!(namespaces.has_vip("lb2"), "lb1 took the address back");
    phases.push(Phase {
        name: "betwixt on lb1 back",
        start,
        recovered: None,
        failed_node: None,
    });

    // 3. Planned switchover of lb2: drain, then keepalived moves the address to lb1.
    let start = Instant::now();
    let switchover =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/keepalived/betwixt-switchover.sh");
    let output = Command::new("ip")
        .args(["netns", "exec", &nodes[1].namespace])
        .arg(&switchover)
        .arg("10s")
        .env("BETWIXT", BINARY)
        .env("VIP", VIP.to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "switchover: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let recovered = wait_until("a connection through lb1", || {
        first_through(&log, lb1, start).is_some()
    });
    assert!(namespaces.has_vip("lb1"));
    phases.push(Phase {
        name: "planned switchover lb2 -> lb1",
        start,
        recovered: Some(recovered),
        failed_node: None,
    });
    wait_until("lb2 back as BACKUP", || {
        std::fs::read_to_string(nodes[1].dir.join("vrrp.state"))
            .is_ok_and(|state| state.trim() == "BACKUP")
    });
    settle();

    // 4. keepalived on lb1 stops: it gives the address up, lb2 takes it.
    let start = Instant::now();
    nodes[0].keepalived.as_mut().unwrap().stop();
    let recovered = wait_until("a connection through lb2", || {
        first_through(&log, lb2, start).is_some()
    });
    phases.push(Phase {
        name: "keepalived on lb1 stopped",
        start,
        recovered: Some(recovered),
        failed_node: Some(lb1),
    });
    settle();

    // 5. keepalived on lb1 starts again: BACKUP, the address stays on lb2.
    let start = Instant::now();
    nodes[0].start_keepalived();
    wait_until("lb1 back as BACKUP", || {
        std::fs::read_to_string(nodes[0].dir.join("vrrp.state"))
            .is_ok_and(|state| state.trim() == "BACKUP")
    });
    settle();
    assert!(namespaces.has_vip("lb2"), "lb1 took the address back");
    phases.push(Phase {
        name: "keepalived on lb1 back",
        start,
        recovered: None,
        failed_node: None,
    });

    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    judge(&log.lock().unwrap(), &phases);
}

/// Prints each phase's figures and asserts what must hold.
fn judge(log: &[(Instant, Event)], phases: &[Phase]) {
    let mut problems = Vec::new();
    for (index, phase) in phases.iter().enumerate() {
        let end = phases.get(index + 1).map(|next| next.start);
        let in_phase = log
            .iter()
            .filter(|(at, _)| *at >= phase.start && end.is_none_or(|end| *at < end));
        // A connection that failed within the window started up to CONNECT_TIMEOUT earlier.
        let window_end = phase.recovered.map(|at| at + CONNECT_TIMEOUT);
        let (mut failed_in_window, mut retries_in_window, mut failed_outside) = (0, 0, 0);
        let (mut lost, mut completed, mut connected) = (BTreeMap::<Ipv4Addr, usize>::new(), 0, 0);
        for (at, event) in in_phase {
            match event {
                Event::ConnectFailed { session } if window_end.is_some_and(|end| *at <= end) => {
                    if *session {
                        retries_in_window += 1;
                    } else {
                        failed_in_window += 1;
                    }
                }
                Event::ConnectFailed { .. } => failed_outside += 1,
                Event::Lost { lb } => *lost.entry(*lb).or_default() += 1,
                Event::Completed => completed += 1,
                Event::Connected { .. } => connected += 1,
            }
        }
        let failover = phase.recovered.map(|at| at - phase.start);
        println!(
            "{:<30} failover {:>6}  connections {connected:>4}, new ones failed in the window \
             {failed_in_window:>3} (session reopenings {retries_in_window:>4}), outside \
             {failed_outside}  sessions completed {completed:>3}, lost {lost:?}",
            phase.name,
            failover.map_or("-".to_owned(), |time| format!(
                "{:.2} s",
                time.as_secs_f64()
            )),
        );
        if failed_outside > 0 {
            problems.push(format!(
                "{}: {failed_outside} new connections failed outside the failover window",
                phase.name
            ));
        }
        for (lb, count) in &lost {
            if Some(*lb) != phase.failed_node {
                problems.push(format!(
                    "{}: {count} sessions through {lb} lost, which did not fail",
                    phase.name
                ));
            }
        }
        if failover.is_some_and(|time| time > Duration::from_secs(10)) {
            problems.push(format!("{}: failover took {failover:?}", phase.name));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
