//! The validated forms of a server's `[tls]` (termination), `[sni]` (routing by server name) and
//! `[backends_tls]` (TLS to the backends) tables.
//!
//! Plain data: versions and cipher suites are names the runtime maps to rustls's; what rustls
//! cannot do (TLS 1.0/1.1, CBC and RSA key exchange suites) was dropped, with a warning, by
//! validation.

use std::path::PathBuf;

use super::BindAddr;
use std::time::Duration;

use super::TlsFiles;

/// A TLS protocol version rustls implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// The settings shared by both ends: versions, TLS 1.2 cipher suites, tickets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsProtocol {
    /// `min_version`; default (and floor) TLS 1.2.
    pub min_version: TlsVersion,
    /// `max_version`; default TLS 1.3.
    pub max_version: TlsVersion,
    /// `ciphers`: the TLS 1.2 suites allowed, by their IANA (and Go) names, in the file's
    /// order. `None` allows every suite rustls has. As in Go, TLS 1.3 suites are not
    /// configurable: all of them are offered.
    pub tls12_suites: Option<Vec<String>>,
    /// `prefer_server_ciphers`, default false: the server's suite order wins over the client's.
    pub prefer_server_ciphers: bool,
    /// `session_tickets`, default false as in gobetween (Go's `SessionTicketsDisabled =
    /// !session_tickets`). Sessions still resume from the server's session cache.
    pub session_tickets: bool,
}

impl Default for TlsProtocol {
    fn default() -> Self {
        Self {
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            tls12_suites: None,
            prefer_server_ciphers: false,
            session_tickets: false,
        }
    }
}

/// `[servers.NAME.tls]`: terminate TLS from clients. gobetween does this for `protocol = "tls"`
/// and for `protocol = "tcp"` with a `[tls]` table alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsTermination {
    /// `cert_path` and `key_path`: the certificate served (to names not in `acme_hosts`).
    /// Re-read by every reload. Required without `acme_hosts`.
    pub certificate: Option<TlsFiles>,
    /// `acme_hosts` with the `[acme]` table: certificates obtained and renewed by betwixt.
    pub acme: Option<AcmeSettings>,
    pub protocol: TlsProtocol,
    /// `handshake_timeout` (betwixt; nginx's `ssl_handshake_timeout`), default 10s: how long
    /// a client may take from its first byte to a finished handshake.
    pub handshake_timeout: Duration,
}

/// `[servers.NAME.backends_tls]`: connect to the backends over TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendsTls {
    /// `ignore_verify`, default false: accept any backend certificate.
    pub ignore_verify: bool,
    /// `root_ca_cert_path`: the roots to verify against; absent: the system's.
    pub root_ca_cert_path: Option<PathBuf>,
    /// `cert_path` and `key_path`: a client certificate to present.
    pub client_certificate: Option<TlsFiles>,
    pub protocol: TlsProtocol,
}

/// `[servers.NAME.sni]`: pick backends by the server name of the client's TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniConfig {
    /// `read_timeout`, default 2s: how long a client may take to send its ClientHello.
    pub read_timeout: Duration,
    pub matching: HostnameMatching,
    pub unexpected: UnexpectedHostname,
}

/// `hostname_matching_strategy`: how a backend's `sni=` tag is compared with the name asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostnameMatching {
    /// Default: equal ignoring ASCII case.
    Exact,
    /// The tag is a regular expression searched in the name (unanchored, as Go's `MatchString`).
    Regexp,
}

/// `unexpected_hostname_strategy`: which backends a client gets when none matches its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnexpectedHostname {
    /// Default: backends without an `sni=` tag; a client that sent no name gets none.
    Default,
    /// None: the client is closed.
    Reject,
    /// Every backend.
    Any,
}

/// `[tls] acme_hosts` and the process-wide `[acme]` table: which names get a certificate from
/// an ACME CA, over HTTP-01 challenges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// `acme_hosts`, as written.
    pub hosts: Vec<String>,
    /// `[acme] http_bind`, default `:80`: where the CA's HTTP-01 requests are answered.
    pub http_bind: BindAddr,
    /// `[acme] cache_dir` (required): the account and each host's certificate and key.
    pub cache_dir: PathBuf,
    /// `[acme] directory_url` (betwixt), default Let's Encrypt's production directory.
    pub directory_url: String,
    /// `[acme] directory_ca_cert_path` (betwixt): roots for the directory's HTTPS.
    pub directory_ca_cert_path: Option<PathBuf>,
    /// `[acme] renew_after` (betwixt), default 60 days: a certificate this old is renewed
    /// (Let's Encrypt's last 90).
    pub renew_after: Duration,
}
