//! Load generators. Each prints its results as one JSON line on stdout.
//!
//! - `connrate`: many concurrent short connections (connect, request, first byte, EOF, close);
//! - `keepalive`: request/response loops on persistent connections;
//! - `pingpong`: 64-byte round trips on one connection, one blocking thread;
//! - `idle`: opens connections, reports, holds them until stdin says to close;
//! - `tls-*`: the TLS clients of `tls_client`.
//!
//! Every loop stops at a deadline and at a sample cap; every connection attempt has a timeout.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::backend::{HELLO_REPLY, HELLO_REQUEST, HTTP_REQUEST, HTTP_RESPONSE};
use crate::cli::{ClientArgs, ClientKind};
use crate::stats;

/// One connection attempt or exchange that takes longer than this counts as an error.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Samples one worker keeps, whatever the duration (bounds memory and the loop).
const MAX_SAMPLES_PER_WORKER: usize = 2_000_000;
/// Pause after a failed connection before the next one.
const ERROR_PAUSE: Duration = Duration::from_millis(1);
/// Connections the idle client opens at once.
const IDLE_OPEN_CONCURRENCY: usize = 64;
/// The idle client lets go of its connections after this long even without being told.
const IDLE_HOLD_MAX: Duration = Duration::from_secs(600);
/// Bytes per ping-pong message and per idle exchange.
const MESSAGE_SIZE: usize = 64;

/// Runs the client `args.kind` and prints its JSON result.
///
/// # Errors
/// A load generator that could not run at all (ping-pong's connection failing, stdout closed).
pub fn run(runtime: &tokio::runtime::Runtime, args: ClientArgs) -> anyhow::Result<()> {
    let result = match args.kind {
        ClientKind::Connrate => runtime.block_on(connrate(&args)),
        ClientKind::Keepalive => runtime.block_on(keepalive(&args)),
        ClientKind::Pingpong => pingpong(&args)?,
        ClientKind::Idle => return runtime.block_on(idle(&args)),
        ClientKind::TlsFull
        | ClientKind::TlsResumed
        | ClientKind::TlsBulk
        | ClientKind::TlsIdle => match runtime.block_on(super::tls_client::run(&args))? {
            Some(result) => result,
            None => return Ok(()),
        },
    };
    print_json(&result)
}

pub(super) fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{value}")?;
    stdout.flush()?;
    Ok(())
}

/// Latencies in microseconds and failures of one worker or one phase.
#[derive(Default)]
struct Samples {
    latencies_us: Vec<u32>,
    errors: u64,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
    }

    fn full(&self) -> bool {
        self.latencies_us.len() >= MAX_SAMPLES_PER_WORKER
    }

    fn push(&mut self, latency: Duration) {
        self.latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    /// Count, rate over `elapsed`, and latency percentiles.
    fn summary(mut self, elapsed: Duration) -> Value {
        self.latencies_us.sort_unstable();
        let count = self.latencies_us.len();
        json!({
            "count": count,
            "secs": elapsed.as_secs_f64(),
            "rate": count as f64 / elapsed.as_secs_f64(),
            "p50_us": stats::percentile_sorted(&self.latencies_us, 50.0),
            "p99_us": stats::percentile_sorted(&self.latencies_us, 99.0),
            "errors": self.errors,
        })
    }
}

/// Runs `workers` copies of `worker` until `duration` has passed; returns their samples and the
/// wall time until the last one finished.
async fn run_phase<F, Fut>(workers: usize, duration: Duration, worker: F) -> (Samples, Duration)
where
    F: Fn(Instant) -> Fut,
    Fut: Future<Output = Samples> + 'static,
{
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        tasks.spawn_local(worker(deadline));
    }
    let mut samples = Samples::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(worker_samples) => samples.merge(worker_samples),
            Err(error) => {
                eprintln!("client: worker failed: {error}");
                samples.errors += 1;
            }
        }
    }
    (samples, start.elapsed())
}

/// Warm-up phase (discarded), then the measured phase.
async fn warm_then_measure<F, Fut>(args: &ClientArgs, worker: F) -> Value
where
    F: Fn(Instant) -> Fut,
    Fut: Future<Output = Samples> + 'static,
{
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let warmup = Duration::from_secs_f64(args.warmup_secs);
            let (warmup_samples, _) = run_phase(args.connections, warmup, &worker).await;
            let measured = Duration::from_secs_f64(args.secs);
            let (samples, elapsed) = run_phase(args.connections, measured, &worker).await;
            let mut summary = samples.summary(elapsed);
            summary["warmup_count"] = json!(warmup_samples.latencies_us.len());
            summary
        })
        .await
}

async fn connrate(args: &ClientArgs) -> Value {
    let addr = args.addr;
    warm_then_measure(args, move |deadline| connrate_worker(addr, deadline)).await
}

async fn connrate_worker(addr: SocketAddr, deadline: Instant) -> Samples {
    let mut samples = Samples::default();
    while Instant::now() < deadline && !samples.full() {
        match tokio::time::timeout(EXCHANGE_TIMEOUT, short_connection(addr)).await {
            Ok(Ok(latency)) => samples.push(latency),
            Ok(Err(_)) | Err(_) => {
                samples.errors += 1;
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    samples
}

/// Connect, send the request, wait for the first byte of the answer (the latency), read to EOF.
async fn short_connection(addr: SocketAddr) -> std::io::Result<Duration> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(HELLO_REQUEST).await?;
    let mut reply = [0u8; 16];
    let mut filled = stream.read(&mut reply).await?;
    let latency = start.elapsed();
    while filled < reply.len() {
        match stream.read(&mut reply[filled..]).await? {
            0 => break,
            read => filled += read,
        }
    }
    if &reply[..filled] != HELLO_REPLY {
        return Err(std::io::Error::other("unexpected reply"));
    }
    Ok(latency)
}

async fn keepalive(args: &ClientArgs) -> Value {
    let addr = args.addr;
    warm_then_measure(args, move |deadline| keepalive_worker(addr, deadline)).await
}

/// Request/response on one persistent connection; reconnects after an error.
async fn keepalive_worker(addr: SocketAddr, deadline: Instant) -> Samples {
    let mut samples = Samples::default();
    while Instant::now() < deadline && !samples.full() {
        let connection = tokio::time::timeout(EXCHANGE_TIMEOUT, TcpStream::connect(addr)).await;
        let Ok(Ok(mut stream)) = connection else {
            samples.errors += 1;
            tokio::time::sleep(ERROR_PAUSE).await;
            continue;
        };
        if requests(&mut stream, deadline, &mut samples).await.is_err() {
            samples.errors += 1;
        }
    }
    samples
}

async fn requests(
    stream: &mut TcpStream,
    deadline: Instant,
    samples: &mut Samples,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut response = vec![0u8; HTTP_RESPONSE.len()];
    while Instant::now() < deadline && !samples.full() {
        let start = Instant::now();
        let exchange = async {
            stream.write_all(HTTP_REQUEST).await?;
            stream.read_exact(&mut response).await
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await??;
        samples.push(start.elapsed());
    }
    Ok(())
}

/// Blocking 64-byte ping-pong: `warmup` untimed round trips, then `count` timed ones.
fn pingpong(args: &ClientArgs) -> anyhow::Result<Value> {
    let mut stream = std::net::TcpStream::connect_timeout(&args.addr, EXCHANGE_TIMEOUT)
        .with_context(|| format!("connecting to {}", args.addr))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    let ping = [0x5au8; MESSAGE_SIZE];
    let mut pong = [0u8; MESSAGE_SIZE];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rtts_ns = Vec::with_capacity(args.count);
    for round in 0..args.warmup + args.count {
        if Instant::now() > deadline {
            break;
        }
        let start = Instant::now();
        stream.write_all(&ping)?;
        stream.read_exact(&mut pong)?;
        if round >= args.warmup {
            rtts_ns.push(start.elapsed().as_nanos() as f64);
        }
    }
    rtts_ns.sort_by(f64::total_cmp);
    let mean_ns = rtts_ns.iter().sum::<f64>() / rtts_ns.len().max(1) as f64;
    Ok(json!({
        "count": rtts_ns.len(),
        "mean_us": mean_ns / 1000.0,
        "p50_us": stats::percentile_sorted(&rtts_ns, 50.0) / 1000.0,
        "p99_us": stats::percentile_sorted(&rtts_ns, 99.0) / 1000.0,
    }))
}

/// Opens `connections` idle connections, prints how many, holds them until told to close.
async fn idle(args: &ClientArgs) -> anyhow::Result<()> {
    let (streams, failed) = open_idle(args.addr, args.connections, args.exchange).await;
    print_json(&json!({ "opened": streams.len(), "failed": failed }))?;
    tokio::select! {
        () = super::stdin_signal() => {}
        () = tokio::time::sleep(IDLE_HOLD_MAX) => {}
    }
    let closed = streams.len();
    drop(streams);
    print_json(&json!({ "closed": closed }))
}

async fn open_idle(addr: SocketAddr, count: usize, exchange: bool) -> (Vec<TcpStream>, usize) {
    let mut streams = Vec::with_capacity(count);
    let mut failed = 0;
    let mut tasks = JoinSet::new();
    for started in 0..count {
        if started >= IDLE_OPEN_CONCURRENCY {
            collect_one(&mut tasks, &mut streams, &mut failed).await;
        }
        tasks.spawn(tokio::time::timeout(
            EXCHANGE_TIMEOUT,
            open_one(addr, exchange),
        ));
    }
    while !tasks.is_empty() {
        collect_one(&mut tasks, &mut streams, &mut failed).await;
    }
    (streams, failed)
}

type OpenResult = Result<std::io::Result<TcpStream>, tokio::time::error::Elapsed>;

async fn collect_one(
    tasks: &mut JoinSet<OpenResult>,
    streams: &mut Vec<TcpStream>,
    failed: &mut usize,
) {
    match tasks.join_next().await {
        Some(Ok(Ok(Ok(stream)))) => streams.push(stream),
        Some(_) => *failed += 1,
        None => {}
    }
}

/// One connection, optionally after a 64-byte echo exchange (what a watch does before it
/// goes quiet).
async fn open_one(addr: SocketAddr, exchange: bool) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    if exchange {
        let ping = [0x5au8; MESSAGE_SIZE];
        let mut pong = [0u8; MESSAGE_SIZE];
        stream.write_all(&ping).await?;
        stream.read_exact(&mut pong).await?;
    }
    Ok(stream)
}
