//! gobetween's probe check: send `probe_send`, read a reply, compare it with `probe_recv`.
//!
//! Rules as in gobetween 0.8: `probe_send` and `probe_recv` are required and decoded as Go
//! escapes, except that a regexp `probe_recv` is a pattern (Go regexp syntax, which has its own
//! escapes); regexp needs `probe_recv_len`, the bytes to read. Differences: `probe_protocol`
//! defaults to tcp (gobetween requires it), starts_with accepts a `probe_recv_len` at least
//! as long as `probe_recv` (gobetween refuses any), and `probe_recv_len` is at most 64 KiB
//! (gobetween allocates whatever it says on every check).

use regex::bytes::RegexBuilder;

use super::value::{self, choice, text};
use super::{Key, Report, escape, tls_check};
use crate::config::raw::RawHealthcheck;
use crate::config::{ProbeCheck, ProbeProtocol, ProbeStrategy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    StartsWith,
    Regexp,
}

/// The probe settings of a healthcheck table of kind probe.
pub(super) fn probe(report: &mut Report<'_>, key: &Key, raw: &RawHealthcheck) -> ProbeCheck {
    let protocol = protocol(report, key, raw);
    let strategies = [
        ("starts_with", Strategy::StartsWith),
        ("regexp", Strategy::Regexp),
    ];
    let strategy_key = key.child("probe_strategy");
    let strategy = choice(
        report,
        &strategy_key,
        &raw.probe_strategy,
        Strategy::StartsWith,
        &strategies,
    );
    let send = required(report, key, "probe_send", &raw.probe_send)
        .map(|text| decoded(report, &key.child("probe_send"), text))
        .unwrap_or_default();
    let recv_text = required(report, key, "probe_recv", &raw.probe_recv).unwrap_or_default();
    let len_key = key.child("probe_recv_len");
    let recv_len = raw
        .probe_recv_len
        .and_then(|len| value::unsigned(report, &len_key, len))
        .map_or(0, |len| len as usize);
    if recv_len > ProbeCheck::MAX_RECV_LEN {
        let message = format!(
            "{recv_len} bytes is more than the limit of {} (64 KiB); a probe compares a \
             short answer",
            ProbeCheck::MAX_RECV_LEN
        );
        report.error(&len_key, message);
    }
    let (strategy, recv) = match strategy {
        Strategy::StartsWith => {
            let recv = decoded(report, &key.child("probe_recv"), recv_text);
            if recv_len > 0 && recv_len < recv.len() {
                let message = format!(
                    "{recv_len} bytes is shorter than probe_recv ({} bytes): the probe could \
                     never pass; omit it to read exactly probe_recv's length",
                    recv.len()
                );
                report.error(&len_key, message);
            }
            (ProbeStrategy::StartsWith, recv)
        }
        Strategy::Regexp => (
            regexp(report, key, recv_text, recv_len),
            recv_text.as_bytes().to_vec(),
        ),
    };
    ProbeCheck {
        protocol,
        strategy,
        send,
        recv,
        recv_len,
    }
}

fn protocol(report: &mut Report<'_>, key: &Key, raw: &RawHealthcheck) -> ProbeProtocol {
    match text(&raw.probe_protocol) {
        None | Some("tcp") => ProbeProtocol::Tcp,
        Some("udp") => ProbeProtocol::Udp,
        Some("tls") => ProbeProtocol::Tls(tls_check::tls(report, key, raw)),
        Some(other) => {
            report.error(
                &key.child("probe_protocol"),
                format!("unknown value {other:?}; expected tcp, udp or tls"),
            );
            ProbeProtocol::Tcp
        }
    }
}

fn required<'a>(
    report: &mut Report<'_>,
    key: &Key,
    name: &str,
    value: &'a Option<String>,
) -> Option<&'a str> {
    let found = text(value);
    if found.is_none() {
        report.error(
            &key.child(name),
            "missing; kind probe needs probe_send and probe_recv",
        );
    }
    found
}

fn decoded(report: &mut Report<'_>, key: &Key, text: &str) -> Vec<u8> {
    escape::decode(text).unwrap_or_else(|problem| {
        report.error(key, format!("{text:?} has an invalid escape: {problem}"));
        Vec::new()
    })
}

/// Compiles a regexp `probe_recv` (octal escapes on, as in Go) and checks `probe_recv_len`.
fn regexp(report: &mut Report<'_>, key: &Key, pattern: &str, recv_len: usize) -> ProbeStrategy {
    if recv_len == 0 {
        report.error(
            &key.child("probe_recv_len"),
            "missing; probe_strategy regexp needs probe_recv_len, the bytes to read before matching",
        );
    }
    match RegexBuilder::new(pattern).octal(true).build() {
        Ok(regex) => ProbeStrategy::Regexp(regex),
        Err(error) => {
            let error = error.to_string();
            let reason = error.lines().last().unwrap_or_default();
            let reason = reason.trim().trim_start_matches("error: ");
            let message = format!("{pattern:?} is not a valid regular expression: {reason}");
            report.error(&key.child("probe_recv"), message);
            ProbeStrategy::StartsWith
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::healthcheck::tests::errors;

    #[test]
    fn probe_recv_len_over_64_kib_is_refused() {
        let probe = |len: u64| {
            errors(&format!(
                "kind = \"probe\"\ninterval = \"2s\"\nprobe_send = \"x\"\nprobe_recv = \"^OK\"\n\
                 probe_strategy = \"regexp\"\nprobe_recv_len = {len}"
            ))
        };
        assert!(probe(65_536).is_empty());
        assert_eq!(
            probe(65_537),
            [
                "gobetween.toml: servers.k3s.healthcheck.probe_recv_len: 65537 bytes is more than \
              the limit of 65536 (64 KiB); a probe compares a short answer"
            ]
        );
        assert_eq!(probe(4_294_967_295).len(), 1);
    }
}
