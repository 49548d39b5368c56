//! betwixt: an L4 TCP load balancer for Kubernetes/k3s API servers, a drop-in replacement for
//! gobetween.
//!
//! # Layout
//! - [`config`]: gobetween's schema, read, parsed and validated into an immutable `Config`.
//! - [`balance`]: one algorithm per file, picked at run time from the config.
#![deny(unsafe_code)]

pub mod balance;
pub mod config;
