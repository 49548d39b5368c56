//! The rustls server config of a terminating server, built from its `[tls]` table and the
//! certificate files as they are now: every snapshot (start, each reload) builds a new one, so
//! a reload serves a rotated certificate to new handshakes while established sessions keep
//! theirs.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;

use super::acme_store::{AcmeCertificates, AcmeResolver};
use super::{TlsSetupError, certificate_chain, private_key, protocol};
use crate::config::TlsTermination;

/// Sessions the server remembers for resumption by session ID (TLS 1.2) or stateful ticket
/// (TLS 1.3) when `session_tickets` is off; rustls's own default size.
const SESSION_CACHE_SIZE: usize = 256;

/// The server config for `termination`, its certificate and key read now; names in
/// `acme_hosts` are served from `acme` once their certificate is there.
///
/// # Errors
/// A file cannot be read or parsed, or the key does not fit the certificate.
pub fn server_config(
    termination: &TlsTermination,
    acme: &Arc<AcmeCertificates>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let settings = &termination.protocol;
    let provider = protocol::provider(settings);
    let fallback = match &termination.certificate {
        Some(files) => Some(Arc::new(certified_key_with(
            &files.cert_path,
            &files.key_path,
            &provider,
        )?)),
        None => None,
    };
    let hosts = termination
        .acme
        .as_ref()
        .map(|acme| acme.hosts.clone())
        .unwrap_or_default();
    let resolver = AcmeResolver {
        store: Arc::clone(acme),
        hosts,
        fallback,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&protocol::versions(settings))
        .map_err(TlsSetupError::Rustls)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.ignore_client_order = settings.prefer_server_ciphers;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    if settings.session_tickets {
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsSetupError::Rustls)?;
    }
    Ok(Arc::new(config))
}

/// A certificate chain and its key, ready to serve.
///
/// # Errors
/// A file cannot be read or parsed, or the key does not fit the certificate.
pub fn certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsSetupError> {
    let provider = rustls::crypto::ring::default_provider();
    certified_key_with(cert_path, key_path, &provider)
}

fn certified_key_with(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsSetupError> {
    let chain = certificate_chain(cert_path)?;
    let key = private_key(key_path)?;
    CertifiedKey::from_der(chain, key, provider).map_err(|error| TlsSetupError::Key {
        path: key_path.to_owned(),
        error,
    })
}
