//! The Prometheus text exposition format (version 0.0.4): families with `# HELP` and `# TYPE`,
//! samples with escaped label values, histograms as cumulative `_bucket`s, `_sum` and `_count`.
//!
//! A hand-written encoder is enough for what betwixt exports and keeps the scrape a plain walk
//! over the atomics: every family is written once, with all its samples together, as the
//! format requires.

use std::fmt::Display;

use crate::stats::Histogram;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// A text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// Label names and values of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    /// Starts a family: writes its `# HELP` and `# TYPE` lines. Its samples must follow before
    /// the next family starts.
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &str) -> Family<'_> {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        self.text.push_str(&format!("# HELP {name} {help}\n"));
        self.text
            .push_str(&format!("# TYPE {name} {}\n", kind.as_str()));
        Family {
            text: &mut self.text,
            name,
        }
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.text
    }
}

/// The samples of one family.
#[derive(Debug)]
pub struct Family<'a> {
    text: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    /// One sample of a counter or gauge.
    pub fn sample(&mut self, labels: Labels<'_>, value: impl Display) {
        write_sample(self.text, self.name, "", labels, None, value);
    }

    /// A histogram's buckets (upper bounds in seconds), sum (seconds) and count.
    pub fn histogram(&mut self, labels: Labels<'_>, histogram: &Histogram) {
        for (bound_micros, count) in histogram.cumulative() {
            let bound = (bound_micros as f64 / 1e6).to_string();
            write_sample(self.text, self.name, "_bucket", labels, Some(&bound), count);
        }
        let count = histogram.count();
        write_sample(self.text, self.name, "_bucket", labels, Some("+Inf"), count);
        let sum = histogram.sum().as_secs_f64();
        write_sample(self.text, self.name, "_sum", labels, None, sum);
        write_sample(self.text, self.name, "_count", labels, None, count);
    }
}

fn write_sample(
    text: &mut String,
    name: &str,
    suffix: &str,
    labels: Labels<'_>,
    le: Option<&str>,
    value: impl Display,
) {
    text.push_str(name);
    text.push_str(suffix);
    let le = le.map(|bound| ("le", bound));
    let mut all = labels.iter().copied().chain(le).peekable();
    if all.peek().is_some() {
        text.push('{');
        for (i, (label, value)) in all.enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!("{label}=\"{}\"", escape(value)));
        }
        text.push('}');
    }
    text.push_str(&format!(" {value}\n"));
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut out = Exposition::default();
        let mut family = out.family("demo_up", Kind::Gauge, "Whether it is up.\nReally.");
        family.sample(&[], 1);
        family.sample(&[("server", "a\"b\\c\nd"), ("port", "1")], 0.5);
        out.family("demo_total", Kind::Counter, "Things.")
            .sample(&[("reason", "x")], 7u64);
        assert_eq!(
            out.finish(),
            "# HELP demo_up Whether it is up.\\nReally.\n\
             # TYPE demo_up gauge\n\
             demo_up 1\n\
             demo_up{server=\"a\\\"b\\\\c\\nd\",port=\"1\"} 0.5\n\
             # HELP demo_total Things.\n\
             # TYPE demo_total counter\n\
             demo_total{reason=\"x\"} 7\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_in_seconds() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(300));
        histogram.observe(Duration::from_millis(2));
        let mut out = Exposition::default();
        out.family("demo_seconds", Kind::Histogram, "Latency.")
            .histogram(&[("server", "k3s")], &histogram);
        let text = out.finish();
        assert!(
            text.contains("demo_seconds_bucket{server=\"k3s\",le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("demo_seconds_bucket{server=\"k3s\",le=\"0.0025\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("demo_seconds_bucket{server=\"k3s\",le=\"10\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("demo_seconds_bucket{server=\"k3s\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("demo_seconds_sum{server=\"k3s\"} 0.0023\n"),
            "{text}"
        );
        assert!(
            text.contains("demo_seconds_count{server=\"k3s\"} 2\n"),
            "{text}"
        );
        let buckets = text.lines().filter(|line| line.contains("_bucket")).count();
        assert_eq!(buckets, Histogram::BOUNDS_MICROS.len() + 1);
    }
}
