//! TLS termination, SNI routing and TLS to backends, with real clients: a rustls client in the
//! test, `openssl s_client` and `curl` as processes. Certificates come from a private CA made
//! per test with rcgen.

mod acme;
mod backends;
mod sni;
mod termination;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::util::{PATIENCE, Scratch};

/// A private CA that writes PEM files into a scratch directory.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub scratch: Scratch,
    /// The CA certificate, the file clients trust.
    pub cert: PathBuf,
    label: String,
}

/// A certificate and its key, as files.
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(label: &str) -> Self {
        let scratch = Scratch::new(&format!("tls-{label}"));
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("betwixt test CA {label}"),
        );
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let cert = scratch.file("ca.pem", &issuer.pem());
        Self {
            issuer,
            scratch,
            cert,
            label: label.to_owned(),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses), ECDSA P-256, written as `FILE.pem` and
    /// `FILE-key.pem`.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("{file} ({})", self.label),
        );
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: self.scratch.file(&format!("{file}.pem"), &cert.pem()),
            key: self
                .scratch
                .file(&format!("{file}-key.pem"), &key.serialize_pem()),
        }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(&self.cert).unwrap() {
            roots.add(certificate.unwrap()).unwrap();
        }
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chain(issued: &Issued) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_file_iter(&issued.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (chain, PrivateKeyDer::from_pem_file(&issued.key).unwrap())
}

/// A rustls client trusting `ca` only.
pub fn connector(ca: &Ca) -> TlsConnector {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Connects to `addr` over TCP and completes a TLS handshake for `name`, verified against `ca`.
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    ca: &Ca,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio::time::timeout(PATIENCE, connector(ca).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// Sends `message` and reads the same number of bytes back (the backend echoes).
pub async fn echo_round_trip<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, message: &[u8]) {
    stream.write_all(message).await.unwrap();
    stream.flush().await.unwrap();
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut back))
        .await
        .expect("echo within patience")
        .unwrap();
    assert_eq!(back, message);
}

/// A TLS backend: after the handshake it sends `NAME\n`, then echoes.
pub struct TlsBackend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    /// Serves `issued`; with `client_ca`, requires a client certificate from that CA.
    pub async fn start(name: &'static str, issued: &Issued, client_ca: Option<&Ca>) -> Self {
        let (chain, key) = chain(issued);
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions();
        let builder = builder.unwrap();
        let config = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca.roots()),
                    provider(),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        }
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if tls.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                        return;
                    }
                    let _ = tls.flush().await;
                    let (mut reader, mut writer) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                    let _ = writer.shutdown().await;
                });
            }
        });
        Self { addr, task }
    }
}

/// Reads one `\n`-terminated line from any stream, within [`PATIENCE`].
pub async fn read_line_from<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        loop {
            if stream.read(&mut byte).await? == 0 || byte[0] == b'\n' {
                return Ok::<_, std::io::Error>(());
            }
            line.push(byte[0]);
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without a line",
        ));
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// The first flight of a TLS client asking for `name` (its ClientHello), as bytes.
pub fn client_hello(name: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut bytes = Vec::new();
    client.write_tls(&mut bytes).unwrap();
    bytes
}

/// A stream that writes at most `chunk` bytes per write and pauses 20 ms between writes, so
/// a ClientHello reaches the balancer in several TCP segments.
pub struct Trickle {
    inner: TcpStream,
    chunk: usize,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Trickle {
    pub fn new(inner: TcpStream, chunk: usize) -> Self {
        inner.set_nodelay(true).unwrap();
        Self {
            inner,
            chunk,
            pause: None,
        }
    }
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(pause) = self.pause.as_mut() {
            std::task::ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        let chunk = buf.len().min(self.chunk);
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..chunk]))?;
        self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(20))));
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Runs `openssl s_client` against `addr` with `args`, sending `input`; its exit status and
/// output.
pub async fn s_client(addr: SocketAddr, args: &[&str], input: &str) -> (bool, String) {
    use std::process::{Command, Stdio};
    let connect = addr.to_string();
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect", &connect, "-brief"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let input = input.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = command
            .spawn()
            .expect("openssl runs (Debian package openssl)");
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = stdin.write_all(input.as_bytes());
        }
        child.wait_with_output().unwrap()
    });
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .expect("openssl s_client finishes")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
