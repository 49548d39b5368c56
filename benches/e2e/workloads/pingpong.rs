//! Round-trip overhead: 64-byte ping-pong on one connection through each target, against the
//! `echo` backend, with every process pinned to one CPU so the numbers are stable, and again with
//! nothing pinned (`--cores`). Both also give the balancer's CPU time per round trip.
//!
//! Each repetition measures `direct` first; a balancer's added RTT is its mean (or p99) minus
//! direct's from the same repetition.

use super::Bench;
use crate::cli::{BackendKind, ClientKind, Placement, TargetKind};
use crate::system;

/// Where each process runs, for the report.
///
/// All on one CPU: on this kind of machine (a 2-vCPU VM) waking a process on the other, idle
/// vCPU costs tens of microseconds, which swamped every balancer's own cost alike (round trips
/// of 128-147 µs for betwixt, HAProxy and nginx against 32-33 µs on one CPU, and a p99 of
/// milliseconds while other processes ran). On one CPU each hop is a context switch, so the
/// time a balancer adds is its own work: wake-ups, system calls, scheduling. A 1-vCPU LB node
/// runs that way too.
pub const PINNING: &str = "client, echo backend and balancer (all threads and workers) on CPU 0";
const CPU: &str = "0";

/// Row ids in one placement.
struct Metrics {
    mean: &'static str,
    p99: &'static str,
    added_mean: &'static str,
    added_p99: &'static str,
    cpu: &'static str,
}

const PINNED: Metrics = Metrics {
    mean: "pp.mean",
    p99: "pp.p99",
    added_mean: "pp.added.mean",
    added_p99: "pp.added.p99",
    cpu: "pp.cpu",
};
const SHARED: Metrics = Metrics {
    mean: "pp.mean.shared",
    p99: "pp.p99.shared",
    added_mean: "pp.added.mean.shared",
    added_p99: "pp.added.p99.shared",
    cpu: "pp.cpu.shared",
};

pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    if !bench.tools.taskset {
        bench
            .results
            .note("pingpong: taskset is missing, nothing is pinned");
    }
    for placement in bench.plan.placements.clone() {
        let metrics = match placement {
            Placement::Pinned => &PINNED,
            Placement::Shared => &SHARED,
        };
        run_placed(bench, placement, metrics)?;
    }
    Ok(())
}

fn run_placed(bench: &mut Bench, placement: Placement, metrics: &Metrics) -> anyhow::Result<()> {
    let cpus = placement.cpus(CPU);
    let backend = bench.backend(BackendKind::Echo, cpus)?;
    let targets = bench.targets.clone();
    let mut direct: Vec<Option<(f64, f64)>> = vec![None; bench.plan.reps];
    let workload = format!("pingpong, {}", placement.name());
    bench.each_measurement(&workload, &targets, |bench, rep, target| {
        let mut endpoint = bench.start(target, backend.addr, cpus)?;
        let plan = &bench.plan;
        let args = [
            "--count".to_owned(),
            plan.pingpong_count.to_string(),
            "--warmup".to_owned(),
            plan.pingpong_warmup.to_string(),
        ];
        let round_trips = (plan.pingpong_count + plan.pingpong_warmup) as f64;
        let timeout = plan.client_timeout(0.0) * 4;
        let pids = endpoint.pids();
        let cpu_before = system::cpu_seconds(&pids);
        let result = bench.client(ClientKind::Pingpong, endpoint.addr, &args, cpus, timeout)?;
        let cpu = system::cpu_seconds(&pids) - cpu_before;
        endpoint.ensure_running()?;
        let mean = result["mean_us"].as_f64().unwrap_or(f64::NAN);
        let p99 = result["p99_us"].as_f64().unwrap_or(f64::NAN);
        bench.results.record(metrics.mean, target, mean);
        bench.results.record(metrics.p99, target, p99);
        let mut line = format!("  RTT mean {mean:.1} µs, p99 {p99:.1} µs");
        if !pids.is_empty() {
            let micros = cpu * 1e6 / round_trips;
            bench.results.record(metrics.cpu, target, micros);
            line.push_str(&format!(", {micros:.1} CPU µs each"));
        }
        if target == TargetKind::Direct {
            direct[rep] = Some((mean, p99));
        } else if let Some((direct_mean, direct_p99)) = direct[rep] {
            bench
                .results
                .record(metrics.added_mean, target, mean - direct_mean);
            bench
                .results
                .record(metrics.added_p99, target, p99 - direct_p99);
            line.push_str(&format!(", added {:.1} µs", mean - direct_mean));
        }
        eprintln!("{line}");
        Ok(())
    });
    Ok(())
}
