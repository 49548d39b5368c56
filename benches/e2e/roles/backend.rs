//! Backend servers on 127.0.0.1: `hello` (one answer, then close), `http` (keep-alive
//! responses) and `echo`.
//!
//! One task per connection on the role's single thread. The server prints its address on the
//! first line of stdout and stops when stdin closes, or after [`MAX_LIFETIME`] at the latest.

use std::io::Write;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::cli::BackendKind;

/// A backend never outlives a whole benchmark run.
const MAX_LIFETIME: Duration = Duration::from_secs(3_600);
/// Pause after a failed accept (typically EMFILE) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// The request of the connection-rate workload, as the client sends it.
pub const HELLO_REQUEST: &[u8] = b"hello?\n";
pub const HELLO_REPLY: &[u8] = b"hello\n";
/// The keep-alive workload's request and the backend's fixed response to it.
pub const HTTP_REQUEST: &[u8] = b"GET /tiny HTTP/1.1\r\nHost: bench\r\n\r\n";
pub const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n";

/// Serves `kind` until stdin closes.
///
/// # Errors
/// The bind error, or stdout being closed before the address could be printed.
pub async fn serve(kind: BackendKind) -> anyhow::Result<()> {
    let listener = bind()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", listener.local_addr()?)?;
    stdout.flush()?;
    tokio::select! {
        () = accept_loop(&listener, kind) => {}
        () = super::stdin_signal() => {}
        () = tokio::time::sleep(MAX_LIFETIME) => {}
    }
    Ok(())
}

fn bind() -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(([127, 0, 0, 1], 0).into())?;
    socket.listen(4096)
}

async fn accept_loop(listener: &TcpListener, kind: BackendKind) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, kind));
            }
            Err(error) => {
                eprintln!("backend: accept: {error}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Per-connection errors (resets from aborted clients) end only that connection.
async fn handle(stream: TcpStream, kind: BackendKind) {
    let outcome = match kind {
        BackendKind::Hello => hello(stream).await,
        BackendKind::Http => http(stream).await,
        BackendKind::Echo => echo(stream).await,
    };
    if let Err(error) = outcome {
        if error.kind() != std::io::ErrorKind::ConnectionReset {
            eprintln!("backend: {kind:?} connection: {error}");
        }
    }
}

/// Reads the request line, answers, and closes first (so TIME_WAIT stays on this side and the
/// clients' ephemeral ports are free again at once).
async fn hello(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut request = [0u8; 64];
    let mut filled = 0;
    while !request[..filled].ends_with(b"\n") && filled < request.len() {
        match stream.read(&mut request[filled..]).await? {
            0 => return Ok(()),
            read => filled += read,
        }
    }
    stream.write_all(HELLO_REPLY).await
}

/// Answers each complete request (ending in an empty line) with [`HTTP_RESPONSE`].
async fn http(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut pending = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&chunk[..read]);
        let complete = count_requests(&mut pending);
        for _ in 0..complete {
            stream.write_all(HTTP_RESPONSE).await?;
        }
    }
}

/// Counts and removes the complete requests at the front of `pending`.
fn count_requests(pending: &mut Vec<u8>) -> usize {
    let mut complete = 0;
    let mut consumed = 0;
    while let Some(end) = pending[consumed..]
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
    {
        consumed += end + 4;
        complete += 1;
    }
    pending.drain(..consumed);
    complete
}

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buffer = vec![0u8; 4096];
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        stream.write_all(&buffer[..read]).await?;
    }
}
