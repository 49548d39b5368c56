//! Bulk throughput: iperf3 through each target with 1 and 8 parallel streams, each direction,
//! and the balancer's CPU time per GB moved.
//!
//! The backend is an `iperf3 -s` on 127.0.0.1. CPU is utime + stime of every process of the
//! balancer (all threads, all nginx workers) read from `/proc` before and after the iperf3 run,
//! divided by the bytes the receiving side counted.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::{BALANCER_CPUS, Bench, LOAD_CPUS};
use crate::child::Child;
use crate::system;
use crate::targets::Endpoint;

/// One iperf3 run of the workload.
struct Variant {
    streams: u32,
    /// iperf3 `-R`: the server (backend) sends, the client receives.
    reverse: bool,
    rate_metric: &'static str,
    cpu_metric: &'static str,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        streams: 1,
        reverse: false,
        rate_metric: "bulk1.up",
        cpu_metric: "bulk1.up.cpu",
    },
    Variant {
        streams: 1,
        reverse: true,
        rate_metric: "bulk1.down",
        cpu_metric: "bulk1.down.cpu",
    },
    Variant {
        streams: 8,
        reverse: false,
        rate_metric: "bulk8.up",
        cpu_metric: "bulk8.up.cpu",
    },
    Variant {
        streams: 8,
        reverse: true,
        rate_metric: "bulk8.down",
        cpu_metric: "bulk8.down.cpu",
    },
];

/// Tries when the iperf3 server still reports the previous test as running.
const BUSY_RETRIES: usize = 5;

pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    if !bench.tools.iperf3 {
        bench.results.note("bulk skipped: iperf3 is not installed");
        return Ok(());
    }
    let port = system::free_port()?;
    let mut server = bench.command("iperf3", Some(LOAD_CPUS));
    server.args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()]);
    let mut server = Child::spawn(
        "iperf3 server",
        server,
        &bench.dir.join("iperf3-server.log"),
    )?;
    system::wait_for("iperf3 -s to listen", Duration::from_secs(10), || {
        system::is_listening(port)
    })?;
    server.ensure_running()?;
    let backend = SocketAddr::from(([127, 0, 0, 1], port));
    let targets = bench.targets.clone();
    bench.each_measurement("bulk", &targets, |bench, _, target| {
        let mut endpoint = bench.start(target, backend, Some(BALANCER_CPUS))?;
        for variant in &VARIANTS {
            measure(bench, &mut endpoint, variant)?;
        }
        Ok(())
    });
    Ok(())
}

fn measure(bench: &mut Bench, endpoint: &mut Endpoint, variant: &Variant) -> anyhow::Result<()> {
    let pids = endpoint.pids();
    let cpu_before = system::cpu_seconds(&pids);
    let report = iperf3_client(bench, endpoint.addr, variant)?;
    let cpu = system::cpu_seconds(&pids) - cpu_before;
    endpoint.ensure_running()?;
    let received = &report["end"]["sum_received"];
    let bits_per_second = received["bits_per_second"]
        .as_f64()
        .context("no bits_per_second")?;
    let bytes = received["bytes"].as_f64().context("no bytes")?;
    let gbps = bits_per_second / 1e9;
    bench
        .results
        .record(variant.rate_metric, endpoint.kind, gbps);
    let mut line = format!("  {}: {gbps:.2} Gbit/s", variant.rate_metric);
    if !pids.is_empty() && bytes > 0.0 {
        let seconds_per_gb = cpu / (bytes / 1e9);
        bench
            .results
            .record(variant.cpu_metric, endpoint.kind, seconds_per_gb);
        line.push_str(&format!(", {seconds_per_gb:.3} CPU s/GB"));
    }
    eprintln!("{line}");
    Ok(())
}

/// Runs one iperf3 client (`-J`) and returns its JSON report, retrying while the server is
/// still busy with the previous test.
fn iperf3_client(bench: &Bench, addr: SocketAddr, variant: &Variant) -> anyhow::Result<Value> {
    let secs = bench.plan.bulk_secs;
    let mut last_error = String::new();
    for _ in 0..BUSY_RETRIES {
        let mut command = bench.command("iperf3", Some(LOAD_CPUS));
        command.args(["-c", "127.0.0.1", "-J", "--connect-timeout", "5000"]);
        command.args(["-p", &addr.port().to_string(), "-t", &secs.to_string()]);
        command.args(["-P", &variant.streams.to_string()]);
        if variant.reverse {
            command.arg("-R");
        }
        let log = bench.dir.join("iperf3-client.log");
        let mut client = Child::spawn("iperf3 client", command, &log)?;
        let (text, _) = client.output(Duration::from_secs(u64::from(secs) + 30))?;
        let report: Value = serde_json::from_str(&text).context("iperf3 -J output")?;
        match report["error"].as_str() {
            None => return Ok(report),
            Some(error) if error.contains("busy") => {
                last_error = error.to_owned();
                std::thread::sleep(Duration::from_millis(500));
            }
            Some(error) => bail!("iperf3: {error}"),
        }
    }
    bail!("iperf3: {last_error}")
}
