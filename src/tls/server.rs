//! The rustls server config of a terminating server, built from its `[tls]` table and the
//! certificate files as they are now: every snapshot (start, each reload) builds a new one, so
//! a reload serves a rotated certificate to new handshakes while established sessions keep
//! theirs.

use std::sync::Arc;

use rustls::ServerConfig;

use super::{TlsSetupError, certificate_chain, private_key, protocol};
use crate::config::TlsTermination;

/// Sessions the server remembers for resumption by session ID (TLS 1.2) or stateful ticket
/// (TLS 1.3) when `session_tickets` is off; rustls's own default size.
const SESSION_CACHE_SIZE: usize = 256;

/// The server config for `termination`, its certificate and key read now.
///
/// # Errors
/// A file cannot be read or parsed, or the key does not fit the certificate.
pub fn server_config(termination: &TlsTermination) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let files = &termination.certificate;
    let chain = certificate_chain(&files.cert_path)?;
    let key = private_key(&files.key_path)?;
    let settings = &termination.protocol;
    let mut config = ServerConfig::builder_with_provider(protocol::provider(settings))
        .with_protocol_versions(&protocol::versions(settings))
        .map_err(TlsSetupError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| TlsSetupError::Key {
            path: files.key_path.clone(),
            error,
        })?;
    config.ignore_client_order = settings.prefer_server_ciphers;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    if settings.session_tickets {
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsSetupError::Rustls)?;
    }
    Ok(Arc::new(config))
}
