//! Shared pieces of the end-to-end tests: a balancer started from TOML text, and small
//! backends on ephemeral loopback ports.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use betwixt::config::{self, Config, LoadOptions};
use betwixt::{BackendReport, LoadBalancer, ServerReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// Upper bound for anything a test waits for; generous because CI machines are shared.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Starts a balancer from config text (servers should bind `127.0.0.1:0`).
pub async fn start_balancer(toml: &str) -> LoadBalancer {
    let loaded = config::load_str("test.toml", toml, &LoadOptions::default())
        .unwrap_or_else(|errors| panic!("test config invalid:\n{errors}"));
    LoadBalancer::start(loaded.config)
        .await
        .expect("balancer starts")
}

/// Server `name`'s report, now.
pub fn server_report(balancer: &LoadBalancer, name: &str) -> ServerReport {
    balancer
        .report()
        .server(name)
        .cloned()
        .unwrap_or_else(|| panic!("no server {name}"))
}

/// The report of backend `target` of server `server`, now.
pub fn backend_report(
    balancer: &LoadBalancer,
    server: &str,
    target: impl std::fmt::Display,
) -> BackendReport {
    let target = target.to_string();
    server_report(balancer, server)
        .backend(&target)
        .cloned()
        .unwrap_or_else(|| panic!("server {server} has no backend {target}"))
}

/// A one-server config: `[servers.NAME]` with `extra` lines, static backends, then `tail`
/// (further tables such as a healthcheck).
pub fn server_config(name: &str, extra: &str, backends: &[SocketAddr], tail: &str) -> String {
    let list: Vec<String> = backends.iter().map(|addr| format!("\"{addr}\"")).collect();
    format!(
        "[servers.{name}]\nbind = \"127.0.0.1:0\"\n{extra}\n\
         [servers.{name}.discovery]\nkind = \"static\"\nstatic_list = [{}]\n{tail}\n",
        list.join(", ")
    )
}

/// A config for `reload`: valid, or the test fails naming its errors.
pub fn parse_config(toml: &str) -> Config {
    config::load_str("test.toml", toml, &LoadOptions::default())
        .unwrap_or_else(|errors| panic!("{errors}"))
        .config
}

/// Writes `message` and reads it back from an echoing peer within 2 s; `false` on a close, a
/// reset, different bytes or silence.
pub async fn echo_round(stream: &mut TcpStream, message: &[u8]) -> bool {
    let round = async {
        stream.write_all(message).await?;
        let mut reply = vec![0u8; message.len()];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(reply == message)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), round).await,
        Ok(Ok(true))
    )
}

/// A backend task that can be stopped (its port then refuses connections).
pub struct TestBackend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestBackend {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes the listener; the port refuses new connections. Established ones stay.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn spawn_backend<F, Fut>(handler: F) -> TestBackend
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    spawn_backend_on("127.0.0.1:0".parse().unwrap(), handler).await
}

pub async fn spawn_backend_on<F, Fut>(addr: SocketAddr, handler: F) -> TestBackend
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await.expect("backend binds");
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            connections.spawn(handler(stream));
        }
    });
    TestBackend {
        addr,
        accepted,
        task,
    }
}

/// Answers every connection with `name\n`, then waits for the client to close.
pub async fn name_backend(name: &'static str) -> TestBackend {
    spawn_backend(move |mut stream| async move {
        let _ = stream.write_all(format!("{name}\n").as_bytes()).await;
        let mut sink = [0u8; 1024];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
}

/// Echoes everything; closes its write side after the client's EOF.
pub async fn echo_backend() -> TestBackend {
    spawn_backend(|mut stream| async move {
        let (mut reader, mut writer) = stream.split();
        let _ = tokio::io::copy(&mut reader, &mut writer).await;
        let _ = writer.shutdown().await;
    })
    .await
}

/// Sends a byte every 50 ms (for 20 s) and never reads: a backend that keeps talking to a
/// client that says nothing.
pub async fn ticking_backend() -> TestBackend {
    spawn_backend(|mut stream| async move {
        for _ in 0..400 {
            if stream.write_all(b".").await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Holds connections open and never sends anything.
pub async fn silent_backend() -> TestBackend {
    spawn_backend(|mut stream| async move {
        let mut sink = [0u8; 1024];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
}

/// A port that refuses connections: bound, then closed.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Connects to the balancer and reads the backend's name line.
pub async fn fetch_name(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    read_line(&mut stream).await
}

/// Connects from a chosen loopback source address (127.0.0.0/8 is all local).
pub async fn fetch_name_from(source: [u8; 4], addr: SocketAddr) -> std::io::Result<String> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    read_line(&mut socket.connect(addr).await?).await
}

/// Reads one line (without its `\n`) within [`PATIENCE`], byte by byte so nothing after it is
/// consumed. An error when the stream closes before any byte.
pub async fn read_line(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        loop {
            let n = stream.read(&mut byte).await?;
            if n == 0 || byte[0] == b'\n' {
                return Ok::<_, std::io::Error>(());
            }
            line.push(byte[0]);
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without a name",
        ));
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Waits until `condition` holds, checking every 20 ms, for at most [`PATIENCE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until EOF or error; true when the peer closed (EOF or reset) within [`PATIENCE`].
pub async fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 4096];
    let drained = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, drained).await.is_ok()
}

/// A port that was free a moment ago, for processes that must be told a fixed port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("an ephemeral port")
}

/// The betwixt binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_betwixt");

/// A directory of its own for one test, removed on drop.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("betwixt-{test}-{}-{unique}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `text` to `name` in the directory and returns its path.
    pub fn file(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A betwixt process run by a test from a config file in its own scratch directory; killed
/// on drop.
pub struct Daemon {
    pub child: std::process::Child,
    pub config: std::path::PathBuf,
    pub scratch: Scratch,
}

impl Daemon {
    /// Runs `betwixt -c CONFIG ARGS` with `env` set, output discarded.
    pub fn spawn(test: &str, config_text: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_in(Scratch::new(test), config_text, args, env)
    }

    /// Like [`spawn`](Self::spawn), in a scratch directory the config may already refer to.
    pub fn spawn_in(
        scratch: Scratch,
        config_text: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let config = scratch.file("betwixt.toml", config_text);
        let child = std::process::Command::new(BINARY)
            .arg("-c")
            .arg(&config)
            .args(args)
            .env_remove("GOBETWEEN")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the betwixt binary starts");
        Self {
            child,
            config,
            scratch,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        send_signal(self.pid(), signal);
    }

    /// Replaces the config file (for a reload).
    pub fn rewrite(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    pub async fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        wait_for_exit(&mut self.child).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn send_signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) with a pid this test spawned; no memory is involved.
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(result, 0, "kill failed");
}

/// Waits for `child` to exit, for at most [`PATIENCE`]; kills it and fails the test after.
pub async fn wait_for_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon did not exit");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process killed and reaped when dropped, so a failing test leaves no daemon behind
/// (one would also keep every descriptor it inherited, such as a build lock).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
