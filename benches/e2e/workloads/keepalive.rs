//! Keep-alive requests per second: a Rust client keeps 64 persistent connections, each sending
//! a small HTTP/1.1 GET and reading the backend's fixed 79-byte response, one request at a
//! time. Reports requests per second and p50/p99 request latency.

use super::Bench;
use crate::cli::{BackendKind, ClientKind};

pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let backend = bench.backend(BackendKind::Http, None)?;
    let targets = bench.targets.clone();
    bench.each_measurement("keepalive", &targets, |bench, _, target| {
        let mut endpoint = bench.start(target, backend.addr, None)?;
        let plan = &bench.plan;
        let args = [
            "--connections".to_owned(),
            plan.keepalive_connections.to_string(),
            "--secs".to_owned(),
            plan.keepalive_secs.to_string(),
            "--warmup-secs".to_owned(),
            plan.warmup_secs.to_string(),
        ];
        let timeout = plan.client_timeout(plan.keepalive_secs);
        let result = bench.client(ClientKind::Keepalive, endpoint.addr, &args, None, timeout)?;
        endpoint.ensure_running()?;
        super::record_requests(bench, target, &result, ["ka.rate", "ka.p50", "ka.p99"]);
        Ok(())
    });
    Ok(())
}
