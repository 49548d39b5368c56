//! Command line: which workloads and targets to run, how long, and the child roles.
//!
//! Every flag of the orchestrator also has an environment variable (`BENCH_QUICK`,
//! `BENCH_WORKLOADS`, `BENCH_TARGETS`, `BENCH_REPS`, `BENCH_WORKERS`, `BENCH_IDLE_CONNS`,
//! `BENCH_CORES`) for
//! runs through `cargo bench`, where flags must follow `--`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// End-to-end benchmark of betwixt beside HAProxy and nginx on loopback.
#[derive(Debug, Parser)]
#[command(name = "e2e")]
pub struct Cli {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(subcommand)]
    pub role: Option<Role>,
}

/// The orchestrator's flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run every workload briefly, once, with few idle connections: checks that the harness
    /// works, numbers are not meaningful.
    #[arg(long)]
    pub quick: bool,
    /// Workloads to run, comma-separated (default all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workloads: Vec<Workload>,
    /// Targets to measure, comma-separated (default all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub targets: Vec<TargetKind>,
    /// Repetitions of each measurement; the table shows the median (default 5, quick 1).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Worker threads or processes of every balancer (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Where connrate, keepalive and pingpong run: `pinned` (each process on its CPU),
    /// `shared` (nothing pinned: balancer, load and backends share the machine) or `both`
    /// (default).
    #[arg(long, value_enum)]
    pub cores: Option<Cores>,
    /// Idle connections to hold open (default: sized to the open-file limit, at most 9000).
    #[arg(long)]
    pub idle_conns: Option<usize>,
    /// Where to write the Markdown table (default target/bench-e2e/results.md).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The betwixt binary (default: the one cargo built for this bench, release profile).
    #[arg(long)]
    pub betwixt: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Workload {
    Bulk,
    Connrate,
    Keepalive,
    Pingpong,
    Idle,
    /// UDP: dnsperf against three dnsmasq backends.
    Dns,
    /// TLS termination: handshakes, bulk and idle sessions, ECDSA and RSA certificates.
    Tls,
}

impl Workload {
    pub const ALL: [Workload; 7] = [
        Workload::Bulk,
        Workload::Connrate,
        Workload::Keepalive,
        Workload::Pingpong,
        Workload::Idle,
        Workload::Dns,
        Workload::Tls,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum TargetKind {
    Direct,
    /// betwixt with its default forwarding (`auto`).
    Betwixt,
    BetwixtSplice,
    BetwixtCopy,
    /// betwixt with `forwarding = "sockmap"`: the kernel moves established sessions' bytes.
    BetwixtSockmap,
    /// betwixt (`auto`) writing an access log file: opt-in (`--targets`), to price the log.
    BetwixtAccessLog,
    Haproxy,
    Nginx,
}

impl TargetKind {
    /// In table order; `direct` first so each repetition has its reference before the others.
    /// `betwixt-access-log` runs only when named.
    pub const ALL: [TargetKind; 7] = [
        TargetKind::Direct,
        TargetKind::Betwixt,
        TargetKind::BetwixtSplice,
        TargetKind::BetwixtCopy,
        TargetKind::BetwixtSockmap,
        TargetKind::Haproxy,
        TargetKind::Nginx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Betwixt => "betwixt",
            TargetKind::BetwixtSplice => "betwixt-splice",
            TargetKind::BetwixtCopy => "betwixt-copy",
            TargetKind::BetwixtSockmap => "betwixt-sockmap",
            TargetKind::BetwixtAccessLog => "betwixt-access-log",
            TargetKind::Haproxy => "haproxy",
            TargetKind::Nginx => "nginx",
        }
    }

    pub fn is_betwixt(self) -> bool {
        matches!(
            self,
            TargetKind::Betwixt
                | TargetKind::BetwixtSplice
                | TargetKind::BetwixtCopy
                | TargetKind::BetwixtSockmap
                | TargetKind::BetwixtAccessLog
        )
    }
}

/// The `--cores` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cores {
    Pinned,
    Shared,
    Both,
}

/// How the per-connection and per-request workloads place their processes on the CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The layout each workload documents (balancer on a core of its own, or all on one).
    Pinned,
    /// Nothing pinned: the balancer, the load generator and the backends share every CPU, as
    /// on a small LB node where nothing is reserved.
    Shared,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Pinned => "pinned",
            Placement::Shared => "shared",
        }
    }

    /// `cpus` when pinned, `None` when the CPUs are shared.
    pub fn cpus(self, cpus: &str) -> Option<&str> {
        match self {
            Placement::Pinned => Some(cpus),
            Placement::Shared => None,
        }
    }
}

/// A child process's part.
#[derive(Debug, Subcommand)]
pub enum Role {
    /// Internal: run a backend server or a load generator (started by the orchestrator).
    #[command(hide = true, subcommand)]
    Role(RoleKind),
}

#[derive(Debug, Subcommand)]
pub enum RoleKind {
    /// A backend on 127.0.0.1: prints its address, serves until stdin closes.
    Backend {
        #[arg(value_enum)]
        kind: BackendKind,
    },
    /// A load generator: prints one JSON line of results.
    Client(ClientArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Reads one short request line, answers `hello`, closes (the connection-rate backend).
    Hello,
    /// Answers every HTTP/1.1 request on a persistent connection with a 13-byte body.
    Http,
    /// Echoes every byte back (ping-pong and idle connections).
    Echo,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    #[arg(value_enum)]
    pub kind: ClientKind,
    /// Where to connect (a balancer or the backend itself).
    #[arg(long)]
    pub addr: std::net::SocketAddr,
    /// Concurrent connections (connrate, keepalive), or connections to open (idle).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Seconds to measure (connrate, keepalive), after `warmup_secs`.
    #[arg(long, default_value_t = 1.0)]
    pub secs: f64,
    #[arg(long, default_value_t = 0.5)]
    pub warmup_secs: f64,
    /// Round trips to time (pingpong), after `warmup` untimed ones.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    #[arg(long, default_value_t = 1_000)]
    pub warmup: usize,
    /// Idle: exchange 64 bytes on each connection before it goes quiet.
    #[arg(long)]
    pub exchange: bool,
    /// MiB the TLS bulk client sends (and reads back from the echo backend).
    #[arg(long, default_value_t = 256)]
    pub mib: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientKind {
    Connrate,
    Keepalive,
    Pingpong,
    Idle,
    TlsFull,
    TlsResumed,
    TlsBulk,
    TlsIdle,
}

/// Durations and sizes of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub workloads: Vec<Workload>,
    pub targets: Vec<TargetKind>,
    pub reps: usize,
    /// Worker threads (betwixt, HAProxy) or processes (nginx).
    pub workers: usize,
    /// The placements connrate, keepalive and pingpong run in, each a full set of measurements.
    pub placements: Vec<Placement>,
    /// Seconds of the extra pass, after each timed connrate or keepalive run, that counts the
    /// balancer's system calls and context switches (counting slows every call a little, so
    /// it is kept out of the timed run).
    pub count_secs: f64,
    pub bulk_secs: u32,
    pub connrate_secs: f64,
    pub connrate_concurrency: usize,
    pub keepalive_secs: f64,
    pub keepalive_connections: usize,
    pub warmup_secs: f64,
    pub pingpong_count: usize,
    pub pingpong_warmup: usize,
    /// Connections held open by the idle workload.
    pub idle_conns: usize,
    /// The per-process open-file limit the idle size was derived from.
    pub nofile_limit: u64,
    pub out: PathBuf,
    pub betwixt: PathBuf,
}

/// Descriptors a balancer keeps for itself beside two per proxied connection: listeners,
/// epoll, logs, and pipes of connections with data in flight.
pub const FD_HEADROOM: u64 = 2_000;
/// The idle workload never opens more than this, even under a larger limit.
pub const MAX_IDLE_CONNS: usize = 9_000;

impl Plan {
    /// Resolves flags, environment variables and defaults.
    ///
    /// # Errors
    /// An environment variable that does not parse, or zero repetitions.
    pub fn from_args(args: RunArgs, nofile_limit: u64) -> anyhow::Result<Plan> {
        let quick = args.quick || env_flag("BENCH_QUICK");
        let workloads = pick(args.workloads, "BENCH_WORKLOADS", &Workload::ALL)?;
        let targets = pick(args.targets, "BENCH_TARGETS", &TargetKind::ALL)?;
        let reps = option_or_env(args.reps, "BENCH_REPS")?.unwrap_or(if quick { 1 } else { 5 });
        if reps == 0 {
            bail!("--reps must be at least 1");
        }
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = option_or_env(args.workers, "BENCH_WORKERS")?.unwrap_or(cpus);
        let placements = match cores(args.cores)? {
            Cores::Pinned => vec![Placement::Pinned],
            Cores::Shared => vec![Placement::Shared],
            Cores::Both => vec![Placement::Pinned, Placement::Shared],
        };
        let by_limit = usize::try_from(nofile_limit.saturating_sub(FD_HEADROOM) / 2)?;
        let idle_default = if quick {
            300
        } else {
            MAX_IDLE_CONNS.min(by_limit)
        };
        let idle_conns = option_or_env(args.idle_conns, "BENCH_IDLE_CONNS")?
            .unwrap_or(idle_default)
            .min(by_limit);
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        Ok(Plan {
            quick,
            workloads,
            targets,
            reps,
            workers,
            placements,
            count_secs: if quick { 0.5 } else { 1.0 },
            bulk_secs: if quick { 1 } else { 3 },
            connrate_secs: if quick { 1.0 } else { 3.0 },
            connrate_concurrency: 64,
            keepalive_secs: if quick { 1.0 } else { 3.0 },
            keepalive_connections: 64,
            warmup_secs: if quick { 0.2 } else { 0.5 },
            pingpong_count: if quick { 2_000 } else { 30_000 },
            pingpong_warmup: if quick { 200 } else { 2_000 },
            idle_conns,
            nofile_limit,
            out: args
                .out
                .unwrap_or_else(|| manifest.join("target/bench-e2e/results.md")),
            betwixt: args
                .betwixt
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_betwixt"))),
        })
    }

    /// Time a load generator may take before it is stopped as hung.
    pub fn client_timeout(&self, secs: f64) -> Duration {
        Duration::from_secs_f64(self.warmup_secs + secs + 30.0)
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| !matches!(value.as_str(), "" | "0" | "false"))
}

/// The `--cores` flag, else `BENCH_CORES`, else both.
fn cores(flag: Option<Cores>) -> anyhow::Result<Cores> {
    if let Some(cores) = flag {
        return Ok(cores);
    }
    match std::env::var("BENCH_CORES") {
        Ok(text) if !text.is_empty() => Cores::from_str(text.trim(), true)
            .map_err(|error| anyhow::anyhow!("BENCH_CORES: {error}")),
        _ => Ok(Cores::Both),
    }
}

fn option_or_env(value: Option<usize>, name: &str) -> anyhow::Result<Option<usize>> {
    if value.is_some() {
        return Ok(value);
    }
    match std::env::var(name) {
        Ok(text) if !text.is_empty() => {
            Ok(Some(text.parse().with_context(|| {
                format!("{name}={text:?} is not a number")
            })?))
        }
        _ => Ok(None),
    }
}

/// The flag's list, else the environment variable's comma-separated names, else all.
fn pick<T: ValueEnum + Copy + Ord>(
    from_flag: Vec<T>,
    env_name: &str,
    all: &[T],
) -> anyhow::Result<Vec<T>> {
    let mut chosen = from_flag;
    if chosen.is_empty() {
        if let Ok(text) = std::env::var(env_name) {
            for name in text
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
            {
                let value = T::from_str(name, true)
                    .map_err(|error| anyhow::anyhow!("{env_name}: {error}"))?;
                chosen.push(value);
            }
        }
    }
    if chosen.is_empty() {
        chosen = all.to_vec();
    }
    chosen.sort();
    chosen.dedup();
    Ok(chosen)
}
