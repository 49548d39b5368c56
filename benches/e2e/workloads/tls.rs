//! TLS termination: betwixt `protocol = "tls"` beside HAProxy `bind ... ssl crt` and nginx
//! `stream` `listen ... ssl`, each terminating and forwarding plain TCP to one `echo` backend.
//!
//! Two certificates, made with `openssl req` in the run directory: ECDSA P-256 and RSA 2048.
//! With each, a fresh balancer measures full handshakes per second (no resumption) and resumed
//! handshakes per second (session tickets on in every target), each connection carrying one
//! byte through to the backend and back; with ECDSA also bulk throughput through one session
//! (the echo of `--mib` MiB, written and read at once). Then a fresh balancer holds
//! [`IDLE_SESSIONS`] handshaken sessions, each after a 64-byte echo, for the memory per idle
//! session. Client and backend run on CPU 0, the balancer on CPU 1. `direct` has no TLS
//! server, and betwixt's forwarding variants do not apply to a terminated stream, so `betwixt`
//! stands for all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{BALANCER_CPUS, Bench, LOAD_CPUS};
use crate::child::Child;
use crate::cli::{BackendKind, ClientKind, TargetKind};
use crate::system;
use crate::targets::NginxStream;

/// Handshakes the client keeps in flight: enough to keep the balancer's CPU busy rather than
/// measure one connection's latency.
const HANDSHAKE_CONCURRENCY: usize = 8;
/// Sessions the idle measurement holds open.
pub const IDLE_SESSIONS: usize = 1_000;
/// How long a balancer may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before reading RSS, so freed buffers and lazily-touched pages have settled.
const SETTLE_PAUSE: Duration = Duration::from_millis(500);
/// Time for the idle client to open its sessions, and to close them.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(20);
/// Below this share of resumed handshakes the resumed rate is noted as suspect.
const MIN_RESUMED_SHARE: f64 = 0.9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Ecdsa,
    Rsa,
}

/// A certificate and key in PEM files, and the two in one file for HAProxy.
struct Certificate {
    kind: KeyKind,
    cert: PathBuf,
    key: PathBuf,
    combined: PathBuf,
}

impl Certificate {
    fn make(dir: &Path, kind: KeyKind) -> anyhow::Result<Certificate> {
        let (name, key_args): (&str, &[&str]) = match kind {
            KeyKind::Ecdsa => (
                "ecdsa",
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
            ),
            KeyKind::Rsa => ("rsa", &["-newkey", "rsa:2048"]),
        };
        let cert = dir.join(format!("tls-{name}.crt"));
        let key = dir.join(format!("tls-{name}.key"));
        let combined = dir.join(format!("tls-{name}.pem"));
        let subject = format!("/CN={}", crate::roles::TLS_SERVER_NAME);
        let san = format!("subjectAltName=DNS:{}", crate::roles::TLS_SERVER_NAME);
        let output = Command::new("openssl")
            .args(["req", "-x509", "-nodes", "-days", "30"])
            .args(key_args)
            .args(["-subj", &subject, "-addext", &san])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("running openssl req")?;
        if !output.status.success() {
            bail!(
                "openssl req ({name}): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let mut pem = std::fs::read(&cert)?;
        pem.extend(std::fs::read(&key)?);
        std::fs::write(&combined, pem)?;
        Ok(Certificate {
            kind,
            cert,
            key,
            combined,
        })
    }

    fn label(&self) -> &'static str {
        match self.kind {
            KeyKind::Ecdsa => "ECDSA",
            KeyKind::Rsa => "RSA",
        }
    }
}

/// A terminating balancer under measurement.
struct Terminator {
    child: Child,
    addr: SocketAddr,
}

impl Terminator {
    fn pids(&self) -> Vec<u32> {
        system::process_tree(self.child.pid())
    }
}

pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    if !system::on_path("openssl") {
        bench
            .results
            .note("tls skipped: openssl is not installed (apt-get install openssl)");
        return Ok(());
    }
    let dir = bench.dir.canonicalize()?;
    let certificates = [
        Certificate::make(&dir, KeyKind::Ecdsa)?,
        Certificate::make(&dir, KeyKind::Rsa)?,
    ];
    let backend = bench.backend(BackendKind::Echo, Some(LOAD_CPUS))?;
    let targets: Vec<TargetKind> = bench
        .targets
        .iter()
        .copied()
        .filter(|t| {
            matches!(
                t,
                TargetKind::Betwixt | TargetKind::Haproxy | TargetKind::Nginx
            )
        })
        .collect();
    bench.each_measurement("tls", &targets, |bench, _, target| {
        for certificate in &certificates {
            let mut balancer = start(bench, target, certificate, backend.addr)?;
            handshakes(bench, &balancer, target, certificate, false)?;
            handshakes(bench, &balancer, target, certificate, true)?;
            if certificate.kind == KeyKind::Ecdsa {
                bulk(bench, &balancer, target, backend.child.pid())?;
            }
            balancer.child.ensure_running()?;
        }
        idle(bench, target, &certificates[0], backend.addr)
    });
    drop(backend);
    Ok(())
}

fn handshakes(
    bench: &mut Bench,
    balancer: &Terminator,
    target: TargetKind,
    certificate: &Certificate,
    resume: bool,
) -> anyhow::Result<()> {
    let secs = bench.plan.connrate_secs;
    let warmup = bench.plan.warmup_secs;
    let kind = if resume {
        ClientKind::TlsResumed
    } else {
        ClientKind::TlsFull
    };
    let args = [
        "--connections".to_owned(),
        HANDSHAKE_CONCURRENCY.to_string(),
        "--secs".to_owned(),
        secs.to_string(),
        "--warmup-secs".to_owned(),
        warmup.to_string(),
    ];
    let pids = balancer.pids();
    let cpu_before = system::cpu_seconds(&pids);
    let result = bench.client(
        kind,
        balancer.addr,
        &args,
        Some(LOAD_CPUS),
        bench.plan.client_timeout(secs),
    )?;
    let cpu = system::cpu_seconds(&pids) - cpu_before;
    let number = |key: &str| result[key].as_f64().with_context(|| format!("no {key}"));
    let (count, rate, errors) = (number("count")?, number("rate")?, number("errors")?);
    let all = count + number("warmup_count")?;
    if count == 0.0 {
        bail!(
            "no {} handshake completed ({errors} errors)",
            certificate.label()
        );
    }
    let (rate_metric, cpu_metric) = match (certificate.kind, resume) {
        (KeyKind::Ecdsa, false) => ("tls.full.ecdsa", "tls.full.ecdsa.cpu"),
        (KeyKind::Rsa, false) => ("tls.full.rsa", "tls.full.rsa.cpu"),
        (KeyKind::Ecdsa, true) => ("tls.resumed.ecdsa", "tls.resumed.ecdsa.cpu"),
        (KeyKind::Rsa, true) => ("tls.resumed.rsa", "tls.resumed.rsa.cpu"),
    };
    let cpu_us = cpu / all * 1e6;
    bench.results.record(rate_metric, target, rate);
    bench.results.record(cpu_metric, target, cpu_us);
    let resumed = number("resumed")? / count;
    eprintln!(
        "  {rate_metric}: {rate:.0}/s, {cpu_us:.0} µs CPU each, {:.0} % resumed, {errors} errors",
        resumed * 100.0
    );
    if resume && resumed < MIN_RESUMED_SHARE {
        bench.results.note(format!(
            "tls {} {}: only {:.0} % of the handshakes resumed",
            target.name(),
            certificate.label(),
            resumed * 100.0
        ));
    }
    if errors > 0.0 {
        bench.results.note(format!(
            "tls {} {rate_metric}: {errors} failed handshakes",
            target.name()
        ));
    }
    Ok(())
}

/// The echo of one session, with the balancer's CPU, CPU 0's (the client's and the echo
/// backend's, which share it and set the rate when the balancer's core has time to spare) and
/// the size of the records the balancer sends.
fn bulk(
    bench: &mut Bench,
    balancer: &Terminator,
    target: TargetKind,
    echo_pid: u32,
) -> anyhow::Result<()> {
    let mib = if bench.plan.quick { 64 } else { 1024 };
    let pids = balancer.pids();
    let cpu_before = system::cpu_seconds(&pids);
    let echo_before = system::cpu_seconds(&[echo_pid]);
    let result = bench.client(
        ClientKind::TlsBulk,
        balancer.addr,
        &["--mib".to_owned(), mib.to_string()],
        Some(LOAD_CPUS),
        Duration::from_secs(150),
    )?;
    let cpu = system::cpu_seconds(&pids) - cpu_before;
    let echo_cpu = system::cpu_seconds(&[echo_pid]) - echo_before;
    let number = |key: &str| result[key].as_f64().with_context(|| format!("no {key}"));
    let (rate, bytes) = (number("mib_per_sec")?, number("bytes")?);
    let (client_cpu, records) = (number("cpu_secs")?, number("records")?);
    let (record_mean, full) = (number("record_mean")?, number("full_records")?);
    let gb = bytes / 1e9;
    let per_gb = cpu / gb;
    let load_per_gb = (client_cpu + echo_cpu) / gb;
    bench.results.record("tls.bulk", target, rate);
    bench.results.record("tls.bulk.cpu", target, per_gb);
    bench.results.record("tls.bulk.cpu0", target, load_per_gb);
    bench.results.record("tls.bulk.record", target, record_mean);
    eprintln!(
        "  tls.bulk: {rate:.0} MiB/s each way, {per_gb:.3} CPU s/GB, CPU 0 {load_per_gb:.3} s/GB \
         (client {:.3}, echo {:.3}), {records:.0} records to the client averaging \
         {record_mean:.0} bytes ({:.0} % full), {}",
        client_cpu / gb,
        echo_cpu / gb,
        full / records.max(1.0) * 100.0,
        result["suite"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// RSS of a fresh balancer before and with [`IDLE_SESSIONS`] idle sessions; "before" is taken
/// after one session has come and gone, so one-time set-up is not charged to sessions.
fn idle(
    bench: &mut Bench,
    target: TargetKind,
    certificate: &Certificate,
    backend: SocketAddr,
) -> anyhow::Result<()> {
    let count = if bench.plan.quick { 100 } else { IDLE_SESSIONS };
    let mut balancer = start(bench, target, certificate, backend)?;
    hold_sessions(bench, &balancer, 1)?.release()?;
    std::thread::sleep(SETTLE_PAUSE);
    let before = system::rss_kib(&balancer.pids());
    let holder = hold_sessions(bench, &balancer, count)?;
    std::thread::sleep(SETTLE_PAUSE);
    let after = system::rss_kib(&balancer.pids());
    balancer.child.ensure_running()?;
    let opened = holder.opened;
    holder.release()?;
    if opened == 0 {
        bail!("no idle TLS session opened");
    }
    if opened < count {
        bench.results.note(format!(
            "tls idle {}: only {opened} of {count} sessions opened",
            target.name()
        ));
    }
    let per_session = (after as f64 - before as f64) / opened as f64;
    bench.results.record("tls.idle.rss", target, per_session);
    eprintln!(
        "  {opened} idle TLS sessions: RSS {before} → {after} KiB ({per_session:.2} KiB each)"
    );
    Ok(())
}

/// An idle client holding its sessions open.
struct Holder {
    child: Child,
    opened: usize,
}

impl Holder {
    fn release(mut self) -> anyhow::Result<()> {
        self.child.send_line("close")?;
        self.child.read_json(CLOSE_TIMEOUT)?;
        self.child.wait(CLOSE_TIMEOUT)?;
        Ok(())
    }
}

fn hold_sessions(bench: &Bench, balancer: &Terminator, count: usize) -> anyhow::Result<Holder> {
    let args = [
        "client".to_owned(),
        "tls-idle".to_owned(),
        "--addr".to_owned(),
        balancer.addr.to_string(),
        "--connections".to_owned(),
        count.to_string(),
    ];
    let mut child = bench.role("tls idle client", &args, Some(LOAD_CPUS))?;
    let opened = child.read_json(OPEN_TIMEOUT)?["opened"]
        .as_u64()
        .context("tls idle client: no count")?;
    Ok(Holder {
        child,
        opened: usize::try_from(opened)?,
    })
}

/// Starts `target` terminating TLS with `certificate` in front of `backend`, on CPU 1.
fn start(
    bench: &Bench,
    target: TargetKind,
    certificate: &Certificate,
    backend: SocketAddr,
) -> anyhow::Result<Terminator> {
    let port = system::free_port()?;
    let dir = bench.dir.canonicalize()?;
    let command = match target {
        TargetKind::Haproxy => haproxy(bench, &dir, port, certificate, backend)?,
        TargetKind::Nginx => nginx(bench, &dir, port, certificate, backend)?,
        _ => betwixt(bench, &dir, port, certificate, backend)?,
    };
    let name = format!("{} (tls)", target.name());
    let log = dir.join(format!("tls-{}.log", target.name()));
    let mut child = Child::spawn(&name, command, &log)?;
    system::wait_for(&format!("{name} to listen"), START_TIMEOUT, || {
        child.ensure_running().is_err() || system::is_listening(port)
    })?;
    child.ensure_running()?;
    Ok(Terminator {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    })
}

fn betwixt(
    bench: &Bench,
    dir: &Path,
    port: u16,
    certificate: &Certificate,
    backend: SocketAddr,
) -> anyhow::Result<Command> {
    let text = format!(
        r#"# betwixt under benchmark: TLS termination, one backend, no checks, warnings only.
[logging]
level = "warn"
output = "stderr"

[defaults]
max_connections = 0
client_idle_timeout = "0"
backend_idle_timeout = "0"
backend_connection_timeout = "2s"

[servers.bench]
bind = "127.0.0.1:{port}"
protocol = "tls"
balance = "roundrobin"

  [servers.bench.tls]
  cert_path = "{cert}"
  key_path = "{key}"
  session_tickets = true

  [servers.bench.discovery]
  kind = "static"
  static_list = ["{backend}"]

  [servers.bench.healthcheck]
  kind = "none"
"#,
        cert = certificate.cert.display(),
        key = certificate.key.display(),
    );
    let config = dir.join("betwixt-tls.toml");
    std::fs::write(&config, text)?;
    let mut command = bench.command(&bench.tools.betwixt, Some(BALANCER_CPUS));
    command
        .arg("-c")
        .arg(config)
        .env("TOKIO_WORKER_THREADS", bench.plan.workers.to_string());
    Ok(command)
}

fn haproxy(
    bench: &Bench,
    dir: &Path,
    port: u16,
    certificate: &Certificate,
    backend: SocketAddr,
) -> anyhow::Result<Command> {
    let text = format!(
        "# HAProxy under benchmark: TLS termination (tickets and session cache by default).
global
    nbthread {workers}
    maxconn {maxconn}

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend bench
    bind 127.0.0.1:{port} ssl crt {pem}
    default_backend servers

backend servers
    server backend1 {backend}
",
        workers = bench.plan.workers,
        maxconn = crate::targets::haproxy_maxconn(bench.plan.nofile_limit),
        pem = certificate.combined.display(),
    );
    let config = dir.join("haproxy-tls.cfg");
    std::fs::write(&config, text)?;
    let mut command = bench.command("haproxy", Some(BALANCER_CPUS));
    command.arg("-db").arg("-f").arg(config);
    Ok(command)
}

fn nginx(
    bench: &Bench,
    dir: &Path,
    port: u16,
    certificate: &Certificate,
    backend: SocketAddr,
) -> anyhow::Result<Command> {
    let load_module = match &bench.tools.nginx_stream {
        Some(NginxStream::Module(path)) => format!("load_module {};", path.display()),
        _ => String::new(),
    };
    let text = format!(
        "# nginx under benchmark: stream TLS termination to one backend, errors only.
{load_module}
worker_processes {workers};
worker_rlimit_nofile {limit};
pid {dir}/nginx-tls.pid;
error_log {dir}/nginx-tls-error.log error;

events {{
    worker_connections {connections};
}}

stream {{
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_session_cache shared:bench:10m;
        ssl_session_tickets on;
        proxy_pass {backend};
        proxy_connect_timeout 5s;
        proxy_timeout 1h;
    }}
}}
",
        dir = dir.display(),
        workers = bench.plan.workers,
        limit = bench.plan.nofile_limit,
        connections = crate::targets::nginx_worker_connections(bench.plan.nofile_limit),
        cert = certificate.cert.display(),
        key = certificate.key.display(),
    );
    let config = dir.join("nginx-tls.conf");
    std::fs::write(&config, text)?;
    let mut command = bench.command("nginx", Some(BALANCER_CPUS));
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(config)
        .arg("-e")
        .arg(dir.join("nginx-tls-error.log"))
        .arg("-g")
        .arg("daemon off;");
    Ok(command)
}
