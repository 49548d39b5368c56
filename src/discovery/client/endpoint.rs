//! Where a discovery API is: `http://`, `https://`, Docker's `tcp://` or a `unix://` socket.

use std::fmt;
use std::path::PathBuf;

/// Where requests go: the scheme's transport and the authority named in `Host` and SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `http://HOST:PORT` (or `tcp://` without TLS).
    Http { host: String, port: u16 },
    /// `https://HOST:PORT` (or `tcp://` with TLS).
    Https { host: String, port: u16 },
    /// `unix:///PATH`: plain HTTP over a unix socket, `Host: localhost` as Docker's CLI sends.
    Unix(PathBuf),
}

impl Endpoint {
    /// Parses `SCHEME://HOST[:PORT][/...]` (any path is dropped: requests give their own);
    /// `tcp` becomes `https` when `tls` is set. Without a port, http is 80 and https 443.
    ///
    /// # Errors
    /// An unknown scheme, an empty host or a bad port, naming `text`.
    pub(crate) fn parse(text: &str, tls: bool) -> Result<Self, String> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            format!("{text:?} has no scheme; expected http://, https://, tcp:// or unix://")
        })?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "unix" if !rest.is_empty() => return Ok(Self::Unix(PathBuf::from(rest))),
            "unix" => return Err(format!("{text:?} names no socket path")),
            "http" => false,
            "https" => true,
            "tcp" => tls,
            other => {
                return Err(format!(
                    "{text:?}: unknown scheme {other:?}; expected http, https, tcp or unix"
                ));
            }
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = split_authority(authority, if secure { 443 } else { 80 })
            .map_err(|problem| format!("{text:?}: {problem}"))?;
        Ok(if secure {
            Self::Https { host, port }
        } else {
            Self::Http { host, port }
        })
    }

    /// The host and port of a TCP endpoint.
    pub(crate) fn host_port(&self) -> Option<(&str, u16)> {
        match self {
            Self::Http { host, port } | Self::Https { host, port } => Some((host, *port)),
            Self::Unix(_) => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bracketed = |host: &str| {
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_owned()
            }
        };
        match self {
            Self::Http { host, port } => write!(f, "http://{}:{port}", bracketed(host)),
            Self::Https { host, port } => write!(f, "https://{}:{port}", bracketed(host)),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// `HOST[:PORT]` or `[V6][:PORT]`.
fn split_authority(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed '[' in the host".to_owned())?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    let port = match port {
        None => default_port,
        Some(text) => text
            .parse::<u16>()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| format!("bad port {text:?}"))?,
    };
    Ok((host.to_owned(), port))
}
