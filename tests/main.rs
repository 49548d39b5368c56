//! End-to-end tests over loopback: in-process backends on ephemeral ports, the balancer in
//! front of them, real sockets in between.

mod api;
mod balancing;
mod cli;
mod daemon;
mod failover;
mod fake_apiserver;
mod forwarding;
mod health;
mod limits;
mod memory;
mod reload;
mod resources;
mod util;
