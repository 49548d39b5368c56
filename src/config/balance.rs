//! The `balance` key: gobetween's algorithm names as one enum, so config, logs and the API
//! agree on them. The algorithms themselves are runtime code in [`crate::balance`].

use std::fmt;
use std::str::FromStr;

/// The `balance` key of a server: gobetween's algorithm names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BalanceKind {
    /// Lowest priority group first, then weighted random (gobetween's default).
    #[default]
    Weight,
    /// Rotate over the candidates sorted by `host:port`.
    RoundRobin,
    /// Fewest active connections.
    LeastConn,
    /// Lowest current bytes per second.
    LeastBandwidth,
    /// FNV-1a of the client IP modulo the candidates.
    IpHash,
    /// Rendezvous hashing of the client IP: stable when a backend leaves.
    IpHash1,
}

impl BalanceKind {
    /// Every accepted name, in gobetween's order, for error messages.
    pub const NAMES: [&'static str; 6] = [
        "weight",
        "roundrobin",
        "leastconn",
        "leastbandwidth",
        "iphash",
        "iphash1",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Weight => "weight",
            Self::RoundRobin => "roundrobin",
            Self::LeastConn => "leastconn",
            Self::LeastBandwidth => "leastbandwidth",
            Self::IpHash => "iphash",
            Self::IpHash1 => "iphash1",
        }
    }
}

impl fmt::Display for BalanceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `balance` name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown balance {name:?}; expected one of {}", BalanceKind::NAMES.join(", "))]
pub struct UnknownBalance {
    pub name: String,
}

impl FromStr for BalanceKind {
    type Err = UnknownBalance;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(match name {
            "weight" => Self::Weight,
            "roundrobin" => Self::RoundRobin,
            "leastconn" => Self::LeastConn,
            "leastbandwidth" => Self::LeastBandwidth,
            "iphash" => Self::IpHash,
            "iphash1" => Self::IpHash1,
            _ => {
                return Err(UnknownBalance {
                    name: name.to_owned(),
                });
            }
        })
    }
}
