//! A [`TlsProtocol`]'s versions and cipher suites as a rustls crypto provider (ring), shared by
//! the terminating side and the side towards backends.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

use crate::config::{TlsProtocol, TlsVersion};

/// ring's provider with only the suites `protocol` allows: every TLS 1.3 suite, and the TLS
/// 1.2 ones listed in `ciphers` (all when absent), in the file's order.
pub(super) fn provider(protocol: &TlsProtocol) -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(names) = &protocol.tls12_suites {
        let all = std::mem::take(&mut provider.cipher_suites);
        let mut kept: Vec<SupportedCipherSuite> = all
            .iter()
            .filter(|suite| matches!(suite, SupportedCipherSuite::Tls13(_)))
            .copied()
            .collect();
        for name in names {
            let listed = all
                .iter()
                .find(|suite| suite.suite().as_str() == Some(name.as_str()));
            kept.extend(listed.copied());
        }
        provider.cipher_suites = kept;
    }
    Arc::new(provider)
}

/// The versions from `protocol`'s minimum to its maximum.
pub(super) fn versions(protocol: &TlsProtocol) -> Vec<&'static SupportedProtocolVersion> {
    let mut versions = Vec::new();
    let range = protocol.min_version..=protocol.max_version;
    if range.contains(&TlsVersion::Tls13) {
        versions.push(&rustls::version::TLS13);
    }
    if range.contains(&TlsVersion::Tls12) {
        versions.push(&rustls::version::TLS12);
    }
    versions
}
