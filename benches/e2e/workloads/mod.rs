//! The workloads, and the run that strings them together into one report.
//!
//! Each workload starts its own backend, then for every repetition measures every target in
//! table order. A fresh balancer is started for each measurement, so none inherits another's
//! heap or sockets, and targets are interleaved within a repetition, so a burst of background
//! load lands on all of them rather than on one. A failed measurement is noted in the report and
//! the run goes on.

mod bulk;
mod dns;
mod idle;
mod pingpong;
mod requests;
mod tls;

pub use pingpong::PINNING;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::ValueEnum;

use crate::child::Child;
use crate::cli::{BackendKind, ClientKind, Plan, RunArgs, TargetKind, Workload};
use crate::report::{self, Results};
use crate::system;
use crate::targets::{Endpoint, Launch, Tools};

/// Where the throughput workloads (bulk, connrate, keepalive) run their load generators and
/// backends: one CPU for both, so that the balancer has the other one to itself, as on an LB
/// node, and the numbers vary less than when four busy processes float over two CPUs.
pub const LOAD_CPUS: &str = "0";
/// Where the throughput workloads pin the balancer, all its threads or worker processes.
pub const BALANCER_CPUS: &str = "1";
/// The throughput workloads' layout, for the report.
pub const THROUGHPUT_PINNING: &str =
    "load generators and backends on CPU 0, the balancer (all threads and workers) on CPU 1";

/// How long a backend may take to print its address.
const BACKEND_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The state of one run, handed to each workload.
pub struct Bench {
    pub plan: Plan,
    pub tools: Tools,
    /// Configurations and logs of this run (`target/bench-e2e/run`).
    pub dir: PathBuf,
    /// The selected targets that can run here, in table order.
    pub targets: Vec<TargetKind>,
    pub results: Results,
}

/// A backend role and where it listens.
pub struct Backend {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Bench {
    /// A command for `program`, under `taskset -c CPUS` when `cpus` is given and taskset is here.
    pub fn command(&self, program: impl AsRef<OsStr>, cpus: Option<&str>) -> Command {
        match cpus.filter(|_| self.tools.taskset) {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(cpus).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    /// A child running this binary as `role ARGS...`, pinned to `cpus` when given.
    pub fn role(&self, name: &str, args: &[String], cpus: Option<&str>) -> anyhow::Result<Child> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let mut command = self.command(exe, cpus);
        command.arg("role").args(args);
        let log = self.dir.join(format!("{}.log", name.replace(' ', "-")));
        Child::spawn(name, command, &log)
    }

    /// Starts a backend and reads its address.
    pub fn backend(&self, kind: BackendKind, cpus: Option<&str>) -> anyhow::Result<Backend> {
        let name = format!("{kind:?} backend").to_lowercase();
        let kind_arg = format!("{kind:?}").to_lowercase();
        let mut child = self.role(&name, &["backend".into(), kind_arg], cpus)?;
        let line = child.read_line(BACKEND_START_TIMEOUT)?;
        let addr = line
            .parse()
            .with_context(|| format!("{name} printed {line:?}, not an address"))?;
        Ok(Backend { child, addr })
    }

    /// Starts `target` in front of `backend`.
    pub fn start(
        &self,
        target: TargetKind,
        backend: SocketAddr,
        cpus: Option<&str>,
    ) -> anyhow::Result<Endpoint> {
        let launch = Launch {
            dir: &self.dir,
            backend,
            cpus: cpus.filter(|_| self.tools.taskset),
            workers: self.plan.workers,
            nofile_limit: self.plan.nofile_limit,
        };
        Endpoint::start(target, &self.tools, &launch)
    }

    /// Runs a load generator to completion and returns its JSON result.
    pub fn client(
        &self,
        kind: ClientKind,
        addr: SocketAddr,
        extra: &[String],
        cpus: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        // The name clap parses (`tls-full`), not the variant's (`TlsFull`).
        let kind_arg = kind.to_possible_value().map_or_else(
            || format!("{kind:?}").to_lowercase(),
            |v| v.get_name().to_owned(),
        );
        let name = format!("{kind_arg} client");
        let mut args = vec![
            "client".to_owned(),
            kind_arg,
            "--addr".to_owned(),
            addr.to_string(),
        ];
        args.extend_from_slice(extra);
        let mut child = self.role(&name, &args, cpus)?;
        let result = child.read_json(timeout)?;
        child.wait(Duration::from_secs(10))?;
        Ok(result)
    }

    /// Calls `measure(bench, repetition, target)` for every repetition and each of `targets`.
    pub fn each_measurement(
        &mut self,
        workload: &str,
        targets: &[TargetKind],
        mut measure: impl FnMut(&mut Bench, usize, TargetKind) -> anyhow::Result<()>,
    ) {
        let reps = self.plan.reps;
        for rep in 0..reps {
            for &target in targets {
                eprintln!(
                    "[{workload}] rep {}/{reps} {} (load {})",
                    rep + 1,
                    target.name(),
                    system::load_average()
                );
                if let Err(error) = measure(self, rep, target) {
                    let text = format!("{workload} rep {} {}: {error:#}", rep + 1, target.name());
                    self.results.note(text);
                }
            }
        }
    }
}

/// The whole benchmark: every selected workload on every selected target, then the report.
///
/// # Errors
/// The plan is invalid, or the run directory or report cannot be written.
pub fn run_all(args: RunArgs) -> anyhow::Result<()> {
    let plan = Plan::from_args(args, system::nofile_limit())?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-e2e/run");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tools = Tools::detect(&plan);
    let mut results = Results::default();
    let mut targets = Vec::new();
    for &target in &plan.targets {
        match tools.missing(target) {
            Some(reason) => results.note(format!("{} skipped: {reason}", target.name())),
            None => targets.push(target),
        }
    }
    let mut bench = Bench {
        plan,
        tools,
        dir,
        targets,
        results,
    };
    let load_before = system::load_average();
    let started = Instant::now();
    let mut background = Vec::new();
    for workload in bench.plan.workloads.clone() {
        let cpu_before = (system::busy_cpu_seconds(), system::own_cpu_seconds());
        let workload_started = Instant::now();
        let outcome = match workload {
            Workload::Bulk => bulk::run(&mut bench),
            Workload::Connrate => requests::connrate(&mut bench),
            Workload::Keepalive => requests::keepalive(&mut bench),
            Workload::Pingpong => pingpong::run(&mut bench),
            Workload::Idle => idle::run(&mut bench),
            Workload::Dns => dns::run(&mut bench),
            Workload::Tls => tls::run(&mut bench),
        };
        if let Err(error) = outcome {
            bench.results.note(format!("{workload:?}: {error:#}"));
        }
        let others = (system::busy_cpu_seconds() - cpu_before.0)
            - (system::own_cpu_seconds() - cpu_before.1);
        background.push(report::Background {
            workload,
            others_cpu_seconds: others.max(0.0),
            elapsed: workload_started.elapsed(),
        });
    }
    let run = report::RunInfo {
        load_before,
        load_after: system::load_average(),
        elapsed: started.elapsed(),
        background,
    };
    let document = report::document(&bench.plan, &bench.targets, &bench.results, &run);
    println!("{document}");
    write_outputs(&bench, &document)
}

/// Writes the Markdown report and, beside it, every sample as JSON.
fn write_outputs(bench: &Bench, document: &str) -> anyhow::Result<()> {
    let out = &bench.plan.out;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, document).with_context(|| format!("writing {}", out.display()))?;
    let samples = out.with_extension("json");
    let json = serde_json::to_string_pretty(&bench.results.to_json())?;
    std::fs::write(&samples, json).with_context(|| format!("writing {}", samples.display()))?;
    eprintln!("wrote {} and {}", out.display(), samples.display());
    Ok(())
}
