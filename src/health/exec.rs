//! gobetween's `exec`: runs `COMMAND HOST PORT` and compares what it prints.
//!
//! The output is compared after trimming the trailing newline (gobetween compares it as is,
//! so `echo 1` never matched: its issue #83). The command is killed when the check times out.

use std::process::Stdio;

use tokio::process::Command;

use super::{CheckError, Target};
use crate::config::ExecCheck;

pub async fn check(exec: &ExecCheck, target: &Target) -> Result<(), CheckError> {
    let Some((program, args)) = exec.command.split_first() else {
        return Err(CheckError::Spawn {
            command: String::new(),
            source: std::io::Error::other("empty command"),
        });
    };
    // kill_on_drop: the timeout around this future drops it, which kills the command.
    let output = Command::new(program)
        .args(args)
        .arg(&target.host)
        .arg(target.port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| CheckError::Spawn {
            command: exec.command.join(" "),
            source,
        })?;
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
