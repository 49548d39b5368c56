//! `[api.tls]`: the API served over HTTPS with a PEM certificate chain and key.
//!
//! The files are read when the API starts and on every reload that changes `[api]`; a file
//! that cannot be used is an error then, and the listener already running keeps its
//! certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;
use crate::tls::{self, PemError};

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("api.tls: {path}: {message}")]
pub struct TlsError {
    pub path: PathBuf,
    pub message: String,
}

/// Loads the chain and key and builds the acceptor (TLS 1.2 and 1.3, ALPN `http/1.1`).
///
/// # Errors
/// A file cannot be read, holds no certificate or key, or the key does not fit.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let chain = tls::certificate_chain(&files.cert_path)?;
    let key = tls::private_key(&files.key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| problem(&files.cert_path, error))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| problem(&files.key_path, error))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl From<PemError> for TlsError {
    fn from(error: PemError) -> Self {
        Self {
            path: error.path,
            message: error.problem,
        }
    }
}

fn problem(path: &Path, error: impl std::fmt::Display) -> TlsError {
    TlsError {
        path: path.to_owned(),
        message: error.to_string(),
    }
}
