//! How to reach and authenticate to the Kubernetes API: a kubeconfig's current context
//! (server, CA, client certificate or bearer token, as files or inline base64 data), or the
//! in-cluster service account.
//!
//! Loaded again at every (re)list, so renewed certificates and an edited kubeconfig are picked
//! up; a token file (the service account's rotates hourly) is read again for every request.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use crate::discovery::client::{
    Client, ClientCertificate, ClientError, Endpoint, Tls, TlsMaterial,
};

/// Where a pod finds its service account.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A pod's view of the API: the service's address from the environment, the CA and token
/// from the mounted secret.
#[derive(Debug, Clone)]
pub(super) struct ServiceAccount {
    pub dir: PathBuf,
    pub host: Option<String>,
    pub port: Option<String>,
}

impl ServiceAccount {
    /// `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT` and the standard mount.
    pub(super) fn from_env() -> Self {
        Self {
            dir: PathBuf::from(SERVICE_ACCOUNT_DIR),
            host: std::env::var("KUBERNETES_SERVICE_HOST").ok(),
            port: std::env::var("KUBERNETES_SERVICE_PORT").ok(),
        }
    }
}

/// A kubeconfig or service account that cannot be used; the message names the file or value.
#[derive(Debug, thiserror::Error)]
pub(super) enum AccessError {
    #[error("kubeconfig {}: {problem}", path.display())]
    Kubeconfig { path: PathBuf, problem: String },
    #[error("in-cluster service account: {0}")]
    ServiceAccount(String),
    #[error("{0}")]
    Client(#[from] ClientError),
}

/// The API's address, TLS and credentials.
#[derive(Debug, Clone)]
pub(super) struct Access {
    pub endpoint: Endpoint,
    tls: Option<Tls>,
    tls_name: Option<String>,
    auth: Auth,
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    Token(String),
    /// Read for every request, since it rotates.
    TokenFile(PathBuf),
    Basic {
        user: String,
        password: String,
    },
}

impl Access {
    /// From `kubeconfig`, else from `service_account`.
    ///
    /// # Errors
    /// A file cannot be read or parsed, or lacks what a connection needs.
    pub(super) async fn load(
        kubeconfig: Option<&Path>,
        service_account: &ServiceAccount,
    ) -> Result<Self, AccessError> {
        let (endpoint, material, tls_name, auth) = match kubeconfig {
            Some(path) => {
                let path = path.to_owned();
                tokio::task::spawn_blocking(move || from_kubeconfig(&path))
                    .await
                    .map_err(|error| AccessError::ServiceAccount(error.to_string()))??
            }
            None => in_cluster(service_account)?,
        };
        let tls = match endpoint {
            Endpoint::Https { .. } => Some(Tls::load(material).await?),
            _ => None,
        };
        Ok(Self {
            endpoint,
            tls,
            tls_name,
            auth,
        })
    }

    /// A client of the API, connecting to `dial` instead when given (keeping the server's
    /// name for TLS).
    ///
    /// # Errors
    /// The token file cannot be read, or a credential cannot be sent as a header.
    pub(super) async fn client(&self, dial: Option<(&str, u16)>) -> Result<Client, AccessError> {
        let mut client = Client::new(self.endpoint.clone(), self.tls.clone())?;
        if let Some((host, port)) = dial {
            client = client.dial(host, port);
        }
        if let Some(name) = &self.tls_name {
            client = client.tls_name(name);
        }
        Ok(match &self.auth {
            Auth::None => client,
            Auth::Token(token) => client.bearer(token)?,
            Auth::TokenFile(path) => {
                let token = tokio::fs::read_to_string(path).await.map_err(|error| {
                    AccessError::ServiceAccount(format!("{}: {error}", path.display()))
                })?;
                if token.trim().is_empty() {
                    return Err(AccessError::ServiceAccount(format!(
                        "{}: the token file is empty",
                        path.display()
                    )));
                }
                client.bearer(&token)?
            }
            Auth::Basic { user, password } => client.basic_auth(user, password)?,
        })
    }
}

type Loaded = (Endpoint, TlsMaterial, Option<String>, Auth);

fn in_cluster(account: &ServiceAccount) -> Result<Loaded, AccessError> {
    let missing = |name: &str| {
        AccessError::ServiceAccount(format!(
            "{name} is not set (outside a pod, set kubernetes_kubeconfig)"
        ))
    };
    let dir = &account.dir;
    let host = account
        .host
        .as_deref()
        .ok_or_else(|| missing("KUBERNETES_SERVICE_HOST"))?;
    let port = account
        .port
        .as_deref()
        .ok_or_else(|| missing("KUBERNETES_SERVICE_PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let endpoint = Endpoint::parse(&format!("https://{authority}"), true)
        .map_err(AccessError::ServiceAccount)?;
    let material = TlsMaterial {
        ca_file: Some(dir.join("ca.crt")),
        ..TlsMaterial::default()
    };
    Ok((endpoint, material, None, Auth::TokenFile(dir.join("token"))))
}

#[derive(Debug, Deserialize)]
struct Kubeconfig {
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
}

#[derive(Debug, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    username: Option<String>,
    password: Option<String>,
    exec: Option<serde_norway::Value>,
    auth_provider: Option<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Debug, Deserialize)]
struct Context {
    cluster: String,
    user: Option<String>,
}

/// The current context of the kubeconfig at `path`; relative file names are relative to it.
fn from_kubeconfig(path: &Path) -> Result<Loaded, AccessError> {
    let fail = |problem: String| AccessError::Kubeconfig {
        path: path.to_owned(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|error| fail(error.to_string()))?;
    let config: Kubeconfig =
        serde_norway::from_str(&text).map_err(|error| fail(error.to_string()))?;
    let current = config
        .current_context
        .filter(|name| !name.is_empty())
        .ok_or_else(|| fail("no current-context".to_owned()))?;
    let context = config
        .contexts
        .iter()
        .find(|context| context.name == current)
        .ok_or_else(|| {
            fail(format!(
                "current-context {current:?} is not among its contexts"
            ))
        })?;
    let cluster = config
        .clusters
        .iter()
        .find(|cluster| cluster.name == context.context.cluster)
        .ok_or_else(|| {
            fail(format!(
                "cluster {:?} is not among its clusters",
                context.context.cluster
            ))
        })?;
    let user = match &context.context.user {
        None => &User::default(),
        Some(name) => {
            &config
                .users
                .iter()
                .find(|user| user.name == *name)
                .ok_or_else(|| fail(format!("user {name:?} is not among its users")))?
                .user
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let cluster = &cluster.cluster;
    let endpoint = Endpoint::parse(&cluster.server, true)
        .map_err(|problem| fail(format!("cluster server: {problem}")))?;
    let decode = |field: &str, data: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|error| fail(format!("{field}: not base64: {error}")))
    };
    let client_cert = match (
        (&user.client_certificate_data, &user.client_certificate),
        (&user.client_key_data, &user.client_key),
    ) {
        ((None, None), (None, None)) => None,
        ((Some(cert), _), (Some(key), _)) => Some(ClientCertificate::Pem {
            cert: decode("client-certificate-data", cert)?,
            key: decode("client-key-data", key)?,
        }),
        ((_, Some(cert)), (_, Some(key))) => Some(ClientCertificate::Files {
            cert: base.join(cert),
            key: base.join(key),
        }),
        ((Some(cert), _), (_, Some(key))) => Some(ClientCertificate::Pem {
            cert: decode("client-certificate-data", cert)?,
            key: std::fs::read(base.join(key))
                .map_err(|error| fail(format!("client-key {key}: {error}")))?,
        }),
        ((_, Some(cert)), (Some(key), _)) => Some(ClientCertificate::Pem {
            cert: std::fs::read(base.join(cert))
                .map_err(|error| fail(format!("client-certificate {cert}: {error}")))?,
            key: decode("client-key-data", key)?,
        }),
        _ => {
            return Err(fail(
                "a client certificate needs both its certificate and its key".to_owned(),
            ));
        }
    };
    let auth = if let Some(token) = user.token.as_deref().filter(|token| !token.is_empty()) {
        Auth::Token(token.to_owned())
    } else if let Some(file) = &user.token_file {
        Auth::TokenFile(base.join(file))
    } else if let Some(user_name) = &user.username {
        Auth::Basic {
            user: user_name.clone(),
            password: user.password.clone().unwrap_or_default(),
        }
    } else {
        Auth::None
    };
    if matches!(auth, Auth::None)
        && client_cert.is_none()
        && (user.exec.is_some() || user.auth_provider.is_some())
    {
        return Err(fail(
            "the user authenticates through a credential plugin (exec or auth-provider), which \
             betwixt does not run; give it a client certificate or a token"
                .to_owned(),
        ));
    }
    let material = TlsMaterial {
        ca_file: cluster
            .certificate_authority
            .as_ref()
            .map(|file| base.join(file)),
        ca_pem: cluster
            .certificate_authority_data
            .as_deref()
            .map(|data| decode("certificate-authority-data", data))
            .transpose()?,
        client_cert,
        skip_verify: cluster.insecure_skip_tls_verify,
    };
    Ok((endpoint, material, cluster.tls_server_name.clone(), auth))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn temp_dir(test: &str) -> PathBuf {
        std::env::temp_dir().join(format!("betwixt-kubeconfig-{test}-{}", std::process::id()))
    }

    #[test]
    fn current_context_with_files_relative_to_the_kubeconfig() {
        let dir = temp_dir("files");
        let path = write(
            &dir,
            "config",
            "apiVersion: v1\nkind: Config\ncurrent-context: b\n\
             clusters:\n- name: one\n  cluster: {server: 'https://10.0.0.1:6443'}\n\
             - name: two\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: pki/ca.pem\n    tls-server-name: kubernetes\n\
             users:\n- name: admin\n  user:\n    client-certificate: pki/admin.pem\n    client-key: pki/admin-key.pem\n\
             contexts:\n- name: a\n  context: {cluster: one, user: admin}\n- name: b\n  context: {cluster: two, user: admin}\n",
        );
        let (endpoint, material, tls_name, auth) = from_kubeconfig(&path).unwrap();
        assert_eq!(endpoint.to_string(), "https://127.0.0.1:6443");
        assert_eq!(material.ca_file, Some(dir.join("pki/ca.pem")));
        assert!(matches!(
            material.client_cert,
            Some(ClientCertificate::Files { ref cert, ref key })
                if *cert == dir.join("pki/admin.pem") && *key == dir.join("pki/admin-key.pem")
        ));
        assert_eq!(tls_name.as_deref(), Some("kubernetes"));
        assert!(matches!(auth, Auth::None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn problems_name_the_file_and_what_is_missing() {
        let dir = temp_dir("bad");
        let cases = [
            ("clusters: []\n", "no current-context"),
            (
                "current-context: x\n",
                "current-context \"x\" is not among its contexts",
            ),
            (
                "current-context: x\ncontexts:\n- {name: x, context: {cluster: c, user: u}}\n\
                 clusters:\n- {name: c, cluster: {server: 'https://h:1'}}\n\
                 users:\n- {name: u, user: {exec: {command: aws}}}\n",
                "the user authenticates through a credential plugin",
            ),
            (
                "current-context: x\ncontexts:\n- {name: x, context: {cluster: c}}\n\
                 clusters:\n- {name: c, cluster: {server: 'https://h:1', certificate-authority-data: '%%%'}}\n",
                "certificate-authority-data: not base64",
            ),
            (
                "current-context: x\ncontexts:\n- {name: x, context: {cluster: c, user: u}}\n\
                 clusters:\n- {name: c, cluster: {server: 'https://h:1'}}\n\
                 users:\n- {name: u, user: {client-certificate: a.pem}}\n",
                "a client certificate needs both its certificate and its key",
            ),
        ];
        for (text, problem) in cases {
            let path = write(&dir, "config", text);
            let message = from_kubeconfig(&path).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("kubeconfig {}: ", path.display())),
                "{message}"
            );
            assert!(message.contains(problem), "{message}");
        }
        let message = from_kubeconfig(&dir.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("No such file"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
