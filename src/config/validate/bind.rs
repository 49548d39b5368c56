//! Listen addresses: `host:port` to a [`BindAddr`], and whether two listeners overlap.
//!
//! The host may be empty (`":6443"`), `0.0.0.0`, an IP address, `[IPv6]`, or a DNS name, which
//! is resolved here (the first IPv4 address it has, else the first address), as Go's
//! `net.Listen` does. Port 0 is allowed: the kernel picks one, which tests use.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use super::{Key, Report};
use crate::config::BindAddr;

/// Parses and resolves a bind address, reporting a problem under `key`.
pub(super) fn parse_bind(report: &mut Report<'_>, key: &Key, text: &str) -> Option<BindAddr> {
    resolve(text)
        .map_err(|problem| {
            report.error(
                key,
                format!("{text:?} is not a valid listen address: {problem}"),
            );
        })
        .ok()
}

fn resolve(text: &str) -> Result<BindAddr, String> {
    resolve_with(text, lookup)
}

/// [`resolve`] with the DNS lookup passed in, so tests need no resolver.
fn resolve_with(
    text: &str,
    lookup: impl FnOnce(&str, u16) -> Result<SocketAddr, String>,
) -> Result<BindAddr, String> {
    let (host, port, bracketed) = split(text)?;
    let port = parse_port(port)?;
    let wildcard = !bracketed && (host.is_empty() || host == "0.0.0.0");
    let addr = if wildcard {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
    } else if let Some(ip) = host
        .parse::<IpAddr>()
        .ok()
        .filter(|ip| ip.is_ipv6() == bracketed)
    {
        SocketAddr::new(ip, port)
    } else if bracketed {
        return Err(format!("[{host}] is not an IPv6 address"));
    } else {
        lookup(host, port)?
    };
    Ok(BindAddr {
        text: text.to_owned(),
        addr,
        dual_stack: wildcard,
    })
}

/// A port number, or a TCP service name from the services database (`http`), as Go's
/// `net.Listen` takes it.
fn parse_port(port: &str) -> Result<u16, String> {
    let is_number = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    let found = if is_number {
        port.parse().ok()
    } else {
        crate::config::services::tcp_port(port)
    };
    found.ok_or_else(|| {
        format!("port {port:?} is not a number from 0 to 65535 or a known TCP service name")
    })
}

/// `(host, port, bracketed)`.
fn split(text: &str) -> Result<(&str, &str, bool), String> {
    const FORM: &str = "expected \"host:port\", such as \":6443\" or \"0.0.0.0:6443\"";
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(FORM)?;
        let port = after.strip_prefix(':').ok_or(FORM)?;
        return Ok((host, port, true));
    }
    let (host, port) = text.rsplit_once(':').ok_or(FORM)?;
    if host.contains(':') {
        return Err("write an IPv6 address in brackets, like \"[::1]:6443\"".to_owned());
    }
    Ok((host, port, false))
}

/// Resolves a DNS name, preferring an IPv4 address like Go's `net.Listen`.
fn lookup(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {host:?}: {error}"))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

impl BindAddr {
    /// Parses and resolves a listen address as validation does, for a listener started from an
    /// already validated config (the API's and the metrics').
    ///
    /// # Errors
    /// The text is not `host:port`, or the host does not resolve; the message says which.
    pub fn resolve(text: &str) -> Result<BindAddr, String> {
        resolve(text)
    }

    /// Whether two listeners would collide: the same non-zero port and the same address, or
    /// either one a wildcard (empty host, `0.0.0.0`, `::`), which takes every address.
    pub fn conflicts_with(&self, other: &BindAddr) -> bool {
        let (a, b) = (self.addr, other.addr);
        let wildcard = |bind: &BindAddr| bind.dual_stack || bind.addr.ip().is_unspecified();
        a.port() != 0
            && a.port() == b.port()
            && (a.ip() == b.ip() || wildcard(self) || wildcard(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Knows `localhost` only, like a resolver with nothing but `/etc/hosts`.
    fn hosts_file(host: &str, port: u16) -> Result<SocketAddr, String> {
        match host {
            "localhost" => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
            _ => Err(format!("cannot resolve {host:?}: no such host")),
        }
    }

    fn bind(text: &str) -> BindAddr {
        match resolve_with(text, hosts_file) {
            Ok(bind) => bind,
            Err(problem) => panic!("{text}: {problem}"),
        }
    }

    #[test]
    fn parses_gobetween_forms() {
        let table = [
            (":6443", "0.0.0.0:6443", true),
            ("0.0.0.0:6443", "0.0.0.0:6443", true),
            ("10.0.0.1:6443", "10.0.0.1:6443", false),
            ("127.0.0.1:0", "127.0.0.1:0", false),
            ("[::1]:6443", "[::1]:6443", false),
            ("[::]:6443", "[::]:6443", false),
            ("localhost:3000", "127.0.0.1:3000", false),
        ];
        for (text, addr, dual_stack) in table {
            let parsed = bind(text);
            assert_eq!(parsed.addr.to_string(), addr, "{text}");
            assert_eq!(parsed.dual_stack, dual_stack, "{text}");
            assert_eq!(parsed.text, text);
        }
    }

    #[test]
    fn refuses_bad_forms() {
        let table = [
            ("6443", "expected \"host:port\""),
            ("0.0.0.0", "expected \"host:port\""),
            (":", "port \"\""),
            (":65536", "port \"65536\""),
            (":no-such-service", "port \"no-such-service\""),
            ("::1:6443", "brackets"),
            ("[::1]", "expected \"host:port\""),
            ("[10.0.0.1]:1", "[10.0.0.1] is not an IPv6 address"),
            ("[nope]:1", "not an IPv6 address"),
            (
                "no-such-host.invalid:1",
                "cannot resolve \"no-such-host.invalid\"",
            ),
        ];
        for (text, expected) in table {
            let problem = resolve_with(text, hosts_file).expect_err(text);
            assert!(problem.contains(expected), "{text}: {problem}");
        }
    }

    #[test]
    fn conflicts() {
        let table = [
            (":6443", "10.0.0.1:6443", true),
            ("0.0.0.0:6443", "[::1]:6443", true),
            ("[::]:6443", "10.0.0.1:6443", true),
            ("10.0.0.1:6443", "10.0.0.1:6443", true),
            ("10.0.0.1:6443", "10.0.0.2:6443", false),
            (":6443", ":6444", false),
            (":0", ":0", false),
            ("127.0.0.1:0", "127.0.0.1:0", false),
        ];
        for (a, b, expected) in table {
            assert_eq!(bind(a).conflicts_with(&bind(b)), expected, "{a} {b}");
            assert_eq!(bind(b).conflicts_with(&bind(a)), expected, "{b} {a}");
        }
    }
}
