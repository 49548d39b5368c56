//! betwixt embedded in another program: a balancer built with the typed config builder,
//! running on this program's tokio runtime, its report printed every few seconds, and a
//! graceful stop on Ctrl-C.
//!
//! ```text
//! cargo run --example embedded -- 127.0.0.1:6443 10.0.0.11:6443 10.0.0.12:6443
//! ```
//! The first address is where the balancer listens; the rest are the backends.

use std::time::Duration;

use betwixt::LoadBalancer;
use betwixt::config::{BalanceKind, Builder, ServerBuilder};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), backends) = (args.next(), args.collect::<Vec<_>>()) else {
        eprintln!("usage: embedded LISTEN BACKEND...");
        std::process::exit(2);
    };
    let config = Builder::new()
        .server(
            "api",
            ServerBuilder::new(listen)
                .balance(BalanceKind::LeastConn)
                .backends(backends)
                .connect_timeout(Duration::from_secs(2))
                .ping_check(Duration::from_secs(2)),
        )
        .build()?;
    let balancer = LoadBalancer::start(config).await?;
    println!("listening on {:?}", balancer.local_addr("api"));

    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                for server in balancer.report().servers {
                    for backend in &server.backends {
                        println!(
                            "{} {} {} active {} total {}",
                            server.name, backend.target, backend.health, backend.active, backend.total
                        );
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let summary = balancer.stop(Duration::from_secs(10)).await;
    println!(
        "stopped; {} sessions closed by force",
        summary.closed_by_force
    );
    Ok(())
}
