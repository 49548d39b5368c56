//! `acme_hosts` against pebble, the ACME test CA (Debian packages `pebble`, which also has
//! `pebble-challtestsrv`, used here as pebble's DNS server answering 127.0.0.1 for every
//! name): the certificate is issued over HTTP-01 on `http_bind`, cached, served by SNI, and
//! renewed without a restart; a server added through `POST /servers` gets its own.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{Ca, echo_round_trip};
use crate::api::{Balancer, ENDPOINTS};
use crate::util::{KillOnDrop, PATIENCE, echo_backend, free_port};

fn spawn(program: &str, args: &[&str], env: &[(&str, &str)]) -> KillOnDrop {
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("{program} runs (Debian package pebble): {error}"));
    KillOnDrop(child)
}

/// Waits until something listens on `port`.
async fn listening(port: u16) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The served certificate for `name` (DER of the leaf), verified against `roots`.
async fn served_leaf(
    addr: std::net::SocketAddr,
    name: &str,
    roots: &rustls::RootCertStore,
) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut stream = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the ACME certificate verifies against pebble's root");
    echo_round_trip(&mut stream, b"over an ACME certificate").await;
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn pebble_issues_and_renews_the_certificate_of_an_acme_host() {
    let ca = Ca::new("pebble");
    let listener = ca.issue("pebble", &["localhost", "127.0.0.1"]);
    let (acme_port, management_port, http_port, dns_port) =
        (free_port(), free_port(), free_port(), free_port());
    let pebble_config = ca.scratch.file(
        "pebble.json",
        &format!(
            r#"{{"pebble": {{"listenAddress": "127.0.0.1:{acme_port}",
            "managementListenAddress": "127.0.0.1:{management_port}",
            "certificate": {:?}, "privateKey": {:?},
            "httpPort": {http_port}, "tlsPort": {}, "ocspResponderURL": "",
            "externalAccountBindingRequired": false}}}}"#,
            listener.cert.display().to_string(),
            listener.key.display().to_string(),
            free_port()
        ),
    );
    let dns = format!("127.0.0.1:{dns_port}");
    let management = format!("127.0.0.1:{}", free_port());
    let _dns = spawn(
        "pebble-challtestsrv",
        &[
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            &dns,
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &management,
        ],
        &[],
    );
    let _pebble = spawn(
        "pebble",
        &[
            "-config",
            pebble_config.to_str().unwrap(),
            "-dnsserver",
            &dns,
        ],
        &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
    );
    listening(acme_port).await;
    listening(management_port).await;

    let backend = echo_backend().await;
    let cache = ca.scratch.0.join("acme-cache");
    let config = format!(
        "[acme]\nchallenge = \"http\"\nhttp_bind = \"127.0.0.1:{http_port}\"\ncache_dir = {:?}\n\
         directory_url = \"https://localhost:{acme_port}/dir\"\ndirectory_ca_cert_path = {:?}\n\
         renew_after = \"4s\"\n\
         [servers.web]\nbind = \"127.0.0.1:0\"\nprotocol = \"tls\"\n\
         [servers.web.tls]\nacme_hosts = [\"acme.test\"]\n\
         [servers.web.discovery]\nkind = \"static\"\nstatic_list = [\"{}\"]\n",
        cache.display().to_string(),
        ca.cert.display().to_string(),
        backend.addr
    );
    let balancer = Balancer::start(&format!("{ENDPOINTS}{config}")).await;
    let addr = balancer.server("web");

    // pebble's root, from its management interface.
    let root_url = format!("https://localhost:{management_port}/roots/0");
    let ca_file = ca.cert.clone();
    let root = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--fail",
                "--max-time",
                "20",
                "--cacert",
            ])
            .arg(&ca_file)
            .arg(&root_url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        root.status.success(),
        "{}",
        String::from_utf8_lossy(&root.stderr)
    );
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&root.stdout) {
        roots.add(certificate.unwrap()).unwrap();
    }

    let cert_file = cache.join("acme.test.crt");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cert_file.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate issued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = served_leaf(addr, "acme.test", &roots).await;

    // renew_after = 4s: a new certificate replaces it while the balancer runs.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let served = served_leaf(addr, "acme.test", &roots).await;
        if served != first {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the certificate was not renewed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A server added through the API with its own ACME host gets its certificate too.
    let posted = serde_json::json!({
        "bind": "127.0.0.1:0",
        "protocol": "tls",
        "tls": {"acme_hosts": ["posted.test"]},
        "discovery": {"kind": "static", "static_list": [backend.addr.to_string()]},
    });
    let reply = balancer
        .call(Method::POST, "/servers/posted", &posted.to_string())
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let posted_cert = cache.join("posted.test.crt");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !posted_cert.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate issued for the posted server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    served_leaf(balancer.server("posted"), "posted.test", &roots).await;

    assert!(cache.read_dir().unwrap().any(|entry| {
        entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("account-")
    }));
}
