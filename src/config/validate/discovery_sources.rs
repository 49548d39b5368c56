//! The keys of discovery kinds docker, consul (gobetween's names and defaults, from its
//! `config.go` and `discovery/{docker,consul}.go`) and kubernetes (betwixt's).
//!
//! gobetween finds a bad endpoint or a lone client certificate only when a fetch fails, and
//! then logs it every interval; here they stop the config from loading, under their key.

use std::path::PathBuf;

use super::value::{Given, text};
use super::{Key, Report};
use crate::config::raw::RawDiscovery;
use crate::config::static_list::parse_backend;
use crate::config::{
    BasicAuth, ConsulDiscovery, DiscoveryTls, DockerDiscovery, KubernetesDiscovery, KubernetesPort,
    TlsFiles,
};

/// `docker_endpoint` when absent: the local daemon's socket.
const DEFAULT_DOCKER_ENDPOINT: &str = "unix:///var/run/docker.sock";
/// `consul_host` when absent, as Consul's Go client defaults it.
const DEFAULT_CONSUL_HOST: &str = "127.0.0.1:8500";

/// Kind docker. `key` is the discovery table's.
pub(super) fn docker(
    report: &mut Report<'_>,
    key: &Key,
    raw: &RawDiscovery,
) -> Option<DockerDiscovery> {
    let endpoint = text(&raw.docker_endpoint).unwrap_or(DEFAULT_DOCKER_ENDPOINT);
    let endpoint_ok = check_endpoint(report, &key.child("docker_endpoint"), endpoint);
    let port_key = key.child("docker_container_private_port");
    let private_port = match raw.docker_container_private_port {
        None | Some(0) => {
            report.error(
                &port_key,
                "missing; the container port whose published host port is a backend, such as 6443",
            );
            None
        }
        Some(port) => port_number(report, &port_key, port),
    };
    let tls = discovery_tls(
        report,
        key,
        "docker_tls",
        raw.docker_tls_enabled,
        [
            &raw.docker_tls_cacert_path,
            &raw.docker_tls_cert_path,
            &raw.docker_tls_key_path,
        ],
    );
    if matches!(&tls, Some(Some(settings)) if settings.ca_cert_path.is_none()) {
        report.warn(
            &key.child("docker_tls_cacert_path"),
            "missing: the daemon's certificate is not verified (as in gobetween)",
        );
    }
    let plain_scheme = endpoint.starts_with("unix://") || endpoint.starts_with("http://");
    let tls_ok = !(plain_scheme && matches!(tls, Some(Some(_))));
    if !tls_ok {
        report.error(
            &key.child("docker_tls_enabled"),
            format!("TLS needs a tcp:// or https:// docker_endpoint, not {endpoint:?}"),
        );
    }
    let config = DockerDiscovery {
        endpoint: endpoint.to_owned(),
        container_label: text(&raw.docker_container_label).map(str::to_owned),
        private_port: private_port?,
        host_env_var: text(&raw.docker_container_host_env_var).map(str::to_owned),
        tls: tls?,
    };
    (endpoint_ok && tls_ok).then_some(config)
}

/// `unix:///PATH`, or `tcp://`, `http://` or `https://` with a host and a port.
fn check_endpoint(report: &mut Report<'_>, key: &Key, endpoint: &str) -> bool {
    let problem = match endpoint.split_once("://") {
        None => Some("has no scheme".to_owned()),
        Some(("unix", path)) if path.starts_with('/') => None,
        Some(("unix", _)) => {
            Some("needs an absolute socket path, such as unix:///var/run/docker.sock".to_owned())
        }
        Some(("tcp" | "http" | "https", rest)) => {
            let authority = rest.split('/').next().unwrap_or_default();
            match authority.rsplit_once(':') {
                Some((host, port))
                    if !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0) =>
                {
                    None
                }
                _ => Some("needs HOST:PORT, such as tcp://10.0.0.5:2376".to_owned()),
            }
        }
        Some((scheme, _)) => Some(format!("has scheme {scheme:?}")),
    };
    match problem {
        None => true,
        Some(problem) => {
            report.error(
                key,
                format!(
                    "{endpoint:?} {problem}; expected unix:///PATH, tcp://HOST:PORT, \
                     http://HOST:PORT or https://HOST:PORT"
                ),
            );
            false
        }
    }
}

/// A port from 1 to 65535.
fn port_number(report: &mut Report<'_>, key: &Key, port: i64) -> Option<u16> {
    match u16::try_from(port) {
        Ok(port) if port > 0 => Some(port),
        _ => {
            report.error(key, format!("must be a port from 1 to 65535, found {port}"));
            None
        }
    }
}

/// `PREFIX_enabled` and `PREFIX_cacert_path`, `PREFIX_cert_path`, `PREFIX_key_path` (in that
/// order in `paths`). `Some(None)`: TLS off; `None`: an error was reported.
fn discovery_tls(
    report: &mut Report<'_>,
    key: &Key,
    prefix: &str,
    enabled: Option<bool>,
    paths: [&Option<String>; 3],
) -> Option<Option<DiscoveryTls>> {
    let [ca, cert, private_key] = paths.map(text);
    if !enabled.unwrap_or(false) {
        for (name, path) in [
            ("cacert_path", ca),
            ("cert_path", cert),
            ("key_path", private_key),
        ] {
            if path.is_some() {
                report.warn(
                    &key.child(&format!("{prefix}_{name}")),
                    format!("ignored: {prefix}_enabled is not true"),
                );
            }
        }
        return Some(None);
    }
    let client_cert = match (cert, private_key) {
        (Some(cert), Some(private_key)) => Some(TlsFiles {
            cert_path: PathBuf::from(cert),
            key_path: PathBuf::from(private_key),
        }),
        (None, None) => None,
        (given, _) => {
            let missing = if given.is_some() {
                "key_path"
            } else {
                "cert_path"
            };
            report.error(
                &key.child(&format!("{prefix}_{missing}")),
                format!("missing; {prefix}_cert_path and {prefix}_key_path must be given together"),
            );
            return None;
        }
    };
    Some(Some(DiscoveryTls {
        ca_cert_path: ca.map(PathBuf::from),
        client_cert,
    }))
}

/// Kind consul. `key` is the discovery table's.
pub(super) fn consul(
    report: &mut Report<'_>,
    key: &Key,
    raw: &RawDiscovery,
) -> Option<ConsulDiscovery> {
    let host = text(&raw.consul_host).unwrap_or(DEFAULT_CONSUL_HOST);
    let host_ok = check_consul_host(report, &key.child("consul_host"), host);
    let service_name = text(&raw.consul_service_name).map(str::to_owned);
    if service_name.is_none() {
        report.error(
            &key.child("consul_service_name"),
            "missing; the Consul service whose instances are the backends",
        );
    }
    let basic_auth = match (text(&raw.consul_auth_username), &raw.consul_auth_password) {
        (Some(login), password) => Some(BasicAuth {
            login: login.to_owned(),
            password: password.clone().unwrap_or_default(),
        }),
        (None, password) if password.given() => {
            report.error(
                &key.child("consul_auth_username"),
                "missing; consul_auth_password needs a user name",
            );
            None
        }
        (None, _) => None,
    };
    let tls = discovery_tls(
        report,
        key,
        "consul_tls",
        raw.consul_tls_enabled,
        [
            &raw.consul_tls_cacert_path,
            &raw.consul_tls_cert_path,
            &raw.consul_tls_key_path,
        ],
    );
    let config = ConsulDiscovery {
        host: host.to_owned(),
        service_name: service_name?,
        service_tag: text(&raw.consul_service_tag).map(str::to_owned),
        passing_only: raw.consul_service_passing_only.unwrap_or(false),
        datacenter: text(&raw.consul_datacenter).map(str::to_owned),
        basic_auth,
        acl_token: text(&raw.consul_acl_token).map(str::to_owned),
        tls: tls?,
    };
    host_ok.then_some(config)
}

/// `HOST:PORT`, optionally after `http://` or `https://`, as Consul's client reads it.
fn check_consul_host(report: &mut Report<'_>, key: &Key, host: &str) -> bool {
    let authority = match host.split_once("://") {
        None => host,
        Some(("http" | "https", rest)) => rest.trim_end_matches('/'),
        Some((scheme, _)) => {
            report.error(
                key,
                format!(
                    "{host:?} has scheme {scheme:?}; expected HOST:PORT or http(s)://HOST:PORT"
                ),
            );
            return false;
        }
    };
    let ok = authority
        .rsplit_once(':')
        .is_some_and(|(name, port)| !name.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        report.error(
            key,
            format!("{host:?} is not HOST:PORT, such as \"127.0.0.1:8500\""),
        );
    }
    ok
}

/// Kind kubernetes. `key` is the discovery table's.
pub(super) fn kubernetes(
    report: &mut Report<'_>,
    key: &Key,
    raw: &RawDiscovery,
) -> Option<KubernetesDiscovery> {
    let mut ok = true;
    let namespace = text(&raw.kubernetes_namespace).unwrap_or("default");
    let service = text(&raw.kubernetes_service).unwrap_or("kubernetes");
    for (name, value) in [
        ("kubernetes_namespace", namespace),
        ("kubernetes_service", service),
    ] {
        if !is_dns_label(value) {
            report.error(
                &key.child(name),
                format!(
                    "{value:?} is not a Kubernetes name: at most 63 lowercase letters, digits \
                     and '-', starting and ending with a letter or digit"
                ),
            );
            ok = false;
        }
    }
    let port = kubernetes_port(report, &key.child("kubernetes_port"), &raw.kubernetes_port);
    let mut seed = Vec::new();
    let list_key = key.child("static_list");
    for (index, entry) in raw.static_list.iter().flatten().enumerate() {
        match parse_backend(entry) {
            Ok(backend) if seed.contains(&backend) => {
                report.error(&list_key.index(index), format!("{entry:?} is listed twice"));
                ok = false;
            }
            Ok(backend) => seed.push(backend),
            Err(error) => {
                report.error(&list_key.index(index), error.to_string());
                ok = false;
            }
        }
    }
    let config = KubernetesDiscovery {
        kubeconfig: text(&raw.kubernetes_kubeconfig).map(PathBuf::from),
        namespace: namespace.to_owned(),
        service: service.to_owned(),
        port: port?,
        seed,
    };
    ok.then_some(config)
}

/// A port name (an IANA service name, as Kubernetes ports are named) or a number.
fn kubernetes_port(
    report: &mut Report<'_>,
    key: &Key,
    value: &Option<String>,
) -> Option<KubernetesPort> {
    let Some(value) = text(value) else {
        return Some(KubernetesPort::Name("https".to_owned()));
    };
    if value.bytes().all(|byte| byte.is_ascii_digit()) {
        return value
            .parse::<i64>()
            .ok()
            .and_then(|port| port_number(report, key, port))
            .map(KubernetesPort::Number);
    }
    let named = value.len() <= 15
        && is_dns_label(value)
        && value.bytes().any(|byte| byte.is_ascii_lowercase());
    if named {
        Some(KubernetesPort::Name(value.to_owned()))
    } else {
        report.error(
            key,
            format!(
                "{value:?} is neither a port number nor a port name (at most 15 lowercase \
                 letters, digits and '-'), such as \"https\" or \"6443\""
            ),
        );
        None
    }
}

/// An RFC 1123 label, which namespace and Service names are.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(inner)
        && bytes.last().is_some_and(inner)
        && bytes.iter().all(|byte| inner(byte) || *byte == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw::RawDiscovery;

    fn key() -> Key {
        Key::server("k3s").child("discovery")
    }

    fn messages(report: &Report<'_>) -> Vec<String> {
        report.errors.iter().map(ToString::to_string).collect()
    }

    fn warnings(report: &Report<'_>) -> Vec<String> {
        report.warnings.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn docker_defaults_and_every_key() {
        let mut report = Report::new("f.toml");
        let raw = RawDiscovery {
            docker_container_private_port: Some(6443),
            ..RawDiscovery::default()
        };
        let config = docker(&mut report, &key(), &raw).unwrap();
        assert_eq!(config.endpoint, "unix:///var/run/docker.sock");
        assert_eq!(config.private_port, 6443);
        assert_eq!(config.tls, None);
        let raw = RawDiscovery {
            docker_endpoint: Some("tcp://10.0.0.5:2376".into()),
            docker_container_label: Some("role=api".into()),
            docker_container_private_port: Some(6443),
            docker_container_host_env_var: Some("HOST_IP".into()),
            docker_tls_enabled: Some(true),
            docker_tls_cacert_path: Some("/ca.pem".into()),
            docker_tls_cert_path: Some("/cert.pem".into()),
            docker_tls_key_path: Some("/key.pem".into()),
            ..RawDiscovery::default()
        };
        let config = docker(&mut report, &key(), &raw).unwrap();
        assert_eq!(
            config,
            DockerDiscovery {
                endpoint: "tcp://10.0.0.5:2376".into(),
                container_label: Some("role=api".into()),
                private_port: 6443,
                host_env_var: Some("HOST_IP".into()),
                tls: Some(DiscoveryTls {
                    ca_cert_path: Some("/ca.pem".into()),
                    client_cert: Some(TlsFiles {
                        cert_path: "/cert.pem".into(),
                        key_path: "/key.pem".into(),
                    }),
                }),
            }
        );
        assert!(report.errors.is_empty(), "{:?}", messages(&report));
        assert!(report.warnings.is_empty());
    }

    #[test]
    fn docker_bad_keys_are_named() {
        let cases: [(RawDiscovery, &str); 5] = [
            (
                RawDiscovery::default(),
                "f.toml: servers.k3s.discovery.docker_container_private_port: missing; the \
                 container port whose published host port is a backend, such as 6443",
            ),
            (
                RawDiscovery {
                    docker_container_private_port: Some(70000),
                    ..RawDiscovery::default()
                },
                "f.toml: servers.k3s.discovery.docker_container_private_port: must be a port \
                 from 1 to 65535, found 70000",
            ),
            (
                RawDiscovery {
                    docker_endpoint: Some("tcp://docker".into()),
                    docker_container_private_port: Some(1),
                    ..RawDiscovery::default()
                },
                "f.toml: servers.k3s.discovery.docker_endpoint: \"tcp://docker\" needs \
                 HOST:PORT, such as tcp://10.0.0.5:2376; expected unix:///PATH, \
                 tcp://HOST:PORT, http://HOST:PORT or https://HOST:PORT",
            ),
            (
                RawDiscovery {
                    docker_endpoint: Some("/var/run/docker.sock".into()),
                    docker_container_private_port: Some(1),
                    ..RawDiscovery::default()
                },
                "f.toml: servers.k3s.discovery.docker_endpoint: \"/var/run/docker.sock\" has \
                 no scheme; expected unix:///PATH, tcp://HOST:PORT, http://HOST:PORT or \
                 https://HOST:PORT",
            ),
            (
                RawDiscovery {
                    docker_endpoint: Some("tcp://h:2376".into()),
                    docker_container_private_port: Some(1),
                    docker_tls_enabled: Some(true),
                    docker_tls_cert_path: Some("/c.pem".into()),
                    ..RawDiscovery::default()
                },
                "f.toml: servers.k3s.discovery.docker_tls_key_path: missing; \
                 docker_tls_cert_path and docker_tls_key_path must be given together",
            ),
        ];
        for (raw, expected) in cases {
            let mut report = Report::new("f.toml");
            assert_eq!(docker(&mut report, &key(), &raw), None, "{expected}");
            assert_eq!(messages(&report), [expected]);
        }
    }

    #[test]
    fn docker_tls_paths_without_tls_are_warned_about() {
        let mut report = Report::new("f.toml");
        let raw = RawDiscovery {
            docker_container_private_port: Some(80),
            docker_tls_cacert_path: Some("/ca.pem".into()),
            ..RawDiscovery::default()
        };
        assert!(docker(&mut report, &key(), &raw).is_some());
        assert_eq!(
            warnings(&report),
            [
                "f.toml: servers.k3s.discovery.docker_tls_cacert_path: ignored: docker_tls_enabled \
              is not true"
            ]
        );
    }

    #[test]
    fn consul_defaults_and_every_key() {
        let mut report = Report::new("f.toml");
        let raw = RawDiscovery {
            consul_service_name: Some("api".into()),
            ..RawDiscovery::default()
        };
        let config = consul(&mut report, &key(), &raw).unwrap();
        assert_eq!(config.host, "127.0.0.1:8500");
        assert_eq!((config.passing_only, config.tls), (false, None));
        let raw = RawDiscovery {
            consul_host: Some("https://consul.local:8501".into()),
            consul_service_name: Some("api".into()),
            consul_service_tag: Some("master".into()),
            consul_service_passing_only: Some(true),
            consul_datacenter: Some("dc2".into()),
            consul_auth_username: Some("lb".into()),
            consul_auth_password: Some("secret".into()),
            consul_acl_token: Some("token".into()),
            consul_tls_enabled: Some(true),
            consul_tls_cacert_path: Some("/ca.pem".into()),
            ..RawDiscovery::default()
        };
        let config = consul(&mut report, &key(), &raw).unwrap();
        assert_eq!(
            config,
            ConsulDiscovery {
                host: "https://consul.local:8501".into(),
                service_name: "api".into(),
                service_tag: Some("master".into()),
                passing_only: true,
                datacenter: Some("dc2".into()),
                basic_auth: Some(BasicAuth {
                    login: "lb".into(),
                    password: "secret".into()
                }),
                acl_token: Some("token".into()),
                tls: Some(DiscoveryTls {
                    ca_cert_path: Some("/ca.pem".into()),
                    client_cert: None,
                }),
            }
        );
        assert!(report.errors.is_empty(), "{:?}", messages(&report));
    }

    #[test]
    fn consul_bad_keys_are_named() {
        let mut report = Report::new("f.toml");
        let raw = RawDiscovery {
            consul_host: Some("consul.local".into()),
            consul_auth_password: Some("secret".into()),
            consul_tls_enabled: Some(true),
            consul_tls_key_path: Some("/k.pem".into()),
            ..RawDiscovery::default()
        };
        assert_eq!(consul(&mut report, &key(), &raw), None);
        assert_eq!(
            messages(&report),
            [
                "f.toml: servers.k3s.discovery.consul_host: \"consul.local\" is not HOST:PORT, \
                 such as \"127.0.0.1:8500\"",
                "f.toml: servers.k3s.discovery.consul_service_name: missing; the Consul \
                 service whose instances are the backends",
                "f.toml: servers.k3s.discovery.consul_auth_username: missing; \
                 consul_auth_password needs a user name",
                "f.toml: servers.k3s.discovery.consul_tls_cert_path: missing; \
                 consul_tls_cert_path and consul_tls_key_path must be given together",
            ]
        );
    }

    #[test]
    fn kubernetes_defaults_and_every_key() {
        let mut report = Report::new("f.toml");
        let config = kubernetes(&mut report, &key(), &RawDiscovery::default()).unwrap();
        assert_eq!(
            config,
            KubernetesDiscovery {
                kubeconfig: None,
                namespace: "default".into(),
                service: "kubernetes".into(),
                port: KubernetesPort::Name("https".into()),
                seed: Vec::new(),
            }
        );
        let raw = RawDiscovery {
            kubernetes_kubeconfig: Some("/etc/rancher/k3s/k3s.yaml".into()),
            kubernetes_namespace: Some("kube-system".into()),
            kubernetes_service: Some("api-1".into()),
            kubernetes_port: Some("6443".into()),
            static_list: Some(vec![
                "10.0.0.11:6443".into(),
                "10.0.0.12:6443 weight=2".into(),
            ]),
            ..RawDiscovery::default()
        };
        let config = kubernetes(&mut report, &key(), &raw).unwrap();
        assert_eq!(config.kubeconfig, Some("/etc/rancher/k3s/k3s.yaml".into()));
        assert_eq!(
            (config.namespace.as_str(), config.service.as_str()),
            ("kube-system", "api-1")
        );
        assert_eq!(config.port, KubernetesPort::Number(6443));
        assert_eq!(config.seed.len(), 2);
        assert_eq!(config.seed[1].weight, 2);
        assert!(report.errors.is_empty(), "{:?}", messages(&report));
    }

    #[test]
    fn kubernetes_bad_keys_are_named() {
        let mut report = Report::new("f.toml");
        let raw = RawDiscovery {
            kubernetes_namespace: Some("Kube_System".into()),
            kubernetes_service: Some("-api".into()),
            kubernetes_port: Some("HTTPS".into()),
            static_list: Some(vec![
                "10.0.0.11".into(),
                "10.0.0.12:6443".into(),
                "10.0.0.12:6443".into(),
            ]),
            ..RawDiscovery::default()
        };
        assert_eq!(kubernetes(&mut report, &key(), &raw), None);
        let found = messages(&report);
        assert_eq!(found.len(), 5, "{found:?}");
        let keys = [
            "servers.k3s.discovery.kubernetes_namespace: \"Kube_System\" is not a Kubernetes name",
            "servers.k3s.discovery.kubernetes_service: \"-api\" is not a Kubernetes name",
            "servers.k3s.discovery.kubernetes_port: \"HTTPS\" is neither a port number nor a port name",
            "servers.k3s.discovery.static_list[0]: ",
            "servers.k3s.discovery.static_list[2]: \"10.0.0.12:6443\" is listed twice",
        ];
        for (message, expected) in found.iter().zip(keys) {
            assert!(
                message.starts_with(&format!("f.toml: {expected}")),
                "{message}"
            );
        }
        let mut report = Report::new("f.toml");
        let raw = RawDiscovery {
            kubernetes_port: Some("0".into()),
            ..RawDiscovery::default()
        };
        assert_eq!(kubernetes(&mut report, &key(), &raw), None);
        assert_eq!(
            messages(&report),
            [
                "f.toml: servers.k3s.discovery.kubernetes_port: must be a port from 1 to 65535, found 0"
            ]
        );
    }
}
