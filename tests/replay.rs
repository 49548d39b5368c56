//! Replaying a session's first flight (issue 15): a backend that accepts but does not answer,
//! closes or resets before its first byte costs the client nothing, as long as nothing has
//! reached the client; first flights that could do harm twice are not replayed.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use betwixt::{Health, LoadBalancer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_rustls::TlsConnector;

use crate::tls::{Ca, client_hello, connector, read_line_from};
use crate::util::*;

/// Reads what the client sends until it pauses for 150 ms (or closes), so that closing
/// afterwards sends a FIN, not the RST of unread data.
async fn drain(stream: &mut TcpStream) {
    let mut sink = vec![0u8; 64 * 1024];
    // 1000 reads of up to 64 KiB are far more than any test sends.
    for _ in 0..1000 {
        match tokio::time::timeout(Duration::from_millis(150), stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// A backend that reads the client's first flight, then closes (FIN) or resets (RST)
/// without a byte sent.
async fn failing_backend(reset: bool) -> TestBackend {
    spawn_backend_on(
        "127.0.0.1:0".parse().unwrap(),
        move |mut stream| async move {
            drain(&mut stream).await;
            if reset {
                socket2::SockRef::from(&stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            drop(stream);
        },
    )
    .await
}

/// A server whose first choice is `first` (priority 1) and whose only other candidate is
/// `second`, with a passive check that marks a backend down at its first failure (the
/// active one runs once at start, then not within the test).
async fn balancer(first: SocketAddr, second: SocketAddr, extra: &str) -> LoadBalancer {
    let config = format!(
        "[servers.r]\nbind = \"127.0.0.1:0\"\nbalance = \"weight\"\n\
         first_response_timeout = \"300ms\"\n{extra}\n\
         [servers.r.discovery]\nkind = \"static\"\n\
         static_list = [\"{first} priority=1\", \"{second} priority=2\"]\n\
         [servers.r.healthcheck]\nkind = \"ping\"\ninterval = \"60s\"\npassive_fails = 1\n"
    );
    start_balancer(&config).await
}

fn health(balancer: &LoadBalancer, backend: SocketAddr) -> Health {
    backend_report(balancer, "r", backend).health
}

/// Sends `first_flight` and reads back as many bytes (the second backend echoes), or what
/// came instead.
async fn echoed(balancer: &LoadBalancer, first_flight: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut client = TcpStream::connect(balancer.local_addr("r").unwrap()).await?;
    client.write_all(first_flight).await?;
    let mut back = vec![0u8; first_flight.len()];
    tokio::time::timeout(PATIENCE, client.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::other("no echo"))??;
    Ok(back)
}

/// A ClientHello sent to a backend that stays silent, closes or resets reaches the next one
/// intact; the first is marked down by passive health.
#[tokio::test]
async fn a_client_hello_is_replayed_after_silence_fin_or_rst() {
    let hello = client_hello("kubernetes");
    for kind in ["silent", "fin", "rst"] {
        let first = match kind {
            "silent" => silent_backend().await,
            kind => failing_backend(kind == "rst").await,
        };
        let second = echo_backend().await;
        let balancer = balancer(first.addr, second.addr, "").await;
        let back = echoed(&balancer, &hello).await;
        assert_eq!(back.unwrap(), hello, "{kind}: the ClientHello came back");
        let report = server_report(&balancer, "r");
        assert_eq!(
            (
                report.replays,
                report.replays_succeeded,
                report.replays_exhausted
            ),
            (1, 1, 0),
            "{kind}"
        );
        assert_eq!(health(&balancer, first.addr), Health::Down, "{kind}");
        assert_eq!(health(&balancer, second.addr), Health::Up, "{kind}");
        balancer.stop(Duration::from_secs(1)).await;
    }
}

/// A client that sends nothing while its backend says nothing may be the client of a
/// server-speaks-first protocol whose backend is frozen: it goes to the next backend, which
/// greets it. The silent one is not blamed (the client may just be idle).
#[tokio::test]
async fn a_server_speaks_first_backend_that_never_speaks_is_replaced() {
    let mute = silent_backend().await;
    let greeter = name_backend("greeter").await;
    let balancer = balancer(mute.addr, greeter.addr, "").await;
    let line = fetch_name(balancer.local_addr("r").unwrap()).await.unwrap();
    assert_eq!(line, "greeter");
    let report = server_report(&balancer, "r");
    assert_eq!((report.replays, report.replays_succeeded), (1, 1));
    assert_eq!(health(&balancer, mute.addr), Health::Up);
}

/// An idle client whose backends are all silent keeps its session on the last one: it is
/// never closed for its own silence, and no backend is blamed.
#[tokio::test]
async fn an_idle_client_with_silent_backends_is_not_closed() {
    let first = silent_backend().await;
    let second = silent_backend().await;
    let balancer = balancer(first.addr, second.addr, "").await;
    let mut client = TcpStream::connect(balancer.local_addr("r").unwrap())
        .await
        .unwrap();
    // Long enough for both backends' timeouts (2 x 300 ms) and then some.
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(1500), client.read(&mut byte)).await;
    assert!(read.is_err(), "the session ended: {read:?}");
    let report = server_report(&balancer, "r");
    assert_eq!(report.active, 1);
    assert_eq!(
        (
            report.replays,
            report.replays_succeeded,
            report.replays_exhausted
        ),
        (1, 0, 0)
    );
    assert_eq!(backend_report(&balancer, "r", second.addr).total, 1);
    assert_eq!(health(&balancer, first.addr), Health::Up);
    assert_eq!(health(&balancer, second.addr), Health::Up);
}

/// A plaintext first flight is replayed only with `replay = "always"`: by default a slow
/// backend could otherwise execute a request twice.
#[tokio::test]
async fn a_plaintext_first_flight_is_replayed_only_when_always() {
    let request = b"POST /apply HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n";
    let mute = silent_backend().await;
    let echo = echo_backend().await;
    let always = balancer(mute.addr, echo.addr, "replay = \"always\"").await;
    assert_eq!(echoed(&always, request).await.unwrap(), request);
    assert_eq!(server_report(&always, "r").replays_succeeded, 1);
    always.stop(Duration::from_secs(1)).await;

    let mute = silent_backend().await;
    let safe = balancer(mute.addr, echo.addr, "").await;
    let mut client = TcpStream::connect(safe.local_addr("r").unwrap())
        .await
        .unwrap();
    client.write_all(request).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(1200), client.read(&mut byte)).await;
    assert!(read.is_err(), "safe mode answered: {read:?}");
    let report = server_report(&safe, "r");
    assert_eq!((report.replays, report.active), (0, 1));
    assert_eq!(backend_report(&safe, "r", echo.addr).total, 0);
    assert_eq!(health(&safe, mute.addr), Health::Up);
}

/// Past the bound (32 KiB) nothing is kept: a backend closing before its first byte closes
/// the client, as without replay.
#[tokio::test]
async fn a_first_flight_past_the_bound_is_not_replayed() {
    let first = failing_backend(false).await;
    let echo = echo_backend().await;
    let balancer = balancer(first.addr, echo.addr, "replay = \"always\"").await;
    let result = echoed(&balancer, &vec![b'x'; 40 * 1024]).await;
    assert!(result.is_err(), "a 40 KiB first flight was replayed");
    let report = server_report(&balancer, "r");
    assert_eq!(report.replays, 0);
    assert_eq!(backend_report(&balancer, "r", echo.addr).total, 0);
    // Under the bound, the same backend's close is replayed.
    let small = echoed(&balancer, b"small").await;
    assert_eq!(small.unwrap(), b"small");
    assert_eq!(server_report(&balancer, "r").replays, 1);
}

/// A backend that closes before its first byte, with no candidate left: the client is
/// closed and the session counted as exhausted.
#[tokio::test]
async fn a_closing_backend_with_nothing_left_closes_the_client() {
    let first = failing_backend(false).await;
    let second = failing_backend(true).await;
    let balancer = balancer(first.addr, second.addr, "").await;
    let result = echoed(&balancer, &client_hello("kubernetes")).await;
    assert!(result.is_err(), "{result:?}");
    let report = server_report(&balancer, "r");
    assert_eq!(
        (
            report.replays,
            report.replays_succeeded,
            report.replays_exhausted
        ),
        (1, 0, 1)
    );
}

/// A TLS backend in its own process (nginx's stream module, one process: `master_process
/// off`), so the test can freeze it with SIGSTOP as a hung API server would be. Continued and
/// killed on drop, even when the test fails.
struct FreezableBackend {
    child: std::process::Child,
    addr: SocketAddr,
}

impl FreezableBackend {
    async fn start(scratch: &Scratch, name: &str, cert: &crate::tls::Issued) -> Self {
        let port = free_port();
        let module = ["/usr/lib/nginx/modules/ngx_stream_module.so"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .map(|path| format!("load_module {path};"))
            .unwrap_or_default();
        let dir = scratch.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.display().to_string();
        let conf = scratch.file(
            &format!("{name}.conf"),
            &format!(
                "{module}\ndaemon off;\nmaster_process off;\npid {dir}/nginx.pid;\n\
                 error_log {dir}/error.log;\nworker_rlimit_nofile 8192;\n\
                 events {{ worker_connections 4096; }}\n\
                 stream {{ server {{ listen 127.0.0.1:{port} ssl backlog=4096; \
                 ssl_certificate {}; ssl_certificate_key {}; return \"{name}\\n\"; }} }}\n",
                cert.cert.display(),
                cert.key.display()
            ),
        );
        let child = std::process::Command::new("nginx")
            .args(["-p", &dir, "-e", &format!("{dir}/error.log"), "-c"])
            .arg(&conf)
            .spawn()
            .expect("nginx (apt-get install nginx libnginx-mod-stream)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let backend = Self { child, addr };
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_ok() {
                return backend;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "nginx {name} did not start: {}",
            std::fs::read_to_string(format!("{dir}/error.log")).unwrap_or_default()
        );
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for FreezableBackend {
    fn drop(&mut self) {
        send_signal(self.pid(), libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ARRIVALS_PER_SECOND: u32 = 400;
const LOAD: Duration = Duration::from_secs(5);
const FREEZE_AFTER: Duration = Duration::from_millis(1500);
const FIRST_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A client's TCP stream that notes whether any byte came from the backend.
struct Noting {
    inner: TcpStream,
    received: Arc<AtomicBool>,
}

impl AsyncRead for Noting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.received.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Noting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a TLS client failed: before any backend byte reached it (the balancer's to save), or
/// after (its backend answered, then froze: nothing can replay that).
enum Failed {
    Unanswered(String),
    FrozenAfterAnswering(String),
}

impl Failed {
    fn detail(&self) -> &str {
        match self {
            Self::Unanswered(detail) | Self::FrozenAfterAnswering(detail) => detail,
        }
    }
}

/// One new TLS client: connect, handshake (its ClientHello is the first flight), read the
/// backend's line. The time from connect to the line, or what failed.
async fn tls_arrival(addr: SocketAddr, connector: TlsConnector) -> Result<Duration, Failed> {
    let started = Instant::now();
    let tcp = match TcpStream::connect(addr).await {
        Ok(tcp) => tcp,
        Err(error) => return Err(Failed::Unanswered(error.to_string())),
    };
    let name = ServerName::try_from("kubernetes").unwrap();
    let received = Arc::new(AtomicBool::new(false));
    let noting = Noting {
        inner: tcp,
        received: Arc::clone(&received),
    };
    let attempt = async {
        let mut stream = connector.connect(name, noting).await?;
        read_line_from(&mut stream).await
    };
    let outcome = match tokio::time::timeout(PATIENCE, attempt).await {
        Ok(Ok(line)) if line.starts_with('b') => return Ok(started.elapsed()),
        Ok(Ok(line)) => format!("unexpected line {line:?}"),
        Ok(Err(error)) => error.to_string(),
        Err(_) => "no answer".to_owned(),
    };
    if received.load(Ordering::Relaxed) {
        Err(Failed::FrozenAfterAnswering(outcome))
    } else {
        Err(Failed::Unanswered(outcome))
    }
}

/// The issue's acceptance test: 400 new TLS connections a second through three nginx TLS
/// backends, one frozen (SIGSTOP) mid-run. No client fails, the p99 time to the first line
/// stays under the first-response timeout plus a second, and the frozen backend is marked
/// down by client traffic (its kernel still accepts, so a ping check could not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_tls_backend_costs_no_client() {
    let ca = Ca::new("replay");
    let tls = connector(&ca);
    let cert = ca.issue("apiserver", &["kubernetes"]);
    let scratch = Scratch::new("replay-nginx");
    let mut backends = Vec::new();
    for name in ["b1", "b2", "b3"] {
        backends.push(FreezableBackend::start(&scratch, name, &cert).await);
    }
    let list: Vec<SocketAddr> = backends.iter().map(|backend| backend.addr).collect();
    let config = server_config(
        "k3s",
        &format!(
            "balance = \"roundrobin\"\nfirst_response_timeout = \"{}ms\"",
            FIRST_RESPONSE_TIMEOUT.as_millis()
        ),
        &list,
        "[servers.k3s.healthcheck]\nkind = \"ping\"\ninterval = \"60s\"\npassive_fails = 3",
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("k3s").unwrap();

    let mut ticks = tokio::time::interval(Duration::from_secs(1) / ARRIVALS_PER_SECOND);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut frozen = None;
    let mut connections = JoinSet::new();
    // 2 x LOAD worth of ticks at most: the loop ends on time long before.
    for _ in 0..2 * LOAD.as_secs() as u32 * ARRIVALS_PER_SECOND {
        if started.elapsed() >= LOAD {
            break;
        }
        if frozen.is_none() && started.elapsed() >= FREEZE_AFTER {
            send_signal(backends[0].pid(), libc::SIGSTOP);
            // Sessions the backend holds as it freezes: only these can have been answered.
            frozen = Some(backend_report(&balancer, "k3s", backends[0].addr).active);
        }
        ticks.tick().await;
        connections.spawn(tls_arrival(addr, tls.clone()));
    }
    let opened = connections.len();
    let per_second = opened as f64 / started.elapsed().as_secs_f64();
    let mut times = Vec::new();
    let mut failures = Vec::new();
    while let Some(result) = connections.join_next().await {
        match result.unwrap() {
            Ok(time) => times.push(time),
            Err(failure) => failures.push(failure),
        }
    }
    times.sort();
    let p99 = times
        .get(times.len() * 99 / 100)
        .copied()
        .unwrap_or(Duration::MAX);
    let over_a_second = times
        .iter()
        .filter(|time| **time > Duration::from_secs(1))
        .count();
    let (unanswered, after_answering): (Vec<_>, Vec<_>) = failures
        .iter()
        .partition(|failure| matches!(failure, Failed::Unanswered(_)));
    let report = server_report(&balancer, "k3s");
    eprintln!(
        "replay acceptance: {opened} connections at {per_second:.0}/s, {} failed before a \
         backend byte, {} answered and then frozen (of {frozen:?} held at the freeze), p99 {p99:?}, {over_a_second} over 1 s, \
         max {:?}, replays {} (succeeded {}, exhausted {})",
        unanswered.len(),
        after_answering.len(),
        times.last(),
        report.replays,
        report.replays_succeeded,
        report.replays_exhausted
    );
    assert!(per_second > 300.0, "the load ran at {per_second:.0}/s");
    assert!(
        unanswered.is_empty(),
        "{} clients failed, first: {:?}",
        unanswered.len(),
        unanswered.first().map(|failure| failure.detail())
    );
    // A client whose backend had answered it when the SIGSTOP came (its ServerHello sent, the
    // client's Finished not yet read) cannot be saved by anyone; it was one of the sessions
    // the backend held at that moment.
    let held = frozen.unwrap_or(0);
    assert!(
        after_answering.len() as u64 <= held,
        "{} answered clients failed, more than the {held} sessions held at the freeze: {:?}",
        after_answering.len(),
        after_answering.first().map(|failure| failure.detail())
    );
    assert!(
        p99 < FIRST_RESPONSE_TIMEOUT + Duration::from_secs(1),
        "p99 {p99:?}"
    );
    assert!(report.replays > 0 && report.replays_succeeded == report.replays);
    assert_eq!(report.replays_exhausted, 0);
    assert_eq!(
        backend_report(&balancer, "k3s", backends[0].addr).health,
        Health::Down,
        "the frozen backend is marked down by client traffic"
    );
    balancer.stop(Duration::from_secs(1)).await;
}
