//! Kind `kubernetes` (betwixt's): the ready endpoints of a Service's EndpointSlices
//! (`discovery.k8s.io/v1`, label `kubernetes.io/service-name`), kept current with a watch.
//!
//! One task per server runs [`watch`]: LIST, then WATCH from the list's `resourceVersion`,
//! following bookmarks; a watch the server ends is resumed from the last version, a `410 Gone`
//! (the version is too old) lists again at once, and any other failure lists again after a
//! backoff doubling from 1 s to 30 s. The full list is sent whenever it changes.
//!
//! Bootstrap: in front of k3s the kubeconfig's server is often this balancer itself, which
//! has no backends until the watch finds them. So when the server cannot be reached, the
//! request goes straight to the last known backends (first the discovery table's
//! `static_list`), one after another, with the server's TLS name and credentials.

mod access;
mod slices;
#[cfg(test)]
mod tests;

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use self::access::{Access, AccessError, ServiceAccount};
use self::slices::{EndpointSlice, SliceList, Slices, Status, WatchEvent};
use super::client::{self, Client, ClientError};
use crate::config::{BackendSpec, KubernetesDiscovery};

/// Updates sent to the discovery framework: a full list, or why none could be had.
pub(crate) type Updates = mpsc::Sender<Result<Vec<BackendSpec>, String>>;

/// Watches until `updates` is closed (or the task is aborted).
pub(crate) async fn watch(source: &KubernetesDiscovery, updates: Updates) {
    let timing = Timing::default();
    let service_account = ServiceAccount::from_env();
    run(source, &updates, &timing, &service_account).await;
}

/// The waits of a watch; tests shorten them.
#[derive(Debug, Clone)]
struct Timing {
    first_backoff: Duration,
    max_backoff: Duration,
    /// How long one LIST (through one address) may take.
    request_timeout: Duration,
    /// `timeoutSeconds` of a WATCH: the server ends it after this long, and it is resumed.
    watch_seconds: u64,
    /// Silence on a watch longer than this (past `watch_seconds`) counts as a broken one.
    idle_margin: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            watch_seconds: 290,
            idle_margin: Duration::from_secs(30),
        }
    }
}

/// Why a list-and-watch round ended.
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("kubernetes: {0}")]
    Access(#[from] AccessError),
    #[error("kubernetes: {0}")]
    Request(#[from] ClientError),
    #[error("kubernetes {url}: {problem}")]
    Answer { url: String, problem: String },
    #[error("kubernetes {url}: watch silent for {silent:?}")]
    Silent { url: String, silent: Duration },
    /// `410 Gone`: the version is too old; list again.
    #[error("kubernetes {url}: resource version expired")]
    Expired { url: String },
    /// Nobody listens to the updates any more.
    #[error("updates closed")]
    Closed,
}

/// The state carried across rounds.
struct Watcher<'a> {
    source: &'a KubernetesDiscovery,
    updates: &'a Updates,
    timing: &'a Timing,
    service_account: &'a ServiceAccount,
    /// What was last sent, to send only changes.
    sent: Option<Vec<BackendSpec>>,
    /// Where to reach the API when its own address does not answer.
    known: Vec<BackendSpec>,
}

async fn run(
    source: &KubernetesDiscovery,
    updates: &Updates,
    timing: &Timing,
    service_account: &ServiceAccount,
) {
    let mut watcher = Watcher {
        source,
        updates,
        timing,
        service_account,
        sent: None,
        known: source.seed.clone(),
    };
    let mut backoff = timing.first_backoff;
    // Whether the last round ended in 410 Gone too: a server that expires every fresh list's
    // version must not be listed in a tight loop.
    let mut expired_before = false;
    loop {
        let error = tokio::select! {
            error = watcher.round(&mut backoff) => error,
            () = updates.closed() => return,
        };
        let expired = matches!(error, WatchError::Expired { .. });
        match error {
            WatchError::Closed => return,
            WatchError::Expired { .. } if !expired_before => {
                tracing::debug!("{error}; listing again");
                expired_before = true;
                continue;
            }
            WatchError::Expired { .. } => {
                tracing::debug!("{error} again; listing after {backoff:?}")
            }
            error => {
                tracing::debug!("{error}");
                if updates.send(Err(error.to_string())).await.is_err() {
                    return;
                }
            }
        }
        expired_before = expired;
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = updates.closed() => return,
        }
        backoff = (backoff * 2).min(timing.max_backoff);
    }
}

impl Watcher<'_> {
    /// One LIST and the WATCHes that follow it; returns why it ended. A successful list
    /// resets `backoff`.
    async fn round(&mut self, backoff: &mut Duration) -> WatchError {
        let access =
            match Access::load(self.source.kubeconfig.as_deref(), self.service_account).await {
                Ok(access) => access,
                Err(error) => return error.into(),
            };
        let (mut slices, mut version, dial) = match self.list(&access).await {
            Ok(listed) => listed,
            Err(error) => return error,
        };
        *backoff = self.timing.first_backoff;
        if let Err(error) = self.publish(&slices).await {
            return error;
        }
        loop {
            let dial = dial.as_ref().map(|(host, port)| (host.as_str(), *port));
            let client = match access.client(dial).await {
                Ok(client) => client,
                Err(error) => return error.into(),
            };
            if let Err(error) = self.follow(&client, &mut slices, &mut version).await {
                return error;
            }
        }
    }

    /// LIST through the API's address, else through each known backend in turn. Returns the
    /// slices, their version and the address that answered (`None`: the API's own).
    async fn list(
        &mut self,
        access: &Access,
    ) -> Result<(Slices, String, Option<(String, u16)>), WatchError> {
        let path = self.path(None);
        let mut candidates: Vec<Option<(String, u16)>> = vec![None];
        candidates.extend(
            self.known
                .iter()
                .map(|backend| Some((backend.host.clone(), backend.port))),
        );
        let mut last_error = None;
        for dial in candidates {
            let client = access
                .client(dial.as_ref().map(|(host, port)| (host.as_str(), *port)))
                .await?;
            let answer = tokio::time::timeout(self.timing.request_timeout, client.get(&path)).await;
            let body = match answer {
                Ok(Ok(body)) => body,
                // An answer from the API itself (401, 403, 404) would be the same elsewhere.
                Ok(Err(error @ ClientError::Status { .. })) => return Err(error.into()),
                Ok(Err(error)) => {
                    last_error = Some(WatchError::Request(error));
                    continue;
                }
                Err(_) => {
                    last_error = Some(WatchError::Answer {
                        url: client.url(&path),
                        problem: format!("no answer within {:?}", self.timing.request_timeout),
                    });
                    continue;
                }
            };
            if let Some((host, port)) = &dial {
                tracing::info!(
                    "kubernetes API {} unreachable, listed through {host}:{port}",
                    access.endpoint
                );
            }
            let list: SliceList = parse(&body, || client.url(&path))?;
            let version = list.metadata.resource_version.clone().unwrap_or_default();
            return Ok((Slices::from_list(list, &self.source.port), version, dial));
        }
        Err(last_error.unwrap_or_else(|| WatchError::Answer {
            url: client_url(access, &path),
            problem: "no address to try".to_owned(),
        }))
    }

    /// One WATCH from `version`, applying its events until the server ends it.
    async fn follow(
        &mut self,
        client: &Client,
        slices: &mut Slices,
        version: &mut String,
    ) -> Result<(), WatchError> {
        let path = self.path(Some(version));
        let url = client.url(&path);
        let mut lines = match client.stream(&path).await {
            Ok(lines) => lines,
            Err(ClientError::Status { status, .. }) if status.as_u16() == 410 => {
                return Err(WatchError::Expired { url });
            }
            Err(error) => return Err(error.into()),
        };
        let patience = Duration::from_secs(self.timing.watch_seconds) + self.timing.idle_margin;
        loop {
            let line = match tokio::time::timeout(patience, lines.next_line()).await {
                Err(_) => {
                    return Err(WatchError::Silent {
                        url,
                        silent: patience,
                    });
                }
                Ok(line) => line?,
            };
            let Some(line) = line else {
                return Ok(());
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: WatchEvent = parse(&line, || url.clone())?;
            self.apply(event, slices, version, &url).await?;
        }
    }

    async fn apply(
        &mut self,
        event: WatchEvent,
        slices: &mut Slices,
        version: &mut String,
        url: &str,
    ) -> Result<(), WatchError> {
        let port = &self.source.port;
        match event.kind.as_str() {
            "ERROR" => {
                let status: Status = serde_json::from_value(event.object).unwrap_or(Status {
                    code: 0,
                    message: "an unreadable ERROR event".to_owned(),
                });
                if status.code == 410 {
                    return Err(WatchError::Expired {
                        url: url.to_owned(),
                    });
                }
                return Err(WatchError::Answer {
                    url: url.to_owned(),
                    problem: format!("watch error {}: {}", status.code, status.message),
                });
            }
            kind @ ("ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK") => {
                let slice: EndpointSlice =
                    serde_json::from_value(event.object).map_err(|error| WatchError::Answer {
                        url: url.to_owned(),
                        problem: format!("{kind} event: {error}"),
                    })?;
                if let Some(found) = &slice.metadata.resource_version {
                    version.clone_from(found);
                }
                match kind {
                    "ADDED" | "MODIFIED" => slices.apply(slice, port),
                    "DELETED" => slices.remove(&slice.metadata.name),
                    _ => return Ok(()),
                }
            }
            other => tracing::debug!("kubernetes {url}: ignoring a {other:?} event"),
        }
        self.publish(slices).await
    }

    /// Sends the list if it changed; remembers a non-empty one as the way in.
    async fn publish(&mut self, slices: &Slices) -> Result<(), WatchError> {
        let backends = slices.backends();
        if self.sent.as_ref() == Some(&backends) {
            return Ok(());
        }
        if !backends.is_empty() {
            self.known.clone_from(&backends);
        }
        self.sent = Some(backends.clone());
        self.updates
            .send(Ok(backends))
            .await
            .map_err(|_| WatchError::Closed)
    }

    /// The slices' collection path; with `version`, a watch from it.
    fn path(&self, version: Option<&str>) -> String {
        let selector = format!("kubernetes.io/service-name={}", self.source.service);
        let mut path = format!(
            "/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?labelSelector={}",
            client::encode(&self.source.namespace),
            client::encode(&selector)
        );
        if let Some(version) = version {
            path.push_str(&format!(
                "&watch=1&allowWatchBookmarks=true&timeoutSeconds={}&resourceVersion={}",
                self.timing.watch_seconds,
                client::encode(version)
            ));
        }
        path
    }
}

fn client_url(access: &Access, path: &str) -> String {
    format!("{}{path}", access.endpoint)
}

fn parse<T: serde::de::DeserializeOwned>(
    body: &Bytes,
    url: impl FnOnce() -> String,
) -> Result<T, WatchError> {
    serde_json::from_slice(body).map_err(|error| WatchError::Answer {
        url: url(),
        problem: format!("not a Kubernetes answer: {error}"),
    })
}
