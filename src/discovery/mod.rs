//! Discovery: where a server's backends come from when they are not a static list.
#![allow(
    dead_code,
    reason = "the discovery framework calls these kinds once it is merged"
)]

mod client;
mod consul;
mod docker;
mod kubernetes;
#[cfg(test)]
mod responder;
