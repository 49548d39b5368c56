//! The `https` kind: an HTTP/1.1 GET over TLS whose status must be one of a set.
//!
//! Made for API servers: `/readyz` expecting 200 with a client certificate (it turns to failing
//! as soon as a server starts a graceful shutdown, so the master is drained before its listener
//! closes), or k3s's unauthenticated `/ping`. Only the status line is read.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tls::{self, Client};
use super::{CheckError, Target};
use crate::config::HttpsCheck;

/// The longest status line read before giving up on the answer.
const MAX_STATUS_LINE: usize = 1024;

/// The request text, built once per check task.
#[derive(Debug, Clone)]
pub struct Request {
    text: String,
    expected_statuses: Vec<u16>,
}

impl Request {
    pub fn new(settings: &HttpsCheck, host: String) -> Self {
        let text = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: betwixt-healthcheck\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n",
            settings.path
        );
        Self {
            text,
            expected_statuses: settings.expected_statuses.clone(),
        }
    }
}

pub async fn check(request: &Request, client: &Client, target: &Target) -> Result<(), CheckError> {
    let mut stream = client.handshake(target).await?;
    stream
        .write_all(request.text.as_bytes())
        .await
        .map_err(CheckError::Io)?;
    let status = read_status(&mut stream).await;
    tls::close(&mut stream).await;
    let status = status?;
    if request.expected_statuses.contains(&status) {
        Ok(())
    } else {
        Err(CheckError::Status {
            status,
            expected: request.expected_statuses.clone(),
        })
    }
}

async fn read_status(stream: &mut (impl AsyncReadExt + Unpin)) -> Result<u16, CheckError> {
    let mut head = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < MAX_STATUS_LINE {
        let read = stream.read(&mut chunk).await.map_err(CheckError::Io)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    parse_status(&head)
}

/// `HTTP/1.1 200 OK` -> 200.
fn parse_status(head: &[u8]) -> Result<u16, CheckError> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line).trim_end().to_owned();
    let mut words = line.split(' ');
    match (words.next(), words.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") && code.len() == 3 => {
            code.parse().map_err(|_| CheckError::NotHttp(line.clone()))
        }
        _ => Err(CheckError::NotHttp(line)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n").unwrap(),
            200
        );
        assert_eq!(parse_status(b"HTTP/1.0 401 Unauthorized\r\n").unwrap(), 401);
        assert_eq!(parse_status(b"HTTP/1.1 503\r\n").unwrap(), 503);
        assert!(parse_status(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status(b"").is_err());
    }
}
