//! `betwixt drain` and `betwixt undrain`: a planned switchover of a two-node (keepalived)
//! pair, through the REST API's `POST /drain` and `POST /undrain`.
//!
//! Draining closes the node's listeners and lets its sessions finish up to a deadline; the
//! node's `/healthz` turns `not ok` once they have, so keepalived's `track_script` hands the
//! virtual address to the peer only when no session is left to cut.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use super::client::{ApiClient, ClientError};
use super::status::StatusOptions;

/// What `/drain` and `/undrain` answer.
#[derive(Debug, Clone, Deserialize)]
pub struct DrainReport {
    pub state: String,
    pub sessions: usize,
    pub deadline_in: Option<String>,
}

impl std::fmt::Display for DrainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.state)?;
        if let Some(left) = &self.deadline_in {
            write!(f, ": {} sessions open, closed in {left}", self.sessions)?;
        }
        Ok(())
    }
}

/// How often `drain --wait` asks again.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

fn client(options: &StatusOptions) -> Result<ApiClient, ClientError> {
    let credentials = options
        .login
        .as_deref()
        .map(|login| (login, options.password.as_deref().unwrap_or("")));
    ApiClient::new(&options.api, credentials, options.ca_cert.as_deref())
}

async fn drain(
    options: &StatusOptions,
    deadline: Duration,
    wait: bool,
) -> Result<DrainReport, ClientError> {
    let client = client(options)?;
    let path = format!("/drain?deadline={}ms", deadline.as_millis());
    let mut report: DrainReport = client.post(&path).await?;
    if !wait {
        return Ok(report);
    }
    println!("{report}");
    // The daemon closes what is left at the deadline; allow it a little longer to say so.
    let polls = (deadline + Duration::from_secs(10)).as_millis() / POLL_INTERVAL.as_millis();
    for _ in 0..polls.max(1) {
        if report.state != "draining" {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        report = client.get("/drain").await?;
    }
    Ok(report)
}

async fn undrain(options: &StatusOptions) -> Result<DrainReport, ClientError> {
    client(options)?.post("/undrain").await
}

fn block_on<T>(
    what: &str,
    future: impl Future<Output = Result<T, ClientError>>,
) -> anyhow::Result<Result<T, ExitCode>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(future).map_err(|error| {
        eprintln!("betwixt {what}: {error}");
        ExitCode::FAILURE
    }))
}

/// `betwixt drain`: prints the node's drain state; exit status 1 when the API refuses.
pub fn run_drain(
    options: &StatusOptions,
    deadline: Duration,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    Ok(match block_on("drain", drain(options, deadline, wait))? {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    })
}

/// `betwixt undrain`.
pub fn run_undrain(options: &StatusOptions) -> anyhow::Result<ExitCode> {
    Ok(match block_on("undrain", undrain(options))? {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    })
}
