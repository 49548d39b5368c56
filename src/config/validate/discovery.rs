//! `[servers.NAME.discovery]`: only kind static is implemented; its `static_list` becomes the
//! server's backends. The other gobetween kinds are refused by name.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::value::{self, choice, given_keys, text};
use super::{Key, Report};
use crate::config::BackendSpec;
use crate::config::raw::RawDiscovery;
use crate::config::static_list::parse_backend;

/// Every discovery kind gobetween has, in its documentation's order.
const KINDS: [&str; 8] = [
    "static",
    "srv",
    "docker",
    "json",
    "exec",
    "plaintext",
    "consul",
    "lxd",
];

/// Keys every kind uses.
const COMMON_KEYS: [&str; 4] = ["kind", "failpolicy", "interval", "timeout"];

/// The server's backends from its discovery table; empty when something failed or when the
/// list is empty.
pub(super) fn backends(
    report: &mut Report<'_>,
    server: &Key,
    raw: Option<&RawDiscovery>,
) -> Vec<BackendSpec> {
    let key = server.child("discovery");
    let Some(raw) = raw else {
        report.error(
            &key,
            format!("missing; add a [{key}] table with kind = \"static\" and a static_list"),
        );
        return Vec::new();
    };
    check_common(report, &key, raw);
    let kind_key = key.child("kind");
    match text(&raw.kind) {
        Some("static") => {
            warn_foreign_keys(report, &key, raw);
            static_list(report, &key, raw)
        }
        None => {
            report.error(&kind_key, "missing; expected kind = \"static\"");
            Vec::new()
        }
        Some(kind) if KINDS.contains(&kind) => {
            report.error(
                &kind_key,
                format!(
                    "discovery kind {kind:?} is not supported by betwixt yet (supported: static)"
                ),
            );
            Vec::new()
        }
        Some(kind) => {
            report.error(
                &kind_key,
                format!(
                    "unknown discovery kind {kind:?}; gobetween has {} (betwixt supports static)",
                    KINDS.join(", ")
                ),
            );
            Vec::new()
        }
    }
}

/// `failpolicy`, `interval` and `timeout`, checked for every kind (static ignores them).
fn check_common(report: &mut Report<'_>, key: &Key, raw: &RawDiscovery) {
    let policies = [("keeplast", ()), ("setempty", ())];
    choice(
        report,
        &key.child("failpolicy"),
        &raw.failpolicy,
        (),
        &policies,
    );
    for (name, value) in [("interval", &raw.interval), ("timeout", &raw.timeout)] {
        if let Some(text) = text(value) {
            value::duration(report, &key.child(name), text);
        }
    }
}

/// Warns about keys of other discovery kinds in a static table.
fn warn_foreign_keys(report: &mut Report<'_>, key: &Key, raw: &RawDiscovery) {
    for name in given_keys(raw) {
        if name != "static_list" && !COMMON_KEYS.contains(&name.as_str()) {
            report.warn(&key.child(&name), "ignored for kind static");
        }
    }
}

/// Each entry parsed; a malformed or repeated entry is an error under its index. Repeats are
/// found through a map by target, so a list of thousands of backends (posted to the API,
/// validated while reloads wait) costs time in proportion to its length.
fn static_list(report: &mut Report<'_>, key: &Key, raw: &RawDiscovery) -> Vec<BackendSpec> {
    let list_key = key.child("static_list");
    let entries = raw.static_list.as_deref().unwrap_or_default();
    if entries.is_empty() {
        // Valid in gobetween: the server listens and closes every client until a reload or
        // the API gives it backends.
        let problem = if raw.static_list.is_none() {
            "missing"
        } else {
            "empty"
        };
        report.warn(
            &list_key,
            format!("{problem}: the server has no backends and closes every client at once"),
        );
        return Vec::new();
    }
    let mut backends: Vec<BackendSpec> = Vec::with_capacity(entries.len());
    let mut first_index: HashMap<String, usize> = HashMap::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let entry_key = list_key.index(index);
        let backend = match parse_backend(entry) {
            Ok(backend) => backend,
            Err(error) => {
                report.error(&entry_key, error.to_string());
                continue;
            }
        };
        match first_index.entry(backend.target()) {
            Entry::Occupied(first) => report.error(
                &entry_key,
                format!(
                    "{entry:?} repeats backend {}, already at static_list[{}]",
                    first.key(),
                    first.get()
                ),
            ),
            Entry::Vacant(slot) => {
                slot.insert(index);
                backends.push(backend);
            }
        }
    }
    backends
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw::RawDiscovery;

    /// 20,000 distinct IPv4 backends, `10.0.0.0` upwards.
    fn entries(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| format!("10.{}.{}.{}:6443", i >> 16, (i >> 8) & 0xff, i & 0xff))
            .collect()
    }

    #[test]
    fn twenty_thousand_backends_with_repeats_named_by_both_positions() {
        let mut list = entries(20_000);
        list[12_345] = list[10_000].clone();
        list[19_999] = format!("{} weight=2", list[3]);
        let raw = RawDiscovery {
            kind: Some("static".into()),
            static_list: Some(list.clone()),
            ..RawDiscovery::default()
        };
        let mut report = Report::new("t.toml");
        let server = Key::server("big");
        let backends = backends(&mut report, &server, Some(&raw));

        assert_eq!(backends.len(), 19_998);
        assert_eq!(backends[0].target(), "10.0.0.0:6443");
        assert_eq!(backends[19_997].target(), list[19_998]);
        let messages: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "t.toml: servers.big.discovery.static_list[12345]: \"10.0.39.16:6443\" repeats \
                 backend 10.0.39.16:6443, already at static_list[10000]",
                "t.toml: servers.big.discovery.static_list[19999]: \"10.0.0.3:6443 weight=2\" \
                 repeats backend 10.0.0.3:6443, already at static_list[3]",
            ]
        );
    }
}
