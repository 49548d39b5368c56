//! Sessions: what happens to one admitted client. [`opening`] terminates TLS or reads the
//! ClientHello (SNI); [`connect`] reaches a backend; [`first_flight`] waits for its first
//! response and replays the client's first bytes elsewhere when none comes; [`tcp`] runs a TCP
//! session of any kind (plain, TLS-terminated, SNI passthrough) through them, establishing and
//! then relaying ([`two_phase`]); [`udp`] binds a client address to a backend socket.
//!
//! A session runs on its own task, spawned by its listener, and ends at that task's boundary:
//! one debug line and one counter for how it ended, never an error that reaches the listener.

pub(crate) mod connect;
pub(crate) mod first_flight;
pub(crate) mod opening;
pub(crate) mod tcp;
mod two_phase;
pub(crate) mod udp;
