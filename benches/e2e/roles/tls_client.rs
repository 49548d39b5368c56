//! TLS load generators (rustls, the `echo` backend behind a terminating balancer). Each prints
//! one JSON line on stdout.
//!
//! - `tls-full`: handshakes on fresh connections, `--connections` at a time, no resumption;
//! - `tls-resumed`: the same with a session store, so every handshake after the first resumes
//!   (a ticket or a session ID, whichever the server offers);
//! - `tls-bulk`: one session, `--mib` MiB written and the echo read back at the same time;
//!   it also counts the TLS records it receives (their headers, as they pass its socket) and
//!   reports its own CPU time, so a run shows what each balancer's output costs the client;
//! - `tls-idle`: opens `--connections` sessions, each with one 64-byte echo, reports, holds
//!   them until stdin says to close.
//!
//! Every handshake connection carries one byte through to the backend and back: a TLS 1.3
//! server sends its tickets after the handshake, and only a read collects them. The client
//! does not verify the server's certificate or signature: it measures the server, and on the
//! one CPU it shares with the backend its own verification would cap the rate first.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::cli::{ClientArgs, ClientKind};

/// The name the client sends; the benchmark's certificates are made for it.
pub const SERVER_NAME: &str = "bench.test";
/// One handshake, exchange or idle-session set-up that takes longer than this is an error.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes one run may count, whatever its duration.
const MAX_HANDSHAKES: u64 = 10_000_000;
/// The bulk client's write size.
const CHUNK: usize = 64 * 1024;
/// The idle client lets go of its sessions after this long even without being told.
const IDLE_HOLD_MAX: Duration = Duration::from_secs(600);
/// Bytes of each idle session's echo.
const IDLE_MESSAGE_SIZE: usize = 64;

/// Runs the TLS client `args.kind` and returns its JSON result (the idle client prints its own).
///
/// # Errors
/// A client that could not run at all (no connection, a bulk session that broke).
pub async fn run(args: &ClientArgs) -> anyhow::Result<Option<Value>> {
    match args.kind {
        ClientKind::TlsFull => handshakes(args, false).await.map(Some),
        ClientKind::TlsResumed => handshakes(args, true).await.map(Some),
        ClientKind::TlsBulk => bulk(args).await.map(Some),
        ClientKind::TlsIdle => idle(args).await.map(|()| None),
        _ => bail!("{:?} is not a TLS client", args.kind),
    }
}

fn connector(resume: bool) -> anyhow::Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnything))
        .with_no_client_auth();
    config.resumption = if resume {
        Resumption::in_memory_sessions(64)
    } else {
        Resumption::disabled()
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(SERVER_NAME)?;
    Ok(connector.connect(name, tcp).await?)
}

/// Received TLS records, counted from their 5-byte headers as the bytes leave the socket.
#[derive(Default)]
struct RecordCount {
    records: AtomicU64,
    /// Records of a full 16 KiB of plaintext (a ciphertext longer than 16,384 bytes).
    full: AtomicU64,
    bytes: AtomicU64,
    reads: AtomicU64,
}

/// A TCP socket whose reads are parsed into TLS records for [`RecordCount`].
struct RecordTap {
    socket: TcpStream,
    count: Arc<RecordCount>,
    /// Header bytes seen of the record being read (5 when its length is known)...
    header: [u8; 5],
    header_len: usize,
    /// ...and body bytes still to come.
    body_left: usize,
}

impl RecordTap {
    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let taken = self.body_left.min(bytes.len());
                self.body_left -= taken;
                bytes = &bytes[taken..];
                continue;
            }
            let taken = (5 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + taken].copy_from_slice(&bytes[..taken]);
            self.header_len += taken;
            bytes = &bytes[taken..];
            if self.header_len == 5 {
                let length = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.count.records.fetch_add(1, Ordering::Relaxed);
                self.count.bytes.fetch_add(length as u64, Ordering::Relaxed);
                if length > 16 * 1024 {
                    self.count.full.fetch_add(1, Ordering::Relaxed);
                }
                self.body_left = length;
                self.header_len = 0;
            }
        }
    }
}

impl AsyncRead for RecordTap {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.socket).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.count.reads.fetch_add(1, Ordering::Relaxed);
            this.observe(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for RecordTap {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

/// One handshake and a one-byte echo; whether the handshake resumed a session.
async fn one_handshake(connector: &TlsConnector, addr: SocketAddr) -> anyhow::Result<bool> {
    let mut stream = connect(connector, addr).await?;
    let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    stream.write_all(b"x").await?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await?;
    stream.shutdown().await?;
    Ok(resumed)
}

/// `--connections` loops of handshakes, one after another in each, for `warmup_secs` (not
/// counted), then for `secs`.
async fn handshakes(args: &ClientArgs, resume: bool) -> anyhow::Result<Value> {
    let connector = connector(resume)?;
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let (warmup_count, ..) = handshake_phase(&connector, args, warmup).await;
    let (done, resumed, errors, elapsed) =
        handshake_phase(&connector, args, Duration::from_secs_f64(args.secs)).await;
    Ok(json!({
        "count": done,
        "warmup_count": warmup_count,
        "resumed": resumed,
        "errors": errors,
        "secs": elapsed.as_secs_f64(),
        "rate": done as f64 / elapsed.as_secs_f64(),
    }))
}

/// Runs the loops concurrently; their summed counts and the time until the last one ended.
async fn handshake_phase(
    connector: &TlsConnector,
    args: &ClientArgs,
    duration: Duration,
) -> (u64, u64, u64, Duration) {
    let start = Instant::now();
    let mut loops = JoinSet::new();
    for _ in 0..args.connections.max(1) {
        loops.spawn(handshake_loop(
            connector.clone(),
            args.addr,
            start + duration,
        ));
    }
    let (mut done, mut resumed, mut errors) = (0, 0, 0);
    while let Some(joined) = loops.join_next().await {
        match joined {
            Ok((loop_done, loop_resumed, loop_errors)) => {
                done += loop_done;
                resumed += loop_resumed;
                errors += loop_errors;
            }
            Err(_) => errors += 1,
        }
    }
    (done, resumed, errors, start.elapsed())
}

async fn handshake_loop(
    connector: TlsConnector,
    addr: SocketAddr,
    deadline: Instant,
) -> (u64, u64, u64) {
    let (mut done, mut resumed, mut errors) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline && done + errors < MAX_HANDSHAKES {
        match tokio::time::timeout(EXCHANGE_TIMEOUT, one_handshake(&connector, addr)).await {
            Ok(Ok(was_resumed)) => {
                done += 1;
                resumed += u64::from(was_resumed);
            }
            Ok(Err(error)) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("tls client: handshake failed: {error:#}");
                }
            }
            Err(_) => errors += 1,
        }
    }
    (done, resumed, errors)
}

/// One session: writes `mib` MiB while reading the echo; the rate is payload bytes one way over
/// the time from the first write to the last byte read.
async fn bulk(args: &ClientArgs) -> anyhow::Result<Value> {
    let tcp = TcpStream::connect(args.addr).await?;
    tcp.set_nodelay(true)?;
    let count = Arc::new(RecordCount::default());
    let tap = RecordTap {
        socket: tcp,
        count: Arc::clone(&count),
        header: [0; 5],
        header_len: 0,
        body_left: 0,
    };
    let name = ServerName::try_from(SERVER_NAME)?;
    let stream = connector(false)?.connect(name, tap).await?;
    let suite = stream
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .map(|suite| format!("{:?}", suite.suite()))
        .unwrap_or_default();
    let before = Snapshot::take(&count);
    let total = usize::try_from(args.mib)? * 1024 * 1024;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let start = Instant::now();
    let write = async move {
        let chunk = vec![0xa5u8; CHUNK];
        let mut sent = 0;
        while sent < total {
            let len = CHUNK.min(total - sent);
            writer.write_all(&chunk[..len]).await?;
            sent += len;
        }
        writer.flush().await?;
        anyhow::Ok(writer)
    };
    let read = async move {
        let mut buffer = vec![0u8; CHUNK];
        let mut received = 0;
        while received < total {
            let read = reader.read(&mut buffer).await?;
            if read == 0 {
                bail!("the session ended after {received} of {total} echoed bytes");
            }
            received += read;
        }
        anyhow::Ok(reader)
    };
    let limit = Duration::from_secs(120);
    let (writer, reader) = tokio::time::timeout(limit, async { tokio::try_join!(write, read) })
        .await
        .context("bulk: no echo of every byte within 120 s")??;
    let elapsed = start.elapsed();
    let after = Snapshot::take(&count);
    let mut stream = reader.unsplit(writer);
    stream.shutdown().await?;
    let records = after.records - before.records;
    Ok(json!({
        "bytes": total,
        "secs": elapsed.as_secs_f64(),
        "mib_per_sec": args.mib as f64 / elapsed.as_secs_f64(),
        "suite": suite,
        "records": records,
        "record_mean": (after.bytes - before.bytes) as f64 / records.max(1) as f64,
        "full_records": after.full - before.full,
        "socket_reads": after.reads - before.reads,
        "cpu_secs": after.cpu_secs - before.cpu_secs,
    }))
}

/// The counts and this process's CPU time at one moment.
struct Snapshot {
    records: u64,
    full: u64,
    bytes: u64,
    reads: u64,
    cpu_secs: f64,
}

impl Snapshot {
    fn take(count: &RecordCount) -> Self {
        Self {
            records: count.records.load(Ordering::Relaxed),
            full: count.full.load(Ordering::Relaxed),
            bytes: count.bytes.load(Ordering::Relaxed),
            reads: count.reads.load(Ordering::Relaxed),
            cpu_secs: crate::system::cpu_seconds(&[std::process::id()]),
        }
    }
}

/// Opens the sessions one after another, prints how many, holds them until told to close.
async fn idle(args: &ClientArgs) -> anyhow::Result<()> {
    let connector = connector(false)?;
    let mut sessions = Vec::with_capacity(args.connections);
    let mut failed = 0usize;
    for _ in 0..args.connections {
        match tokio::time::timeout(EXCHANGE_TIMEOUT, idle_session(&connector, args.addr)).await {
            Ok(Ok(session)) => sessions.push(session),
            _ => failed += 1,
        }
    }
    super::client::print_json(&json!({ "opened": sessions.len(), "failed": failed }))?;
    tokio::select! {
        () = super::stdin_signal() => {}
        () = tokio::time::sleep(IDLE_HOLD_MAX) => {}
    }
    let closed = sessions.len();
    drop(sessions);
    super::client::print_json(&json!({ "closed": closed }))
}

async fn idle_session(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut stream = connect(connector, addr).await?;
    let ping = [0x5au8; IDLE_MESSAGE_SIZE];
    let mut pong = [0u8; IDLE_MESSAGE_SIZE];
    stream.write_all(&ping).await?;
    stream.read_exact(&mut pong).await?;
    Ok(stream)
}

/// Accepts every certificate and signature: the benchmark measures the server's side of the
/// handshake, not the client's verification.
#[derive(Debug)]
struct TrustAnything;

impl ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PKCS1_SHA256,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::ED25519,
        ]
    }
}
