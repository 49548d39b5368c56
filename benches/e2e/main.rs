//! End-to-end benchmark: betwixt beside HAProxy and nginx on loopback, measured in one run.
//!
//! `scripts/bench.sh [FLAGS]` or `cargo bench --bench e2e -- [FLAGS]`; BENCHMARKS.md describes
//! each workload. The binary plays two parts:
//! - the orchestrator (no subcommand): starts backends and each balancer in turn, runs the load
//!   generators, reads CPU, memory and descriptors from `/proc`, and prints one table;
//! - a role (`role backend ...`, `role client ...`): a backend server or a load generator, run
//!   as a child process of the orchestrator so that it can be pinned with `taskset` and so that
//!   its CPU never counts as the balancer's.
//!
//! # Layout
//! - `cli`: flags, environment overrides, the [`cli::Plan`] of durations and sizes.
//! - `roles`: the child processes: `backend` (hello, http, echo) and `client` (load generators).
//! - `child`: spawning children, reading their output with timeouts, stopping process trees.
//! - `system`: `/proc` readings (CPU time, RSS, descriptors, listening sockets) and the machine.
//! - `targets`: direct, betwixt (splice, copy), HAProxy and nginx: configs, start and stop.
//! - `workloads`: one module per workload; each records samples into [`report::Results`].
//! - `report`: medians, ratios, goals and the table.
//! - `stats`: median and percentiles.

mod child;
mod cli;
mod report;
mod roles;
mod stats;
mod system;
mod targets;
mod workloads;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let outcome = match cli.role {
        Some(role) => roles::run(role),
        None => workloads::run_all(cli.run),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("e2e: {error:#}");
            ExitCode::FAILURE
        }
    }
}
