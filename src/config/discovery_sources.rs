//! The settings of the discovery kinds that ask an API for backends: docker, consul (gobetween's
//! keys and meaning) and kubernetes (betwixt's), validated in `validate::discovery_sources`.

use std::path::PathBuf;

use super::{BackendSpec, BasicAuth, TlsFiles};

/// `kind = "docker"`: containers of a Docker Engine, each backend a published host port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerDiscovery {
    /// `docker_endpoint`, default `unix:///var/run/docker.sock`; also `tcp://HOST:PORT`,
    /// `http://…` or `https://…`. Kept as written: a backend published on all interfaces
    /// takes its host from it.
    pub endpoint: String,
    /// `docker_container_label`: only containers with this label (`KEY` or `KEY=VALUE`).
    pub container_label: Option<String>,
    /// `docker_container_private_port` (required): the container port whose published host
    /// port becomes a backend.
    pub private_port: u16,
    /// `docker_container_host_env_var`: the container environment variable holding the
    /// backend's host; a container without it falls back to the published address.
    pub host_env_var: Option<String>,
    /// `docker_tls_enabled` with `docker_tls_cacert_path`, `docker_tls_cert_path` and
    /// `docker_tls_key_path`; `None` when TLS is off.
    pub tls: Option<DiscoveryTls>,
}

/// TLS towards a discovery API: the CA to verify it against (default: the system roots) and a
/// client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiscoveryTls {
    pub ca_cert_path: Option<PathBuf>,
    pub client_cert: Option<TlsFiles>,
}

/// `kind = "consul"`: the healthy instances of a service from Consul's health API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulDiscovery {
    /// `consul_host`, default `127.0.0.1:8500`: `HOST:PORT`, or a URL with http/https.
    pub host: String,
    /// `consul_service_name` (required).
    pub service_name: String,
    /// `consul_service_tag`: only instances with this tag.
    pub service_tag: Option<String>,
    /// `consul_service_passing_only`, default false: only instances whose checks all pass.
    pub passing_only: bool,
    /// `consul_datacenter`; `None`: the agent's own.
    pub datacenter: Option<String>,
    /// `consul_auth_username` and `consul_auth_password`: HTTP basic auth.
    pub basic_auth: Option<BasicAuth>,
    /// `consul_acl_token`, sent as `X-Consul-Token`.
    pub acl_token: Option<String>,
    /// `consul_tls_enabled` with the `consul_tls_*` paths; `None` when TLS is off.
    pub tls: Option<DiscoveryTls>,
}

/// `kind = "kubernetes"` (betwixt): the ready endpoints of a Service's EndpointSlices, watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesDiscovery {
    /// `kubernetes_kubeconfig`: a kubeconfig file (its current context). `None`: the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// `kubernetes_namespace`, default `default`.
    pub namespace: String,
    /// `kubernetes_service`, default `kubernetes`: with the default namespace, the API
    /// servers themselves.
    pub service: String,
    /// `kubernetes_port`, default the port named `https`.
    pub port: KubernetesPort,
    /// `static_list`: the backends to start with, and to reach the API through when the
    /// kubeconfig's server (often this balancer itself) cannot be reached.
    pub seed: Vec<BackendSpec>,
}

/// Which port of an endpoint is the backend's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubernetesPort {
    Name(String),
    Number(u16),
}
