//! Dynamic discovery end to end: real backends behind a running balancer whose lists come from
//! a command the test rewrites, an HTTP server of the test's own (plaintext, json), a real
//! dnsmasq (srv, over UDP and TCP), and the Consul stand-in (consul, by blocking queries).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use betwixt::{Health, LoadBalancer, SessionEnd};
use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::api::{Balancer, ENDPOINTS};
use crate::util::*;

/// A backend list served by a shell script the test rewrites: `list` holds the lines, while
/// `fail` exists the script exits 1, and while `hang` exists it sleeps past any timeout. Each
/// run adds a line to `runs`.
pub(crate) struct ListSource {
    scratch: Scratch,
}

impl ListSource {
    pub(crate) fn new(test: &str, backends: &[SocketAddr]) -> Self {
        let scratch = Scratch::new(test);
        let dir = scratch.0.display().to_string();
        scratch.file(
            "list.sh",
            &format!(
                "#!/bin/sh\necho run >> {dir}/runs\n\
                 [ -e {dir}/fail ] && {{ echo 'source down' >&2; exit 1; }}\n\
                 [ -e {dir}/hang ] && exec sleep 30\ncat {dir}/list\n"
            ),
        );
        let source = Self { scratch };
        source.set(backends);
        source
    }

    /// Replaces the list in one rename, so the script never reads half a file.
    pub(crate) fn set(&self, backends: &[SocketAddr]) {
        let lines: String = backends.iter().map(|addr| format!("{addr}\n")).collect();
        let next = self.scratch.file("list.next", &lines);
        std::fs::rename(next, self.scratch.0.join("list")).unwrap();
    }

    pub(crate) fn fail(&self, failing: bool) {
        self.flag("fail", failing);
    }

    pub(crate) fn hang(&self, hanging: bool) {
        self.flag("hang", hanging);
    }

    fn flag(&self, name: &str, on: bool) {
        let flag = self.scratch.0.join(name);
        if on {
            std::fs::write(flag, "").unwrap();
        } else {
            std::fs::remove_file(flag).unwrap();
        }
    }

    /// How many times the script ran.
    pub(crate) fn runs(&self) -> usize {
        std::fs::read_to_string(self.scratch.0.join("runs")).map_or(0, |runs| runs.lines().count())
    }

    pub(crate) fn command(&self) -> String {
        format!("[\"sh\", \"{}\"]", self.scratch.0.join("list.sh").display())
    }
}

/// `[servers.NAME]` whose backends the exec `command` prints.
pub(crate) fn exec_server(
    name: &str,
    command: &str,
    server_keys: &str,
    discovery_keys: &str,
) -> String {
    format!(
        "[servers.{name}]\nbind = \"127.0.0.1:0\"\n{server_keys}\n\
         [servers.{name}.discovery]\nkind = \"exec\"\nexec_command = {command}\n{discovery_keys}\n"
    )
}

/// A ping check every 30 s: longer than [`PATIENCE`], so a backend is up in time only if its
/// first check runs as soon as it is discovered.
pub(crate) fn slow_ping(name: &str) -> String {
    format!("[servers.{name}.healthcheck]\nkind = \"ping\"\ninterval = \"30s\"\ntimeout = \"2s\"\n")
}

pub(crate) fn targets(balancer: &LoadBalancer, server: &str) -> Vec<String> {
    let mut targets: Vec<String> = server_report(balancer, server)
        .backends
        .iter()
        .map(|backend| backend.target.clone())
        .collect();
    targets.sort();
    targets
}

pub(crate) fn sorted(addrs: &[SocketAddr]) -> Vec<String> {
    let mut targets: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    targets.sort();
    targets
}

pub(crate) fn is_up(balancer: &LoadBalancer, server: &str, target: SocketAddr) -> bool {
    server_report(balancer, server)
        .backend(&target.to_string())
        .is_some_and(|backend| backend.health == Health::Up)
}

/// True when the peer neither closed nor sent anything for 300 ms.
async fn still_open(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte))
        .await
        .is_err()
}

/// A session through `balancer_addr` to the backend named `name`, trying at most 20 times.
async fn session_to(balancer_addr: SocketAddr, name: &str) -> TcpStream {
    for _ in 0..20 {
        let mut stream = TcpStream::connect(balancer_addr).await.unwrap();
        if read_line(&mut stream).await.unwrap() == name {
            return stream;
        }
    }
    panic!("no session reached backend {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_lists_add_checked_backends_and_drain_removed_ones_keeping_retained_sessions() {
    let (a, b) = (name_backend("a").await, name_backend("b").await);
    let source = ListSource::new("discovery-exec", &[a.addr]);
    let config = exec_server(
        "k3s",
        &source.command(),
        "balance = \"roundrobin\"",
        "interval = \"100ms\"",
    ) + &slow_ping("k3s");
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("k3s").unwrap();
    eventually("a is discovered and passes its first check", || {
        is_up(&balancer, "k3s", a.addr)
    })
    .await;
    let mut on_a = session_to(addr, "a").await;
    let a_before = backend_report(&balancer, "k3s", a.addr);

    source.set(&[a.addr, b.addr]);
    eventually("b is discovered and passes its first check", || {
        is_up(&balancer, "k3s", b.addr)
    })
    .await;
    let mut on_b = session_to(addr, "b").await;
    let a_after = backend_report(&balancer, "k3s", a.addr);
    assert!(
        a_after.active >= 1 && a_after.total >= a_before.total,
        "a kept its state: {a_before:?} then {a_after:?}"
    );

    source.set(&[a.addr]);
    eventually("b leaves the server", || {
        targets(&balancer, "k3s") == sorted(&[a.addr])
    })
    .await;
    assert!(
        still_open(&mut on_b).await,
        "the removed backend's session drains"
    );
    assert!(
        still_open(&mut on_a).await,
        "the retained backend's session stays"
    );
    assert_eq!(backend_report(&balancer, "k3s", a.addr).active, 1);
    on_b.write_all(b"still there\n").await.unwrap();

    let report = server_report(&balancer, "k3s");
    let discovery = report
        .discovery
        .clone()
        .expect("a dynamic server reports discovery");
    assert_eq!(discovery.kind, "exec");
    assert!(
        discovery.fetches >= 3 && discovery.failures == 0,
        "{discovery:?}"
    );
    assert!(discovery.last_success.is_some() && discovery.last_error.is_none());
    assert_eq!(report.ended(SessionEnd::BackendRemoved), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backends_sessions_close_when_the_server_asks() {
    let a = name_backend("a").await;
    let source = ListSource::new("discovery-close", &[a.addr]);
    let config = exec_server(
        "k3s",
        &source.command(),
        "close_sessions_on_backend_removal = true",
        "interval = \"100ms\"",
    );
    let balancer = start_balancer(&config).await;
    let addr = balancer.local_addr("k3s").unwrap();
    eventually("a is discovered", || is_up(&balancer, "k3s", a.addr)).await;
    let mut on_a = session_to(addr, "a").await;

    source.set(&[]);
    eventually("a leaves the server", || {
        targets(&balancer, "k3s").is_empty()
    })
    .await;
    assert!(closed_by_peer(&mut on_a).await);
    eventually("the session end is counted", || {
        server_report(&balancer, "k3s").ended(SessionEnd::BackendRemoved) == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_keeps_the_last_list_or_empties_it_per_failpolicy() {
    let a = name_backend("a").await;
    let source = ListSource::new("discovery-failpolicy", &[a.addr]);
    let config = exec_server("keep", &source.command(), "", "interval = \"100ms\"")
        + &exec_server(
            "empty",
            &source.command(),
            "",
            "interval = \"100ms\"\nfailpolicy = \"setempty\"",
        );
    let balancer = start_balancer(&config).await;
    for server in ["keep", "empty"] {
        eventually("a is discovered", || is_up(&balancer, server, a.addr)).await;
    }

    source.fail(true);
    eventually(
        "both servers saw a failed fetch; setempty emptied its own",
        || {
            let failed = |server| {
                server_report(&balancer, server)
                    .discovery
                    .is_some_and(|discovery| discovery.failures >= 1)
            };
            failed("keep") && failed("empty") && targets(&balancer, "empty").is_empty()
        },
    )
    .await;
    let keep = server_report(&balancer, "keep");
    assert_eq!(targets(&balancer, "keep"), sorted(&[a.addr]));
    let discovery = keep.discovery.unwrap();
    assert!(discovery.failures >= 1, "{discovery:?}");
    let reason = discovery.last_error.unwrap_or_default();
    assert!(
        reason.contains("exit status: 1: source down"),
        "the reason names the exit and stderr: {reason}"
    );
    let served = fetch_name(balancer.local_addr("keep").unwrap())
        .await
        .unwrap();
    assert_eq!(served, "a");
    let mut refused = TcpStream::connect(balancer.local_addr("empty").unwrap())
        .await
        .unwrap();
    assert!(
        closed_by_peer(&mut refused).await,
        "no backend, client closed"
    );

    // A failed fetch is retried after 2 s; the next success brings the list back.
    source.fail(false);
    eventually("setempty's server recovers", || {
        is_up(&balancer, "empty", a.addr)
    })
    .await;
    assert!(
        server_report(&balancer, "empty")
            .discovery
            .unwrap()
            .last_error
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_over_its_timeout_fails_and_its_command_is_killed() {
    let scratch = Scratch::new("discovery-timeout");
    let pid_file = scratch.0.join("pid");
    let script = scratch.file(
        "slow.sh",
        &format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 30\n",
            pid_file.display()
        ),
    );
    let command = format!("[\"sh\", \"{}\"]", script.display());
    let config = exec_server("slow", &command, "", "timeout = \"300ms\"");
    let balancer = start_balancer(&config).await;
    eventually("the fetch times out", || {
        server_report(&balancer, "slow")
            .discovery
            .is_some_and(|discovery| discovery.failures >= 1)
    })
    .await;
    let discovery = server_report(&balancer, "slow").discovery.unwrap();
    assert_eq!(
        discovery.last_error.as_deref(),
        Some("timed out after 300ms")
    );
    assert_eq!(discovery.fetches, 0);
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let proc_dir = format!("/proc/{}", pid.trim());
    eventually("the timed-out command is gone", || {
        // A killed child not reaped yet is a zombie: gone in all but name.
        std::fs::read_to_string(format!("{proc_dir}/stat"))
            .map_or(true, |stat| stat.contains(") Z "))
    })
    .await;
}

/// Bodies by path, served with HTTP/1.1 to every GET; 404 for other paths.
#[derive(Clone, Default)]
pub(crate) struct Bodies(Arc<Mutex<Vec<(String, String)>>>);

impl Bodies {
    pub(crate) fn set(&self, path: &str, body: &str) {
        let mut bodies = self.0.lock().unwrap();
        bodies.retain(|(known, _)| known != path);
        bodies.push((path.to_owned(), body.to_owned()));
    }

    fn get(&self, path: &str) -> Option<String> {
        let bodies = self.0.lock().unwrap();
        bodies
            .iter()
            .find(|(known, _)| known == path)
            .map(|(_, body)| body.clone())
    }

    /// Serves 404 for `path` from now on.
    pub(crate) fn remove(&self, path: &str) {
        self.0.lock().unwrap().retain(|(known, _)| known != path);
    }

    /// A real HTTP/1.1 server (hyper's) on a loopback port.
    pub(crate) async fn serve(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let bodies = bodies.clone();
                let service = hyper::service::service_fn(move |request| {
                    let bodies = bodies.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&bodies, &request)) }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        addr
    }
}

fn answer<B>(
    bodies: &Bodies,
    request: &hyper::Request<B>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, body) = match bodies.get(request.uri().path()) {
        Some(body) => (StatusCode::OK, body),
        None => (StatusCode::NOT_FOUND, "404 page not found\n".to_owned()),
    };
    hyper::Response::builder()
        .status(status)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_json_lists_come_from_an_http_server() {
    let (a, b) = (name_backend("a").await, name_backend("b").await);
    let bodies = Bodies::default();
    bodies.set("/list.txt", &format!("{}\n{} weight=2\n", a.addr, b.addr));
    bodies.set(
        "/custom.txt",
        &format!("# masters\nmaster {} {}\n", a.addr.ip(), a.addr.port()),
    );
    let json = |addrs: &[SocketAddr]| {
        let items: Vec<String> = addrs
            .iter()
            .map(|addr| {
                format!(
                    "{{\"node\": {{\"ip\": \"{}\", \"port\": {}}}, \"w\": 3}}",
                    addr.ip(),
                    addr.port()
                )
            })
            .collect();
        format!("[{}]", items.join(", "))
    };
    bodies.set("/list.json", &json(&[a.addr]));
    let http = bodies.serve().await;
    let config = format!(
        "[servers.plain]\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"\n\
         [servers.plain.discovery]\nkind = \"plaintext\"\ninterval = \"100ms\"\n\
         plaintext_endpoint = \"http://{http}/list.txt\"\n\
         [servers.custom]\nbind = \"127.0.0.1:0\"\n\
         [servers.custom.discovery]\nkind = \"plaintext\"\n\
         plaintext_endpoint = \"http://{http}/custom.txt\"\n\
         plaintext_regex_pattern = '^master (?P<host>\\S+) (?P<port>\\d+)$'\n\
         [servers.json]\nbind = \"127.0.0.1:0\"\n\
         [servers.json.discovery]\nkind = \"json\"\ninterval = \"100ms\"\n\
         json_endpoint = \"http://{http}/list.json\"\n\
         json_host_pattern = \"node.ip\"\njson_port_pattern = \"node.port\"\n\
         json_weight_pattern = \"w\"\n\
         [servers.missing]\nbind = \"127.0.0.1:0\"\n\
         [servers.missing.discovery]\nkind = \"json\"\n\
         json_endpoint = \"http://{http}/nothing.json\"\n"
    );
    let balancer = start_balancer(&config).await;
    eventually("every list is applied", || {
        targets(&balancer, "plain") == sorted(&[a.addr, b.addr])
            && targets(&balancer, "custom") == sorted(&[a.addr])
            && targets(&balancer, "json") == sorted(&[a.addr])
    })
    .await;
    let mut names: Vec<String> = Vec::new();
    for _ in 0..3 {
        names.push(
            fetch_name(balancer.local_addr("plain").unwrap())
                .await
                .unwrap(),
        );
    }
    assert!(names.contains(&"b".to_owned()), "b gets clients: {names:?}");

    bodies.set("/list.json", &json(&[b.addr]));
    bodies.set("/list.txt", &format!("{}\n", a.addr));
    eventually("the new lists are applied", || {
        targets(&balancer, "json") == sorted(&[b.addr])
            && targets(&balancer, "plain") == sorted(&[a.addr])
    })
    .await;
    assert_eq!(
        fetch_name(balancer.local_addr("json").unwrap())
            .await
            .unwrap(),
        "b"
    );

    eventually("the 404 is a failed fetch", || {
        server_report(&balancer, "missing")
            .discovery
            .is_some_and(|discovery| discovery.failures >= 1)
    })
    .await;
    let reason = server_report(&balancer, "missing")
        .discovery
        .unwrap()
        .last_error
        .unwrap();
    assert_eq!(
        reason,
        format!("http://{http}/nothing.json: answered 404 Not Found: 404 page not found")
    );
}

/// A dnsmasq answering SRV records for `_api._tcp.test.` (targets `m1.test`, `m2.test`, both
/// 127.0.0.1, at the given ports) on a port free for UDP and TCP; killed on drop. dnsmasq puts
/// a `--host-record` name's address in the additional section, not an `--address` one's.
struct Dnsmasq(std::process::Child);

impl Dnsmasq {
    async fn start(ports: [u16; 2]) -> (Self, SocketAddr) {
        for _ in 0..5 {
            let port = free_udp_and_tcp_port();
            let child = std::process::Command::new("dnsmasq")
                .args([
                    "-k",
                    "--conf-file=/dev/null",
                    &format!("--port={port}"),
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--user=root",
                    "--pid-file=",
                    "--host-record=m1.test,127.0.0.1",
                    // No additional record for m2: its address comes from a second query.
                    "--address=/m2.test/127.0.0.1",
                    &format!("--srv-host=_api._tcp.test,m1.test,{},0,1", ports[0]),
                    &format!("--srv-host=_api._tcp.test,m2.test,{},0,5", ports[1]),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("dnsmasq runs (apt-get install dnsmasq-base; .ci/run installs it)");
            let mut dnsmasq = Self(child);
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            if dnsmasq.listens(addr).await {
                return (dnsmasq, addr);
            }
        }
        panic!("dnsmasq does not start on a free port");
    }

    /// Whether this dnsmasq accepts TCP on `addr` and is still running a moment later (one
    /// that lost the port to another test exits).
    async fn listens(&mut self, addr: SocketAddr) -> bool {
        for _ in 0..50 {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return false;
            }
            if TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return matches!(self.0.try_wait(), Ok(None));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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

/// A port free for both UDP and TCP on 127.0.0.1 a moment ago.
fn free_udp_and_tcp_port() -> u16 {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for UDP and TCP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_from_dnsmasq_over_udp_and_tcp_become_backends() {
    let (a, b) = (name_backend("a").await, name_backend("b").await);
    let (_dnsmasq, dns) = Dnsmasq::start([a.addr.port(), b.addr.port()]).await;
    let server = |name: &str, protocol: &str| {
        format!(
            "[servers.{name}]\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"\n\
             [servers.{name}.discovery]\nkind = \"srv\"\nsrv_lookup_server = \"{dns}\"\n\
             srv_lookup_pattern = \"_api._tcp.test.\"\nsrv_dns_protocol = \"{protocol}\"\n\
             interval = \"1s\"\n"
        )
    };
    let config = server("udp", "udp") + &server("tcp", "tcp") + ENDPOINTS;
    let lb = Balancer::start(&config).await;
    let balancer = &lb.balancer;
    for name in ["udp", "tcp"] {
        eventually("both SRV targets are backends", || {
            targets(balancer, name) == sorted(&[a.addr, b.addr])
        })
        .await;
        let addr = balancer.local_addr(name).unwrap();
        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(fetch_name(addr).await.unwrap());
        }
        names.sort();
        names.dedup();
        assert_eq!(names, ["a", "b"], "both serve through {name}");
    }
    let report = server_report(balancer, "tcp");
    assert_eq!(report.discovery.unwrap().failures, 0);
    // Each record's weight, priority and target name (as sni) make the backend.
    let stats = lb.get_json("/servers/udp/stats").await;
    let mut shown: Vec<(String, u64, u64, String)> = stats["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|backend| {
            (
                backend["port"].as_str().unwrap().to_owned(),
                backend["weight"].as_u64().unwrap(),
                backend["priority"].as_u64().unwrap(),
                backend["sni"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    shown.sort();
    let mut expected = vec![
        (a.addr.port().to_string(), 1, 0, "m1.test".to_owned()),
        (b.addr.port().to_string(), 5, 0, "m2.test".to_owned()),
    ];
    expected.sort();
    assert_eq!(shown, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_discovered_list_until_the_source_reports_again() {
    let a = name_backend("a").await;
    let source = ListSource::new("discovery-reload", &[a.addr]);
    // Fetched once (no interval): only a reload that restarts the task fetches again.
    let config = |discovery_keys: &str| {
        let text = exec_server("k3s", &source.command(), "", discovery_keys);
        betwixt::config::load_str("test.toml", &text, &Default::default())
            .unwrap()
            .config
    };
    let balancer = LoadBalancer::start(config("")).await.unwrap();
    eventually("a is discovered", || is_up(&balancer, "k3s", a.addr)).await;
    let mut on_a = session_to(balancer.local_addr("k3s").unwrap(), "a").await;

    source.fail(true);
    // The same [discovery] table: the task is kept and the list stays.
    balancer.reload(config("")).await.unwrap();
    assert_eq!(targets(&balancer, "k3s"), sorted(&[a.addr]));
    // A changed table restarts the task; its fetches fail, and keeplast keeps the list the
    // reload carried over.
    balancer.reload(config("timeout = \"2s\"")).await.unwrap();
    eventually("the restarted task fails a fetch", || {
        server_report(&balancer, "k3s")
            .discovery
            .is_some_and(|discovery| discovery.failures >= 1)
    })
    .await;
    assert_eq!(targets(&balancer, "k3s"), sorted(&[a.addr]));
    assert!(still_open(&mut on_a).await);
    assert_eq!(
        fetch_name(balancer.local_addr("k3s").unwrap())
            .await
            .unwrap(),
        "a"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_posted_with_discovery_serves_and_shows_in_stats_and_metrics() {
    let a = name_backend("a").await;
    let bodies = Bodies::default();
    bodies.set("/list.txt", &format!("{}\n", a.addr));
    let http = bodies.serve().await;
    let lb = Balancer::start(ENDPOINTS).await;
    let posted = format!(
        "{{\"bind\": \"127.0.0.1:0\", \"discovery\": {{\"kind\": \"plaintext\", \
         \"plaintext_endpoint\": \"http://{http}/list.txt\", \"interval\": \"1s\"}}}}"
    );
    let reply = lb.call(Method::POST, "/servers/dyn", &posted).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    eventually("the posted server discovers a", || {
        is_up(&lb.balancer, "dyn", a.addr)
    })
    .await;
    assert_eq!(fetch_name(lb.server("dyn")).await.unwrap(), "a");

    let stats = lb.get_json("/servers/dyn/stats").await;
    assert_eq!(stats["backends"][0]["host"], a.addr.ip().to_string());
    assert_eq!(stats["backends"][0]["stats"]["total_connections"], 1);
    let metrics = lb.scrape().await;
    let labels = [("server", "dyn"), ("kind", "plaintext"), ("result", "ok")];
    assert!(metrics.value("betwixt_discovery_fetches_total", &labels) >= 1.0);
    assert!(
        metrics.value(
            "betwixt_discovery_last_success_timestamp_seconds",
            &[("server", "dyn"), ("kind", "plaintext")]
        ) > 0.0
    );
    let status = lb.get_json("/status.json").await;
    assert!(
        status["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|name| name == "dyn"),
        "{status}"
    );
    let port = a.addr.port().to_string();
    let host = a.addr.ip().to_string();
    let backend = [
        ("server", "dyn"),
        ("host", host.as_str()),
        ("port", port.as_str()),
    ];
    assert_eq!(metrics.value("gobetween_backend_live", &backend), 1.0);
}

/// Consul with an interval is watched by blocking queries: a change in the catalog reaches
/// the pool as soon as Consul answers the held query, long before the 30 s interval (the
/// patience of `eventually` is shorter than what polling would take), and while nothing
/// changes the source costs one held query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consul_change_reaches_the_pool_long_before_the_interval() {
    let (a, b) = (name_backend("a").await, name_backend("b").await);
    let (consul, responder) = crate::responder::FakeConsul::start().await;
    consul.set_service("kube-api", &[a.addr]);
    let config = format!(
        "[servers.k3s]\nbind = \"127.0.0.1:0\"\n\
         [servers.k3s.discovery]\nkind = \"consul\"\ninterval = \"30s\"\n\
         consul_host = \"{}\"\nconsul_service_name = \"kube-api\"\n",
        responder.authority()
    );
    let balancer = start_balancer(&config).await;
    eventually("a is discovered", || {
        targets(&balancer, "k3s") == sorted(&[a.addr])
    })
    .await;
    // The next query waits out the 1 s pause, then Consul holds it.
    eventually("the blocking query is sent", || {
        responder.requests().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = responder.requests();
    assert_eq!(
        asked.len(),
        2,
        "one held query while nothing changes: {asked:?}"
    );
    assert!(
        asked[1].target.contains("index=") && asked[1].target.contains("wait=30000ms"),
        "{}",
        asked[1].target
    );

    consul.set_service("kube-api", &[a.addr, b.addr]);
    eventually("the change reaches the pool before the interval", || {
        targets(&balancer, "k3s") == sorted(&[a.addr, b.addr])
    })
    .await;
    let discovery = server_report(&balancer, "k3s").discovery.unwrap();
    assert_eq!(discovery.failures, 0, "{discovery:?}");
}

/// A source failing for many retries logs its failure once and its recovery once per server;
/// setempty's server logs each list it applies (emptied, restored) once, keeplast's nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_logs_its_failure_once_and_its_recovery_once() {
    let a = name_backend("a").await;
    let source = ListSource::new("discovery-log-once", &[a.addr]);
    let scratch = Scratch::new("discovery-log-once-daemon");
    let log = scratch.0.join("betwixt.log");
    let bind = |server: &str| server.replace("127.0.0.1:0", &format!("127.0.0.1:{}", free_port()));
    let config = format!(
        "[logging]\nlevel = \"info\"\noutput = \"{}\"\n{}{}",
        log.display(),
        bind(&exec_server(
            "keep",
            &source.command(),
            "",
            "interval = \"100ms\""
        )),
        bind(&exec_server(
            "empty",
            &source.command(),
            "",
            "interval = \"100ms\"\nfailpolicy = \"setempty\""
        )),
    );
    let _daemon = Daemon::spawn_in(scratch, &config, &[], &[]);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let lines = |text: &str, server: &str| {
        read()
            .lines()
            .filter(|line| {
                line.contains(text)
                    && (line.contains(&format!("server={server}"))
                        || line.contains(&format!("server=\"{server}\"")))
            })
            .count()
    };
    eventually("both lists are applied", || {
        lines("discovered backend list applied", "keep") == 1
            && lines("discovered backend list applied", "empty") == 1
    })
    .await;

    source.fail(true);
    let runs = source.runs();
    // Failures are retried every 2 s: 5 runs of two sources are two or three retries each.
    eventually("the failing source is retried several times", || {
        source.runs() >= runs + 6
    })
    .await;
    source.fail(false);
    eventually("both sources recover", || {
        lines("discovery fetch succeeded again", "keep") >= 1
            && lines("discovery fetch succeeded again", "empty") >= 1
            && lines("discovered backend list applied", "empty") >= 3
    })
    .await;
    let runs = source.runs();
    eventually("a few more successful fetches", || {
        source.runs() >= runs + 10
    })
    .await;

    let text = read();
    for server in ["keep", "empty"] {
        assert_eq!(
            lines("discovery fetch failed", server),
            1,
            "{server}:\n{text}"
        );
        assert_eq!(
            lines("discovery fetch succeeded again", server),
            1,
            "{server}:\n{text}"
        );
    }
    assert_eq!(
        lines("discovered backend list applied", "keep"),
        1,
        "{text}"
    );
    assert_eq!(
        lines("discovered backend list applied", "empty"),
        3,
        "applied, emptied, restored:\n{text}"
    );
}
