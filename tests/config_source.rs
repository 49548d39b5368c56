//! `from-url` and `from-consul`: the daemon started from a configuration fetched over HTTP
//! (from the same real HTTP server the plaintext and json discovery tests use) or from a
//! Consul key (the Consul stand-in of the unit tests), re-fetched on SIGHUP; a fetch or a
//! config that fails keeps the running one and the log names the URL and the key at fault.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use hyper::Method;
use hyper::header::HeaderMap;

use crate::api::request;
use crate::discovery::Bodies;
use crate::responder::FakeConsul;
use crate::util::*;

/// A betwixt process started with `args`, its standard error in a file; killed on drop.
struct Fetching {
    child: Child,
    log: PathBuf,
    _scratch: Scratch,
}

impl Fetching {
    fn spawn(test: &str, args: &[&str]) -> Self {
        let scratch = Scratch::new(test);
        let log = scratch.0.join("stderr.log");
        let child = Command::new(BINARY)
            .args(args)
            .env_remove("GOBETWEEN")
            .env_remove("RUST_LOG")
            .env_remove("CONSUL_HTTP_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the betwixt binary starts");
        Self {
            child,
            log,
            _scratch: scratch,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn reload(&self) {
        send_signal(self.child.id() as i32, libc::SIGHUP);
    }
}

impl Drop for Fetching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server on `port` in front of `backends`, the API on `api_port`, logs on stderr.
fn config(port: u16, api_port: u16, backends: &[SocketAddr], balance: &str) -> String {
    let list: Vec<String> = backends.iter().map(|addr| format!("\"{addr}\"")).collect();
    format!(
        "[logging]\nlevel = \"info\"\noutput = \"stderr\"\n\
         [api]\nenabled = true\nbind = \"127.0.0.1:{api_port}\"\n\
         [servers.k3s]\nbind = \"127.0.0.1:{port}\"\nbalance = \"{balance}\"\n\
         [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [{}]\n",
        list.join(", ")
    )
}

/// The backend names four connections reach.
async fn names(addr: SocketAddr) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(fetch_name(addr).await.unwrap_or_default());
    }
    names.sort();
    names.dedup();
    names
}

/// Whether both `a` and `b` get clients through `addr` within 10 s.
async fn serves_both_soon(addr: SocketAddr) -> bool {
    for _ in 0..100 {
        if serves_both(addr).await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// Whether both `a` and `b` get clients through `addr` now.
async fn serves_both(addr: SocketAddr) -> bool {
    names(addr).await == ["a", "b"]
}

async fn root(api: SocketAddr) -> serde_json::Value {
    let reply = request(api, Method::GET, "/", HeaderMap::new(), "").await;
    reply.json()
}

/// Runs `betwixt check` with `args`: its exit code, and what it printed on both streams.
async fn betwixt_check<const N: usize>(args: [String; N]) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(BINARY)
        .arg("check")
        .args(args)
        .env_remove("GOBETWEEN")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

async fn eventually_logged(daemon: &Fetching, what: &str, count: usize) -> String {
    eventually(what, || {
        daemon.log().matches("reload refused").count() >= count
    })
    .await;
    daemon.log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_url_serves_the_fetched_config_and_sighup_fetches_it_again() {
    let (a, b) = (name_backend("a").await, name_backend("b").await);
    let (port, api_port) = (free_port(), free_port());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let bodies = Bodies::default();
    bodies.set(
        "/lb/gobetween.toml",
        &config(port, api_port, &[a.addr], "roundrobin"),
    );
    let http = bodies.serve().await;
    let url = format!("http://{http}/lb/gobetween.toml");
    let daemon = Fetching::spawn("from-url", &["from-url", &url]);
    eventually("the fetched config serves", || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    assert_eq!(fetch_name(addr).await.unwrap(), "a");
    let info = root(api).await;
    assert_eq!(
        info["configuration"],
        serde_json::json!({"kind": "url", "url": url}),
        "GET / reports the source as gobetween does"
    );

    // A changed file is fetched again on SIGHUP: b joins.
    bodies.set(
        "/lb/gobetween.toml",
        &config(port, api_port, &[a.addr, b.addr], "roundrobin"),
    );
    daemon.reload();
    assert!(serves_both_soon(addr).await, "b joined after the reload");

    // A broken config is refused, naming the URL and the key; the old one keeps serving.
    bodies.set(
        "/lb/gobetween.toml",
        &config(port, api_port, &[a.addr], "roundrobbin"),
    );
    daemon.reload();
    let log = eventually_logged(&daemon, "the broken config is refused", 1).await;
    assert!(
        log.contains(&format!("{url}: servers.k3s.balance: ")),
        "the error names the URL and the key:\n{log}"
    );
    assert!(serves_both(addr).await, "still serving the previous config");

    // So is a failed download.
    bodies.remove("/lb/gobetween.toml");
    daemon.reload();
    let log = eventually_logged(&daemon, "the failed download is refused", 2).await;
    assert!(
        log.contains(&format!(
            "{url}: cannot fetch the configuration: answered 404 Not Found"
        )),
        "{log}"
    );
    assert!(serves_both(addr).await, "still serving the previous config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_consul_reads_a_json_config_from_a_key_and_sighup_reads_it_again() {
    let (a, b) = (name_backend("a").await, name_backend("b").await);
    let (port, api_port) = (free_port(), free_port());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let json = |backends: &[SocketAddr]| {
        let list: Vec<String> = backends.iter().map(ToString::to_string).collect();
        serde_json::json!({
            "logging": {"level": "info", "output": "stderr"},
            "api": {"enabled": true, "bind": format!("127.0.0.1:{api_port}")},
            "servers": {"k3s": {
                "bind": format!("127.0.0.1:{port}"),
                "balance": "roundrobin",
                "discovery": {"kind": "static", "static_list": list},
            }},
        })
        .to_string()
    };
    let (consul, responder) = FakeConsul::start().await;
    consul.set_key("lb/gobetween", &json(&[a.addr]));
    let host = responder.authority();
    let daemon = Fetching::spawn(
        "from-consul",
        &["from-consul", &host, "-k", "lb/gobetween", "-f", "json"],
    );
    eventually("the config from Consul serves", || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    assert_eq!(fetch_name(addr).await.unwrap(), "a");
    assert_eq!(
        root(api).await["configuration"],
        serde_json::json!({"kind": "consul", "host": host, "key": "lb/gobetween"})
    );
    let asked = responder.requests();
    assert_eq!(asked[0].target, "/v1/kv/lb/gobetween");

    consul.set_key("lb/gobetween", &json(&[a.addr, b.addr]));
    daemon.reload();
    assert!(serves_both_soon(addr).await, "b joined after the reload");

    consul.set_key("lb/gobetween", "{\"servers\": ");
    daemon.reload();
    let log = eventually_logged(&daemon, "the broken value is refused", 1).await;
    assert!(
        log.contains(&format!("http://{host}/v1/kv/lb/gobetween: ")),
        "the error names Consul and the key:\n{log}"
    );
    assert!(serves_both(addr).await, "still serving the previous config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_validates_a_config_from_consul() {
    let (consul, responder) = FakeConsul::start().await;
    consul.set_key(
        "lb/good",
        &config(free_port(), free_port(), &[], "roundrobin"),
    );
    consul.set_key(
        "lb/bad",
        &config(free_port(), free_port(), &[], "roundrobbin"),
    );
    let host = responder.authority();
    let check = |key: &str| betwixt_check(["--consul", &host, "-k", key].map(str::to_owned));
    let (code, text) = check("lb/good").await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("configuration is valid"), "{text}");
    let (code, text) = check("lb/bad").await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "http://{host}/v1/kv/lb/bad: servers.k3s.balance: "
        )),
        "{text}"
    );
    assert_eq!(responder.requests()[0].target, "/v1/kv/lb/good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_validates_a_config_from_a_url() {
    let bodies = Bodies::default();
    bodies.set(
        "/good.toml",
        &config(free_port(), free_port(), &[], "roundrobin"),
    );
    bodies.set(
        "/bad.toml",
        &config(free_port(), free_port(), &[], "roundrobbin"),
    );
    let http = bodies.serve().await;
    let check = |path: &str| {
        let url = format!("http://{http}{path}");
        let checked = betwixt_check(["--url".to_owned(), url.clone()]);
        async move {
            let (code, text) = checked.await;
            (code, text, url)
        }
    };
    let (code, text, url) = check("/good.toml").await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("{url}: configuration is valid")),
        "{text}"
    );
    let (code, text, url) = check("/bad.toml").await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("{url}: servers.k3s.balance: ")),
        "{text}"
    );
    let (code, text, url) = check("/missing.toml").await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "{url}: cannot fetch the configuration: answered 404"
        )),
        "{text}"
    );
}
