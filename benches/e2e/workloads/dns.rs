//! UDP: dnsperf against three dnsmasq backends, directly (one dnsmasq), through nginx's
//! `stream` UDP proxy (`proxy_responses 1`) and through betwixt (`max_responses = 1`).
//!
//! For each target the offered rate climbs by a quarter per step until more than 0.1 % of
//! the queries are lost or the achieved rate falls short of the offered one; the best step
//! gives the queries per second and the balancer's CPU per 100k queries, and a verbose run at
//! that rate gives the p99 latency. HAProxy's community edition has no UDP proxy; the betwixt
//! forwarding variants (splice, copy) do not apply to datagrams, so `betwixt` stands for all.
//! Load generator and backends run on CPU 0, the balancer on CPU 1.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::{BALANCER_CPUS, Bench, LOAD_CPUS};
use crate::child::Child;
use crate::cli::TargetKind;
use crate::system;
use crate::targets::NginxStream;

/// Simultaneous clients (source ports) dnsperf uses: sessions spread over the backends.
const CLIENTS: &str = "16";
/// Queries dnsperf keeps in flight.
const OUTSTANDING: &str = "500";
/// The lowest offered rate, and the factor between steps.
const FIRST_RATE: f64 = 10_000.0;
const STEP: f64 = 1.25;
const MAX_STEPS: usize = 14;
/// Loss allowed at a rate that counts.
const MAX_LOSS: f64 = 0.001;
/// A rate every target sustains (nginx peaks near 15.6k q/s here), so that CPU and system
/// calls per query compare the same work rather than each target's own saturation.
const COMMON_RATE: f64 = 12_000.0;

pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    for tool in ["dnsperf", "dnsmasq"] {
        if !system::on_path(tool) {
            bench.results.note(format!(
                "dns skipped: {tool} is not installed (apt-get install dnsperf dnsmasq-base)"
            ));
            return Ok(());
        }
    }
    let queries = bench.dir.join("dns-queries.txt");
    std::fs::write(&queries, "m1.test A\n".repeat(1000))?;
    let mut backends = Vec::new();
    let mut addrs = Vec::new();
    for index in 1..=3 {
        let (child, addr) = dnsmasq(bench, index)?;
        backends.push(child);
        addrs.push(addr);
    }
    let targets: Vec<TargetKind> = bench
        .targets
        .iter()
        .copied()
        .filter(|t| {
            matches!(
                t,
                TargetKind::Direct | TargetKind::Betwixt | TargetKind::Nginx
            )
        })
        .collect();
    let seconds = if bench.plan.quick { 2 } else { 4 };
    bench.each_measurement("dns", &targets, |bench, _rep, target| {
        let mut balancer = start(bench, target, &addrs)?;
        let addr = match &balancer {
            None => addrs[0],
            Some((_, addr)) => *addr,
        };
        wait_for_answers(addr)?;
        let pids = balancer
            .as_ref()
            .map(|(child, _)| system::process_tree(child.pid()))
            .unwrap_or_default();
        let mut best: Option<Step> = None;
        let mut rate = FIRST_RATE;
        for _ in 0..MAX_STEPS {
            let cpu_before = system::cpu_seconds(&pids);
            let step = dnsperf(bench, &queries, addr, rate, seconds, false)?;
            let cpu = system::cpu_seconds(&pids) - cpu_before;
            let good = step.lost_fraction() <= MAX_LOSS && step.qps >= 0.95 * rate;
            eprintln!(
                "  offered {rate:.0} q/s: {:.0} q/s, lost {:.3} %{}",
                step.qps,
                step.lost_fraction() * 100.0,
                if good { "" } else { " (past the limit)" }
            );
            if !good {
                break;
            }
            best = Some(Step { cpu, ..step });
            rate *= STEP;
        }
        if let Some((child, _)) = balancer.as_mut() {
            child.ensure_running()?;
        }
        let Some(best) = best else {
            bail!("even {FIRST_RATE} q/s lost more than 0.1 %");
        };
        let latency = dnsperf(bench, &queries, addr, best.qps, seconds, true)?;
        if target != TargetKind::Direct {
            let counter = system::SyscallCounter::start(&pids);
            let cpu_before = system::cpu_seconds(&pids);
            let common = dnsperf(bench, &queries, addr, COMMON_RATE, seconds, false)?;
            let cpu = system::cpu_seconds(&pids) - cpu_before;
            let completed = common.completed.max(1.0);
            bench
                .results
                .record("dns.cpu_common", target, cpu / completed * 100_000.0);
            match counter.and_then(|counter| counter.finish()) {
                Ok(counts) => {
                    let calls = counts.syscalls as f64;
                    bench
                        .results
                        .record("dns.syscalls", target, calls / completed);
                }
                Err(error) => bench
                    .results
                    .note(format!("dns system calls not counted: {error:#}")),
            }
        }
        bench.results.record("dns.qps", target, best.qps);
        bench.results.record("dns.p99", target, latency.p99_us);
        if target != TargetKind::Direct {
            let per_100k = best.cpu / best.completed.max(1.0) * 100_000.0;
            bench.results.record("dns.cpu", target, per_100k);
        }
        eprintln!("  best {:.0} q/s, p99 {:.0} µs", best.qps, latency.p99_us);
        Ok(())
    });
    drop(backends);
    Ok(())
}

/// One dnsperf run.
#[derive(Debug, Clone, Copy, Default)]
struct Step {
    sent: f64,
    completed: f64,
    qps: f64,
    p99_us: f64,
    /// Balancer CPU seconds during the run.
    cpu: f64,
}

impl Step {
    fn lost_fraction(&self) -> f64 {
        if self.sent > 0.0 {
            1.0 - self.completed / self.sent
        } else {
            1.0
        }
    }
}

fn dnsmasq(bench: &Bench, index: usize) -> anyhow::Result<(Child, SocketAddr)> {
    let port = free_udp_port()?;
    let mut command = bench.command("dnsmasq", Some(LOAD_CPUS));
    command.args([
        "-k",
        "--conf-file=/dev/null",
        &format!("--port={port}"),
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--pid-file=",
        &format!("--host-record=m1.test,10.0.0.{index}"),
    ]);
    let name = format!("dnsmasq {index}");
    let log = bench.dir.join(format!("dnsmasq-{index}.log"));
    let child = Child::spawn(&name, command, &log)?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_for_answers(addr)?;
    Ok((child, addr))
}

/// Starts `target` in front of the three backends; `None` for a direct run.
fn start(
    bench: &Bench,
    target: TargetKind,
    backends: &[SocketAddr],
) -> anyhow::Result<Option<(Child, SocketAddr)>> {
    let port = free_udp_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let dir = bench.dir.canonicalize()?;
    let command = match target {
        TargetKind::Direct => return Ok(None),
        TargetKind::Nginx => nginx(bench, &dir, port, backends)?,
        _ => betwixt(bench, &dir, port, backends)?,
    };
    let log = dir.join(format!("dns-{}.log", target.name()));
    let child = Child::spawn(&format!("{} (dns)", target.name()), command, &log)?;
    Ok(Some((child, addr)))
}

fn betwixt(
    bench: &Bench,
    dir: &Path,
    port: u16,
    backends: &[SocketAddr],
) -> anyhow::Result<Command> {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!(
        "[logging]\nlevel = \"warn\"\n\n[servers.dns]\nbind = \"127.0.0.1:{port}\"\n\
         protocol = \"udp\"\nbalance = \"roundrobin\"\n\n[servers.dns.udp]\nmax_responses = 1\n\n\
         [servers.dns.discovery]\nkind = \"static\"\nstatic_list = [{}]\n",
        list.join(", ")
    );
    let config = dir.join("betwixt-dns.toml");
    std::fs::write(&config, text)?;
    let mut command = bench.command(&bench.tools.betwixt, Some(BALANCER_CPUS));
    command
        .arg("-c")
        .arg(config)
        .env("TOKIO_WORKER_THREADS", bench.plan.workers.to_string());
    Ok(command)
}

fn nginx(bench: &Bench, dir: &Path, port: u16, backends: &[SocketAddr]) -> anyhow::Result<Command> {
    let load_module = match &bench.tools.nginx_stream {
        Some(NginxStream::Module(path)) => format!("load_module {};", path.display()),
        _ => String::new(),
    };
    let servers: String = backends
        .iter()
        .map(|addr| format!("        server {addr};\n"))
        .collect();
    let text = format!(
        "# nginx under benchmark: stream UDP proxy to three DNS backends, errors only.
{load_module}
worker_processes {workers};
pid {dir}/nginx-dns.pid;
error_log {dir}/nginx-dns-error.log error;

events {{
    worker_connections 16384;
}}

stream {{
    upstream dns {{
{servers}    }}
    server {{
        listen 127.0.0.1:{port} udp reuseport;
        proxy_pass dns;
        proxy_responses 1;
        proxy_timeout 5s;
    }}
}}
",
        dir = dir.display(),
        workers = bench.plan.workers,
    );
    let config = dir.join("nginx-dns.conf");
    std::fs::write(&config, text)?;
    let mut command = bench.command("nginx", Some(BALANCER_CPUS));
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(config)
        .arg("-e")
        .arg(dir.join("nginx-dns-error.log"))
        .arg("-g")
        .arg("daemon off;");
    Ok(command)
}

/// Runs dnsperf at `rate` for `seconds`; with `verbose`, also the p99 of its per-query
/// latencies.
fn dnsperf(
    bench: &Bench,
    queries: &PathBuf,
    addr: SocketAddr,
    rate: f64,
    seconds: u32,
    verbose: bool,
) -> anyhow::Result<Step> {
    let mut command = bench.command("dnsperf", Some(LOAD_CPUS));
    command
        .args(["-s", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .arg("-d")
        .arg(queries)
        .args(["-c", CLIENTS, "-q", OUTSTANDING, "-t", "1"])
        .args(["-l", &seconds.to_string(), "-Q", &format!("{rate:.0}")]);
    if verbose {
        command.arg("-v");
    }
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let number = |label: &str| -> anyhow::Result<f64> {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("dnsperf printed no {label:?}"))
    };
    let mut step = Step {
        sent: number("Queries sent:")?,
        completed: number("Queries completed:")?,
        qps: number("Queries per second:")?,
        ..Step::default()
    };
    if verbose {
        let mut latencies: Vec<f64> = text
            .lines()
            .filter(|line| line.starts_with("> "))
            .filter_map(|line| line.split_whitespace().last()?.parse().ok())
            .collect();
        latencies.sort_by(f64::total_cmp);
        step.p99_us = crate::stats::percentile_sorted(&latencies, 99.0) * 1e6;
    }
    Ok(step)
}

/// A UDP port nothing is bound to on 127.0.0.1.
fn free_udp_port() -> anyhow::Result<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port")?;
    Ok(socket.local_addr()?.port())
}

/// Waits until `addr` answers a DNS query.
fn wait_for_answers(addr: SocketAddr) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let query = [
        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, b'm', b'1', 4, b't', b'e', b's', b't', 0, 0,
        1, 0, 1,
    ];
    system::wait_for(
        &format!("{addr} to answer DNS"),
        Duration::from_secs(10),
        || {
            let mut buffer = [0; 512];
            socket.send_to(&query, addr).is_ok() && socket.recv(&mut buffer).is_ok()
        },
    )
}
