//! New connections per second: a Rust client keeps 64 short connections in flight (connect,
//! send a 7-byte request, read the 6-byte reply, see EOF, close) against the `hello` backend,
//! which closes first. Reports completed connections per second and the p50/p99 time from
//! starting the connect to the reply's first byte.

use super::Bench;
use crate::cli::{BackendKind, ClientKind};

pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let backend = bench.backend(BackendKind::Hello, None)?;
    let targets = bench.targets.clone();
    bench.each_measurement("connrate", &targets, |bench, _, target| {
        let mut endpoint = bench.start(target, backend.addr, None)?;
        let plan = &bench.plan;
        let args = [
            "--connections".to_owned(),
            plan.connrate_concurrency.to_string(),
            "--secs".to_owned(),
            plan.connrate_secs.to_string(),
            "--warmup-secs".to_owned(),
            plan.warmup_secs.to_string(),
        ];
        let timeout = plan.client_timeout(plan.connrate_secs);
        let result = bench.client(ClientKind::Connrate, endpoint.addr, &args, None, timeout)?;
        endpoint.ensure_running()?;
        super::record_requests(
            bench,
            target,
            &result,
            ["conn.rate", "conn.p50", "conn.p99"],
        );
        Ok(())
    });
    Ok(())
}
