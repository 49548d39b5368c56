//! `[sni]`: routing by server name, in passthrough (the backend terminates the client's own
//! TLS) and with termination; each hostname strategy; slow and garbage ClientHellos.

use std::net::SocketAddr;

use betwixt::HandshakeFailure;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Ca, TlsBackend, Trickle, client_hello, connector, read_line_from, tls_connect};
use crate::util::{
    closed_by_peer, eventually, name_backend, read_line, server_report, start_balancer,
};

/// One server `front` with `[sni]` keys `sni` and tagged backends `(address, tag)`.
fn sni_config(sni: &str, backends: &[(SocketAddr, Option<&str>)], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(addr, tag)| match tag {
            Some(tag) => format!("\"{addr} sni={tag}\""),
            None => format!("\"{addr}\""),
        })
        .collect();
    format!(
        "[servers.front]\nbind = \"127.0.0.1:0\"\n{extra}\n[servers.front.sni]\n{sni}\n\
         [servers.front.discovery]\nkind = \"static\"\nstatic_list = [{}]\n",
        list.join(", ")
    )
}

/// Sends a ClientHello for `name` and reads the line a plain name backend answers with;
/// `None` when the balancer closes the connection instead.
async fn routed_to(addr: SocketAddr, name: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&client_hello(name)).await.unwrap();
    read_line(&mut stream).await.ok()
}

#[tokio::test]
async fn passthrough_reaches_the_backend_of_the_name_which_completes_the_handshake() {
    let ca = Ca::new("passthrough");
    let a = TlsBackend::start("cluster-a", &ca.issue("a", &["api.a.example"]), None).await;
    let b = TlsBackend::start("cluster-b", &ca.issue("b", &["api.b.example"]), None).await;
    let config = sni_config(
        "",
        &[
            (a.addr, Some("api.a.example")),
            (b.addr, Some("api.b.example")),
        ],
        "",
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("front").unwrap();
    for (name, expected) in [
        ("api.a.example", "cluster-a"),
        ("api.b.example", "cluster-b"),
    ] {
        // The client verifies the backend's certificate for the name: the backend saw the
        // client's own ClientHello, untouched.
        let mut stream = tls_connect(addr, name, &ca).await.unwrap();
        assert_eq!(read_line_from(&mut stream).await.unwrap(), expected);
        super::echo_round_trip(&mut stream, b"end to end").await;
    }
    // A ClientHello trickling in over many segments is read whole.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("api.b.example").unwrap();
    let mut stream = connector(&ca)
        .connect(name, Trickle::new(tcp, 100))
        .await
        .unwrap();
    assert_eq!(read_line_from(&mut stream).await.unwrap(), "cluster-b");
    assert_eq!(server_report(&balancer, "front").tls.handshakes, 3);
}

#[tokio::test]
async fn termination_routes_on_the_handshakes_server_name() {
    let ca = Ca::new("terminate-sni");
    let issued = ca.issue("server", &["api.a.example", "api.b.example"]);
    let a = name_backend("a").await;
    let b = name_backend("b").await;
    let extra = format!(
        "protocol = \"tls\"\n[servers.front.tls]\ncert_path = {:?}\nkey_path = {:?}",
        issued.cert.display().to_string(),
        issued.key.display().to_string()
    );
    let config = sni_config(
        "",
        &[
            (a.addr, Some("api.a.example")),
            (b.addr, Some("api.b.example")),
        ],
        &extra,
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("front").unwrap();
    for (name, expected) in [("api.b.example", "b"), ("API.A.example", "a")] {
        let mut stream = tls_connect(addr, name, &ca).await.unwrap();
        assert_eq!(
            read_line_from(&mut stream).await.unwrap(),
            expected,
            "{name}"
        );
    }
}

#[tokio::test]
async fn unexpected_hostname_strategies_pick_as_gobetween() {
    let a = name_backend("a").await;
    let untagged = name_backend("untagged").await;
    let backends = [(a.addr, Some("a.example")), (untagged.addr, None)];
    let cases = [
        ("default", "other.example", Some("untagged")),
        ("reject", "other.example", None),
        ("any", "other.example", Some("either")),
        ("default", "a.example", Some("a")),
    ];
    for (strategy, name, expected) in cases {
        let sni = format!("unexpected_hostname_strategy = \"{strategy}\"");
        let balancer = start_balancer(&sni_config(&sni, &backends, "")).await;
        let addr = balancer.local_addr("front").unwrap();
        let got = routed_to(addr, name).await;
        match expected {
            Some("either") => assert!(got.is_some(), "{strategy} {name}"),
            expected => assert_eq!(got.as_deref(), expected, "{strategy} {name}"),
        }
        let unmatched = server_report(&balancer, "front").tls.sni_unmatched;
        assert_eq!(
            unmatched,
            u64::from(name != "a.example"),
            "{strategy} {name}"
        );
    }
    // `any` picks among every backend: both get clients.
    let balancer = start_balancer(&sni_config(
        "unexpected_hostname_strategy = \"any\"",
        &backends,
        "balance = \"roundrobin\"",
    ))
    .await;
    let addr = balancer.local_addr("front").unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(routed_to(addr, "nobody.example").await.unwrap());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test]
async fn regexp_tags_match_names() {
    let a = name_backend("a").await;
    let b = name_backend("b").await;
    let config = sni_config(
        "hostname_matching_strategy = \"regexp\"\nunexpected_hostname_strategy = \"reject\"",
        &[
            (a.addr, Some("^api\\\\.a\\\\.")),
            (b.addr, Some("\\\\.b\\\\.example$")),
        ],
        "",
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("front").unwrap();
    assert_eq!(routed_to(addr, "api.a.example").await.as_deref(), Some("a"));
    assert_eq!(routed_to(addr, "x.b.example").await.as_deref(), Some("b"));
    assert_eq!(routed_to(addr, "api.c.example").await, None);
}

#[tokio::test]
async fn a_slow_or_garbage_hello_is_closed_and_counted_while_others_are_served() {
    let a = name_backend("a").await;
    let config = sni_config(
        "read_timeout = \"300ms\"",
        &[(a.addr, Some("a.example"))],
        "",
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("front").unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(&client_hello("a.example")[..30])
        .await
        .unwrap();
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await.unwrap();
    assert_eq!(routed_to(addr, "a.example").await.as_deref(), Some("a"));
    for stream in [&mut garbage, &mut silent, &mut partial] {
        assert!(closed_by_peer(stream).await);
    }
    eventually("the failures are counted", || {
        let tls = server_report(&balancer, "front").tls;
        tls.failures(HandshakeFailure::Timeout) == 2
            && tls.failures(HandshakeFailure::Malformed) == 1
    })
    .await;
}

/// The counters as the REST API and Prometheus show them.
#[tokio::test]
async fn sni_counters_reach_the_api_and_metrics() {
    let a = name_backend("a").await;
    let config = format!(
        "{}{}",
        crate::api::ENDPOINTS,
        sni_config(
            "read_timeout = \"300ms\"\nunexpected_hostname_strategy = \"reject\"",
            &[(a.addr, Some("a.example"))],
            "",
        )
    );
    let lb = crate::api::Balancer::start(&config).await;
    let addr = lb.server("front");
    assert_eq!(routed_to(addr, "a.example").await.as_deref(), Some("a"));
    assert_eq!(routed_to(addr, "b.example").await, None);
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00")
        .await
        .unwrap();
    assert!(closed_by_peer(&mut garbage).await);
    eventually("the failure is counted", || {
        server_report(&lb.balancer, "front")
            .tls
            .failures(HandshakeFailure::Malformed)
            == 1
    })
    .await;

    let stats = lb.get_json("/servers/front/stats").await;
    assert_eq!(stats["tls"]["handshakes"], 2, "{stats}");
    assert_eq!(stats["tls"]["sni_unmatched"], 1, "{stats}");
    assert_eq!(
        stats["tls"]["handshake_failures"]["malformed"], 1,
        "{stats}"
    );
    let metrics = lb.scrape().await;
    let server = [("server", "front")];
    assert_eq!(metrics.value("betwixt_tls_handshakes_total", &server), 2.0);
    assert_eq!(metrics.value("betwixt_sni_unmatched_total", &server), 1.0);
    let malformed = [("server", "front"), ("reason", "malformed")];
    assert_eq!(
        metrics.value("betwixt_tls_handshake_failures_total", &malformed),
        1.0
    );
}
