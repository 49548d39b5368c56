//! Zero-copy forwarding with splice(2): socket -> pipe -> socket, bytes never enter user space.
//!
//! The invariant that keeps this correct: a direction splices from its source socket into its
//! pipe only when the pipe is empty, and drains the pipe completely into the sink before
//! reading again. So an EAGAIN from the source splice always means "the socket has no data"
//! (the pipe had room), and an EAGAIN from the sink splice always means "the socket's send
//! buffer is full" (the pipe had data): clearing that socket's readiness is then safe. Break
//! it, and an EAGAIN caused by a full pipe would clear the socket's read readiness while data
//! waits in its receive queue, and the session would stall forever.
//!
//! An idle direction holds no pipe: it takes one from a per-thread pool when data arrives and
//! gives it back once drained. A pipe that still holds data (the session was cut mid-drain)
//! is closed on drop, never pooled. While a direction holds a pipe, the pipe's capacity is
//! charged to the forwarding [`Budget`]; past the cap the burst copies instead.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::Interest;
use tracing::warn;

use super::budget::Budget;
use super::leg::{Leg, Step};
use super::{ForwardError, Meter};

/// Idle pipes kept per worker thread: enough to absorb bursts without holding many
/// descriptors, or much of the per-user pipe quota (64 MiB by default), on a mostly idle
/// balancer.
const POOL_PER_THREAD: usize = 8;

/// Moves data source -> pipe -> sink until the source would block or ends. Called when the
/// source is readable.
///
/// Returns [`Step::Unsupported`] before moving anything when no pipe can be had (EMFILE,
/// ENFILE, ENOMEM) or the kernel cannot splice these sockets (EINVAL): the caller then copies.
/// Returns [`Step::OverBudget`] before moving anything when the pipe would take `budget` past
/// its cap: the caller copies this burst.
pub(super) async fn transfer(
    leg: &Leg<'_>,
    pipe_size: usize,
    budget: &Budget,
    meter: &impl Meter,
) -> Result<Step, ForwardError> {
    let mut pipe = match Pipe::take(pipe_size) {
        Ok(pipe) => pipe,
        Err(error) => {
            log_fallback_once("cannot create a pipe", &error);
            return Ok(Step::Unsupported);
        }
    };
    let mut grant = budget.grant();
    if !grant.raise_to(pipe.capacity) {
        pipe.give_back();
        return Ok(Step::OverBudget);
    }
    let mut moved = 0u64;
    loop {
        // The pipe is empty here (invariant): an EAGAIN can only come from the socket.
        let spliced = leg.source.try_io(Interest::READABLE, || {
            splice(leg.source.as_fd(), pipe.write.as_fd(), pipe.capacity)
        });
        match spliced {
            Ok(0) => {
                pipe.give_back();
                return Ok(Step::Ended(moved));
            }
            Ok(bytes) => {
                pipe.len = bytes;
                drain(leg, &mut pipe).await?;
                moved += bytes as u64;
                leg.moved(bytes, meter);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                pipe.give_back();
                return Ok(Step::Drained(moved));
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) && moved == 0 => {
                pipe.give_back();
                log_fallback_once("splice is not supported for these sockets", &error);
                return Ok(Step::Unsupported);
            }
            Err(error) => return Err(leg.source_error(error)),
        }
    }
}

/// Writes everything in the pipe to the sink. On error the pipe, still holding data, is
/// dropped (closed) when `transfer` returns.
async fn drain(leg: &Leg<'_>, pipe: &mut Pipe) -> Result<(), ForwardError> {
    while pipe.len > 0 {
        super::write_ready(leg.sink)
            .await
            .map_err(|error| leg.sink_error(error))?;
        let spliced = leg.sink.try_io(Interest::WRITABLE, || {
            splice(pipe.read.as_fd(), leg.sink.as_fd(), pipe.len)
        });
        match spliced {
            Ok(moved) => pipe.len -= moved.min(pipe.len),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(error) => return Err(leg.sink_error(error)),
        }
    }
    Ok(())
}

/// splice(2) of up to `len` bytes, non-blocking, moving pages where the kernel can. Both ends
/// must be a pipe or a socket (no offsets are passed).
fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are borrowed, so open for the duration of the call; null
    // offsets are what splice(2) requires for pipes and sockets; the kernel reads and writes
    // no memory of this process.
    let moved = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(moved).map_err(|_| io::Error::last_os_error())
}

fn log_fallback_once(why: &str, error: &io::Error) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        warn!(%error, "{why}; falling back to user-space copy for such sessions (logged once)");
    }
}

/// A pipe with both ends; closes them on drop. `len` is how many bytes it holds.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// The size asked for: the pool's key. The kernel rounds it up to a power of two pages,
    /// or leaves the pipe smaller past the per-user pipe quota.
    requested: usize,
    /// The size the kernel granted.
    capacity: usize,
    len: usize,
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    /// An empty pipe asked for with `size` bytes, from this thread's pool, or a new one.
    fn take(size: usize) -> io::Result<Self> {
        let pooled = POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            // A reload may have changed the pipe size: pooled pipes asked for another size go.
            pool.retain(|pipe| pipe.requested == size);
            pool.pop()
        });
        match pooled {
            Some(pipe) => Ok(pipe),
            None => Self::create(size),
        }
    }

    /// Returns an empty pipe to this thread's pool (or closes it when the pool is full).
    fn give_back(self) {
        debug_assert_eq!(self.len, 0, "only empty pipes may be pooled");
        if self.len != 0 {
            return;
        }
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL_PER_THREAD {
                pool.push(self);
            }
        });
    }

    fn create(size: usize) -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let capacity = resize(write.as_fd(), size);
        Ok(Self {
            read,
            write,
            requested: size,
            capacity,
            len: 0,
        })
    }
}

/// Asks for a pipe of `size` bytes; returns the size it really has. The kernel rounds the
/// size up to a power of two pages, and refuses (EPERM) past the per-user pipe quota: then
/// the pipe keeps its smaller default size.
fn resize(pipe: BorrowedFd<'_>, size: usize) -> usize {
    let fd = pipe.as_raw_fd();
    let requested = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl on a borrowed, so open, pipe descriptor with integer arguments only.
    let current = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    if current == requested {
        return size;
    }
    // SAFETY: as above.
    let granted = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, requested) };
    let capacity = if granted > 0 { granted } else { current };
    usize::try_from(capacity).unwrap_or(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's name for a pipe, `pipe:[INODE]`: a new pipe gets a new inode even when it
    /// reuses a closed one's descriptor number.
    fn identity(pipe: &Pipe) -> std::path::PathBuf {
        let fd = pipe.read.as_raw_fd();
        std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap()
    }

    #[test]
    fn pipes_are_pooled_per_size() {
        let pipe = Pipe::take(64 * 1024).unwrap();
        assert_eq!(pipe.capacity, 64 * 1024);
        let first = identity(&pipe);
        pipe.give_back();
        let again = Pipe::take(64 * 1024).unwrap();
        assert_eq!(identity(&again), first, "the pooled pipe is reused");
        again.give_back();
        let bigger = Pipe::take(128 * 1024).unwrap();
        assert_eq!(bigger.capacity, 128 * 1024);
        bigger.give_back();
    }

    /// The kernel rounds a pipe's size up to a power of two pages: a pipe is still reused
    /// when it did not get exactly the size asked for.
    #[test]
    fn pipes_of_a_rounded_size_are_reused() {
        let pipe = Pipe::take(100_000).unwrap();
        assert!(pipe.capacity >= 100_000, "{}", pipe.capacity);
        let first = identity(&pipe);
        pipe.give_back();
        let again = Pipe::take(100_000).unwrap();
        assert_eq!(identity(&again), first, "the pooled pipe is reused");
        again.give_back();
    }
}
