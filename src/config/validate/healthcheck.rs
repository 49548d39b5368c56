//! `[servers.NAME.healthcheck]`: the keys every kind shares, kind ping and exec, and warnings
//! for keys that belong to another kind. Probe is in [`super::probe`], tls and https in
//! [`super::tls_check`].

use std::time::Duration;

use super::value::{self, choice, given_keys, text};
use super::{Key, Report, probe, tls_check};
use crate::config::raw::RawHealthcheck;
use crate::config::{CheckKind, ExecCheck, HealthcheckConfig, InitialStatus};

/// `passive_fails` when absent.
const DEFAULT_PASSIVE_FAILS: u32 = 3;

/// Every kind betwixt accepts: gobetween's four, then betwixt's two.
const KINDS: [&str; 6] = ["ping", "probe", "exec", "none", "tls", "https"];

/// Which kinds use a kind-specific key, by key prefix.
const KEY_OWNERS: [(&str, &[&str], &str); 4] = [
    ("probe_", &["probe"], "probe"),
    ("exec_", &["exec"], "exec"),
    (
        "tls_",
        &["tls", "https", "probe"],
        "tls, https and probe over tls",
    ),
    ("https_", &["https"], "https"),
];

/// The check of one server; kind none when the table is absent.
pub(super) fn healthcheck(
    report: &mut Report<'_>,
    key: &Key,
    raw: Option<&RawHealthcheck>,
) -> HealthcheckConfig {
    let Some(raw) = raw else {
        return no_check();
    };
    let kind_key = key.child("kind");
    let kind = match text(&raw.kind) {
        Some(kind) if KINDS.contains(&kind) => kind,
        found => {
            let found = found.map_or("missing".to_owned(), |kind| {
                format!("unknown kind {kind:?}")
            });
            let expected = "expected ping, probe, exec or none (gobetween), or tls or https";
            report.error(&kind_key, format!("{found}; {expected}"));
            return no_check();
        }
    };
    warn_foreign_keys(report, key, raw, kind);
    if kind == "none" {
        return no_check();
    }
    let initial = [
        ("healthy", InitialStatus::Healthy),
        ("unhealthy", InitialStatus::Unhealthy),
    ];
    let passive_key = key.child("passive_fails");
    HealthcheckConfig {
        interval: interval(report, key, raw, kind),
        timeout: value::timeout(report, &key.child("timeout"), raw.timeout.as_deref(), None),
        fails: threshold(report, &key.child("fails"), raw.fails),
        passes: threshold(report, &key.child("passes"), raw.passes),
        initial_status: choice(
            report,
            &key.child("initial_status"),
            &raw.initial_status,
            InitialStatus::Healthy,
            &initial,
        ),
        passive_fails: raw
            .passive_fails
            .and_then(|count| value::unsigned(report, &passive_key, count))
            .unwrap_or(DEFAULT_PASSIVE_FAILS),
        kind: match kind {
            "probe" => CheckKind::Probe(probe::probe(report, key, raw)),
            "exec" => CheckKind::Exec(exec(report, key, raw)),
            "tls" => CheckKind::Tls(tls_check::tls(report, key, raw)),
            "https" => CheckKind::Https(tls_check::https(report, key, raw)),
            _ => CheckKind::Ping,
        },
    }
}

/// No active check: every backend is healthy, only discovery changes the set.
fn no_check() -> HealthcheckConfig {
    HealthcheckConfig {
        kind: CheckKind::None,
        interval: Duration::ZERO,
        timeout: None,
        fails: 1,
        passes: 1,
        initial_status: InitialStatus::Healthy,
        passive_fails: DEFAULT_PASSIVE_FAILS,
    }
}

/// The shortest `interval`: each check is a connection (and for exec a process) per backend,
/// and a verdict needs `fails` of them; checking more often loads the backends for no gain.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// `interval`: required, and at least [`MIN_INTERVAL`], for every kind but none.
fn interval(report: &mut Report<'_>, key: &Key, raw: &RawHealthcheck, kind: &str) -> Duration {
    let interval_key = key.child("interval");
    let Some(text) = text(&raw.interval) else {
        let message = format!("missing; kind {kind} needs an interval, such as \"2s\"");
        report.error(&interval_key, message);
        return Duration::ZERO;
    };
    match value::duration(report, &interval_key, text) {
        Some(interval) if interval.is_zero() => {
            report.error(
                &interval_key,
                format!("must be greater than 0 for kind {kind}"),
            );
            interval
        }
        Some(interval) if interval < MIN_INTERVAL => {
            report.error(
                &interval_key,
                format!("{text:?} is shorter than the minimum, {MIN_INTERVAL:?}"),
            );
            interval
        }
        Some(interval) => interval,
        None => Duration::ZERO,
    }
}

/// `fails` or `passes`: at least 1, default 1. Like gobetween, 0 means the default.
fn threshold(report: &mut Report<'_>, key: &Key, value: Option<i64>) -> u32 {
    match value {
        None => 1,
        Some(0) => {
            report.warn(key, "0 means the default, 1, as in gobetween");
            1
        }
        Some(count) if count < 0 => {
            report.error(key, format!("must be 1 or more, found {count}"));
            1
        }
        Some(count) => value::unsigned(report, key, count).unwrap_or(1),
    }
}

/// gobetween's exec check: `COMMAND HOST PORT`, output "1" healthy, "0" unhealthy by default.
///
/// `exec_command` is one program path, never split: gobetween passes the whole string to
/// `exec.Command` as the program, so `/opt/my checks/api.sh` works and `check.sh --fast` names
/// a program that does not exist (every check fails). The latter is accepted, as gobetween
/// accepts it, with a warning saying to move the arguments into a script.
fn exec(report: &mut Report<'_>, key: &Key, raw: &RawHealthcheck) -> ExecCheck {
    let command_key = key.child("exec_command");
    let command: Vec<String> = text(&raw.exec_command)
        .filter(|command| !command.trim().is_empty())
        .map(|command| vec![command.to_owned()])
        .unwrap_or_default();
    match command.first() {
        None => report.error(
            &command_key,
            "missing; kind exec needs a command, which runs as COMMAND HOST PORT",
        ),
        Some(program) if program.contains(char::is_whitespace) && !is_file(program) => {
            report.warn(
                &command_key,
                format!(
                    "{program:?} is run as one program path, as gobetween runs it, and no such file exists, so every check will fail; put the arguments in a script"
                ),
            );
        }
        Some(_) => {}
    }
    let output = |value: &Option<String>, default: &str| {
        value
            .clone()
            .filter(|text| !text.is_empty())
            .unwrap_or_else(|| default.to_owned())
    };
    let positive_output = output(&raw.exec_expected_positive_output, "1");
    let negative_output = output(&raw.exec_expected_negative_output, "0");
    if positive_output == negative_output {
        report.error(
            &key.child("exec_expected_negative_output"),
            format!("{negative_output:?} equals exec_expected_positive_output; they must differ"),
        );
    }
    ExecCheck {
        command,
        positive_output,
        negative_output,
    }
}

/// Whether `program` names an existing file, directly or through `PATH` (a name without `/`).
fn is_file(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Warns about keys that `kind` does not use, such as `probe_send` with kind ping.
fn warn_foreign_keys(report: &mut Report<'_>, key: &Key, raw: &RawHealthcheck, kind: &str) {
    let probe_over_tls = kind == "probe" && raw.probe_protocol.as_deref() == Some("tls");
    for name in given_keys(raw) {
        let owner = KEY_OWNERS
            .iter()
            .find(|(prefix, _, _)| name.starts_with(prefix));
        let message = match owner {
            Some((_, kinds, _)) if kinds.contains(&kind) => {
                if name.starts_with("tls_") && kind == "probe" && !probe_over_tls {
                    "ignored: probe_protocol is not tls".to_owned()
                } else {
                    continue;
                }
            }
            Some((_, _, owners)) => format!("ignored for kind {kind} (used by {owners})"),
            None if kind == "none" && name == "passive_fails" => {
                "ignored for kind none: only an active check can bring a backend back".to_owned()
            }
            None => continue,
        };
        report.warn(&key.child(&name), message);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use crate::config::{LoadOptions, load_str};

    /// The errors of a server whose healthcheck table holds `keys`; none when it loads.
    pub(in crate::config::validate) fn errors(keys: &str) -> Vec<String> {
        let text = format!(
            "[servers.k3s]\nbind = \":6443\"\n[servers.k3s.discovery]\nkind = \"static\"\n\
             static_list = [\"10.0.0.1:6443\"]\n[servers.k3s.healthcheck]\n{keys}\n"
        );
        match load_str("gobetween.toml", &text, &LoadOptions::default()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn an_interval_under_100ms_is_refused() {
        assert_eq!(
            errors("kind = \"ping\"\ninterval = \"99ms\""),
            [
                "gobetween.toml: servers.k3s.healthcheck.interval: \"99ms\" is shorter than the \
              minimum, 100ms"
            ]
        );
        assert_eq!(
            errors("kind = \"exec\"\nexec_command = \"true\"\ninterval = \"1us\"").len(),
            1
        );
        assert!(errors("kind = \"ping\"\ninterval = \"100ms\"").is_empty());
    }
}
