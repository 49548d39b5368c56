//! A small HTTP/1.1 client for the REST API, used by `betwixt status`, `drain` and `undrain`.
//!
//! One connection per request (the command makes a handful), optional basic authentication,
//! HTTPS verified against `--cacert` or the system roots, and a deadline on every request.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use betwixt::rest::basic_authorization as authorization_value;

/// How long one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to the API that failed. Each message carries its cause (no `source()` chain), so
/// printing the error once prints everything.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url:?} is not an API address: {reason}")]
    Url { url: String, reason: String },
    #[error("{path}: {message}")]
    CaCert { path: String, message: String },
    #[error("cannot connect to {address}: {cause}")]
    Connect { address: String, cause: io::Error },
    #[error("{path}: {cause}")]
    Http { path: String, cause: hyper::Error },
    #[error("{path}: no answer within {REQUEST_TIMEOUT:?}")]
    Timeout { path: String },
    #[error("{path}: {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        path: String,
        status: StatusCode,
        body: String,
    },
    #[error("{path}: not the expected JSON: {cause}")]
    Json {
        path: String,
        cause: serde_json::Error,
    },
}

/// Where the API is and how to talk to it.
#[derive(Clone)]
pub struct ApiClient {
    /// `host:port` as in the URL, for the `Host` header and messages.
    authority: String,
    /// The host without IPv6 brackets, to connect to.
    host: String,
    port: u16,
    /// The URL's path without its trailing slash; requests are relative to it.
    prefix: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    authorization: Option<String>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client for the API at `url` (`http://HOST:PORT` or `https://...`), with basic
    /// authentication when `credentials` are given, verifying HTTPS against `ca_cert` or else
    /// the system's roots.
    ///
    /// # Errors
    /// The URL is not usable, or the CA file cannot be read.
    pub fn new(
        url: &str,
        credentials: Option<(&str, &str)>,
        ca_cert: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let bad_url = |reason: &str| ClientError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| bad_url("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad_url("expected http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad_url("no host"))?;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let tls = if https {
            Some((
                connector(ca_cert)?,
                server_name(host).ok_or_else(|| bad_url("bad host"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            authority: authority.as_str().to_owned(),
            host: host.to_owned(),
            port,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            tls,
            authorization: credentials
                .map(|(login, password)| authorization_value(login, password)),
        })
    }

    /// `GET path` and its JSON answer.
    ///
    /// # Errors
    /// No connection, an HTTP error status, a timeout, or an answer of another shape.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path).await
    }

    /// `POST path` (no body) and its JSON answer.
    ///
    /// # Errors
    /// No connection, an HTTP error status, a timeout, or an answer of another shape.
    pub async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::POST, path).await
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, ClientError> {
        let (status, body) = self.request(method, path).await?;
        if !status.is_success() {
            return Err(ClientError::Status {
                path: path.to_owned(),
                status,
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|cause| ClientError::Json {
            path: path.to_owned(),
            cause,
        })
    }

    /// `method path` (no body): the status and the body, whatever the status.
    ///
    /// # Errors
    /// No connection, an HTTP error, or a timeout.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.fetch(method, path))
            .await
            .map_err(|_| ClientError::Timeout {
                path: path.to_owned(),
            })?
    }

    async fn fetch(&self, method: Method, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
        let connect_error = |cause| ClientError::Connect {
            address: self.authority.clone(),
            cause,
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(connect_error)?;
        debug!(address = %self.authority, path, "API request");
        match &self.tls {
            None => self.exchange(tcp, method, path).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(connect_error)?;
                self.exchange(tls, method, path).await
            }
        }
    }

    async fn exchange<S>(
        &self,
        stream: S,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, Bytes), ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http_error = |cause| ClientError::Http {
            path: path.to_owned(),
            cause,
        };
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "API connection ended with an error");
            }
        });
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(HOST, &self.authority)
            // The API wants JSON on every POST; these carry no body.
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("betwixt/", env!("CARGO_PKG_VERSION")));
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|error| ClientError::Url {
                url: path.to_owned(),
                reason: error.to_string(),
            })?;
        let response = sender.send_request(request).await.map_err(http_error)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(http_error)?
            .to_bytes();
        Ok((status, body))
    }
}

fn connector(ca_cert: Option<&Path>) -> Result<TlsConnector, ClientError> {
    let roots = betwixt::tls::roots(ca_cert).map_err(|error| ClientError::CaCert {
        path: error.path.display().to_string(),
        message: error.problem,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| ClientError::CaCert {
            path: "TLS".to_owned(),
            message: error.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn server_name(host: &str) -> Option<ServerName<'static>> {
    match host.parse::<IpAddr>() {
        Ok(ip) => Some(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(host.to_owned()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let client = ApiClient::new("http://127.0.0.1:8888", None, None).unwrap();
        assert_eq!((client.host.as_str(), client.port), ("127.0.0.1", 8888));
        assert!(client.tls.is_none() && client.authorization.is_none());
        let client = ApiClient::new("http://[::1]:9/prefix/", Some(("a", "b")), None).unwrap();
        assert_eq!((client.host.as_str(), client.port), ("::1", 9));
        assert_eq!(client.prefix, "/prefix");
        assert_eq!(client.authority, "[::1]:9");
        assert!(client.authorization.is_some());
        let client = ApiClient::new("https://lb.example", None, None).unwrap();
        assert_eq!(client.port, 443);
        assert!(client.tls.is_some());
        for bad in ["127.0.0.1:8888", "ftp://x", "http://"] {
            assert!(ApiClient::new(bad, None, None).is_err(), "{bad}");
        }
    }
}
