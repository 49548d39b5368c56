//! The command line's own parts, apart from running the daemon: `betwixt check`'s summary,
//! `betwixt migrate`'s review of differences from gobetween,
//! `betwixt status` (an HTTP client of the REST API) and `betwixt demo` (the library API in
//! front of local backends). They use only betwixt's public library API.

pub mod check;
pub mod client;
pub mod demo;
pub mod migrate;
pub mod node;
pub mod status;
