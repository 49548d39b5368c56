//! What `/proc` says about processes and the machine: CPU time, RSS and open descriptors of a
//! process tree, listening sockets, the open-file limit, load and versions.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Kernel clock ticks per second in `/proc/PID/stat` (USER_HZ, 100 on every Linux ABI unless
/// `getconf` says otherwise).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        first_line("getconf", &["CLK_TCK"])
            .and_then(|text| text.parse().ok())
            .unwrap_or(100.0)
    })
}

/// The fields of `/proc/PID/stat` after the command name: index 0 is field 3 (state).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &text[text.rfind(')')? + 2..];
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

/// `root` and all its descendants (nginx's master and workers, say).
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse().ok()) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut next = 0;
    while next < tree.len() {
        if let Some(kids) = children.get(&tree[next]) {
            tree.extend(kids);
        }
        next += 1;
    }
    tree
}

/// User plus system CPU seconds of `pids`, each including all its threads, live and exited.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|&pid| {
            let fields = stat_fields(pid)?;
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum();
    ticks as f64 / clock_ticks()
}

/// Counts the system calls `pids` make (every thread) and their context switches (each time
/// one of their threads leaves a CPU: sleeping until woken, or preempted) with `perf stat`,
/// from `start` to `finish`.
pub struct SyscallCounter {
    perf: std::process::Child,
}

/// What a [`SyscallCounter`] counted.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    pub syscalls: u64,
    pub switches: u64,
}

impl SyscallCounter {
    /// # Errors
    /// perf is missing or cannot attach (it needs root or a permissive
    /// `kernel.perf_event_paranoid`).
    pub fn start(pids: &[u32]) -> anyhow::Result<Self> {
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        let perf = Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                "raw_syscalls:sys_enter,context-switches",
            ])
            .arg("-p")
            .arg(list.join(","))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("cannot run perf (apt-get install linux-perf)")?;
        // perf attaches asynchronously; calls before that are not counted.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self { perf })
    }

    /// Stops counting and returns the counts.
    ///
    /// # Errors
    /// perf failed or printed no count.
    pub fn finish(self) -> anyhow::Result<Counts> {
        // SIGINT makes perf print its counts and exit.
        let _ = Command::new("kill")
            .args(["-INT", &self.perf.id().to_string()])
            .status();
        let output = self.perf.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stderr);
        let count = |event: &str| -> anyhow::Result<u64> {
            text.lines()
                .find(|line| line.contains(event))
                .and_then(|line| line.split(',').next()?.trim().parse().ok())
                .with_context(|| format!("no {event} count in perf's output: {text}"))
        };
        Ok(Counts {
            syscalls: count("raw_syscalls:sys_enter")?,
            switches: count("context-switches")?,
        })
    }
}

/// The sum of `VmRSS` over `pids`, in KiB.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Open file descriptors of `pids`, summed.
pub fn open_fds(pids: &[u32]) -> usize {
    pids.iter()
        .filter_map(|pid| fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .map(Iterator::count)
        .sum()
}

/// Whether some socket listens on 127.0.0.1:`port` (read from `/proc/net/tcp`).
pub fn is_listening(port: u16) -> bool {
    let wanted = format!("0100007F:{port:04X}");
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let local = fields.next();
        let state = fields.nth(1);
        local == Some(wanted.as_str()) && state == Some("0A")
    })
}

/// Waits until `ready` holds, polling every 20 ms.
///
/// # Errors
/// `what` did not happen within `timeout`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 for a balancer's listener (bound, read and released: another
/// process could take it in between, which the start-up check would then report).
///
/// # Errors
/// Binding to port 0 failed.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The soft open-file limit of this process, which every child inherits.
pub fn nofile_limit() -> u64 {
    let limits = fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(1024)
}

/// CPU seconds all CPUs spent busy since boot (everything in `/proc/stat`'s `cpu` line but
/// idle and iowait), whoever ran.
pub fn busy_cpu_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|line| line.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(index, _)| !matches!(index, 3 | 4))
        .map(|(_, ticks)| ticks)
        .sum();
    busy as f64 / clock_ticks()
}

/// CPU seconds used by this process and every child it has waited for (their children too,
/// when they waited for them): with every child stopped, all the harness's own work.
pub fn own_cpu_seconds() -> f64 {
    let Some(fields) = stat_fields(std::process::id()) else {
        return 0.0;
    };
    // Fields 14 to 17: utime, stime, cutime, cstime.
    let ticks: u64 = fields[11..15.min(fields.len())]
        .iter()
        .filter_map(|field| field.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks()
}

/// `/proc/loadavg`'s three load averages.
pub fn load_average() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first line a command prints on stdout or stderr, or `None` when it cannot run.
pub fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    let text = if output.stdout.is_empty() {
        output.stderr
    } else {
        output.stdout
    };
    let line = String::from_utf8_lossy(&text)
        .lines()
        .next()?
        .trim()
        .to_owned();
    (!line.is_empty()).then_some(line)
}

/// Whether `program` is on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The machine and software versions, one `key: value` pair per entry.
pub fn machine_description() -> Vec<(String, String)> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split(':').nth(1))
        .map_or("unknown".to_owned(), |model| model.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or("unknown".to_owned(), |kib| {
            format!("{:.1} GiB", kib as f64 / 1048576.0)
        });
    let missing = || "not installed".to_owned();
    vec![
        ("cpu".into(), format!("{model}, {cores} cores, {memory}")),
        ("os".into(), os_name()),
        ("kernel".into(), kernel.trim().to_owned()),
        ("betwixt".into(), betwixt_revision()),
        (
            "haproxy".into(),
            first_line("haproxy", &["-v"]).unwrap_or_else(missing),
        ),
        (
            "nginx".into(),
            first_line("nginx", &["-v"]).unwrap_or_else(missing),
        ),
        (
            "iperf3".into(),
            first_line("iperf3", &["--version"]).unwrap_or_else(missing),
        ),
        (
            "rustc".into(),
            first_line("rustc", &["--version"]).unwrap_or_else(missing),
        ),
    ]
}

fn os_name() -> String {
    let release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    release
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map_or("unknown".to_owned(), |name| {
            name.trim_matches('"').to_owned()
        })
}

/// The commit the bench was built from, marked when the tree has local changes.
fn betwixt_revision() -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(manifest)
            .args(args)
            .output()
            .ok()
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]).filter(|o| o.status.success()) else {
        return "unknown revision".to_owned();
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|output| !output.stdout.is_empty());
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    if dirty {
        format!("{head} (with local changes)")
    } else {
        head
    }
}
