//! gobetween's `exec`: runs `COMMAND HOST PORT` and compares what it prints.
//!
//! The output is compared after trimming the trailing newline (gobetween compares it as is,
//! so `echo 1` never matched: its issue #83). The command runs in its own process group, and
//! the whole group is killed when the check times out, so a script's own children (a `curl`,
//! a `sleep`) do not outlive it.

use std::process::Stdio;

use tokio::process::Command;

use super::{CheckError, Target};
use crate::config::ExecCheck;

pub async fn check(exec: &ExecCheck, target: &Target) -> Result<(), CheckError> {
    let spawn_error = |source| CheckError::Spawn {
        command: exec.command.join(" "),
        source,
    };
    let Some((program, args)) = exec.command.split_first() else {
        return Err(spawn_error(std::io::Error::other("empty command")));
    };
    let child = Command::new(program)
        .args(args)
        .arg(&target.host)
        .arg(target.port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    // Dropped when the check's timeout drops this future: the group dies with it.
    let group = child.id().map(process_group::Killer::new);
    let output = child.wait_with_output().await.map_err(spawn_error)?;
    if let Some(group) = group {
        group.disarm();
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let said = stdout.trim_end_matches(['\n', '\r']);
    if said == exec.positive_output {
        Ok(())
    } else if said == exec.negative_output {
        Err(CheckError::Negative(said.to_owned()))
    } else {
        Err(CheckError::UnexpectedOutput {
            got: said.to_owned(),
            positive: exec.positive_output.clone(),
            negative: exec.negative_output.clone(),
        })
    }
}

#[allow(unsafe_code)]
mod process_group {
    /// Kills a process group on drop unless disarmed.
    pub(super) struct Killer {
        group: Option<libc::pid_t>,
    }

    impl Killer {
        /// `leader` is the pid of a child started with `process_group(0)`: its group id.
        pub(super) fn new(leader: u32) -> Self {
            Self {
                group: libc::pid_t::try_from(leader).ok(),
            }
        }

        /// The command finished by itself; its group may already be gone or reused.
        pub(super) fn disarm(mut self) {
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
