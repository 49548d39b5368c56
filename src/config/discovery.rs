//! `[servers.NAME.discovery]` as validated: where a server's backends come from, and how
//! often and how patiently they are fetched.

use std::time::Duration;

/// `[servers.NAME.discovery]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryConfig {
    pub kind: DiscoveryKind,
    /// `interval`: how long after a successful fetch the next one starts. `None` when absent
    /// or "0": the list is fetched once (gobetween's meaning), retried until that succeeds.
    pub interval: Option<Duration>,
    /// `timeout`: the limit on one fetch. Absent: the kind's gobetween default
    /// ([`DiscoveryKind::default_timeout`]); `None` when "0" (no limit).
    pub timeout: Option<Duration>,
    /// Default keeplast.
    pub failpolicy: FailPolicy,
}

impl DiscoveryConfig {
    /// A static list: nothing to fetch.
    pub fn fixed() -> Self {
        Self {
            kind: DiscoveryKind::Static,
            interval: None,
            timeout: None,
            failpolicy: FailPolicy::KeepLast,
        }
    }

    /// Whether a task fetches this server's backends (every kind but static).
    pub fn is_dynamic(&self) -> bool {
        !matches!(self.kind, DiscoveryKind::Static)
    }
}

/// What a failed fetch does to the server's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPolicy {
    /// `keeplast`: the last list stays.
    KeepLast,
    /// `setempty`: the server loses every backend until a fetch succeeds.
    SetEmpty,
}

/// A discovery kind and its own keys.
#[derive(Debug, Clone, PartialEq)]
pub enum DiscoveryKind {
    /// `static_list`, which is [`ServerConfig::backends`](super::ServerConfig::backends).
    Static,
    Exec(ExecDiscovery),
    Plaintext(PlaintextDiscovery),
    Json(JsonDiscovery),
    Srv(SrvDiscovery),
    Docker(super::DockerDiscovery),
    Consul(super::ConsulDiscovery),
    /// Watched, not polled: `interval` does not apply.
    Kubernetes(super::KubernetesDiscovery),
}

impl DiscoveryKind {
    /// The name in the file (`kind = "exec"`), for logs, the report and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Exec(_) => "exec",
            Self::Plaintext(_) => "plaintext",
            Self::Json(_) => "json",
            Self::Srv(_) => "srv",
            Self::Docker(_) => "docker",
            Self::Consul(_) => "consul",
            Self::Kubernetes(_) => "kubernetes",
        }
    }

    /// The fetch timeout when the file sets none: gobetween's fallback of each kind (3 s for
    /// a command, 5 s for HTTP and DNS).
    pub fn default_timeout(&self) -> Option<Duration> {
        match self {
            Self::Static => None,
            Self::Exec(_) => Some(Duration::from_secs(3)),
            Self::Plaintext(_) | Self::Json(_) | Self::Srv(_) | Self::Docker(_) => {
                Some(Duration::from_secs(5))
            }
            Self::Consul(_) => Some(Duration::from_secs(2)),
            // Each request of the watch has its own limits; the watch itself runs for good.
            Self::Kubernetes(_) => None,
        }
    }
}

/// `kind = "exec"`: a command whose standard output lists backends, one a line in the
/// `static_list` grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecDiscovery {
    /// `exec_command`: the program and its arguments, run without a shell.
    pub command: Vec<String>,
}

/// `kind = "plaintext"`: an HTTP(S) GET whose body lists backends, one a line.
#[derive(Debug, Clone)]
pub struct PlaintextDiscovery {
    /// `plaintext_endpoint`: an `http://` or `https://` URL.
    pub endpoint: String,
    /// `plaintext_regex_pattern` with named groups `host` and `port` (required) and
    /// `weight`, `priority`, `max_connections`, `sni`. `None`: the `static_list` grammar.
    pub pattern: Option<regex::Regex>,
}

impl PartialEq for PlaintextDiscovery {
    fn eq(&self, other: &Self) -> bool {
        self.endpoint == other.endpoint
            && self.pattern.as_ref().map(regex::Regex::as_str)
                == other.pattern.as_ref().map(regex::Regex::as_str)
    }
}

/// `kind = "json"`: an HTTP(S) GET whose body is a JSON array of backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonDiscovery {
    /// `json_endpoint`: an `http://` or `https://` URL.
    pub endpoint: String,
    /// `json_*_pattern`: where in each element the values are, as gobetween's paths
    /// (`a.b`, `list.[0]`, `'key.with.dots'`).
    pub paths: JsonPaths,
}

/// The path of each backend field in one element of the array. Defaults: the field's name
/// (`host`, `port`, `weight`, `priority`, `sni`, `max_connections`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPaths {
    pub host: String,
    pub port: String,
    pub weight: String,
    pub priority: String,
    pub sni: String,
    pub max_connections: String,
}

/// `kind = "srv"`: a DNS SRV query to one name server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvDiscovery {
    /// `srv_lookup_server`: `host:port` of the name server asked.
    pub server: String,
    /// `srv_lookup_pattern`: the name queried, fully qualified (a final dot is added).
    pub name: String,
    /// `srv_dns_protocol`, default udp.
    pub protocol: DnsProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsProtocol {
    Udp,
    Tcp,
}
