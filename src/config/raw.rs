//! [`RawConfig`]: a serde mirror of gobetween's file, every table and key, plus betwixt's own.
//!
//! Every key is an `Option` (or a map) so that absence stays visible to validation and to
//! `/dump`, which serialises this form back. Keys not listed here are not an error: gobetween
//! ignores them and real configs carry them, so [`parse`] records their dotted paths
//! (`servers.k3s.healthcheck.ping_timeout_duration`) for the caller to warn about. Integers
//! are `i64` so that a negative or oversized value reaches validation and gets a message naming
//! the key, instead of a serde type error.
//!
//! Key names follow gobetween 0.8's `config.go`; TOML and JSON use the same names.

mod parse;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use parse::{Parsed, parse};

/// Implements `Deserialize` for a table from a map only. serde's derive would also accept an
/// array as the fields in order (`healthcheck = ["ping", "2s"]`), which no config means.
/// Unknown keys are read as `IgnoredAny`, which is what lets `serde_ignored` record them.
///
/// Field names match in any ASCII case (`Bind`, `STATIC_LIST`), as gobetween's TOML and JSON
/// decoders match Go struct fields; a key written twice in two cases is a duplicate. Map keys
/// such as server names are data, not fields, and keep their case.
macro_rules! deserialize_table {
    ($name:ident { $($field:ident),* $(,)? }) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D>(deserializer: D) -> Result<Self, D::Error>
            where
                D: serde::Deserializer<'de>,
            {
                struct TableVisitor;

                impl<'de> serde::de::Visitor<'de> for TableVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a table")
                    }

                    fn visit_map<A>(self, mut map: A) -> Result<$name, A::Error>
                    where
                        A: serde::de::MapAccess<'de>,
                    {
                        $( let mut $field = None; )*
                        while let Some(key) = map.next_key::<String>()? {
                            match key.to_ascii_lowercase().as_str() {
                                $(
                                    stringify!($field) => {
                                        if $field.is_some() {
                                            let name = stringify!($field);
                                            return Err(serde::de::Error::duplicate_field(name));
                                        }
                                        $field = Some(map.next_value()?);
                                    }
                                )*
                                _ => {
                                    map.next_value::<serde::de::IgnoredAny>()?;
                                }
                            }
                        }
                        Ok($name { $( $field: $field.unwrap_or_default(), )* })
                    }
                }

                deserializer.deserialize_map(TableVisitor)
            }
        }
    };
}

/// Declares a table whose keys are all optional, skipped when serialising if absent.
macro_rules! raw_table {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* $field:ident: $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize)]
        pub struct $name {
            $(
                $(#[$field_meta])*
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
        }

        deserialize_table!($name { $($field),* });
    };
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RawConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<RawLogging>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<RawApi>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<RawMetrics>,
    /// Accepted and ignored: betwixt has no pprof endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profiler: Option<RawProfiler>,
    /// Certificates for `[servers.NAME.tls] acme_hosts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme: Option<RawAcme>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defaults: Option<RawDefaults>,
    /// `[servers.NAME]`, ordered by name; absent and empty are the same.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub servers: BTreeMap<String, RawServer>,
    /// betwixt's own process-wide settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub betwixt: Option<RawBetwixt>,
}

deserialize_table!(RawConfig {
    logging,
    api,
    metrics,
    profiler,
    acme,
    defaults,
    servers,
    betwixt
});

raw_table! {
    /// `[logging]`.
    pub struct RawLogging {
        level: String,
        output: String,
        format: String,
        /// betwixt: a file path, or "log" for the main log; unset: no access log.
        access_log: String,
        /// betwixt: "text" (default) or "json".
        access_log_format: String,
    }
}

raw_table! {
    /// `[api]`: the REST API.
    pub struct RawApi {
        enabled: bool,
        bind: String,
        cors: bool,
        /// betwixt: whether `POST /servers/NAME` may add exec checks; default false.
        allow_exec: bool,
        basic_auth: RawBasicAuth,
        tls: RawApiTls,
    }
}

raw_table! {
    /// `[api.basic_auth]`.
    pub struct RawBasicAuth {
        login: String,
        password: String,
    }
}

raw_table! {
    /// `[api.tls]`.
    pub struct RawApiTls {
        cert_path: String,
        key_path: String,
    }
}

raw_table! {
    /// `[metrics]`: the Prometheus endpoint.
    pub struct RawMetrics {
        enabled: bool,
        bind: String,
    }
}

raw_table! {
    /// `[profiler]`: gobetween's pprof endpoint.
    pub struct RawProfiler {
        enabled: bool,
        bind: String,
    }
}

raw_table! {
    /// `[acme]`: Let's Encrypt for TLS termination.
    pub struct RawAcme {
        challenge: String,
        http_bind: String,
        cache_dir: String,
        /// betwixt: the CA's directory; default Let's Encrypt's.
        directory_url: String,
        /// betwixt: PEM roots for the directory's HTTPS; default the system's.
        directory_ca_cert_path: String,
        /// betwixt: a certificate's age at which it is renewed; default "1440h" (60 days).
        renew_after: String,
    }
}

raw_table! {
    /// `[betwixt]`: settings gobetween does not have.
    pub struct RawBetwixt {
        /// Duration; default 30s.
        shutdown_timeout: String,
        /// auto | splice | copy; default auto.
        forwarding: String,
        /// Bytes; default 1048576.
        pipe_size: i64,
        /// Bytes; default 1048576.
        copy_buffer_size: i64,
        /// Bytes; default 268435456.
        forwarding_memory: i64,
    }
}

raw_table! {
    /// `[defaults]`: connection options a server inherits unless it sets them itself.
    pub struct RawDefaults {
        max_connections: i64,
        client_idle_timeout: String,
        backend_idle_timeout: String,
        backend_connection_timeout: String,
        /// betwixt: backends one client connection may try; 0 = every candidate once.
        connect_attempts: i64,
        /// betwixt: default true.
        close_sessions_on_backend_down: bool,
        /// betwixt: default false.
        close_sessions_on_backend_removal: bool,
        /// betwixt: a duration; "0" (default) = none.
        slow_start: String,
        /// betwixt: each key inherited on its own.
        rebalance: RawRebalance,
        /// betwixt: a duration; default 3s; "0" = no replay.
        first_response_timeout: String,
        /// betwixt: safe (default) | always | off.
        replay: String,
        /// betwixt: per-client session limits.
        client_limits: RawClientLimits,
    }
}

raw_table! {
    /// betwixt's `[servers.NAME.rebalance]` and `[defaults.rebalance]`: close a few old
    /// sessions of a backend holding far more than its share.
    pub struct RawRebalance {
        interval: String,
        tolerance: f64,
        max_fraction: f64,
        min_age: String,
    }
}

raw_table! {
    /// `[servers.NAME]`: one listener. The first twelve keys are the `[defaults]` ones.
    pub struct RawServer {
        max_connections: i64,
        client_idle_timeout: String,
        backend_idle_timeout: String,
        backend_connection_timeout: String,
        connect_attempts: i64,
        close_sessions_on_backend_down: bool,
        close_sessions_on_backend_removal: bool,
        slow_start: String,
        rebalance: RawRebalance,
        first_response_timeout: String,
        replay: String,
        client_limits: RawClientLimits,
        bind: String,
        protocol: String,
        balance: String,
        sni: RawSni,
        tls: RawTls,
        backends_tls: RawBackendsTls,
        udp: RawUdp,
        access: RawAccess,
        proxy_protocol: RawProxyProtocol,
        accept_proxy: RawAcceptProxy,
        discovery: RawDiscovery,
        healthcheck: RawHealthcheck,
    }
}

raw_table! {
    /// `[servers.NAME.sni]`: SNI-based backend selection.
    pub struct RawSni {
        hostname_matching_strategy: String,
        unexpected_hostname_strategy: String,
        read_timeout: String,
    }
}

raw_table! {
    /// `[servers.NAME.tls]`: TLS termination.
    pub struct RawTls {
        acme_hosts: Vec<String>,
        cert_path: String,
        key_path: String,
        ciphers: Vec<String>,
        prefer_server_ciphers: bool,
        min_version: String,
        max_version: String,
        session_tickets: bool,
        /// betwixt: how long a client may take over its whole handshake.
        handshake_timeout: String,
    }
}

raw_table! {
    /// `[servers.NAME.backends_tls]`: TLS towards the backends.
    pub struct RawBackendsTls {
        ignore_verify: bool,
        root_ca_cert_path: String,
        cert_path: String,
        key_path: String,
        ciphers: Vec<String>,
        prefer_server_ciphers: bool,
        min_version: String,
        max_version: String,
        session_tickets: bool,
    }
}

raw_table! {
    /// `[servers.NAME.udp]`.
    pub struct RawUdp {
        max_requests: i64,
        max_responses: i64,
        transparent: bool,
    }
}

raw_table! {
    /// `[servers.NAME.access]`.
    pub struct RawAccess {
        default: String,
        rules: Vec<String>,
    }
}

raw_table! {
    /// `[servers.NAME.proxy_protocol]`.
    pub struct RawProxyProtocol {
        version: String,
    }
}

raw_table! {
    /// betwixt's `[servers.NAME.client_limits]` (and `[defaults.client_limits]`).
    pub struct RawClientLimits {
        max_connections: i64,
        max_rate: i64,
        ipv4_prefix: i64,
        ipv6_prefix: i64,
        table_size: i64,
    }
}

raw_table! {
    /// betwixt's `[servers.NAME.accept_proxy]`: read a PROXY header from trusted sources.
    pub struct RawAcceptProxy {
        trusted: Vec<String>,
        read_timeout: String,
    }
}

raw_table! {
    /// `[servers.NAME.discovery]`: the common keys, then each kind's.
    pub struct RawDiscovery {
        kind: String,
        failpolicy: String,
        interval: String,
        timeout: String,
        static_list: Vec<String>,
        srv_lookup_server: String,
        srv_lookup_pattern: String,
        srv_dns_protocol: String,
        docker_endpoint: String,
        docker_container_label: String,
        docker_container_private_port: i64,
        docker_container_host_env_var: String,
        docker_tls_enabled: bool,
        docker_tls_cert_path: String,
        docker_tls_key_path: String,
        docker_tls_cacert_path: String,
        json_endpoint: String,
        json_host_pattern: String,
        json_port_pattern: String,
        json_weight_pattern: String,
        json_priority_pattern: String,
        json_sni_pattern: String,
        json_max_connections_pattern: String,
        exec_command: Vec<String>,
        plaintext_endpoint: String,
        plaintext_regex_pattern: String,
        consul_host: String,
        consul_service_name: String,
        consul_service_tag: String,
        consul_service_passing_only: bool,
        consul_datacenter: String,
        consul_auth_username: String,
        consul_auth_password: String,
        consul_tls_enabled: bool,
        consul_tls_cert_path: String,
        consul_tls_key_path: String,
        consul_tls_cacert_path: String,
        consul_acl_token: String,
        lxd_server_address: String,
        lxd_server_remote_name: String,
        lxd_server_remote_password: String,
        lxd_config_directory: String,
        lxd_generate_client_certs: bool,
        lxd_accept_server_cert: bool,
        lxd_container_label_key: String,
        lxd_container_label_value: String,
        lxd_container_port: i64,
        lxd_container_port_key: String,
        lxd_container_interface: String,
        lxd_container_interface_key: String,
        lxd_container_sni_key: String,
        lxd_container_address_type: String,
        /// betwixt, kind kubernetes: a kubeconfig file; default the service account.
        kubernetes_kubeconfig: String,
        /// betwixt, kind kubernetes: default "default".
        kubernetes_namespace: String,
        /// betwixt, kind kubernetes: default "kubernetes".
        kubernetes_service: String,
        /// betwixt, kind kubernetes: a port name or number; default "https".
        kubernetes_port: String,
    }
}

raw_table! {
    /// `[servers.NAME.healthcheck]`: gobetween's keys, then betwixt's.
    pub struct RawHealthcheck {
        kind: String,
        interval: String,
        passes: i64,
        fails: i64,
        timeout: String,
        initial_status: String,
        probe_protocol: String,
        probe_strategy: String,
        probe_send: String,
        probe_recv: String,
        probe_recv_len: i64,
        exec_command: String,
        exec_expected_positive_output: String,
        exec_expected_negative_output: String,
        /// betwixt: failed client connects that mark a backend down; default 3.
        passive_fails: i64,
        /// betwixt: for kinds tls and https, and probe over tls.
        tls_ca_cert_path: String,
        tls_skip_verify: bool,
        tls_server_name: String,
        tls_cert_path: String,
        tls_key_path: String,
        /// betwixt: for kind https; default "/ping".
        https_path: String,
        /// betwixt: for kind https; default `[200]`.
        https_expected_status: Vec<i64>,
    }
}
