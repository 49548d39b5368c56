//! The TCP socket under a TLS stream, read a record's worth at a time.
//!
//! rustls asks its transport for at most 4 KiB per read, so a stream of 16 KiB records costs
//! four `read` system calls per record. [`ReadAhead`] serves those small reads from one larger
//! read of the socket. Its buffer exists only while data is arriving: an idle TLS session holds
//! none, as an idle TCP session holds no copy buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::budget::UNCHARGED_BUFFER;

/// One read of the socket asks for this much: a full TLS record (16 KiB of plaintext plus its
/// header and tag) fits, and it is the buffer every direction may hold without charge to the
/// forwarding budget.
const READ_AHEAD: usize = UNCHARGED_BUFFER;

/// A TCP socket whose reads go through a burst-long buffer; writes go straight through.
#[derive(Debug)]
pub struct ReadAhead {
    socket: TcpStream,
    /// Empty between bursts.
    buffer: Vec<u8>,
    /// `buffer[start..end]` was read from the socket and not yet handed out.
    start: usize,
    end: usize,
}

impl ReadAhead {
    pub fn new(socket: TcpStream) -> Self {
        Self {
            socket,
            buffer: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            // A reader that asks for as much as the buffer holds gains nothing from it.
            if out.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.socket).poll_read(cx, out);
            }
            if this.buffer.is_empty() {
                this.buffer = vec![0; READ_AHEAD];
            }
            let mut fill = ReadBuf::new(&mut this.buffer);
            let polled = Pin::new(&mut this.socket).poll_read(cx, &mut fill);
            let read = fill.filled().len();
            if polled.is_pending() {
                // Between bursts: give the buffer back.
                this.buffer = Vec::new();
            }
            ready!(polled)?;
            this.start = 0;
            this.end = read;
        }
        let available = &this.buffer[this.start..this.end];
        let taken = available.len().min(out.remaining());
        out.put_slice(&available[..taken]);
        this.start += taken;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (ReadAhead, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connecting = TcpStream::connect(listener.local_addr().unwrap());
        let (connected, accepted) = tokio::join!(connecting, listener.accept());
        (ReadAhead::new(connected.unwrap()), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn small_reads_see_every_byte_in_order_and_the_buffer_goes_between_bursts() {
        let (mut reader, mut writer) = pair().await;
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&sent).await.unwrap();
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        while received.len() < sent.len() {
            let read = reader.read(&mut chunk).await.unwrap();
            assert!(read > 0);
            received.extend_from_slice(&chunk[..read]);
        }
        assert_eq!(received, sent);
        // Nothing more is waiting: the next read parks, and the buffer is released.
        let mut probe = [0u8; 1];
        let parked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            reader.read(&mut probe),
        )
        .await;
        assert!(parked.is_err());
        assert!(reader.buffer.is_empty());
        drop(writer);
        assert_eq!(reader.read(&mut probe).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn reads_beyond_the_buffer_size_bypass_it() {
        let (mut reader, mut writer) = pair().await;
        writer.write_all(&[7u8; 1000]).await.unwrap();
        let mut large = vec![0u8; READ_AHEAD];
        let read = reader.read(&mut large).await.unwrap();
        assert!(read > 0 && large[..read].iter().all(|&b| b == 7));
        assert!(reader.buffer.is_empty());
    }
}
