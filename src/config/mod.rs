//! Configuration: gobetween's TOML/JSON schema, read, parsed and validated into an immutable
//! [`Config`].
//!
//! Loading happens in three steps, one module each, so that every problem in a file is reported
//! at once and names the file, the server and the key:
//! 1. [`source`] reads the text and, with `-e`, substitutes `${NAME}` from the environment;
//! 2. [`raw`] deserialises it into [`raw::RawConfig`], a serde mirror of the file that records
//!    unknown keys instead of failing on them (gobetween ignores them, real configs carry them);
//! 3. [`validate`] turns the raw form into a typed [`Config`]: defaults merged into servers,
//!    durations in Go syntax ([`duration`]), backends in gobetween's `static_list` grammar
//!    ([`static_list`]), and features betwixt does not implement refused by name.
//!
//! A [`Config`] is plain data; the supervisor builds a runtime snapshot from it and a reload
//! builds a new one from a new `Config`.

mod balance;
mod builder;
mod discovery;
mod discovery_sources;
pub mod duration;
pub mod raw;
mod services;
pub mod source;
pub mod static_list;
mod tls;
pub mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub use balance::{BalanceKind, UnknownBalance};
pub use builder::{Builder, ServerBuilder};
pub use discovery::{
    DiscoveryConfig, DiscoveryKind, DnsProtocol, ExecDiscovery, FailPolicy, JsonDiscovery,
    JsonPaths, PlaintextDiscovery, SrvDiscovery,
};
pub use discovery_sources::{
    ConsulDiscovery, DiscoveryTls, DockerDiscovery, KubernetesDiscovery, KubernetesPort,
};
pub use source::{Format, LoadOptions, Loaded, load_file, load_str};
pub use tls::{
    AcmeSettings, BackendsTls, HostnameMatching, SniConfig, TlsProtocol, TlsTermination,
    TlsVersion, UnexpectedHostname,
};

/// The whole validated configuration of one betwixt process.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub logging: LoggingConfig,
    pub api: ApiConfig,
    pub metrics: MetricsConfig,
    /// betwixt's own process-wide settings, the `[betwixt]` table.
    pub runtime: RuntimeConfig,
    /// One entry per `[servers.NAME]`, ordered by name.
    pub servers: BTreeMap<String, ServerConfig>,
    /// The file as parsed, which this config was validated from: what `/dump` serialises and
    /// what the REST API edits (adding or removing a server) before validating it again.
    pub raw: raw::RawConfig,
}

impl Config {
    /// Reads and validates the TOML (or, by extension `.json`, JSON) file at `path`. Unknown
    /// keys are logged as warnings, as the daemon does.
    ///
    /// # Errors
    /// The file cannot be read, or every problem found in it, each naming the file and key.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigErrors> {
        let path = path.as_ref();
        let format = match path.extension().and_then(|extension| extension.to_str()) {
            Some("json") => Format::Json,
            _ => Format::Toml,
        };
        let options = LoadOptions {
            format,
            ..LoadOptions::default()
        };
        load_file(path, &options).map(Loaded::into_config_logging_warnings)
    }

    /// Validates a config written in TOML; messages name it `config.toml`.
    ///
    /// # Errors
    /// Every problem found, each naming its key.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        load_str("config.toml", text, &LoadOptions::default())
            .map(Loaded::into_config_logging_warnings)
    }
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    /// Default `info`. gobetween's logrus names `panic`, `fatal` map to `error`, `warning` to `warn`.
    pub level: LogLevel,
    /// Default stdout.
    pub output: LogOutput,
    /// Default text.
    pub format: LogFormat,
    /// betwixt's `access_log` and `access_log_format`; `None` (the default) logs no sessions.
    pub access_log: Option<AccessLogConfig>,
}

/// Where and how the access log writes one line per session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub output: AccessLogOutput,
    /// `access_log_format`, default text.
    pub format: AccessLogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogOutput {
    /// `access_log = "log"`: into the main log, as info events of target `access`.
    MainLog,
    /// Appended to; created when missing, never through a symbolic link.
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// Fields in a fixed order, separated by one space.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    Stdout,
    Stderr,
    /// Appended to; created when missing.
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// betwixt's own: time, level, module, message, `key=value` fields.
    Text,
    /// betwixt's own: one JSON object per line, fields flattened.
    Json,
    /// `gobetween-text`: `2006-01-02 15:04:05 [INFO ] (name): message`, as gobetween prints.
    GobetweenText,
    /// `gobetween-json`: logrus's JSON (`level`, `msg`, `name`, `time`).
    GobetweenJson,
}

/// `[api]`: gobetween's REST API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Default false.
    pub enabled: bool,
    /// Default `127.0.0.1:8888`: loopback, unlike gobetween's `:8888`, because the API can
    /// remove servers and disable backends.
    pub bind: String,
    /// Default false.
    pub cors: bool,
    /// `allow_exec`, default false (betwixt): whether `POST /servers/NAME` may add a server
    /// whose health check (or discovery) is of kind `exec`. Such a server runs a command as
    /// the daemon's user, so by default only the config file can define one and the API
    /// answers `403`.
    pub allow_exec: bool,
    pub basic_auth: Option<BasicAuth>,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub login: String,
    pub password: String,
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Default false.
    pub enabled: bool,
    /// Default `:9284`.
    pub bind: String,
}

/// `[betwixt]`: settings gobetween does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// `shutdown_timeout`, default 30s: how long SIGTERM waits for sessions to finish.
    pub shutdown_timeout: Duration,
    /// `forwarding`, default auto (splice where the kernel allows it).
    pub forwarding: ForwardingMode,
    /// `pipe_size`, default 1 MiB: the splice pipe capacity per active direction. Past the
    /// kernel's per-user pipe quota (`fs.pipe-user-pages-soft`) pipes keep a smaller size.
    pub pipe_size: usize,
    /// `copy_buffer_size`, default 1 MiB: the largest user-space buffer of an active
    /// direction; a burst starts with 16 KiB and grows while reads fill the buffer.
    pub copy_buffer_size: usize,
    /// `forwarding_memory`, default 256 MiB: the cap on what all sessions together hold in
    /// splice pipes and in copy buffers beyond their first 16 KiB. Past it a burst copies
    /// through a 16 KiB buffer instead of splicing or growing its buffer: slower, never
    /// refused. 0 means every burst copies that way.
    pub forwarding_memory: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardingMode {
    Auto,
    Splice,
    Copy,
    /// Established TCP sessions forwarded by a BPF program in the kernel; splice where the
    /// kernel refuses it.
    Sockmap,
}

/// One `[servers.NAME]` listener with `[defaults]` merged in.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub name: String,
    pub bind: BindAddr,
    /// Default weight.
    pub balance: BalanceKind,
    /// `max_connections`; `None` when 0 (unlimited).
    pub max_connections: Option<u32>,
    /// `client_idle_timeout`: close when the client sent nothing for this long. `None` when "0".
    pub client_idle_timeout: Option<Duration>,
    /// `backend_idle_timeout`: close when the backend sent nothing for this long. `None` when "0".
    pub backend_idle_timeout: Option<Duration>,
    /// `backend_connection_timeout`. Unset in the file: 5s (gobetween: none). `None` only when the
    /// file says "0", which a validation warning points out.
    pub backend_connection_timeout: Option<Duration>,
    /// betwixt's `connect_attempts`: how many backends one client connection may try. `None`
    /// (the default, or 0) tries every candidate once.
    pub connect_attempts: Option<u32>,
    /// betwixt's `close_sessions_on_backend_down`, default true: sessions on a backend marked
    /// down are closed so their clients reconnect through the balancer, once the next active
    /// check fails too (a backend back by then keeps them): within about `(fails + 1)`
    /// check intervals of a freeze.
    pub close_sessions_on_backend_down: bool,
    /// betwixt's `close_sessions_on_backend_removal`, default false: when a reload removes a
    /// backend its sessions drain; true closes them instead.
    pub close_sessions_on_backend_removal: bool,
    /// betwixt's `slow_start` (HAProxy's `slowstart`): a backend that comes back up, is added
    /// or enabled takes a share of new sessions growing from none to its full share over this
    /// period. `None` (the default, or "0") gives it its full share at once.
    pub slow_start: Option<Duration>,
    /// betwixt's `[rebalance]`; `None` (the default) never closes a session to spread load.
    pub rebalance: Option<Rebalance>,
    /// betwixt's `first_response_timeout` and `replay`: a backend that says nothing after
    /// the client's first flight is left for the next candidate, the first flight sent again.
    pub replay: ReplayConfig,
    /// `[proxy_protocol] version = "1"` or `"2"`.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// `Some` when `protocol = "udp"`: the `[udp]` table's keys (all optional).
    pub udp: Option<UdpConfig>,
    /// `[access]`; `None` allows everyone.
    pub access: Option<AccessConfig>,
    /// betwixt's `[client_limits]`; `None` when neither limit is set.
    pub client_limits: Option<ClientLimits>,
    /// betwixt's `[accept_proxy]`: clients arrive through a balancer that sends a PROXY header.
    pub accept_proxy: Option<AcceptProxy>,
    /// `[tls]`: terminate TLS (`protocol = "tls"`, or tcp with the table, as gobetween).
    pub tls: Option<TlsTermination>,
    /// `[sni]`: pick backends by the server name the client asks for.
    pub sni: Option<SniConfig>,
    /// `[backends_tls]`: TLS to the backends.
    pub backends_tls: Option<BackendsTls>,
    /// The current backends: `discovery.static_list` in file order, or for a dynamic kind
    /// empty in the file's config and the last list applied in the running one.
    pub backends: Vec<BackendSpec>,
    /// Where `backends` come from.
    pub discovery: DiscoveryConfig,
    pub healthcheck: HealthcheckConfig,
}

/// A listen address as written (`"0.0.0.0:6443"`, `":6443"`, `"[::1]:6443"`, `"localhost:6443"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindAddr {
    /// The text from the file, for messages and `/dump`.
    pub text: String,
    /// The resolved address. An empty host or `0.0.0.0` resolves to `0.0.0.0:PORT`.
    pub addr: SocketAddr,
    /// True for an empty host or `0.0.0.0`: like gobetween (Go), betwixt then listens on `[::]`
    /// with IPV6_V6ONLY off, accepting IPv4 and IPv6, and falls back to IPv4 when the host has
    /// no IPv6.
    pub dual_stack: bool,
}

/// `protocol = "udp"` and its `[servers.NAME.udp]` table, with gobetween's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UdpConfig {
    /// `max_requests`: datagrams from the client one session carries; the next one starts a
    /// new session (a new pick). 1 is fire-and-forget: no session, replies are not read.
    /// `None` when 0 (unlimited).
    pub max_requests: Option<u64>,
    /// `max_responses`: replies expected per request; a session ends once every request it
    /// carried got them. `None` when 0 (the session ends on idle timeout).
    pub max_responses: Option<u64>,
    /// `transparent`: datagrams reach the backends from the client's own address
    /// (IP_TRANSPARENT; needs CAP_NET_ADMIN).
    pub transparent: bool,
}

/// betwixt's `[rebalance]`: when a backend holds far more than its weight's share of a
/// server's sessions (as after the others came back from a failure: long-lived clients stay
/// where they moved), close a few of its oldest sessions each interval so their clients
/// reconnect through the balancer, as kube-apiserver's `--goaway-chance` does for HTTP/2.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebalance {
    /// `interval`: how often the shares are compared (and at most one round of closes).
    pub interval: Duration,
    /// `tolerance`, default 0.2: a backend is over its share when it holds more than
    /// `(1 + tolerance)` times it.
    pub tolerance: f64,
    /// `max_fraction`, default 0.02: at most this fraction of the server's sessions (and at
    /// least one) is closed per interval.
    pub max_fraction: f64,
    /// `min_age`, default 1m: a session younger than this is never closed.
    pub min_age: Duration,
}

/// Replaying a TCP session's first flight on another backend when the first one does not answer
/// it (a frozen API server still completes TCP handshakes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// `first_response_timeout`, default 3s: how long a backend may stay silent after the
    /// client's latest byte before the session moves on. `None` ("0") turns replay off.
    pub first_response_timeout: Option<Duration>,
    /// `replay`, default safe.
    pub mode: ReplayMode,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            first_response_timeout: Some(Duration::from_secs(3)),
            mode: ReplayMode::Safe,
        }
    }
}

impl ReplayConfig {
    /// The first-response timeout when replay is on at all.
    pub fn timeout(&self) -> Option<Duration> {
        self.first_response_timeout
            .filter(|_| self.mode != ReplayMode::Off)
    }
}

/// Which first flights may be sent to a second backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    /// Only what cannot do harm twice: exactly one TLS ClientHello, or nothing at all (a
    /// server-speaks-first protocol).
    Safe,
    /// Any first flight up to the bound: a slow (not dead) backend may then have executed a
    /// plaintext request that the next one executes again.
    Always,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocolVersion {
    /// gobetween's text line, TCP only.
    V1,
    /// The binary header (betwixt): TCP and UDP (before each datagram), with TLVs.
    V2,
}

/// `[access]`: first matching rule wins, then `default`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfig {
    pub default: AccessAction,
    pub rules: Vec<AccessRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessAction {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRule {
    pub action: AccessAction,
    /// A single address in the file becomes a /32 or /128 network.
    pub network: IpNet,
}

/// betwixt's `[client_limits]` (HAProxy's `sc_conn_cur`/`sc_conn_rate` rejects, nginx's
/// `limit_conn`): what one client address, or one prefix of addresses, may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// `max_connections`: sessions open at once; `None` when 0 (unlimited).
    pub max_connections: Option<u32>,
    /// `max_rate`: new sessions per second, with a burst of as many; `None` when 0.
    pub max_rate: Option<u32>,
    /// `ipv4_prefix`, default 32: IPv4 clients in one such network count as one.
    pub ipv4_prefix: u8,
    /// `ipv6_prefix`, default 64 (one host's usual allocation).
    pub ipv6_prefix: u8,
    /// `table_size`, default 65536: the most client entries tracked at once; past it, idle
    /// entries are evicted and, when none is idle, new clients are refused.
    pub table_size: u32,
}

/// betwixt's `[accept_proxy]` (HAProxy's `accept-proxy`, nginx's `listen ... proxy_protocol`
/// with `set_real_ip_from`): a PROXY v1 or v2 header is read from every client first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptProxy {
    /// `trusted`: the only source networks a connection is accepted from.
    pub trusted: Vec<IpNet>,
    /// `read_timeout`, default 5s: how long the whole header may take to arrive.
    pub read_timeout: Duration,
}

/// One backend from a `static_list` entry: `host:port[ weight=N][ priority=N][ max_connections=N][ sni=NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendSpec {
    /// An IP address (without brackets) or a DNS name, resolved when connecting.
    pub host: String,
    pub port: u16,
    /// Default 1. 0 (valid since gobetween 0.8) is never picked beside a weighted backend of
    /// the same priority; a group where every weight is 0 is picked uniformly.
    pub weight: u32,
    /// Default 1; lower numbers are preferred.
    pub priority: u32,
    /// `None` when 0 (unlimited).
    pub max_connections: Option<u32>,
    pub sni: Option<String>,
}

impl BackendSpec {
    /// The address to dial when the host is an IP literal; `None` for a DNS name, which is
    /// resolved on every connect.
    pub fn ip_addr(&self) -> Option<SocketAddr> {
        let ip = self.host.parse::<std::net::IpAddr>().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }

    /// `host:port`, with an IPv6 host in brackets: the backend's identity across reloads and
    /// its name in logs and the API.
    pub fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `[servers.NAME.healthcheck]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthcheckConfig {
    pub kind: CheckKind,
    /// Required when kind is not none.
    pub interval: Duration,
    /// `None` when "0": the runtime caps the check at `interval`.
    pub timeout: Option<Duration>,
    /// Consecutive failures that mark a live backend down. Default 1.
    pub fails: u32,
    /// Consecutive successes that bring a down backend back. Default 1.
    pub passes: u32,
    /// Default healthy.
    pub initial_status: InitialStatus,
    /// betwixt's `passive_fails`, default 3: consecutive failed connects of client traffic that
    /// mark a backend down before the next active check; 0 disables. Only used with an active
    /// check (something must bring the backend back).
    pub passive_fails: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialStatus {
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    None,
    /// TCP connect, then close.
    Ping,
    Probe(ProbeCheck),
    Exec(ExecCheck),
    /// betwixt: a complete TLS handshake, then close_notify.
    Tls(TlsCheck),
    /// betwixt: an HTTPS GET whose status must be one of `expected_statuses`.
    Https(HttpsCheck),
}

/// gobetween's `probe` kind.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeCheck {
    pub protocol: ProbeProtocol,
    pub strategy: ProbeStrategy,
    /// `probe_send` with Go escapes (`\n`, `\r`, `\t`, `\\`, `\xNN`) decoded.
    pub send: Vec<u8>,
    /// `probe_recv` with Go escapes decoded; for regexp, the pattern text.
    pub recv: Vec<u8>,
    /// `probe_recv_len`: bytes to read, at most [`Self::MAX_RECV_LEN`]. 0 with starts_with
    /// means `recv.len()`.
    pub recv_len: usize,
}

impl ProbeCheck {
    /// The largest `probe_recv_len`: a probe compares a banner or a short reply, and a
    /// larger value (gobetween accepts any) only lets a typo reserve memory on every check.
    pub const MAX_RECV_LEN: usize = 64 * 1024;
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProbeProtocol {
    Tcp,
    Udp,
    Tls(TlsCheck),
}

#[derive(Debug, Clone)]
pub enum ProbeStrategy {
    StartsWith,
    Regexp(regex::bytes::Regex),
}

impl PartialEq for ProbeStrategy {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::StartsWith, Self::StartsWith) => true,
            (Self::Regexp(a), Self::Regexp(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// gobetween's `exec` kind: `COMMAND HOST PORT`, its output compared after trimming the trailing
/// newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCheck {
    /// The program and its arguments. From a file, `exec_command` is one element: the whole
    /// string is the program path, as gobetween runs it (spaces and all); the host and port
    /// follow as the last two arguments.
    pub command: Vec<String>,
    /// `exec_expected_positive_output`, default "1".
    pub positive_output: String,
    /// `exec_expected_negative_output`, default "0".
    pub negative_output: String,
}

/// TLS client settings of a check (betwixt keys `tls_*` in the healthcheck table).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsCheck {
    /// `tls_ca_cert_path`: PEM roots to verify the backend against. Neither this nor
    /// `skip_verify`: the system roots.
    pub ca_cert_path: Option<PathBuf>,
    /// `tls_skip_verify`, default false.
    pub skip_verify: bool,
    /// `tls_server_name`: the SNI name and the name verified. Default: the backend's `sni`, or
    /// its host.
    pub server_name: Option<String>,
    /// `tls_cert_path` and `tls_key_path`: a client certificate to present.
    pub client_cert: Option<TlsFiles>,
}

/// betwixt's `https` kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsCheck {
    pub tls: TlsCheck,
    /// `https_path`, default `/ping` (k3s's supervisor answers it without credentials).
    pub path: String,
    /// `https_expected_status`, default `[200]`.
    pub expected_statuses: Vec<u16>,
}

/// A problem that stops a config from loading. Every variant names the file; `Invalid` also the
/// full key path (`servers.k3s.discovery.static_list[1]`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is part of the message, not a `source()`, so it prints once.
    #[error("{file}: cannot read the configuration: {cause}")]
    Read { file: String, cause: std::io::Error },
    /// A configuration fetched over HTTP (`from-url`, `from-consul`) did not arrive; `file`
    /// is the URL asked.
    #[error("{file}: cannot fetch the configuration: {message}")]
    Fetch { file: String, message: String },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// Every error found in one config, in the order found.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Something in a config worth a look that does not stop it from loading: an unknown key, an
/// accepted-but-ignored table, a risky value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.key, self.message)
    }
}
