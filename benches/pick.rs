//! Micro-benchmark of the per-connection pick: each algorithm over 3 and 100 backends.
//!
//! `cargo bench --bench pick`

// A benchmark set-up that cannot build its fixtures has nothing to measure: panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use betwixt::bench::Pool;
use betwixt::bench::{Backend, BackendState};
use betwixt::config::BackendSpec;
use betwixt::config::BalanceKind;
use criterion::{Criterion, criterion_group, criterion_main};

fn pool(kind: BalanceKind, size: usize) -> Pool {
    let backends = (0..size)
        .map(|i| {
            let spec = BackendSpec {
                host: format!("10.0.{}.{}", i / 250, i % 250 + 1),
                port: 6443,
                weight: 1 + (i % 3) as u32,
                priority: 1,
                max_connections: None,
                sni: None,
            };
            Arc::new(Backend::new(spec, Arc::new(BackendState::default())))
        })
        .collect();
    Pool::new(kind, backends)
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for size in [3, 100] {
        for name in BalanceKind::NAMES {
            let kind: BalanceKind = name.parse().expect("known name");
            let pool = pool(kind, size);
            let mut client = 0u32;
            group.bench_function(format!("{name}/{size}"), |b| {
                b.iter(|| {
                    client = client.wrapping_add(1);
                    let ip = IpAddr::from(client.to_be_bytes());
                    let mut attempts = pool.attempts(black_box(ip));
                    black_box(attempts.next_backend().map(|backend| backend.spec.port))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
