//! `[api.tls]`: the API over HTTPS, verified against a private CA.

use std::sync::Arc;

use hyper::header::HeaderMap;
use hyper::{Method, StatusCode};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

use super::*;
use crate::fake_apiserver::Pki;

fn connector(pki: &Pki) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn the_api_serves_https_with_its_certificate() {
    let dir = std::env::temp_dir().join(format!("betwixt-api-tls-{}", std::process::id()));
    let pki = Pki::generate(&dir);
    let tls = format!(
        "[api.tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let servers = server_config("k3s", "", &[closed_port().await], "");
    let lb = Balancer::start(&format!("{ENDPOINTS}{tls}{servers}")).await;
    let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());

    let tcp = TcpStream::connect(lb.api()).await.unwrap();
    let stream = connector(&pki)
        .connect(name.clone(), tcp)
        .await
        .expect("TLS handshake");
    let host = lb.api().to_string();
    let ping = request_over(stream, &host, Method::GET, "/ping", HeaderMap::new(), "").await;
    assert_eq!((ping.status, ping.body.as_str()), (StatusCode::OK, "OK"));

    let tcp = TcpStream::connect(lb.api()).await.unwrap();
    let stream = connector(&pki).connect(name, tcp).await.unwrap();
    let reply = request_over(stream, &host, Method::GET, "/", HeaderMap::new(), "").await;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "auth applies over TLS too"
    );

    // The `betwixt status` client verifies against --cacert.
    let url = format!("https://127.0.0.1:{}", lb.api().port());
    let status = |cacert: Option<&std::path::Path>| {
        let mut command = tokio::process::Command::new(BINARY);
        command.args([
            "status",
            "--api",
            &url,
            "--login",
            LOGIN,
            "--password",
            PASSWORD,
        ]);
        if let Some(cacert) = cacert {
            command.arg("--cacert").arg(cacert);
        }
        command.output()
    };
    let trusted = status(Some(&pki.ca)).await.unwrap();
    let stdout = String::from_utf8_lossy(&trusted.stdout);
    assert!(
        trusted.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert!(stdout.contains("k3s"), "{stdout}");
    let untrusted = status(None).await.unwrap();
    assert!(!untrusted.status.success(), "private CA not trusted");
}

#[tokio::test]
async fn a_reload_picks_up_a_renewed_certificate() {
    let base = std::env::temp_dir().join(format!("betwixt-api-renew-{}", std::process::id()));
    let (old, new) = (
        Pki::generate(&base.join("old")),
        Pki::generate(&base.join("new")),
    );
    let live = base.join("live");
    std::fs::create_dir_all(&live).unwrap();
    let install = |pki: &Pki| {
        std::fs::copy(&pki.server_cert, live.join("cert.pem")).unwrap();
        std::fs::copy(&pki.server_key, live.join("key.pem")).unwrap();
    };
    install(&old);
    let tls = format!(
        "[api.tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n",
        live.join("cert.pem").display(),
        live.join("key.pem").display()
    );
    let servers = server_config("k3s", "", &[closed_port().await], "");
    let text = format!("{ENDPOINTS}{tls}{servers}");
    let mut lb = Balancer::start(&text).await;
    let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let addr = lb.api();
    let handshake = |pki: &Pki| {
        let (connector, name) = (connector(pki), name.clone());
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            connector.connect(name, tcp).await.is_ok()
        }
    };
    assert!(handshake(&old).await && !handshake(&new).await);

    install(&new);
    let config = config::load_str("test.toml", &text, &LoadOptions::default())
        .unwrap()
        .config;
    lb.endpoints.reconfigure(&config).await;
    assert!(handshake(&new).await, "the renewed certificate is served");
    assert!(!handshake(&old).await);
    let _ = std::fs::remove_dir_all(&base);
}
