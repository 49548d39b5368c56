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
//! out-run the balancer, that is the clearer efficiency number.

use super::{BALANCER_CPUS, Bench, LOAD_CPUS};
use crate::cli::{BackendKind, ClientKind, TargetKind};
use crate::system;

/// Row ids of one request workload: rate, p50, p99, CPU per operation.
struct Metrics {
    rate: &'static str,
    p50: &'static str,
    p99: &'static str,
    cpu: &'static str,
}

pub fn connrate(bench: &mut Bench) -> anyhow::Result<()> {
    let settings = (bench.plan.connrate_concurrency, bench.plan.connrate_secs);
    let metrics = Metrics {
        rate: "conn.rate",
        p50: "conn.p50",
        p99: "conn.p99",
        cpu: "conn.cpu",
    };
    run(
        bench,
        "connrate",
        ClientKind::Connrate,
        BackendKind::Hello,
        settings,
        &metrics,
    )
}

pub fn keepalive(bench: &mut Bench) -> anyhow::Result<()> {
    let settings = (bench.plan.keepalive_connections, bench.plan.keepalive_secs);
    let metrics = Metrics {
        rate: "ka.rate",
        p50: "ka.p50",
        p99: "ka.p99",
        cpu: "ka.cpu",
    };
    run(
        bench,
        "keepalive",
        ClientKind::Keepalive,
        BackendKind::Http,
        settings,
        &metrics,
    )
}

fn run(
    bench: &mut Bench,
    workload: &str,
    client: ClientKind,
    backend: BackendKind,
    (connections, secs): (usize, f64),
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let backend = bench.backend(backend, Some(LOAD_CPUS))?;
    let targets = bench.targets.clone();
    bench.each_measurement(workload, &targets, |bench, _, target| {
        let mut endpoint = bench.start(target, backend.addr, Some(BALANCER_CPUS))?;
        let args = [
            "--connections".to_owned(),
            connections.to_string(),
            "--secs".to_owned(),
            secs.to_string(),
            "--warmup-secs".to_owned(),
            bench.plan.warmup_secs.to_string(),
        ];
        let timeout = bench.plan.client_timeout(secs);
        let pids = endpoint.pids();
        let cpu_before = system::cpu_seconds(&pids);
        let result = bench.client(client, endpoint.addr, &args, Some(LOAD_CPUS), timeout)?;
        let cpu = system::cpu_seconds(&pids) - cpu_before;
        endpoint.ensure_running()?;
        record(
            bench,
            target,
            &result,
            (!pids.is_empty()).then_some(cpu),
            metrics,
        );
        Ok(())
    });
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
