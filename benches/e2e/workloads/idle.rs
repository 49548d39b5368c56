//! Memory and descriptors per idle connection: open N established connections through the
//! balancer to the `echo` backend, and compare the balancer's RSS (VmRSS, summed over all its
//! processes) and open descriptors before and after.
//!
//! Two variants, each with a fresh balancer: `silent` connections never send a byte; `watch`
//! connections first exchange 64 bytes each way, as a real watch does, so a balancer that keeps
//! buffers or pipes per direction after traffic shows it here. "Before" is taken after one
//! warm-up connection has come and gone, so one-time set-up is not charged to connections.
//! `direct` has no balancer and is skipped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{Backend, Bench};
use crate::cli::{BackendKind, TargetKind};
use crate::system;
use crate::targets::Endpoint;

/// Time allowed to open all connections, and then for the balancer to connect them all.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause before reading RSS, so freed buffers and lazily-touched pages have settled.
const SETTLE_PAUSE: Duration = Duration::from_millis(500);
/// Descriptors a balancer may keep above its starting count after every client left.
const LEFTOVER_FDS: usize = 16;

pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let mut backend = bench.backend(BackendKind::Echo, None)?;
    let backend_pid = [backend.child.pid()];
    let backend_base_fds = system::open_fds(&backend_pid);
    let targets: Vec<TargetKind> = bench
        .targets
        .iter()
        .copied()
        .filter(|&t| t != TargetKind::Direct)
        .collect();
    bench.each_measurement("idle", &targets, |bench, _, target| {
        for exchange in [false, true] {
            wait_backend_idle(&backend, backend_base_fds)?;
            measure(bench, &mut backend, backend_base_fds, target, exchange)?;
        }
        Ok(())
    });
    Ok(())
}

/// Waits until the previous measurement's connections have left the backend.
fn wait_backend_idle(backend: &Backend, base_fds: usize) -> anyhow::Result<()> {
    let pid = [backend.child.pid()];
    system::wait_for(
        "the backend to close old connections",
        SETTLE_TIMEOUT,
        || system::open_fds(&pid) <= base_fds + LEFTOVER_FDS,
    )
}

/// Resources of the balancer's processes at one moment.
struct Usage {
    rss_kib: u64,
    fds: usize,
}

fn usage(endpoint: &Endpoint) -> Usage {
    let pids = endpoint.pids();
    Usage {
        rss_kib: system::rss_kib(&pids),
        fds: system::open_fds(&pids),
    }
}

fn measure(
    bench: &mut Bench,
    backend: &mut Backend,
    backend_base_fds: usize,
    target: TargetKind,
    exchange: bool,
) -> anyhow::Result<()> {
    let mut endpoint = bench.start(target, backend.addr, None)?;
    warm_up(&endpoint)?;
    std::thread::sleep(SETTLE_PAUSE);
    let before = usage(&endpoint);
    let mut client = open_idle(bench, &endpoint, exchange)?;
    let opened = client.read_json(OPEN_TIMEOUT)?["opened"]
        .as_u64()
        .context("idle client: no count")?;
    let opened = usize::try_from(opened)?;
    if opened < bench.plan.idle_conns {
        bench.results.note(format!(
            "idle {}: only {opened} of {} connections opened",
            target.name(),
            bench.plan.idle_conns
        ));
    }
    let backend_pid = [backend.child.pid()];
    system::wait_for(
        "the balancer to connect every client",
        SETTLE_TIMEOUT,
        || system::open_fds(&backend_pid) >= backend_base_fds + opened,
    )?;
    wait_stable(&endpoint);
    std::thread::sleep(SETTLE_PAUSE);
    let after = usage(&endpoint);
    endpoint.ensure_running()?;
    client.send_line("close")?;
    client.read_json(SETTLE_TIMEOUT)?;
    client.wait(SETTLE_TIMEOUT)?;
    record(bench, target, exchange, opened, &before, &after);
    check_released(bench, &endpoint, target, before.fds);
    Ok(())
}

fn open_idle(
    bench: &Bench,
    endpoint: &Endpoint,
    exchange: bool,
) -> anyhow::Result<crate::child::Child> {
    let mut args = vec![
        "client".to_owned(),
        "idle".to_owned(),
        "--addr".to_owned(),
        endpoint.addr.to_string(),
        "--connections".to_owned(),
        bench.plan.idle_conns.to_string(),
    ];
    if exchange {
        args.push("--exchange".to_owned());
    }
    bench.role("idle client", &args, None)
}

/// One connection through the balancer with a 64-byte exchange, then closed.
fn warm_up(endpoint: &Endpoint) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&endpoint.addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let ping = [0x5au8; 64];
    let mut pong = [0u8; 64];
    stream.write_all(&ping)?;
    stream.read_exact(&mut pong)?;
    if pong != ping {
        bail!("warm-up: the echo came back different");
    }
    Ok(())
}

/// Waits (at most [`SETTLE_TIMEOUT`]) until the balancer's descriptor count stops changing.
fn wait_stable(endpoint: &Endpoint) {
    let mut last = usage(endpoint).fds;
    let stable = system::wait_for("descriptors to settle", SETTLE_TIMEOUT, || {
        std::thread::sleep(Duration::from_millis(200));
        let now = usage(endpoint).fds;
        std::mem::replace(&mut last, now) == now
    });
    if let Err(error) = stable {
        eprintln!("  {error:#}");
    }
}

fn record(
    bench: &mut Bench,
    target: TargetKind,
    exchange: bool,
    opened: usize,
    before: &Usage,
    after: &Usage,
) {
    if opened == 0 {
        return;
    }
    let (rss_metric, fds_metric) = if exchange {
        ("watch.rss", "watch.fds")
    } else {
        ("idle.rss", "idle.fds")
    };
    let kib = (after.rss_kib as f64 - before.rss_kib as f64) / opened as f64;
    let fds = (after.fds as f64 - before.fds as f64) / opened as f64;
    bench.results.record(rss_metric, target, kib);
    bench.results.record(fds_metric, target, fds);
    eprintln!(
        "  {opened} {} connections: RSS {} → {} KiB ({kib:.2} KiB/conn), fds {} → {} \
         ({fds:.2}/conn)",
        if exchange { "watch" } else { "silent" },
        before.rss_kib,
        after.rss_kib,
        before.fds,
        after.fds
    );
}

/// Notes a balancer that keeps descriptors after every client has closed.
fn check_released(bench: &mut Bench, endpoint: &Endpoint, target: TargetKind, before: usize) {
    let released = system::wait_for("descriptors to be released", SETTLE_TIMEOUT, || {
        usage(endpoint).fds <= before + LEFTOVER_FDS
    });
    if released.is_err() {
        let now = usage(endpoint).fds;
        bench.results.note(format!(
            "idle {}: {now} descriptors open after all clients closed ({before} before)",
            target.name()
        ));
    }
}
