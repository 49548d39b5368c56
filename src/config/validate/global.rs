//! Process-wide sections: `[logging]`, `[api]`, `[metrics]`, `[betwixt]`, and the accepted but
//! ignored `[profiler]`, and `[acme]` when no server uses it.

use std::path::PathBuf;
use std::time::Duration;

use super::value::{self, Given, choice, text};
use super::{Key, Report};
use crate::config::raw::{RawApi, RawBetwixt, RawConfig, RawLogging, RawMetrics};
use crate::config::{
    AccessLogConfig, AccessLogFormat, AccessLogOutput, ApiConfig, BasicAuth, ForwardingMode,
    LogFormat, LogLevel, LogOutput, LoggingConfig, MetricsConfig, RuntimeConfig, TlsFiles,
};

/// `[api] bind` when absent: loopback only. gobetween listens on every interface (`:8888`),
/// which hands whoever reaches the host the power to remove servers and drain backends.
const DEFAULT_API_BIND: &str = "127.0.0.1:8888";
/// `[metrics] bind` when absent.
const DEFAULT_METRICS_BIND: &str = ":9284";
/// `[betwixt] shutdown_timeout` when absent.
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// `[betwixt] pipe_size`: allowed range and default, in bytes.
const PIPE_SIZE: (i64, i64, i64) = (4096, 16 << 20, 1 << 20);
/// `[betwixt] copy_buffer_size`: allowed range and default, in bytes.
const COPY_BUFFER_SIZE: (i64, i64, i64) = (1024, 16 << 20, 1 << 20);

/// logrus's level names, which gobetween accepts, case-insensitively.
const LEVELS: [(&str, LogLevel); 8] = [
    ("trace", LogLevel::Trace),
    ("debug", LogLevel::Debug),
    ("info", LogLevel::Info),
    ("warn", LogLevel::Warn),
    ("warning", LogLevel::Warn),
    ("error", LogLevel::Error),
    ("fatal", LogLevel::Error),
    ("panic", LogLevel::Error),
];

/// `[logging]`: level info, output stdout, format text unless set.
pub(super) fn logging(report: &mut Report<'_>, raw: Option<&RawLogging>) -> LoggingConfig {
    let raw = raw.cloned().unwrap_or_default();
    let key = Key::root("logging");
    let level = raw.level.as_ref().map(|level| level.to_ascii_lowercase());
    let level = choice(report, &key.child("level"), &level, LogLevel::Info, &LEVELS);
    let output = match text(&raw.output) {
        None | Some("stdout") => LogOutput::Stdout,
        Some("stderr") => LogOutput::Stderr,
        Some(path) => LogOutput::File(PathBuf::from(path)),
    };
    let formats = [
        ("text", LogFormat::Text),
        ("json", LogFormat::Json),
        ("gobetween-text", LogFormat::GobetweenText),
        ("gobetween-json", LogFormat::GobetweenJson),
    ];
    let format = choice(
        report,
        &key.child("format"),
        &raw.format,
        LogFormat::Text,
        &formats,
    );
    let access_log = access_log(report, &key, &raw);
    LoggingConfig {
        level,
        output,
        format,
        access_log,
    }
}

/// `access_log` (a path, or "log" for the main log) and `access_log_format`.
fn access_log(report: &mut Report<'_>, key: &Key, raw: &RawLogging) -> Option<AccessLogConfig> {
    let formats = [
        ("text", AccessLogFormat::Text),
        ("json", AccessLogFormat::Json),
    ];
    let format_key = key.child("access_log_format");
    let format = choice(
        report,
        &format_key,
        &raw.access_log_format,
        AccessLogFormat::Text,
        &formats,
    );
    let Some(output) = text(&raw.access_log) else {
        if text(&raw.access_log_format).is_some() {
            report.warn(&format_key, "ignored: no access_log is set");
        }
        return None;
    };
    let output = match output {
        "log" => AccessLogOutput::MainLog,
        path if path.ends_with('/') => {
            report.error(
                &key.child("access_log"),
                format!(
                    "{path:?} names a directory; expected a file path, or \"log\" for the main log"
                ),
            );
            return None;
        }
        path => AccessLogOutput::File(PathBuf::from(path)),
    };
    Some(AccessLogConfig { output, format })
}

/// `[api]`: disabled, bound to `127.0.0.1:8888`, no CORS, exec, auth or TLS unless set.
pub(super) fn api(report: &mut Report<'_>, raw: Option<&RawApi>) -> ApiConfig {
    let raw = raw.cloned().unwrap_or_default();
    let key = Key::root("api");
    let basic_auth = raw.basic_auth.as_ref().and_then(|auth| {
        let key = key.child("basic_auth");
        let login = required(report, &key, "login", &auth.login);
        let password = required(report, &key, "password", &auth.password);
        Some(BasicAuth {
            login: login?,
            password: password?,
        })
    });
    let tls = raw.tls.as_ref().and_then(|tls| {
        let key = key.child("tls");
        let cert_path = required(report, &key, "cert_path", &tls.cert_path);
        let key_path = required(report, &key, "key_path", &tls.key_path);
        Some(TlsFiles {
            cert_path: cert_path?.into(),
            key_path: key_path?.into(),
        })
    });
    ApiConfig {
        enabled: raw.enabled.unwrap_or(false),
        bind: text(&raw.bind).unwrap_or(DEFAULT_API_BIND).to_owned(),
        cors: raw.cors.unwrap_or(false),
        allow_exec: raw.allow_exec.unwrap_or(false),
        basic_auth,
        tls,
    }
}

/// A string key that must be present and non-empty once its table is.
fn required(
    report: &mut Report<'_>,
    table: &Key,
    name: &str,
    value: &Option<String>,
) -> Option<String> {
    let found = text(value).map(str::to_owned);
    if found.is_none() {
        report.error(
            &table.child(name),
            format!("missing; [{table}] needs {name}"),
        );
    }
    found
}

/// `[metrics]`: disabled, bound to `:9284` unless set.
pub(super) fn metrics(raw: Option<&RawMetrics>) -> MetricsConfig {
    let raw = raw.cloned().unwrap_or_default();
    MetricsConfig {
        enabled: raw.enabled.unwrap_or(false),
        bind: text(&raw.bind).unwrap_or(DEFAULT_METRICS_BIND).to_owned(),
    }
}

/// `[betwixt]`: shutdown 30s, forwarding auto, 1 MiB pipes and copy buffers (the most a
/// buffer grows to; it starts at 16 KiB) unless set.
pub(super) fn runtime(report: &mut Report<'_>, raw: Option<&RawBetwixt>) -> RuntimeConfig {
    let raw = raw.cloned().unwrap_or_default();
    let key = Key::root("betwixt");
    let shutdown_timeout = match text(&raw.shutdown_timeout) {
        None => DEFAULT_SHUTDOWN_TIMEOUT,
        Some(text) => value::duration(report, &key.child("shutdown_timeout"), text)
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
    };
    let modes = [
        ("auto", ForwardingMode::Auto),
        ("splice", ForwardingMode::Splice),
        ("copy", ForwardingMode::Copy),
        ("sockmap", ForwardingMode::Sockmap),
    ];
    let forwarding = choice(
        report,
        &key.child("forwarding"),
        &raw.forwarding,
        ForwardingMode::Auto,
        &modes,
    );
    let pipe_size = value::bounded(report, &key.child("pipe_size"), raw.pipe_size, PIPE_SIZE);
    let copy_buffer_size = value::bounded(
        report,
        &key.child("copy_buffer_size"),
        raw.copy_buffer_size,
        COPY_BUFFER_SIZE,
    );
    RuntimeConfig {
        shutdown_timeout,
        forwarding,
        pipe_size: usize::try_from(pipe_size).unwrap_or(usize::MAX),
        copy_buffer_size: usize::try_from(copy_buffer_size).unwrap_or(usize::MAX),
        forwarding_memory: super::memory::forwarding_memory(report, &key, raw.forwarding_memory),
    }
}

/// Warns about sections betwixt accepts for compatibility but does not act on.
pub(super) fn ignored_sections(report: &mut Report<'_>, raw: &RawConfig) {
    if raw
        .profiler
        .as_ref()
        .is_some_and(|profiler| profiler.enabled.given())
    {
        report.warn(
            &Key::root("profiler"),
            "ignored: betwixt has no pprof profiler",
        );
    }
    let acme_hosts = raw.servers.values().any(|server| {
        server.tls.as_ref().is_some_and(|tls| {
            tls.acme_hosts
                .as_ref()
                .is_some_and(|hosts| !hosts.is_empty())
        })
    });
    if raw.acme.is_some() && !acme_hosts {
        report.warn(
            &Key::root("acme"),
            "ignored: no server's [tls] has acme_hosts",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_of(raw: RawApi) -> (ApiConfig, Vec<String>) {
        let mut report = Report::new("t.toml");
        let config = api(&mut report, Some(&raw));
        let errors = report.errors.iter().map(ToString::to_string).collect();
        (config, errors)
    }

    #[test]
    fn api_enabled_without_bind_listens_on_loopback_only() {
        let (config, errors) = api_of(RawApi {
            enabled: Some(true),
            ..RawApi::default()
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.bind, "127.0.0.1:8888");
        assert!(!config.allow_exec && !config.cors);
        let (config, _) = api_of(RawApi {
            enabled: Some(true),
            bind: Some(":8888".into()),
            allow_exec: Some(true),
            ..RawApi::default()
        });
        assert_eq!(config.bind, ":8888");
        assert!(config.allow_exec);
    }
}
