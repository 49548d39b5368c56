//! `[logging]`: where log lines go and how they look, plus a limiter for events that can
//! repeat thousands of times a second (accept errors, connect failures under a storm), and
//! the `access` log of sessions.

pub(crate) mod access;
mod gobetween;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogLevel, LogOutput, LoggingConfig};

/// Changes the level of the installed logger (a reload may change `[logging] level`).
pub struct LogControl {
    filter: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    env_override: bool,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("env_override", &self.env_override)
            .finish_non_exhaustive()
    }
}

impl LogControl {
    /// Applies a new level unless `RUST_LOG` set one at start (the environment wins).
    pub fn set_level(&self, level: LogLevel) {
        if self.env_override {
            return;
        }
        if let Err(error) = self.filter.reload(EnvFilter::new(directive(level))) {
            tracing::warn!(%error, "cannot change the log level");
        }
    }
}

/// The log file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the log file {}: {error}", path.display())]
pub struct LogFileError {
    pub path: PathBuf,
    /// Not a `source()`: the message already ends with it.
    pub error: io::Error,
}

/// Installs the global logger described by `config`. `RUST_LOG`, when set, overrides the level.
///
/// # Errors
/// The log file cannot be opened for appending, or it is a symbolic link: betwixt may run
/// with more rights than whoever can write the log directory, so it never follows one.
pub fn init(config: &LoggingConfig) -> Result<LogControl, LogFileError> {
    let env_filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok());
    let env_override = env_filter.is_some();
    let filter = env_filter.unwrap_or_else(|| EnvFilter::new(directive(config.level)));
    let (filter, handle) = reload::Layer::new(filter);

    let (writer, ansi) = match &config.output {
        LogOutput::Stdout => (BoxMakeWriter::new(io::stdout), true),
        LogOutput::Stderr => (BoxMakeWriter::new(io::stderr), true),
        LogOutput::File(path) => {
            let file = open_without_following(OpenOptions::new().create(true).append(true), path)
                .map_err(|error| LogFileError {
                path: path.clone(),
                error,
            })?;
            (BoxMakeWriter::new(Mutex::new(file)), false)
        }
    };
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    // A second init (tests) keeps the first logger; that is not an error worth reporting.
    let _ = match config.format {
        LogFormat::Text => registry
            .with(layer.with_ansi(ansi && is_terminal(&config.output)))
            .try_init(),
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).try_init(),
        LogFormat::GobetweenText => registry
            .with(layer.event_format(gobetween::GobetweenText))
            .try_init(),
        LogFormat::GobetweenJson => registry
            .with(layer.event_format(gobetween::GobetweenJson))
            .try_init(),
    };
    Ok(LogControl {
        filter: handle,
        env_override,
    })
}

/// Opens `path` with `options` and `O_NOFOLLOW`, so a symbolic link planted at the path (to
/// make betwixt append to or truncate another file) is refused, with an error that says so.
/// Also used for the pidfile.
///
/// # Errors
/// The open error; for a symbolic link, one saying it is not followed.
pub(crate) fn open_without_following(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    options
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|error| match error.raw_os_error() {
            Some(libc::ELOOP) => io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is a symbolic link, which betwixt does not follow",
            ),
            _ => error,
        })
}

fn is_terminal(output: &LogOutput) -> bool {
    use std::io::IsTerminal;
    match output {
        LogOutput::Stdout => io::stdout().is_terminal(),
        LogOutput::Stderr => io::stderr().is_terminal(),
        LogOutput::File(_) => false,
    }
}

fn directive(level: LogLevel) -> String {
    let level = match level {
        LogLevel::Trace => LevelFilter::TRACE,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error => LevelFilter::ERROR,
    };
    level.to_string()
}

/// Lets one event through per period and counts the ones it holds back, so a storm of
/// identical failures costs one log line a second, which says how many were suppressed.
#[derive(Debug)]
pub struct RateLimit {
    period: Duration,
    origin: Instant,
    /// Milliseconds since `origin` at which the next event may be logged.
    next_allowed_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            origin: Instant::now(),
            next_allowed_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// One line per second.
    pub fn per_second() -> Self {
        Self::new(Duration::from_secs(1))
    }

    /// `Some(n)` when this event should be logged, `n` being how many were held back since the
    /// last one; `None` when it should be skipped.
    pub fn check(&self) -> Option<u64> {
        let now_ms = self.origin.elapsed().as_millis() as u64;
        let next = self.next_allowed_ms.load(Ordering::Relaxed);
        let period_ms = self.period.as_millis() as u64;
        if now_ms >= next
            && self
                .next_allowed_ms
                .compare_exchange(
                    next,
                    now_ms + period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::per_second()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symbolic_link_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("betwixt-nofollow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (target, link) = (dir.join("target"), dir.join("link"));
        std::fs::write(&target, "precious\n").unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();

        let error = open_without_following(OpenOptions::new().append(true).create(true), &link)
            .expect_err("a symbolic link");
        assert!(error.to_string().contains("symbolic link"), "{error}");
        let config = LoggingConfig {
            level: LogLevel::Info,
            output: LogOutput::File(link.clone()),
            format: LogFormat::Text,
            access_log: None,
        };
        let error = init(&config).expect_err("a symbolic link");
        assert!(
            error.to_string().contains(link.to_str().unwrap()),
            "{error}"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");

        let plain = dir.join("plain.log");
        let _ = std::fs::remove_file(&plain);
        open_without_following(OpenOptions::new().append(true).create(true), &plain).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rate_limit_lets_one_through_per_period_and_counts_the_rest() {
        let limit = RateLimit::new(Duration::from_millis(50));
        assert_eq!(limit.check(), Some(0));
        assert_eq!(limit.check(), None);
        assert_eq!(limit.check(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limit.check(), Some(2));
    }
}
