//! The status page in a real browser: headless Chromium loads `GET /`, runs the page's script
//! against the live API, and the test reads the DOM it built while a backend goes down and
//! comes back. A screenshot is left at `target/status-page.png`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use betwixt::Health;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::Balancer;
use crate::util::*;

/// The API without basic auth (a headless browser has no one to type a password), on an
/// ephemeral loopback port.
const OPEN_API: &str = "[api]\nenabled = true\nbind = \"127.0.0.1:0\"\n";

/// Where the screenshot is kept, for a person to look at after the run.
fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png")
}

/// Answers `name\n`, then echoes until the client closes.
async fn backend_on(addr: SocketAddr) -> TestBackend {
    spawn_backend_on(addr, |mut stream| async move {
        if stream.write_all(b"page\n").await.is_err() {
            return;
        }
        let mut buffer = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buffer).await {
            if n == 0 || stream.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// Whether Debian's `chromium` can be run here.
fn chromium_installed() -> bool {
    std::process::Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Runs headless Chromium on `url` with `args` (what to produce) and returns its stdout. Each
/// run gets a fresh profile, so nothing is cached between loads.
async fn chromium(url: &str, args: &[&str]) -> String {
    let profile = Scratch::new("chromium-profile");
    let mut command = tokio::process::Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("chromium finishes within 90 s")
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The DOM after the page's script ran.
async fn dom(url: &str) -> String {
    chromium(url, &["--dump-dom"]).await
}

async fn wait_health(balancer: &Balancer, addr: SocketAddr, health: Health) {
    eventually(&format!("{addr} {health:?}"), || {
        backend_report(&balancer.balancer, "k3s", addr).health == health
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sees_a_backend_go_down_and_come_back() {
    if !chromium_installed() {
        eprintln!("skipped: chromium is not installed (apt-get install chromium; CI does)");
        return;
    }
    let steady = backend_on("127.0.0.1:0".parse().unwrap()).await;
    let flaky = backend_on("127.0.0.1:0".parse().unwrap()).await;
    let addr = flaky.addr;
    let config = server_config(
        "k3s",
        "",
        &[steady.addr, addr],
        "[servers.k3s.healthcheck]\nkind = \"ping\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\n\
         fails = 1\npasses = 1\n",
    );
    let balancer = Balancer::start(&format!("{config}{OPEN_API}")).await;
    let url = format!("http://{}/", balancer.api());
    wait_health(&balancer, addr, Health::Up).await;
    // Some traffic, so the graph has something to draw.
    for _ in 0..4 {
        assert_eq!(fetch_name(balancer.server("k3s")).await.unwrap(), "page");
    }

    let up = format!("data-backend=\"{addr}\" data-state=\"up\"");
    let down = format!("data-backend=\"{addr}\" data-state=\"down\"");
    let went_down = format!("data-transition=\"down\" data-backend=\"{addr}\"");
    let came_back = format!("data-transition=\"up\" data-backend=\"{addr}\"");

    let page = dom(&url).await;
    assert!(
        page.contains("data-server=\"k3s\""),
        "no server k3s:\n{page}"
    );
    assert!(page.contains(&up), "{addr} not shown up:\n{page}");
    let steady_up = format!("data-backend=\"{}\" data-state=\"up\"", steady.addr);
    assert!(
        page.contains(&steady_up),
        "{} not shown up:\n{page}",
        steady.addr
    );
    assert!(page.contains("<svg"), "no throughput graph:\n{page}");
    assert!(
        page.contains("data-node=\"serving\""),
        "no node state:\n{page}"
    );
    assert!(
        !page.contains(&went_down),
        "a transition before any:\n{page}"
    );

    flaky.stop();
    drop(flaky);
    wait_health(&balancer, addr, Health::Down).await;
    let page = dom(&url).await;
    assert!(page.contains(&down), "{addr} not shown down:\n{page}");
    assert!(page.contains(&went_down), "no down transition:\n{page}");

    let _back = backend_on(addr).await;
    wait_health(&balancer, addr, Health::Up).await;
    let page = dom(&url).await;
    assert!(page.contains(&up), "{addr} not shown up again:\n{page}");
    assert!(page.contains(&came_back), "no up transition:\n{page}");
    assert!(
        page.contains(&went_down),
        "the down transition is gone:\n{page}"
    );

    let screenshot = screenshot_path();
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &url,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1200,800",
        ],
    )
    .await;
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG"),
        "not a PNG: {}",
        screenshot.display()
    );
    eprintln!("status page screenshot: {}", screenshot.display());
}

/// The page is behind basic auth like the rest of the API, and only a client asking for HTML
/// gets it: gobetween's clients keep their JSON.
#[tokio::test]
async fn the_page_is_for_browsers_and_behind_basic_auth() {
    use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
    use hyper::{Method, StatusCode};

    use crate::api::{ENDPOINTS, LOGIN, PASSWORD, basic, request};

    let backend = backend_on("127.0.0.1:0".parse().unwrap()).await;
    let config = server_config("k3s", "", &[backend.addr], "");
    let lb = Balancer::start(&format!("{config}{ENDPOINTS}")).await;
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let headers = |accept: Option<&'static str>, login: bool| {
        let mut headers = HeaderMap::new();
        if let Some(accept) = accept {
            headers.insert(ACCEPT, HeaderValue::from_static(accept));
        }
        if login {
            headers.insert(AUTHORIZATION, basic(LOGIN, PASSWORD));
        }
        headers
    };

    for path in ["/", "/status.json"] {
        let reply = request(
            lb.api(),
            Method::GET,
            path,
            headers(Some(browser), false),
            "",
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let page = request(lb.api(), Method::GET, "/", headers(Some(browser), true), "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers[CONTENT_TYPE], "text/html; charset=utf-8");
    assert!(page.headers.contains_key("content-security-policy"));
    assert!(page.body.contains("<script>"), "{}", page.body);
    for accept in [None, Some("*/*"), Some("application/json")] {
        let reply = request(lb.api(), Method::GET, "/", headers(accept, true), "").await;
        assert_eq!(reply.status, StatusCode::OK, "{accept:?}");
        assert!(reply.json()["pid"].is_u64(), "{accept:?}: {}", reply.body);
        assert_eq!(reply.headers["vary"], "Accept", "{accept:?}");
    }
    let status = request(
        lb.api(),
        Method::GET,
        "/status.json",
        headers(None, true),
        "",
    )
    .await;
    let status = status.json();
    assert_eq!(status["servers"], serde_json::json!(["k3s"]));
    assert_eq!(status["node"], "serving");
    assert!(status["transitions"].is_array(), "{status}");
}
