//! Child processes: started with stderr in a log file, stdout read line by line with timeouts,
//! and stopped as a whole process tree (SIGTERM, then SIGKILL) when dropped.
//!
//! A reader thread per child forwards stdout lines over a channel; it ends when the child closes
//! stdout, so no read ever blocks the orchestrator for longer than the timeout it asked for.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::system;

/// How long a stopping tree gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

pub struct Child {
    name: String,
    process: std::process::Child,
    lines: Receiver<String>,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Child {
    /// Starts `command` with piped stdin and stdout; stderr goes to `log`.
    ///
    /// # Errors
    /// The log cannot be created or the program cannot be started.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Child> {
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut process = command
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        let stdout = process.stdout.take().context("child stdout")?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Child {
            name: name.to_owned(),
            stdin: process.stdin.take(),
            process,
            lines,
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The next stdout line.
    ///
    /// # Errors
    /// No line within `timeout`, or the child closed stdout (the error quotes its log).
    pub fn read_line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "{}: no output within {timeout:?}{}",
                    self.name,
                    self.log_tail()
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                bail!("{}: exited without output{}", self.name, self.log_tail())
            }
        }
    }

    /// The next stdout line, parsed as JSON.
    ///
    /// # Errors
    /// As [`Child::read_line`], or the line is not JSON.
    pub fn read_json(&mut self, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let line = self.read_line(timeout)?;
        serde_json::from_str(&line).with_context(|| format!("{}: not JSON: {line}", self.name))
    }

    /// Everything the child prints until it exits, then its exit status.
    ///
    /// # Errors
    /// The child did not finish within `timeout` (it is then stopped).
    pub fn output(&mut self, timeout: Duration) -> anyhow::Result<(String, ExitStatus)> {
        let deadline = Instant::now() + timeout;
        let mut text = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    bail!("{}: still running after {timeout:?}", self.name)
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        Ok((text, self.wait(left)?))
    }

    /// Writes one line to the child's stdin.
    ///
    /// # Errors
    /// The child's stdin is closed.
    pub fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        writeln!(stdin, "{line}").with_context(|| format!("writing to {}", self.name))?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the child to exit.
    ///
    /// # Errors
    /// It did not exit within `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{}: did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// # Errors
    /// The child has exited (the error quotes its log).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.process.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited ({status}){}", self.name, self.log_tail()),
        }
    }

    /// The last lines of the child's stderr log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n  ");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; log {}:\n  {tail}", self.log.display())
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let tree = system::process_tree(self.pid());
        signal("TERM", &tree);
        let stopped = self.wait(TERM_GRACE).is_ok();
        let left: Vec<u32> = tree
            .into_iter()
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        if !stopped || !left.is_empty() {
            signal("KILL", &left);
        }
        if let Err(error) = self.process.wait() {
            eprintln!("e2e: waiting for {}: {error}", self.name);
        }
    }
}

/// Sends `signal` to `pids` with kill(1); processes already gone are not an error.
fn signal(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
    if let Err(error) = status {
        eprintln!("e2e: kill -{signal}: {error}");
    }
}
