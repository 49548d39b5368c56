//! The check kinds: one file each, gobetween's `ping`, `probe`, `exec` and betwixt's `tls`
//! and `https`. A [`Check`] is prepared once per backend (TLS files loaded then, off the
//! runtime workers) and run against a [`Target`] within a timeout; it returns why the backend
//! failed, nothing more.

pub mod exec;
pub mod https;
pub mod ping;
pub mod probe;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::{BackendSpec, CheckKind, ExecCheck, ProbeCheck};
use crate::net;

/// Why a check failed, worded for the "backend DOWN after N failed checks: ..." line.
///
/// A variant that wraps a cause prints it in its own message and does not also return it as
/// its `source()`, so a printer of the whole chain shows the cause once.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
    #[error(transparent)]
    Setup(SetupError),
    #[error("{0}")]
    Io(io::Error),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("status {status}, expected {expected:?}")]
    Status { status: u16, expected: Vec<u16> },
    #[error("answer {got:?} does not match {expected:?}")]
    Mismatch { got: String, expected: String },
    #[error("command said {0:?} (the negative output)")]
    Negative(String),
    #[error("command said {got:?}, expected {positive:?} or {negative:?}")]
    UnexpectedOutput {
        got: String,
        positive: String,
        negative: String,
    },
    #[error("{command:?} printed more than {limit} bytes; a check answers with a short word")]
    OutputTooLong { command: String, limit: usize },
    #[error(
        "not run for host {host:?}: a host starting with '-' would reach {command:?} as an option"
    )]
    OptionLikeHost { command: String, host: String },
    #[error("cannot run {command:?}: {error}")]
    Spawn { command: String, error: io::Error },
}

/// Why a check could not be prepared: a TLS file or setting that cannot be used. Kept by the
/// check task, which fails every run with it until the configuration changes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("TLS set-up: {0}")]
pub struct SetupError(pub String);

impl From<crate::tls::PemError> for SetupError {
    fn from(error: crate::tls::PemError) -> Self {
        Self(error.to_string())
    }
}

/// Where a check connects: a backend's address and the name it expects on TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub resolved: Option<SocketAddr>,
    /// The backend's `sni=` option, a default for the TLS server name.
    pub sni: Option<String>,
}

impl Target {
    pub fn new(spec: &BackendSpec) -> Self {
        Self {
            host: spec.host.clone(),
            port: spec.port,
            resolved: spec.ip_addr(),
            sni: spec.sni.clone(),
        }
    }

    async fn connect(&self) -> Result<TcpStream, CheckError> {
        net::connect_host(self.resolved, &self.host, self.port)
            .await
            .map_err(CheckError::Connect)
    }
}

/// A check ready to run: TLS settings loaded once, not on every run.
#[derive(Debug, Clone)]
pub enum Check {
    Ping,
    Probe(ProbeCheck, Option<tls::Client>),
    Exec(ExecCheck),
    Tls(tls::Client),
    Https(https::Request, tls::Client),
}

impl Check {
    /// Prepares `kind` for `target`; `None` for kind none.
    ///
    /// Reads files (CA, client certificate and key, the system roots): call it off the runtime
    /// workers.
    ///
    /// # Errors
    /// A CA file, client certificate or key cannot be read or used.
    pub fn prepare(kind: &CheckKind, target: &Target) -> Result<Option<Self>, SetupError> {
        use crate::config::ProbeProtocol;
        Ok(Some(match kind {
            CheckKind::None => return Ok(None),
            CheckKind::Ping => Self::Ping,
            CheckKind::Probe(probe) => {
                let client = match &probe.protocol {
                    ProbeProtocol::Tls(settings) => Some(tls::Client::new(settings, target)?),
                    ProbeProtocol::Tcp | ProbeProtocol::Udp => None,
                };
                Self::Probe(probe.clone(), client)
            }
            CheckKind::Exec(exec) => Self::Exec(exec.clone()),
            CheckKind::Tls(settings) => Self::Tls(tls::Client::new(settings, target)?),
            CheckKind::Https(https) => {
                let client = tls::Client::new(&https.tls, target)?;
                Self::Https(https::Request::new(https, client.server_name()), client)
            }
        }))
    }

    /// The kind's name, for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Probe(..) => "probe",
            Self::Exec(_) => "exec",
            Self::Tls(_) => "tls",
            Self::Https(..) => "https",
        }
    }

    /// Runs the check once within `timeout`.
    ///
    /// # Errors
    /// Why the backend failed the check.
    pub async fn run(&self, target: &Target, timeout: Duration) -> Result<(), CheckError> {
        let check = async {
            match self {
                Self::Ping => ping::check(target).await,
                Self::Probe(probe, client) => probe::check(probe, client.as_ref(), target).await,
                Self::Exec(exec) => exec::check(exec, target).await,
                Self::Tls(client) => tls::check(client, target).await,
                Self::Https(request, client) => https::check(request, client, target).await,
            }
        };
        tokio::time::timeout(timeout, check)
            .await
            .unwrap_or(Err(CheckError::Timeout(timeout)))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::io::ErrorKind;

    use super::*;

    /// The message and every `source()` after it, as a chain printer shows them.
    fn chain(error: &dyn Error) -> String {
        let mut shown = error.to_string();
        let mut cause = error.source();
        while let Some(inner) = cause {
            shown = format!("{shown}: {inner}");
            cause = inner.source();
        }
        shown
    }

    #[test]
    fn a_cause_is_printed_once() {
        let refused = || io::Error::from(ErrorKind::ConnectionRefused);
        let errors = [
            CheckError::Connect(refused()),
            CheckError::Handshake(refused()),
            CheckError::Io(refused()),
            CheckError::Spawn {
                command: "/bin/check".to_owned(),
                error: refused(),
            },
        ];
        for error in errors {
            let shown = chain(&error);
            assert_eq!(shown.matches("refused").count(), 1, "{shown}");
            assert_eq!(shown, error.to_string());
        }
    }
}
