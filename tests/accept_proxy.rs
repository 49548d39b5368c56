//! `[accept_proxy]`: a PROXY header read from a trusted balancer in front names the client
//! that `[access]`, `[client_limits]`, logs and the header sent on to backends then see.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::util::*;

/// A backend that answers with the first line it receives: the PROXY v1 header betwixt sends.
async fn header_echo_backend() -> TestBackend {
    spawn_backend_on("127.0.0.1:0".parse().unwrap(), |mut stream| async move {
        if let Ok(line) = read_line(&mut stream).await {
            let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
        }
        let mut sink = [0u8; 256];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
}

/// A v2 header from `source` to `destination` over TCP, as a sender would write it.
fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(source), SocketAddr::V4(destination)) = (source, destination) else {
        panic!("IPv4 only here");
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    header.extend_from_slice(&source.ip().octets());
    header.extend_from_slice(&destination.ip().octets());
    header.extend_from_slice(&source.port().to_be_bytes());
    header.extend_from_slice(&destination.port().to_be_bytes());
    header
}

/// Connects, sends `header`, and reads the backend's first line.
async fn through(addr: SocketAddr, header: &[u8]) -> std::io::Result<(TcpStream, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(header).await?;
    let line = read_line(&mut stream).await?;
    Ok((stream, line))
}

/// HAProxy (`send-proxy`, `send-proxy-v2`) in front of betwixt: the client's own address,
/// not HAProxy's, is what `[access]` judges and what the backend's PROXY header names.
#[tokio::test]
async fn haproxy_in_front_names_the_real_client() {
    let backend = header_echo_backend().await;
    let tail = "[servers.edge.accept_proxy]\ntrusted = [\"127.0.0.1\"]\n\
                [servers.edge.proxy_protocol]\nversion = \"1\"\n\
                [servers.edge.access]\nrules = [\"deny 127.0.3.9\"]";
    let balancer = start_balancer(&server_config("edge", "", &[backend.addr], tail)).await;
    let betwixt = balancer.local_addr("edge").unwrap();
    let scratch = Scratch::new("haproxy-send-proxy");
    let (v1_port, v2_port) = (free_port(), free_port());
    let conf = scratch.file(
        "haproxy.cfg",
        &format!(
            "global\n  maxconn 64\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
             timeout client 30s\n  timeout server 30s\n\
             listen v1\n  bind 127.0.0.1:{v1_port}\n  server b {betwixt} send-proxy\n\
             listen v2\n  bind 127.0.0.1:{v2_port}\n  server b {betwixt} send-proxy-v2\n"
        ),
    );
    let _haproxy = KillOnDrop(
        std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy (apt-get install haproxy)"),
    );
    for port in [v1_port, v2_port] {
        let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut listening = false;
        for _ in 0..100 {
            if TcpStream::connect(front).await.is_ok() {
                listening = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(listening, "haproxy did not listen on {front}");
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.3.7:0".parse().unwrap()).unwrap();
        let mut client = socket.connect(front).await.unwrap();
        let source = client.local_addr().unwrap();
        let line = read_line(&mut client).await.unwrap();
        assert_eq!(
            line.trim_end(),
            format!(
                "PROXY TCP4 127.0.3.7 127.0.0.1 {} {}",
                source.port(),
                betwixt.port()
            ),
            "through haproxy port {port}"
        );
        assert!(
            fetch_name_from([127, 0, 3, 9], front).await.is_err(),
            "127.0.3.9 is denied"
        );
    }
    let report = server_report(&balancer, "edge");
    assert_eq!(report.denied, 2);
    assert_eq!(report.proxy_untrusted + report.proxy_header_failed, 0);
}

/// Hand-made headers: v1 and v2 (also split over several writes) are read; the address in
/// them is what `[access]` and `[client_limits]` count; the bytes after the header reach the
/// backend untouched.
#[tokio::test]
async fn the_header_address_is_the_client_for_access_and_limits() {
    let backend = header_echo_backend().await;
    let tail = "[servers.pp.accept_proxy]\ntrusted = [\"127.0.0.0/8\"]\n\
                [servers.pp.proxy_protocol]\nversion = \"1\"\n\
                [servers.pp.client_limits]\nmax_connections = 1\n\
                [servers.pp.access]\nrules = [\"deny 10.9.9.9\"]";
    let balancer = start_balancer(&server_config("pp", "", &[backend.addr], tail)).await;
    let addr = balancer.local_addr("pp").unwrap();
    let destination: SocketAddr = "192.0.2.1:6443".parse().unwrap();

    let (_held, line) = through(addr, b"PROXY TCP4 10.1.1.1 192.0.2.1 40000 6443\r\n")
        .await
        .unwrap();
    assert!(
        line.starts_with("PROXY TCP4 10.1.1.1 127.0.0.1 40000 "),
        "{line}"
    );
    // The same client again (another port) is over its one session.
    let again = v2_header("10.1.1.1:40001".parse().unwrap(), destination);
    assert!(through(addr, &again).await.is_err());
    assert_eq!(server_report(&balancer, "pp").client_over_connections, 1);
    // Denied by [access] through the header's address, though the socket is 127.0.0.1.
    let denied = v2_header("10.9.9.9:40002".parse().unwrap(), destination);
    assert!(through(addr, &denied).await.is_err());
    assert_eq!(server_report(&balancer, "pp").denied, 1);

    // A v2 header in three pieces, then payload in the same write as the last piece.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let header = v2_header("10.1.1.2:40003".parse().unwrap(), destination);
    stream.write_all(&header[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(&header[5..20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut rest = header[20..].to_vec();
    rest.extend_from_slice(b"hello\n");
    stream.write_all(&rest).await.unwrap();
    let line = read_line(&mut stream).await.unwrap();
    assert!(
        line.starts_with("PROXY TCP4 10.1.1.2 127.0.0.1 40003 "),
        "{line}"
    );
    // A v1 line in two pieces.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"PROXY TCP4 10.1.1.3 192.").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"0.2.1 40004 6443\r\n").await.unwrap();
    let line = read_line(&mut stream).await.unwrap();
    assert!(
        line.starts_with("PROXY TCP4 10.1.1.3 127.0.0.1 40004 "),
        "{line}"
    );
    let report = server_report(&balancer, "pp");
    assert_eq!(report.proxy_header_failed, 0);
    assert_eq!(report.proxy_untrusted, 0);
}

/// Connections from untrusted sources, with garbage, or with nothing are closed and counted.
#[tokio::test]
async fn untrusted_malformed_and_silent_connections_are_closed() {
    let backend = name_backend("a").await;
    let tail = "[servers.pp.accept_proxy]\ntrusted = [\"127.0.0.1\"]\nread_timeout = \"300ms\"";
    let balancer = start_balancer(&server_config("pp", "", &[backend.addr], tail)).await;
    let addr = balancer.local_addr("pp").unwrap();

    // Not trusted: a valid header does not help.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut untrusted = socket.connect(addr).await.unwrap();
    untrusted
        .write_all(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n")
        .await
        .unwrap();
    assert!(closed_by_peer(&mut untrusted).await);
    assert_eq!(server_report(&balancer, "pp").proxy_untrusted, 1);

    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PROXY TCP4 10.0.0.1 nonsense 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
        &[b'A'; 300],
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        assert!(closed_by_peer(&mut stream).await);
    }
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_peer(&mut silent).await);
    let report = server_report(&balancer, "pp");
    assert_eq!(report.proxy_header_failed, 5);
    assert_eq!(backend.accepted(), 0);
    assert_eq!(report.total, 0);

    // A LOCAL header (a balancer's own health check) is served as the balancer itself.
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(local).await.unwrap();
    assert_eq!(read_line(&mut stream).await.unwrap(), "a");
}
