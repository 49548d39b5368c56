//! Test-only HTTP(S) responders standing in for APIs no server of which can run here (Consul,
//! Kubernetes): hyper's server on a loopback port, answering from a closure and recording each
//! request, with a private CA from rcgen for TLS and client certificates; and [`FakeConsul`],
//! the part of Consul's HTTP API betwixt uses (health with blocking queries, KV).
//!
//! It names nothing of the crate, so the integration tests include the same file
//! (`tests/main.rs`) to stand in for Consul in front of the betwixt binary.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// What a responder saw of one request.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// Whether the TLS client presented a certificate the CA signed.
    pub client_certificate: bool,
    /// The TLS server name the client sent.
    pub sni: Option<String>,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A status, headers and a body, whole or sent chunk by chunk as the test pushes them; or
/// one of those decided later (a blocking query held until its data changes).
pub(crate) struct Answer(Reply);

enum Reply {
    Ready {
        status: u16,
        headers: Vec<(String, String)>,
        body: AnswerBody,
    },
    Later(Pin<Box<dyn Future<Output = Answer> + Send>>),
}

impl Answer {
    pub(crate) fn json(text: &str) -> Self {
        Self::status(200, text)
    }

    pub(crate) fn status(status: u16, text: &str) -> Self {
        Self(Reply::Ready {
            status,
            headers: Vec::new(),
            body: AnswerBody::Whole(Some(Bytes::copy_from_slice(text.as_bytes()))),
        })
    }

    /// A 200 whose body is what the test sends on the returned channel's other end; it ends
    /// when that sender is dropped.
    pub(crate) fn stream(chunks: mpsc::Receiver<Bytes>) -> Self {
        Self(Reply::Ready {
            status: 200,
            headers: Vec::new(),
            body: AnswerBody::Stream(chunks),
        })
    }

    /// The answer `later` comes to; nothing is sent before.
    pub(crate) fn later(later: impl Future<Output = Answer> + Send + 'static) -> Self {
        Self(Reply::Later(Box::pin(later)))
    }

    /// Adds a header (to a ready answer).
    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        if let Reply::Ready { headers, .. } = &mut self.0 {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }

    async fn ready(self) -> (u16, Vec<(String, String)>, AnswerBody) {
        let mut answer = self;
        // Bounded: a test's answers are deferred once or twice.
        for _ in 0..16 {
            match answer.0 {
                Reply::Ready {
                    status,
                    headers,
                    body,
                } => return (status, headers, body),
                Reply::Later(later) => answer = later.await,
            }
        }
        (500, Vec::new(), AnswerBody::Whole(None))
    }
}

enum AnswerBody {
    Whole(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Whole(body) => Poll::Ready(body.take().map(|bytes| Ok(Frame::data(bytes)))),
            Self::Stream(chunks) => chunks
                .poll_recv(cx)
                .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes)))),
        }
    }
}

type Handler = dyn Fn(&Seen) -> Answer + Send + Sync;

/// A responder on `127.0.0.1`, stopped when dropped.
pub(crate) struct Responder {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Responder {
    pub(crate) async fn http(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Self {
        Self::start(None, Arc::new(handler)).await
    }

    /// HTTPS with `pki`'s server certificate; `require_client` refuses clients without a
    /// certificate from its CA.
    pub(crate) async fn https(
        pki: &TestPki,
        require_client: bool,
        handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> Self {
        Self::start(Some(pki.acceptor(require_client)), Arc::new(handler)).await
    }

    async fn start(acceptor: Option<TlsAcceptor>, handler: Arc<Handler>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            // Bounded: a test makes a handful of requests.
            for _ in 0..1000 {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let handler = Arc::clone(&handler);
                let recorded = Arc::clone(&recorded);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(TokioIo::new(tcp), false, None, handler, recorded).await,
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let (_, session) = tls.get_ref();
                            let client = session.peer_certificates().is_some();
                            let sni = session.server_name().map(str::to_owned);
                            serve(TokioIo::new(tls), client, sni, handler, recorded).await;
                        }
                    }
                });
            }
        });
        Self { port, seen, task }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub(crate) fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve<I>(
    io: I,
    client_certificate: bool,
    sni: Option<String>,
    handler: Arc<Handler>,
    recorded: Arc<Mutex<Vec<Seen>>>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let seen = Seen {
            target: request
                .uri()
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default(),
            headers: request
                .headers()
                .iter()
                .map(|(name, value)| {
                    (
                        name.to_string(),
                        value.to_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
            client_certificate,
            sni: sni.clone(),
        };
        recorded.lock().unwrap().push(seen.clone());
        let answer = handler(&seen);
        async move {
            let (status, headers, body) = answer.ready().await;
            let mut response = hyper::Response::builder()
                .status(status)
                .header("content-type", "application/json");
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response.body(body)
        }
    });
    let _ = http1::Builder::new().serve_connection(io, service).await;
}

/// A private CA, a server certificate for `127.0.0.1` and `kubernetes`, and a client
/// certificate, as PEM files in a directory removed on drop.
pub(crate) struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    pub(crate) fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("betwixt-discovery-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{test} CA"));
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".into(), "kubernetes".into()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:betwixt");
        let client = client_params.signed_by(&client_key, &ca).unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
        write("ca.pem", ca.pem());
        write("server.pem", server.pem());
        write("server-key.pem", server_key.serialize_pem());
        write("client.pem", client.pem());
        write("client-key.pem", client_key.serialize_pem());
        Self { dir }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub(crate) fn client_cert_path(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    pub(crate) fn client_key_path(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }

    fn acceptor(&self, require_client: bool) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(self.ca_path()).unwrap() {
            roots.add(certificate.unwrap()).unwrap();
        }
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
        let verifier = if require_client {
            builder.build().unwrap()
        } else {
            builder.allow_unauthenticated().build().unwrap()
        };
        let chain: Vec<_> = CertificateDer::pem_file_iter(self.dir.join("server.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(self.dir.join("server-key.pem")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The part of Consul's HTTP API betwixt uses, as its documentation describes it:
/// `GET /v1/health/service/NAME` with blocking queries (`?index=N&wait=D`, answered at once
/// when `N` is below the current index, else held until the data changes or `D` ends; every
/// answer carries `X-Consul-Index`) and `GET /v1/kv/KEY` (a JSON list of one entry whose
/// `Value` is base64; 404 for a missing key). One index counts every change, as a single
/// Consul server's Raft index does. Names are matched as sent (no percent-decoding).
#[derive(Clone)]
pub(crate) struct FakeConsul {
    state: Arc<Mutex<ConsulState>>,
    index_tx: Arc<watch::Sender<u64>>,
}

#[derive(Default)]
struct ConsulState {
    index: u64,
    services: HashMap<String, Vec<SocketAddr>>,
    keys: HashMap<String, String>,
}

/// What Consul holds a blocking query for when the client names no `wait` (5 minutes).
const CONSUL_DEFAULT_WAIT: Duration = Duration::from_secs(300);

impl FakeConsul {
    /// An empty Consul (index 1) and the responder serving it.
    pub(crate) async fn start() -> (Self, Responder) {
        let consul = Self {
            state: Arc::new(Mutex::new(ConsulState {
                index: 1,
                ..ConsulState::default()
            })),
            index_tx: Arc::new(watch::channel(1).0),
        };
        let serving = consul.clone();
        let responder = Responder::http(move |seen| serving.answer(seen)).await;
        (consul, responder)
    }

    /// Replaces the instances of service `name` (each passing, with no tags).
    pub(crate) fn set_service(&self, name: &str, instances: &[SocketAddr]) {
        self.change(|state| {
            state.services.insert(name.to_owned(), instances.to_vec());
        });
    }

    pub(crate) fn set_key(&self, key: &str, value: &str) {
        self.change(|state| {
            state.keys.insert(key.to_owned(), value.to_owned());
        });
    }

    fn change(&self, change: impl FnOnce(&mut ConsulState)) {
        let mut state = self.state.lock().unwrap();
        change(&mut state);
        state.index += 1;
        self.index_tx.send_replace(state.index);
    }

    fn answer(&self, seen: &Seen) -> Answer {
        let (path, query) = seen
            .target
            .split_once('?')
            .unwrap_or((seen.target.as_str(), ""));
        let parameter = |name: &str| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        };
        if let Some(key) = path.strip_prefix("/v1/kv/") {
            return self.key(key);
        }
        let Some(service) = path.strip_prefix("/v1/health/service/") else {
            return Answer::status(404, "no such endpoint");
        };
        let service = service.to_owned();
        let index: u64 = parameter("index")
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        let current = self.state.lock().unwrap().index;
        if index == 0 || index < current {
            return self.instances(&service);
        }
        let wait = parameter("wait")
            .and_then(|text| match text.strip_suffix("ms") {
                Some(millis) => millis.parse().ok().map(Duration::from_millis),
                None => text
                    .strip_suffix('s')?
                    .parse()
                    .ok()
                    .map(Duration::from_secs),
            })
            .unwrap_or(CONSUL_DEFAULT_WAIT);
        let mut index_rx = self.index_tx.subscribe();
        let consul = self.clone();
        Answer::later(async move {
            let changed = index_rx.wait_for(|now| *now > index);
            let _ = tokio::time::timeout(wait, changed).await;
            consul.instances(&service)
        })
    }

    fn instances(&self, service: &str) -> Answer {
        let state = self.state.lock().unwrap();
        let entries: Vec<String> = state
            .services
            .get(service)
            .into_iter()
            .flatten()
            .map(|addr| {
                format!(
                    r#"{{"Node": {{"Node": "n", "Address": "{}"}}, "Service": {{"Service": "{service}", "Address": "", "Port": {}, "Tags": []}}, "Checks": []}}"#,
                    addr.ip(),
                    addr.port()
                )
            })
            .collect();
        Answer::json(&format!("[{}]", entries.join(",")))
            .header("X-Consul-Index", &state.index.to_string())
    }

    fn key(&self, key: &str) -> Answer {
        use base64::Engine;
        let state = self.state.lock().unwrap();
        let index = state.index.to_string();
        let Some(value) = state.keys.get(key) else {
            return Answer::status(404, "").header("X-Consul-Index", &index);
        };
        let value = base64::engine::general_purpose::STANDARD.encode(value);
        Answer::json(&format!(
            r#"[{{"LockIndex": 0, "Key": "{key}", "Flags": 0, "Value": "{value}", "CreateIndex": 1, "ModifyIndex": {index}}}]"#
        ))
        .header("X-Consul-Index", &index)
    }
}
