//! What sockmap forwarding asks of a TCP socket that user space no longer reads or writes:
//! its cookie (the maps' key), how much has entered its send queue, and when it last received
//! data.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// `tcpi_last_data_recv` (milliseconds) in `struct tcp_info` (linux/tcp.h).
const LAST_DATA_RECV_OFFSET: usize = 52;
/// `tcpi_bytes_acked` (u64): bytes of this socket's stream the peer has acknowledged.
const BYTES_ACKED_OFFSET: usize = 120;
/// Enough of `struct tcp_info` for the fields above; older kernels fill less and say so.
const TCP_INFO_LEN: usize = 136;

fn get_option<T>(
    socket: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &mut T,
) -> io::Result<usize> {
    let mut len = libc::socklen_t::try_from(size_of::<T>()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: `value` is a live, writable `T` of `len` bytes; the kernel writes at most `len`
    // bytes and stores the length it wrote back into `len`.
    let result = unsafe {
        libc::getsockopt(
            socket,
            level,
            name,
            std::ptr::from_mut(value).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(len).unwrap_or(0))
}

/// The socket's cookie: a number the kernel never reuses while it runs.
pub(super) fn cookie(socket: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie = 0u64;
    get_option(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_COOKIE,
        &mut cookie,
    )?;
    Ok(cookie)
}

/// The counters of `struct tcp_info` sockmap forwarding reads.
#[derive(Debug, Clone, Copy)]
pub(super) struct TcpCounters {
    /// Every byte written into the send queue so far, acknowledged or not (plus the SYN of
    /// an active open, which a difference of two readings cancels).
    pub(super) written: u64,
    /// How long ago the socket last received data.
    pub(super) since_last_receive: Duration,
}

pub(super) fn counters(socket: &impl AsRawFd) -> io::Result<TcpCounters> {
    let fd = socket.as_raw_fd();
    let mut info = [0u8; TCP_INFO_LEN];
    let len = get_option(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
    if len < TCP_INFO_LEN {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    let acked = read_u64(&info, BYTES_ACKED_OFFSET);
    let last_receive = read_u32(&info, LAST_DATA_RECV_OFFSET);
    Ok(TcpCounters {
        written: acked + unacknowledged(fd)?,
        since_last_receive: Duration::from_millis(u64::from(last_receive)),
    })
}

/// Bytes in the send queue not yet acknowledged (`SIOCOUTQ`).
fn unacknowledged(socket: RawFd) -> io::Result<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the pointer, which is live.
    let result = unsafe { libc::ioctl(socket, libc::TIOCOUTQ, &raw mut queued) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(queued).unwrap_or(0))
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_ne_bytes(field)
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_ne_bytes(field)
}

/// Bytes waiting in the receive queue (`SIOCINQ`).
pub(super) fn queued(socket: &impl AsRawFd) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCINQ (FIONREAD) writes one int through the pointer, which is live.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &raw mut queued) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(queued).unwrap_or(0))
}
