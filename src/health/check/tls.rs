//! TLS for checks: the `tls` kind (a complete handshake, then close_notify) and the client
//! settings shared with `https` and `probe_protocol = "tls"`.
//!
//! A k3s or Kubernetes API server uses a private CA, so a check verifies against
//! `tls_ca_cert_path` or skips verification (`tls_skip_verify`); without either it uses the
//! system roots, as gobetween's tls probe did. The handshake is finished and closed with
//! close_notify, so the masters do not log "TLS handshake error" for every check.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{CheckError, SetupError, Target};
use crate::config::TlsCheck;
use crate::tls;

/// A TLS client configuration and the server name a check presents and verifies.
#[derive(Clone)]
pub struct Client {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("tls::Client")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Loads the CA, client certificate and key named in `settings`. The server name is
    /// `tls_server_name`, else the backend's `sni=`, else its host. Reads files: call it off
    /// the runtime workers.
    ///
    /// # Errors
    /// A file cannot be read or holds no usable certificate or key.
    pub fn new(settings: &TlsCheck, target: &Target) -> Result<Self, SetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| SetupError(error.to_string()))?;
        let builder = if settings.skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(tls::AcceptAnyCertificate::new(
                    provider.signature_verification_algorithms,
                )))
        } else {
            builder.with_root_certificates(tls::roots(settings.ca_cert_path.as_deref())?)
        };
        let config = match &settings.client_cert {
            None => builder.with_no_client_auth(),
            Some(files) => {
                let chain = tls::certificate_chain(&files.cert_path)?;
                let key = tls::private_key(&files.key_path)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| SetupError(format!("{}: {error}", files.key_path.display())))?
            }
        };
        let name = settings
            .server_name
            .clone()
            .or_else(|| target.sni.clone())
            .unwrap_or_else(|| target.host.clone());
        let server_name = match name.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(name.clone())
                .map_err(|_| SetupError(format!("{name:?} is not a valid server name")))?,
        };
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The name sent as SNI and verified, also the HTTP `Host` of an https check.
    pub fn server_name(&self) -> String {
        match &self.server_name {
            ServerName::DnsName(name) => name.as_ref().to_owned(),
            ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
            other => format!("{other:?}"),
        }
    }

    /// Connects and completes the handshake.
    pub async fn handshake(&self, target: &Target) -> Result<TlsStream<TcpStream>, CheckError> {
        let tcp = target.connect().await?;
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(CheckError::Handshake)
    }
}

/// The `tls` kind: passes when the handshake completes (and the certificate verifies).
pub async fn check(client: &Client, target: &Target) -> Result<(), CheckError> {
    let mut stream = client.handshake(target).await?;
    close(&mut stream).await;
    Ok(())
}

/// Sends close_notify and closes. A peer that already left is not a failure: the check's
/// verdict was reached.
pub async fn close(stream: &mut TlsStream<TcpStream>) {
    let _ = stream.shutdown().await;
}
