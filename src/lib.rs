//! betwixt: an L4 TCP load balancer for Kubernetes/k3s API servers, a drop-in replacement for
//! gobetween, as a daemon (the `betwixt` binary) or embedded in another Rust program.
//!
//! # Embedding
//! Build a [`Config`] from a file, a TOML string or a typed [`config::Builder`], start a
//! [`LoadBalancer`] on the caller's tokio runtime, read its [`Report`], reload it, drain a
//! backend, stop it:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use betwixt::{Admin, LoadBalancer, config::Config};
//!
//! let config = Config::from_toml(r#"
//!     [servers.k3s]
//!     bind = "127.0.0.1:6443"
//!     [servers.k3s.discovery]
//!     kind = "static"
//!     static_list = ["10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.13:6443"]
//! "#)?;
//! let balancer = LoadBalancer::start(config).await?;
//! let report = balancer.report();
//! println!("{} backends", report.servers[0].backends.len());
//! balancer.set_backend_admin("k3s", "10.0.0.11:6443", Admin::Draining)?;
//! balancer.stop(Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! Modules import only from layers listed above them (`tests/architecture.rs` checks that
//! there is no cycle):
//! - [`config`]: gobetween's schema, read, parsed and validated into an immutable [`Config`];
//!   a leaf that names no runtime type.
//! - `net`, `tls`, `logging`, `access`, `client_limits`, `proxy_protocol`, `signal`,
//!   `systemd`: sockets, PEM certificates and keys, rustls configs, log set-up, `[access]`
//!   rules, per-client session limits, the PROXY header (sent and read), Unix signals, the
//!   service manager; `acme`: certificates from an ACME CA.
//! - `stats`, `events`, `forward`: lock-free counters, the recent health transitions the
//!   status page shows, and the byte movers (copy, splice).
//! - `backend` -> `balance` -> `pool` -> `snapshot`: the runtime model; one immutable
//!   snapshot behind one `ArcSwap`, backend state carried over by target.
//! - `health`, `discovery`, `rebalance`: check kinds and the task that schedules them; the
//!   tasks that fetch a server's backends from a command, a URL or DNS; the task that closes a
//!   few old sessions of an overloaded backend.
//! - `listener`, `session`: accept (TCP) or receive (UDP), access rules and limits; connect
//!   with retry, replay the first flight when a backend does not answer it, and forward, or
//!   keep one backend socket per UDP client address.
//! - `supervisor`: owns listeners and the published snapshot; reload and graceful shutdown.
//! - [`report`]: what a running balancer reports about itself.
//! - `http`, `api`, `metrics`: HTTP plumbing, gobetween's REST API, Prometheus; [`rest`] is
//!   the API's JSON for clients.
//! - `endpoints`: the `[api]` and `[metrics]` listeners, following reloads.
//! - [`daemon`]: the process: pidfile, signals, reload from the config source, endpoints.
//! - `embed`: the [`LoadBalancer`] handle for programs that embed betwixt.
#![deny(unsafe_code)]

pub(crate) mod access;
pub(crate) mod acme;
pub(crate) mod api;
pub(crate) mod backend;
pub(crate) mod balance;
pub(crate) mod client_limits;
pub mod config;
pub mod daemon;
pub(crate) mod discovery;
mod embed;
pub(crate) mod endpoints;
pub(crate) mod events;
pub(crate) mod forward;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod listener;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod net;
pub(crate) mod pool;
pub(crate) mod proxy_protocol;
pub(crate) mod rebalance;
pub mod report;
pub(crate) mod session;
pub(crate) mod signal;
pub(crate) mod snapshot;
pub(crate) mod stats;
pub(crate) mod supervisor;
pub(crate) mod systemd;
pub mod tls;

pub use config::Config;
pub use embed::LoadBalancer;
pub use endpoints::{EndpointError, Endpoints};
pub use report::{
    Admin, BackendReport, DiscoveryReport, HandshakeFailure, Health, Report, ServerReport,
    SessionEnd, TlsReport, Transition,
};
pub use supervisor::{ReloadSummary, ShutdownSummary, StartError, UnknownBackend};

/// gobetween's REST API as its clients see it (`betwixt status` among them): the JSON of its
/// answers, which also reads gobetween's own, and the `Authorization` value of basic auth.
pub mod rest {
    pub use crate::api::basic_authorization;
    pub use crate::api::wire::{
        Backend, BackendCounters, ConfigurationSource, ProcessInfo, Server, TlsCounters,
    };
}

/// Internals for `benches/pick.rs`, which measures a pick without a running balancer. Not a
/// stable API.
#[doc(hidden)]
pub mod bench {
    pub use crate::backend::{Backend, BackendState};
    pub use crate::pool::Pool;
}
