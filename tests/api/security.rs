//! The API is no remote shell and no browser's toy: exec checks only with `allow_exec`, the
//! `Host` guard against DNS rebinding, JSON for changes, CORS limits, `/dump` without secrets
//! by default, and idle connections that cannot lock operators out.

use hyper::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN, AUTHORIZATION, CONTENT_TYPE,
    HOST, HeaderMap, HeaderValue, ORIGIN,
};
use hyper::{Method, StatusCode};
use serde_json::Value;

use super::*;

fn k3s(extra_api: &str) -> String {
    let api = ENDPOINTS.replace(
        "[api.basic_auth]",
        &format!("{extra_api}\n[api.basic_auth]"),
    );
    let server = server_config("k3s", "", &["127.0.0.1:1".parse().unwrap()], "");
    format!("{api}{server}")
}

/// A server posted with `healthcheck` and `discovery` tables as given.
fn with_tables(healthcheck: &str, discovery: &str) -> String {
    format!(r#"{{"bind": "127.0.0.1:0", "discovery": {discovery}, "healthcheck": {healthcheck}}}"#)
}

const STATIC: &str = r#"{"kind": "static", "static_list": ["127.0.0.1:1"]}"#;
const EXEC_CHECK: &str = r#"{"kind": "exec", "interval": "1h", "exec_command": "/bin/true"}"#;

/// Headers of an authenticated request with `host` as its `Host`.
fn authenticated_with_host(host: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, basic(LOGIN, PASSWORD));
    headers.insert(HOST, HeaderValue::from_str(host).unwrap());
    headers
}

#[tokio::test]
async fn posted_exec_checks_are_refused_unless_the_file_allows_them() {
    let lb = Balancer::start(&k3s("")).await;
    let exec_discovery = r#"{"kind": "exec", "exec_command": ["/bin/true"]}"#;
    for (body, key) in [
        (with_tables(EXEC_CHECK, STATIC), "healthcheck.kind"),
        (
            with_tables(r#"{"kind": " EXEC "}"#, STATIC),
            "healthcheck.kind",
        ),
        (
            with_tables(r#"{"kind": "ping"}"#, exec_discovery),
            "discovery.kind",
        ),
    ] {
        let reply = lb.call(Method::POST, "/servers/shell", &body).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{body}: {}",
            reply.body
        );
        let message = reply.json().as_str().unwrap().to_owned();
        assert!(message.contains("[api] allow_exec = true"), "{message}");
        assert!(
            message.contains(&format!("servers.shell.{key}")),
            "{message}"
        );
        assert_eq!(lb.get_json("/servers/shell").await, Value::Null);
    }

    let allowed = Balancer::start(&k3s("allow_exec = true")).await;
    let reply = allowed
        .call(
            Method::POST,
            "/servers/shell",
            &with_tables(EXEC_CHECK, STATIC),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let shown = allowed.get_json("/servers/shell").await;
    assert_eq!(shown["healthcheck"]["kind"], "exec");
}

#[tokio::test]
async fn a_loopback_api_answers_only_to_addresses_and_localhost() {
    let lb = Balancer::start(&k3s("")).await;
    let port = lb.api().port();
    let refused = ["evil.example", "rebound.attacker.test", "127.0.0.1.nip.io"];
    for host in refused {
        let headers = authenticated_with_host(&format!("{host}:{port}"));
        let reply = request(lb.api(), Method::GET, "/servers", headers, "").await;
        assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert!(reply.body.contains(host), "{}", reply.body);
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "127.0.0.1".to_owned(),
        format!("[::1]:{port}"),
    ] {
        let headers = authenticated_with_host(&host);
        let reply = request(lb.api(), Method::GET, "/servers", headers, "").await;
        assert_eq!(reply.status, StatusCode::OK, "{host}: {}", reply.body);
    }
    // `/ping` tells nothing and changes nothing: any Host.
    let mut headers = HeaderMap::new();
    headers.insert(HOST, HeaderValue::from_static("evil.example:8888"));
    let reply = request(lb.api(), Method::GET, "/ping", headers, "").await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn changes_need_a_json_content_type() {
    let lb = Balancer::start(&k3s("")).await;
    let body = with_tables(r#"{"kind": "ping"}"#, STATIC);
    let drain = "/servers/k3s/backends/127.0.0.1:1/drain";
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        for (method, path) in [
            (Method::POST, "/servers/new"),
            (Method::DELETE, "/servers/k3s"),
            (Method::POST, drain),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, basic(LOGIN, PASSWORD));
            if let Some(value) = content_type {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            }
            let reply = request(lb.api(), method.clone(), path, headers, &body).await;
            let what = format!("{method} {path} with {content_type:?}");
            assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{what}");
        }
    }
    let report = lb.balancer.report();
    assert!(report.server("new").is_none() && report.server("k3s").is_some());
    assert_eq!(
        backend_report(&lb.balancer, "k3s", "127.0.0.1:1").admin,
        betwixt::Admin::Enabled
    );
    let reply = lb.call(Method::POST, drain, "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test]
async fn cors_never_allows_origin_null_nor_credentials_unless_enabled() {
    let with_origin = |origin: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, basic(LOGIN, PASSWORD));
        headers.insert(ORIGIN, HeaderValue::from_static(origin));
        headers
    };
    let cors = Balancer::start(&k3s("cors = true")).await;
    let reply = request(cors.api(), Method::GET, "/servers", with_origin("null"), "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    assert!(
        reply
            .headers
            .get(ACCESS_CONTROL_ALLOW_CREDENTIALS)
            .is_none()
    );
    let preflight = request(
        cors.api(),
        Method::OPTIONS,
        "/servers",
        with_origin("null"),
        "",
    )
    .await;
    assert_ne!(preflight.status, StatusCode::NO_CONTENT);
    assert!(preflight.headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

    let plain = Balancer::start(&k3s("")).await;
    let origin = "https://ui.example";
    let reply = request(
        plain.api(),
        Method::GET,
        "/servers",
        with_origin(origin),
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    assert!(
        reply
            .headers
            .get(ACCESS_CONTROL_ALLOW_CREDENTIALS)
            .is_none()
    );
}

#[tokio::test]
async fn dump_masks_the_password_unless_asked() {
    let lb = Balancer::start(&k3s("")).await;
    for path in ["/dump", "/dump?format=json", "/dump?secrets=false"] {
        let reply = lb.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(!reply.body.contains(PASSWORD), "{path}: {}", reply.body);
        assert!(reply.body.contains("********"), "{path}: {}", reply.body);
        assert!(reply.body.contains(LOGIN), "{path}: {}", reply.body);
    }
    let reply = lb.get("/dump?secrets=true").await;
    assert!(reply.body.contains(PASSWORD), "{}", reply.body);
    let reply = lb.get("/dump?secrets=yes").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

/// More silent connections than either listener has slots, then real requests: the oldest
/// idle connections make room instead of the newcomer being refused.
#[tokio::test]
async fn silent_connections_do_not_lock_out_the_api_or_the_metrics() {
    let lb = Balancer::start(&k3s("")).await;
    const SILENT: usize = 128 + 16;
    for (addr, path) in [(lb.api(), "/ping"), (lb.metrics_addr(), "/metrics")] {
        let mut silent = Vec::with_capacity(SILENT);
        for _ in 0..SILENT {
            let connect = TcpStream::connect(addr);
            let stream = tokio::time::timeout(PATIENCE, connect).await;
            silent.push(stream.expect("connects in time").expect("connects"));
        }
        let reply = request(addr, Method::GET, path, HeaderMap::new(), "").await;
        assert_eq!(reply.status, StatusCode::OK, "{addr}{path}");
        drop(silent);
    }
}
