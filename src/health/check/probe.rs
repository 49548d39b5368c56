//! gobetween's `probe`: send bytes, read an answer, compare (starts_with or regexp), over TCP,
//! UDP or TLS.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;

use super::tls::{self, Client};
use super::{CheckError, Target};
use crate::config::{ProbeCheck, ProbeProtocol, ProbeStrategy};

pub async fn check(
    probe: &ProbeCheck,
    tls_client: Option<&Client>,
    target: &Target,
) -> Result<(), CheckError> {
    let answer = match (&probe.protocol, tls_client) {
        (ProbeProtocol::Udp, _) => exchange_udp(probe, target).await?,
        (ProbeProtocol::Tls(_), Some(client)) => {
            let mut stream = client.handshake(target).await?;
            let answer = exchange(&mut stream, probe).await;
            tls::close(&mut stream).await;
            answer?
        }
        _ => exchange(&mut target.connect().await?, probe).await?,
    };
    matches(probe, &answer)
}

/// How many bytes of answer to read: `probe_recv_len`, or the expected prefix's length; never
/// more than [`ProbeCheck::MAX_RECV_LEN`] (validation refuses more).
fn answer_len(probe: &ProbeCheck) -> usize {
    let wanted = if probe.recv_len > 0 {
        probe.recv_len
    } else {
        probe.recv.len()
    };
    wanted.min(ProbeCheck::MAX_RECV_LEN)
}

/// Sends the probe and reads the answer until `answer_len` bytes or the end of the stream;
/// the buffer grows with what arrives, not with what could.
async fn exchange(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    probe: &ProbeCheck,
) -> Result<Vec<u8>, CheckError> {
    if !probe.send.is_empty() {
        stream
            .write_all(&probe.send)
            .await
            .map_err(CheckError::Io)?;
        stream.flush().await.map_err(CheckError::Io)?;
    }
    let mut answer = Vec::new();
    stream
        .take(answer_len(probe) as u64)
        .read_to_end(&mut answer)
        .await
        .map_err(CheckError::Io)?;
    Ok(answer)
}

async fn exchange_udp(probe: &ProbeCheck, target: &Target) -> Result<Vec<u8>, CheckError> {
    let addr = match target.resolved {
        Some(addr) => addr,
        None => tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(CheckError::Connect)?
            .next()
            .ok_or_else(|| CheckError::Connect(std::io::Error::other("no address")))?,
    };
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).await.map_err(CheckError::Io)?;
    socket.connect(addr).await.map_err(CheckError::Connect)?;
    socket.send(&probe.send).await.map_err(CheckError::Io)?;
    let mut answer = vec![0u8; answer_len(probe).max(1500)];
    let read = socket.recv(&mut answer).await.map_err(CheckError::Io)?;
    answer.truncate(read);
    Ok(answer)
}

fn matches(probe: &ProbeCheck, answer: &[u8]) -> Result<(), CheckError> {
    let ok = match &probe.strategy {
        ProbeStrategy::StartsWith => answer.starts_with(&probe.recv),
        ProbeStrategy::Regexp(pattern) => pattern.is_match(answer),
    };
    if ok {
        Ok(())
    } else {
        Err(CheckError::Mismatch {
            got: String::from_utf8_lossy(answer).into_owned(),
            expected: String::from_utf8_lossy(&probe.recv).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    #[tokio::test]
    async fn the_answer_buffer_grows_with_what_is_read_not_with_probe_recv_len() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4];
            stream.read_exact(&mut request).await.unwrap();
            stream.write_all(b"+PONG\r\n").await.unwrap();
        });
        let probe = ProbeCheck {
            protocol: ProbeProtocol::Tcp,
            strategy: ProbeStrategy::StartsWith,
            send: b"PING".to_vec(),
            recv: b"+PONG".to_vec(),
            recv_len: ProbeCheck::MAX_RECV_LEN,
        };
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let answer = exchange(&mut stream, &probe).await.unwrap();
        server.await.unwrap();
        assert_eq!(answer, b"+PONG\r\n");
        assert!(
            answer.capacity() < 1024,
            "{} bytes reserved for a 7-byte answer",
            answer.capacity()
        );
        assert!(matches(&probe, &answer).is_ok());
    }
}
