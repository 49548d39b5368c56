//! The TLS side of the client: what it trusts (a CA file, inline PEM, the system roots, or
//! nothing for the "skip verification" settings) and the client certificate it presents.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ClientError;
use crate::tls as pem;

/// What a TLS client trusts and presents, read once from files or inline PEM/DER.
#[derive(Debug, Default)]
pub(crate) struct TlsMaterial {
    /// PEM roots (a file); `None` with no `ca_pem` either: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM roots given inline (a kubeconfig's `certificate-authority-data`).
    pub ca_pem: Option<Vec<u8>>,
    pub client_cert: Option<ClientCertificate>,
    /// Accept any server certificate (still checking the handshake signatures).
    pub skip_verify: bool,
}

/// A client certificate chain and key, as files or inline PEM.
#[derive(Debug)]
pub(crate) enum ClientCertificate {
    Files { cert: PathBuf, key: PathBuf },
    Pem { cert: Vec<u8>, key: Vec<u8> },
}

/// A ready TLS client configuration.
#[derive(Clone)]
pub(crate) struct Tls(Arc<ClientConfig>);

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Reads the files of `material` on the blocking pool and builds the configuration.
    ///
    /// # Errors
    /// A file cannot be read, or holds no usable certificate or key.
    pub(crate) async fn load(material: TlsMaterial) -> Result<Self, ClientError> {
        tokio::task::spawn_blocking(move || Self::build(&material))
            .await
            .map_err(|error| ClientError::Tls(format!("loading TLS files: {error}")))?
    }

    pub(super) fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.0)
    }

    fn build(material: &TlsMaterial) -> Result<Self, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| ClientError::Tls(error.to_string()))?;
        let builder = if material.skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(pem::AcceptAnyCertificate::new(
                    algorithms,
                )))
        } else {
            let roots = match (&material.ca_pem, &material.ca_file) {
                (Some(text), _) => roots_from_pem(text)?,
                (None, file) => pem::roots(file.as_deref())?,
            };
            builder.with_root_certificates(roots)
        };
        let config = match &material.client_cert {
            None => builder.with_no_client_auth(),
            Some(certificate) => {
                let (chain, key, name) = client_certificate(certificate)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| ClientError::Tls(format!("{name}: {error}")))?
            }
        };
        Ok(Self(Arc::new(config)))
    }
}

fn roots_from_pem(text: &[u8]) -> Result<rustls::RootCertStore, ClientError> {
    use rustls::pki_types::pem::PemObject;
    let inline = |problem: String| ClientError::Tls(format!("inline CA certificate: {problem}"));
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(text) {
        let certificate = certificate.map_err(|error| inline(error.to_string()))?;
        roots
            .add(certificate)
            .map_err(|error| inline(error.to_string()))?;
    }
    if roots.is_empty() {
        return Err(inline("no PEM certificate".to_owned()));
    }
    Ok(roots)
}

type Chain = Vec<CertificateDer<'static>>;

/// The chain, the key and a name for messages.
fn client_certificate(
    certificate: &ClientCertificate,
) -> Result<(Chain, PrivateKeyDer<'static>, String), ClientError> {
    use rustls::pki_types::pem::PemObject;
    match certificate {
        ClientCertificate::Files { cert, key } => Ok((
            pem::certificate_chain(cert)?,
            pem::private_key(key)?,
            key.display().to_string(),
        )),
        ClientCertificate::Pem { cert, key } => {
            let inline = |what: &str, problem: String| {
                ClientError::Tls(format!("inline client {what}: {problem}"))
            };
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| inline("certificate", error.to_string()))?;
            if chain.is_empty() {
                return Err(inline("certificate", "no PEM certificate".to_owned()));
            }
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|error| inline("key", error.to_string()))?;
            Ok((chain, key, "inline client key".to_owned()))
        }
    }
}
