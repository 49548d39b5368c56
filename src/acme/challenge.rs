//! The HTTP-01 responder on `[acme] http_bind`: answers the CA's
//! `GET /.well-known/acme-challenge/TOKEN` with the token's key authorization while its
//! challenge is pending, 404 to anything else. Each request is read in its own task, bounded
//! in size and time.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::tls::AcmeCertificates;

const PREFIX: &str = "/.well-known/acme-challenge/";
/// A request head larger than this is not the CA's.
const MAX_REQUEST: usize = 4096;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error that is not about one connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves challenges until `stop` is cancelled.
pub(super) async fn serve(
    listener: TcpListener,
    store: Arc<AcmeCertificates>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let answered = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &store));
                    if answered.await.is_err() {
                        debug!(client = %peer, "ACME challenge request timed out");
                    }
                });
            }
            Err(error) => {
                warn!(%error, "ACME challenge listener: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, store: &AcmeCertificates) {
    let mut request = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => request.extend_from_slice(&buffer[..read]),
        }
        if request.len() > MAX_REQUEST {
            return;
        }
    }
    let reply = match key_authorization(&request, store) {
        Some(body) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        None => {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        }
    };
    // The CA retries on failure; nothing to do about a client that left.
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The key authorization a `GET` of a pending token's path asks for.
fn key_authorization(request: &[u8], store: &AcmeCertificates) -> Option<String> {
    let head = std::str::from_utf8(request).ok()?;
    let mut words = head.lines().next()?.split_whitespace();
    let (method, path) = (words.next()?, words.next()?);
    let token = path.strip_prefix(PREFIX).filter(|_| method == "GET")?;
    store.challenge(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pending_tokens_path_is_answered() {
        let store = AcmeCertificates::default();
        store.add_challenge("abc", "abc.thumb");
        let get = |path: &str| {
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            key_authorization(request.as_bytes(), &store)
        };
        assert_eq!(
            get("/.well-known/acme-challenge/abc").as_deref(),
            Some("abc.thumb")
        );
        assert_eq!(get("/.well-known/acme-challenge/other"), None);
        assert_eq!(get("/abc"), None);
        store.remove_challenge("abc");
        assert_eq!(get("/.well-known/acme-challenge/abc"), None);
    }
}
