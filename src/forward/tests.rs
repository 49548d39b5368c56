//! Whole sessions through [`bidirectional`](super::bidirectional) over loopback sockets, with
//! the strategies and the memory budget under pressure.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Budget, Direction, Meter, Options, Transferred};
use crate::config::ForwardingMode;

struct NoMeter;

impl Meter for NoMeter {
    fn record(&self, _direction: Direction, _bytes: u64) {}
}

/// Two ends of one loopback connection.
async fn connected_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

fn options(mode: ForwardingMode, budget: &Arc<Budget>) -> Arc<Options> {
    Arc::new(Options {
        client_idle_timeout: None,
        backend_idle_timeout: None,
        mode,
        pipe_size: 64 * 1024,
        copy_buffer_size: 1 << 20,
        budget: Arc::clone(budget),
    })
}

/// A backend that echoes what it reads until EOF, then shuts down its side.
fn spawn_echo(backend: TcpStream) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        let (mut from_relay, mut to_relay) = backend.into_split();
        tokio::io::copy(&mut from_relay, &mut to_relay).await?;
        to_relay.shutdown().await
    })
}

/// Writes `sent` and shuts down the write side while reading everything that comes back.
async fn exchange<S: AsyncRead + AsyncWrite>(stream: S, sent: &[u8]) -> Vec<u8> {
    let (mut from_relay, mut to_relay) = tokio::io::split(stream);
    let send = async {
        to_relay.write_all(sent).await.unwrap();
        to_relay.shutdown().await.unwrap();
    };
    let mut received = Vec::with_capacity(sent.len());
    let ((), read) = tokio::join!(send, from_relay.read_to_end(&mut received));
    read.unwrap();
    received
}

/// A client sends `len` random bytes through a relay to a backend that echoes them; returns
/// what the client got back and what the relay reported.
async fn echo_session(options: Arc<Options>, len: usize, seed: u64) -> (bool, Transferred) {
    let (client, relay_client) = connected_pair().await;
    let (relay_backend, backend) = connected_pair().await;
    let relay = tokio::spawn(async move {
        super::bidirectional(&relay_client, &relay_backend, &options, &NoMeter).await
    });
    let echo = spawn_echo(backend);
    let mut random = fastrand::Rng::with_seed(seed);
    let sent: Vec<u8> = std::iter::repeat_with(|| random.u8(..)).take(len).collect();
    let received = exchange(client, &sent).await;
    echo.await.unwrap().unwrap();
    let transferred = relay.await.unwrap().unwrap();
    (received == sent, transferred)
}

/// Runs `sessions` echo sessions at once, cycling through the forwarding modes, and checks
/// every byte came back.
async fn run_concurrently(budget: &Arc<Budget>, sessions: u64, len: usize) {
    let modes = [
        ForwardingMode::Splice,
        ForwardingMode::Auto,
        ForwardingMode::Copy,
    ];
    let tasks: Vec<_> = (0..sessions)
        .map(|seed| {
            let mode = modes[usize::try_from(seed).unwrap() % modes.len()];
            tokio::spawn(echo_session(options(mode, budget), len, seed))
        })
        .collect();
    for (seed, task) in tasks.into_iter().enumerate() {
        let (intact, transferred) = task.await.unwrap();
        assert!(intact, "session {seed}: the echoed bytes differ");
        let expected = Transferred {
            to_backend: len as u64,
            to_client: len as u64,
        };
        assert_eq!(transferred, expected, "session {seed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bulk_sessions_stay_within_a_small_budget() {
    let limit = 192 * 1024;
    let budget = Arc::new(Budget::new(limit));
    let run = run_concurrently(&budget, 12, 2 << 20);
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the sessions finish");
    assert!(budget.peak() > 0, "some bursts splice or grow their buffer");
    assert!(budget.peak() <= limit, "peak {} > {limit}", budget.peak());
    assert!(budget.refused() > 0, "the cap was reached");
    assert_eq!(budget.charged(), 0, "every grant is given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_budget_every_session_still_forwards_everything() {
    let budget = Arc::new(Budget::new(0));
    let run = run_concurrently(&budget, 6, 1 << 20);
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the sessions finish");
    assert_eq!(budget.peak(), 0);
    assert!(budget.refused() > 0, "splice sessions asked for pipes");
}

/// A socket error names the side and its cause, and the cause is printed once even by a
/// printer that follows `source()`.
#[test]
fn a_socket_error_prints_its_cause_once() {
    let error = super::ForwardError::Io {
        side: super::Side::Client,
        error: std::io::Error::from_raw_os_error(libc::ECONNRESET),
    };
    let mut chain = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(next) = cause {
        chain = format!("{chain}: {next}");
        cause = next.source();
    }
    assert_eq!(chain.matches("reset by peer").count(), 1, "{chain}");
    assert!(chain.starts_with("client socket: "), "{chain}");
}

/// A TLS server config for `relay.test` with a fresh self-signed certificate, and a client
/// config that trusts it.
fn tls_configs() -> (rustls::ServerConfig, rustls::ClientConfig) {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let certified = rcgen::generate_simple_self_signed(vec!["relay.test".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(key))
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, client)
}

/// A bulk echo through a terminated TLS session: every byte comes back, and neither direction
/// ever held more than one record's buffer, so none drew on the budget (a buffer grown to
/// `copy_buffer_size` made the backend push out betwixt's megabyte writes itself).
#[tokio::test]
async fn a_tls_session_moves_bulk_through_one_record_sized_buffer_per_direction() {
    let budget = Arc::new(Budget::new(usize::MAX));
    let options = options(ForwardingMode::Copy, &budget);
    let (server, client) = tls_configs();
    let (client_tcp, relay_client) = connected_pair().await;
    let (relay_backend, backend) = connected_pair().await;
    let relay = tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let accepted = acceptor.accept(super::ReadAhead::new(relay_client)).await?;
        let mut client = super::Stream::TlsServer(Box::new(accepted));
        let mut backend = super::Stream::Tcp(relay_backend);
        super::relay(&mut client, &mut backend, &options, &NoMeter)
            .await
            .map_err(std::io::Error::other)
    });
    let echo = spawn_echo(backend);
    let len = 4 << 20;
    let mut random = fastrand::Rng::with_seed(7);
    let sent: Vec<u8> = std::iter::repeat_with(|| random.u8(..)).take(len).collect();
    let name = rustls::pki_types::ServerName::try_from("relay.test").unwrap();
    let session = async {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let stream = connector.connect(name, client_tcp).await.unwrap();
        exchange(stream, &sent).await
    };
    let received = tokio::time::timeout(Duration::from_secs(60), session)
        .await
        .expect("the echo completes");
    assert!(received == sent, "the echoed bytes differ");
    echo.await.unwrap().unwrap();
    let transferred = relay.await.unwrap().unwrap();
    assert_eq!(transferred.to_backend, len as u64);
    assert_eq!(transferred.to_client, len as u64);
    assert_eq!(budget.peak(), 0, "a direction grew past one record");
}
