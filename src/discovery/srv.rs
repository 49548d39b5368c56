//! `kind = "srv"`: an SRV query for `srv_lookup_pattern` to the one name server
//! `srv_lookup_server`, over UDP (with EDNS, 4096-byte answers) or TCP, as gobetween asks it.
//!
//! Each SRV record is a backend: its port, priority and weight, and as sni its target name
//! without the final dot. The host is the target's address from the additional section (A,
//! else AAAA); when that has none, the same server is asked for the target's A, then AAAA,
//! record; a target with no address is left out (gobetween's behaviour). An answer with no SRV
//! record is an empty list, not a failure. Each query waits at most [`QUERY_TIMEOUT`] for its
//! answer, the default of gobetween's DNS library, so a lost datagram cannot stall discovery
//! even with `timeout = "0"`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::debug;

use crate::config::{BackendSpec, DnsProtocol, SrvDiscovery};

/// The answer size announced with EDNS over UDP (gobetween's).
const UDP_ANSWER_SIZE: u16 = 4096;

/// How long one query waits for its answer.
pub const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{name}: not a DNS name: {problem}")]
    Name { name: String, problem: String },
    /// The message ends with the system error, so it is not also a `source()`.
    #[error("{server}: cannot resolve the name server: {error}")]
    Resolve {
        server: String,
        error: std::io::Error,
    },
    #[error("{server}: {query}: {error}")]
    Exchange {
        server: String,
        query: String,
        error: std::io::Error,
    },
    #[error("{server}: {query}: not a DNS answer: {problem}")]
    Malformed {
        server: String,
        query: String,
        problem: String,
    },
    #[error("{server}: {query}: the server answered {code}")]
    Refused {
        server: String,
        query: String,
        code: ResponseCode,
    },
}

pub(crate) async fn fetch(source: &SrvDiscovery) -> Result<Vec<BackendSpec>, Error> {
    let server = name_server(&source.server).await?;
    let name = Name::from_ascii(&source.name).map_err(|error| Error::Name {
        name: source.name.clone(),
        problem: error.to_string(),
    })?;
    let asker = Asker {
        server,
        server_text: &source.server,
        protocol: source.protocol,
    };
    let answer = asker.ask(&name, RecordType::SRV).await?;
    let mut addresses: HashMap<Name, IpAddr> = HashMap::new();
    // A records first, so a target with both gets its IPv4 address, as gobetween's lookup.
    for wanted in [RecordType::A, RecordType::AAAA] {
        for record in answer.additionals() {
            if record.record_type() == wanted {
                if let Some(ip) = address(record.data()) {
                    addresses.entry(record.name().clone()).or_insert(ip);
                }
            }
        }
    }
    let mut backends = Vec::new();
    for record in answer.answers() {
        let RData::SRV(srv) = record.data() else {
            continue;
        };
        let target = srv.target();
        let ip = match addresses.get(target) {
            Some(ip) => Some(*ip),
            None => asker.resolve(target).await?,
        };
        let Some(ip) = ip else {
            debug!(server = %source.server, target = %target, "SRV target has no address; skipped");
            continue;
        };
        addresses.insert(target.clone(), ip);
        let sni = target.to_ascii();
        backends.push(BackendSpec {
            host: ip.to_string(),
            port: srv.port(),
            weight: u32::from(srv.weight()),
            priority: u32::from(srv.priority()),
            max_connections: None,
            sni: Some(sni.trim_end_matches('.').to_owned()).filter(|sni| !sni.is_empty()),
        });
    }
    Ok(backends)
}

/// `host:port` of the name server; a name is resolved by the system.
async fn name_server(text: &str) -> Result<SocketAddr, Error> {
    let resolve_error = |error| Error::Resolve {
        server: text.to_owned(),
        error,
    };
    tokio::net::lookup_host(text)
        .await
        .map_err(resolve_error)?
        .next()
        .ok_or_else(|| resolve_error(std::io::Error::other("no address")))
}

fn address(data: &RData) -> Option<IpAddr> {
    match data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// Queries to one name server over one protocol.
struct Asker<'a> {
    server: SocketAddr,
    server_text: &'a str,
    protocol: DnsProtocol,
}

impl Asker<'_> {
    /// The target's A record, else its AAAA record, from the same server.
    async fn resolve(&self, target: &Name) -> Result<Option<IpAddr>, Error> {
        for wanted in [RecordType::A, RecordType::AAAA] {
            let answer = self.ask(target, wanted).await?;
            let found = answer
                .answers()
                .iter()
                .filter(|record| record.record_type() == wanted)
                .find_map(|record| address(record.data()));
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    async fn ask(&self, name: &Name, kind: RecordType) -> Result<Message, Error> {
        let query_text = format!("{name} {kind}");
        let id: u16 = fastrand::u16(..);
        let mut query = Message::new();
        query
            .set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(name.clone(), kind));
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_ANSWER_SIZE);
        query.set_edns(edns);
        let exchange_error = |error| Error::Exchange {
            server: self.server_text.to_owned(),
            query: query_text.clone(),
            error,
        };
        let malformed = |problem: String| Error::Malformed {
            server: self.server_text.to_owned(),
            query: query_text.clone(),
            problem,
        };
        let bytes = query
            .to_vec()
            .map_err(|error| malformed(error.to_string()))?;
        let exchange = async {
            match self.protocol {
                DnsProtocol::Udp => self.exchange_udp(&bytes, id).await,
                DnsProtocol::Tcp => self.exchange_tcp(&bytes).await,
            }
        };
        let reply = tokio::time::timeout(QUERY_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {QUERY_TIMEOUT:?}"),
                ))
            })
            .map_err(exchange_error)?;
        let answer = Message::from_vec(&reply).map_err(|error| malformed(error.to_string()))?;
        if answer.id() != id {
            return Err(malformed(format!(
                "answer id {} for query {id}",
                answer.id()
            )));
        }
        match answer.response_code() {
            ResponseCode::NoError | ResponseCode::NXDomain => Ok(answer),
            code => Err(Error::Refused {
                server: self.server_text.to_owned(),
                query: query_text,
                code,
            }),
        }
    }

    /// One datagram out; the first reply from the server with the query's id is the answer
    /// (anything else arriving on the socket is ignored).
    async fn exchange_udp(&self, query: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
        let local: SocketAddr = if self.server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(self.server).await?;
        socket.send(query).await?;
        let mut buffer = vec![0u8; usize::from(UDP_ANSWER_SIZE)];
        loop {
            let len = socket.recv(&mut buffer).await?;
            if len >= 2 && buffer[..2] == id.to_be_bytes() {
                buffer.truncate(len);
                return Ok(buffer);
            }
        }
    }

    /// A two-byte length before the message each way (RFC 1035 4.2.2).
    async fn exchange_tcp(&self, query: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(self.server).await?;
        let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await?;
        let mut reply = vec![0u8; usize::from(len)];
        stream.read_exact(&mut reply).await?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name server that never answers: the query gives up after [`QUERY_TIMEOUT`] (in
    /// paused time) and the error names the server and the question.
    #[tokio::test(start_paused = true)]
    async fn a_silent_name_server_fails_the_query_in_time() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = silent.local_addr().unwrap().to_string();
        let source = SrvDiscovery {
            server: server.clone(),
            name: "_api._tcp.test.".into(),
            protocol: DnsProtocol::Udp,
        };
        let error = fetch(&source).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("{server}: _api._tcp.test. SRV: no answer within 2s")
        );
    }
}
