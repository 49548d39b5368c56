//! Samples, medians, ratios, goals, and the one table every run prints.
//!
//! Each metric row shows every target's median over the repetitions, with its ratio to the
//! direct connection (`×d`) and to HAProxy (`×h`). Whether a ratio above 1 is good depends on
//! the row's "better" column: ↑ higher is better (throughput, rates), ↓ lower is better
//! (latency, CPU, memory, descriptors). The last columns check betwixt's goals.

use std::collections::HashMap;
use std::fmt::Write;

use crate::cli::{Plan, TargetKind, Workload};
use crate::stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// What betwixt must reach on a metric.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// At least this many times HAProxy's value.
    HaproxyAtLeast(f64),
    /// At most this many times HAProxy's value.
    HaproxyAtMost(f64),
    /// At least this many times nginx's value (UDP, where HAProxy has nothing to compare).
    NginxAtLeast(f64),
    /// At most this many times nginx's value.
    NginxAtMost(f64),
    /// At most this value, in the metric's unit.
    AtMost(f64),
}

pub struct Metric {
    pub id: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub better: Better,
    pub decimals: usize,
    pub goal: Option<Goal>,
}

const fn metric(
    id: &'static str,
    label: &'static str,
    unit: &'static str,
    better: Better,
    decimals: usize,
    goal: Option<Goal>,
) -> Metric {
    Metric {
        id,
        label,
        unit,
        better,
        decimals,
        goal,
    }
}

use Better::{Higher, Lower};
use Goal::{AtMost, HaproxyAtLeast, HaproxyAtMost, NginxAtLeast, NginxAtMost};

/// Every row of the table, in order.
#[rustfmt::skip]
pub const METRICS: &[Metric] = &[
    metric("bulk1.up",       "bulk 1 stream →",                    "Gbit/s",   Higher, 2, Some(HaproxyAtLeast(1.25))),
    metric("bulk1.down",     "bulk 1 stream ← (-R)",               "Gbit/s",   Higher, 2, Some(HaproxyAtLeast(1.25))),
    metric("bulk8.up",       "bulk 8 streams →",                   "Gbit/s",   Higher, 2, Some(HaproxyAtLeast(1.1))),
    metric("bulk8.down",     "bulk 8 streams ← (-R)",              "Gbit/s",   Higher, 2, Some(HaproxyAtLeast(1.1))),
    metric("bulk1.up.cpu",   "balancer CPU, 1 stream →",           "s/GB",     Lower,  3, Some(HaproxyAtMost(0.8))),
    metric("bulk1.down.cpu", "balancer CPU, 1 stream ←",           "s/GB",     Lower,  3, Some(HaproxyAtMost(0.8))),
    metric("bulk8.up.cpu",   "balancer CPU, 8 streams →",          "s/GB",     Lower,  3, Some(HaproxyAtMost(0.8))),
    metric("bulk8.down.cpu", "balancer CPU, 8 streams ←",          "s/GB",     Lower,  3, Some(HaproxyAtMost(0.8))),
    metric("conn.rate",      "new connections",                    "conn/s",   Higher, 0, Some(HaproxyAtLeast(1.1))),
    metric("conn.p50",       "connect+first byte p50",             "µs",       Lower,  0, None),
    metric("conn.p99",       "connect+first byte p99",             "µs",       Lower,  0, None),
    metric("conn.cpu",       "balancer CPU per connection",        "µs",       Lower,  1, Some(HaproxyAtMost(0.85))),
    metric("conn.syscalls",  "balancer system calls per connection", "calls",  Lower,  1, None),
    metric("conn.switches",  "balancer context switches per connection", "switches", Lower, 2, None),
    metric("conn.rate.shared",     "new connections, shared cores",      "conn/s",   Higher, 0, Some(HaproxyAtLeast(1.1))),
    metric("conn.p50.shared",      "connect+first byte p50, shared",     "µs",       Lower,  0, None),
    metric("conn.p99.shared",      "connect+first byte p99, shared",     "µs",       Lower,  0, None),
    metric("conn.cpu.shared",      "balancer CPU per connection, shared", "µs",      Lower,  1, Some(HaproxyAtMost(0.85))),
    metric("conn.syscalls.shared", "system calls per connection, shared", "calls",   Lower,  1, None),
    metric("conn.switches.shared", "context switches per connection, shared", "switches", Lower, 2, None),
    metric("ka.rate",        "keep-alive requests",                "req/s",    Higher, 0, Some(HaproxyAtLeast(1.3))),
    metric("ka.p50",         "keep-alive latency p50",             "µs",       Lower,  0, None),
    metric("ka.p99",         "keep-alive latency p99",             "µs",       Lower,  0, None),
    metric("ka.cpu",         "balancer CPU per request",           "µs",       Lower,  2, Some(HaproxyAtMost(0.5))),
    metric("ka.syscalls",    "balancer system calls per request",  "calls",    Lower,  2, None),
    metric("ka.switches",    "balancer context switches per request", "switches", Lower, 2, None),
    metric("ka.rate.shared",     "keep-alive requests, shared cores",  "req/s",    Higher, 0, Some(HaproxyAtLeast(1.3))),
    metric("ka.p50.shared",      "keep-alive latency p50, shared",     "µs",       Lower,  0, None),
    metric("ka.p99.shared",      "keep-alive latency p99, shared",     "µs",       Lower,  0, None),
    metric("ka.cpu.shared",      "balancer CPU per request, shared",   "µs",       Lower,  2, Some(HaproxyAtMost(0.5))),
    metric("ka.syscalls.shared", "system calls per request, shared",   "calls",    Lower,  2, None),
    metric("ka.switches.shared", "context switches per request, shared", "switches", Lower, 2, None),
    metric("pp.mean",        "64 B ping-pong RTT mean",            "µs",       Lower,  1, None),
    metric("pp.p99",         "64 B ping-pong RTT p99",             "µs",       Lower,  1, None),
    metric("pp.added.mean",  "RTT added by balancer, mean",        "µs",       Lower,  1, Some(HaproxyAtMost(0.5))),
    metric("pp.added.p99",   "RTT added by balancer, p99",         "µs",       Lower,  1, None),
    metric("pp.cpu",         "balancer CPU per round trip",        "µs",       Lower,  1, None),
    metric("pp.mean.shared",       "64 B ping-pong RTT mean, shared",     "µs", Lower, 1, None),
    metric("pp.p99.shared",        "64 B ping-pong RTT p99, shared",      "µs", Lower, 1, None),
    metric("pp.added.mean.shared", "RTT added by balancer, mean, shared", "µs", Lower, 1, Some(HaproxyAtMost(0.5))),
    metric("pp.added.p99.shared",  "RTT added by balancer, p99, shared",  "µs", Lower, 1, None),
    metric("pp.cpu.shared",        "balancer CPU per round trip, shared", "µs", Lower, 1, None),
    metric("idle.rss",       "idle conn memory (silent)",          "KiB/conn", Lower,  2, Some(AtMost(2.0))),
    metric("idle.fds",       "idle conn fds (silent)",             "fds/conn", Lower,  2, Some(AtMost(2.0))),
    metric("watch.rss",      "idle conn memory (after 64 B echo)", "KiB/conn", Lower,  2, Some(AtMost(2.0))),
    metric("watch.fds",      "idle conn fds (after 64 B echo)",    "fds/conn", Lower,  2, Some(AtMost(2.0))),
    metric("dns.qps",        "DNS queries at ≤ 0.1 % loss",        "q/s",      Higher, 0, Some(NginxAtLeast(1.3))),
    metric("dns.p99",        "DNS latency p99 at that rate",       "µs",       Lower,  0, None),
    metric("dns.cpu",        "balancer CPU per 100k DNS queries",  "s",        Lower,  3, Some(NginxAtMost(0.7))),
    metric("dns.cpu_common", "same, all at 12k q/s",               "s",        Lower,  3, None),
    metric("dns.syscalls",   "balancer system calls per query, 12k q/s", "calls", Lower, 1, None),
    metric("tls.full.ecdsa",         "TLS full handshakes, ECDSA P-256",   "hs/s",     Higher, 0, Some(HaproxyAtLeast(1.0))),
    metric("tls.full.rsa",           "TLS full handshakes, RSA 2048",      "hs/s",     Higher, 0, Some(HaproxyAtLeast(1.0))),
    metric("tls.resumed.ecdsa",      "TLS resumed handshakes, ECDSA",      "hs/s",     Higher, 0, Some(HaproxyAtLeast(1.0))),
    metric("tls.resumed.rsa",        "TLS resumed handshakes, RSA",        "hs/s",     Higher, 0, Some(HaproxyAtLeast(1.0))),
    metric("tls.full.ecdsa.cpu",     "balancer CPU per full hs, ECDSA",    "µs",       Lower,  0, None),
    metric("tls.full.rsa.cpu",       "balancer CPU per full hs, RSA",      "µs",       Lower,  0, None),
    metric("tls.resumed.ecdsa.cpu",  "balancer CPU per resumed hs, ECDSA", "µs",       Lower,  0, None),
    metric("tls.resumed.rsa.cpu",    "balancer CPU per resumed hs, RSA",   "µs",       Lower,  0, None),
    metric("tls.bulk",               "TLS bulk, 1 session echoed",         "MiB/s",    Higher, 0, Some(HaproxyAtLeast(1.0))),
    metric("tls.bulk.cpu",           "balancer CPU, TLS bulk",             "s/GB",     Lower,  3, None),
    metric("tls.bulk.cpu0",          "CPU 0 (client + echo), TLS bulk",    "s/GB",     Lower,  3, None),
    metric("tls.bulk.record",        "TLS bulk, mean record to client",    "bytes",    Higher, 0, None),
    metric("tls.idle.rss",           "idle TLS session memory",            "KiB/sess", Lower,  2, Some(HaproxyAtMost(1.0))),
];

/// All samples of a run, and notes for the reader (skips, failures, sizes).
#[derive(Default)]
pub struct Results {
    samples: HashMap<(&'static str, TargetKind), Vec<f64>>,
    pub notes: Vec<String>,
}

impl Results {
    pub fn record(&mut self, metric: &'static str, target: TargetKind, value: f64) {
        debug_assert!(
            METRICS.iter().any(|m| m.id == metric),
            "unknown metric {metric}"
        );
        self.samples
            .entry((metric, target))
            .or_default()
            .push(value);
    }

    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("note: {text}");
        self.notes.push(text);
    }

    pub fn median(&self, metric: &'static str, target: TargetKind) -> Option<f64> {
        stats::median(self.samples.get(&(metric, target))?)
    }

    /// Every sample, for the JSON file beside the table.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for ((metric, target), values) in &self.samples {
            let entry = map
                .entry(metric.to_string())
                .or_insert_with(|| serde_json::json!({}));
            entry[target.name()] = serde_json::json!(values);
        }
        serde_json::Value::Object(map)
    }
}

/// Whether betwixt's `value` meets `goal`; `None` when the comparison has no data.
fn verdict(
    goal: Goal,
    value: Option<f64>,
    (haproxy, nginx): (Option<f64>, Option<f64>),
    decimals: usize,
) -> Option<bool> {
    let value = value?;
    Some(match goal {
        HaproxyAtLeast(factor) => value >= factor * haproxy.filter(|h| *h > 0.0)?,
        HaproxyAtMost(factor) => value <= factor * haproxy.filter(|h| *h > 0.0)?,
        NginxAtLeast(factor) => value >= factor * nginx.filter(|n| *n > 0.0)?,
        NginxAtMost(factor) => value <= factor * nginx.filter(|n| *n > 0.0)?,
        // Compared as displayed, so 2.001 fds per connection shown as 2.00 passes.
        AtMost(limit) => round(value, decimals) <= limit,
    })
}

fn round(value: f64, decimals: usize) -> f64 {
    let scale = 10f64.powi(i32::try_from(decimals).unwrap_or(0));
    (value * scale).round() / scale
}

fn goal_text(goal: Goal, unit: &str) -> String {
    match goal {
        HaproxyAtLeast(factor) => format!("≥ {factor}×h"),
        HaproxyAtMost(factor) => format!("≤ {factor}×h"),
        NginxAtLeast(factor) => format!("≥ {factor}×nginx"),
        NginxAtMost(factor) => format!("≤ {factor}×nginx"),
        AtMost(limit) => format!("≤ {limit} {}", unit.split('/').next().unwrap_or(unit)),
    }
}

/// One cell: the median and its ratios to direct and HAProxy.
fn cell(results: &Results, metric: &Metric, target: TargetKind) -> String {
    let Some(value) = results.median(metric.id, target) else {
        return "–".to_owned();
    };
    let mut text = format!("{value:.*}", metric.decimals);
    let mut ratios = Vec::new();
    for (reference, suffix) in [(TargetKind::Direct, "d"), (TargetKind::Haproxy, "h")] {
        if reference == target {
            continue;
        }
        if let Some(base) = results.median(metric.id, reference).filter(|b| *b > 0.0) {
            ratios.push(format!("{:.2}×{suffix}", value / base));
        }
    }
    if !ratios.is_empty() {
        write!(text, " ({})", ratios.join(", ")).unwrap_or_default();
    }
    text
}

/// The verdict columns: one per betwixt target that ran.
fn verdicts(results: &Results, metric: &Metric, betwixts: &[TargetKind]) -> Vec<String> {
    betwixts
        .iter()
        .map(|&target| match metric.goal {
            None => String::new(),
            Some(goal) => {
                let value = results.median(metric.id, target);
                let references = (
                    results.median(metric.id, TargetKind::Haproxy),
                    results.median(metric.id, TargetKind::Nginx),
                );
                match verdict(goal, value, references, metric.decimals) {
                    Some(true) => "PASS".to_owned(),
                    Some(false) => "FAIL".to_owned(),
                    None => "n/a".to_owned(),
                }
            }
        })
        .collect()
}

/// The results table in Markdown, padded so it also reads well in a terminal.
pub fn table(results: &Results, targets: &[TargetKind]) -> String {
    let betwixts: Vec<TargetKind> = targets.iter().copied().filter(|t| t.is_betwixt()).collect();
    let mut header = vec!["metric".to_owned(), "unit".to_owned(), "better".to_owned()];
    header.extend(targets.iter().map(|t| t.name().to_owned()));
    header.push("betwixt goal".to_owned());
    header.extend(betwixts.iter().map(|t| {
        let mode = t.name().trim_start_matches("betwixt-");
        format!("{mode} vs goal")
    }));
    let mut rows = vec![header];
    for metric in METRICS {
        if targets
            .iter()
            .all(|&t| results.median(metric.id, t).is_none())
        {
            continue;
        }
        let mut row = vec![
            metric.label.to_owned(),
            metric.unit.to_owned(),
            match metric.better {
                Higher => "↑ higher".to_owned(),
                Lower => "↓ lower".to_owned(),
            },
        ];
        row.extend(targets.iter().map(|&t| cell(results, metric, t)));
        row.push(
            metric
                .goal
                .map_or_else(String::new, |g| goal_text(g, metric.unit)),
        );
        row.extend(verdicts(results, metric, &betwixts));
        rows.push(row);
    }
    render_markdown(&rows)
}

fn render_markdown(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let line = |row: &[String]| {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(text, width)| format!("{text}{}", " ".repeat(width - text.chars().count())))
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut text = line(&rows[0]);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    text.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    for row in &rows[1..] {
        text.push_str(&line(row));
    }
    text
}

/// Facts about the run itself, for the report's header.
pub struct RunInfo {
    pub load_before: String,
    pub load_after: String,
    pub elapsed: std::time::Duration,
    pub background: Vec<Background>,
}

/// CPU used by processes other than the harness and its children while one workload ran: the
/// noise in its numbers.
pub struct Background {
    pub workload: Workload,
    pub others_cpu_seconds: f64,
    pub elapsed: std::time::Duration,
}

/// Other processes' share of all CPUs above which a workload's numbers are marked noisy.
const NOISY_SHARE: f64 = 10.0;

/// "bulk 0.4 s (0.2 %), ...": other processes' CPU per workload, as a share of all CPUs.
fn background_text(background: &[Background]) -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let parts: Vec<String> = background
        .iter()
        .map(|b| {
            let share = 100.0 * b.others_cpu_seconds / (b.elapsed.as_secs_f64() * cpus);
            let name = format!("{:?}", b.workload).to_lowercase();
            let noisy = if share > NOISY_SHARE { ", noisy" } else { "" };
            format!("{name} {:.1} s ({share:.1} %{noisy})", b.others_cpu_seconds)
        })
        .collect();
    parts.join(", ")
}

/// The command that produced the report: `BENCH_COMMAND` (set by scripts/bench.sh), else the
/// `cargo bench` line with this run's flags.
fn command_line() -> String {
    if let Ok(command) = std::env::var("BENCH_COMMAND") {
        return command;
    }
    let flags: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if flags.is_empty() {
        "cargo bench --bench e2e".to_owned()
    } else {
        format!("cargo bench --bench e2e -- {}", flags.join(" "))
    }
}

/// The full report: machine, settings, the table, how to read it, and notes.
pub fn document(plan: &Plan, targets: &[TargetKind], results: &Results, run: &RunInfo) -> String {
    let mut text = String::new();
    let date = crate::system::first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let mode = if plan.quick {
        " (quick mode: not meaningful)"
    } else {
        ""
    };
    let _ = writeln!(text, "### Run of {}{mode}\n", date.unwrap_or_default());
    let _ = writeln!(text, "Command: `{}`\n", command_line());
    for (key, value) in crate::system::machine_description() {
        let _ = writeln!(text, "- {key}: {value}");
    }
    if plan.betwixt != std::path::Path::new(env!("CARGO_BIN_EXE_betwixt")) {
        let _ = writeln!(
            text,
            "- betwixt binary measured: `{}` (`--betwixt`; the revision above is the harness's)",
            plan.betwixt.display()
        );
    }
    let _ = writeln!(text, "{}", settings(plan, run));
    text.push_str(&table(results, targets));
    text.push_str(
        "\n×d = value ÷ direct, ×h = value ÷ HAProxy. ↑ rows: higher is better (×h > 1 beats \
         HAProxy); ↓ rows: lower is better (×h < 1 beats HAProxy). The goal columns check each \
         betwixt target's median against betwixt's goal.\n",
    );
    if !results.notes.is_empty() {
        text.push_str("\nNotes:\n");
        for note in &results.notes {
            let _ = writeln!(text, "- {note}");
        }
    }
    text
}

fn settings(plan: &Plan, run: &RunInfo) -> String {
    let workers = plan.workers;
    format!(
        "- balancers: {workers} workers each: betwixt `TOKIO_WORKER_THREADS={workers}`; HAProxy \
         `nbthread {workers}`, `maxconn {maxconn}`, `maxpipes 256`, `option splice-auto`; nginx \
         `worker_processes {workers}`, `worker_connections {connections}`\n\
         - repetitions: {reps}, the table shows medians; the run took {minutes:.1} min\n\
         - load average (1, 5, 15 min): {before} before, {after} after (the benchmark's own \
         processes add up to about 3)\n\
         - CPU used by other processes during each workload (share of all CPUs): {background}\n\
         - idle connections: {idle}. The open-file limit is {limit} per process and cannot be \
         raised; a proxied connection costs the balancer 2 descriptors (plus pipes while data is \
         in flight), and {headroom} are left for listeners, pollers, pipes and logs: \
         min({max}, ({limit} − {headroom}) / 2)\n\
         - pinning: bulk, connrate and keepalive: {throughput}; ping-pong: {pinning}. \
         Placements of connrate, keepalive and ping-pong: {placements} (shared: nothing \
         pinned; its rows say `shared`)\n",
        maxconn = crate::targets::haproxy_maxconn(plan.nofile_limit),
        connections = crate::targets::nginx_worker_connections(plan.nofile_limit),
        reps = plan.reps,
        minutes = run.elapsed.as_secs_f64() / 60.0,
        before = run.load_before,
        after = run.load_after,
        background = background_text(&run.background),
        idle = plan.idle_conns,
        limit = plan.nofile_limit,
        headroom = crate::cli::FD_HEADROOM,
        max = crate::cli::MAX_IDLE_CONNS,
        throughput = crate::workloads::THROUGHPUT_PINNING,
        pinning = crate::workloads::PINNING,
        placements = plan
            .placements
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", "),
    )
}
