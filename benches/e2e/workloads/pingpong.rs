//! Round-trip overhead: 64-byte ping-pong on one connection through each target, against the
//! `echo` backend, with every process pinned so the numbers are stable.
//!
//! Each repetition measures `direct` first; a balancer's added RTT is its mean (or p99) minus
//! direct's from the same repetition.

use super::Bench;
use crate::cli::{BackendKind, ClientKind, TargetKind};

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

pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    if !bench.tools.taskset {
        bench
            .results
            .note("pingpong: taskset is missing, nothing is pinned");
    }
    let backend = bench.backend(BackendKind::Echo, Some(CPU))?;
    let targets = bench.targets.clone();
    let mut direct: Vec<Option<(f64, f64)>> = vec![None; bench.plan.reps];
    bench.each_measurement("pingpong", &targets, |bench, rep, target| {
        let mut endpoint = bench.start(target, backend.addr, Some(CPU))?;
        let plan = &bench.plan;
        let args = [
            "--count".to_owned(),
            plan.pingpong_count.to_string(),
            "--warmup".to_owned(),
            plan.pingpong_warmup.to_string(),
        ];
        let timeout = plan.client_timeout(0.0) * 4;
        let cpus = Some(CPU);
        let result = bench.client(ClientKind::Pingpong, endpoint.addr, &args, cpus, timeout)?;
        endpoint.ensure_running()?;
        let mean = result["mean_us"].as_f64().unwrap_or(f64::NAN);
        let p99 = result["p99_us"].as_f64().unwrap_or(f64::NAN);
        bench.results.record("pp.mean", target, mean);
        bench.results.record("pp.p99", target, p99);
        let mut line = format!("  RTT mean {mean:.1} µs, p99 {p99:.1} µs");
        if target == TargetKind::Direct {
            direct[rep] = Some((mean, p99));
        } else if let Some((direct_mean, direct_p99)) = direct[rep] {
            bench
                .results
                .record("pp.added.mean", target, mean - direct_mean);
            bench
                .results
                .record("pp.added.p99", target, p99 - direct_p99);
            line.push_str(&format!(", added {:.1} µs", mean - direct_mean));
        }
        eprintln!("{line}");
        Ok(())
    });
    Ok(())
}
