//! Test-only HTTP(S) responders standing in for APIs no server of which can run here (Consul,
//! Kubernetes): hyper's server on a loopback port, answering from a closure and recording each
//! request, with a private CA from rcgen for TLS and client certificates.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

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
use tokio::sync::mpsc;
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

/// A status and a body, whole or sent chunk by chunk as the test pushes them.
pub(crate) struct Answer {
    status: u16,
    body: AnswerBody,
}

impl Answer {
    pub(crate) fn json(text: &str) -> Self {
        Self::status(200, text)
    }

    pub(crate) fn status(status: u16, text: &str) -> Self {
        Self {
            status,
            body: AnswerBody::Whole(Some(Bytes::copy_from_slice(text.as_bytes()))),
        }
    }

    /// A 200 whose body is what the test sends on the returned channel's other end; it ends
    /// when that sender is dropped.
    pub(crate) fn stream(chunks: mpsc::Receiver<Bytes>) -> Self {
        Self {
            status: 200,
            body: AnswerBody::Stream(chunks),
        }
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
            hyper::Response::builder()
                .status(answer.status)
                .header("content-type", "application/json")
                .body(answer.body)
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
