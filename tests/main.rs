//! End-to-end tests over loopback: in-process backends on ephemeral ports, the balancer in
//! front of them, real sockets in between.

// Helpers outside #[test] functions panic on purpose: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accept_proxy;
mod access_log;
mod api;
mod architecture;
mod balancing;
mod cli;
mod client_limits;
mod compat;
mod config_source;
mod daemon;
mod discovery;
mod discovery_load;
mod failover;
mod fake_apiserver;
mod forwarding;
mod ha;
mod health;
mod limits;
mod memory;
mod node;
mod page;
mod rebalance;
mod reload;
mod replay;
mod resources;
mod sockmap;
// The stand-in for Consul's HTTP API that the unit tests use, shared as is.
#[path = "../src/discovery/responder.rs"]
#[allow(dead_code)]
mod responder;
mod tls;
mod udp;
mod util;
