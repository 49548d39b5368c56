//! `[backends_tls]`: plain clients, TLS backends; verification on and off, a custom CA, a
//! client certificate the backend requires.

use tokio::net::TcpStream;

use super::{Ca, TlsBackend};
use crate::util::{read_line, server_report, start_balancer};

fn config(backend: std::net::SocketAddr, table: &str) -> String {
    format!(
        "[servers.plain]\nbind = \"127.0.0.1:0\"\nbackend_connection_timeout = \"5s\"\n\
         [servers.plain.backends_tls]\n{table}\n\
         [servers.plain.discovery]\nkind = \"static\"\nstatic_list = [\"{backend}\"]\n"
    )
}

/// What a plain client gets: the backend's name line, or `None` when it was closed.
async fn answer(balancer: &betwixt::LoadBalancer) -> Option<String> {
    let addr = balancer.local_addr("plain").unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    read_line(&mut stream).await.ok()
}

fn path(path: &std::path::Path) -> String {
    format!("{:?}", path.display().to_string())
}

#[tokio::test]
async fn backends_are_verified_against_the_given_ca() {
    let ca = Ca::new("backend-ca");
    let stranger = Ca::new("backend-stranger");
    let backend = TlsBackend::start("secure", &ca.issue("backend", &["127.0.0.1"]), None).await;

    let trusted = start_balancer(&config(
        backend.addr,
        &format!("root_ca_cert_path = {}", path(&ca.cert)),
    ))
    .await;
    assert_eq!(answer(&trusted).await.as_deref(), Some("secure"));

    let wrong_ca = format!("root_ca_cert_path = {}", path(&stranger.cert));
    let refused = start_balancer(&config(backend.addr, &wrong_ca)).await;
    assert_eq!(answer(&refused).await, None, "an unknown issuer is refused");
    assert_eq!(server_report(&refused, "plain").unserved, 1);

    let unchecked = format!("{wrong_ca}\nignore_verify = true");
    let ignoring = start_balancer(&config(backend.addr, &unchecked)).await;
    assert_eq!(answer(&ignoring).await.as_deref(), Some("secure"));
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_the_backend_requires_one() {
    let ca = Ca::new("backend-mtls");
    let backend = TlsBackend::start("mtls", &ca.issue("backend", &["127.0.0.1"]), Some(&ca)).await;
    let client = ca.issue("client", &["betwixt"]);
    let root = format!("root_ca_cert_path = {}", path(&ca.cert));

    let without = start_balancer(&config(backend.addr, &root)).await;
    assert_eq!(
        answer(&without).await,
        None,
        "the backend wants a certificate"
    );

    let with = format!(
        "{root}\ncert_path = {}\nkey_path = {}",
        path(&client.cert),
        path(&client.key)
    );
    let balancer = start_balancer(&config(backend.addr, &with)).await;
    assert_eq!(answer(&balancer).await.as_deref(), Some("mtls"));
}
