//! Certificates an ACME client obtained, by host name, and the rustls resolver that serves
//! them: one store per balancer, carried over by reloads, filled and refreshed by the ACME
//! task (`crate::acme`) while handshakes read it.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Host name (lower case) to its current certificate; and, while a challenge is pending, the
/// HTTP-01 token to its key authorization.
#[derive(Debug, Default)]
pub struct AcmeCertificates {
    certificates: RwLock<BTreeMap<String, Arc<CertifiedKey>>>,
    challenges: RwLock<BTreeMap<String, String>>,
}

impl AcmeCertificates {
    /// Serves `certified` to new handshakes for `host` from now on.
    pub fn install(&self, host: &str, certified: Arc<CertifiedKey>) {
        let mut certificates = self
            .certificates
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        certificates.insert(host.to_ascii_lowercase(), certified);
    }

    /// The certificate for `host`, if one was obtained.
    pub fn get(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let certificates = self
            .certificates
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        certificates.get(&host.to_ascii_lowercase()).cloned()
    }

    /// Answers the HTTP-01 challenge `token` with `key_authorization` until withdrawn.
    pub fn add_challenge(&self, token: &str, key_authorization: &str) {
        let mut challenges = self
            .challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        challenges.insert(token.to_owned(), key_authorization.to_owned());
    }

    pub fn remove_challenge(&self, token: &str) {
        let mut challenges = self
            .challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        challenges.remove(token);
    }

    /// The key authorization for `token`, while its challenge is pending.
    pub fn challenge(&self, token: &str) -> Option<String> {
        let challenges = self
            .challenges
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        challenges.get(token).cloned()
    }
}

/// Picks the certificate of a handshake: the ACME one for a name in `hosts`, once obtained;
/// else the configured certificate, if any.
#[derive(Debug)]
pub(super) struct AcmeResolver {
    pub(super) store: Arc<AcmeCertificates>,
    pub(super) hosts: Vec<String>,
    pub(super) fallback: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = client_hello
            .server_name()
            .filter(|name| {
                self.hosts
                    .iter()
                    .any(|host| host.eq_ignore_ascii_case(name))
            })
            .and_then(|name| self.store.get(name));
        acme.or_else(|| self.fallback.clone())
    }
}
