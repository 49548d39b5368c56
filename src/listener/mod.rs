//! Listeners: one task per `[servers.NAME]` that takes clients in and hands them to sessions.
//! [`tcp`] accepts connections and lets [`admission`] decide who gets a session; [`udp`]
//! receives datagrams and keeps the session table.

pub(crate) mod admission;
pub(crate) mod tcp;
pub(crate) mod udp;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::snapshot::Snapshot;
pub use tcp::accept_loop;

/// What every listener and session of the process shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The current snapshot; loaded once per accepted connection, or per batch of datagrams.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Every session task, so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// Cancelled when the shutdown grace period is over: remaining sessions close.
    pub close_sessions: CancellationToken,
}
