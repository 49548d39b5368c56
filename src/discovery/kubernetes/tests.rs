//! The watch against a responder following the documented API (LIST and WATCH of
//! `discovery.k8s.io/v1` EndpointSlices over HTTPS, client certificates and bearer tokens,
//! `410 Gone`): no Kubernetes API server can run here.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use super::*;
use crate::config::KubernetesPort;
use crate::discovery::responder::{Answer, Responder, Seen, TestPki};

const PATIENCE: Duration = Duration::from_secs(20);

/// The fake API's state: what LIST answers, the WATCH answers to give in turn, and the bearer
/// token it accepts (a client certificate is always accepted).
#[derive(Default)]
struct Api {
    list: Mutex<serde_json::Value>,
    watches: Mutex<VecDeque<Answer>>,
    /// Streams handed out once the queue is empty, kept open until the test ends.
    idle: Mutex<Vec<mpsc::Sender<Bytes>>>,
    token: Mutex<Option<String>>,
}

impl Api {
    fn answer(&self, seen: &Seen) -> Answer {
        let token_ok = match &*self.token.lock().unwrap() {
            Some(token) => seen.header("authorization") == Some(&format!("Bearer {token}")),
            None => false,
        };
        if !seen.client_certificate && !token_ok {
            return Answer::status(
                401,
                r#"{"kind":"Status","code":401,"message":"Unauthorized"}"#,
            );
        }
        if !seen.target.contains("watch=1") {
            return Answer::json(&self.list.lock().unwrap().to_string());
        }
        if let Some(answer) = self.watches.lock().unwrap().pop_front() {
            return answer;
        }
        let (sender, receiver) = mpsc::channel(1);
        self.idle.lock().unwrap().push(sender);
        Answer::stream(receiver)
    }

    /// Queues a watch answer whose events the test sends on the returned channel.
    fn queue_watch(&self) -> mpsc::Sender<Bytes> {
        let (sender, receiver) = mpsc::channel(16);
        self.watches
            .lock()
            .unwrap()
            .push_back(Answer::stream(receiver));
        sender
    }
}

fn slice(name: &str, version: &str, endpoints: &[(&str, Option<bool>)]) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(address, ready)| match ready {
            Some(ready) => json!({"addresses": [address], "conditions": {"ready": ready}}),
            None => json!({"addresses": [address], "conditions": {}}),
        })
        .collect();
    json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": version,
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    })
}

fn list(version: &str, items: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
           "metadata": {"resourceVersion": version}, "items": items})
}

fn event(kind: &str, object: serde_json::Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}

fn timing() -> Timing {
    Timing {
        first_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        request_timeout: Duration::from_secs(5),
        watch_seconds: 290,
        idle_margin: Duration::from_secs(30),
    }
}

fn source(kubeconfig: Option<PathBuf>, seed: Vec<BackendSpec>) -> KubernetesDiscovery {
    KubernetesDiscovery {
        kubeconfig,
        namespace: "default".into(),
        service: "kubernetes".into(),
        port: KubernetesPort::Name("https".into()),
        seed,
    }
}

fn no_service_account() -> ServiceAccount {
    ServiceAccount {
        dir: PathBuf::from("/nonexistent"),
        host: None,
        port: None,
    }
}

/// A kubeconfig whose user has the PKI's client certificate as inline data and whose cluster
/// has the CA inline, as k3s writes `/etc/rancher/k3s/k3s.yaml`.
fn kubeconfig(pki: &TestPki, server: &str, tls_server_name: Option<&str>) -> PathBuf {
    let data = |path: PathBuf| {
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
    };
    let name_line = tls_server_name
        .map(|name| format!("    tls-server-name: {name}\n"))
        .unwrap_or_default();
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: default\n\
         clusters:\n- name: default\n  cluster:\n    server: {server}\n\
         \x20   certificate-authority-data: {}\n{name_line}\
         users:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
         contexts:\n- name: default\n  context:\n    cluster: default\n    user: default\n",
        data(pki.ca_path()),
        data(pki.client_cert_path()),
        data(pki.client_key_path()),
    );
    let path = pki.dir().join("kubeconfig.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn next(
    updates: &mut mpsc::Receiver<Result<Vec<BackendSpec>, String>>,
) -> Result<Vec<String>, String> {
    let update = tokio::time::timeout(PATIENCE, updates.recv())
        .await
        .expect("an update within the patience")
        .expect("the watch runs");
    update.map(|backends| backends.iter().map(BackendSpec::target).collect())
}

/// Whether the responder has seen `count` requests within the patience.
async fn requests_reach(responder: &Responder, count: usize) -> bool {
    for _ in 0..2000 {
        if responder.requests().len() >= count {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn start(api: &Arc<Api>, pki: &TestPki) -> Responder {
    let api = Arc::clone(api);
    Responder::https(pki, false, move |seen| api.answer(seen)).await
}

fn spawn_watch(
    source: KubernetesDiscovery,
    service_account: ServiceAccount,
) -> (
    mpsc::Receiver<Result<Vec<BackendSpec>, String>>,
    tokio::task::JoinHandle<()>,
) {
    let (sender, receiver) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        run(&source, &sender, &timing(), &service_account).await;
    });
    (receiver, task)
}

#[tokio::test]
async fn lists_then_follows_the_watch_with_a_client_certificate() {
    let pki = TestPki::new("k8s-watch");
    let api = Arc::new(Api::default());
    *api.list.lock().unwrap() = list(
        "100",
        vec![slice(
            "kubernetes",
            "99",
            &[
                ("10.0.0.11", Some(true)),
                ("10.0.0.12", None),
                ("10.0.0.13", Some(false)),
            ],
        )],
    );
    let events = api.queue_watch();
    let responder = start(&api, &pki).await;
    let config = kubeconfig(&pki, &format!("https://{}", responder.authority()), None);
    let (mut updates, task) = spawn_watch(source(Some(config), Vec::new()), no_service_account());

    assert_eq!(
        next(&mut updates).await.unwrap(),
        ["10.0.0.11:6443", "10.0.0.12:6443"]
    );
    // A third master becomes ready.
    let modified = slice(
        "kubernetes",
        "101",
        &[
            ("10.0.0.11", Some(true)),
            ("10.0.0.12", None),
            ("10.0.0.13", Some(true)),
        ],
    );
    events.send(event("MODIFIED", modified)).await.unwrap();
    assert_eq!(
        next(&mut updates).await.unwrap(),
        ["10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.13:6443"]
    );
    // A bookmark moves the version and changes nothing; a second slice adds a master.
    let bookmark = json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                          "metadata": {"resourceVersion": "150"}});
    events.send(event("BOOKMARK", bookmark)).await.unwrap();
    events
        .send(event(
            "ADDED",
            slice("kubernetes-2", "151", &[("10.0.0.14", None)]),
        ))
        .await
        .unwrap();
    assert_eq!(next(&mut updates).await.unwrap().len(), 4);
    events
        .send(event("DELETED", slice("kubernetes", "152", &[])))
        .await
        .unwrap();
    assert_eq!(next(&mut updates).await.unwrap(), ["10.0.0.14:6443"]);
    // The server ends the watch; the next one resumes from the last version, without a list.
    drop(events);
    let resumed = requests_reach(&responder, 3).await;
    assert!(resumed, "{:?}", responder.requests());

    let requests = responder.requests();
    let selector = "labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes";
    assert_eq!(
        requests[0].target,
        format!("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?{selector}")
    );
    assert!(
        requests[1].target.ends_with("&resourceVersion=100"),
        "{}",
        requests[1].target
    );
    assert!(
        requests[1]
            .target
            .contains("watch=1&allowWatchBookmarks=true")
    );
    assert!(
        requests[2].target.ends_with("&resourceVersion=152"),
        "{}",
        requests[2].target
    );
    assert!(requests.iter().all(|request| request.client_certificate));
    assert!(
        requests
            .iter()
            .all(|request| request.header("authorization").is_none())
    );
    task.abort();
}

#[tokio::test]
async fn gone_lists_again() {
    let pki = TestPki::new("k8s-gone");
    let api = Arc::new(Api::default());
    *api.list.lock().unwrap() = list(
        "10",
        vec![slice("kubernetes", "10", &[("10.0.0.11", None)])],
    );
    let first = api.queue_watch();
    // The second watch is refused with 410 at once: the version is too old again.
    api.watches.lock().unwrap().push_back(Answer::status(
        410,
        r#"{"kind":"Status","code":410,"reason":"Expired"}"#,
    ));
    let responder = start(&api, &pki).await;
    let config = kubeconfig(&pki, &format!("https://{}", responder.authority()), None);
    let (mut updates, task) = spawn_watch(source(Some(config), Vec::new()), no_service_account());
    assert_eq!(next(&mut updates).await.unwrap(), ["10.0.0.11:6443"]);

    // An ERROR event with 410 Gone: list again, which now has another master.
    *api.list.lock().unwrap() = list(
        "20",
        vec![slice("kubernetes", "20", &[("10.0.0.12", None)])],
    );
    let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "message": "too old resource version: 10 (15)", "reason": "Expired", "code": 410});
    first.send(event("ERROR", gone)).await.unwrap();
    assert_eq!(next(&mut updates).await.unwrap(), ["10.0.0.12:6443"]);
    *api.list.lock().unwrap() = list(
        "30",
        vec![slice("kubernetes", "30", &[("10.0.0.13", None)])],
    );
    assert_eq!(next(&mut updates).await.unwrap(), ["10.0.0.13:6443"]);

    let lists: Vec<String> = responder
        .requests()
        .into_iter()
        .map(|request| request.target)
        .filter(|target| !target.contains("watch=1"))
        .collect();
    assert_eq!(lists.len(), 3, "{lists:?}");
    task.abort();
}

#[tokio::test]
async fn service_account_token_is_read_again_as_it_rotates() {
    let pki = TestPki::new("k8s-token");
    let api = Arc::new(Api::default());
    *api.list.lock().unwrap() = list("5", vec![slice("kubernetes", "5", &[("10.0.0.11", None)])]);
    *api.token.lock().unwrap() = Some("token-1".into());
    let first = api.queue_watch();
    let responder = start(&api, &pki).await;
    let account_dir = pki.dir().join("serviceaccount");
    std::fs::create_dir_all(&account_dir).unwrap();
    std::fs::copy(pki.ca_path(), account_dir.join("ca.crt")).unwrap();
    std::fs::write(account_dir.join("token"), "token-1\n").unwrap();
    let account = ServiceAccount {
        dir: account_dir.clone(),
        host: Some("127.0.0.1".into()),
        port: Some(responder.port().to_string()),
    };
    let (mut updates, task) = spawn_watch(source(None, Vec::new()), account);
    assert_eq!(next(&mut updates).await.unwrap(), ["10.0.0.11:6443"]);

    assert!(requests_reach(&responder, 2).await, "the first watch");
    // The kubelet rotates the token (atomically, by renaming); the old one stops working.
    std::fs::write(account_dir.join("token.new"), "token-2\n").unwrap();
    std::fs::rename(account_dir.join("token.new"), account_dir.join("token")).unwrap();
    *api.token.lock().unwrap() = Some("token-2".into());
    drop(first);
    let rotated = requests_reach(&responder, 3).await;
    assert!(rotated);
    let tokens: Vec<Option<String>> = responder
        .requests()
        .iter()
        .map(|request| request.header("authorization").map(str::to_owned))
        .collect();
    assert_eq!(
        tokens[..3],
        [
            Some("Bearer token-1".to_owned()),
            Some("Bearer token-1".to_owned()),
            Some("Bearer token-2".to_owned()),
        ]
    );
    assert!(
        responder
            .requests()
            .iter()
            .all(|request| !request.client_certificate)
    );
    task.abort();
}

#[tokio::test]
async fn an_unreachable_server_is_bypassed_through_the_known_backends() {
    let pki = TestPki::new("k8s-bootstrap");
    let api = Arc::new(Api::default());
    *api.list.lock().unwrap() = list("7", vec![slice("kubernetes", "7", &[("10.0.0.11", None)])]);
    let responder = start(&api, &pki).await;
    // The kubeconfig names the balancer's own address, which has no backends yet: closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = kubeconfig(&pki, &format!("https://{closed}"), Some("kubernetes"));
    let seed = vec![
        BackendSpec {
            host: "127.0.0.1".into(),
            port: closed.port(),
            weight: 1,
            priority: 1,
            max_connections: None,
            sni: None,
        },
        BackendSpec {
            host: "127.0.0.1".into(),
            port: responder.port(),
            weight: 1,
            priority: 1,
            max_connections: None,
            sni: None,
        },
    ];
    let (mut updates, task) = spawn_watch(source(Some(config), seed), no_service_account());
    assert_eq!(next(&mut updates).await.unwrap(), ["10.0.0.11:6443"]);
    let requests = responder.requests();
    // Reached through the second seed backend, verified under the kubeconfig's name.
    assert_eq!(requests[0].sni.as_deref(), Some("kubernetes"));
    assert!(requests[0].client_certificate);
    task.abort();
}

#[tokio::test]
async fn failures_are_sent_and_name_the_request() {
    let pki = TestPki::new("k8s-fail");
    let api = Arc::new(Api::default());
    let responder = start(&api, &pki).await;
    // A kubeconfig without credentials: the API answers 401.
    let path = pki.dir().join("anonymous.yaml");
    let ca =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(pki.ca_path()).unwrap());
    std::fs::write(
        &path,
        format!(
            "current-context: c\ncontexts:\n- {{name: c, context: {{cluster: k}}}}\n\
             clusters:\n- name: k\n  cluster: {{server: 'https://{}', certificate-authority-data: {ca}}}\n",
            responder.authority()
        ),
    )
    .unwrap();
    let (mut updates, task) = spawn_watch(source(Some(path), Vec::new()), no_service_account());
    let error = next(&mut updates).await.unwrap_err();
    assert!(
        error.starts_with(&format!(
            "kubernetes: https://{}/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?",
            responder.authority()
        )),
        "{error}"
    );
    assert!(error.contains("answered 401 Unauthorized"), "{error}");
    // Retried after the backoff, and reported again.
    assert!(next(&mut updates).await.is_err());
    task.abort();

    let (mut updates, task) = spawn_watch(source(None, Vec::new()), no_service_account());
    assert_eq!(
        next(&mut updates).await.unwrap_err(),
        "kubernetes: in-cluster service account: KUBERNETES_SERVICE_HOST is not set (outside a \
         pod, set kubernetes_kubeconfig)"
    );
    task.abort();
}

#[tokio::test]
async fn stops_when_the_updates_are_closed() {
    let (sender, receiver) = mpsc::channel(1);
    drop(receiver);
    let source = source(None, Vec::new());
    tokio::time::timeout(
        PATIENCE,
        run(&source, &sender, &timing(), &no_service_account()),
    )
    .await
    .expect("the watch ends");
}
