//! One GET of a discovery endpoint (`plaintext`, `json`) through the discovery [`Client`],
//! over TLS with the system's roots for `https://`, as gobetween's Go client. The answer must
//! be a 2xx (gobetween parsed any body, so an error page could empty a server) within the
//! client's body limit.

use std::sync::OnceLock;

use bytes::Bytes;

use super::client::{Client, ClientError, Endpoint, Tls, TlsMaterial};

pub(crate) type Error = ClientError;

/// The body of a 2xx answer to `GET url`.
///
/// # Errors
/// The URL, the connection, TLS or HTTP failed, the status was not 2xx or the body too large.
pub(crate) async fn get(url: &str) -> Result<Bytes, Error> {
    let refused = |problem: &str| Error::Url {
        url: url.to_owned(),
        problem: problem.to_owned(),
    };
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("http" | "https")) {
        return Err(refused("the scheme must be http or https"));
    }
    let endpoint = Endpoint::parse(url, false).map_err(|problem| refused(&problem))?;
    let tls = match endpoint {
        Endpoint::Https { .. } => Some(system_roots().await?),
        _ => None,
    };
    Client::new(endpoint, tls)?.get(path_and_query(url)).await
}

/// `/list?x=1` of `https://host:8443/list?x=1`; `/` when the URL has no path.
fn path_and_query(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.find(['/', '?']).map_or("/", |start| &rest[start..])
}

/// TLS with the system's roots, read once (on the blocking pool: it reads files).
pub(crate) async fn system_roots() -> Result<Tls, Error> {
    static TLS: OnceLock<Tls> = OnceLock::new();
    if let Some(tls) = TLS.get() {
        return Ok(tls.clone());
    }
    let tls = Tls::load(TlsMaterial::default()).await?;
    Ok(TLS.get_or_init(|| tls).clone())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn the_request_path_keeps_the_query() {
        assert_eq!(path_and_query("https://h:8443/list?x=1"), "/list?x=1");
        assert_eq!(path_and_query("http://h"), "/");
        assert_eq!(path_and_query("http://h?x"), "?x");
    }

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
        assert!(matches!(error, Error::Handshake { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("https://localhost:{port}"))
                && message.contains("certificate"),
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
