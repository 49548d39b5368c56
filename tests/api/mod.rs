//! The REST API, the metrics endpoint, runtime drain/disable and `betwixt status`, end to end:
//! a balancer with its API and metrics listeners on ephemeral loopback ports, real HTTP.

mod admin;
mod metrics;
mod reload;
mod rest;
mod security;
mod status;
mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use betwixt::config::{self, LoadOptions};
use betwixt::{Endpoints, LoadBalancer};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::util::*;

pub const LOGIN: &str = "admin";
pub const PASSWORD: &str = "s3cret";

/// `[api]` with basic auth and `[metrics]`, both on ephemeral loopback ports.
pub const ENDPOINTS: &str = "[api]\nenabled = true\nbind = \"127.0.0.1:0\"\n\
    [api.basic_auth]\nlogin = \"admin\"\npassword = \"s3cret\"\n\
    [metrics]\nenabled = true\nbind = \"127.0.0.1:0\"\n";

/// A balancer with its API and metrics listeners.
pub struct Balancer {
    pub balancer: LoadBalancer,
    pub endpoints: Endpoints,
}

impl Balancer {
    /// Starts from config text; add [`ENDPOINTS`] to get the API and metrics.
    pub async fn start(toml: &str) -> Self {
        let loaded = config::load_str("test.toml", toml, &LoadOptions::default())
            .unwrap_or_else(|errors| panic!("test config invalid:\n{errors}"));
        let balancer = LoadBalancer::start(loaded.config)
            .await
            .expect("balancer starts");
        let endpoints = balancer
            .serve_endpoints(PathBuf::from("test.toml"))
            .expect("API and metrics start");
        Self {
            balancer,
            endpoints,
        }
    }

    pub fn api(&self) -> SocketAddr {
        self.endpoints.api_addr().expect("the API is enabled")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.endpoints.metrics_addr().expect("metrics are enabled")
    }

    /// The address server `name` listens on.
    pub fn server(&self, name: &str) -> SocketAddr {
        self.balancer.local_addr(name).expect("server listens")
    }

    /// An authenticated request to the API, with a JSON content type as gobetween's clients
    /// send.
    pub async fn call(&self, method: Method, path: &str, body: &str) -> Reply {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, basic(LOGIN, PASSWORD));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        request(self.api(), method, path, headers, body).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, "").await
    }

    /// An authenticated GET that must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let reply = self.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "GET {path}: {}", reply.body);
        reply.json()
    }

    /// The parsed `/metrics` text.
    pub async fn scrape(&self) -> Metrics {
        let reply = request(
            self.metrics_addr(),
            Method::GET,
            "/metrics",
            HeaderMap::new(),
            "",
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        Metrics::parse(&reply.body)
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }
}

/// The `Authorization` header of basic authentication.
pub fn basic(login: &str, password: &str) -> HeaderValue {
    let value = betwixt::rest::basic_authorization(login, password);
    HeaderValue::from_str(&value).unwrap()
}

/// One request over a new plain TCP connection.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: HeaderMap,
    body: &str,
) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("API reachable");
    request_over(stream, &addr.to_string(), method, path, headers, body).await
}

/// One request over an established stream (plain or TLS).
pub async fn request_over<S>(
    stream: S,
    host: &str,
    method: Method,
    path: &str,
    headers: HeaderMap,
    body: &str,
) -> Reply
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    // A `Host` in `headers` replaces the default one.
    request.headers_mut().extend(headers);
    let exchange = async {
        let response = sender.send_request(request).await.expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("an answer in time")
}

/// A fixture from `tests/fixtures/gobetween/`.
pub fn fixture(name: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gobetween/");
    let text = std::fs::read_to_string(format!("{path}{name}")).expect("fixture exists");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// Asserts that `actual` has the structure of `expected`: the same keys (plus `extra` ones),
/// values of the same JSON type, array elements shaped like the fixture's first one.
pub fn assert_same_shape(expected: &Value, actual: &Value, extra: &[&str], at: &str) {
    match (expected, actual) {
        (Value::Object(expected), Value::Object(actual)) => {
            for (key, value) in expected {
                let found = actual
                    .get(key)
                    .unwrap_or_else(|| panic!("{at}.{key} missing in {actual:?}"));
                assert_same_shape(value, found, extra, &format!("{at}.{key}"));
            }
            for key in actual.keys() {
                assert!(
                    expected.contains_key(key) || extra.contains(&key.as_str()),
                    "{at}.{key} is not in gobetween's shape"
                );
            }
        }
        (Value::Array(expected), Value::Array(actual)) => {
            if let Some(first) = expected.first() {
                for (i, element) in actual.iter().enumerate() {
                    assert_same_shape(first, element, extra, &format!("{at}[{i}]"));
                }
            }
        }
        (Value::Number(_), Value::Number(actual)) => {
            assert!(actual.is_u64(), "{at}: {actual} is not a count");
        }
        (expected, actual) => assert_eq!(
            std::mem::discriminant(expected),
            std::mem::discriminant(actual),
            "{at}: expected a value like {expected}, got {actual}"
        ),
    }
}

/// A Prometheus text exposition, parsed: samples by name and labels, and the declared
/// families.
#[derive(Debug, Default)]
pub struct Metrics {
    pub samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
    pub help: BTreeMap<String, String>,
    pub types: BTreeMap<String, String>,
}

impl Metrics {
    /// Parses the text, asserting the format: every sample belongs to a family whose `# HELP`
    /// and `# TYPE` came before it, and every sample line parses.
    pub fn parse(text: &str) -> Self {
        let mut metrics = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                metrics.help.insert(name.to_owned(), help.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                metrics.types.insert(name.to_owned(), kind.to_owned());
            } else {
                let (name, labels, value) = parse_sample(line);
                let family = family_of(&name, &metrics.types);
                assert!(
                    metrics.help.contains_key(&family) && metrics.types.contains_key(&family),
                    "{line}: no HELP/TYPE for {family} before it"
                );
                metrics.samples.insert((name, labels), value);
            }
        }
        metrics
    }

    /// The value of the sample `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = (
            name.to_owned(),
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        *self
            .samples
            .get(&key)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }

    /// Whether any sample of `name` carries `label=value`.
    pub fn has(&self, name: &str, label: &str, value: &str) -> bool {
        self.samples.keys().any(|(sample, labels)| {
            sample == name && labels.get(label).map(String::as_str) == Some(value)
        })
    }
}

/// A histogram's `_bucket`, `_sum` and `_count` belong to its family.
fn family_of(name: &str, types: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).map(String::as_str) == Some("histogram")
        {
            return base.to_owned();
        }
    }
    name.to_owned()
}

fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let (head, value) = line.rsplit_once(' ').expect("sample has a value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        other => other
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}")),
    };
    let Some((name, rest)) = head.split_once('{') else {
        return (head.to_owned(), BTreeMap::new(), value);
    };
    let body = rest.strip_suffix('}').expect("labels end with }");
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "{line}");
        let mut value = String::new();
        loop {
            match chars.next().expect("closing quote") {
                '\\' => match chars.next().expect("escape") {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.insert(key, value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    (name.to_owned(), labels, value)
}

/// A backend that answers every connection with `name\n`, then echoes what it receives.
pub async fn echo_named(name: &'static str) -> TestBackend {
    use tokio::io::AsyncWriteExt;
    spawn_backend_on(
        "127.0.0.1:0".parse().unwrap(),
        move |mut stream| async move {
            if stream
                .write_all(format!("{name}\n").as_bytes())
                .await
                .is_ok()
            {
                let (mut reader, mut writer) = stream.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            }
        },
    )
    .await
}

/// Connects, reads the backend's name line; returns the stream (still open) and the name.
pub async fn open_named(addr: SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.expect("balancer reachable");
    let name = read_line(&mut stream).await.expect("a name in time");
    (stream, name)
}

/// One echo round trip on an open session.
pub async fn echoes(stream: &mut TcpStream, payload: &[u8]) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        stream.write_all(payload).await?;
        let mut back = vec![0u8; payload.len()];
        stream.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back == payload)
    };
    matches!(tokio::time::timeout(PATIENCE, exchange).await, Ok(Ok(true)))
}
