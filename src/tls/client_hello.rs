//! Reading the server name from the first bytes a TLS client sends, without terminating TLS:
//! SNI routing in passthrough forwards those very bytes to the backend afterwards.
//!
//! A ClientHello may arrive in several TCP segments and span several TLS records (large
//! post-quantum key shares do); [`parse`] looks at everything received so far and says whether
//! it needs more. What it accepts is bounded by [`MAX_CLIENT_HELLO`].

/// The most a ClientHello may take, records and headers included; a client sending more is
/// refused. Today's largest (hybrid post-quantum key shares, padding) stay under 4 KiB.
pub const MAX_CLIENT_HELLO: usize = 32 * 1024;

const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

/// What the bytes received so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A complete ClientHello, and the server name it asks for (`None`: no SNI extension).
    Hello(Option<String>),
    /// Incomplete: read more.
    NeedMore,
}

/// Why bytes are not a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not a TLS handshake record (first byte {0:#04x})")]
    NotHandshake(u8),
    #[error("the first handshake message is not a ClientHello")]
    NotClientHello,
    #[error("the ClientHello is larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("the ClientHello is truncated or inconsistent")]
    Inconsistent,
    #[error("the server name is not printable ASCII")]
    BadName,
}

/// Parses the ClientHello at the start of `received`.
///
/// # Errors
/// The bytes cannot be (the start of) a ClientHello.
pub fn parse(received: &[u8]) -> Result<Parsed, Malformed> {
    parse_with_rest(received).map(|(parsed, _)| parsed)
}

/// True when `received` is one complete ClientHello and nothing else: no byte of another
/// handshake message or record after it.
pub fn is_exactly_one_hello(received: &[u8]) -> bool {
    matches!(parse_with_rest(received), Ok((Parsed::Hello(_), 0)))
}

/// [`parse`], and how many bytes follow the ClientHello's end (in its last record or after).
fn parse_with_rest(received: &[u8]) -> Result<(Parsed, usize), Malformed> {
    let mut message = Vec::new();
    let mut rest = received;
    loop {
        let Some(header) = rest.get(..RECORD_HEADER) else {
            return Ok((Parsed::NeedMore, 0));
        };
        if header[0] != CONTENT_HANDSHAKE {
            return Err(Malformed::NotHandshake(header[0]));
        }
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if length == 0 {
            return Err(Malformed::Inconsistent);
        }
        let Some(fragment) = rest.get(RECORD_HEADER..RECORD_HEADER + length) else {
            return if received.len() >= MAX_CLIENT_HELLO {
                Err(Malformed::TooLarge)
            } else {
                Ok((Parsed::NeedMore, 0))
            };
        };
        message.extend_from_slice(fragment);
        rest = &rest[RECORD_HEADER + length..];
        if let Some(&kind) = message.first()
            && kind != HANDSHAKE_CLIENT_HELLO
        {
            return Err(Malformed::NotClientHello);
        }
        if message.len() < 4 {
            continue;
        }
        let body_length =
            usize::from(message[1]) << 16 | usize::from(message[2]) << 8 | usize::from(message[3]);
        if body_length + 4 > MAX_CLIENT_HELLO {
            return Err(Malformed::TooLarge);
        }
        if message.len() >= body_length + 4 {
            let after = message.len() - (body_length + 4) + rest.len();
            let name = server_name(&message[4..4 + body_length])?;
            return Ok((Parsed::Hello(name), after));
        }
    }
}

/// A cursor over a ClientHello body; every read fails cleanly past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], Malformed> {
        let taken = self.0.get(..count).ok_or(Malformed::Inconsistent)?;
        self.0 = &self.0[count..];
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// A vector with a one- or two-byte length prefix.
    fn vector(&mut self, prefix: usize) -> Result<Reader<'a>, Malformed> {
        let length = match prefix {
            1 => usize::from(self.byte()?),
            _ => usize::from(self.u16()?),
        };
        Ok(Reader(self.take(length)?))
    }
}

/// The host name of the server_name extension of a ClientHello body.
fn server_name(body: &[u8]) -> Result<Option<String>, Malformed> {
    let mut hello = Reader(body);
    hello.take(2 + 32)?; // legacy_version, random
    hello.vector(1)?; // legacy_session_id
    hello.vector(2)?; // cipher_suites
    hello.vector(1)?; // legacy_compression_methods
    if hello.0.is_empty() {
        return Ok(None); // no extensions at all (old clients)
    }
    let mut extensions = hello.vector(2)?;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = extensions.vector(2)?;
        if kind != EXTENSION_SERVER_NAME {
            continue;
        }
        let mut names = data.vector(2)?;
        while !names.0.is_empty() {
            let name_type = names.byte()?;
            let name = names.vector(2)?.0;
            if name_type == NAME_TYPE_HOST {
                if name.is_empty() || !name.iter().all(|byte| byte.is_ascii_graphic()) {
                    return Err(Malformed::BadName);
                }
                return Ok(Some(String::from_utf8_lossy(name).into_owned()));
            }
        }
        return Ok(None);
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    /// The first flight of a real rustls client asking for `name`.
    pub(crate) fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn a_hello_is_exactly_one_only_without_bytes_after_it() {
        let hello = client_hello("api.cluster-a.example");
        assert!(is_exactly_one_hello(&hello));
        assert!(!is_exactly_one_hello(&hello[..hello.len() - 1]));
        let mut early_data = hello.clone();
        early_data.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        assert!(!is_exactly_one_hello(&early_data));
        assert!(!is_exactly_one_hello(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!is_exactly_one_hello(b""));
    }

    #[test]
    fn reads_the_name_from_a_whole_hello_and_asks_for_more_before() {
        let hello = client_hello("api.cluster-a.example");
        let name = Parsed::Hello(Some("api.cluster-a.example".into()));
        assert_eq!(parse(&hello), Ok(name));
        for cut in [0, 1, 4, 5, 6, 40, hello.len() - 1] {
            assert_eq!(parse(&hello[..cut]), Ok(Parsed::NeedMore), "cut at {cut}");
        }
    }

    /// The same hello re-framed into records of 7 bytes each, as a client may send it.
    #[test]
    fn a_hello_split_over_many_records_is_read_whole() {
        let hello = client_hello("b.example");
        let message = &hello[RECORD_HEADER..];
        let mut records = Vec::new();
        for chunk in message.chunks(7) {
            records.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1, 0, chunk.len() as u8]);
            records.extend_from_slice(chunk);
        }
        assert_eq!(parse(&records), Ok(Parsed::Hello(Some("b.example".into()))));
        assert_eq!(parse(&records[..records.len() - 3]), Ok(Parsed::NeedMore));
    }

    #[test]
    fn garbage_and_lies_are_refused() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(Malformed::NotHandshake(b'G'))
        );
        assert_eq!(
            parse(&[CONTENT_HANDSHAKE, 3, 1, 0, 4, 2, 0, 0, 0]),
            Err(Malformed::NotClientHello)
        );
        assert_eq!(
            parse(&[CONTENT_HANDSHAKE, 3, 1, 0, 4, 1, 0xff, 0, 0]),
            Err(Malformed::TooLarge)
        );
        let mut short = vec![CONTENT_HANDSHAKE, 3, 1, 0, 8, 1, 0, 0, 4];
        short.extend_from_slice(&[3, 3, 0, 0]);
        assert_eq!(parse(&short), Err(Malformed::Inconsistent));
    }
}
