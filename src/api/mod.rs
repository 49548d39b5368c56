//! gobetween's REST API and betwixt's runtime backend control, served by an
//! [`HttpListener`](crate::http::listener::HttpListener) on `[api] bind`.
//!
//! Handlers read the supervisor's current snapshot and the live atomics; nothing here is on the
//! data path. Changes to servers (`POST`/`DELETE /servers/NAME`) go through
//! [`Supervisor::update`], the same snapshot swap as a SIGHUP reload, serialised with it.
//! A backend's admin state (drain, disable, enable) is stored in its shared state, which the
//! balancer reads when picking.
//!
//! Per request, [`Api::respond`] answers a CORS preflight, matches the path ([`route`]),
//! checks the `Host` against DNS rebinding ([`browser`]) and basic authentication ([`auth`])
//! on everything but `/ping` and `/healthz`, requires JSON for `POST` and `DELETE`
//! ([`browser`]), and dispatches to [`root`] (or the status page, [`page`], for a browser), [`servers`], [`admin`] or [`node`]. What the API shows of the config has its
//! secrets masked ([`secrets`]).

mod admin;
mod auth;
mod browser;

pub use auth::authorization_value as basic_authorization;
mod clock;
mod cors;
mod node;
mod page;
mod root;
mod route;
mod secrets;
mod servers;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use self::auth::Credentials;
use self::route::{Resolved, Route};
use self::wire::ConfigurationSource;
use crate::config::ApiConfig;
use crate::http::listener::{LocalAddr, Site};
use crate::http::response::{self, Body};
use crate::http::tls::{self, TlsError};
use crate::supervisor::Supervisor;

/// The largest request body accepted (a `POST /servers/NAME`).
const MAX_BODY_BYTES: usize = 1 << 20;
/// Time a client has to send a request body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What `[api]` says about serving requests, besides where to listen.
#[derive(Clone)]
pub struct ApiSettings {
    credentials: Option<Credentials>,
    cors: bool,
    allow_exec: bool,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("basic_auth", &self.credentials.is_some())
            .field("cors", &self.cors)
            .field("allow_exec", &self.allow_exec)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl ApiSettings {
    /// Reads `[api]`, loading the TLS files if there are some.
    ///
    /// # Errors
    /// A TLS file cannot be used.
    pub fn load(config: &ApiConfig) -> Result<Self, TlsError> {
        Ok(Self {
            credentials: config.basic_auth.as_ref().map(Credentials::new),
            cors: config.cors,
            allow_exec: config.allow_exec,
            tls: config.tls.as_ref().map(tls::acceptor).transpose()?,
        })
    }
}

/// The REST API: the supervisor it controls and its current settings.
#[derive(Debug)]
pub struct Api {
    supervisor: Arc<Supervisor>,
    /// Where the daemon reads its config from, shown by `GET /`.
    config_source: ConfigurationSource,
    /// Swapped by a reload that changes `[api]` but not its bind.
    settings: ArcSwap<ApiSettings>,
}

impl Api {
    pub fn new(
        supervisor: Arc<Supervisor>,
        config_source: ConfigurationSource,
        settings: ApiSettings,
    ) -> Self {
        Self {
            supervisor,
            config_source,
            settings: ArcSwap::from_pointee(settings),
        }
    }

    /// Applies new settings to the next requests and connections.
    pub fn configure(&self, settings: ApiSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// Answers one request from `peer`.
    async fn respond(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let settings = self.settings.load_full();
        let origin = settings
            .cors
            .then(|| cors::origin(request.headers()))
            .flatten();
        if let Some(preflight) = cors::preflight(request.method(), origin.as_ref()) {
            return preflight;
        }
        let mut response = self.route(&settings, request, peer).await;
        if let Some(origin) = &origin {
            cors::decorate(&mut response, origin);
        }
        response
    }

    async fn route(
        &self,
        settings: &ApiSettings,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let route = match route::resolve(request.method(), request.uri().path()) {
            Resolved::Found(route) => route,
            Resolved::MethodNotAllowed(allow) => return method_not_allowed(allow),
            Resolved::NotFound => {
                return response::text(StatusCode::NOT_FOUND, "404 page not found");
            }
        };
        if let Some(refusal) = refusal(settings, &route, &request) {
            let path = request.uri().path();
            debug!(client = %peer, path, status = %refusal.status(), "API request refused");
            return refusal;
        }
        if request.method() == Method::GET {
            debug!(client = %peer, path = request.uri().path(), "API request");
        } else {
            info!(client = %peer, method = %request.method(), path = request.uri().path(), "API request");
        }
        self.dispatch(settings, route, request).await
    }

    async fn dispatch(
        &self,
        settings: &ApiSettings,
        route: Route,
        request: Request<Incoming>,
    ) -> Response<Body> {
        let supervisor = &self.supervisor;
        match route {
            Route::Ping => response::text(StatusCode::OK, "OK"),
            Route::Healthz => node::healthz(supervisor),
            Route::DrainState => node::state(supervisor),
            Route::Drain => node::drain(supervisor, request.uri().query()).await,
            Route::Undrain => node::undrain(supervisor),
            Route::Root if page::wants_html(request.headers()) => page::html(),
            Route::Root => root::info(supervisor, &self.config_source),
            Route::Status => page::status(supervisor),
            Route::Dump => root::dump(supervisor, request.uri().query()),
            Route::ListServers => servers::list(supervisor),
            Route::GetServer(name) => servers::get(supervisor, &name),
            Route::ServerStats(name) => servers::stats(supervisor, &name),
            Route::CreateServer(name) => match read_body(request).await {
                Ok(body) => servers::create(supervisor, &name, &body, settings.allow_exec).await,
                Err(refusal) => refusal,
            },
            Route::DeleteServer(name) => servers::delete(supervisor, &name).await,
            Route::Admin {
                server,
                target,
                action,
            } => admin::apply(supervisor, &server, &target, action),
        }
    }
}

impl Site for Api {
    fn tls(&self) -> Option<TlsAcceptor> {
        self.settings.load().tls.clone()
    }

    async fn respond(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        Api::respond(self, request, peer).await
    }
}

/// The answer to a request that fails a check before it is served (`Host`, credentials,
/// content type), if it does.
fn refusal(
    settings: &ApiSettings,
    route: &Route,
    request: &Request<Incoming>,
) -> Option<Response<Body>> {
    if route.is_public() {
        return None;
    }
    // Without the listener's mark (which it always sets), judge as on loopback: strictest.
    let local = request.extensions().get::<LocalAddr>().map_or(
        SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
        |local| local.0,
    );
    let headers = request.headers();
    browser::host_refusal(headers, local, settings.credentials.is_some())
        .or_else(|| {
            let credentials = settings.credentials.as_ref()?;
            (!credentials.allows(headers)).then(auth::challenge)
        })
        .or_else(|| browser::content_type_refusal(request.method(), headers))
}

/// The whole body, up to [`MAX_BODY_BYTES`] within [`BODY_TIMEOUT`].
async fn read_body(request: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES).collect();
    match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) => Err(response::error(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body (at most {MAX_BODY_BYTES} bytes): {error}"),
        )),
        Err(_) => Err(response::error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
        )),
    }
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = response::text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}
