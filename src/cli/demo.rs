//! `betwixt demo`: the balancer in front of three local backends that answer with their name,
//! so someone without a cluster can watch it balance and fail over.
//!
//! The backends are tiny HTTP servers on ephemeral loopback ports, run in this process. The
//! balancer is configured from TOML text through the normal loader, with a 1 s ping check, and
//! runs through the library API ([`LoadBalancer`]). Commands on standard input stop and start
//! backends and print the counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use betwixt::LoadBalancer;
use betwixt::config::{self, LoadOptions};

const BACKENDS: usize = 3;

/// Runs the demo until end of input or Ctrl-C.
///
/// # Errors
/// A demo backend or the balancer cannot listen (e.g. `port` is taken: pass another).
/// Runs the demo on its own runtime until the user quits.
pub fn run_blocking(port: u16) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(port))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn run(port: u16) -> anyhow::Result<()> {
    let mut backends = BTreeMap::new();
    for number in 1..=BACKENDS {
        let backend = DemoBackend::start(number, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        backends.insert(number, backend);
    }
    let text = config_text(port, backends.values().map(|backend| backend.addr));
    let loaded = config::load_str("demo.toml", &text, &LoadOptions::default())
        .map_err(|errors| anyhow::anyhow!("{errors}"))?;
    betwixt::logging::init(&loaded.config.logging).context("cannot set up logging")?;
    let balancer = LoadBalancer::start(loaded.config)
        .await
        .context("the demo balancer cannot listen; try --port with a free port")?;
    print_intro(port, &backends);

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Ok(Some(line)) = line else { break };
        handle_command(line.trim(), &mut backends, &balancer).await;
    }
    println!("draining...");
    balancer.stop(Duration::from_secs(5)).await;
    Ok(())
}

/// The demo's configuration, in the same gobetween format users write.
fn config_text(port: u16, backends: impl Iterator<Item = SocketAddr>) -> String {
    let list: Vec<String> = backends.map(|addr| format!("\"{addr}\"")).collect();
    format!(
        r#"
[logging]
level = "info"
output = "stderr"

[servers.demo]
bind = "127.0.0.1:{port}"
balance = "roundrobin"
backend_connection_timeout = "1s"

[servers.demo.discovery]
kind = "static"
static_list = [{}]

[servers.demo.healthcheck]
kind = "ping"
interval = "1s"
timeout = "500ms"
fails = 2
passes = 1
"#,
        list.join(", ")
    )
}

fn print_intro(port: u16, backends: &BTreeMap<usize, DemoBackend>) {
    println!("\nbetwixt demo: balancer on 127.0.0.1:{port}, roundrobin over");
    for (number, backend) in backends {
        println!("  backend-{number}  {}", backend.addr);
    }
    println!(
        "\nIn another terminal:\n  \
         for i in $(seq 6); do curl -s http://127.0.0.1:{port}/; done\n\n\
         Then type here:\n  \
         stop 2     close backend-2's port: requests keep succeeding on the other two\n  \
         start 2    bring it back: the health check puts it back in rotation\n  \
         status     connections and bytes per backend\n  \
         Ctrl-C     drain and exit\n"
    );
}

async fn handle_command(
    command: &str,
    backends: &mut BTreeMap<usize, DemoBackend>,
    balancer: &LoadBalancer,
) {
    let mut words = command.split_whitespace();
    let (verb, number) = (words.next(), words.next().and_then(|n| n.parse().ok()));
    match (verb, number) {
        (Some("stop"), Some(number)) => match backends.get_mut(&number) {
            Some(backend) => {
                backend.stop();
                println!("backend-{number} stopped: its port now refuses connections");
            }
            None => println!("no backend-{number}"),
        },
        (Some("start"), Some(number)) => match backends.get_mut(&number) {
            Some(backend) => match backend.restart().await {
                Ok(()) => println!("backend-{number} started again on {}", backend.addr),
                Err(error) => println!("backend-{number} cannot start: {error}"),
            },
            None => println!("no backend-{number}"),
        },
        (Some("status"), _) => print_status(balancer),
        (None, _) => {}
        _ => println!("commands: stop N, start N, status (Ctrl-C to exit)"),
    }
}

fn print_status(balancer: &LoadBalancer) {
    for server in balancer.report().servers {
        println!(
            "{:<18} {:<6} {:>7} {:>7} {:>8} {:>10} {:>10}",
            "backend", "health", "active", "total", "refused", "rx bytes", "tx bytes"
        );
        for backend in &server.backends {
            println!(
                "{:<18} {:<6} {:>7} {:>7} {:>8} {:>10} {:>10}",
                backend.target,
                backend.health.as_str(),
                backend.active,
                backend.total,
                backend.refused,
                backend.to_client,
                backend.to_backend,
            );
        }
    }
}

/// A backend that answers every request with its name, over HTTP.
struct DemoBackend {
    number: usize,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl DemoBackend {
    async fn start(number: usize, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("demo backend-{number} cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve_name(listener, number));
        Ok(Self {
            number,
            addr,
            task: Some(task),
        })
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restart(&mut self) -> anyhow::Result<()> {
        if self.task.is_none() {
            *self = Self::start(self.number, self.addr).await?;
        }
        Ok(())
    }
}

async fn serve_name(listener: TcpListener, number: usize) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => drop(tokio::spawn(answer(stream, number))),
            // Out of file descriptors or similar: wait instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Reads whatever the client sent first (a request line, or a line typed into nc), then
/// answers with the backend's name and closes.
async fn answer(mut stream: TcpStream, number: usize) {
    let mut request = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut request)).await;
    let body = format!("hello from backend-{number}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
