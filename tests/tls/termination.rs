//! `[tls]`: termination end to end, version and cipher limits as openssl sees them, a
//! certificate rotated by a reload while an old session flows, handshake failures counted.

use std::time::Duration;

use betwixt::HandshakeFailure;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Ca, Issued, echo_round_trip, s_client, tls_connect};
use crate::util::{
    PATIENCE, closed_by_peer, echo_backend, eventually, server_config, server_report,
    spawn_backend_on, start_balancer,
};

/// `[tls]` lines for `issued`, plus `extra` keys.
fn tls_table(name: &str, issued: &Issued, extra: &str) -> String {
    format!(
        "[servers.{name}.tls]\ncert_path = {:?}\nkey_path = {:?}\n{extra}\n",
        issued.cert.display().to_string(),
        issued.key.display().to_string()
    )
}

#[tokio::test]
async fn terminated_bytes_reach_the_backend_and_come_back() {
    let ca = Ca::new("terminate");
    let issued = ca.issue("server", &["localhost", "127.0.0.1"]);
    let backend = echo_backend().await;
    let config = server_config(
        "web",
        "protocol = \"tls\"",
        &[backend.addr],
        &tls_table("web", &issued, ""),
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("web").unwrap();

    let mut client = tls_connect(addr, "localhost", &ca).await.unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    echo_round_trip(&mut client, b"hello through TLS").await;
    echo_round_trip(&mut client, &big).await;
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, client.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(
        rest.is_empty(),
        "the backend's EOF ends the session cleanly"
    );

    let sent = (17 + big.len()) as u64;
    eventually("the session's bytes are counted both ways", || {
        let report = server_report(&balancer, "web");
        report.to_backends == sent && report.to_clients == sent
    })
    .await;
    let report = server_report(&balancer, "web");
    assert_eq!(report.tls.handshakes, 1);
    assert_eq!(report.ended(betwixt::SessionEnd::Completed), 1);
}

/// gobetween terminates TLS for `protocol = "tcp"` with a `[tls]` table too; curl talks HTTPS
/// to an HTTP backend through it.
#[tokio::test]
async fn curl_gets_an_answer_from_a_tcp_server_with_a_tls_table() {
    let ca = Ca::new("curl");
    let issued = ca.issue("server", &["localhost", "127.0.0.1"]);
    let backend = spawn_backend_on("127.0.0.1:0".parse().unwrap(), |mut stream| async move {
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buffer[..n]),
            }
        }
        let body = "hello from behind betwixt";
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
    let config = server_config("web", "", &[backend.addr], &tls_table("web", &issued, ""));
    let balancer = start_balancer(&config).await;
    let url = format!(
        "https://localhost:{}/",
        balancer.local_addr("web").unwrap().port()
    );
    let ca_file = ca.cert.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "20", "--cacert"])
            .arg(&ca_file)
            .arg("--resolve")
            .arg(format!(
                "localhost:{}:127.0.0.1",
                url.rsplit(':').next().unwrap().trim_end_matches('/')
            ))
            .arg(&url)
            .output()
            .expect("curl runs (Debian package curl)")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hello from behind betwixt"
    );
}

#[tokio::test]
async fn version_limits_are_what_openssl_sees() {
    let ca = Ca::new("versions");
    let issued = ca.issue("server", &["localhost"]);
    let backend = echo_backend().await;
    let only_12 = tls_table("only12", &issued, "max_version = \"tls1.2\"");
    let only_13 = tls_table("only13", &issued, "min_version = \"tls1.3\"");
    let config = format!(
        "{}{}",
        server_config("only12", "protocol = \"tls\"", &[backend.addr], &only_12),
        server_config("only13", "protocol = \"tls\"", &[backend.addr], &only_13),
    );
    let balancer = start_balancer(&config).await;
    let only12 = balancer.local_addr("only12").unwrap();
    let only13 = balancer.local_addr("only13").unwrap();

    let (ok, output) = s_client(only12, &["-tls1_3"], "").await;
    assert!(
        !ok,
        "a TLS 1.2-only server refuses a TLS 1.3-only client:\n{output}"
    );
    let (ok, output) = s_client(only12, &["-tls1_2"], "").await;
    assert!(ok && output.contains("TLSv1.2"), "{output}");
    let (ok, output) = s_client(only13, &["-tls1_2"], "").await;
    assert!(
        !ok,
        "a TLS 1.3-only server refuses a TLS 1.2-only client:\n{output}"
    );
    let (ok, output) = s_client(only13, &["-tls1_3"], "").await;
    assert!(ok && output.contains("TLSv1.3"), "{output}");

    eventually("refused handshakes are counted as incompatible", || {
        server_report(&balancer, "only12")
            .tls
            .failures(HandshakeFailure::Incompatible)
            == 1
            && server_report(&balancer, "only13")
                .tls
                .failures(HandshakeFailure::Incompatible)
                == 1
    })
    .await;
}

#[tokio::test]
async fn only_the_listed_tls12_suites_are_offered() {
    let ca = Ca::new("ciphers");
    let issued = ca.issue("server", &["localhost"]);
    let backend = echo_backend().await;
    let table = tls_table(
        "web",
        &issued,
        "max_version = \"tls1.2\"\nciphers = [\"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\", \"TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA\"]",
    );
    let config = server_config("web", "protocol = \"tls\"", &[backend.addr], &table);
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("web").unwrap();

    let (ok, output) = s_client(
        addr,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        "",
    )
    .await;
    assert!(!ok, "a suite not listed is refused:\n{output}");
    let (ok, output) = s_client(addr, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"], "").await;
    assert!(!ok, "the CBC suite was dropped:\n{output}");
    let (ok, output) = s_client(
        addr,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
        "",
    )
    .await;
    assert!(
        ok && output.contains("ECDHE-ECDSA-AES256-GCM-SHA384"),
        "{output}"
    );
}

#[tokio::test]
async fn a_reload_serves_a_rotated_certificate_while_old_sessions_go_on() {
    let old_ca = Ca::new("rotate-old");
    let new_ca = Ca::new("rotate-new");
    let old = old_ca.issue("server", &["localhost"]);
    let new = new_ca.issue("server", &["localhost"]);
    let backend = echo_backend().await;
    let config = server_config(
        "web",
        "protocol = \"tls\"",
        &[backend.addr],
        &tls_table("web", &old, ""),
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("web").unwrap();
    let mut established = tls_connect(addr, "localhost", &old_ca).await.unwrap();
    echo_round_trip(&mut established, b"before the rotation").await;

    // The same config text: only the files changed.
    std::fs::copy(&new.cert, &old.cert).unwrap();
    std::fs::copy(&new.key, &old.key).unwrap();
    let reloaded = betwixt::Config::from_toml(&config).unwrap();
    balancer.reload(reloaded).await.unwrap();

    let mut fresh = tls_connect(addr, "localhost", &new_ca).await.unwrap();
    echo_round_trip(&mut fresh, b"new certificate").await;
    assert!(
        tls_connect(addr, "localhost", &old_ca).await.is_err(),
        "new handshakes get the new certificate"
    );
    echo_round_trip(&mut established, b"after the rotation").await;
}

#[tokio::test]
async fn a_silent_or_garbage_client_is_closed_and_counted_while_others_connect() {
    let ca = Ca::new("slow");
    let issued = ca.issue("server", &["localhost"]);
    let backend = echo_backend().await;
    let config = server_config(
        "web",
        "protocol = \"tls\"\n[servers.web.sni]\nread_timeout = \"300ms\"\nunexpected_hostname_strategy = \"any\"",
        &[backend.addr],
        &tls_table("web", &issued, ""),
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("web").unwrap();

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut good = tls_connect(addr, "localhost", &ca).await.unwrap();
    echo_round_trip(&mut good, b"served meanwhile").await;
    assert!(closed_by_peer(&mut garbage).await);
    assert!(closed_by_peer(&mut silent).await);
    eventually("both failures are counted", || {
        let tls = server_report(&balancer, "web").tls;
        tls.failures(HandshakeFailure::Timeout) == 1
            && tls.failures(HandshakeFailure::Malformed) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(server_report(&balancer, "web").tls.handshakes, 1);
}

#[tokio::test]
async fn a_client_stalled_mid_handshake_is_closed_after_handshake_timeout() {
    let ca = Ca::new("stalled");
    let issued = ca.issue("server", &["localhost"]);
    let backend = echo_backend().await;
    let config = server_config(
        "web",
        "protocol = \"tls\"",
        &[backend.addr],
        &tls_table("web", &issued, "handshake_timeout = \"300ms\""),
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("web").unwrap();

    // A handshake record header promising 512 bytes, and nothing more: past the first-byte
    // wait, inside the handshake.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    // Far below the 10 s default: the configured limit is what closed it.
    let closed = tokio::time::timeout(Duration::from_secs(5), closed_by_peer(&mut stalled)).await;
    assert_eq!(closed, Ok(true), "closed within the handshake_timeout");
    eventually("the stall is counted as a timeout", || {
        server_report(&balancer, "web")
            .tls
            .failures(HandshakeFailure::Timeout)
            == 1
    })
    .await;
    let mut good = tls_connect(addr, "localhost", &ca).await.unwrap();
    echo_round_trip(&mut good, b"served after").await;
}
