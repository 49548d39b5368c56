//! Kind `docker`: containers of a Docker Engine (`GET /containers/json`, label-filtered), each
//! published host port of `docker_container_private_port` a backend, as gobetween's
//! `docker.go` finds them through its Docker client.
//!
//! A backend's host is, in gobetween's order: the container's `docker_container_host_env_var`
//! (read with `GET /containers/ID/json`), else the address the port is published on, else
//! (published on all interfaces) the endpoint's host. Its `sni` is the container's `sni` label.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::client::{self, Client, ClientCertificate, ClientError, Endpoint, Tls, TlsMaterial};
use crate::config::{BackendSpec, DockerDiscovery};

/// Why a fetch found no list; the framework logs its `Display`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("docker {endpoint}: {problem}")]
    Setup { endpoint: String, problem: String },
    #[error("docker: {0}")]
    Request(#[from] ClientError),
    #[error("docker {url}: not an Engine API answer: {problem}")]
    Answer { url: String, problem: String },
}

/// One element of `GET /containers/json`; other fields are ignored.
#[derive(Debug, Deserialize)]
struct Container {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Ports", default)]
    ports: Vec<Port>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct Port {
    #[serde(rename = "IP", default)]
    ip: String,
    #[serde(rename = "PrivatePort")]
    private_port: u16,
    /// Absent when the port is exposed but not published.
    #[serde(rename = "PublicPort", default)]
    public_port: Option<u16>,
}

/// `GET /containers/ID/json`, the part that holds the environment.
#[derive(Debug, Deserialize)]
struct Inspection {
    #[serde(rename = "Config")]
    config: Option<ContainerConfig>,
}

#[derive(Debug, Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
}

/// The running containers' published ports, weight and priority 1 each; a target published
/// twice (IPv4 and IPv6 on all interfaces) is listed once.
///
/// # Errors
/// TLS files unusable, the daemon unreachable or answering an error, or an answer that is
/// not the Engine API's. A failed inspection only loses that container's env var host, as in
/// gobetween (logged).
pub(crate) async fn fetch(source: &DockerDiscovery) -> Result<Vec<BackendSpec>, Error> {
    let client = client(source).await?;
    let path = list_path(source);
    let containers: Vec<Container> = get_json(&client, &path).await?;
    let mut backends = Vec::new();
    let mut seen = HashSet::new();
    for container in containers {
        let published: Vec<(&str, u16)> = container
            .ports
            .iter()
            .filter(|port| port.private_port == source.private_port)
            .filter_map(|port| Some((port.ip.as_str(), port.public_port?)))
            .collect();
        if published.is_empty() {
            continue;
        }
        let env_host = match &source.host_env_var {
            Some(name) => env_host(&client, &container.id, name).await,
            None => None,
        };
        let sni = container
            .labels
            .as_ref()
            .and_then(|labels| labels.get("sni"))
            .filter(|sni| !sni.is_empty())
            .cloned();
        for (ip, public_port) in published {
            let host = env_host
                .clone()
                .unwrap_or_else(|| published_host(ip, client.endpoint()));
            let backend = BackendSpec {
                host,
                port: public_port,
                weight: 1,
                priority: 1,
                max_connections: None,
                sni: sni.clone(),
            };
            if seen.insert(backend.target()) {
                backends.push(backend);
            }
        }
    }
    Ok(backends)
}

/// `/containers/json`, with `filters={"label":["LABEL"]}` when a label is configured.
fn list_path(source: &DockerDiscovery) -> String {
    match &source.container_label {
        None => "/containers/json".to_owned(),
        Some(label) => {
            let filters = serde_json::json!({ "label": [label] }).to_string();
            format!("/containers/json?filters={}", client::encode(&filters))
        }
    }
}

/// The address a port is published on, unless that is every interface: then the endpoint's
/// host, or loopback for the local daemon's socket (where gobetween gives `0.0.0.0`, which
/// Linux also dials as the local host).
fn published_host(ip: &str, endpoint: &Endpoint) -> String {
    if !matches!(ip, "" | "0.0.0.0" | "::") {
        return ip.to_owned();
    }
    endpoint
        .host_port()
        .map_or_else(|| "127.0.0.1".to_owned(), |(host, _)| host.to_owned())
}

/// The value of env var `name` in the container, `None` when unset, empty or not readable.
async fn env_host(client: &Client, id: &str, name: &str) -> Option<String> {
    let path = format!("/containers/{}/json", client::encode(id));
    let inspection: Inspection = match get_json(client, &path).await {
        Ok(inspection) => inspection,
        Err(error) => {
            tracing::warn!("{error}; using the published address of container {id}");
            return None;
        }
    };
    let prefix = format!("{name}=");
    // The last definition wins, as in Docker's own reading of an env list.
    inspection
        .config?
        .env?
        .iter()
        .rev()
        .find_map(|entry| entry.strip_prefix(&prefix))
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

async fn get_json<T: serde::de::DeserializeOwned>(client: &Client, path: &str) -> Result<T, Error> {
    let body = client.get(path).await?;
    serde_json::from_slice(&body).map_err(|error| Error::Answer {
        url: client.url(path),
        problem: error.to_string(),
    })
}

async fn client(source: &DockerDiscovery) -> Result<Client, Error> {
    let setup = |problem: String| Error::Setup {
        endpoint: source.endpoint.clone(),
        problem,
    };
    let endpoint = Endpoint::parse(&source.endpoint, source.tls.is_some()).map_err(setup)?;
    let tls = match (&source.tls, &endpoint) {
        (Some(settings), Endpoint::Https { .. }) => Some(
            Tls::load(TlsMaterial {
                ca_file: settings.ca_cert_path.clone(),
                client_cert: settings
                    .client_cert
                    .as_ref()
                    .map(|files| ClientCertificate::Files {
                        cert: files.cert_path.clone(),
                        key: files.key_path.clone(),
                    }),
                // gobetween's Docker client verifies nothing when no CA is given.
                skip_verify: settings.ca_cert_path.is_none(),
                ca_pem: None,
            })
            .await?,
        ),
        _ => None,
    };
    Ok(Client::new(endpoint, tls)?)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::*;

    /// A real dockerd (Debian's `docker.io`) in a network namespace of its own, so its bridge,
    /// iptables rules and published ports stay there; data and socket under a temp dir. The
    /// image is a static busybox (`busybox-static`) imported from a tarball: no registry.
    struct Dockerd {
        dir: PathBuf,
        netns: String,
        daemon: std::process::Child,
    }

    impl Dockerd {
        fn start(test: &str) -> Self {
            let dir = PathBuf::from(format!(
                "/tmp/betwixt-dockerd-{test}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let netns = format!("betwixt-{test}-{}", std::process::id());
            run("ip", &["netns", "add", &netns]);
            run("ip", &["-n", &netns, "link", "set", "lo", "up"]);
            let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
            // nsenter, not `ip netns exec`, which remounts /sys without the cgroups dockerd needs.
            let daemon = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{netns}"))
                .arg("dockerd")
                .args(["--storage-driver", "vfs", "--data-root"])
                .arg(dir.join("root"))
                .arg("--exec-root")
                .arg(dir.join("exec"))
                .arg("--pidfile")
                .arg(dir.join("dockerd.pid"))
                .arg("-H")
                .arg(format!("unix://{}", dir.join("docker.sock").display()))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_err("dockerd (apt-get install docker.io)");
            let dockerd = Self { dir, netns, daemon };
            for _ in 0..120 {
                if dockerd.docker_ok(&["version"]) {
                    return dockerd;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            let log = std::fs::read_to_string(dockerd.dir.join("dockerd.log")).unwrap_or_default();
            panic!("dockerd did not answer within 30 s:\n{log}");
        }

        fn endpoint(&self) -> String {
            format!("unix://{}", self.dir.join("docker.sock").display())
        }

        fn docker_ok(&self, args: &[&str]) -> bool {
            Command::new("/usr/bin/docker")
                .arg("-H")
                .arg(self.endpoint())
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        }

        fn docker(&self, args: &[&str]) {
            let output = Command::new("/usr/bin/docker")
                .arg("-H")
                .arg(self.endpoint())
                .args(args)
                .output()
                .unwrap_or_err("/usr/bin/docker (apt-get install docker.io)");
            assert!(
                output.status.success(),
                "docker {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }

        /// Imports an image holding only a static busybox as `betwixt-busybox:test`.
        fn import_busybox(&self) {
            let root = self.dir.join("image");
            std::fs::create_dir_all(root.join("bin")).unwrap();
            std::fs::copy("/bin/busybox", root.join("bin/busybox"))
                .unwrap_or_err("/bin/busybox (apt-get install busybox-static)");
            let tarball = self.dir.join("image.tar");
            run_path(
                "tar",
                &[
                    Path::new("-C"),
                    &root,
                    Path::new("-cf"),
                    &tarball,
                    Path::new("."),
                ],
            );
            self.docker(&[
                "import",
                &tarball.display().to_string(),
                "betwixt-busybox:test",
            ]);
        }

        fn run_container(&self, name: &str, options: &[&str]) {
            let mut args = vec!["run", "-d", "--name", name];
            args.extend_from_slice(options);
            args.extend_from_slice(&["betwixt-busybox:test", "/bin/busybox", "sleep", "600"]);
            self.docker(&args);
        }
    }

    impl Drop for Dockerd {
        fn drop(&mut self) {
            let names = ["api-1", "api-2", "other", "no-port"];
            let mut args = vec!["rm", "-f"];
            args.extend_from_slice(&names);
            let _ = self.docker_ok(&args);
            let _ = Command::new("kill")
                .arg(self.daemon.id().to_string())
                .status();
            for _ in 0..80 {
                if matches!(self.daemon.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
            let _ = Command::new("ip")
                .args(["netns", "del", &self.netns])
                .status();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    trait OrErr<T> {
        fn unwrap_or_err(self, what: &str) -> T;
    }

    impl<T> OrErr<T> for std::io::Result<T> {
        fn unwrap_or_err(self, what: &str) -> T {
            self.unwrap_or_else(|error| panic!("{what}: {error}"))
        }
    }

    fn run(program: &str, args: &[&str]) {
        let status = Command::new(program)
            .args(args)
            .status()
            .unwrap_or_err(program);
        assert!(status.success(), "{program} {args:?} failed");
    }

    fn run_path(program: &str, args: &[&Path]) {
        let status = Command::new(program)
            .args(args)
            .status()
            .unwrap_or_err(program);
        assert!(status.success(), "{program} {args:?} failed");
    }

    fn source(endpoint: String) -> DockerDiscovery {
        DockerDiscovery {
            endpoint,
            container_label: Some("role=api".into()),
            private_port: 6443,
            host_env_var: None,
            tls: None,
        }
    }

    fn targets(backends: &[BackendSpec]) -> Vec<String> {
        let mut targets: Vec<String> = backends.iter().map(BackendSpec::target).collect();
        targets.sort();
        targets
    }

    /// Ports are the namespace's own, so fixed numbers cannot collide with other tests.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_dockerd_over_its_unix_socket() {
        let dockerd = tokio::task::spawn_blocking(|| {
            let dockerd = Dockerd::start("docker-unix");
            dockerd.import_busybox();
            dockerd.run_container(
                "api-1",
                &[
                    "-l",
                    "role=api",
                    "-l",
                    "sni=m1.k3s",
                    "-p",
                    "16443:6443",
                    "-p",
                    "18080:8080",
                ],
            );
            dockerd.run_container(
                "api-2",
                &[
                    "-l",
                    "role=api",
                    "-e",
                    "BACKEND_HOST=10.9.9.9",
                    "-p",
                    "127.0.0.2:16444:6443",
                ],
            );
            dockerd.run_container("other", &["-l", "role=db", "-p", "16445:6443"]);
            dockerd.run_container("no-port", &["-l", "role=api", "-p", "18081:8080"]);
            dockerd
        })
        .await
        .unwrap();

        let mut source = source(dockerd.endpoint());
        let backends = fetch(&source).await.unwrap();
        // api-1 on every interface (IPv4 and IPv6, listed once): the local daemon's host.
        assert_eq!(targets(&backends), ["127.0.0.1:16443", "127.0.0.2:16444"]);
        let api_1 = backends.iter().find(|b| b.port == 16443).unwrap();
        assert_eq!(api_1.sni.as_deref(), Some("m1.k3s"));
        assert_eq!((api_1.weight, api_1.priority), (1, 1));

        // The env var names api-2's host; api-1 has none and keeps its published address.
        source.host_env_var = Some("BACKEND_HOST".into());
        let backends = fetch(&source).await.unwrap();
        assert_eq!(targets(&backends), ["10.9.9.9:16444", "127.0.0.1:16443"]);

        // Without a label filter every container publishing the private port counts.
        source.container_label = None;
        source.host_env_var = None;
        let backends = fetch(&source).await.unwrap();
        assert_eq!(
            targets(&backends),
            ["127.0.0.1:16443", "127.0.0.1:16445", "127.0.0.2:16444"]
        );
        source.private_port = 8080;
        let backends = fetch(&source).await.unwrap();
        assert_eq!(targets(&backends), ["127.0.0.1:18080", "127.0.0.1:18081"]);

        let missing = format!("unix://{}/missing.sock", dockerd.dir.display());
        let error = fetch(&DockerDiscovery {
            endpoint: missing.clone(),
            ..source
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with(&format!("docker: {missing}/containers/json")),
            "{error}"
        );
        tokio::task::spawn_blocking(move || drop(dockerd))
            .await
            .unwrap();
    }
}
