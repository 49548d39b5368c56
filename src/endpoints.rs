//! The `[api]` and `[metrics]` listeners of the daemon: started with it, changed by reloads,
//! stopped after the sessions drained.
//!
//! Driven from the daemon's main task. A reload that changes `[api]` or `[metrics]` applies
//! the difference: a new bind gets a new listener before the old one stops; other `[api]`
//! settings are swapped in place. Every reload reads the `[api.tls]` files again, so a renewed
//! certificate is picked up by a SIGHUP. A bind or TLS failure on reload is logged and the running
//! listener stays, as a bad reload keeps the old config.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::api::wire::ConfigurationSource;
use crate::api::{Api, ApiSettings};
use crate::config::{ApiConfig, BindAddr, Config, MetricsConfig};
use crate::http::listener::{HttpListener, Site};
use crate::http::tls::TlsError;
use crate::metrics::Metrics;
use crate::net;
use crate::supervisor::Supervisor;

/// An API or metrics listener that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{section}.bind: {bind:?}: {message}")]
    Address {
        section: &'static str,
        bind: String,
        message: String,
    },
    /// The cause is in the message and not a `source()`: logs print the message alone.
    #[error("{section}: cannot listen on {bind}: {cause}")]
    Bind {
        section: &'static str,
        bind: String,
        cause: io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The running API and metrics listeners.
#[derive(Debug)]
pub struct Endpoints {
    supervisor: Arc<Supervisor>,
    config_source: ConfigurationSource,
    api: Option<RunningApi>,
    metrics: Option<RunningMetrics>,
}

#[derive(Debug)]
struct RunningApi {
    config: ApiConfig,
    api: Arc<Api>,
    listener: HttpListener,
}

#[derive(Debug)]
struct RunningMetrics {
    config: MetricsConfig,
    listener: HttpListener,
}

impl Endpoints {
    /// Starts the listeners `config` enables. `config_source` is what `GET /` reports.
    ///
    /// # Errors
    /// A bind address does not resolve or cannot be bound, or a TLS file cannot be used;
    /// nothing is left running then.
    pub fn start(
        config: &Config,
        supervisor: Arc<Supervisor>,
        config_source: ConfigurationSource,
    ) -> Result<Self, EndpointError> {
        let mut endpoints = Self {
            supervisor,
            config_source,
            api: None,
            metrics: None,
        };
        if config.api.enabled {
            endpoints.api = Some(endpoints.start_api(&config.api)?);
        }
        if config.metrics.enabled {
            endpoints.metrics = Some(endpoints.start_metrics(&config.metrics)?);
        }
        endpoints.warn_if_exposed();
        Ok(endpoints)
    }

    /// The address the API listens on, when enabled (useful with port 0).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|api| api.listener.local_addr())
    }

    /// The address the metrics listener listens on, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .map(|metrics| metrics.listener.local_addr())
    }

    /// Applies a reloaded config's `[api]` and `[metrics]`. Failures are logged; the listener
    /// that was running stays.
    pub async fn reconfigure(&mut self, config: &Config) {
        self.reconfigure_api(&config.api).await;
        self.reconfigure_metrics(&config.metrics).await;
        self.warn_if_exposed();
    }

    /// Stops both listeners, letting requests in flight finish.
    pub async fn stop(self) {
        if let Some(api) = self.api {
            api.listener.stop().await;
        }
        if let Some(metrics) = self.metrics {
            metrics.listener.stop().await;
        }
    }

    fn start_api(&self, config: &ApiConfig) -> Result<RunningApi, EndpointError> {
        let settings = ApiSettings::load(config)?;
        let api = Arc::new(Api::new(
            Arc::clone(&self.supervisor),
            self.config_source.clone(),
            settings,
        ));
        let listener = listen("api", &config.bind, Arc::clone(&api))?;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        info!(address = %listener.local_addr(), scheme, "REST API listening");
        Ok(RunningApi {
            config: config.clone(),
            api,
            listener,
        })
    }

    fn start_metrics(&self, config: &MetricsConfig) -> Result<RunningMetrics, EndpointError> {
        let site = Arc::new(Metrics(Arc::clone(&self.supervisor)));
        let listener = listen("metrics", &config.bind, site)?;
        info!(address = %listener.local_addr(), "metrics listening on /metrics");
        Ok(RunningMetrics {
            config: config.clone(),
            listener,
        })
    }

    async fn reconfigure_api(&mut self, config: &ApiConfig) {
        self.api = match self.api.take() {
            None if !config.enabled => None,
            None => self
                .start_api(config)
                .map_err(|error| error!(%error, "REST API not started"))
                .ok(),
            // Unchanged, except that the certificate files may have been renewed in place.
            Some(running) if running.config == *config && config.tls.is_none() => Some(running),
            Some(running) if !config.enabled => {
                running.listener.stop().await;
                info!("REST API stopped");
                None
            }
            Some(running) if running.config.bind == config.bind => {
                Some(self.reconfigure_in_place(running, config))
            }
            Some(running) => {
                let start_new = |endpoints: &Self| endpoints.start_api(config);
                self.rebind(running, start_new).await
            }
        };
    }

    /// Same bind: settings (and the TLS files, read again) swapped without a new socket.
    fn reconfigure_in_place(&self, mut running: RunningApi, config: &ApiConfig) -> RunningApi {
        match ApiSettings::load(config) {
            Ok(settings) => {
                running.api.configure(settings);
                running.config = config.clone();
                info!(tls = config.tls.is_some(), "REST API settings applied");
            }
            Err(error) => error!(%error, "REST API settings not changed"),
        }
        running
    }

    async fn reconfigure_metrics(&mut self, config: &MetricsConfig) {
        self.metrics = match self.metrics.take() {
            None if !config.enabled => None,
            None => self
                .start_metrics(config)
                .map_err(|error| error!(%error, "metrics listener not started"))
                .ok(),
            Some(running) if running.config == *config => Some(running),
            Some(running) if !config.enabled => {
                running.listener.stop().await;
                info!("metrics listener stopped");
                None
            }
            Some(running) => {
                let start_new = |endpoints: &Self| endpoints.start_metrics(config);
                self.rebind(running, start_new).await
            }
        };
    }

    /// Moves a listener to a new bind: the new one starts, then the old one stops. Listeners
    /// are bound with SO_REUSEPORT, so the new one may take the old one's port (`127.0.0.1:P`
    /// to `:P`) while it still runs. When the new one cannot start, the old one stays.
    async fn rebind<T: Running>(
        &self,
        running: T,
        start_new: impl Fn(&Self) -> Result<T, EndpointError>,
    ) -> Option<T> {
        match start_new(self) {
            Ok(new) => {
                running.into_listener().stop().await;
                Some(new)
            }
            Err(error) => {
                error!(%error, "listener not moved; the previous one stays");
                Some(running)
            }
        }
    }

    /// Warns when the API can be reached from other hosts without credentials.
    fn warn_if_exposed(&self) {
        let Some(api) = &self.api else {
            return;
        };
        let address = api.listener.local_addr();
        if exposed(address, api.config.basic_auth.is_some()) {
            warn!(
                %address,
                "the REST API listens beyond loopback without [api.basic_auth]: anyone who can reach it can drain, disable or remove backends and servers"
            );
        }
    }
}

/// Whether an API listening on `address` can be reached from other hosts without
/// credentials: a non-loopback address (a wildcard one included) without basic auth.
fn exposed(address: SocketAddr, basic_auth: bool) -> bool {
    !basic_auth && !address.ip().to_canonical().is_loopback()
}

/// A running API or metrics listener.
trait Running {
    fn into_listener(self) -> HttpListener;
}

impl Running for RunningApi {
    fn into_listener(self) -> HttpListener {
        self.listener
    }
}

impl Running for RunningMetrics {
    fn into_listener(self) -> HttpListener {
        self.listener
    }
}

/// Resolves `bind` and serves `site` on it.
fn listen<S: Site>(
    section: &'static str,
    bind: &str,
    site: Arc<S>,
) -> Result<HttpListener, EndpointError> {
    let address = BindAddr::resolve(bind).map_err(|message| EndpointError::Address {
        section,
        bind: bind.to_owned(),
        message,
    })?;
    let bind_error = |cause| EndpointError::Bind {
        section,
        bind: bind.to_owned(),
        cause,
    };
    // Shared: a reload that moves the API or metrics opens the new listener while the old one
    // may still hold the port. A second betwixt is already refused by its servers' binds.
    let listener =
        net::bind_listener(&address, net::Sharing::WithOwnListener).map_err(bind_error)?;
    HttpListener::serve(listener, site).map_err(bind_error)
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn exposed_means_beyond_loopback_without_basic_auth() {
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        for beyond in [
            "0.0.0.0:8888",
            "[::]:8888",
            "10.0.0.5:8888",
            "[fd00::1]:8888",
        ] {
            assert!(exposed(at(beyond), false), "{beyond}");
            assert!(!exposed(at(beyond), true), "{beyond} with basic auth");
        }
        for loopback in [
            "127.0.0.1:8888",
            "127.0.0.2:1",
            "[::1]:8888",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(!exposed(at(loopback), false), "{loopback}");
        }
    }

    #[test]
    fn a_bind_failure_names_its_cause_once() {
        let error = EndpointError::Bind {
            section: "api",
            bind: "127.0.0.1:8888".into(),
            cause: io::Error::new(io::ErrorKind::AddrInUse, "address in use"),
        };
        assert_eq!(
            error.to_string(),
            "api: cannot listen on 127.0.0.1:8888: address in use"
        );
        assert!(error.source().is_none(), "the cause would print twice");
    }
}
