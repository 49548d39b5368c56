//! betwixt: an L4 TCP load balancer for Kubernetes/k3s API servers, a drop-in replacement for
//! gobetween.
//!
//! # Layout
//! - [`config`]: gobetween's schema, read, parsed and validated into an immutable `Config`.
//! - [`snapshot`]: the runtime view of a config (servers, pools) that connections load.
//! - [`supervisor`]: owns listeners and the published snapshot; reload and graceful shutdown.
//! - [`daemon`]: the process around it: pidfile, signals, reload from the config source.
//! - [`systemd`]: readiness and reload notifications, the watchdog, socket activation.
//! - [`server`]: one listener: accept, access rules, limits, connect with retry, forward.
//! - [`pool`] and [`balance`]: a server's backends and the algorithm that picks among them.
//! - [`backend`] and [`stats`]: per-backend state and lock-free counters.
//! - [`health`]: active checks (one file per kind), passive checks, the up/down state machine.
//! - [`forward`]: moving bytes between client and backend, both directions, half-close.
//! - [`net`]: listener binding and the TCP options of both sides.
//! - [`access`], [`proxy_protocol`]: `[access]` rules and the PROXY v1 header.
//! - [`logging`], [`signal`]: `[logging]` set-up, rate-limited events, signal handling.
//! - [`demo`]: `betwixt demo`, local backends to watch it balance and fail over.
//! - [`api`]: gobetween's REST API and Prometheus metrics, runtime drain/disable of a backend,
//!   and the `betwixt status` client.
#![deny(unsafe_code)]

pub mod access;
pub mod api;
pub mod backend;
pub mod balance;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod forward;
pub mod health;
pub mod logging;
pub mod net;
pub mod pool;
pub mod proxy_protocol;
pub mod server;
pub mod signal;
pub mod snapshot;
pub mod stats;
pub mod supervisor;
pub mod systemd;
