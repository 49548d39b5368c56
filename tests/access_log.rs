//! `[logging] access_log`: one line per session at its end, to a file that logrotate may move
//! (SIGUSR1 or SIGHUP reopen it).

use std::net::SocketAddr;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Sends `payload` through an echo backend, reads it back, closes: one completed session.
async fn echo_session(addr: SocketAddr, payload: &[u8]) -> SocketAddr {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream.write_all(payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, payload);
    local
}

/// The text format's fields in their documented order, for a session of 5 bytes each way.
#[tokio::test]
async fn each_session_ends_with_one_text_line() {
    let backend = echo_backend().await;
    let scratch = Scratch::new("access-log-text");
    let path = scratch.0.join("access.log");
    let config = format!(
        "[logging]\naccess_log = \"{}\"\n{}",
        path.display(),
        server_config("k3s", "", &[backend.addr], "")
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("k3s").unwrap();
    let client = echo_session(addr, b"hello").await;
    eventually("the line is written", || lines(&path).len() == 1).await;
    let line = &lines(&path)[0];
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 10, "{line}");
    assert!(
        fields[0].ends_with('Z') && fields[0].contains('T'),
        "{line}"
    );
    assert_eq!(fields[1], client.to_string());
    assert_eq!(fields[2], "k3s");
    assert_eq!(fields[3], backend.addr.to_string());
    let connect_ms: u64 = fields[4].parse().unwrap();
    let duration_ms: u64 = fields[5].parse().unwrap();
    assert!(connect_ms <= duration_ms, "{line}");
    assert_eq!(&fields[6..], ["5", "5", "completed", "0"], "{line}");
    assert_eq!(balancer.report().access_log_dropped, 0);
}

/// JSON lines, and a retried connect counted in the line as in the server's counter.
#[tokio::test]
async fn json_lines_name_the_retries() {
    let backend = echo_backend().await;
    let refusing = closed_port().await;
    let scratch = Scratch::new("access-log-json");
    let path = scratch.0.join("access.json");
    let config = format!(
        "[logging]\naccess_log = \"{}\"\naccess_log_format = \"json\"\n{}",
        path.display(),
        server_config(
            "k3s",
            "balance = \"roundrobin\"",
            &[refusing, backend.addr],
            ""
        )
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("k3s").unwrap();
    for _ in 0..4 {
        echo_session(addr, b"abc").await;
    }
    eventually("four lines", || lines(&path).len() == 4).await;
    let mut retries = 0;
    for line in lines(&path) {
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["server"], "k3s");
        assert_eq!(value["backend"], backend.addr.to_string());
        assert_eq!(value["to_backend"], 3);
        assert_eq!(value["end"], "completed");
        retries += value["retries"].as_u64().unwrap();
    }
    assert!(retries >= 1, "the refusing backend was tried at least once");
    assert_eq!(retries, server_report(&balancer, "k3s").connect_retries);
}

/// The daemon: logrotate renames the file and sends SIGUSR1 (or SIGHUP); new lines go to a
/// new file at the configured path, the old file keeps the old ones.
#[tokio::test]
async fn sigusr1_and_sighup_reopen_the_file() {
    let backend = echo_backend().await;
    let scratch = Scratch::new("access-log-rotate");
    let path = scratch.0.join("access.log");
    let port = free_port();
    let config = format!(
        "[logging]\naccess_log = \"{}\"\n[servers.k3s]\nbind = \"127.0.0.1:{port}\"\n\
         [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [\"{}\"]\n",
        path.display(),
        backend.addr
    );
    let daemon = Daemon::spawn_in(scratch, &config, &[], &[]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually("the daemon listens", || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    echo_session(addr, b"one").await;
    eventually("the first line", || {
        lines(&path)
            .iter()
            .any(|line| line.contains(" 3 3 completed"))
    })
    .await;

    for (signal, name, payload) in [
        (libc::SIGUSR1, "usr1", &b"after"[..]),
        (libc::SIGHUP, "hup", b"after!!"),
    ] {
        let rotated = path.with_extension(format!("log.{name}"));
        std::fs::rename(&path, &rotated).unwrap();
        daemon.signal(signal);
        eventually("the new file", || path.exists()).await;
        echo_session(addr, payload).await;
        let size = format!(" {0} {0} completed", payload.len());
        eventually("the line in the new file", || lines(&path).len() == 1).await;
        assert!(lines(&path)[0].contains(&size), "{:?}", lines(&path));
        let old = lines(&rotated);
        assert!(
            !old.is_empty() && old.iter().all(|line| !line.contains(&size)),
            "{name}: {old:?}"
        );
    }
}
