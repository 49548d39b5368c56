//! One HTTP/1.1 GET of a discovery endpoint (`plaintext`, `json`), over TLS for `https://`
//! with the system's roots, as gobetween's Go client. The answer must be a 2xx (gobetween
//! parsed any body, so an error page could empty a server) within [`MAX_BODY`] bytes.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper::client::conn::http1;
use hyper::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The largest body read.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url}: {problem}")]
    Url { url: String, problem: String },
    /// The message ends with the system error, so it is not also a `source()`.
    #[error("{url}: cannot connect: {error}")]
    Connect { url: String, error: std::io::Error },
    #[error("{url}: TLS: {error}")]
    Tls { url: String, error: std::io::Error },
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: answered {status}, not 2xx")]
    Status {
        url: String,
        status: hyper::StatusCode,
    },
    #[error("{url}: the body is larger than {MAX_BODY} bytes")]
    TooLarge { url: String },
}

/// The body of a 2xx answer to `GET url`.
///
/// # Errors
/// The URL, the connection, TLS or HTTP failed, the status was not 2xx or the body too large.
pub(crate) async fn get(url: &str) -> Result<Bytes, Error> {
    let uri: Uri = url
        .parse()
        .map_err(|error: hyper::http::uri::InvalidUri| Error::Url {
            url: url.to_owned(),
            problem: error.to_string(),
        })?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(Error::Url {
                url: url.to_owned(),
                problem: "the scheme must be http or https".to_owned(),
            });
        }
    };
    let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
        return Err(Error::Url {
            url: url.to_owned(),
            problem: "no host".to_owned(),
        });
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|error| Error::Connect {
            url: url.to_owned(),
            error,
        })?;
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let request = hyper::Request::get(path)
        .header(HOST, authority.as_str())
        .header(USER_AGENT, "betwixt-discovery")
        .header(ACCEPT, "*/*")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|error| Error::Url {
            url: url.to_owned(),
            problem: error.to_string(),
        })?;
    if https {
        let tls_error = |error| Error::Tls {
            url: url.to_owned(),
            error,
        };
        let name =
            ServerName::try_from(host).map_err(|error| tls_error(std::io::Error::other(error)))?;
        let connector = TlsConnector::from(client_config().await.map_err(tls_error)?);
        let stream = connector.connect(name, tcp).await.map_err(tls_error)?;
        exchange(url, stream, request).await
    } else {
        exchange(url, tcp, request).await
    }
}

async fn exchange<S>(
    url: &str,
    stream: S,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<Bytes, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http_error = |error: hyper::Error| Error::Http {
        url: url.to_owned(),
        message: with_causes(&error),
    };
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    let exchange = async move {
        let response = sender.send_request(request).await.map_err(http_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::Status {
                url: url.to_owned(),
                status,
            });
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|error| {
                if error.is::<http_body_util::LengthLimitError>() {
                    Error::TooLarge {
                        url: url.to_owned(),
                    }
                } else {
                    Error::Http {
                        url: url.to_owned(),
                        message: error.to_string(),
                    }
                }
            })?;
        Ok(body.to_bytes())
    };
    // The connection future drives the exchange; its own error is the one that explains a
    // failed request, but a body read to its end is the answer whatever follows.
    let (answer, closed) = tokio::join!(exchange, connection);
    match (answer, closed) {
        (Ok(body), _) => Ok(body),
        (Err(Error::Http { .. }), Err(error)) => Err(http_error(error)),
        (Err(error), _) => Err(error),
    }
}

/// TLS with the system's roots, read once (on the blocking pool: it reads files).
async fn client_config() -> std::io::Result<Arc<ClientConfig>> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(Arc::clone(config));
    }
    let build = || {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = crate::tls::system_roots();
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
            .map_err(std::io::Error::other)
    };
    let config = tokio::task::spawn_blocking(build)
        .await
        .map_err(std::io::Error::other)??;
    Ok(Arc::clone(CONFIG.get_or_init(|| Arc::new(config))))
}

/// hyper's message with its causes ("connection error: Connection reset by peer").
fn with_causes(error: &hyper::Error) -> String {
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTPS server with a self-signed certificate, which the system roots do not trust:
    /// the fetch fails in the handshake, naming the URL and the certificate problem, before
    /// any request is sent.
    #[tokio::test]
    async fn https_verifies_the_server_against_the_system_roots() {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = CertificateDer::from(certified.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(stream).await else {
                return 0;
            };
            let mut request = [0u8; 1024];
            let read = tls.read(&mut request).await.unwrap_or(0);
            let _ = tls
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
            read
        });
        let url = format!("https://localhost:{port}/list");
        let error = get(&url).await.unwrap_err();
        assert!(matches!(error, Error::Tls { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("{url}: TLS: ")) && message.contains("certificate"),
            "{message}"
        );
        assert_eq!(requests.await.unwrap(), 0, "no request reached the server");
    }

    #[tokio::test]
    async fn a_url_that_is_not_http_is_refused_before_connecting() {
        let error = get("ftp://127.0.0.1/list").await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "ftp://127.0.0.1/list: the scheme must be http or https"
        );
    }
}
