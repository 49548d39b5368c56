//! The access log (`[logging] access_log`): one line per session at its end, like HAProxy's
//! `option tcplog` or nginx's stream `access_log`, to its own file or into the main log.
//!
//! A session formats its line (a few hundred bytes, in its own task) and hands it to one
//! writer thread through a bounded queue; it never waits for the disk. When the queue is full
//! the line is dropped and counted, so a stalled disk costs log lines, never sessions. The
//! writer drains the queue in batches (one write per batch), and reopens the file when asked
//! (SIGHUP, SIGUSR1: logrotate's `postrotate`).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{error, info};

use super::open_without_following;
use crate::config::{AccessLogConfig, AccessLogFormat, AccessLogOutput};

/// Lines waiting for the writer at most: about 2 MiB of text, a few seconds of a busy node's
/// sessions, enough to ride out a slow disk without holding unbounded memory.
pub const QUEUE_LINES: usize = 8192;

/// How often a busy writer looks at its queue.
const POLL_PERIOD: Duration = Duration::from_millis(20);

/// Empty polls (a second) before the writer sleeps until the next line.
const IDLE_POLLS: u32 = 50;

/// The tracing target of access lines written into the main log.
pub const TARGET: &str = "access";

/// A running access log: the sending end of the writer thread's queue.
#[derive(Debug)]
pub struct AccessLog {
    config: AccessLogConfig,
    lines_tx: SyncSender<Message>,
    reopen: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

#[derive(Debug)]
enum Message {
    Line(String),
    /// Wakes the writer to look at the reopen flag.
    Reopen,
}

/// When a session started: the wall-clock time its line shows, and a monotonic clock for its
/// durations.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub at: SystemTime,
    clock: tokio::time::Instant,
}

impl Started {
    pub fn now() -> Self {
        Self {
            at: SystemTime::now(),
            clock: tokio::time::Instant::now(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.clock.elapsed()
    }
}

/// One ended session, as its line shows it.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// When the client was accepted.
    pub start: SystemTime,
    pub client: SocketAddr,
    pub server: &'a str,
    /// `host:port`.
    pub backend: &'a str,
    /// From accept until the backend connection was ready (TLS, retries and all).
    pub connect: Duration,
    /// From accept to the end.
    pub duration: Duration,
    pub to_backend: u64,
    pub to_client: u64,
    /// How it ended (`completed`, `idle_timeout`, ... as the metrics' `reason`).
    pub end: &'a str,
    /// Connect attempts beyond the first.
    pub retries: u32,
}

impl AccessLog {
    /// Starts the writer thread, which opens the file (a failure is logged, and lines are
    /// dropped and counted in `dropped` until a reopen succeeds). `None` when the thread
    /// cannot be started (logged).
    pub fn start(config: AccessLogConfig, dropped: Arc<AtomicU64>) -> Option<Self> {
        Self::with_queue(config, dropped, QUEUE_LINES)
    }

    fn with_queue(
        config: AccessLogConfig,
        dropped: Arc<AtomicU64>,
        queue_lines: usize,
    ) -> Option<Self> {
        let (lines_tx, lines_rx) = sync_channel(queue_lines);
        let reopen = Arc::new(AtomicBool::new(false));
        let mut writer = Writer {
            output: config.output.clone(),
            file: None,
            reopen: Arc::clone(&reopen),
            dropped: Arc::clone(&dropped),
        };
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(&lines_rx));
        if let Err(error) = spawned {
            error!(%error, "cannot start the access log writer; no access log");
            return None;
        }
        Some(Self {
            config,
            lines_tx,
            reopen,
            dropped,
        })
    }

    pub fn config(&self) -> &AccessLogConfig {
        &self.config
    }

    /// Formats `entry` and queues it; a full queue drops it (counted).
    pub fn record(&self, entry: &Entry<'_>) {
        let mut line = String::with_capacity(192);
        match self.config.format {
            AccessLogFormat::Text => format_text(&mut line, entry),
            AccessLogFormat::Json => format_json(&mut line, entry),
        }
        if self.lines_tx.try_send(Message::Line(line)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Has the writer close and reopen its file (after logrotate moved it) before its next
    /// line.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        let sent = self.lines_tx.try_send(Message::Reopen);
        // A full queue wakes the writer anyway; it reads the flag after the batch.
        if let Err(TrySendError::Disconnected(_)) = sent {
            error!("the access log writer has stopped");
        }
    }
}

/// The writer thread's state.
struct Writer {
    output: AccessLogOutput,
    file: Option<BufWriter<File>>,
    reopen: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

impl Writer {
    /// Writes until every sender is gone (the access log was replaced or the process ends).
    ///
    /// Under load it polls the queue every [`POLL_PERIOD`] instead of sleeping in `recv`: a
    /// sender then never has a parked receiver to wake, so a session's line costs it no
    /// system call, and the file gets one write per batch. After [`IDLE_POLLS`] empty polls
    /// it blocks until the next line, so an idle balancer does not wake for nothing.
    fn run(&mut self, lines_rx: &Receiver<Message>) {
        self.open();
        let mut idle_polls = 0;
        loop {
            let mut received = false;
            loop {
                match lines_rx.try_recv() {
                    Ok(message) => {
                        received = true;
                        self.handle(message);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.flush();
                        return;
                    }
                }
            }
            if received {
                self.flush();
                idle_polls = 0;
            } else {
                idle_polls += 1;
            }
            if self.reopen.swap(false, Ordering::AcqRel) {
                self.open();
            }
            if idle_polls < IDLE_POLLS {
                std::thread::sleep(POLL_PERIOD);
                continue;
            }
            match lines_rx.recv() {
                Ok(message) => {
                    idle_polls = 0;
                    self.handle(message);
                }
                Err(_) => {
                    self.flush();
                    return;
                }
            }
        }
    }

    fn handle(&mut self, message: Message) {
        let Message::Line(line) = message else {
            return;
        };
        match (&self.output, &mut self.file) {
            (AccessLogOutput::MainLog, _) => info!(target: TARGET, "{}", line.trim_end()),
            (AccessLogOutput::File(path), Some(file)) => {
                if let Err(error) = file.write_all(line.as_bytes()) {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    error!(path = %path.display(), %error, "cannot write the access log");
                }
            }
            (AccessLogOutput::File(_), None) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush(&mut self) {
        if let (AccessLogOutput::File(path), Some(file)) = (&self.output, &mut self.file)
            && let Err(error) = file.flush()
        {
            error!(path = %path.display(), %error, "cannot write the access log");
        }
    }

    fn open(&mut self) {
        self.flush();
        let AccessLogOutput::File(path) = &self.output else {
            return;
        };
        self.file = match open_file(path) {
            Ok(file) => Some(BufWriter::with_capacity(64 * 1024, file)),
            Err(error) => {
                error!(path = %path.display(), %error, "cannot open the access log; its lines are dropped until a reopen (SIGUSR1) succeeds");
                None
            }
        };
    }
}

fn open_file(path: &Path) -> std::io::Result<File> {
    open_without_following(OpenOptions::new().create(true).append(true), path)
}

/// `START CLIENT SERVER BACKEND CONNECT_MS DURATION_MS TO_BACKEND TO_CLIENT END RETRIES`, one
/// space between fields, none of which can hold a space (server names are checked for
/// control characters at load; backend targets are `host:port`).
fn format_text(line: &mut String, entry: &Entry<'_>) {
    write_time(line, entry.start);
    let _ = writeln!(
        line,
        " {} {} {} {} {} {} {} {} {}",
        entry.client,
        entry.server,
        entry.backend,
        entry.connect.as_millis(),
        entry.duration.as_millis(),
        entry.to_backend,
        entry.to_client,
        entry.end,
        entry.retries
    );
}

/// One JSON object with the text format's fields, named.
fn format_json(line: &mut String, entry: &Entry<'_>) {
    line.push_str("{\"start\":\"");
    write_time(line, entry.start);
    let _ = write!(line, "\",\"client\":\"{}\",\"server\":", entry.client);
    push_json_string(line, entry.server);
    line.push_str(",\"backend\":");
    push_json_string(line, entry.backend);
    let _ = writeln!(
        line,
        ",\"connect_ms\":{},\"duration_ms\":{},\"to_backend\":{},\"to_client\":{},\"end\":\"{}\",\"retries\":{}}}",
        entry.connect.as_millis(),
        entry.duration.as_millis(),
        entry.to_backend,
        entry.to_client,
        entry.end,
        entry.retries
    );
}

fn push_json_string(line: &mut String, text: &str) {
    line.push('"');
    for c in text.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{:04x}", u32::from(c));
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// `2026-11-29T17:20:00.123Z`: RFC 3339 in UTC, milliseconds.
fn write_time(line: &mut String, time: SystemTime) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    let _ = write!(
        line,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_millis()
    );
}

/// The Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for days on or after the epoch).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            start: UNIX_EPOCH + Duration::from_millis(1_780_000_000_123),
            client: "10.0.0.5:51234".parse().unwrap(),
            server: "k3s",
            backend: "10.0.0.11:6443",
            connect: Duration::from_micros(3_400),
            duration: Duration::from_millis(12_345),
            to_backend: 1234,
            to_client: 5678,
            end: "completed",
            retries: 1,
        }
    }

    #[test]
    fn text_lines_have_a_fixed_field_order() {
        let mut line = String::new();
        format_text(&mut line, &entry());
        assert_eq!(
            line,
            "2026-05-28T20:26:40.123Z 10.0.0.5:51234 k3s 10.0.0.11:6443 3 12345 1234 5678 completed 1\n"
        );
    }

    /// A writer stuck on its file (a FIFO nobody reads: the open blocks) never holds up a
    /// session: lines past the queue are dropped and counted, the queued ones come through
    /// once the file can be written.
    #[test]
    fn a_stuck_writer_drops_and_counts_lines_instead_of_waiting() {
        let dir = std::env::temp_dir().join(format!("betwixt-access-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("access.log");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success(), "mkfifo (coreutils)");
        let config = AccessLogConfig {
            output: AccessLogOutput::File(fifo.clone()),
            format: AccessLogFormat::Text,
        };
        let dropped = Arc::new(AtomicU64::new(0));
        let log = AccessLog::with_queue(config, Arc::clone(&dropped), 4).unwrap();
        for _ in 0..10 {
            log.record(&entry());
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 6);
        // Reading unblocks the writer's open; it writes the 4 queued lines and, once the log
        // is dropped, ends and closes the FIFO.
        let reader = std::thread::spawn(move || std::fs::read_to_string(&fifo).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        drop(log);
        let text = reader.join().unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert_eq!(dropped.load(Ordering::Relaxed), 6);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let mut line = String::new();
        let mut entry = entry();
        entry.server = "a\"b";
        format_json(&mut line, &entry);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["server"], "a\"b");
        assert_eq!(value["start"], "2026-05-28T20:26:40.123Z");
        assert_eq!(value["client"], "10.0.0.5:51234");
        assert_eq!(value["duration_ms"], 12345);
        assert_eq!(value["to_client"], 5678);
        assert_eq!(value["end"], "completed");
        assert_eq!(value["retries"], 1);
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
    }
}
