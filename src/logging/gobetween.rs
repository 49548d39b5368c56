//! gobetween's two log line shapes, for log parsers and alerts written against gobetween:
//! its own text formatter (`2006-01-02 15:04:05 [INFO ] (name): message`) and logrus's
//! JSON formatter (`{"level":"info","msg":"...","name":"...","time":"..."}`).
//!
//! `name` is gobetween's logger name (`server`, `healthcheck`, `api`...); betwixt uses the
//! module that logged (`supervisor`, `health`, `api`, `session`...). Structured fields,
//! which gobetween folds into its messages, follow the message as `key=value` in text and
//! are top-level keys in JSON, as logrus puts `WithField` data.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `[logging] format = "gobetween-text"`.
#[derive(Debug, Default, Clone, Copy)]
pub struct GobetweenText;

/// `[logging] format = "gobetween-json"`.
#[derive(Debug, Default, Clone, Copy)]
pub struct GobetweenJson;

impl<S, N> FormatEvent<S, N> for GobetweenText
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let fields = Fields::of(event);
        writeln!(
            writer,
            "{} [{:<5.5}] ({}): {}",
            LocalTime::now().text(),
            text_level(*event.metadata().level()),
            logger_name(event.metadata().target()),
            fields.message_with_fields(),
        )
    }
}

impl<S, N> FormatEvent<S, N> for GobetweenJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let fields = Fields::of(event);
        let mut object = serde_json::Map::new();
        // logrus keeps a field that clashes with its own keys under `fields.KEY`.
        for (key, value) in fields.others {
            let key = match key {
                "level" | "msg" | "time" | "name" => format!("fields.{key}"),
                _ => key.to_owned(),
            };
            object.insert(key, serde_json::Value::String(value));
        }
        let level = json_level(*event.metadata().level());
        object.insert("level".into(), level.into());
        object.insert("msg".into(), fields.message.into());
        object.insert("name".into(), logger_name(event.metadata().target()).into());
        object.insert("time".into(), LocalTime::now().rfc3339().into());
        let line = serde_json::Value::Object(object).to_string();
        writeln!(writer, "{line}")
    }
}

/// logrus's level names, upper-cased and cut to five characters by gobetween's formatter
/// (so a warning reads `[WARNI]`, exactly as gobetween prints it).
fn text_level(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// logrus's level names as its JSON formatter writes them.
fn json_level(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// The module under the crate that logged (`betwixt::health::monitor` -> `health`); the
/// binary's own lines (`betwixt`) are gobetween's `main`.
fn logger_name(target: &str) -> &str {
    let mut parts = target.split("::");
    match (parts.next(), parts.next()) {
        (Some("betwixt"), Some(module)) => module,
        (Some("betwixt"), None) => "main",
        (Some(other), _) => other,
        (None, _) => "default",
    }
}

/// An event's message and its other fields, in the order they were written.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, String)>,
}

impl Fields {
    fn of(event: &Event<'_>) -> Self {
        let mut fields = Self::default();
        event.record(&mut fields);
        fields
    }

    fn message_with_fields(&self) -> String {
        let mut line = self.message.clone();
        for (key, value) in &self.others {
            let separator = if line.is_empty() { "" } else { " " };
            if value.contains(char::is_whitespace) || value.is_empty() {
                let _ = write!(line, "{separator}{key}={value:?}");
            } else {
                let _ = write!(line, "{separator}{key}={value}");
            }
        }
        line
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.others.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.others.push((field.name(), format!("{value:?}")));
        }
    }
}

/// Wall-clock time in the host's zone, as gobetween (Go's `time.Now()`) prints it.
struct LocalTime {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// East of UTC.
    offset_seconds: i64,
}

impl LocalTime {
    fn now() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self::at(since_epoch.as_secs() as libc::time_t)
    }

    #[allow(unsafe_code)]
    fn at(seconds: libc::time_t) -> Self {
        // SAFETY: an all-zero `tm` is a valid value of this plain C struct.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live locals; localtime_r and gmtime_r are the
        // re-entrant forms and write only into `tm`. gmtime_r is the fallback when the zone
        // data cannot be read: a log line in UTC beats none.
        // Both fail only for a year beyond `int`, which `now()` cannot give; `tm` then
        // stays all zero, still a valid value.
        let _ = unsafe {
            !libc::localtime_r(&seconds, &mut tm).is_null()
                || !libc::gmtime_r(&seconds, &mut tm).is_null()
        };
        Self {
            year: tm.tm_year + 1900,
            month: (tm.tm_mon + 1) as u32,
            day: tm.tm_mday as u32,
            hour: tm.tm_hour as u32,
            minute: tm.tm_min as u32,
            second: tm.tm_sec as u32,
            offset_seconds: tm.tm_gmtoff,
        }
    }

    /// Go's `2006-01-02 15:04:05`.
    fn text(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// Go's `time.RFC3339` (logrus's default timestamp): `2006-01-02T15:04:05Z07:00`, whole
    /// seconds, `Z` in UTC.
    fn rfc3339(&self) -> String {
        let zone = if self.offset_seconds == 0 {
            "Z".to_owned()
        } else {
            let sign = if self.offset_seconds < 0 { '-' } else { '+' };
            let minutes = self.offset_seconds.unsigned_abs() / 60;
            format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60)
        };
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{zone}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The lines `log` writes through a subscriber using `format`.
    fn lines<F>(format: F, log: impl FnOnce()) -> Vec<String>
    where
        F: FormatEvent<
                tracing_subscriber::Registry,
                tracing_subscriber::fmt::format::DefaultFields,
            > + Send
            + Sync
            + 'static,
    {
        use tracing_subscriber::layer::SubscriberExt;
        let captured = Captured::default();
        let writer = captured.clone();
        let layer = tracing_subscriber::fmt::layer()
            .event_format(format)
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, log);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn text_lines_read_as_gobetween_prints_them() {
        let lines = lines(GobetweenText, || {
            tracing::info!(target: "betwixt::health::monitor", server = "k3s", "backend up");
            tracing::warn!(target: "betwixt::supervisor", "reload refused");
            tracing::error!(target: "betwixt", reason = "no such file", "cannot start");
        });
        assert_eq!(lines.len(), 3, "{lines:?}");
        let pattern = regex::Regex::new(
            r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[(INFO |WARNI|ERROR)\] \((\w+)\): (.*)$",
        )
        .unwrap();
        let parsed: Vec<(String, String, String)> = lines
            .iter()
            .map(|line| {
                let found = pattern.captures(line).unwrap_or_else(|| panic!("{line}"));
                (found[1].into(), found[2].into(), found[3].into())
            })
            .collect();
        assert_eq!(
            parsed,
            [
                (
                    "INFO ".into(),
                    "health".into(),
                    "backend up server=k3s".into()
                ),
                ("WARNI".into(), "supervisor".into(), "reload refused".into()),
                (
                    "ERROR".into(),
                    "main".into(),
                    "cannot start reason=\"no such file\"".into()
                ),
            ]
        );
    }

    #[test]
    fn json_lines_carry_logrus_keys_and_fields_at_the_top() {
        let lines = lines(GobetweenJson, || {
            tracing::warn!(target: "betwixt::api", client = "10.0.0.1", msg = "x", "refused");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let value: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(value["level"], "warning");
        assert_eq!(value["msg"], "refused");
        assert_eq!(value["name"], "api");
        assert_eq!(value["client"], "10.0.0.1");
        assert_eq!(value["fields.msg"], "x");
        let time = value["time"].as_str().unwrap();
        let rfc3339 =
            regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$").unwrap();
        assert!(rfc3339.is_match(time), "{time}");
    }

    #[test]
    fn local_time_follows_the_zone() {
        // 2024-03-01 12:34:56 UTC; the test process runs with the host's zone, so compare
        // against the C library's own offset for that instant.
        let time = LocalTime::at(1_709_296_496);
        let shifted = 1_709_296_496 + time.offset_seconds;
        let of_day = shifted.rem_euclid(86_400);
        assert_eq!(
            (time.hour, time.minute, time.second),
            (
                (of_day / 3600) as u32,
                (of_day / 60 % 60) as u32,
                (of_day % 60) as u32
            )
        );
        if time.offset_seconds == 0 {
            assert_eq!(time.text(), "2024-03-01 12:34:56");
            assert_eq!(time.rfc3339(), "2024-03-01T12:34:56Z");
        }
    }
}
