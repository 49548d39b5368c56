//! Kind `consul`: a service's instances from Consul's health API
//! (`GET /v1/health/service/NAME`), as gobetween's `consul.go` reads them: the instance's
//! address, else its node's; the service port; `sni=NAME` from a tag.
//!
//! With an `interval`, the task [`watch`]es with Consul's blocking queries rather than
//! polling: each query names the `X-Consul-Index` of the last answer and Consul holds it until
//! the service changes or `interval` (the query's `wait`) ends, so a change arrives at once
//! and an unchanged service costs one request per `interval`, as polling did. Following
//! Consul's advice, an index that goes backwards is reset to 0 (a fresh read), one that is 0
//! is taken as 1 (a blocking query with index 0 returns at once), and queries start at most
//! once per [`MIN_PAUSE`]. A failure is retried after 2 s, then after twice the last pause
//! up to `interval`. Without an interval, the list is fetched once, as gobetween does.

use std::time::Duration;

use hyper::HeaderMap;
use hyper::header::HeaderName;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::RETRY_AFTER;
use super::client::{self, Client, ClientCertificate, ClientError, Endpoint, Tls, TlsMaterial};
use crate::config::{BackendSpec, ConsulDiscovery};

/// The least time between the starts of two queries, however fast Consul answers.
const MIN_PAUSE: Duration = Duration::from_secs(1);

/// The longest `wait` Consul accepts.
const MAX_WAIT: Duration = Duration::from_secs(600);

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
    let path = request_path(source);
    query(source, &path).await.map(|(backends, _)| backends)
}

/// Watches the service with blocking queries (see the module's introduction), sending each
/// answer's list, or why there is none, until the receiver is gone. `timeout` limits each
/// query beyond the `wait` Consul may hold it (and the jitter of up to `wait`/16 it adds).
pub(crate) async fn watch(
    source: &ConsulDiscovery,
    interval: Duration,
    timeout: Option<Duration>,
    results_tx: mpsc::Sender<Result<Vec<BackendSpec>, String>>,
) {
    let wait = interval.clamp(MIN_PAUSE, MAX_WAIT);
    let limit = wait + wait / 16 + timeout.unwrap_or(wait);
    let base = request_path(source);
    let separator = if base.contains('?') { '&' } else { '?' };
    let mut index = 0;
    let mut backoff = RETRY_AFTER;
    // Ends when the task is stopped or the receiver is gone.
    loop {
        let started = Instant::now();
        let path = if index == 0 {
            base.clone()
        } else {
            format!("{base}{separator}index={index}&wait={}ms", wait.as_millis())
        };
        let answer = match tokio::time::timeout(limit, query(source, &path)).await {
            Ok(answer) => answer.map_err(|error| error.to_string()),
            Err(_) => Err(format!("timed out after {limit:?}")),
        };
        let pause = match answer {
            Ok((backends, answered_index)) => {
                backoff = RETRY_AFTER;
                if results_tx.send(Ok(backends)).await.is_err() {
                    return;
                }
                match answered_index {
                    Some(answered) => {
                        index = next_index(index, answered);
                        MIN_PAUSE.saturating_sub(started.elapsed())
                    }
                    // Not Consul's answer (a proxy dropped the header): no blocking, poll.
                    None => interval,
                }
            }
            Err(reason) => {
                index = 0;
                if results_tx.send(Err(reason)).await.is_err() {
                    return;
                }
                let pause = backoff;
                backoff = (backoff * 2).min(interval.max(RETRY_AFTER));
                pause
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// The index the next query names, after an answer carrying `answered`.
fn next_index(previous: u64, answered: u64) -> u64 {
    if answered < previous {
        0
    } else {
        answered.max(1)
    }
}

/// One answer of the health API at `path`: the backends and the `X-Consul-Index` it carried.
async fn query(
    source: &ConsulDiscovery,
    path: &str,
) -> Result<(Vec<BackendSpec>, Option<u64>), Error> {
    let client = client(source).await?;
    let url = client.url(path);
    let (headers, body) = client.get_with_headers(path).await?;
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
    Ok((backends, consul_index(&headers)))
}

fn consul_index(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("x-consul-index")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
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

    #[test]
    fn an_index_going_backwards_resets_and_zero_counts_as_one() {
        assert_eq!(next_index(0, 17), 17);
        assert_eq!(next_index(17, 17), 17);
        assert_eq!(next_index(17, 18), 18);
        assert_eq!(next_index(17, 5), 0, "backwards: read afresh");
        assert_eq!(next_index(0, 0), 1, "0 would not block");
    }

    async fn next_list(
        results_rx: &mut mpsc::Receiver<Result<Vec<BackendSpec>, String>>,
    ) -> Vec<String> {
        let received = tokio::time::timeout(Duration::from_secs(10), results_rx.recv()).await;
        let list = received.unwrap().unwrap().unwrap();
        list.iter().map(BackendSpec::target).collect()
    }

    /// A blocking query is held by Consul until the service changes: the change arrives at
    /// once, not after the 30 s interval, and while nothing changes no query follows the held
    /// one.
    #[tokio::test]
    async fn a_blocking_query_brings_a_change_at_once() {
        use crate::discovery::responder::FakeConsul;
        let (consul, responder) = FakeConsul::start().await;
        let a: std::net::SocketAddr = "127.0.0.1:6443".parse().unwrap();
        let b: std::net::SocketAddr = "127.0.0.2:6443".parse().unwrap();
        consul.set_service("api", &[a]);
        let mut source = source(responder.authority());
        source.service_name = "api".into();
        let (results_tx, mut results_rx) = mpsc::channel(4);
        let watching = tokio::spawn(async move {
            watch(
                &source,
                Duration::from_secs(30),
                Some(Duration::from_secs(2)),
                results_tx,
            )
            .await;
        });
        assert_eq!(next_list(&mut results_rx).await, ["127.0.0.1:6443"]);
        // The second query (after the 1 s pause) is held; nothing else is asked meanwhile.
        for _ in 0..100 {
            if responder.requests().len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let held = responder.requests();
        assert_eq!(held.len(), 2, "{held:?}");
        assert!(
            held[1].target.ends_with("?index=2&wait=30000ms"),
            "{}",
            held[1].target
        );
        assert!(results_rx.try_recv().is_err(), "nothing changed");

        // Within `next_list`'s 10 s, a third of the interval.
        consul.set_service("api", &[a, b]);
        assert_eq!(
            next_list(&mut results_rx).await,
            ["127.0.0.1:6443", "127.0.0.2:6443"]
        );
        watching.abort();
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
