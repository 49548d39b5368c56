//! Active health checks and what a verdict changes.
//!
//! [`check`] holds the check kinds, one file each: a check connects to one target and returns a
//! verdict, knowing nothing of pools or snapshots. [`monitor`] schedules them: one task per
//! backend runs its check every `interval`, so checks of one backend never overlap, feeds the
//! results to the backend's up/down state machine ([`crate::backend::health`]) and, when a
//! backend goes down, closes its sessions so their clients reconnect through the balancer. It
//! also takes the passive signal from client connects.

pub(crate) mod check;
pub(crate) mod monitor;
