//! The rustls client config a server uses towards its backends (`[backends_tls]`), and the
//! name each backend is verified against.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;

use super::{AcceptAnyCertificate, TlsSetupError, certificate_chain, private_key, protocol, roots};
use crate::config::BackendsTls;

/// The client config for `settings`, its CA and client certificate files read now (the system
/// roots when no CA file is given).
///
/// # Errors
/// A file cannot be read or parsed, or the key does not fit the certificate.
pub fn backend_config(settings: &BackendsTls) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = protocol::provider(&settings.protocol);
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&protocol::versions(&settings.protocol))
        .map_err(TlsSetupError::Rustls)?;
    let builder = if settings.ignore_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new(algorithms)))
    } else {
        builder.with_root_certificates(roots(settings.root_ca_cert_path.as_deref())?)
    };
    let mut config = match &settings.client_certificate {
        None => builder.with_no_client_auth(),
        Some(files) => builder
            .with_client_auth_cert(
                certificate_chain(&files.cert_path)?,
                private_key(&files.key_path)?,
            )
            .map_err(|error| TlsSetupError::Key {
                path: files.key_path.clone(),
                error,
            })?,
    };
    if !settings.protocol.session_tickets {
        config.resumption =
            Resumption::default().tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
    }
    Ok(Arc::new(config))
}

/// The name sent to and verified for a backend: its `sni=` tag when that is a DNS name, else
/// its host (an IP address is verified against the certificate's IP addresses).
pub fn backend_server_name(host: &str, sni: Option<&str>) -> Option<ServerName<'static>> {
    let tagged = sni.and_then(|name| ServerName::try_from(name.to_owned()).ok());
    if let Some(name @ ServerName::DnsName(_)) = tagged {
        return Some(name);
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => Some(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(host.to_owned()).ok(),
    }
}
