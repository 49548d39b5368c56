//! The two request-loop workloads, run by the Rust client role against a backend role:
//!
//! - `connrate`: 64 short connections in flight (connect, send a 7-byte request, read the
//!   6-byte reply, see EOF, close) against the `hello` backend, which closes first. Completed
//!   connections per second, and p50/p99 from starting the connect to the reply's first byte.
//! - `keepalive`: 64 persistent connections, each sending a small HTTP/1.1 GET and reading the
//!   `http` backend's fixed 79-byte response, one request at a time. Requests per second and
//!   p50/p99 request latency.
//!
//! Both also report the balancer's CPU time per connection or request (utime + stime of all its
//! threads and processes over the client's run, warm-up included, divided by every connection
//! or request of the run, warm-up included): on a machine too small for the load generators to
//! out-run the balancer, that is the clearer efficiency number. A second, shorter pass on the
//! same balancer counts its system calls and context switches per connection or request.
//!
//! Each runs once per placement (`--cores`): pinned (load generator and backend on CPU 0, the
//! balancer on CPU 1) and shared (nothing pinned).

use super::{BALANCER_CPUS, Bench, LOAD_CPUS};
use crate::cli::{BackendKind, ClientKind, Placement, TargetKind};
use crate::system;

/// Row ids of one request workload in one placement.
struct Metrics {
    rate: &'static str,
    p50: &'static str,
    p99: &'static str,
    cpu: &'static str,
    syscalls: &'static str,
    switches: &'static str,
}

const CONNRATE_PINNED: Metrics = Metrics {
    rate: "conn.rate",
    p50: "conn.p50",
    p99: "conn.p99",
    cpu: "conn.cpu",
    syscalls: "conn.syscalls",
    switches: "conn.switches",
};
const CONNRATE_SHARED: Metrics = Metrics {
    rate: "conn.rate.shared",
    p50: "conn.p50.shared",
    p99: "conn.p99.shared",
    cpu: "conn.cpu.shared",
    syscalls: "conn.syscalls.shared",
    switches: "conn.switches.shared",
};
const KEEPALIVE_PINNED: Metrics = Metrics {
    rate: "ka.rate",
    p50: "ka.p50",
    p99: "ka.p99",
    cpu: "ka.cpu",
    syscalls: "ka.syscalls",
    switches: "ka.switches",
};
const KEEPALIVE_SHARED: Metrics = Metrics {
    rate: "ka.rate.shared",
    p50: "ka.p50.shared",
    p99: "ka.p99.shared",
    cpu: "ka.cpu.shared",
    syscalls: "ka.syscalls.shared",
    switches: "ka.switches.shared",
};

pub fn connrate(bench: &mut Bench) -> anyhow::Result<()> {
    let settings = (bench.plan.connrate_concurrency, bench.plan.connrate_secs);
    for placement in bench.plan.placements.clone() {
        let metrics = match placement {
            Placement::Pinned => &CONNRATE_PINNED,
            Placement::Shared => &CONNRATE_SHARED,
        };
        let workload = format!("connrate, {}", placement.name());
        let kinds = (ClientKind::Connrate, BackendKind::Hello);
        run(bench, &workload, kinds, placement, settings, metrics)?;
    }
    Ok(())
}

pub fn keepalive(bench: &mut Bench) -> anyhow::Result<()> {
    let settings = (bench.plan.keepalive_connections, bench.plan.keepalive_secs);
    for placement in bench.plan.placements.clone() {
        let metrics = match placement {
            Placement::Pinned => &KEEPALIVE_PINNED,
            Placement::Shared => &KEEPALIVE_SHARED,
        };
        let workload = format!("keepalive, {}", placement.name());
        let kinds = (ClientKind::Keepalive, BackendKind::Http);
        run(bench, &workload, kinds, placement, settings, metrics)?;
    }
    Ok(())
}

fn run(
    bench: &mut Bench,
    workload: &str,
    (client, backend): (ClientKind, BackendKind),
    placement: Placement,
    (connections, secs): (usize, f64),
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let load_cpus = placement.cpus(LOAD_CPUS);
    let backend = bench.backend(backend, load_cpus)?;
    let targets = bench.targets.clone();
    bench.each_measurement(workload, &targets, |bench, _, target| {
        let balancer_cpus = placement.cpus(BALANCER_CPUS);
        let mut endpoint = bench.start(target, backend.addr, balancer_cpus)?;
        let args = |secs: f64, warmup_secs: f64| {
            [
                "--connections".to_owned(),
                connections.to_string(),
                "--secs".to_owned(),
                secs.to_string(),
                "--warmup-secs".to_owned(),
                warmup_secs.to_string(),
            ]
        };
        let timeout = bench.plan.client_timeout(secs);
        let pids = endpoint.pids();
        let cpu_before = system::cpu_seconds(&pids);
        let timed = args(secs, bench.plan.warmup_secs);
        let result = bench.client(client, endpoint.addr, &timed, load_cpus, timeout)?;
        let cpu = system::cpu_seconds(&pids) - cpu_before;
        endpoint.ensure_running()?;
        record(
            bench,
            target,
            &result,
            (!pids.is_empty()).then_some(cpu),
            metrics,
        );
        if !pids.is_empty() {
            let counted = args(bench.plan.count_secs, 0.0);
            count(
                bench,
                target,
                &pids,
                (client, endpoint.addr),
                &counted,
                load_cpus,
                metrics,
            )?;
            endpoint.ensure_running()?;
        }
        Ok(())
    });
    Ok(())
}

/// A short untimed pass under `perf stat`: the balancer's system calls and context switches
/// per connection or request.
fn count(
    bench: &mut Bench,
    target: TargetKind,
    pids: &[u32],
    (client, addr): (ClientKind, std::net::SocketAddr),
    args: &[String],
    load_cpus: Option<&str>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let counter = match system::SyscallCounter::start(pids) {
        Ok(counter) => counter,
        Err(error) => {
            bench
                .results
                .note(format!("{} not counted: {error:#}", metrics.syscalls));
            return Ok(());
        }
    };
    let timeout = bench.plan.client_timeout(bench.plan.count_secs);
    let result = bench.client(client, addr, args, load_cpus, timeout)?;
    let operations = ["count", "warmup_count"]
        .iter()
        .map(|key| result[*key].as_f64().unwrap_or(0.0))
        .sum::<f64>();
    match counter.finish() {
        Ok(counts) if operations > 0.0 => {
            let per = |n: u64| n as f64 / operations;
            bench
                .results
                .record(metrics.syscalls, target, per(counts.syscalls));
            bench
                .results
                .record(metrics.switches, target, per(counts.switches));
            eprintln!(
                "  {:.1} system calls, {:.2} context switches each",
                per(counts.syscalls),
                per(counts.switches)
            );
        }
        Ok(_) => bench
            .results
            .note(format!("{}: nothing completed", metrics.syscalls)),
        Err(error) => bench
            .results
            .note(format!("{} not counted: {error:#}", metrics.syscalls)),
    }
    Ok(())
}

/// Records rate, latency percentiles and CPU per operation, and notes failed operations.
fn record(
    bench: &mut Bench,
    target: TargetKind,
    result: &serde_json::Value,
    cpu_seconds: Option<f64>,
    metrics: &Metrics,
) {
    let number = |key: &str| result[key].as_f64().unwrap_or(f64::NAN);
    let count = number("count");
    let all_operations = count + number("warmup_count");
    if count > 0.0 {
        bench.results.record(metrics.rate, target, number("rate"));
        bench.results.record(metrics.p50, target, number("p50_us"));
        bench.results.record(metrics.p99, target, number("p99_us"));
    }
    let mut line = format!(
        "  {}: {:.0}/s, p50 {:.0} µs, p99 {:.0} µs",
        metrics.rate,
        number("rate"),
        number("p50_us"),
        number("p99_us")
    );
    if let Some(cpu) = cpu_seconds.filter(|_| all_operations > 0.0) {
        let micros = cpu * 1e6 / all_operations;
        bench.results.record(metrics.cpu, target, micros);
        line.push_str(&format!(", {micros:.1} CPU µs each"));
    }
    eprintln!("{line}");
    let errors = number("errors");
    if errors > 0.0 {
        let text = format!(
            "{} {}: {errors} failed of {count}",
            metrics.rate,
            target.name()
        );
        bench.results.note(text);
    }
}
