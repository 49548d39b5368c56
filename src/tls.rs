//! TLS material, read in one place: PEM certificate chains, private keys and root stores, each
//! failure naming the file; the rustls configs of terminating servers ([`server_config`]) and
//! of connections to backends ([`backend_config`]); the ClientHello reader of SNI routing.
//!
//! Used by sessions, the health checks' TLS client, the API's HTTPS listener and `betwixt
//! status`; public so that the binary and embedding programs read files the same way. Every function reads files (and [`system_roots`] the system's certificate
//! store), so it blocks: call it at start-up, on a reload path or inside `spawn_blocking`,
//! never on a runtime worker.

mod acme_store;
mod client;
pub mod client_hello;
mod protocol;
mod server;
mod verify;

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use acme_store::AcmeCertificates;
pub use client::{backend_config, backend_server_name};
pub use server::{certified_key, server_config};
pub use verify::AcceptAnyCertificate;

/// A server's TLS settings that cannot be put to use.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    Pem(#[from] PemError),
    /// The message ends with rustls's error, so it is not also a `source()`.
    #[error("{}: cannot use this private key with the certificate: {error}", path.display())]
    Key { path: PathBuf, error: rustls::Error },
    #[error("{0}")]
    Rustls(rustls::Error),
}

/// A PEM file that cannot be used: which file and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct PemError {
    pub path: PathBuf,
    pub problem: String,
}

impl PemError {
    fn new(path: &Path, problem: impl std::fmt::Display) -> Self {
        Self {
            path: path.to_owned(),
            problem: problem.to_string(),
        }
    }

    /// Words a PEM reader's error; `wanted` names what was looked for ("certificate").
    fn from_pem(path: &Path, error: &pem::Error, wanted: &str) -> Self {
        match error {
            pem::Error::Io(error) => Self::new(path, error),
            pem::Error::NoItemsFound => Self::new(path, format!("no PEM {wanted} in the file")),
            other => Self::new(path, other),
        }
    }
}

/// The certificates of a PEM file, in file order (a leaf first, then its intermediates).
///
/// # Errors
/// The file cannot be read, is not PEM, or holds no certificate.
pub fn certificate_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let pem_error = |error: pem::Error| PemError::from_pem(path, &error, "certificate");
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if chain.is_empty() {
        return Err(PemError::new(path, "no PEM certificate in the file"));
    }
    Ok(chain)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// The file cannot be read, is not PEM, or holds no private key.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|error| PemError::from_pem(path, &error, "private key"))
}

/// A root store of the certificates in a CA file, each of which must be usable as a root.
///
/// # Errors
/// The file cannot be read, holds no certificate, or a certificate cannot be a root.
pub fn ca_roots(path: &Path) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificate_chain(path)? {
        roots
            .add(certificate)
            .map_err(|error| PemError::new(path, error))?;
    }
    Ok(roots)
}

/// The system's trusted roots (`rustls-native-certs`); certificates it cannot parse are
/// skipped, and a system without a store gives an empty one (nothing verifies).
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots
}

/// The roots of `ca_file`, else the system's.
///
/// # Errors
/// As [`ca_roots`].
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, PemError> {
    ca_file.map_or_else(|| Ok(system_roots()), ca_roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: PathBuf,
    }

    impl Files {
        fn new(test: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("betwixt-tls-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self { dir }
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn self_signed() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    #[test]
    fn reads_a_chain_a_key_and_roots() {
        let files = Files::new("good");
        let (cert, key) = self_signed();
        let cert_path = files.write("cert.pem", &format!("{cert}{cert}"));
        let key_path = files.write("key.pem", &key);
        assert_eq!(certificate_chain(&cert_path).unwrap().len(), 2);
        assert!(matches!(
            private_key(&key_path).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
        assert_eq!(ca_roots(&cert_path).unwrap().len(), 2);
        assert_eq!(roots(Some(&cert_path)).unwrap().len(), 2);
    }

    #[test]
    fn every_error_names_the_file() {
        let files = Files::new("bad");
        let (cert, key) = self_signed();
        let missing = files.dir.join("missing.pem");
        let cert_path = files.write("cert.pem", &cert);
        let key_path = files.write("key.pem", &key);
        let empty = files.write("empty.pem", "not PEM at all\n");
        let shown = |error: PemError| error.to_string();
        let cases = [
            (
                shown(certificate_chain(&missing).unwrap_err()),
                &missing,
                "No such file",
            ),
            (
                shown(certificate_chain(&empty).unwrap_err()),
                &empty,
                "no PEM certificate in the file",
            ),
            (
                shown(certificate_chain(&key_path).unwrap_err()),
                &key_path,
                "no PEM certificate in the file",
            ),
            (
                shown(private_key(&cert_path).unwrap_err()),
                &cert_path,
                "no PEM private key in the file",
            ),
            (
                shown(private_key(&missing).unwrap_err()),
                &missing,
                "No such file",
            ),
            (
                shown(ca_roots(&empty).unwrap_err()),
                &empty,
                "no PEM certificate in the file",
            ),
        ];
        for (message, path, problem) in cases {
            assert!(
                message.starts_with(&format!("{}: ", path.display())),
                "{message}"
            );
            assert!(message.contains(problem), "{message}");
        }
    }
}
