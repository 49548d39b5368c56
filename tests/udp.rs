//! `protocol = "udp"` servers: sessions per client address, gobetween's `[udp]` keys, idle
//! expiry, failure of a backend, reloads, the session bound, and DNS end to end.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use betwixt::{Health, LoadBalancer, SessionEnd};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::util::{eventually, server_report, start_balancer};

/// How long a client waits for one reply before it counts the request as lost.
const REPLY_WAIT: Duration = Duration::from_millis(1500);

/// A UDP backend on loopback: answers each datagram with `NAME:PAYLOAD` (unless silent) and
/// records every source address it saw.
struct UdpBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl UdpBackend {
    async fn start(name: &'static str, answer: bool) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name, answer).await
    }

    async fn start_on(addr: SocketAddr, name: &'static str, answer: bool) -> Self {
        let socket = UdpSocket::bind(addr).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut buffer = vec![0; 65_535];
            while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
                record.lock().unwrap().push(from);
                if answer {
                    let mut reply = format!("{name}:").into_bytes();
                    reply.extend_from_slice(&buffer[..len]);
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        Self { addr, seen, task }
    }

    fn received(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn sources(&self) -> HashSet<SocketAddr> {
        self.seen.lock().unwrap().iter().copied().collect()
    }

    /// Closes the socket: the port then answers with ICMP port unreachable.
    async fn stop(&self) {
        self.task.abort();
        for _ in 0..100 {
            if UdpSocket::bind(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("backend {} did not close", self.addr);
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn udp_config(extra: &str, backends: &[&UdpBackend], tail: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        "[servers.dns]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\n{extra}\n\
         [servers.dns.discovery]\nkind = \"static\"\nstatic_list = [{}]\n{tail}\n",
        list.join(", ")
    )
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// Sends `payload` to the balancer and returns the reply, `None` when none came in time.
async fn ask(socket: &UdpSocket, balancer: SocketAddr, payload: &str) -> Option<String> {
    socket.send_to(payload.as_bytes(), balancer).await.unwrap();
    let mut buffer = vec![0; 65_535];
    let (len, from) = tokio::time::timeout(REPLY_WAIT, socket.recv_from(&mut buffer))
        .await
        .ok()?
        .unwrap();
    assert_eq!(from, balancer, "the reply must come from the address asked");
    Some(String::from_utf8(buffer[..len].to_vec()).unwrap())
}

/// The backend name in a reply `NAME:PAYLOAD`, checking the payload is the one sent.
fn answered_by(reply: &str, payload: &str) -> String {
    let (name, echoed) = reply.split_once(':').expect("NAME:PAYLOAD");
    assert_eq!(echoed, payload, "a reply to another request");
    name.to_owned()
}

fn address(balancer: &LoadBalancer) -> SocketAddr {
    balancer.local_addr("dns").expect("the udp server listens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_reaches_the_client_that_asked() {
    let backends = [
        UdpBackend::start("a", true).await,
        UdpBackend::start("b", true).await,
        UdpBackend::start("c", true).await,
    ];
    let refs: Vec<&UdpBackend> = backends.iter().collect();
    let balancer = start_balancer(&udp_config("balance = \"roundrobin\"", &refs, "")).await;
    let addr = address(&balancer);
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..40 {
        clients.spawn(async move {
            let socket = client().await;
            let mut names = HashSet::new();
            for request in 0..25 {
                let payload = format!("client {id} request {request}");
                let reply = ask(&socket, addr, &payload).await.expect("a reply");
                names.insert(answered_by(&reply, &payload));
            }
            names
        });
    }
    let mut used = HashSet::new();
    while let Some(names) = clients.join_next().await {
        let names = names.unwrap();
        assert_eq!(names.len(), 1, "a client's session stays on one backend");
        used.extend(names);
    }
    assert_eq!(used.len(), 3, "sessions are spread over every backend");
    let report = server_report(&balancer, "dns");
    assert_eq!(report.total, 40, "one session per client address");
    assert_eq!(
        report.to_backends,
        report.backends.iter().map(|b| b.to_backend).sum::<u64>()
    );
    assert!(
        report.to_clients > report.to_backends,
        "replies carry a prefix"
    );
    assert_eq!(report.datagrams_dropped, 0);
}

#[tokio::test]
async fn iphash_keeps_every_port_of_a_client_on_one_backend() {
    let backends = [
        UdpBackend::start("a", true).await,
        UdpBackend::start("b", true).await,
        UdpBackend::start("c", true).await,
    ];
    let refs: Vec<&UdpBackend> = backends.iter().collect();
    let balancer = start_balancer(&udp_config("balance = \"iphash\"", &refs, "")).await;
    let addr = address(&balancer);
    let mut names = HashSet::new();
    for port in 0..10 {
        let socket = client().await;
        let payload = format!("port {port}");
        names.insert(answered_by(
            &ask(&socket, addr, &payload).await.unwrap(),
            &payload,
        ));
    }
    assert_eq!(names.len(), 1, "one client IP, one backend: {names:?}");
}

#[tokio::test]
async fn max_responses_ends_the_session_and_the_next_request_is_balanced_again() {
    let backends = [
        UdpBackend::start("a", true).await,
        UdpBackend::start("b", true).await,
    ];
    let refs: Vec<&UdpBackend> = backends.iter().collect();
    let config = udp_config(
        "balance = \"roundrobin\"",
        &refs,
        "[servers.dns.udp]\nmax_responses = 1",
    );
    let balancer = start_balancer(&config).await;
    let addr = address(&balancer);
    let socket = client().await;
    let mut names = Vec::new();
    for request in 0..4 {
        let payload = format!("q{request}");
        names.push(answered_by(
            &ask(&socket, addr, &payload).await.unwrap(),
            &payload,
        ));
    }
    assert!(
        names.windows(2).all(|pair| pair[0] != pair[1]),
        "a session per request, balanced again each time: {names:?}"
    );
    eventually("the sessions end", || {
        let report = server_report(&balancer, "dns");
        report.active == 0 && report.ended(SessionEnd::Completed) == 4
    })
    .await;
}

/// With `max_responses`, a session per request would cost a socket, a connect and two epoll
/// registrations each: a completed session's socket serves the next session to its backend.
#[tokio::test]
async fn completed_sessions_hand_their_backend_socket_to_the_next_one() {
    let backend = UdpBackend::start("a", true).await;
    let config = udp_config("", &[&backend], "[servers.dns.udp]\nmax_responses = 1");
    let balancer = start_balancer(&config).await;
    let addr = address(&balancer);
    for request in 0..20_u64 {
        let payload = format!("q{request}");
        let reply = ask(&client().await, addr, &payload).await.unwrap();
        assert_eq!(answered_by(&reply, &payload), "a");
        eventually("the session completes", || {
            server_report(&balancer, "dns").ended(SessionEnd::Completed) == request + 1
        })
        .await;
    }
    let sources = backend.sources();
    assert!(
        sources.len() <= 3,
        "20 sessions, one after the other, should share a socket: {sources:?}"
    );
}

/// A reply the backend sends after the session completed (one more than `max_responses`)
/// must not reach the client of the next session on that socket.
#[tokio::test]
async fn a_late_extra_reply_never_reaches_the_next_client() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = socket.local_addr().unwrap();
    let backend = tokio::spawn(async move {
        let mut buffer = vec![0; 1500];
        while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
            let request = String::from_utf8_lossy(&buffer[..len]).into_owned();
            let _ = socket
                .send_to(format!("a:{request}").as_bytes(), from)
                .await;
            if request == "first" {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = socket.send_to(b"a:extra reply to first", from).await;
            }
        }
    });
    let config = format!(
        "[servers.dns]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\n\
         [servers.dns.udp]\nmax_responses = 1\n\
         [servers.dns.discovery]\nkind = \"static\"\nstatic_list = [\"{backend_addr}\"]\n"
    );
    let balancer = start_balancer(&config).await;
    let addr = address(&balancer);
    assert_eq!(
        ask(&client().await, addr, "first").await.unwrap(),
        "a:first"
    );
    // The extra reply lands on the completed session's idle socket.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = client().await;
    assert_eq!(ask(&second, addr, "second").await.unwrap(), "a:second");
    let mut buffer = [0; 100];
    let more =
        tokio::time::timeout(Duration::from_millis(500), second.recv_from(&mut buffer)).await;
    assert!(
        more.is_err(),
        "the next client got another datagram: {:?}",
        more.map(|r| String::from_utf8_lossy(&buffer[..r.unwrap().0]).into_owned())
    );
    backend.abort();
}

/// `[proxy_protocol] version = "2"` on a UDP server: the binary header (UDP over IPv4) goes
/// before each datagram, in sessions and in fire-and-forget mode; replies come back as they are.
#[tokio::test]
async fn proxy_protocol_v2_precedes_each_datagram() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = socket.local_addr().unwrap();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let backend = tokio::spawn(async move {
        let mut buffer = vec![0; 1500];
        while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
            let _ = seen_tx.send(buffer[..len].to_vec());
            let _ = socket.send_to(b"reply", from).await;
        }
    });
    for (tail, label) in [("", "session"), ("max_requests = 1", "fire-and-forget")] {
        let config = format!(
            "[servers.dns]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\n\
             [servers.dns.proxy_protocol]\nversion = \"2\"\n\
             [servers.dns.udp]\n{tail}\n\
             [servers.dns.discovery]\nkind = \"static\"\nstatic_list = [\"{backend_addr}\"]\n"
        );
        let balancer = start_balancer(&config).await;
        let addr = address(&balancer);
        let client = client().await;
        let reply = ask(&client, addr, "query").await;
        if label == "session" {
            assert_eq!(reply.as_deref(), Some("reply"), "{label}");
        }
        let seen = tokio::time::timeout(REPLY_WAIT, seen_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let mut expected =
            b"\r\n\r\n\0\r\nQUIT\n\x21\x12\x00\x0c\x7f\x00\x00\x01\x7f\x00\x00\x01".to_vec();
        expected.extend_from_slice(&client.local_addr().unwrap().port().to_be_bytes());
        expected.extend_from_slice(&addr.port().to_be_bytes());
        expected.extend_from_slice(b"query");
        assert_eq!(seen, expected, "{label}");
        while seen_rx.try_recv().is_ok() {}
    }
    backend.abort();
}

/// Several requests in flight on one session: the session waits for a reply to each (gobetween
/// ended it at the first reply and lost the others).
#[tokio::test]
async fn max_responses_waits_for_every_request_in_flight() {
    let backend = UdpBackend::start("a", true).await;
    let config = udp_config("", &[&backend], "[servers.dns.udp]\nmax_responses = 1");
    let balancer = start_balancer(&config).await;
    let addr = address(&balancer);
    let socket = client().await;
    for request in 0..20 {
        socket
            .send_to(format!("q{request}").as_bytes(), addr)
            .await
            .unwrap();
    }
    let mut buffer = [0; 100];
    for _ in 0..20 {
        tokio::time::timeout(REPLY_WAIT, socket.recv_from(&mut buffer))
            .await
            .expect("every request in flight is answered")
            .unwrap();
    }
}

#[tokio::test]
async fn max_requests_starts_a_new_session_after_that_many_datagrams() {
    let backends = [
        UdpBackend::start("a", true).await,
        UdpBackend::start("b", true).await,
    ];
    let refs: Vec<&UdpBackend> = backends.iter().collect();
    let config = udp_config(
        "balance = \"roundrobin\"\nclient_idle_timeout = \"200ms\"",
        &refs,
        "[servers.dns.udp]\nmax_requests = 2",
    );
    let balancer = start_balancer(&config).await;
    let addr = address(&balancer);
    let socket = client().await;
    let mut names = Vec::new();
    for request in 0..6 {
        let payload = format!("q{request}");
        names.push(answered_by(
            &ask(&socket, addr, &payload).await.unwrap(),
            &payload,
        ));
    }
    assert!(
        names[0] == names[1] && names[2] == names[3] && names[4] == names[5],
        "two requests per session: {names:?}"
    );
    assert!(names[1] != names[2] && names[3] != names[4], "{names:?}");
    assert_eq!(server_report(&balancer, "dns").total, 3);
}

#[tokio::test]
async fn fire_and_forget_shares_one_socket_per_backend() {
    let backends = [
        UdpBackend::start("a", false).await,
        UdpBackend::start("b", false).await,
    ];
    let refs: Vec<&UdpBackend> = backends.iter().collect();
    let config = udp_config(
        "balance = \"roundrobin\"",
        &refs,
        "[servers.dns.udp]\nmax_requests = 1",
    );
    let balancer = start_balancer(&config).await;
    let addr = address(&balancer);
    let clients: Vec<UdpSocket> = futures_clients(10).await;
    for round in 0..50 {
        for socket in &clients {
            socket
                .send_to(format!("log {round}").as_bytes(), addr)
                .await
                .unwrap();
        }
        tokio::task::yield_now().await;
    }
    eventually("every datagram arrives", || {
        backends.iter().map(UdpBackend::received).sum::<usize>() == 500
    })
    .await;
    for backend in &backends {
        assert_eq!(
            backend.received(),
            250,
            "each datagram is balanced on its own"
        );
        assert_eq!(
            backend.sources().len(),
            1,
            "one socket per backend, not per datagram"
        );
    }
    let report = server_report(&balancer, "dns");
    assert_eq!(report.active, 0, "fire-and-forget opens no session");
    let bytes: usize = (0..50).map(|round| format!("log {round}").len() * 10).sum();
    assert_eq!(report.to_backends, bytes as u64);
}

async fn futures_clients(count: usize) -> Vec<UdpSocket> {
    let mut sockets = Vec::new();
    for _ in 0..count {
        sockets.push(client().await);
    }
    sockets
}

#[tokio::test]
async fn idle_sessions_expire_by_client_idle_timeout() {
    let backend = UdpBackend::start("a", true).await;
    let config = udp_config("client_idle_timeout = \"300ms\"", &[&backend], "");
    let balancer = start_balancer(&config).await;
    let addr = address(&balancer);
    let socket = client().await;
    assert!(ask(&socket, addr, "hello").await.is_some());
    assert_eq!(server_report(&balancer, "dns").active, 1);
    eventually("the idle session ends", || {
        let report = server_report(&balancer, "dns");
        report.active == 0 && report.ended(SessionEnd::IdleTimeout) == 1
    })
    .await;
    assert!(ask(&socket, addr, "again").await.is_some());
    assert_eq!(server_report(&balancer, "dns").total, 2);
}

/// A backend whose port closed answers with ICMP port unreachable: the session on it ends, the
/// backend is marked down (passively, then by the check) and each client loses at most the
/// one query that was on its way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_costs_each_client_at_most_one_query() {
    let backends = [
        UdpBackend::start("a", true).await,
        UdpBackend::start("b", true).await,
    ];
    let refs: Vec<&UdpBackend> = backends.iter().collect();
    let check = "[servers.dns.healthcheck]\nkind = \"probe\"\nprobe_protocol = \"udp\"\n\
                 probe_send = \"ping\"\nprobe_strategy = \"regexp\"\n\
                 probe_recv = \":ping\"\nprobe_recv_len = 6\ninterval = \"300ms\"\n\
                 passive_fails = 1";
    let config = udp_config("balance = \"roundrobin\"", &refs, check);
    let balancer = start_balancer(&config).await;
    let addr = address(&balancer);
    let sockets = futures_clients(6).await;
    for (id, socket) in sockets.iter().enumerate() {
        let payload = format!("warm {id}");
        assert!(ask(socket, addr, &payload).await.is_some());
    }
    backends[1].stop().await;
    let mut lost: HashMap<usize, usize> = HashMap::new();
    for round in 0..10 {
        for (id, socket) in sockets.iter().enumerate() {
            let payload = format!("{id}/{round}");
            match ask(socket, addr, &payload).await {
                Some(reply) => assert_eq!(answered_by(&reply, &payload), "a"),
                None => *lost.entry(id).or_default() += 1,
            }
        }
    }
    assert!(lost.values().all(|&n| n <= 1), "lost per client: {lost:?}");
    let report = server_report(&balancer, "dns");
    let dead = report.backend(&backends[1].addr.to_string()).unwrap();
    assert_eq!(dead.health, Health::Down);
    assert!(
        dead.refused >= 1,
        "the ICMP error counts as a refused connect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_keeps_the_sessions_of_a_retained_server() {
    let backends = [
        UdpBackend::start("a", true).await,
        UdpBackend::start("b", true).await,
        UdpBackend::start("c", true).await,
    ];
    let two: Vec<&UdpBackend> = backends[..2].iter().collect();
    let balancer = start_balancer(&udp_config("balance = \"roundrobin\"", &two, "")).await;
    let addr = address(&balancer);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..8 {
        let stop = stop.clone();
        clients.spawn(async move {
            let socket = client().await;
            let mut names = HashSet::new();
            let mut lost = 0;
            for request in 0..5000 {
                if stop.is_cancelled() && request > 0 {
                    break;
                }
                let payload = format!("{id}/{request}");
                match ask(&socket, addr, &payload).await {
                    Some(reply) => {
                        names.insert(answered_by(&reply, &payload));
                    }
                    None => lost += 1,
                }
            }
            (names, lost)
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for round in 0..3 {
        let set: Vec<&UdpBackend> = if round % 2 == 0 {
            backends.iter().collect()
        } else {
            two.clone()
        };
        let config = udp_config("balance = \"roundrobin\"", &set, "");
        let loaded = betwixt::config::load_str("t.toml", &config, &Default::default()).unwrap();
        balancer.reload(loaded.config).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    while let Some(result) = clients.join_next().await {
        let (names, lost) = result.unwrap();
        assert_eq!(lost, 0, "no request lost across reloads");
        assert_eq!(names.len(), 1, "sessions survive reloads: {names:?}");
    }
    assert_eq!(server_report(&balancer, "dns").total, 8);
    assert_eq!(address(&balancer), addr, "the listener stayed");
}

/// Datagrams from thousands of loopback source addresses (127.0.x.y): the session table stays
/// within `max_connections`, the oldest idle sessions are evicted and counted, and a client that
/// keeps talking keeps its session.
#[tokio::test]
async fn a_spoofed_source_flood_is_bounded_by_the_session_table() {
    let backend = UdpBackend::start("a", true).await;
    let config = udp_config("max_connections = 100", &[&backend], "");
    let balancer = start_balancer(&config).await;
    let addr = address(&balancer);
    let regular = client().await;
    assert!(ask(&regular, addr, "first").await.is_some());
    let mut highest = 0;
    for x in 1..=40u8 {
        for y in 1..=50u8 {
            let source: SocketAddr = format!("127.0.{x}.{y}:0").parse().unwrap();
            let spoofed = std::net::UdpSocket::bind(source).unwrap();
            spoofed.send_to(b"flood", addr).unwrap();
        }
        assert!(ask(&regular, addr, "still here").await.is_some());
        highest = highest.max(server_report(&balancer, "dns").active);
    }
    assert!(
        highest <= 100,
        "at most max_connections sessions: {highest}"
    );
    eventually("2000 flood sessions are evicted or end", || {
        let report = server_report(&balancer, "dns");
        report.ended(SessionEnd::Evicted) >= 1900 && report.active <= 100
    })
    .await;
    let report = server_report(&balancer, "dns");
    assert!(
        report.total <= 2001 + 1,
        "the regular client kept its session: {} sessions",
        report.total
    );
}

#[tokio::test]
async fn access_rules_apply_to_a_sessions_first_datagram() {
    let backend = UdpBackend::start("a", true).await;
    let config = udp_config(
        "",
        &[&backend],
        "[servers.dns.access]\ndefault = \"allow\"\nrules = [\"deny 127.0.0.2\"]",
    );
    let balancer = start_balancer(&config).await;
    let addr = address(&balancer);
    let allowed = client().await;
    assert!(ask(&allowed, addr, "ok").await.is_some());
    let denied = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    denied.send_to(b"no", addr).await.unwrap();
    eventually("the datagram is denied", || {
        server_report(&balancer, "dns").denied == 1
    })
    .await;
    assert_eq!(backend.received(), 1);
}

#[tokio::test]
async fn a_disabled_backend_loses_its_sessions_and_gets_no_new_ones() {
    let backends = [
        UdpBackend::start("a", true).await,
        UdpBackend::start("b", true).await,
    ];
    let refs: Vec<&UdpBackend> = backends.iter().collect();
    let balancer = start_balancer(&udp_config("balance = \"roundrobin\"", &refs, "")).await;
    let addr = address(&balancer);
    let sockets = futures_clients(4).await;
    for socket in &sockets {
        assert!(ask(socket, addr, "x").await.is_some());
    }
    let target = backends[1].addr.to_string();
    balancer
        .set_backend_admin("dns", &target, betwixt::Admin::Disabled)
        .unwrap();
    eventually("the sessions on b end", || {
        server_report(&balancer, "dns")
            .backend(&target)
            .unwrap()
            .active
            == 0
    })
    .await;
    for socket in &sockets {
        assert_eq!(
            answered_by(&ask(socket, addr, "y").await.unwrap(), "y"),
            "a"
        );
    }
    let report = server_report(&balancer, "dns");
    assert_eq!(report.ended(SessionEnd::BackendDisabled), 2);
}

/// A DNS query for `name`, type A, class IN, recursion desired, with `id`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut query = id.to_be_bytes().to_vec();
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

/// The answer's ID and the IPv4 address of its only A record (the last four bytes).
fn dns_answer(reply: &[u8]) -> (u16, std::net::Ipv4Addr) {
    assert!(reply.len() > 16, "a short DNS reply: {reply:?}");
    assert_eq!(reply[3] & 0x0f, 0, "rcode NOERROR");
    assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 1, "one answer");
    let id = u16::from_be_bytes([reply[0], reply[1]]);
    let ip: [u8; 4] = reply[reply.len() - 4..].try_into().unwrap();
    (id, ip.into())
}

/// A dnsmasq answering `m1.test` with `answer`, on `listen:port`; killed on drop.
struct Dnsmasq(std::process::Child);

impl Dnsmasq {
    fn command(listen: &str, port: u16, answer: &str) -> std::process::Command {
        let mut command = std::process::Command::new("dnsmasq");
        command.args([
            "-k",
            "--conf-file=/dev/null",
            &format!("--port={port}"),
            &format!("--listen-address={listen}"),
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--pid-file=",
            &format!("--host-record=m1.test,{answer}"),
        ]);
        command
    }

    /// Starts dnsmasq on a free UDP port and waits until it answers. A port found free can be
    /// taken by another test before dnsmasq binds it (dnsmasq then exits, and whatever holds the
    /// port may answer): only a real DNS answer from a running dnsmasq counts, else another port.
    async fn start(answer: &str) -> (Self, SocketAddr) {
        for _ in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|socket| socket.local_addr())
                .expect("a free UDP port")
                .port();
            let mut dnsmasq = Self(
                Self::command("127.0.0.1", port, answer)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("dnsmasq runs (apt-get install dnsmasq-base; .ci/run installs it)"),
            );
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            if dnsmasq.answers(addr).await {
                return (dnsmasq, addr);
            }
        }
        panic!("dnsmasq does not start on a free port");
    }

    /// Whether this dnsmasq runs and answers a query on `addr` with a DNS answer.
    async fn answers(&mut self, addr: SocketAddr) -> bool {
        let socket = client().await;
        for _ in 0..100 {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return false;
            }
            socket
                .send_to(&dns_query(7, "m1.test"), addr)
                .await
                .unwrap();
            let mut buffer = [0; 512];
            let answered =
                tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buffer)).await;
            if let Ok(Ok(len)) = answered {
                let reply = &buffer[..len];
                // The same ID, QR set (a response, not an echo), NOERROR, one answer.
                return len > 16
                    && reply[..2] == 7u16.to_be_bytes()
                    && reply[2] & 0x80 != 0
                    && reply[3] & 0x0f == 0
                    && reply[6..8] == [0, 1];
            }
        }
        false
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Three dnsmasq backends behind a server configured like gobetween's sample UDP server
/// (`max_responses = 1`): every query is answered, each with its own ID, by all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_queries_through_the_balancer_reach_dnsmasq_backends() {
    let answers = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let mut servers = Vec::new();
    let mut list = Vec::new();
    for answer in answers {
        let (dnsmasq, addr) = Dnsmasq::start(answer).await;
        servers.push(dnsmasq);
        list.push(format!("\"{addr}\""));
    }
    let config = format!(
        "[servers.dns]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\nbalance = \"roundrobin\"\n\
         [servers.dns.udp]\nmax_responses = 1\n\
         [servers.dns.discovery]\nkind = \"static\"\nstatic_list = [{}]\n",
        list.join(", ")
    );
    let balancer = start_balancer(&config).await;
    let addr = address(&balancer);
    let mut clients = tokio::task::JoinSet::new();
    for client_id in 0..10u16 {
        clients.spawn(async move {
            let socket = client().await;
            let mut seen = HashSet::new();
            for query in 0..20u16 {
                let id = client_id * 100 + query;
                socket
                    .send_to(&dns_query(id, "m1.test"), addr)
                    .await
                    .unwrap();
                let mut buffer = [0; 512];
                let len = tokio::time::timeout(REPLY_WAIT, socket.recv(&mut buffer))
                    .await
                    .expect("an answer")
                    .unwrap();
                let (answer_id, ip) = dns_answer(&buffer[..len]);
                assert_eq!(answer_id, id, "the answer to this client's query");
                seen.insert(ip);
            }
            seen
        });
    }
    let mut all = HashSet::new();
    while let Some(seen) = clients.join_next().await {
        all.extend(seen.unwrap());
    }
    assert_eq!(all.len(), 3, "every dnsmasq answered: {all:?}");
    let output = tokio::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "m1.test",
            "+short",
            "+time=2",
            "+tries=1",
        ])
        .output()
        .await
        .expect("dig runs (apt-get install bind9-dnsutils; .ci/run installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(answers.contains(&text.trim()), "dig got {text:?}");
    drop(servers);
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .map(|line| line.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn run(args: &[&str]) {
    let status = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|error| panic!("{args:?}: {error}"));
    assert!(status.success(), "{args:?} failed: {status}");
}

/// Network namespaces made by one test, deleted (with their veth pairs) on drop, also when the
/// test fails.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn create(names: &[String]) -> Self {
        let created = Self(Vec::new());
        let mut created = created;
        for name in names {
            run(&["ip", "netns", "add", name]);
            created.0.push(name.clone());
            run(&["ip", "-n", name, "link", "set", "lo", "up"]);
        }
        created
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .status();
        }
    }
}

/// A veth pair from `a` (address `a_ip/24`) to `b` (`b_ip/24`).
fn link(a: &str, a_dev: &str, a_ip: &str, b: &str, b_dev: &str, b_ip: &str) {
    run(&[
        "ip", "-n", a, "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b,
    ]);
    run(&[
        "ip",
        "-n",
        a,
        "addr",
        "add",
        &format!("{a_ip}/24"),
        "dev",
        a_dev,
    ]);
    run(&[
        "ip",
        "-n",
        b,
        "addr",
        "add",
        &format!("{b_ip}/24"),
        "dev",
        b_dev,
    ]);
    run(&["ip", "-n", a, "link", "set", a_dev, "up"]);
    run(&["ip", "-n", b, "link", "set", b_dev, "up"]);
}

/// A client, a balancer and a DNS backend in three namespaces; the backend's default route
/// is the balancer, which delivers the backend's replies to its transparent sockets. The
/// backend must see the client's own address, and the client must get its answer from the
/// balancer's address. Needs root (CI runs as root); skipped otherwise.
#[tokio::test]
async fn transparent_mode_shows_the_client_address_to_the_backend() {
    if !is_root() {
        eprintln!("skipped: transparent mode needs root to create network namespaces");
        return;
    }
    let tag = std::process::id();
    let [client_ns, lb_ns, backend_ns] = ["cl", "lb", "be"].map(|role| format!("bwx-{role}-{tag}"));
    let _namespaces = Namespaces::create(&[client_ns.clone(), lb_ns.clone(), backend_ns.clone()]);
    link(&client_ns, "c0", "10.199.1.2", &lb_ns, "l0", "10.199.1.1");
    link(&lb_ns, "l1", "10.199.2.1", &backend_ns, "b0", "10.199.2.2");
    run(&[
        "ip",
        "-n",
        &backend_ns,
        "route",
        "add",
        "default",
        "via",
        "10.199.2.1",
    ]);
    // Replies from the backend are for the client's address: deliver them locally, where the
    // transparent socket bound to that address waits.
    run(&[
        "ip", "-n", &lb_ns, "rule", "add", "iif", "l1", "lookup", "100",
    ]);
    run(&[
        "ip",
        "-n",
        &lb_ns,
        "route",
        "add",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        "100",
    ]);

    let scratch = crate::util::Scratch::new("transparent");
    let log = scratch.0.join("dnsmasq.log");
    let mut backend = Dnsmasq::command("10.199.2.2", 53, "10.0.0.9");
    backend.args([
        "--log-queries",
        &format!("--log-facility={}", log.display()),
    ]);
    let mut ns_backend = std::process::Command::new("ip");
    ns_backend
        .args(["netns", "exec", &backend_ns])
        .arg(backend.get_program())
        .args(backend.get_args())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _backend = Dnsmasq(ns_backend.spawn().expect("dnsmasq runs"));

    let config = scratch.file(
        "betwixt.toml",
        "[servers.dns]\nbind = \"10.199.1.1:5353\"\nprotocol = \"udp\"\n\
         [servers.dns.udp]\ntransparent = true\nmax_responses = 1\n\
         [servers.dns.discovery]\nkind = \"static\"\nstatic_list = [\"10.199.2.2:53\"]\n",
    );
    let balancer = std::process::Command::new("ip")
        .args(["netns", "exec", &lb_ns, crate::util::BINARY, "-c"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("betwixt starts");
    let _balancer = Dnsmasq(balancer);

    let mut answer = String::new();
    for _ in 0..50 {
        let output = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &client_ns,
                "dig",
                "@10.199.1.1",
                "-p",
                "5353",
            ])
            .args(["m1.test", "+short", "+time=1", "+tries=1"])
            .output()
            .expect("dig runs");
        answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if answer == "10.0.0.9" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        answer, "10.0.0.9",
        "the client gets its answer through the balancer"
    );
    let queries = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        queries.contains("from 10.199.1.2"),
        "the backend saw the client's address:\n{queries}"
    );
    assert!(!queries.contains("from 10.199.2.1"), "{queries}");
}

/// Without CAP_NET_ADMIN (or CAP_NET_RAW, which the kernel also accepts for IP_TRANSPARENT), a
/// transparent server does not start, and says which key needs it.
#[tokio::test]
async fn transparent_mode_without_the_capability_names_the_key() {
    if !is_root() {
        eprintln!("skipped: dropping a capability needs root to have it first");
        return;
    }
    let scratch = crate::util::Scratch::new("transparent-cap");
    let config = scratch.file(
        "betwixt.toml",
        "[servers.dns]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\n\
         [servers.dns.udp]\ntransparent = true\n\
         [servers.dns.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:53\"]\n",
    );
    let output = tokio::process::Command::new("setpriv")
        .args(["--bounding-set", "-net_admin,-net_raw"])
        .args(["--inh-caps", "-net_admin,-net_raw", "--"])
        .arg(crate::util::BINARY)
        .arg("-c")
        .arg(&config)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(crate::util::PATIENCE, output)
        .await
        .expect("betwixt exits")
        .expect("setpriv runs (util-linux)");
    // The error is logged, and the log goes to stdout by default.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "started without the capability");
    assert!(
        said.contains("servers.dns.udp.transparent") && said.contains("CAP_NET_ADMIN"),
        "{said}"
    );
}

/// A UDP server added through the REST API serves at once; its stats and gobetween's metrics
/// count its sessions and bytes like a TCP server's.
#[tokio::test]
async fn a_udp_server_posted_to_the_api_serves_and_reports_stats() {
    use crate::api::{Balancer, ENDPOINTS};
    use hyper::Method;
    let backend = UdpBackend::start("a", true).await;
    let lb = Balancer::start(&format!("{ENDPOINTS}\n{}", udp_config("", &[&backend], ""))).await;
    let body = format!(
        r#"{{"bind": "127.0.0.1:0", "protocol": "udp", "udp": {{"max_responses": 1}},
            "discovery": {{"kind": "static", "static_list": ["{}"]}}}}"#,
        backend.addr
    );
    let reply = lb.call(Method::POST, "/servers/posted", &body).await;
    assert_eq!(reply.status, hyper::StatusCode::OK, "{}", reply.body);
    let socket = client().await;
    let reply = ask(&socket, lb.server("posted"), "hello").await;
    assert_eq!(reply.as_deref(), Some("a:hello"));
    let stats = lb.get_json("/servers/posted/stats").await;
    assert_eq!(stats["tx_total"], 5, "{stats}");
    assert_eq!(stats["rx_total"], 7, "{stats}");
    assert_eq!(
        stats["backends"][0]["stats"]["total_connections"], 1,
        "{stats}"
    );
    let metrics = lb.scrape().await;
    let labels = [("server", "posted")];
    assert_eq!(metrics.value("gobetween_server_tx_total", &labels), 5.0);
    assert_eq!(
        metrics.value("betwixt_server_datagrams_dropped_total", &labels),
        0.0
    );
}
