//! Kind `consul`: a service's instances from Consul's health API
//! (`GET /v1/health/service/NAME`), as gobetween's `consul.go` reads them: the instance's
//! address, else its node's; the service port; `sni=NAME` from a tag.

use hyper::header::HeaderName;
use serde::Deserialize;

use super::client::{self, Client, ClientCertificate, ClientError, Endpoint, Tls, TlsMaterial};
use crate::config::{BackendSpec, ConsulDiscovery};

/// Why a fetch found no list; the framework logs its `Display`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("consul {host}: {problem}")]
    Setup { host: String, problem: String },
    #[error("consul: {0}")]
    Request(#[from] ClientError),
    #[error("consul {url}: not a health API answer: {problem}")]
    Answer { url: String, problem: String },
}

/// One element of the health API's answer; other fields are ignored.
#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "Node")]
    node: Node,
    #[serde(rename = "Service")]
    service: Service,
}

#[derive(Debug, Deserialize)]
struct Node {
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Debug, Deserialize)]
struct Service {
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
}

/// The service's instances (only passing ones with `consul_service_passing_only`), each with
/// weight and priority 1.
///
/// # Errors
/// TLS files unusable, Consul unreachable or answering an error, or an answer that is not
/// the health API's.
pub(crate) async fn fetch(source: &ConsulDiscovery) -> Result<Vec<BackendSpec>, Error> {
    let client = client(source).await?;
    let path = request_path(source);
    let url = client.url(&path);
    let body = client.get(&path).await?;
    let entries: Vec<Entry> = serde_json::from_slice(&body).map_err(|error| Error::Answer {
        url,
        problem: error.to_string(),
    })?;
    let mut backends: Vec<BackendSpec> = Vec::with_capacity(entries.len());
    for entry in entries {
        let backend = backend(entry);
        if !backends
            .iter()
            .any(|known| known.target() == backend.target())
        {
            backends.push(backend);
        }
    }
    Ok(backends)
}

fn backend(entry: Entry) -> BackendSpec {
    let service = entry.service;
    // The last `sni=` tag wins, as in gobetween.
    let sni = service
        .tags
        .iter()
        .flatten()
        .filter_map(|tag| tag.split_once('='))
        .filter(|(name, _)| *name == "sni")
        .map(|(_, value)| value.to_owned())
        .next_back();
    let host = if service.address.is_empty() {
        entry.node.address
    } else {
        service.address
    };
    BackendSpec {
        host,
        port: service.port,
        weight: 1,
        priority: 1,
        max_connections: None,
        sni,
    }
}

/// `/v1/health/service/NAME` with `dc`, `tag` and `passing` as Consul's Go client sends them.
fn request_path(source: &ConsulDiscovery) -> String {
    let mut query = Vec::new();
    if let Some(datacenter) = &source.datacenter {
        query.push(format!("dc={}", client::encode(datacenter)));
    }
    if let Some(tag) = &source.service_tag {
        query.push(format!("tag={}", client::encode(tag)));
    }
    if source.passing_only {
        query.push("passing=1".to_owned());
    }
    let mut path = format!(
        "/v1/health/service/{}",
        client::encode(&source.service_name)
    );
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    path
}

async fn client(source: &ConsulDiscovery) -> Result<Client, Error> {
    let setup = |problem: String| Error::Setup {
        host: source.host.clone(),
        problem,
    };
    let text = if source.host.contains("://") {
        source.host.clone()
    } else if source.tls.is_some() {
        format!("https://{}", source.host)
    } else {
        format!("http://{}", source.host)
    };
    let endpoint = Endpoint::parse(&text, source.tls.is_some()).map_err(setup)?;
    let tls = match &source.tls {
        None => None,
        Some(settings) => Some(
            Tls::load(TlsMaterial {
                ca_file: settings.ca_cert_path.clone(),
                client_cert: settings
                    .client_cert
                    .as_ref()
                    .map(|files| ClientCertificate::Files {
                        cert: files.cert_path.clone(),
                        key: files.key_path.clone(),
                    }),
                ..TlsMaterial::default()
            })
            .await?,
        ),
    };
    let mut client = Client::new(endpoint, tls)?;
    if let Some(auth) = &source.basic_auth {
        client = client.basic_auth(&auth.login, &auth.password)?;
    }
    if let Some(token) = &source.acl_token {
        client = client.header(HeaderName::from_static("x-consul-token"), token)?;
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BasicAuth, DiscoveryTls, TlsFiles};
    use crate::discovery::responder::{Answer, Responder, TestPki};

    fn source(host: String) -> ConsulDiscovery {
        ConsulDiscovery {
            host,
            service_name: "kube api".into(),
            service_tag: None,
            passing_only: false,
            datacenter: None,
            basic_auth: None,
            acl_token: None,
            tls: None,
        }
    }

    const ANSWER: &str = r#"[
        {"Node": {"Node": "m1", "Address": "10.0.0.11", "Datacenter": "dc1"},
         "Service": {"ID": "api-1", "Service": "kube api", "Tags": ["master", "sni=m1.k3s"],
                     "Address": "", "Port": 6443},
         "Checks": [{"Status": "passing"}]},
        {"Node": {"Node": "m2", "Address": "10.0.0.12"},
         "Service": {"ID": "api-2", "Service": "kube api", "Tags": null,
                     "Address": "192.168.5.2", "Port": 16443},
         "Checks": []}
    ]"#;

    #[tokio::test]
    async fn instances_with_node_address_fallback_and_sni_tag() {
        let responder = Responder::http(|_| Answer::json(ANSWER)).await;
        let backends = fetch(&source(responder.authority())).await.unwrap();
        let targets: Vec<String> = backends.iter().map(BackendSpec::target).collect();
        assert_eq!(targets, ["10.0.0.11:6443", "192.168.5.2:16443"]);
        assert_eq!(backends[0].sni.as_deref(), Some("m1.k3s"));
        assert_eq!(backends[1].sni, None);
        assert_eq!((backends[0].weight, backends[0].priority), (1, 1));
        let request = responder.requests().remove(0);
        assert_eq!(request.target, "/v1/health/service/kube%20api");
        assert_eq!(request.header("authorization"), None);
        assert_eq!(request.header("x-consul-token"), None);
    }

    #[tokio::test]
    async fn filters_token_and_basic_auth_are_sent() {
        let responder = Responder::http(|_| Answer::json("[]")).await;
        let mut source = source(format!("http://{}", responder.authority()));
        source.service_tag = Some("master".into());
        source.passing_only = true;
        source.datacenter = Some("dc 2".into());
        source.acl_token = Some("acl-secret".into());
        source.basic_auth = Some(BasicAuth {
            login: "lb".into(),
            password: "pw".into(),
        });
        assert_eq!(fetch(&source).await.unwrap(), []);
        let request = responder.requests().remove(0);
        assert_eq!(
            request.target,
            "/v1/health/service/kube%20api?dc=dc%202&tag=master&passing=1"
        );
        assert_eq!(request.header("x-consul-token"), Some("acl-secret"));
        assert_eq!(request.header("authorization"), Some("Basic bGI6cHc="));
    }

    #[tokio::test]
    async fn tls_with_a_client_certificate() {
        let pki = TestPki::new("consul-tls");
        let responder = Responder::https(&pki, true, |_| Answer::json(ANSWER)).await;
        let mut source = source(format!("127.0.0.1:{}", responder.port()));
        source.tls = Some(DiscoveryTls {
            ca_cert_path: Some(pki.ca_path()),
            client_cert: Some(TlsFiles {
                cert_path: pki.client_cert_path(),
                key_path: pki.client_key_path(),
            }),
        });
        assert_eq!(fetch(&source).await.unwrap().len(), 2);
        assert!(responder.requests()[0].client_certificate);

        // Without the client certificate the server refuses the handshake.
        source.tls = Some(DiscoveryTls {
            ca_cert_path: Some(pki.ca_path()),
            client_cert: None,
        });
        let error = fetch(&source).await.unwrap_err().to_string();
        assert!(error.starts_with("consul: https://127.0.0.1:"), "{error}");
        // And a server certificate from another CA is not trusted.
        let other = TestPki::new("consul-other");
        source.tls = Some(DiscoveryTls {
            ca_cert_path: Some(other.ca_path()),
            client_cert: None,
        });
        let error = fetch(&source).await.unwrap_err().to_string();
        assert!(error.contains("TLS handshake"), "{error}");
    }

    #[tokio::test]
    async fn errors_name_what_failed() {
        let responder = Responder::http(|_| Answer::status(403, "ACL not found")).await;
        let error = fetch(&source(responder.authority())).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "consul: http://{}/v1/health/service/kube%20api: answered 403 Forbidden: ACL not found",
                responder.authority()
            )
        );
        let responder = Responder::http(|_| Answer::json(r#"{"not": "a list"}"#)).await;
        let error = fetch(&source(responder.authority()))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!(
                "consul http://{}/v1/health/service/kube%20api: not a health API answer: ",
                responder.authority()
            )),
            "{error}"
        );
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let error = fetch(&source(closed.to_string()))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("cannot connect to {closed}")),
            "{error}"
        );
    }
}
