//! What a TCP session does with its client before picking a backend, when the server has
//! `[tls]` or `[sni]`: terminate TLS, or read the ClientHello for its server name and keep the
//! bytes to replay to the backend (SNI passthrough).
//!
//! Runs in the session's task, under a deadline, so a client that sends nothing, too little
//! or garbage costs its own task a few seconds and never holds up the accept loop.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::forward::{ReadAhead, Stream};
use crate::snapshot::Server;
use crate::stats::HandshakeFailure;
use crate::tls::client_hello::{self, MAX_CLIENT_HELLO, Parsed};

/// How long a passthrough client may take over its ClientHello without `[sni] read_timeout`:
/// a client that stalls must not hold its session forever. (Terminated handshakes have
/// `[tls] handshake_timeout`.)
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A client ready for a backend.
pub(crate) struct Opened {
    pub(crate) client: Stream,
    /// The server name it asked for, when it sent one.
    pub(crate) server_name: Option<String>,
    /// Passthrough: the ClientHello bytes read, to send to the backend first.
    pub(crate) replay: Vec<u8>,
}

/// Whether the server does anything with a client before picking its backend (`[tls]` or
/// `[sni]`); when not, the client is passed through as it is and [`open`] is not called.
pub(crate) fn is_needed(server: &Server) -> bool {
    server.tls_server.is_some() || server.sni.is_some()
}

/// Why a client was closed before it reached a backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpeningError {
    #[error("no complete ClientHello or handshake within {0:?}")]
    Timeout(Duration),
    #[error("the client closed the connection during the handshake")]
    Closed,
    #[error("not a TLS ClientHello: {0}")]
    Malformed(client_hello::Malformed),
    /// The cause is in the message and not a `source()`.
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
}

impl OpeningError {
    pub(crate) fn reason(&self) -> HandshakeFailure {
        match self {
            Self::Timeout(_) => HandshakeFailure::Timeout,
            Self::Closed => HandshakeFailure::Closed,
            Self::Malformed(_) => HandshakeFailure::Malformed,
            Self::Tls(error) => tls_failure(error),
        }
    }
}

/// Classifies a failed handshake by what rustls (or the socket) said.
fn tls_failure(error: &io::Error) -> HandshakeFailure {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        None => HandshakeFailure::Closed,
        Some(rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. }) => {
            HandshakeFailure::Malformed
        }
        Some(rustls::Error::PeerIncompatible(_)) => HandshakeFailure::Incompatible,
        Some(rustls::Error::AlertReceived(_)) => HandshakeFailure::Alert,
        Some(_) => HandshakeFailure::Other,
    }
}

/// Terminates TLS (`[tls]`), or else reads the ClientHello (`[sni]`): for a server that
/// [`is_needed`].
pub(crate) async fn open(server: &Server, client: TcpStream) -> Result<Opened, OpeningError> {
    let handshake_timeout = server
        .config
        .tls
        .as_ref()
        .map_or(CLIENT_HELLO_TIMEOUT, |tls| tls.handshake_timeout);
    let hello_timeout = server
        .sni
        .as_ref()
        .map_or(handshake_timeout, |sni| sni.config.read_timeout);
    let opened = match &server.tls_server {
        Some(config) => {
            let acceptor = TlsAcceptor::from(std::sync::Arc::clone(config));
            let deadlines = Deadlines {
                hello: hello_timeout,
                handshake: handshake_timeout,
            };
            terminate(acceptor, client, deadlines).await?
        }
        None => {
            let (client, server_name, replay) = read_client_hello(client, hello_timeout).await?;
            Opened {
                client: Stream::Tcp(client),
                server_name,
                replay,
            }
        }
    };
    server.stats.tls.handshakes.fetch_add(1, Ordering::Relaxed);
    Ok(opened)
}

/// How long a terminated client may take: to its first byte, then over the whole handshake.
struct Deadlines {
    hello: Duration,
    handshake: Duration,
}

/// The whole handshake, within the [`Deadlines`].
async fn terminate(
    acceptor: TlsAcceptor,
    client: TcpStream,
    deadlines: Deadlines,
) -> Result<Opened, OpeningError> {
    // Waiting for the first byte under the ClientHello deadline; the handshake has its own.
    let mut first = [0u8; 1];
    match tokio::time::timeout(deadlines.hello, client.peek(&mut first)).await {
        Err(_) => return Err(OpeningError::Timeout(deadlines.hello)),
        Ok(Ok(0) | Err(_)) => return Err(OpeningError::Closed),
        Ok(Ok(_)) => {}
    }
    let handshake =
        tokio::time::timeout(deadlines.handshake, acceptor.accept(ReadAhead::new(client)));
    let stream = match handshake.await {
        Err(_) => return Err(OpeningError::Timeout(deadlines.handshake)),
        Ok(Err(error)) => return Err(OpeningError::Tls(error)),
        Ok(Ok(stream)) => stream,
    };
    let server_name = stream.get_ref().1.server_name().map(str::to_owned);
    Ok(Opened {
        client: Stream::TlsServer(Box::new(stream)),
        server_name,
        replay: Vec::new(),
    })
}

/// Reads until a whole ClientHello has arrived (however many segments and records it takes,
/// at most [`MAX_CLIENT_HELLO`] bytes), within `timeout`.
async fn read_client_hello(
    mut client: TcpStream,
    timeout: Duration,
) -> Result<(TcpStream, Option<String>, Vec<u8>), OpeningError> {
    let mut received = Vec::with_capacity(1024);
    let reading = async {
        loop {
            if received.len() >= MAX_CLIENT_HELLO {
                return Err(OpeningError::Malformed(client_hello::Malformed::TooLarge));
            }
            let mut limited = (&mut client).take((MAX_CLIENT_HELLO - received.len()) as u64);
            match limited.read_buf(&mut received).await {
                Ok(0) | Err(_) => return Err(OpeningError::Closed),
                Ok(_) => {}
            }
            match client_hello::parse(&received) {
                Ok(Parsed::Hello(name)) => return Ok(name),
                Ok(Parsed::NeedMore) => {}
                Err(malformed) => return Err(OpeningError::Malformed(malformed)),
            }
        }
    };
    let name = tokio::time::timeout(timeout, reading)
        .await
        .map_err(|_| OpeningError::Timeout(timeout))??;
    Ok((client, name, received))
}
