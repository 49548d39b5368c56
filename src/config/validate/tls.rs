//! A server's `[tls]`, `[backends_tls]` and `[sni]` tables.
//!
//! gobetween hands versions and cipher names to Go's `crypto/tls`; betwixt uses rustls, which
//! has no TLS 1.0/1.1 and no CBC, RC4, 3DES or RSA key exchange suite. Such a version or
//! suite is dropped with a warning naming it, and a table left with nothing usable is an
//! error. A name Go does not know either is an error (gobetween skipped it silently).

use std::path::PathBuf;
use std::time::Duration;

use super::value::{self, choice, text};
use super::{Key, Report, bind};
use crate::config::raw::{RawAcme, RawBackendsTls, RawSni, RawTls};
use crate::config::{
    AcmeSettings, BackendSpec, BackendsTls, HostnameMatching, SniConfig, TlsFiles, TlsProtocol,
    TlsTermination, TlsVersion, UnexpectedHostname,
};

/// `[sni] read_timeout` when absent, as in gobetween.
const DEFAULT_SNI_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// `[tls] handshake_timeout` when absent (nginx's `ssl_handshake_timeout` is 60s; a k3s
/// client finishes in milliseconds).
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[acme] directory_url` when absent: Let's Encrypt's production directory, gobetween's CA.
const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// `[acme] renew_after` when absent: 60 days, a month before a Let's Encrypt certificate ends.
const DEFAULT_ACME_RENEW_AFTER: Duration = Duration::from_secs(60 * 86_400);

/// Go's TLS 1.2 suite names that rustls implements, with the IANA name rustls uses.
const TLS12_SUITES: [(&str, &str); 8] = [
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// Go's TLS 1.3 suite names: Go never lets a config choose them, nor does betwixt.
const TLS13_SUITES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Go's suite names rustls does not implement, by why.
const DROPPED_SUITES: [&str; 16] = [
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// A version name as gobetween spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum GoVersion {
    Ssl3,
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

const VERSIONS: [(&str, GoVersion); 5] = [
    ("ssl3", GoVersion::Ssl3),
    ("tls1", GoVersion::Tls10),
    ("tls1.1", GoVersion::Tls11),
    ("tls1.2", GoVersion::Tls12),
    ("tls1.3", GoVersion::Tls13),
];

impl GoVersion {
    fn usable(self) -> Option<TlsVersion> {
        match self {
            Self::Ssl3 | Self::Tls10 | Self::Tls11 => None,
            Self::Tls12 => Some(TlsVersion::Tls12),
            Self::Tls13 => Some(TlsVersion::Tls13),
        }
    }
}

/// The raw keys both TLS tables share.
struct ProtocolKeys<'a> {
    min_version: &'a Option<String>,
    max_version: &'a Option<String>,
    ciphers: &'a Option<Vec<String>>,
    prefer_server_ciphers: Option<bool>,
    session_tickets: Option<bool>,
}

/// `[tls]`: termination needs a certificate and its key, or `acme_hosts` with `[acme]`.
pub(super) fn termination(
    report: &mut Report<'_>,
    key: &Key,
    raw: &RawTls,
    acme: Option<&RawAcme>,
) -> Option<TlsTermination> {
    let protocol = protocol(
        report,
        key,
        &ProtocolKeys {
            min_version: &raw.min_version,
            max_version: &raw.max_version,
            ciphers: &raw.ciphers,
            prefer_server_ciphers: raw.prefer_server_ciphers,
            session_tickets: raw.session_tickets,
        },
    );
    let hosts: Vec<String> = raw.acme_hosts.iter().flatten().cloned().collect();
    let acme = if hosts.is_empty() {
        None
    } else {
        Some(acme_settings(
            report,
            &key.child("acme_hosts"),
            hosts,
            acme,
        )?)
    };
    let given = text(&raw.cert_path).is_some() || text(&raw.key_path).is_some();
    let certificate = if given || acme.is_none() {
        Some(files(report, key, &raw.cert_path, &raw.key_path, true)?)
    } else {
        None
    };
    let handshake_timeout = positive_duration(
        report,
        &key.child("handshake_timeout"),
        &raw.handshake_timeout,
        DEFAULT_HANDSHAKE_TIMEOUT,
        "a client that stalls mid-handshake would hold its connection forever",
    );
    Some(TlsTermination {
        certificate,
        acme,
        protocol: protocol?,
        handshake_timeout,
    })
}

/// `acme_hosts` (at `key`) with the `[acme]` table.
fn acme_settings(
    report: &mut Report<'_>,
    key: &Key,
    hosts: Vec<String>,
    raw: Option<&RawAcme>,
) -> Option<AcmeSettings> {
    let acme = Key::root("acme");
    let Some(raw) = raw else {
        report.error(key, "needs an [acme] table with cache_dir");
        return None;
    };
    for (index, host) in hosts.iter().enumerate() {
        let valid = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            report.error(&key.index(index), format!("{host:?} is not a DNS name"));
        }
    }
    if let Some(challenge) = text(&raw.challenge)
        && challenge != "http"
    {
        report.error(
            &acme.child("challenge"),
            format!("unknown challenge {challenge:?}; expected http (HTTP-01, as gobetween)"),
        );
    }
    let http_bind = bind::parse_bind(
        report,
        &acme.child("http_bind"),
        text(&raw.http_bind).unwrap_or(":80"),
    );
    let Some(cache_dir) = text(&raw.cache_dir) else {
        report.error(
            &acme.child("cache_dir"),
            "missing; the account and certificates are kept there",
        );
        return None;
    };
    let renew_after = match text(&raw.renew_after) {
        None => DEFAULT_ACME_RENEW_AFTER,
        Some(text) => value::duration(report, &acme.child("renew_after"), text)?,
    };
    Some(AcmeSettings {
        hosts,
        http_bind: http_bind?,
        cache_dir: PathBuf::from(cache_dir),
        directory_url: text(&raw.directory_url).unwrap_or(LETS_ENCRYPT).to_owned(),
        directory_ca_cert_path: text(&raw.directory_ca_cert_path).map(PathBuf::from),
        renew_after,
    })
}

/// `[backends_tls]`.
pub(super) fn backends(
    report: &mut Report<'_>,
    key: &Key,
    raw: &RawBackendsTls,
) -> Option<BackendsTls> {
    let protocol = protocol(
        report,
        key,
        &ProtocolKeys {
            min_version: &raw.min_version,
            max_version: &raw.max_version,
            ciphers: &raw.ciphers,
            prefer_server_ciphers: raw.prefer_server_ciphers,
            session_tickets: raw.session_tickets,
        },
    );
    let given = text(&raw.cert_path).is_some() || text(&raw.key_path).is_some();
    let client_certificate = if given {
        Some(files(report, key, &raw.cert_path, &raw.key_path, false)?)
    } else {
        None
    };
    let ignore_verify = raw.ignore_verify.unwrap_or(false);
    let root_ca_cert_path = text(&raw.root_ca_cert_path).map(PathBuf::from);
    if ignore_verify && root_ca_cert_path.is_some() {
        report.warn(
            &key.child("root_ca_cert_path"),
            "ignored: ignore_verify = true verifies no certificate",
        );
    }
    Some(BackendsTls {
        ignore_verify,
        root_ca_cert_path,
        client_certificate,
        protocol: protocol?,
    })
}

/// `cert_path` and `key_path`, both or (unless `required`) neither.
fn files(
    report: &mut Report<'_>,
    key: &Key,
    cert: &Option<String>,
    private_key: &Option<String>,
    required: bool,
) -> Option<TlsFiles> {
    match (text(cert), text(private_key)) {
        (Some(cert), Some(private_key)) => Some(TlsFiles {
            cert_path: PathBuf::from(cert),
            key_path: PathBuf::from(private_key),
        }),
        (cert, _) => {
            let missing = if cert.is_some() {
                "key_path"
            } else {
                "cert_path"
            };
            let why = if required {
                "missing; TLS termination needs cert_path and key_path (PEM files)"
            } else {
                "missing; cert_path and key_path must be given together"
            };
            report.error(&key.child(missing), why);
            None
        }
    }
}

fn protocol(report: &mut Report<'_>, key: &Key, raw: &ProtocolKeys<'_>) -> Option<TlsProtocol> {
    let min = version(report, &key.child("min_version"), raw.min_version);
    let max = version(report, &key.child("max_version"), raw.max_version);
    let min_version = match min {
        Some(version) => version.usable().unwrap_or_else(|| {
            report.warn(
                &key.child("min_version"),
                format!(
                    "{:?} is below TLS 1.2, which rustls does not implement: TLS 1.0 and 1.1 \
                     are dropped, TLS 1.2 is the minimum",
                    raw.min_version.as_deref().unwrap_or_default()
                ),
            );
            TlsVersion::Tls12
        }),
        None => TlsVersion::Tls12,
    };
    let max_version = match max {
        Some(version) => {
            let Some(usable) = version.usable() else {
                report.error(
                    &key.child("max_version"),
                    format!(
                        "{:?} leaves no usable version: rustls implements TLS 1.2 and 1.3 only",
                        raw.max_version.as_deref().unwrap_or_default()
                    ),
                );
                return None;
            };
            usable
        }
        None => TlsVersion::Tls13,
    };
    if min_version > max_version {
        report.error(
            &key.child("min_version"),
            "is above max_version: no version is left",
        );
        return None;
    }
    let tls12_suites = raw
        .ciphers
        .as_ref()
        .filter(|names| !names.is_empty())
        .map(|names| ciphers(report, &key.child("ciphers"), names));
    if let Some(kept) = &tls12_suites
        && kept.is_empty()
    {
        if max_version == TlsVersion::Tls12 {
            report.error(
                &key.child("ciphers"),
                "no cipher suite is left for TLS 1.2, the only version allowed",
            );
            return None;
        }
        report.warn(
            &key.child("ciphers"),
            "no TLS 1.2 cipher suite is left: only TLS 1.3 handshakes can succeed",
        );
    }
    Some(TlsProtocol {
        min_version,
        max_version,
        tls12_suites,
        prefer_server_ciphers: raw.prefer_server_ciphers.unwrap_or(false),
        session_tickets: raw.session_tickets.unwrap_or(false),
    })
}

fn version(report: &mut Report<'_>, key: &Key, raw: &Option<String>) -> Option<GoVersion> {
    text(raw)?;
    choice(
        report,
        key,
        raw,
        None,
        &VERSIONS.map(|(name, v)| (name, Some(v))),
    )
}

/// The TLS 1.2 suites of `ciphers` rustls can use, by IANA name; the rest is reported.
fn ciphers(report: &mut Report<'_>, key: &Key, names: &[String]) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let at = key.index(index);
        if let Some((_, iana)) = TLS12_SUITES.iter().find(|(go, _)| go == name) {
            if !kept.iter().any(|known| known == iana) {
                kept.push((*iana).to_owned());
            }
        } else if TLS13_SUITES.contains(&name.as_str()) {
            report.warn(
                &at,
                format!("{name:?} ignored: TLS 1.3 suites are always enabled (as in Go)"),
            );
        } else if DROPPED_SUITES.contains(&name.as_str()) {
            let why = if name.starts_with("TLS_RSA_") {
                "RSA key exchange (no forward secrecy)"
            } else {
                "a CBC, RC4 or 3DES suite"
            };
            report.warn(
                &at,
                format!("{name:?} dropped: {why}, which rustls does not implement"),
            );
        } else {
            report.error(
                &at,
                format!(
                    "unknown cipher suite {name:?}; expected a Go crypto/tls name such as \
                     \"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\""
                ),
            );
        }
    }
    kept
}

/// A duration key that must be above 0 (`why` says what 0 would do); `default` when absent.
fn positive_duration(
    report: &mut Report<'_>,
    key: &Key,
    raw: &Option<String>,
    default: Duration,
    why: &str,
) -> Duration {
    let duration = text(raw)
        .and_then(|timeout| value::duration(report, key, timeout))
        .unwrap_or(default);
    if duration.is_zero() {
        report.error(key, format!("must be above 0: {why}"));
    }
    duration
}

/// `[sni]` of the server at `server`; with `regexp` matching, every backend's `sni=` tag must
/// be a valid pattern.
pub(super) fn sni(
    report: &mut Report<'_>,
    server: &Key,
    raw: &RawSni,
    backends: &[BackendSpec],
) -> SniConfig {
    let key = &server.child("sni");
    let read_timeout = positive_duration(
        report,
        &key.child("read_timeout"),
        &raw.read_timeout,
        DEFAULT_SNI_READ_TIMEOUT,
        "a client that never sends its ClientHello would hold its connection forever",
    );
    let matching = choice(
        report,
        &key.child("hostname_matching_strategy"),
        &raw.hostname_matching_strategy,
        HostnameMatching::Exact,
        &[
            ("exact", HostnameMatching::Exact),
            ("regexp", HostnameMatching::Regexp),
        ],
    );
    let unexpected = choice(
        report,
        &key.child("unexpected_hostname_strategy"),
        &raw.unexpected_hostname_strategy,
        UnexpectedHostname::Default,
        &[
            ("default", UnexpectedHostname::Default),
            ("reject", UnexpectedHostname::Reject),
            ("any", UnexpectedHostname::Any),
        ],
    );
    if matching == HostnameMatching::Regexp {
        let list = server.child("discovery").child("static_list");
        for (index, backend) in backends.iter().enumerate() {
            if let Some(pattern) = &backend.sni
                && let Err(error) = regex::Regex::new(pattern)
            {
                report.error(
                    &list.index(index),
                    format!("sni={pattern:?} is not a valid regular expression: {error}"),
                );
            }
        }
    }
    SniConfig {
        read_timeout,
        matching,
        unexpected,
    }
}
