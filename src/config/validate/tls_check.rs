//! betwixt's TLS settings of a check (`tls_*` keys, for kinds tls and https and probe over tls)
//! and the https kind's `https_path` and `https_expected_status`.

use std::path::PathBuf;

use super::value::text;
use super::{Key, Report};
use crate::config::raw::RawHealthcheck;
use crate::config::{HttpsCheck, TlsCheck, TlsFiles};

/// `https_path` when absent: k3s's supervisor answers it without credentials.
const DEFAULT_HTTPS_PATH: &str = "/ping";
/// `https_expected_status` when absent.
const DEFAULT_HTTPS_STATUS: u16 = 200;

/// The `tls_*` keys; a client certificate needs both its files.
pub(super) fn tls(report: &mut Report<'_>, key: &Key, raw: &RawHealthcheck) -> TlsCheck {
    let cert = text(&raw.tls_cert_path);
    let private_key = text(&raw.tls_key_path);
    let client_cert = match (cert, private_key) {
        (Some(cert), Some(private_key)) => Some(TlsFiles {
            cert_path: PathBuf::from(cert),
            key_path: PathBuf::from(private_key),
        }),
        (None, None) => None,
        (given, _) => {
            let missing = if given.is_some() {
                "tls_key_path"
            } else {
                "tls_cert_path"
            };
            report.error(
                &key.child(missing),
                "missing; tls_cert_path and tls_key_path must be given together",
            );
            None
        }
    };
    let skip_verify = raw.tls_skip_verify.unwrap_or(false);
    let ca_cert_path = text(&raw.tls_ca_cert_path).map(PathBuf::from);
    if skip_verify && ca_cert_path.is_some() {
        report.warn(
            &key.child("tls_ca_cert_path"),
            "ignored: tls_skip_verify = true verifies no certificate",
        );
    }
    TlsCheck {
        ca_cert_path,
        skip_verify,
        server_name: text(&raw.tls_server_name).map(str::to_owned),
        client_cert,
    }
}

/// Kind https: the TLS settings, a request path and the statuses that count as healthy.
pub(super) fn https(report: &mut Report<'_>, key: &Key, raw: &RawHealthcheck) -> HttpsCheck {
    let tls = tls(report, key, raw);
    let path = text(&raw.https_path).unwrap_or(DEFAULT_HTTPS_PATH);
    let path_key = key.child("https_path");
    if !path.starts_with('/') {
        report.error(
            &path_key,
            format!("{path:?} must start with '/', such as \"/ping\""),
        );
    } else if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        report.error(
            &path_key,
            format!("{path:?} must not contain spaces or control characters"),
        );
    }
    HttpsCheck {
        tls,
        path: path.to_owned(),
        expected_statuses: statuses(report, key, raw.https_expected_status.as_deref()),
    }
}

fn statuses(report: &mut Report<'_>, key: &Key, raw: Option<&[i64]>) -> Vec<u16> {
    let list_key = key.child("https_expected_status");
    let Some(raw) = raw else {
        return vec![DEFAULT_HTTPS_STATUS];
    };
    if raw.is_empty() {
        report.error(
            &list_key,
            "empty; list at least one HTTP status, such as [200]",
        );
    }
    let mut statuses = Vec::with_capacity(raw.len());
    for (index, status) in raw.iter().enumerate() {
        match u16::try_from(*status) {
            Ok(status) if (100..=599).contains(&status) => statuses.push(status),
            _ => report.error(
                &list_key.index(index),
                format!("{status} is not an HTTP status (100 to 599)"),
            ),
        }
    }
    statuses
}
