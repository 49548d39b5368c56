//! gobetween's `exec`: runs `COMMAND HOST PORT` and compares what it prints. `COMMAND` is one
//! program path from the config file, never split on spaces (see [`ExecCheck::command`]).
//!
//! The output is compared after trimming the trailing newline (gobetween compares it as is,
//! so `echo 1` never matched: its issue #83). The command runs in its own process group, and
//! the whole group is killed when the check times out, so a script's own children (a `curl`,
//! a `sleep`) do not outlive it.
//!
//! Unlike gobetween, the command gets a clean environment: only `PATH` (the daemon's, else
//! [`DEFAULT_PATH`]), so the daemon's variables (proxy settings, credentials handed to it by a
//! service manager) do not reach scripts; a script needing more sets it itself. At most
//! [`MAX_OUTPUT`] bytes of its output are read: a command printing more fails the check and is
//! killed. A host starting with `-` is refused without running the command: it would reach the
//! command as an option, and a `--` before it would break gobetween's `COMMAND HOST PORT`.

use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::{CheckError, Target};
use crate::config::ExecCheck;

/// The most output read from a command. A verdict is a word; reading on would let a runaway
/// command grow the daemon's memory until the check's timeout.
pub const MAX_OUTPUT: usize = 64 * 1024;

/// The `PATH` a command gets when the daemon has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How much of an unexpected output a failure message quotes.
const QUOTED_OUTPUT: usize = 200;

pub async fn check(exec: &ExecCheck, target: &Target) -> Result<(), CheckError> {
    let command = || exec.command.join(" ");
    let spawn_error = |error| CheckError::Spawn {
        command: command(),
        error,
    };
    let Some((program, args)) = exec.command.split_first() else {
        return Err(spawn_error(std::io::Error::other("empty command")));
    };
    if target.host.starts_with('-') {
        return Err(CheckError::OptionLikeHost {
            command: command(),
            host: target.host.clone(),
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    let mut child = Command::new(program)
        .args(args)
        .arg(&target.host)
        .arg(target.port.to_string())
        .env_clear()
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    // Dropped when the check returns early or its timeout drops this future: the group dies
    // with it.
    let group = child.id().map(process_group::Killer::new);
    let mut output = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        stdout
            .take(MAX_OUTPUT as u64 + 1)
            .read_to_end(&mut output)
            .await
            .map_err(spawn_error)?;
    }
    if output.len() > MAX_OUTPUT {
        return Err(CheckError::OutputTooLong {
            command: command(),
            limit: MAX_OUTPUT,
        });
    }
    child.wait().await.map_err(spawn_error)?;
    if let Some(group) = group {
        group.disarm();
    }
    let stdout = String::from_utf8_lossy(&output);
    let said = stdout.trim_end_matches(['\n', '\r']);
    if said == exec.positive_output {
        Ok(())
    } else if said == exec.negative_output {
        Err(CheckError::Negative(said.to_owned()))
    } else {
        Err(CheckError::UnexpectedOutput {
            got: quoted(said),
            positive: exec.positive_output.clone(),
            negative: exec.negative_output.clone(),
        })
    }
}

/// The start of an unexpected output, short enough for one log line.
fn quoted(said: &str) -> String {
    match said.char_indices().nth(QUOTED_OUTPUT) {
        Some((end, _)) => format!("{}...", &said[..end]),
        None => said.to_owned(),
    }
}

/// Also used by discovery's `exec` kind.
#[allow(unsafe_code)]
pub(crate) mod process_group {
    /// Kills a process group on drop unless disarmed.
    pub(crate) struct Killer {
        group: Option<libc::pid_t>,
    }

    impl Killer {
        /// `leader` is the pid of a child started with `process_group(0)`: its group id.
        pub(crate) fn new(leader: u32) -> Self {
            Self {
                group: libc::pid_t::try_from(leader).ok(),
            }
        }

        /// The command finished by itself; its group may already be gone or reused.
        pub(crate) fn disarm(mut self) {
            self.group = None;
        }
    }

    impl Drop for Killer {
        fn drop(&mut self) {
            if let Some(group) = self.group {
                // SAFETY: kill(2) only sends a signal; the negative pid names the process group
                // this check created, whose leader has not been reaped yet (the check was
                // still waiting for it), so the id cannot have been reused.
                unsafe {
                    libc::kill(-group, libc::SIGKILL);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::check::Check;

    fn target(host: &str) -> Target {
        Target {
            host: host.to_owned(),
            port: 6443,
            resolved: None,
            sni: None,
        }
    }

    /// `sh -c SCRIPT sh HOST PORT`: the script sees the host as `$1`, the port as `$2`.
    fn shell(script: &str) -> ExecCheck {
        ExecCheck {
            command: ["sh", "-c", script, "sh"].map(str::to_owned).to_vec(),
            positive_output: "1".to_owned(),
            negative_output: "0".to_owned(),
        }
    }

    #[tokio::test]
    async fn a_command_printing_without_end_fails_at_the_output_limit() {
        let yes = ExecCheck {
            command: vec!["yes".to_owned()],
            ..shell("")
        };
        let result = Check::Exec(yes)
            .run(&target("127.0.0.1"), Duration::from_secs(10))
            .await;
        assert!(
            matches!(
                result,
                Err(CheckError::OutputTooLong {
                    limit: MAX_OUTPUT,
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn output_up_to_the_limit_is_read() {
        // A 64 KiB line, then the verdict on its own line: too long to be "1".
        let script = format!("head -c {} /dev/zero | tr '\\0' x; echo", MAX_OUTPUT - 3);
        let result = check(&shell(&format!("{script}; echo 1")), &target("127.0.0.1")).await;
        let Err(CheckError::UnexpectedOutput { got, .. }) = result else {
            panic!("{result:?}");
        };
        assert_eq!(got, format!("{}...", "x".repeat(QUOTED_OUTPUT)));
    }

    #[tokio::test]
    async fn a_host_like_an_option_is_not_passed_to_the_command() {
        let exec = shell("echo 1");
        assert!(check(&exec, &target("127.0.0.1")).await.is_ok());
        let result = check(&exec, &target("-rf")).await;
        assert!(
            matches!(&result, Err(CheckError::OptionLikeHost { host, .. }) if host == "-rf"),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn the_command_gets_only_path() {
        // dash adds PWD, bash also SHLVL and `_`: the shell's own, not the daemon's.
        let script = "if env | grep -v -e '^PATH=' -e '^PWD=' -e '^SHLVL=' -e '^_=' | grep -q .; \
                      then env; else echo 1; fi";
        let result = check(&shell(script), &target("127.0.0.1")).await;
        assert!(result.is_ok(), "{result:?}");
    }
}
