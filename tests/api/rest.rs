//! gobetween's endpoints: shapes against the fixtures, authentication, CORS, errors, adding and
//! removing a server, and `/dump`.

use hyper::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, ORIGIN,
    WWW_AUTHENTICATE,
};
use hyper::{Method, StatusCode};
use serde_json::Value;

use super::*;

fn k3s(backends: &[SocketAddr]) -> String {
    let server = server_config("k3s", "balance = \"roundrobin\"", backends, "");
    format!("{ENDPOINTS}{server}")
}

#[tokio::test]
async fn answers_have_gobetween_shapes_and_types() {
    let backend = echo_backend().await;
    let lb = Balancer::start(&k3s(&[backend.addr])).await;

    let root = lb.get_json("/").await;
    assert_same_shape(&fixture("root.json"), &root, &[], "GET /");
    assert_eq!(root["configuration"]["path"], "test.toml");
    assert_eq!(root["pid"], std::process::id());
    assert!(root["startTime"].as_str().unwrap().ends_with('Z'));

    let stats = lb.get_json("/servers/k3s/stats").await;
    let extras = ["health", "admin", "max_connections", "sni"];
    assert_same_shape(&fixture("stats.json"), &stats, &extras, "stats");
    let entry = &stats["backends"][0];
    assert_eq!(entry["host"], "127.0.0.1");
    assert_eq!(
        entry["port"],
        backend.addr.port().to_string(),
        "port is a string"
    );
    assert_eq!(entry["stats"]["discovered"], true);
    assert_eq!(entry["stats"]["admin"], "enabled");

    let servers = lb.get_json("/servers").await;
    let listed = servers.as_object().unwrap();
    assert_eq!(listed.keys().collect::<Vec<_>>(), ["k3s"]);
    assert_eq!(servers["k3s"]["bind"], "127.0.0.1:0");
    assert_eq!(servers["k3s"]["balance"], "roundrobin");
    assert_eq!(servers["k3s"]["protocol"], "tcp");
    assert_eq!(lb.get_json("/servers/k3s").await, servers["k3s"]);

    // gobetween answers `null` for a server it does not have.
    assert_eq!(lb.get_json("/servers/nope").await, Value::Null);
    assert_eq!(lb.get_json("/servers/nope/stats").await, Value::Null);
    let reply = lb.get("/servers").await;
    assert_eq!(
        reply.headers[CONTENT_TYPE],
        "application/json; charset=utf-8"
    );
    assert!(reply.body.contains("\n    \"k3s\": {"), "indented by four");
}

#[tokio::test]
async fn credentials_are_required_except_for_ping() {
    let lb = Balancer::start(&k3s(&[closed_port().await])).await;
    let anonymous = |path: &'static str| request(lb.api(), Method::GET, path, HeaderMap::new(), "");

    let ping = anonymous("/ping").await;
    assert_eq!((ping.status, ping.body.as_str()), (StatusCode::OK, "OK"));
    for path in [
        "/",
        "/dump",
        "/servers",
        "/servers/k3s",
        "/servers/k3s/stats",
    ] {
        let reply = anonymous(path).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            reply.headers[WWW_AUTHENTICATE],
            "Basic realm=\"Authorization Required\""
        );
    }
    let mut wrong = HeaderMap::new();
    wrong.insert(AUTHORIZATION, basic(LOGIN, "guess"));
    let reply = request(lb.api(), Method::GET, "/servers", wrong, "").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    for (method, path) in [
        (Method::POST, "/servers/x"),
        (Method::DELETE, "/servers/k3s"),
        (Method::POST, "/servers/k3s/backends/127.0.0.1:1/disable"),
    ] {
        let reply = request(lb.api(), method, path, HeaderMap::new(), "{}").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(lb.get("/servers").await.status, StatusCode::OK);
    assert!(lb.balancer.report().server("k3s").is_some());

    assert_eq!(lb.get("/nope").await.status, StatusCode::NOT_FOUND);
    let reply = lb.call(Method::PUT, "/servers/k3s", "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn cors_headers_and_preflight_when_enabled() {
    let text =
        k3s(&[closed_port().await]).replace("[api.basic_auth]", "cors = true\n[api.basic_auth]");
    let lb = Balancer::start(&text).await;
    let mut headers = HeaderMap::new();
    headers.insert(ORIGIN, HeaderValue::from_static("https://ui.example"));
    let preflight = request(lb.api(), Method::OPTIONS, "/servers", headers.clone(), "").await;
    assert_eq!(
        preflight.status,
        StatusCode::NO_CONTENT,
        "no credentials needed"
    );
    assert_eq!(
        preflight.headers[ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://ui.example"
    );
    assert_eq!(
        preflight.headers["access-control-allow-methods"],
        "PUT, POST, DELETE, GET, OPTIONS"
    );
    assert_eq!(
        preflight.headers["access-control-allow-headers"],
        "Origin, Authorization"
    );
    headers.insert(AUTHORIZATION, basic(LOGIN, PASSWORD));
    let actual = request(lb.api(), Method::GET, "/servers", headers, "").await;
    assert_eq!(actual.status, StatusCode::OK);
    assert_eq!(
        actual.headers[ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://ui.example"
    );
    assert_eq!(actual.headers["access-control-allow-credentials"], "true");
    // Without an Origin, no CORS headers, as gin-contrib/cors.
    let plain = lb.get("/servers").await;
    assert!(plain.headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}

/// The posted server, pointing at `backend`.
#[tokio::test]
async fn a_server_shows_gobetweens_prepared_config_with_unset_tables_filled() {
    let backend = echo_backend().await;
    let lb = Balancer::start(&k3s(&[backend.addr])).await;

    let shown = lb.get_json("/servers/k3s").await;
    assert_same_shape(&fixture("server.json"), &shown, &[], "GET /servers/k3s");
    assert_eq!(
        shown["healthcheck"],
        serde_json::json!({"kind": "none", "interval": "0", "timeout": "0", "fails": 1, "passes": 1})
    );
    assert_eq!(shown["max_connections"], 0);
    assert_eq!(shown["client_idle_timeout"], "0");
    assert_eq!(shown["backend_idle_timeout"], "0");
    // Unset, betwixt connects with a 5s timeout (gobetween: none), and shows what runs.
    assert_eq!(shown["backend_connection_timeout"], "5s");
    assert_eq!(shown["discovery"]["failpolicy"], "keeplast");
    assert_eq!(shown["discovery"]["interval"], "0");
    for table in [
        "sni",
        "tls",
        "backends_tls",
        "udp",
        "access",
        "proxy_protocol",
    ] {
        assert_eq!(shown.get(table), Some(&Value::Null), "{table}");
    }
    assert_eq!(lb.get_json("/servers").await["k3s"], shown);
}

fn posted_server(backend: SocketAddr) -> String {
    let server = fixture("server.json").to_string();
    server.replace("BACKEND", &backend.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_get_delete_a_server_end_to_end() {
    let (existing, added) = (name_backend("existing").await, name_backend("added").await);
    let lb = Balancer::start(&k3s(&[existing.addr])).await;

    let body = posted_server(added.addr);
    let reply = lb.call(Method::POST, "/servers/extra", &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json(), Value::Null);
    let extra = lb.server("extra");
    assert_eq!(fetch_name(extra).await.unwrap(), "added");
    assert_eq!(fetch_name(lb.server("k3s")).await.unwrap(), "existing");

    // GET shows what was posted (gobetween's nulls are absent tables).
    let shown = lb.get_json("/servers/extra").await;
    for (key, value) in fixture("server.json").as_object().unwrap() {
        if !value.is_null() && key != "discovery" {
            assert_eq!(&shown[key], value, "{key}");
        }
    }
    assert_eq!(
        shown["discovery"]["static_list"][0],
        format!("{} weight=2", added.addr)
    );
    let stats = lb.get_json("/servers/extra/stats").await;
    assert_eq!(stats["backends"][0]["weight"], 2);
    assert_eq!(stats["backends"][0]["stats"]["total_connections"], 1);

    let again = lb.call(Method::POST, "/servers/extra", &body).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.json().as_str().unwrap().contains("already exists"));

    let reply = lb.call(Method::DELETE, "/servers/extra", "").await;
    assert_eq!((reply.status, reply.json()), (StatusCode::OK, Value::Null));
    assert_eq!(lb.get_json("/servers/extra").await, Value::Null);
    eventually("the removed server's listener closes", || {
        std::net::TcpStream::connect(extra).is_err()
    })
    .await;
    assert_eq!(fetch_name(lb.server("k3s")).await.unwrap(), "existing");
    // Deleting what is not there is not an error in gobetween.
    let reply = lb.call(Method::DELETE, "/servers/extra", "").await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn a_bad_server_is_refused_with_every_problem_named() {
    let lb = Balancer::start(&k3s(&[closed_port().await])).await;
    let bad = r#"{"bind": "127.0.0.1:0", "balance": "roundrobbin",
        "discovery": {"kind": "static", "static_list": ["10.0.0.1:6443 weigth=2"]}}"#;
    let reply = lb.call(Method::POST, "/servers/bad", bad).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let message = reply.json().as_str().unwrap().to_owned();
    assert!(message.contains("servers.bad.balance"), "{message}");
    assert!(
        message.contains("servers.bad.discovery.static_list[0]"),
        "{message}"
    );

    // A bind another listener has: refused by validation, naming both keys.
    let fixed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = fixed.local_addr().unwrap().port();
    drop(fixed);
    let server = |name: &str, port: u16| {
        format!(
            r#"{{"bind": "127.0.0.1:{port}", "discovery": {{"kind": "static", "static_list": ["10.0.0.1:1"]}}, "x": "{name}"}}"#
        )
    };
    let reply = lb
        .call(Method::POST, "/servers/first", &server("first", port))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = lb
        .call(Method::POST, "/servers/second", &server("second", port))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let message = reply.json().as_str().unwrap().to_owned();
    assert!(message.contains("servers.second.bind"), "{message}");

    // A port held by another program: the listener cannot be bound, 409 as in gobetween.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let reply = lb
        .call(Method::POST, "/servers/third", &server("third", port))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert!(
        reply.json().as_str().unwrap().contains("cannot listen"),
        "{}",
        reply.body
    );
    assert_eq!(lb.get_json("/servers/third").await, Value::Null);

    for body in ["not json", r#"{"bind": 6443}"#, "[]"] {
        let reply = lb.call(Method::POST, "/servers/bad", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
    }
    let reply = lb
        .call(Method::POST, "/servers/bad", r#"{"bind": 6443}"#)
        .await;
    assert!(reply.body.contains("bind"), "{}", reply.body);
    assert_eq!(lb.get_json("/servers/bad").await, Value::Null);
    let metrics = lb.scrape().await;
    assert!(metrics.value("betwixt_reloads_total", &[("result", "refused")]) >= 1.0);
}

#[tokio::test]
async fn dump_round_trips_the_running_config_with_api_changes() {
    let backend = echo_backend().await;
    let text = format!(
        "{}[defaults]\nbackend_connection_timeout = \"3s\"\n",
        k3s(&[backend.addr])
    );
    let lb = Balancer::start(&text).await;
    let reply = lb
        .call(Method::POST, "/servers/extra", &posted_server(backend.addr))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    let running = lb.balancer.config();
    let toml = lb.get("/dump?secrets=true").await;
    assert_eq!(toml.status, StatusCode::OK);
    assert!(toml.body.contains("[servers.extra]"), "{}", toml.body);
    let from_toml = config::load_str("dump.toml", &toml.body, &LoadOptions::default())
        .unwrap_or_else(|errors| panic!("{errors}\n{}", toml.body));
    assert_eq!(from_toml.config, *running);

    let json = lb.get("/dump?format=json&secrets=true").await;
    let options = LoadOptions {
        format: config::Format::Json,
        ..LoadOptions::default()
    };
    let from_json = config::load_str("dump.json", &json.body, &options)
        .unwrap_or_else(|errors| panic!("{errors}\n{}", json.body));
    assert_eq!(from_json.config, *running);

    assert_eq!(
        lb.get("/dump?format=yaml").await.status,
        StatusCode::BAD_REQUEST
    );
}
