//! `betwixt status` against a running daemon (the binary), and the daemon's API and metrics
//! listeners.

use std::process::{Command, Output};

use hyper::header::HeaderMap;
use hyper::{Method, StatusCode};

use super::*;

fn start_daemon(config: &str) -> Daemon {
    Daemon::spawn("status", config, &[], &[])
}

async fn status(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .arg("status")
            .args(args)
            .env_remove("GOBETWEEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_servers_and_backends_of_a_running_daemon() {
    let (a, b) = (name_backend("a").await, name_backend("b").await);
    let (api_port, metrics_port) = (free_port(), free_port());
    let endpoints = ENDPOINTS
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{api_port}"), 1)
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{metrics_port}"), 1);
    let servers = server_config("k3s", "balance = \"leastconn\"", &[a.addr, b.addr], "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{}", free_port()));
    let mut daemon = start_daemon(&format!("{endpoints}{servers}"));
    let api: SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    // Both listeners start after the daemon is up, one after the other.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for addr in [api, metrics] {
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the daemon's {addr} never listened"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let scrape = request(metrics, Method::GET, "/metrics", HeaderMap::new(), "").await;
    assert!(
        scrape
            .body
            .contains("gobetween_server_count{server=\"k3s\"} 2"),
        "{}",
        scrape.body
    );

    let mut headers = HeaderMap::new();
    headers.insert(hyper::header::AUTHORIZATION, basic(LOGIN, PASSWORD));
    let json = HeaderValue::from_static("application/json");
    headers.insert(hyper::header::CONTENT_TYPE, json);
    let drain = format!("/servers/k3s/backends/{}/drain", b.addr);
    let reply = request(api, Method::POST, &drain, headers, "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    let url = format!("http://127.0.0.1:{api_port}");
    let credentials = |password: &str| {
        vec![
            "--api".to_owned(),
            url.clone(),
            "--login".into(),
            LOGIN.into(),
            "--password".into(),
            password.into(),
        ]
    };
    let output = status(credentials(PASSWORD)).await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let version = format!("version {}, pid", env!("CARGO_PKG_VERSION"));
    assert!(text.contains(&version), "{text}");
    assert!(text.contains("server k3s"), "{text}");
    assert!(text.contains("balance leastconn"), "{text}");
    let row = |addr: SocketAddr| {
        text.lines()
            .find(|line| line.trim_start().starts_with(&addr.to_string()))
            .unwrap_or_else(|| panic!("no row for {addr}:\n{text}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(row(a.addr)[1..3], ["up", "enabled"]);
    assert_eq!(row(b.addr)[1..3], ["up", "draining"]);

    let refused = status(credentials("wrong")).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    let nowhere = status(vec![
        "--api".into(),
        format!("http://127.0.0.1:{}", free_port()),
    ])
    .await;
    assert!(!nowhere.status.success());
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("cannot connect"));

    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_for_exit().await.success());
}
