//! The standard Prometheus process metrics (`process_cpu_seconds_total` and the rest), read
//! from `/proc` as Go's client library does, so dashboards and alerts written for gobetween
//! keep working.
//!
//! A file that cannot be read leaves its metrics out of the page rather than failing it.

use super::exposition::{Exposition, Kind};

/// What `/proc` says about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessSample {
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

pub(super) fn render(out: &mut Exposition) {
    let ticks = clock_ticks();
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let stat = read("/proc/self/stat").and_then(|text| parse_stat(&text, ticks));
    let boot_time = read("/proc/stat").and_then(|text| parse_boot_time(&text));
    let status = read("/proc/self/status").map(|text| parse_status(&text));
    let sample = ProcessSample {
        cpu_seconds: stat.map(|(cpu, _)| cpu),
        start_time_seconds: stat
            .zip(boot_time)
            .map(|((_, since_boot), boot)| boot + since_boot),
        resident_bytes: status.and_then(|(rss, _)| rss),
        virtual_bytes: status.and_then(|(_, size)| size),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64),
        max_fds: read("/proc/self/limits").and_then(|text| parse_max_fds(&text)),
    };
    write(out, &sample);
}

fn write(out: &mut Exposition, sample: &ProcessSample) {
    let families: [(&'static str, Kind, &str, Option<f64>); 6] = [
        (
            "process_cpu_seconds_total",
            Kind::Counter,
            "Total user and system CPU time spent in seconds.",
            sample.cpu_seconds,
        ),
        (
            "process_max_fds",
            Kind::Gauge,
            "Maximum number of open file descriptors.",
            sample.max_fds.map(|n| n as f64),
        ),
        (
            "process_open_fds",
            Kind::Gauge,
            "Number of open file descriptors.",
            sample.open_fds.map(|n| n as f64),
        ),
        (
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            sample.resident_bytes.map(|n| n as f64),
        ),
        (
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since unix epoch in seconds.",
            sample.start_time_seconds,
        ),
        (
            "process_virtual_memory_bytes",
            Kind::Gauge,
            "Virtual memory size in bytes.",
            sample.virtual_bytes.map(|n| n as f64),
        ),
    ];
    for (name, kind, help, value) in families {
        if let Some(value) = value {
            out.family(name, kind, help).sample(&[], value);
        }
    }
}

/// `(utime + stime, starttime)` in seconds from `/proc/self/stat`. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(text: &str, ticks: f64) -> Option<(f64, f64)> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_ascii_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime 15, starttime 22.
    let field = |number: usize| fields.get(number - 3)?.parse::<f64>().ok();
    Some(((field(14)? + field(15)?) / ticks, field(22)? / ticks))
}

/// `btime` of `/proc/stat`: the boot time in seconds since the epoch.
fn parse_boot_time(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// `(VmRSS, VmSize)` in bytes from `/proc/self/status`.
fn parse_status(text: &str) -> (Option<u64>, Option<u64>) {
    let kib = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    (kib("VmRSS:"), kib("VmSize:"))
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Clock ticks per second, the unit of CPU times in `/proc`.
#[allow(unsafe_code)]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant; it has no pointer arguments.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "4242 (bet wixt) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 \
                    9 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(stat, 100.0), Some((3.0, 123.45)));
        assert_eq!(parse_boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1.7e9));
        let status = "Name:\tbetwixt\nVmSize:\t  20480 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(
            parse_status(status),
            (Some(1024 * 1024), Some(20480 * 1024))
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
    }

    #[test]
    fn this_process_reports_every_family() {
        let mut out = Exposition::default();
        render(&mut out);
        let page = out.finish();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                page.contains(&format!("\n{name} ")),
                "{name} missing:\n{page}"
            );
        }
    }
}
