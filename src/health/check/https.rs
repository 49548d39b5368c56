//! The `https` kind: an HTTP/1.1 GET over TLS whose status must be one of a set.
//!
//! Made for API servers: `/readyz` expecting 200 with a client certificate (it turns to failing
//! as soon as a server starts a graceful shutdown, so the master is drained before its listener
//! closes), or k3s's unauthenticated `/ping`. hyper's HTTP/1 client speaks the protocol; only
//! the response head is read: the body is dropped unread, hyper then stops reading and closes
//! the connection, which sends close_notify before the TCP close.

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;

use super::tls::Client;
use super::{CheckError, Target};
use crate::config::HttpsCheck;

/// What an https check asks and accepts, fixed when the check is prepared.
#[derive(Debug, Clone)]
pub struct Request {
    path: String,
    /// The `Host` header: the TLS server name, so a virtual-hosted server answers as for SNI.
    host: String,
    expected_statuses: Vec<u16>,
}

impl Request {
    pub fn new(settings: &HttpsCheck, host: String) -> Self {
        Self {
            path: settings.path.clone(),
            host,
            expected_statuses: settings.expected_statuses.clone(),
        }
    }

    fn build(&self) -> Result<hyper::Request<Empty<Bytes>>, CheckError> {
        hyper::Request::get(self.path.as_str())
            .header(HOST, self.host.as_str())
            .header(USER_AGENT, "betwixt-healthcheck")
            .header(ACCEPT, "*/*")
            .header(CONNECTION, "close")
            .body(Empty::new())
            .map_err(|error| CheckError::Http(format!("request for {:?}: {error}", self.path)))
    }
}

pub async fn check(request: &Request, client: &Client, target: &Target) -> Result<(), CheckError> {
    let stream = client.handshake(target).await?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    let exchange = async move {
        let message = request.build()?;
        let response = sender.send_request(message).await.map_err(http_error);
        // Neither the body nor another request: the connection can finish and close.
        drop(sender);
        response.map(|response| response.status().as_u16())
    };
    // The connection future runs the exchange, then shuts the TLS stream down (close_notify).
    let (status, closed) = tokio::join!(exchange, connection);
    let status = match (status, closed) {
        (Ok(status), _) => status,
        // The connection's own error says why the request got no answer.
        (Err(_), Err(error)) => return Err(http_error(error)),
        (Err(error), Ok(())) => return Err(error),
    };
    if request.expected_statuses.contains(&status) {
        Ok(())
    } else {
        Err(CheckError::Status {
            status,
            expected: request.expected_statuses.clone(),
        })
    }
}

/// hyper's message with its causes ("connection error: Connection reset by peer"): its own
/// `Display` says only which step failed.
fn http_error(error: hyper::Error) -> CheckError {
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    CheckError::Http(message)
}
