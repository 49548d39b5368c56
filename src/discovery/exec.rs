//! `kind = "exec"`: runs `exec_command` (an argv array, no shell) and reads one backend per
//! line of its standard output, in the `static_list` grammar.
//!
//! A non-zero exit, output that is not UTF-8 or longer than [`MAX_OUTPUT`], or a line that is
//! not a backend fails the fetch. As with the exec health check, the command runs in its own
//! process group with only `PATH` in its environment, and the whole group is killed when the
//! fetch is dropped (its timeout, or the server's discovery stopping).

use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::lines::{LineError, static_lines};
use crate::config::{BackendSpec, ExecDiscovery};
use crate::health::check::exec::DEFAULT_PATH;
use crate::health::check::exec::process_group::Killer;

/// The most output read: a backend list of thousands of lines fits many times over.
pub const MAX_OUTPUT: usize = 4 * 1024 * 1024;

/// How much of the command's standard error a failure quotes.
const QUOTED_STDERR: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message ends with the system error, so it is not also a `source()`.
    #[error("cannot run {program:?}: {error}")]
    Run {
        program: String,
        error: std::io::Error,
    },
    #[error("{program:?} {status}{stderr}")]
    Exit {
        program: String,
        status: ExitStatus,
        /// `: ` and the start of what it wrote to standard error, or nothing.
        stderr: String,
    },
    #[error("{program:?} printed more than {MAX_OUTPUT} bytes")]
    TooLong { program: String },
    #[error("{program:?} printed something that is not UTF-8")]
    NotText { program: String },
    #[error("{program:?} output {lines}")]
    Line { program: String, lines: LineError },
}

pub(crate) async fn fetch(source: &ExecDiscovery) -> Result<Vec<BackendSpec>, Error> {
    let Some((program, args)) = source.command.split_first() else {
        return Ok(Vec::new());
    };
    let run_error = |error| Error::Run {
        program: program.clone(),
        error,
    };
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(run_error)?;
    // Dropped on an early return or when the fetch itself is dropped: the group dies with it.
    let group = child.id().map(Killer::new);
    let (stdout, stderr) = tokio::join!(
        read_up_to(child.stdout.take(), MAX_OUTPUT + 1),
        keep_start(child.stderr.take(), QUOTED_STDERR),
    );
    let (stdout, stderr) = (stdout.map_err(run_error)?, stderr.map_err(run_error)?);
    if stdout.len() > MAX_OUTPUT {
        return Err(Error::TooLong {
            program: program.clone(),
        });
    }
    let status = child.wait().await.map_err(run_error)?;
    if let Some(group) = group {
        group.disarm();
    }
    if !status.success() {
        let said = String::from_utf8_lossy(&stderr);
        let said = said.trim();
        return Err(Error::Exit {
            program: program.clone(),
            status,
            stderr: if said.is_empty() {
                String::new()
            } else {
                format!(": {}", said.replace('\n', " "))
            },
        });
    }
    let text = String::from_utf8(stdout).map_err(|_| Error::NotText {
        program: program.clone(),
    })?;
    static_lines(&text).map_err(|lines| Error::Line {
        program: program.clone(),
        lines,
    })
}

/// At most `limit` bytes of a pipe; the rest is left unread.
async fn read_up_to(
    pipe: Option<impl AsyncRead + Unpin>,
    limit: usize,
) -> std::io::Result<Vec<u8>> {
    let mut read = Vec::new();
    if let Some(pipe) = pipe {
        pipe.take(limit as u64).read_to_end(&mut read).await?;
    }
    Ok(read)
}

/// The first `limit` bytes of a pipe read to its end, so a command writing much to standard
/// error is not blocked on a full pipe.
async fn keep_start(
    pipe: Option<impl AsyncRead + Unpin>,
    limit: usize,
) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return Ok(kept);
    };
    let mut buffer = [0u8; 4096];
    loop {
        let read = pipe.read(&mut buffer).await?;
        if read == 0 {
            return Ok(kept);
        }
        let room = limit.saturating_sub(kept.len()).min(read);
        kept.extend_from_slice(&buffer[..room]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> ExecDiscovery {
        ExecDiscovery {
            command: ["sh", "-c", script].map(str::to_owned).to_vec(),
        }
    }

    #[tokio::test]
    async fn lines_become_backends_and_failures_say_why() {
        let backends = fetch(&shell(
            "echo 10.0.0.1:6443; echo; echo '10.0.0.2:6443 weight=2'",
        ))
        .await
        .unwrap();
        let targets: Vec<String> = backends.iter().map(BackendSpec::target).collect();
        assert_eq!(targets, ["10.0.0.1:6443", "10.0.0.2:6443"]);

        let failed = fetch(&shell("echo 10.0.0.1:6443; echo nope >&2; exit 3"))
            .await
            .unwrap_err();
        assert_eq!(failed.to_string(), "\"sh\" exit status: 3: nope");
        let bad_line = fetch(&shell("echo 10.0.0.1:6443; echo '10.0.0.2:6443 weigth=2'"))
            .await
            .unwrap_err();
        assert!(
            bad_line.to_string().starts_with(
                "\"sh\" output line 2: \"10.0.0.2:6443 weigth=2\" is not a valid backend"
            ),
            "{bad_line}"
        );
        let missing = ExecDiscovery {
            command: vec!["/nonexistent/masters".into()],
        };
        let error = fetch(&missing).await.unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot run \"/nonexistent/masters\": "),
            "{error}"
        );
    }

    #[tokio::test]
    async fn endless_output_fails_at_the_limit() {
        let error = fetch(&ExecDiscovery {
            command: vec!["yes".into()],
        })
        .await
        .unwrap_err();
        assert!(matches!(error, Error::TooLong { .. }), "{error}");
    }
}
