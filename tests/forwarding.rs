//! Bytes arrive intact both ways, half-close and reset behave, idle timeouts cut.

use std::net::SocketAddr;
use std::time::Duration;

use betwixt::SessionEnd;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

const STREAMS: usize = 6;
/// 2 MiB per stream in the debug build the suite runs in (72 MiB over the six paths: enough to
/// fill every pipe and buffer size and to hand bursts from copy over to splice); 24 MiB (864 MiB
/// in all) with `cargo test --release`, where hashing it costs seconds, not minutes.
const BYTES_PER_STREAM: usize = if cfg!(debug_assertions) {
    2 * 1024 * 1024
} else {
    24 * 1024 * 1024
};

/// Sends `len` pseudo-random bytes while reading the echo; returns (sent, received) digests.
async fn echo_round_trip(addr: SocketAddr, seed: u64, len: usize) -> ([u8; 32], [u8; 32], usize) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let send = tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut hash = Sha256::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len() - (rng.usize(..1024)));
            rng.fill(&mut chunk[..n]);
            hash.update(&chunk[..n]);
            writer.write_all(&chunk[..n]).await.unwrap();
            left -= n;
        }
        writer.shutdown().await.unwrap();
        <[u8; 32]>::from(hash.finalize())
    });
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; 48 * 1024];
    let mut received = 0;
    loop {
        let n = reader.read(&mut buffer).await.unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buffer[..n]);
        received += n;
    }
    (send.await.unwrap(), hash.finalize().into(), received)
}

/// Every forwarding path: splice with the default pipe, splice with the smallest pipe (so the
/// pipe fills on nearly every read, the case the splice invariant guards), and user-space copy.
/// `auto` with a small copy buffer hands most bursts over from copy to splice. `sockmap`
/// leaves the bytes to the kernel (tests run as root, so the program loads).
const PATHS: [(&str, usize); 7] = [
    ("splice", 1 << 20),
    ("splice", 4096),
    ("copy", 1 << 20),
    ("copy", 1024),
    ("auto", 1 << 20),
    ("auto", 16384),
    ("sockmap", 1 << 20),
];

/// `[betwixt]` settings selecting one forwarding path, prepended to a server config.
fn on_path((mode, size): (&str, usize), config: &str) -> String {
    let size_key = match mode {
        "copy" | "auto" => "copy_buffer_size",
        _ => "pipe_size",
    };
    format!("[betwixt]\nforwarding = \"{mode}\"\n{size_key} = {size}\n{config}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_arrive_intact_both_ways() {
    for path in PATHS {
        concurrent_streams_on(path).await;
    }
}

async fn concurrent_streams_on(path: (&str, usize)) {
    let backends = [echo_backend().await, echo_backend().await];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let config = server_config("bulk", "balance = \"roundrobin\"", &addrs, "");
    let balancer = start_balancer(&on_path(path, &config)).await;
    let addr = balancer.local_addr("bulk").unwrap();

    let streams: Vec<_> = (0..STREAMS)
        .map(|seed| tokio::spawn(echo_round_trip(addr, seed as u64, BYTES_PER_STREAM)))
        .collect();
    for stream in streams {
        let (sent, received, len) = tokio::time::timeout(PATIENCE * 6, stream)
            .await
            .expect("streams finish")
            .unwrap();
        assert_eq!(len, BYTES_PER_STREAM, "{path:?}");
        assert_eq!(
            sent, received,
            "{path:?}: echoed bytes differ from the bytes sent"
        );
    }

    let server = server_report(&balancer, "bulk");
    let total = (STREAMS * BYTES_PER_STREAM) as u64;
    assert_eq!(server.to_backends, total);
    assert_eq!(server.to_clients, total);
    for backend in &server.backends {
        assert_eq!(backend.total, (STREAMS / 2) as u64);
        assert_eq!(backend.to_backend, (STREAMS / 2 * BYTES_PER_STREAM) as u64);
    }
    eventually("sessions end", || {
        server_report(&balancer, "bulk").active == 0
    })
    .await;
}

#[tokio::test]
async fn client_half_close_still_gets_the_whole_reply() {
    for path in PATHS {
        client_half_close_on(path).await;
    }
}

async fn client_half_close_on(path: (&str, usize)) {
    // Reads the whole request until EOF, then answers with its length and a 1 MiB body.
    let backend = spawn_backend_on("127.0.0.1:0".parse().unwrap(), |mut stream| async move {
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await.unwrap();
        let reply = format!("got {} bytes\n", request.len());
        stream.write_all(reply.as_bytes()).await.unwrap();
        stream.write_all(&vec![b'x'; 1 << 20]).await.unwrap();
    })
    .await;
    let config = server_config("half", "", &[backend.addr], "");
    let balancer = start_balancer(&on_path(path, &config)).await;
    let mut client = TcpStream::connect(balancer.local_addr("half").unwrap())
        .await
        .unwrap();
    client.write_all(&[7u8; 300_000]).await.unwrap();
    client.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(PATIENCE, client.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(
        reply.starts_with(b"got 300000 bytes\n"),
        "{path:?}: {:?}",
        String::from_utf8_lossy(&reply[..reply.len().min(40)])
    );
    assert_eq!(reply.len(), "got 300000 bytes\n".len() + (1 << 20));
}

#[tokio::test]
async fn backend_half_close_lets_the_client_keep_sending() {
    for path in PATHS {
        backend_half_close_on(path).await;
    }
}

async fn backend_half_close_on(path: (&str, usize)) {
    let (received_tx, received_rx) = tokio::sync::oneshot::channel();
    let received_tx = std::sync::Mutex::new(Some(received_tx));
    let backend = spawn_backend_on("127.0.0.1:0".parse().unwrap(), move |mut stream| {
        let sender = received_tx.lock().unwrap().take();
        async move {
            stream.write_all(b"greeting\n").await.unwrap();
            stream.shutdown().await.unwrap();
            let mut request = Vec::new();
            stream.read_to_end(&mut request).await.unwrap();
            if let Some(sender) = sender {
                let _ = sender.send(request);
            }
        }
    })
    .await;
    let config = server_config("half", "", &[backend.addr], "");
    let balancer = start_balancer(&on_path(path, &config)).await;
    let mut client = TcpStream::connect(balancer.local_addr("half").unwrap())
        .await
        .unwrap();
    let mut greeting = Vec::new();
    tokio::time::timeout(PATIENCE, client.read_to_end(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(greeting, b"greeting\n");
    client
        .write_all(b"still talking after your EOF")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let request = tokio::time::timeout(PATIENCE, received_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(request, b"still talking after your EOF");
}

#[tokio::test]
async fn backend_reset_resets_the_client() {
    let backend = spawn_backend_on("127.0.0.1:0".parse().unwrap(), |mut stream| async move {
        let mut first = [0u8; 5];
        let _ = stream.read_exact(&mut first).await;
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream);
    })
    .await;
    let balancer = start_balancer(&server_config("rst", "", &[backend.addr], "")).await;
    let mut client = TcpStream::connect(balancer.local_addr("rst").unwrap())
        .await
        .unwrap();
    client.write_all(b"hello").await.unwrap();
    let mut buffer = [0u8; 16];
    let result = tokio::time::timeout(PATIENCE, client.read(&mut buffer))
        .await
        .unwrap();
    let error = result.expect_err("a reset backend must reset the client, not close cleanly");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn client_idle_timeout_counts_only_client_bytes() {
    // The backend talks every 50 ms; the client says nothing: gobetween's per-direction
    // semantics cut the session after client_idle_timeout anyway.
    let backend = ticking_backend().await;
    let config = server_config(
        "idle",
        "client_idle_timeout = \"400ms\"",
        &[backend.addr],
        "",
    );
    let balancer = start_balancer(&config).await;
    let mut client = TcpStream::connect(balancer.local_addr("idle").unwrap())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    assert!(
        closed_by_peer(&mut client).await,
        "idle client was never cut"
    );
    // Not before the timeout, although the backend kept talking all along.
    assert!(started.elapsed() >= Duration::from_millis(400));
    eventually("the end is counted as an idle timeout", || {
        server_report(&balancer, "idle").ended(SessionEnd::IdleTimeout) == 1
    })
    .await;
}

#[tokio::test]
async fn backend_idle_timeout_cuts_a_silent_backend() {
    let backend = silent_backend().await;
    let config = server_config(
        "idle",
        "backend_idle_timeout = \"300ms\"",
        &[backend.addr],
        "",
    );
    let balancer = start_balancer(&config).await;
    let mut client = TcpStream::connect(balancer.local_addr("idle").unwrap())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    // The client keeps talking; the backend never answers.
    let talk = async {
        for _ in 0..200 {
            if client.write_all(b"ping").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), talk).await;
    assert!(closed_by_peer(&mut client).await);
    assert!(started.elapsed() >= Duration::from_millis(300));
    eventually("the end is counted as an idle timeout", || {
        server_report(&balancer, "idle").ended(SessionEnd::IdleTimeout) == 1
    })
    .await;
}

#[tokio::test]
async fn no_idle_timeout_keeps_a_quiet_session() {
    let backend = echo_backend().await;
    let balancer = start_balancer(&server_config("quiet", "", &[backend.addr], "")).await;
    let mut client = TcpStream::connect(balancer.local_addr("quiet").unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.write_all(b"still here").await.unwrap();
    let mut reply = [0u8; 10];
    tokio::time::timeout(PATIENCE, client.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply, b"still here");
}

/// What a backend receives when a client connects through a server with
/// `[proxy_protocol] version = VERSION`, sends `payload` and closes; with the client's address
/// and the balancer's.
async fn received_through_proxy_protocol(version: &str) -> (Vec<u8>, SocketAddr, SocketAddr) {
    let (header_tx, header_rx) = tokio::sync::oneshot::channel();
    let header_tx = std::sync::Mutex::new(Some(header_tx));
    let backend = spawn_backend_on("127.0.0.1:0".parse().unwrap(), move |mut stream| {
        let sender = header_tx.lock().unwrap().take();
        async move {
            let mut received = Vec::new();
            let _ = stream.read_to_end(&mut received).await;
            if let Some(sender) = sender {
                let _ = sender.send(received);
            }
        }
    })
    .await;
    let config = server_config(
        "pp",
        "",
        &[backend.addr],
        &format!("[servers.pp.proxy_protocol]\nversion = \"{version}\""),
    );
    let balancer = start_balancer(&config).await;
    let listen = balancer.local_addr("pp").unwrap();
    let mut client = TcpStream::connect(listen).await.unwrap();
    let local = client.local_addr().unwrap();
    client.write_all(b"payload").await.unwrap();
    client.shutdown().await.unwrap();
    let received = tokio::time::timeout(PATIENCE, header_rx)
        .await
        .unwrap()
        .unwrap();
    (received, local, listen)
}

#[tokio::test]
async fn proxy_protocol_v1_header_precedes_client_bytes() {
    let (received, local, listen) = received_through_proxy_protocol("1").await;
    let expected = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\npayload",
        local.port(),
        listen.port()
    );
    assert_eq!(String::from_utf8_lossy(&received), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_byte_on_every_path() {
    // The backend pushes 6 MiB at once; the client reads 8 KiB at a time with pauses, so the
    // balancer keeps finding its sink full with more data waiting at its source: a stall
    // (data left in a receive queue with readiness cleared) would hang this test.
    const SIZE: usize = 6 * 1024 * 1024;
    for path in PATHS {
        let backend = spawn_backend_on("127.0.0.1:0".parse().unwrap(), |mut stream| async move {
            let mut rng = fastrand::Rng::with_seed(7);
            let mut data = vec![0u8; SIZE];
            rng.fill(&mut data);
            let _ = stream.write_all(&data).await;
            let _ = stream.shutdown().await;
        })
        .await;
        let config = server_config("slow", "", &[backend.addr], "");
        let balancer = start_balancer(&on_path(path, &config)).await;
        let mut client = TcpStream::connect(balancer.local_addr("slow").unwrap())
            .await
            .unwrap();
        let mut hash = Sha256::new();
        let mut received = 0;
        let mut chunk = vec![0u8; 8192];
        let read_all = async {
            for round in 0..100_000u32 {
                let n = client.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                hash.update(&chunk[..n]);
                received += n;
                if round % 64 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        tokio::time::timeout(PATIENCE * 3, read_all)
            .await
            .unwrap_or_else(|_| panic!("{path:?}: stalled after {received} bytes"));
        let mut expected = vec![0u8; SIZE];
        fastrand::Rng::with_seed(7).fill(&mut expected);
        assert_eq!(received, SIZE, "{path:?}");
        assert_eq!(
            <[u8; 32]>::from(hash.finalize()),
            <[u8; 32]>::from(Sha256::digest(&expected)),
            "{path:?}"
        );
    }
}

/// `version = "2"`: the binary header, as the PROXY protocol specification lays it out,
/// precedes the client's bytes.
#[tokio::test]
async fn proxy_protocol_v2_header_precedes_client_bytes() {
    let (received, local, listen) = received_through_proxy_protocol("2").await;
    let mut expected =
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x7f\x00\x00\x01\x7f\x00\x00\x01".to_vec();
    expected.extend_from_slice(&local.port().to_be_bytes());
    expected.extend_from_slice(&listen.port().to_be_bytes());
    expected.extend_from_slice(b"payload");
    assert_eq!(received, expected);
}

/// nginx (`stream`, `listen ... proxy_protocol`), a real PROXY protocol parser, reads both
/// header versions and answers with the client address it found. One process
/// (`master_process off`), so killing it leaves no worker behind.
#[tokio::test]
async fn nginx_reads_the_client_address_from_both_proxy_header_versions() {
    let scratch = Scratch::new("nginx-proxy");
    let port = free_port();
    let module = ["/usr/lib/nginx/modules/ngx_stream_module.so"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .map(|path| format!("load_module {path};"))
        .unwrap_or_default();
    let dir = scratch.0.display().to_string();
    let conf = scratch.file(
        "nginx.conf",
        &format!(
            "{module}\ndaemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
             events {{}}\nstream {{ server {{ listen 127.0.0.1:{port} proxy_protocol; \
             return \"$proxy_protocol_addr $proxy_protocol_port\\n\"; }} }}\n"
        ),
    );
    let mut nginx = std::process::Command::new("nginx")
        .args(["-p", &dir, "-e", &format!("{dir}/error.log"), "-c"])
        .arg(&conf)
        .spawn()
        .expect("nginx (apt-get install nginx libnginx-mod-stream)");
    let backend: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut listening = false;
    for _ in 0..100 {
        if TcpStream::connect(backend).await.is_ok() {
            listening = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        listening,
        "nginx did not start: {}",
        std::fs::read_to_string(scratch.0.join("error.log")).unwrap_or_default()
    );
    for version in ["1", "2"] {
        let config = server_config(
            "pp",
            "",
            &[backend],
            &format!("[servers.pp.proxy_protocol]\nversion = \"{version}\""),
        );
        let balancer = start_balancer(&config).await;
        let mut client = TcpStream::connect(balancer.local_addr("pp").unwrap())
            .await
            .unwrap();
        let local = client.local_addr().unwrap();
        let line = tokio::time::timeout(PATIENCE, read_line(&mut client))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            line.trim_end(),
            format!("127.0.0.1 {}", local.port()),
            "version {version}"
        );
    }
    let _ = nginx.kill();
    let _ = nginx.wait();
}
