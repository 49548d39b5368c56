//! The receiving side (`[accept_proxy]`): a PROXY v1 or v2 header read from a client
//! connection before anything else, the version told by its first bytes.
//!
//! Runs in the session's task under the server's `read_timeout`. Reads never go past the
//! header (the bytes after it belong to the client's stream, a TLS ClientHello perhaps): one
//! peek usually holds the whole header and one read consumes exactly it; a header split over
//! segments is read to its end by its own length (v2) or line by line (v1).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::V2_SIGNATURE;

/// The longest v1 line, `\r\n` included, as the specification bounds it.
pub const V1_MAX: usize = 107;

/// The longest v2 header read: the 16 fixed bytes, the addresses and 2 KiB of TLVs. The
/// format allows 64 KiB, but what senders put there (SSL details, a connection id, an AWS
/// VPC endpoint) takes a few hundred bytes, and a bigger claim is refused rather than buffered.
pub const V2_MAX: usize = 16 + 216 + 2048;

const V1_PREFIX: &[u8] = b"PROXY ";

/// The addresses a complete header carried: `None` for a LOCAL (health check) or UNKNOWN
/// connection, whose peer address stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxied {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// What a prefix of the stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes.
    Complete {
        len: usize,
        addresses: Option<Proxied>,
    },
    NeedMore,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a PROXY header (neither the v1 \"PROXY \" nor the v2 signature)")]
    NotProxy,
    #[error("a v1 header longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("a malformed v1 header")]
    V1Malformed,
    #[error("a v2 header of {0} bytes, more than the {V2_MAX} accepted")]
    V2TooLong(usize),
    #[error("a v2 header of unknown version or command")]
    V2Version,
    #[error("a v2 header too short for its address family")]
    V2Addresses,
    #[error("no complete header within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed before the header ended")]
    Closed,
}

/// Parses the header at the start of `bytes`; never reads past `bytes`, never panics.
///
/// # Errors
/// The bytes cannot begin a valid header.
pub fn parse(bytes: &[u8]) -> Result<Parsed, HeaderError> {
    match bytes.first() {
        None => Ok(Parsed::NeedMore),
        Some(b'P') => parse_v1(bytes),
        Some(b'\r') => parse_v2(bytes),
        Some(_) => Err(HeaderError::NotProxy),
    }
}

fn parse_v1(bytes: &[u8]) -> Result<Parsed, HeaderError> {
    let prefix = bytes.len().min(V1_PREFIX.len());
    if bytes[..prefix] != V1_PREFIX[..prefix] {
        return Err(HeaderError::NotProxy);
    }
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|pair| pair == b"\r\n") else {
        return if bytes.len() >= V1_MAX {
            Err(HeaderError::V1TooLong)
        } else {
            Ok(Parsed::NeedMore)
        };
    };
    let line = std::str::from_utf8(&bytes[V1_PREFIX.len().min(end)..end])
        .map_err(|_| HeaderError::V1Malformed)?;
    let words: Vec<&str> = line.split(' ').collect();
    let addresses = match words[..] {
        ["UNKNOWN", ..] => None,
        [
            family @ ("TCP4" | "TCP6"),
            source,
            destination,
            source_port,
            destination_port,
        ] => {
            let ip = |text: &str| -> Result<IpAddr, HeaderError> {
                let ip = match family {
                    "TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4),
                    _ => text.parse::<Ipv6Addr>().map(IpAddr::V6),
                };
                ip.map_err(|_| HeaderError::V1Malformed)
            };
            let port = |text: &str| text.parse::<u16>().map_err(|_| HeaderError::V1Malformed);
            Some(Proxied {
                source: SocketAddr::new(ip(source)?, port(source_port)?),
                destination: SocketAddr::new(ip(destination)?, port(destination_port)?),
            })
        }
        _ => return Err(HeaderError::V1Malformed),
    };
    Ok(Parsed::Complete {
        len: end + 2,
        addresses,
    })
}

fn parse_v2(bytes: &[u8]) -> Result<Parsed, HeaderError> {
    let prefix = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..prefix] != V2_SIGNATURE[..prefix] {
        return Err(HeaderError::NotProxy);
    }
    let Some(fixed) = bytes.get(..16) else {
        return Ok(Parsed::NeedMore);
    };
    let (version_command, family, length) = (
        fixed[12],
        fixed[13],
        usize::from(u16::from_be_bytes([fixed[14], fixed[15]])),
    );
    let len = 16 + length;
    if len > V2_MAX {
        return Err(HeaderError::V2TooLong(len));
    }
    let local = match version_command {
        0x20 => true,
        0x21 => false,
        _ => return Err(HeaderError::V2Version),
    };
    let Some(body) = bytes.get(16..len) else {
        return Ok(Parsed::NeedMore);
    };
    let addresses = match family >> 4 {
        _ if local => None,
        0x1 => {
            let b = body.get(..12).ok_or(HeaderError::V2Addresses)?;
            let ip = |at: usize| IpAddr::from([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            Some(Proxied {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([b[8], b[9]])),
                destination: SocketAddr::new(ip(4), u16::from_be_bytes([b[10], b[11]])),
            })
        }
        0x2 => {
            let b = body.get(..36).ok_or(HeaderError::V2Addresses)?;
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&b[at..at + 16]);
                IpAddr::from(octets)
            };
            Some(Proxied {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([b[32], b[33]])),
                destination: SocketAddr::new(ip(16), u16::from_be_bytes([b[34], b[35]])),
            })
        }
        // UNSPEC or a Unix socket: no IP address to take.
        _ => None,
    };
    Ok(Parsed::Complete { len, addresses })
}

/// Reads one header from `stream` within `timeout`, consuming exactly its bytes.
///
/// # Errors
/// No valid header arrived in time, or the client closed first.
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<Proxied>, HeaderError> {
    tokio::time::timeout(timeout, read(stream))
        .await
        .map_err(|_| HeaderError::Timeout(timeout))?
}

async fn read(stream: &mut TcpStream) -> Result<Option<Proxied>, HeaderError> {
    let mut buffer = vec![0u8; V2_MAX];
    let seen = stream
        .peek(&mut buffer)
        .await
        .map_err(|_| HeaderError::Closed)?;
    if seen == 0 {
        return Err(HeaderError::Closed);
    }
    let filled = match parse(&buffer[..seen])? {
        Parsed::Complete { len, .. } => {
            read_exact(stream, &mut buffer[..len]).await?;
            len
        }
        Parsed::NeedMore if buffer[0] == b'\r' => read_v2_by_length(stream, &mut buffer).await?,
        Parsed::NeedMore => read_v1_line(stream, &mut buffer).await?,
    };
    match parse(&buffer[..filled])? {
        Parsed::Complete { addresses, .. } => Ok(addresses),
        Parsed::NeedMore => Err(HeaderError::Closed),
    }
}

/// The 16 fixed bytes, then as many as they announce.
async fn read_v2_by_length(
    stream: &mut TcpStream,
    buffer: &mut [u8],
) -> Result<usize, HeaderError> {
    read_exact(stream, &mut buffer[..16]).await?;
    let len = 16 + usize::from(u16::from_be_bytes([buffer[14], buffer[15]]));
    // Checks the signature and the size before reading the rest.
    parse(&buffer[..16])?;
    let body = buffer.get_mut(16..len).ok_or(HeaderError::V2TooLong(len))?;
    read_exact(stream, body).await?;
    Ok(len)
}

/// Byte by byte up to `\r\n`: only for a line that arrived in pieces.
async fn read_v1_line(stream: &mut TcpStream, buffer: &mut [u8]) -> Result<usize, HeaderError> {
    for filled in 0..V1_MAX {
        read_exact(stream, &mut buffer[filled..=filled]).await?;
        if filled >= 1 && &buffer[filled - 1..=filled] == b"\r\n" {
            return Ok(filled + 1);
        }
        // Garbage is refused at its first byte, not after 107 of them.
        parse(&buffer[..=filled])?;
    }
    Err(HeaderError::V1TooLong)
}

async fn read_exact(stream: &mut TcpStream, into: &mut [u8]) -> Result<(), HeaderError> {
    stream
        .read_exact(into)
        .await
        .map(drop)
        .map_err(|_| HeaderError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_protocol::{Transport, v1_header, v2_header};

    fn addresses(source: &str, destination: &str) -> Option<Proxied> {
        Some(Proxied {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        })
    }

    #[test]
    fn headers_betwixt_sends_parse_back() {
        let v1 = v1_header(
            "192.0.2.1:56324".parse().unwrap(),
            "192.0.2.9:6443".parse().unwrap(),
        );
        let mut stream = v1.as_bytes().to_vec();
        stream.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&stream),
            Ok(Parsed::Complete {
                len: v1.len(),
                addresses: addresses("192.0.2.1:56324", "192.0.2.9:6443"),
            })
        );
        let v2 = v2_header(
            Transport::Stream,
            "[2001:db8::1]:53000".parse().unwrap(),
            "[::1]:6443".parse().unwrap(),
            Some("k3s.example"),
        );
        assert_eq!(
            parse(&v2),
            Ok(Parsed::Complete {
                len: v2.len(),
                addresses: addresses("[2001:db8::1]:53000", "[::1]:6443"),
            })
        );
        for cut in 0..v2.len() {
            assert_eq!(parse(&v2[..cut]), Ok(Parsed::NeedMore), "cut at {cut}");
        }
        for cut in 0..v1.len() {
            assert_eq!(parse(&v1.as_bytes()[..cut]), Ok(Parsed::NeedMore));
        }
    }

    #[test]
    fn local_and_unknown_keep_the_peer_address() {
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            Ok(Parsed::Complete {
                len: 16,
                addresses: None
            })
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nGET"),
            Ok(Parsed::Complete {
                len: 15,
                addresses: None
            })
        );
    }

    #[test]
    fn garbage_is_refused_without_reading_on() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HeaderError::NotProxy));
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Err(HeaderError::NotProxy));
        assert_eq!(parse(b"PROXI"), Err(HeaderError::NotProxy));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(HeaderError::NotProxy));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n"),
            Err(HeaderError::V1Malformed)
        );
        assert_eq!(
            parse(b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n"),
            Err(HeaderError::V1Malformed)
        );
        assert_eq!(parse(b"PROXY TCP4\r\n"), Err(HeaderError::V1Malformed));
        assert_eq!(parse(&[b'P'; 200][..]), Err(HeaderError::NotProxy));
        let mut long = b"PROXY ".to_vec();
        long.extend_from_slice(&[b'x'; 120]);
        assert_eq!(parse(&long), Err(HeaderError::V1TooLong));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&v2), Err(HeaderError::V2TooLong(16 + 65535)));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x31, 0x11, 0, 0]);
        assert_eq!(parse(&v2), Err(HeaderError::V2Version));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x21, 0, 12]);
        v2.extend_from_slice(&[0; 12]);
        assert_eq!(parse(&v2), Err(HeaderError::V2Addresses));
        // Every prefix of random-looking bytes parses to an answer, never a panic.
        let noise: Vec<u8> = (0..600u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in [b'P', b'\r'] {
            let mut bytes = vec![start];
            bytes.extend_from_slice(&noise);
            for cut in 0..bytes.len() {
                let _ = parse(&bytes[..cut]);
            }
        }
    }
}
