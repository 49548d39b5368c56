//! What keepalived uses from a running daemon: `betwixt status --check` and the public
//! `/healthz` as its `track_script`, `betwixt drain` and `undrain` for a planned switchover.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

/// Runs the binary off the async runtime's threads (it blocks until its request is answered).
async fn betwixt(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .args(&args)
            .env_remove("GOBETWEEN")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn api_args(command: &str, api_port: u16, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        command.to_owned(),
        "--api".to_owned(),
        format!("http://127.0.0.1:{api_port}"),
        "--login".to_owned(),
        "admin".to_owned(),
        "--password".to_owned(),
        "secret".to_owned(),
    ];
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

/// `status --check`: (exit success, its one line).
async fn check(api_port: u16) -> (bool, String) {
    let output = betwixt(api_args("status", api_port, &["--check"])).await;
    let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success(), line)
}

/// The status of `GET /healthz` without credentials.
async fn healthz(api_port: u16) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", api_port)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

async fn wait_for_check(api_port: u16, want: bool) -> String {
    for _ in 0..100 {
        let (ok, line) = check(api_port).await;
        if ok == want {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("status --check never became {want}");
}

#[tokio::test]
async fn check_follows_backend_health_and_drain_moves_the_node_out() {
    let backend = echo_backend().await;
    let (port, api_port) = (free_port(), free_port());
    let config = format!(
        "[api]\nenabled = true\nbind = \"127.0.0.1:{api_port}\"\n\
         [api.basic_auth]\nlogin = \"admin\"\npassword = \"secret\"\n\
         [servers.k3s]\nbind = \"127.0.0.1:{port}\"\n\
         [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [\"{}\"]\n\
         [servers.k3s.healthcheck]\nkind = \"ping\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\
         fails = 1\npasses = 1\n",
        backend.addr
    );
    let _daemon = Daemon::spawn("node", &config, &[], &[]);

    let (ok, line) = check(free_port()).await;
    assert!(!ok && line.starts_with("not ok: "), "no daemon: {line}");
    assert_eq!(wait_for_check(api_port, true).await, "ok");
    assert_eq!(healthz(api_port).await, 200, "public, any Host");

    // A session that must outlive the drain.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut session = TcpStream::connect(addr).await.unwrap();
    echo(&mut session).await;

    let output = betwixt(api_args("drain", api_port, &["--deadline", "30s"])).await;
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{said}");
    assert!(said.starts_with("draining: 1 sessions open"), "{said}");
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    echo(&mut session).await;
    assert_eq!(
        check(api_port).await,
        (true, "ok".to_owned()),
        "fit while a session is open"
    );

    drop(session);
    let line = wait_for_check(api_port, false).await;
    assert_eq!(line, "not ok: drained, or no live backend is enabled");
    assert_eq!(healthz(api_port).await, 503);

    let output = betwixt(api_args("undrain", api_port, &[])).await;
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "serving");
    assert_eq!(wait_for_check(api_port, true).await, "ok");
    let mut again = TcpStream::connect(addr).await.unwrap();
    echo(&mut again).await;

    backend.stop();
    let line = wait_for_check(api_port, false).await;
    assert_eq!(line, "not ok: server k3s has no live backend (0/1)");
}

async fn echo(stream: &mut TcpStream) {
    stream.write_all(b"ping").await.unwrap();
    let mut reply = [0u8; 4];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply, b"ping");
}
