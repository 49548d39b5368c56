//! Sessions: what happens to one admitted client. [`connect`] reaches a backend (shared by every
//! kind of TCP session); [`tcp`] forwards a plain TCP connection; [`udp`] binds a client
//! address to a backend socket. TLS-terminated sessions are siblings of [`tcp`] that reuse
//! [`connect`].
//!
//! A session runs on its own task, spawned by its listener, and ends at that task's boundary:
//! one debug line and one counter for how it ended, never an error that reaches the listener.

pub(crate) mod connect;
pub(crate) mod tcp;
pub(crate) mod udp;
