//! Certificates from an ACME CA (Let's Encrypt, or any RFC 8555 server) for `[tls]
//! acme_hosts`, as gobetween's `[acme]` does: HTTP-01 challenges answered on `http_bind`, the
//! account and certificates kept in `cache_dir`, each certificate renewed once it is
//! `renew_after` old, without a restart.
//!
//! One task per balancer ([`Acme::reconcile`], called by the supervisor after every start and
//! reload) runs the challenge listener and walks the hosts: a cached certificate young enough
//! is installed as it is, any other host gets a new order. Certificates go into the snapshot's
//! [`AcmeCertificates`], where the handshakes of every server listing the host find them.

mod challenge;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{AcmeSettings, Config};
use crate::tls::{self, AcmeCertificates};

/// The longest wait between two looks at the certificates' ages.
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// The wait before trying a host again after a failed order.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);
/// How long one order may take (challenges validated, certificate issued).
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Something that kept a host from getting its certificate.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("{host}: the CA answered: {error}")]
    Ca {
        host: String,
        error: instant_acme::Error,
    },
    #[error("{host}: the CA offered no HTTP-01 challenge")]
    NoHttpChallenge { host: String },
    #[error("{host}: the order ended {status:?}")]
    Order { host: String, status: OrderStatus },
    #[error("{}: {error}", path.display())]
    Cache {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{host}: the certificate cannot be used: {error}")]
    Certificate {
        host: String,
        error: tls::TlsSetupError,
    },
}

/// The running ACME task, if the config has `acme_hosts`.
#[derive(Debug, Default)]
pub struct Acme {
    running: Mutex<Option<(AcmeSettings, CancellationToken)>>,
}

impl Acme {
    /// Starts, restarts or stops the task so that it serves what `config` asks for. Hosts of
    /// every server are merged; `[acme]` is one table, so the rest of the settings agree.
    pub fn reconcile(&self, config: &Config, store: &Arc<AcmeCertificates>) {
        let wanted = wanted(config);
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if running.as_ref().map(|(settings, _)| settings) == wanted.as_ref() {
            return;
        }
        if let Some((_, stop)) = running.take() {
            stop.cancel();
        }
        if let Some(settings) = wanted {
            let stop = CancellationToken::new();
            tokio::spawn(run(settings.clone(), Arc::clone(store), stop.clone()));
            *running = Some((settings, stop));
        }
    }

    /// Stops the task.
    pub fn stop(&self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, stop)) = running.take() {
            stop.cancel();
        }
    }
}

/// Every server's `acme_hosts` in one set of settings.
fn wanted(config: &Config) -> Option<AcmeSettings> {
    let mut merged: Option<AcmeSettings> = None;
    let all = config.servers.values();
    for acme in all.filter_map(|server| server.tls.as_ref()?.acme.as_ref()) {
        match &mut merged {
            None => merged = Some(acme.clone()),
            Some(merged) => merged.hosts.extend(acme.hosts.iter().cloned()),
        }
    }
    if let Some(merged) = &mut merged {
        merged.hosts.sort();
        merged.hosts.dedup();
    }
    merged
}

async fn run(settings: AcmeSettings, store: Arc<AcmeCertificates>, stop: CancellationToken) {
    let listener = match tokio::net::TcpListener::bind(settings.http_bind.addr).await {
        Ok(listener) => listener,
        Err(error) => {
            error!(bind = %settings.http_bind.text, %error, "ACME: cannot listen for HTTP-01 challenges; no certificate will be obtained");
            return;
        }
    };
    tokio::spawn(challenge::serve(listener, Arc::clone(&store), stop.clone()));
    let check_interval =
        (settings.renew_after / 4).clamp(Duration::from_secs(1), MAX_CHECK_INTERVAL);
    loop {
        let mut wait = check_interval;
        for host in &settings.hosts {
            let ensured = tokio::select! {
                () = stop.cancelled() => return,
                ensured = ensure(&settings, host, &store) => ensured,
            };
            if let Err(error) = ensured {
                warn!(%error, retry_in = ?RETRY_AFTER_FAILURE, "ACME: no new certificate");
                wait = wait.min(RETRY_AFTER_FAILURE);
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Makes sure `host` has a certificate younger than `renew_after` in `store`.
async fn ensure(
    settings: &AcmeSettings,
    host: &str,
    store: &AcmeCertificates,
) -> Result<(), AcmeError> {
    let cert_path = settings.cache_dir.join(format!("{host}.crt"));
    let key_path = settings.cache_dir.join(format!("{host}.key"));
    let fresh = age(&cert_path).is_some_and(|age| age < settings.renew_after);
    if fresh {
        if store.get(host).is_none() {
            install(host, &cert_path, &key_path, store).await?;
            info!(host, "ACME: certificate loaded from the cache");
        }
        return Ok(());
    }
    let (chain, key) = order(settings, host, store).await?;
    let cache_error = |path: &Path| {
        let path = path.to_owned();
        move |error| AcmeError::Cache { path, error }
    };
    tokio::fs::create_dir_all(&settings.cache_dir)
        .await
        .map_err(cache_error(&settings.cache_dir))?;
    write_private(&key_path, &key)
        .await
        .map_err(cache_error(&key_path))?;
    tokio::fs::write(&cert_path, chain)
        .await
        .map_err(cache_error(&cert_path))?;
    install(host, &cert_path, &key_path, store).await?;
    info!(host, "ACME: certificate obtained");
    Ok(())
}

/// How long ago `path` was written; `None` when it cannot be read.
fn age(path: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    SystemTime::now().duration_since(modified).ok()
}

async fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    let mut file = options.open(path).await?;
    tokio::io::AsyncWriteExt::write_all(&mut file, text.as_bytes()).await
}

/// Reads the cached files into `store` for new handshakes.
async fn install(
    host: &str,
    cert_path: &Path,
    key_path: &Path,
    store: &AcmeCertificates,
) -> Result<(), AcmeError> {
    let (cert_path, key_path) = (cert_path.to_owned(), key_path.to_owned());
    let loaded = tokio::task::spawn_blocking(move || tls::certified_key(&cert_path, &key_path));
    let certified = loaded
        .await
        .map_err(|error| AcmeError::Cache {
            path: PathBuf::from(host),
            error: std::io::Error::other(error),
        })?
        .map_err(|error| AcmeError::Certificate {
            host: host.to_owned(),
            error,
        })?;
    store.install(host, Arc::new(certified));
    Ok(())
}

/// One order for `host`, its HTTP-01 challenge answered through `store`: the certificate
/// chain and its private key, PEM.
async fn order(
    settings: &AcmeSettings,
    host: &str,
    store: &AcmeCertificates,
) -> Result<(String, String), AcmeError> {
    let ca = |error| AcmeError::Ca {
        host: host.to_owned(),
        error,
    };
    let account = account(settings).await.map_err(|error| match error {
        AccountError::Ca(error) => ca(error),
        AccountError::Cache(error) => error,
    })?;
    let identifiers = [Identifier::Dns(host.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(ca)?;
    let mut tokens = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(ca)?;
        if authorization.status != AuthorizationStatus::Pending {
            continue;
        }
        let mut challenge = authorization
            .challenge(ChallengeType::Http01)
            .ok_or_else(|| AcmeError::NoHttpChallenge {
                host: host.to_owned(),
            })?;
        store.add_challenge(&challenge.token, challenge.key_authorization().as_str());
        tokens.push(challenge.token.clone());
        challenge.set_ready().await.map_err(ca)?;
    }
    let retries = RetryPolicy::default().timeout(ORDER_TIMEOUT);
    let status = order.poll_ready(&retries).await;
    for token in &tokens {
        store.remove_challenge(token);
    }
    let status = status.map_err(ca)?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::Order {
            host: host.to_owned(),
            status,
        });
    }
    let key = order.finalize().await.map_err(ca)?;
    let chain = order.poll_certificate(&retries).await.map_err(ca)?;
    Ok((chain, key))
}

enum AccountError {
    Ca(instant_acme::Error),
    Cache(AcmeError),
}

/// The account of `cache_dir` for this directory, created (and cached) the first time.
async fn account(settings: &AcmeSettings) -> Result<Account, AccountError> {
    let builder = match &settings.directory_ca_cert_path {
        Some(roots) => Account::builder_with_root(roots),
        None => Account::builder(),
    }
    .map_err(AccountError::Ca)?;
    let path = settings
        .cache_dir
        .join(account_file(&settings.directory_url));
    if let Ok(text) = tokio::fs::read_to_string(&path).await
        && let Ok(credentials) = serde_json::from_str::<AccountCredentials>(&text)
    {
        return builder
            .from_credentials(credentials)
            .await
            .map_err(AccountError::Ca);
    }
    let new_account = NewAccount {
        contact: &[],
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = builder
        .create(&new_account, settings.directory_url.clone(), None)
        .await
        .map_err(AccountError::Ca)?;
    let cache = |error| {
        AccountError::Cache(AcmeError::Cache {
            path: path.clone(),
            error,
        })
    };
    let text = serde_json::to_string(&credentials).map_err(|error| cache(error.into()))?;
    tokio::fs::create_dir_all(&settings.cache_dir)
        .await
        .map_err(cache)?;
    write_private(&path, &text).await.map_err(cache)?;
    Ok(account)
}

/// `account-HOST.json` for the directory's host, so one cache serves several CAs.
fn account_file(directory_url: &str) -> String {
    let name: String = directory_url
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("account-{name}.json")
}
