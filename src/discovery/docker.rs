//! Kind `docker`: containers of a Docker Engine (`GET /containers/json`, label-filtered), each
//! published host port of `docker_container_private_port` a backend, as gobetween's
//! `docker.go` finds them through its Docker client.
//!
//! A backend's host is, in gobetween's order: the container's `docker_container_host_env_var`
//! (read with `GET /containers/ID/json`), else the address the port is published on, else
//! (published on all interfaces) the endpoint's host. Its `sni` is the container's `sni` label.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::client::{self, Client, ClientCertificate, ClientError, Endpoint, Tls, TlsMaterial};
use crate::config::{BackendSpec, DockerDiscovery};

/// Why a fetch found no list; the framework logs its `Display`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("docker {endpoint}: {problem}")]
    Setup { endpoint: String, problem: String },
    #[error("docker: {0}")]
    Request(#[from] ClientError),
    #[error("docker {url}: not an Engine API answer: {problem}")]
    Answer { url: String, problem: String },
}

/// One element of `GET /containers/json`; other fields are ignored.
#[derive(Debug, Deserialize)]
struct Container {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Ports", default)]
    ports: Vec<Port>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct Port {
    #[serde(rename = "IP", default)]
    ip: String,
    #[serde(rename = "PrivatePort")]
    private_port: u16,
    /// Absent when the port is exposed but not published.
    #[serde(rename = "PublicPort", default)]
    public_port: Option<u16>,
}

/// `GET /containers/ID/json`, the part that holds the environment.
#[derive(Debug, Deserialize)]
struct Inspection {
    #[serde(rename = "Config")]
    config: Option<ContainerConfig>,
}

#[derive(Debug, Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
}

/// The running containers' published ports, weight and priority 1 each; a target published
/// twice (IPv4 and IPv6 on all interfaces) is listed once.
///
/// # Errors
/// TLS files unusable, the daemon unreachable or answering an error, or an answer that is
/// not the Engine API's. A failed inspection only loses that container's env var host, as in
/// gobetween (logged).
pub(crate) async fn fetch(source: &DockerDiscovery) -> Result<Vec<BackendSpec>, Error> {
    let client = client(source).await?;
    let path = list_path(source);
    let containers: Vec<Container> = get_json(&client, &path).await?;
    let mut backends = Vec::new();
    let mut seen = HashSet::new();
    for container in containers {
        let published: Vec<(&str, u16)> = container
            .ports
            .iter()
            .filter(|port| port.private_port == source.private_port)
            .filter_map(|port| Some((port.ip.as_str(), port.public_port?)))
            .collect();
        if published.is_empty() {
            continue;
        }
        let env_host = match &source.host_env_var {
            Some(name) => env_host(&client, &container.id, name).await,
            None => None,
        };
        let sni = container
            .labels
            .as_ref()
            .and_then(|labels| labels.get("sni"))
            .filter(|sni| !sni.is_empty())
            .cloned();
        for (ip, public_port) in published {
            let host = env_host
                .clone()
                .unwrap_or_else(|| published_host(ip, client.endpoint()));
            let backend = BackendSpec {
                host,
                port: public_port,
                weight: 1,
                priority: 1,
                max_connections: None,
                sni: sni.clone(),
            };
            if seen.insert(backend.target()) {
                backends.push(backend);
            }
        }
    }
    Ok(backends)
}

/// `/containers/json`, with `filters={"label":["LABEL"]}` when a label is configured.
fn list_path(source: &DockerDiscovery) -> String {
    match &source.container_label {
        None => "/containers/json".to_owned(),
        Some(label) => {
            let filters = serde_json::json!({ "label": [label] }).to_string();
            format!("/containers/json?filters={}", client::encode(&filters))
        }
    }
}

/// The address a port is published on, unless that is every interface: then the endpoint's
/// host, or loopback for the local daemon's socket (where gobetween gives `0.0.0.0`, which
/// Linux also dials as the local host).
fn published_host(ip: &str, endpoint: &Endpoint) -> String {
    if !matches!(ip, "" | "0.0.0.0" | "::") {
        return ip.to_owned();
    }
    endpoint
        .host_port()
        .map_or_else(|| "127.0.0.1".to_owned(), |(host, _)| host.to_owned())
}

/// The value of env var `name` in the container, `None` when unset, empty or not readable.
async fn env_host(client: &Client, id: &str, name: &str) -> Option<String> {
    let path = format!("/containers/{}/json", client::encode(id));
    let inspection: Inspection = match get_json(client, &path).await {
        Ok(inspection) => inspection,
        Err(error) => {
            tracing::warn!("{error}; using the published address of container {id}");
            return None;
        }
    };
    let prefix = format!("{name}=");
    // The last definition wins, as in Docker's own reading of an env list.
    inspection
        .config?
        .env?
        .iter()
        .rev()
        .find_map(|entry| entry.strip_prefix(&prefix))
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

async fn get_json<T: serde::de::DeserializeOwned>(client: &Client, path: &str) -> Result<T, Error> {
    let body = client.get(path).await?;
    serde_json::from_slice(&body).map_err(|error| Error::Answer {
        url: client.url(path),
        problem: error.to_string(),
    })
}

async fn client(source: &DockerDiscovery) -> Result<Client, Error> {
    let setup = |problem: String| Error::Setup {
        endpoint: source.endpoint.clone(),
        problem,
    };
    let endpoint = Endpoint::parse(&source.endpoint, source.tls.is_some()).map_err(setup)?;
    let tls = match (&source.tls, &endpoint) {
        (Some(settings), Endpoint::Https { .. }) => Some(
            Tls::load(TlsMaterial {
                ca_file: settings.ca_cert_path.clone(),
                client_cert: settings
                    .client_cert
                    .as_ref()
                    .map(|files| ClientCertificate::Files {
                        cert: files.cert_path.clone(),
                        key: files.key_path.clone(),
                    }),
                // gobetween's Docker client verifies nothing when no CA is given.
                skip_verify: settings.ca_cert_path.is_none(),
                ca_pem: None,
            })
            .await?,
        ),
        _ => None,
    };
    Ok(Client::new(endpoint, tls)?)
}
