//! A stand-in for a k3s API server: TLS with a private CA (generated per test), `/readyz`
//! answering 401 without a client certificate as k3s does, `/ping` answering 200 to anyone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A private CA with a server certificate for 127.0.0.1 and a client certificate, written as
/// PEM files into a directory.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "k3s-server-ca (test)");
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
            .push(rcgen::DnType::CommonName, "system:betwixt-healthcheck");
        let client = client_params.signed_by(&client_key, &ca).unwrap();

        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Self {
            dir: dir.to_owned(),
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server-key.pem", server_key.serialize_pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client-key.pem", client_key.serialize_pem()),
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(certificate.unwrap()).unwrap();
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .allow_unauthenticated()
                .build()
                .unwrap();
        let chain: Vec<_> = CertificateDer::pem_file_iter(&self.server_cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&self.server_key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The fake API server. `readyz_status` overrides what an authenticated `/readyz` answers
/// (200 by default), to play a server that is shutting down. `closes` counts how clients
/// ended their TLS connections.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    pub readyz_status: Arc<AtomicU16>,
    pub closes: Arc<Closes>,
    task: JoinHandle<()>,
}

/// How clients left after a completed handshake: with close_notify (`clean`), or by closing
/// TCP without it (`unclean`, what a k3s server logs as an error).
#[derive(Debug, Default)]
pub struct Closes {
    pub clean: AtomicU32,
    pub unclean: AtomicU32,
}

impl Closes {
    /// Waits up to `patience` for the client to close, and counts how it did.
    async fn observe(&self, tls: &mut (impl AsyncRead + Unpin), patience: Duration) {
        let mut rest = [0u8; 1024];
        for _ in 0..64 {
            match tokio::time::timeout(patience, tls.read(&mut rest)).await {
                Ok(Ok(0)) => {
                    self.clean.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => {
                    self.unclean.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

impl FakeApiServer {
    pub async fn start(pki: &Pki) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = pki.acceptor();
        let readyz_status = Arc::new(AtomicU16::new(200));
        let closes = Arc::new(Closes::default());
        let status = Arc::clone(&readyz_status);
        let observer = Arc::clone(&closes);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, status) = (acceptor.clone(), Arc::clone(&status));
                let closes = Arc::clone(&observer);
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let authenticated = tls.get_ref().1.peer_certificates().is_some();
                    let mut request = vec![0u8; 4096];
                    let read = match tls.read(&mut request).await {
                        // A tls check: the handshake, then the client's close.
                        Ok(0) => {
                            closes.clean.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(read) => read,
                        Err(_) => {
                            closes.unclean.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    let line = String::from_utf8_lossy(&request[..read]).into_owned();
                    let (code, body) = if line.starts_with("GET /ping ") {
                        (200, "pong")
                    } else if line.starts_with("GET /readyz ") && !authenticated {
                        (401, "Unauthorized")
                    } else if line.starts_with("GET /readyz ") {
                        (status.load(Ordering::SeqCst), "ok")
                    } else {
                        (404, "not found")
                    };
                    let response = format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                    closes.observe(&mut tls, Duration::from_secs(5)).await;
                });
            }
        });
        Self {
            addr,
            readyz_status,
            closes,
            task,
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
