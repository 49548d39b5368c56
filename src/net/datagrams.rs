//! Receiving many datagrams with one system call (`recvmmsg`), for the UDP listeners.
//!
//! A busy DNS listener otherwise makes one `recvfrom` per query plus one that finds the queue
//! empty. The buffers are allocated once per listener: nothing is allocated per datagram or per
//! batch.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Up to `slots` datagrams of at most `slot_size` bytes each, and where they came from.
pub struct DatagramBatch {
    slot_size: usize,
    buffers: Vec<u8>,
    sources: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    /// Datagrams in the last batch.
    received: usize,
}

// SAFETY: the raw pointers in `iovecs` and `headers` point only into this value's own
// buffers, are rebuilt before every use, and are never dereferenced outside `receive`.
#[allow(unsafe_code)]
unsafe impl Send for DatagramBatch {}

impl std::fmt::Debug for DatagramBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramBatch")
            .field("slots", &self.headers.len())
            .field("slot_size", &self.slot_size)
            .field("received", &self.received)
            .finish()
    }
}

impl DatagramBatch {
    /// `slot_size` must hold the largest datagram expected: a longer one would be cut.
    pub fn new(slots: usize, slot_size: usize) -> Self {
        let slots = slots.max(1);
        Self {
            slot_size,
            buffers: vec![0; slots * slot_size],
            sources: vec![zeroed_storage(); slots],
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                slots
            ],
            headers: vec![zeroed_header(); slots],
            received: 0,
        }
    }

    /// How many datagrams one call may return.
    pub fn slots(&self) -> usize {
        self.headers.len()
    }

    /// Receives what is queued on `socket`, up to [`slots`](Self::slots) datagrams, without
    /// waiting.
    ///
    /// # Errors
    /// `WouldBlock` when nothing is queued; any other error of `recvmmsg`.
    #[allow(unsafe_code)]
    pub fn receive(&mut self, socket: BorrowedFd<'_>) -> io::Result<usize> {
        self.received = 0;
        let base = self.buffers.as_mut_ptr();
        for (index, ((iovec, header), source)) in self
            .iovecs
            .iter_mut()
            .zip(self.headers.iter_mut())
            .zip(self.sources.iter_mut())
            .enumerate()
        {
            // SAFETY: `index * slot_size` is within `buffers`, whose length is
            // `slots * slot_size`.
            iovec.iov_base = unsafe { base.add(index * self.slot_size) }.cast();
            iovec.iov_len = self.slot_size;
            *header = zeroed_header();
            header.msg_hdr.msg_name = std::ptr::from_mut(source).cast();
            header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            header.msg_hdr.msg_iov = std::ptr::from_mut(iovec);
            header.msg_hdr.msg_iovlen = 1;
        }
        let slots = u32::try_from(self.headers.len()).unwrap_or(u32::MAX);
        // SAFETY: every header points at one live iovec (into `buffers`, `slot_size` bytes)
        // and one live `sockaddr_storage` with its true size; all are exclusively borrowed
        // through `&mut self` for the call, and the kernel writes at most that much.
        let count = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                slots,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if count < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = usize::try_from(count).unwrap_or(0);
        Ok(self.received)
    }

    /// The `index`-th datagram of the last batch and its source; `None` past its end or for a
    /// source that is not IPv4 or IPv6.
    pub fn get(&self, index: usize) -> Option<(&[u8], SocketAddr)> {
        if index >= self.received {
            return None;
        }
        let header = &self.headers[index];
        let len = (header.msg_len as usize).min(self.slot_size);
        let start = index * self.slot_size;
        let source = socket_addr(&self.sources[index])?;
        Some((&self.buffers[start..start + len], source))
    }
}

#[allow(unsafe_code)]
fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: all-zero bytes are a valid `sockaddr_storage` (a plain C struct).
    unsafe { std::mem::zeroed() }
}

#[allow(unsafe_code)]
fn zeroed_header() -> libc::mmsghdr {
    // SAFETY: all-zero bytes are a valid `mmsghdr`: null pointers and zero lengths.
    unsafe { std::mem::zeroed() }
}

/// The address the kernel wrote into `storage`.
#[allow(unsafe_code)]
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`, which it is large
            // and aligned enough for.
            let v4 = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(v4.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for `sockaddr_in6`.
            let v6 = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(
                SocketAddrV6::new(
                    ip,
                    u16::from_be(v6.sin6_port),
                    v6.sin6_flowinfo,
                    v6.sin6_scope_id,
                )
                .into(),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_batch_holds_each_datagram_with_its_source_in_order() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = receiver.local_addr().unwrap();
        let first = UdpSocket::bind("127.0.0.1:0").unwrap();
        let big = vec![7; 65_000];
        first.send_to(b"one", addr).unwrap();
        first.send_to(&big, addr).unwrap();
        first.send_to(b"three", addr).unwrap();
        let mut batch = DatagramBatch::new(2, 65_535);
        // Loopback delivery is synchronous, but leave room for a slow machine.
        std::thread::sleep(std::time::Duration::from_millis(20));

        assert_eq!(batch.receive(receiver.as_fd()).unwrap(), 2);
        let source = first.local_addr().unwrap();
        assert_eq!(batch.get(0), Some((&b"one"[..], source)));
        assert_eq!(batch.get(1), Some((&big[..], source)));
        assert_eq!(batch.get(2), None);
        assert_eq!(batch.receive(receiver.as_fd()).unwrap(), 1);
        assert_eq!(batch.get(0), Some((&b"three"[..], source)));
        receiver.set_nonblocking(true).unwrap();
        let empty = batch.receive(receiver.as_fd()).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn ipv6_sources_are_read_back() {
        let Ok(receiver) = UdpSocket::bind("[::1]:0") else {
            return; // no IPv6 on this host
        };
        let sender = UdpSocket::bind("[::1]:0").unwrap();
        sender
            .send_to(b"six", receiver.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut batch = DatagramBatch::new(4, 100);
        assert_eq!(batch.receive(receiver.as_fd()).unwrap(), 1);
        assert_eq!(
            batch.get(0),
            Some((&b"six"[..], sender.local_addr().unwrap()))
        );
    }
}
