//! The HTTP client of the discovery kinds that ask an API (Docker, Consul, Kubernetes, and the
//! plaintext and json kinds' endpoints): one GET per connection over TCP, TLS or a unix socket.
//!
//! gobetween's clients open a connection per fetch (`DisableKeepAlives`); so does this one, which
//! keeps it free of pools and idle connections that a reload would have to chase. A body is read
//! whole up to a cap, or streamed line by line for a Kubernetes watch. Nothing here blocks a
//! runtime worker: building a [`Tls`] reads files, so [`Tls::load`] runs on the blocking pool.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{ACCEPT, AUTHORIZATION, CONNECTION, HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper::{HeaderMap, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::tls::PemError;

mod endpoint;
mod tls;

pub(crate) use endpoint::Endpoint;
pub(crate) use tls::{ClientCertificate, Tls, TlsMaterial};

/// Why a request got no usable answer; each names the URL asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("{url}: {problem}")]
    Url { url: String, problem: String },
    #[error("{url}: cannot connect to {dialed}: {source}")]
    Connect {
        url: String,
        dialed: String,
        source: std::io::Error,
    },
    #[error("{url}: TLS handshake: {source}")]
    Handshake { url: String, source: std::io::Error },
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        /// The start of the answer's body, which usually says why.
        body: String,
    },
    #[error("{url}: the answer is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("TLS settings: {0}")]
    Pem(#[from] PemError),
    #[error("TLS settings: {0}")]
    Tls(String),
}

/// One API's address, TLS and headers; each request opens its own connection.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    endpoint: Endpoint,
    /// Another `HOST:PORT` to connect to instead of the endpoint's, keeping its name for SNI,
    /// certificate checks and `Host` (a Kubernetes API server reached through a known master).
    dial: Option<(String, u16)>,
    /// The TLS server name to send and verify instead of the endpoint's host (a kubeconfig's
    /// `tls-server-name`).
    tls_name: Option<String>,
    tls: Option<Tls>,
    headers: Vec<(HeaderName, HeaderValue)>,
    body_limit: usize,
}

/// The largest body read whole unless [`Client::body_limit`] says otherwise.
pub(crate) const DEFAULT_BODY_LIMIT: usize = 16 * 1024 * 1024;

impl Client {
    /// A client of `endpoint`; https needs `tls`, which other schemes ignore.
    ///
    /// # Errors
    /// An https endpoint without TLS settings.
    pub(crate) fn new(endpoint: Endpoint, tls: Option<Tls>) -> Result<Self, ClientError> {
        let tls = match endpoint {
            Endpoint::Https { .. } => Some(tls.ok_or_else(|| {
                ClientError::Tls(format!("{endpoint}: https needs TLS settings"))
            })?),
            _ => None,
        };
        Ok(Self {
            endpoint,
            dial: None,
            tls_name: None,
            tls,
            headers: Vec::new(),
            body_limit: DEFAULT_BODY_LIMIT,
        })
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends `name: value` with every request.
    ///
    /// # Errors
    /// `value` holds characters a header cannot carry; the message names the header only,
    /// since the value may be a secret.
    pub(crate) fn header(mut self, name: HeaderName, value: &str) -> Result<Self, ClientError> {
        let mut value = HeaderValue::from_str(value).map_err(|_| ClientError::Url {
            url: self.endpoint.to_string(),
            problem: format!("the {name} header value holds characters HTTP cannot carry"),
        })?;
        value.set_sensitive(true);
        self.headers.retain(|(existing, _)| *existing != name);
        self.headers.push((name, value));
        Ok(self)
    }

    /// `Authorization: Basic` of `user:password`.
    pub(crate) fn basic_auth(self, user: &str, password: &str) -> Result<Self, ClientError> {
        use base64::Engine;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.header(AUTHORIZATION, &format!("Basic {encoded}"))
    }

    /// `Authorization: Bearer TOKEN`.
    pub(crate) fn bearer(self, token: &str) -> Result<Self, ClientError> {
        self.header(AUTHORIZATION, &format!("Bearer {}", token.trim()))
    }

    /// Connects to `host:port` instead of the endpoint's address.
    pub(crate) fn dial(mut self, host: &str, port: u16) -> Self {
        self.dial = Some((host.to_owned(), port));
        self
    }

    /// Sends and verifies `name` in TLS instead of the endpoint's host.
    pub(crate) fn tls_name(mut self, name: &str) -> Self {
        self.tls_name = Some(name.to_owned());
        self
    }

    #[cfg(test)]
    pub(crate) fn body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// The full URL of `path_and_query`, for messages.
    pub(crate) fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.endpoint)
    }

    /// GETs `path_and_query` and reads the whole body; any status but 2xx is an error.
    ///
    /// # Errors
    /// No connection, TLS or HTTP failure, a status outside 2xx, or a body over the limit.
    pub(crate) async fn get(&self, path_and_query: &str) -> Result<Bytes, ClientError> {
        self.get_with_headers(path_and_query)
            .await
            .map(|(_, body)| body)
    }

    /// [`Self::get`], with the answer's headers (Consul's `X-Consul-Index`).
    ///
    /// # Errors
    /// As [`Self::get`].
    pub(crate) async fn get_with_headers(
        &self,
        path_and_query: &str,
    ) -> Result<(HeaderMap, Bytes), ClientError> {
        let url = self.url(path_and_query);
        let (status, headers, mut body) = self.send(path_and_query).await?;
        let collected = read_capped(&mut body, self.body_limit, &url).await?;
        if status.is_success() {
            Ok((headers, collected))
        } else {
            Err(status_error(url, status, &collected))
        }
    }

    /// GETs `path_and_query` and returns the status and the body to read as it arrives; a
    /// status outside 2xx is an error carrying the start of the body.
    ///
    /// # Errors
    /// As [`Self::get`], before the body.
    pub(crate) async fn stream(&self, path_and_query: &str) -> Result<Lines, ClientError> {
        let url = self.url(path_and_query);
        let (status, _, mut body) = self.send(path_and_query).await?;
        if !status.is_success() {
            let start = read_capped(&mut body, 64 * 1024, &url)
                .await
                .unwrap_or_default();
            return Err(status_error(url, status, &start));
        }
        Ok(Lines {
            url,
            body,
            buffer: BytesMut::new(),
            line_limit: self.body_limit,
        })
    }

    async fn send(
        &self,
        path_and_query: &str,
    ) -> Result<(StatusCode, HeaderMap, Incoming), ClientError> {
        let url = self.url(path_and_query);
        let request = self.request(path_and_query, &url)?;
        let http_error = |error: hyper::Error| ClientError::Http {
            url: url.clone(),
            message: error_chain(&error),
        };
        let io = self.connect(&url).await?;
        let (mut sender, connection) = http1::handshake(io).await.map_err(http_error)?;
        // The connection task ends with the response body (or its drop).
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("discovery HTTP connection ended: {error}");
            }
        });
        let response = sender.send_request(request).await.map_err(http_error)?;
        let (parts, body) = response.into_parts();
        Ok((parts.status, parts.headers, body))
    }

    fn request(
        &self,
        path_and_query: &str,
        url: &str,
    ) -> Result<hyper::Request<Empty<Bytes>>, ClientError> {
        let uri: Uri = path_and_query.parse().map_err(|_| ClientError::Url {
            url: url.to_owned(),
            problem: format!("{path_and_query:?} is not a valid request path"),
        })?;
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "localhost".to_owned(),
            Endpoint::Http { host, port } | Endpoint::Https { host, port } => {
                if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                }
            }
        };
        let mut builder = hyper::Request::get(uri)
            .header(HOST, host)
            .header(USER_AGENT, concat!("betwixt/", env!("CARGO_PKG_VERSION")))
            .header(ACCEPT, "application/json, */*")
            .header(CONNECTION, "close");
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(Empty::new())
            .map_err(|error| ClientError::Url {
                url: url.to_owned(),
                problem: error.to_string(),
            })
    }

    async fn connect(&self, url: &str) -> Result<TokioIo<Box<dyn Io>>, ClientError> {
        let connect_error = |dialed: String, source| ClientError::Connect {
            url: url.to_owned(),
            dialed,
            source,
        };
        let (host, port) = match (&self.endpoint, &self.dial) {
            (Endpoint::Unix(path), _) => {
                let stream = UnixStream::connect(path)
                    .await
                    .map_err(|error| connect_error(path.display().to_string(), error))?;
                return Ok(TokioIo::new(Box::new(stream)));
            }
            (_, Some((host, port))) => (host.as_str(), *port),
            (endpoint, None) => endpoint.host_port().unwrap_or(("", 0)),
        };
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|error| connect_error(format!("{host}:{port}"), error))?;
        let Some(tls) = &self.tls else {
            return Ok(TokioIo::new(Box::new(tcp)));
        };
        let name = match (&self.tls_name, self.endpoint.host_port()) {
            (Some(name), _) => name.as_str(),
            (None, Some((name, _))) => name,
            (None, None) => host,
        };
        let server_name = server_name(name).map_err(|problem| ClientError::Url {
            url: url.to_owned(),
            problem,
        })?;
        let stream = TlsConnector::from(tls.config())
            .connect(server_name, tcp)
            .await
            .map_err(|source| ClientError::Handshake {
                url: url.to_owned(),
                source,
            })?;
        Ok(TokioIo::new(Box::new(stream)))
    }
}

/// The SNI and verified name: an IP address or a DNS name.
fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(name.to_owned())
            .map_err(|_| format!("{name:?} is not a valid TLS server name")),
    }
}

/// A byte stream of any transport.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A body read line by line: a Kubernetes watch sends one JSON event per line.
pub(crate) struct Lines {
    url: String,
    body: Incoming,
    buffer: BytesMut,
    line_limit: usize,
}

impl Lines {
    /// The next line without its newline; `None` at the end of the body (a last line
    /// without a newline counts).
    ///
    /// # Errors
    /// The connection failed, or a line grew past the limit.
    pub(crate) async fn next_line(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|byte| *byte == b'\n') {
                let line = self.buffer.split_to(end + 1).freeze();
                return Ok(Some(line.slice(..end)));
            }
            if self.buffer.len() > self.line_limit {
                return Err(ClientError::TooLarge {
                    url: self.url.clone(),
                    limit: self.line_limit,
                });
            }
            match self.body.frame().await {
                None if self.buffer.is_empty() => return Ok(None),
                None => return Ok(Some(self.buffer.split().freeze())),
                Some(Err(error)) => {
                    return Err(ClientError::Http {
                        url: self.url.clone(),
                        message: error_chain(&error),
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

async fn read_capped(body: &mut Incoming, limit: usize, url: &str) -> Result<Bytes, ClientError> {
    let mut collected = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| ClientError::Http {
            url: url.to_owned(),
            message: error_chain(&error),
        })?;
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > limit {
                return Err(ClientError::TooLarge {
                    url: url.to_owned(),
                    limit,
                });
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}

fn status_error(url: String, status: StatusCode, body: &[u8]) -> ClientError {
    let text = String::from_utf8_lossy(body);
    let mut body: String = text.trim().chars().take(200).collect();
    if body.is_empty() {
        body = "(no body)".to_owned();
    }
    ClientError::Status { url, status, body }
}

/// hyper's message with its causes ("connection error: Connection reset by peer").
fn error_chain(error: &hyper::Error) -> String {
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    message
}

/// Percent-encodes `text` for a path segment or a query value (RFC 3986 unreserved kept).
pub(crate) fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::discovery::responder::{Answer, Responder};

    #[test]
    fn endpoints_parse_as_the_kinds_write_them() {
        let parsed = |text: &str, tls: bool| Endpoint::parse(text, tls).map(|e| e.to_string());
        assert_eq!(
            parsed("unix:///var/run/docker.sock", false).unwrap(),
            "unix:///var/run/docker.sock"
        );
        assert_eq!(
            parsed("tcp://10.0.0.5:2375", false).unwrap(),
            "http://10.0.0.5:2375"
        );
        assert_eq!(
            parsed("tcp://10.0.0.5:2376", true).unwrap(),
            "https://10.0.0.5:2376"
        );
        assert_eq!(
            parsed("https://[fd00::1]/api", false).unwrap(),
            "https://[fd00::1]:443"
        );
        assert_eq!(parsed("http://consul", false).unwrap(), "http://consul:80");
        for bad in [
            "10.0.0.5:2375",
            "ftp://h:1",
            "http://:80",
            "http://h:0",
            "unix://",
        ] {
            assert!(parsed(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("kube api/x=1&y"), "kube%20api%2Fx%3D1%26y");
        assert_eq!(encode("a-b.c_d~e"), "a-b.c_d~e");
    }

    fn client(responder: &Responder) -> Client {
        let endpoint = Endpoint::parse(&format!("http://{}", responder.authority()), false);
        Client::new(endpoint.unwrap(), None).unwrap()
    }

    #[tokio::test]
    async fn bodies_past_the_limit_are_refused() {
        let responder = Responder::http(|_| Answer::json(&"x".repeat(100))).await;
        let client = client(&responder).body_limit(99);
        let error = client.get("/big").await.unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "http://{}/big: the answer is larger than 99 bytes",
                responder.authority()
            )
        );
        let client = client.body_limit(100);
        assert_eq!(client.get("/big").await.unwrap().len(), 100);
    }

    #[tokio::test]
    async fn a_streamed_body_is_read_line_by_line() {
        let (chunks, receiver) = mpsc::channel(4);
        let receiver = std::sync::Mutex::new(Some(receiver));
        let responder =
            Responder::http(move |_| Answer::stream(receiver.lock().unwrap().take().unwrap()))
                .await;
        let client = client(&responder).bearer("t0ken\n").unwrap();
        let mut lines = client.stream("/watch").await.unwrap();
        for chunk in ["a\nb", "c\n", "\n", "d"] {
            chunks.send(Bytes::from(chunk)).await.unwrap();
        }
        drop(chunks);
        let mut read = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            read.push(String::from_utf8(line.to_vec()).unwrap());
        }
        assert_eq!(read, ["a", "bc", "", "d"]);
        let request = responder.requests().remove(0);
        assert_eq!(request.header("authorization"), Some("Bearer t0ken"));
        assert_eq!(request.header("host"), Some(responder.authority().as_str()));
    }
}
