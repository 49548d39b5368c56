//! The child processes the orchestrator starts: backend servers and load generators.
//!
//! Each role runs a single-threaded tokio runtime (ping-pong: one blocking thread), so a role
//! uses at most one CPU and can be pinned with `taskset`. Roles talk to the orchestrator through
//! stdout (an address, a JSON line) and stdin (closing it ends a backend or releases idle
//! connections).

mod backend;
mod client;
mod tls_client;

pub use tls_client::SERVER_NAME as TLS_SERVER_NAME;

use crate::cli::{Role, RoleKind};

/// Runs one role to completion.
///
/// # Errors
/// Bind, connect or I/O errors that stop the role.
pub fn run(role: Role) -> anyhow::Result<()> {
    let Role::Role(kind) = role;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = match kind {
        RoleKind::Backend { kind } => runtime.block_on(backend::serve(kind)),
        RoleKind::Client(args) => client::run(&runtime, args),
    };
    // A stdin reader may still be blocked; do not wait for it.
    runtime.shutdown_background();
    outcome
}

/// Resolves when stdin reaches EOF or a line arrives: the orchestrator's "stop" signal, which
/// also fires if the orchestrator dies.
async fn stdin_signal() {
    let read = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)
    });
    // An error reading stdin means it is gone, which is the signal too.
    let _ = read.await;
}
