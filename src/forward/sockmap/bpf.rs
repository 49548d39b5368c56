//! The few `bpf(2)` commands sockmap forwarding needs, called through `libc::syscall`: create
//! the maps, load and attach the verdict program, and add, look up and remove entries.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::program::{self, Instruction};

// Commands (enum bpf_cmd).
const MAP_CREATE: libc::c_long = 0;
const MAP_LOOKUP_ELEM: libc::c_long = 1;
const MAP_UPDATE_ELEM: libc::c_long = 2;
const MAP_DELETE_ELEM: libc::c_long = 3;
const PROG_LOAD: libc::c_long = 5;
const PROG_ATTACH: libc::c_long = 8;

const MAP_TYPE_HASH: u32 = 1;
const MAP_TYPE_SOCKHASH: u32 = 18;
const PROG_TYPE_SK_SKB: u32 = 14;
const ATTACH_SK_SKB_STREAM_VERDICT: u32 = 5;
/// Allocate hash entries as they are added rather than all at map creation.
const MAP_NO_PREALLOC: u32 = 1;
const UPDATE_ANY: u64 = 0;
/// Map entries: one per socket, so half as many sessions can forward through sockmap at once;
/// past that, sessions splice.
const MAX_SESSIONS: u32 = 65_536;
/// Verifier log size: enough for this program's full trace.
const LOG_SIZE: usize = 64 * 1024;

/// The value of the peers map: which socket a socket's bytes go to, and how many went which
/// way. User space writes it once, before the socket enters the sockhash; after that only the
/// program writes it (see [`program`] for the gate the two counters make).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub(super) struct PeerEntry {
    pub(super) peer_cookie: u64,
    /// Bytes sent to the peer by the kernel.
    pub(super) redirected_bytes: u64,
    /// Bytes left to user space while the gate was closed.
    pub(super) passed_bytes: u64,
}

/// The loaded program and its maps; closing the descriptors unloads everything, and the
/// kernel takes each socket out of the sockhash when the socket closes.
#[derive(Debug)]
pub(super) struct Kernel {
    /// Socket cookie -> socket (the value written is a socket descriptor).
    sockhash: OwnedFd,
    /// Socket cookie -> [`PeerEntry`].
    peers: OwnedFd,
    /// Socket cookie -> bytes user space has forwarded by hand since the socket entered the
    /// sockhash; written only by user space, it opens the program's gate.
    handed: OwnedFd,
    /// Kept open so the program stays loaded even if it were detached.
    _program: OwnedFd,
}

/// Why the kernel cannot forward for us.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot create the {map} BPF map (needs CAP_BPF and CAP_NET_ADMIN)")]
    Map {
        map: &'static str,
        #[source]
        error: io::Error,
    },
    /// The verifier's log is part of the message: it is the only account of what it refused.
    #[error("the kernel refused the sockmap verdict program: {error}; verifier log: {log}")]
    Program { error: io::Error, log: String },
    #[error("cannot attach the verdict program to the sockhash")]
    Attach {
        #[source]
        error: io::Error,
    },
}

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElement {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// Runs one `bpf(2)` command on `attr`.
fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `#[repr(C)]` prefix of `union bpf_attr` for this
    // command, and the size passed is its own: the kernel reads (and for some commands
    // writes) at most that many bytes, and treats the fields it does not see as zero. Pointers
    // inside it refer to buffers the caller keeps alive for the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>(),
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` was just returned by a successful bpf() call that creates a descriptor, and
    // nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn create_map(map_type: u32, value_size: usize, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreate {
        map_type,
        key_size: 8,
        value_size: u32::try_from(value_size).unwrap_or(u32::MAX),
        max_entries: MAX_SESSIONS,
        map_flags: flags,
    };
    owned(bpf(MAP_CREATE, &mut attr)?)
}

fn descriptor(fd: &OwnedFd) -> u32 {
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

impl Kernel {
    /// Creates the maps, loads the verdict program and attaches it to the sockhash.
    ///
    /// # Errors
    /// The first step the kernel refused: without CAP_BPF and CAP_NET_ADMIN that is the
    /// first map.
    pub(super) fn load() -> Result<Self, LoadError> {
        let sockhash =
            create_map(MAP_TYPE_SOCKHASH, size_of::<u32>(), 0).map_err(|error| LoadError::Map {
                map: "sockhash",
                error,
            })?;
        let peers = create_map(MAP_TYPE_HASH, size_of::<PeerEntry>(), MAP_NO_PREALLOC).map_err(
            |error| LoadError::Map {
                map: "peers",
                error,
            },
        )?;
        let handed =
            create_map(MAP_TYPE_HASH, size_of::<u64>(), MAP_NO_PREALLOC).map_err(|error| {
                LoadError::Map {
                    map: "handed",
                    error,
                }
            })?;
        let program = load_program(&program::verdict(
            peers.as_raw_fd(),
            handed.as_raw_fd(),
            sockhash.as_raw_fd(),
        ))?;
        let mut attach = ProgAttach {
            target_fd: descriptor(&sockhash),
            attach_bpf_fd: descriptor(&program),
            attach_type: ATTACH_SK_SKB_STREAM_VERDICT,
            attach_flags: 0,
        };
        bpf(PROG_ATTACH, &mut attach).map_err(|error| LoadError::Attach { error })?;
        Ok(Self {
            sockhash,
            peers,
            handed,
            _program: program,
        })
    }

    /// Puts a socket into the sockhash under `cookie`.
    pub(super) fn insert_socket(&self, cookie: u64, socket: RawFd) -> io::Result<()> {
        let value = u32::try_from(socket).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        update(&self.sockhash, cookie, &value)
    }

    pub(super) fn remove_socket(&self, cookie: u64) -> io::Result<()> {
        delete(&self.sockhash, cookie)
    }

    /// Names socket `cookie`'s peer, with the gate closed: written before the socket enters
    /// the sockhash, so every buffer it receives there is counted.
    pub(super) fn link(&self, cookie: u64, peer_cookie: u64) -> io::Result<()> {
        let entry = PeerEntry {
            peer_cookie,
            ..PeerEntry::default()
        };
        update(&self.peers, cookie, &entry)
    }

    /// Publishes how many bytes of socket `cookie` user space has forwarded by hand since it
    /// entered the sockhash: once that matches what the program passed, the kernel forwards.
    pub(super) fn hand_over(&self, cookie: u64, handed: u64) -> io::Result<()> {
        update(&self.handed, cookie, &handed)
    }

    /// Forgets socket `cookie`'s session: its buffers stay with it from now on.
    pub(super) fn unlink(&self, cookie: u64) {
        // Errors mean there was no entry (never linked, or already gone).
        let _ = delete(&self.peers, cookie);
        let _ = delete(&self.handed, cookie);
    }

    /// The bytes the kernel has redirected from socket `cookie` since it was linked.
    pub(super) fn redirected_bytes(&self, cookie: u64) -> io::Result<u64> {
        let mut entry = PeerEntry::default();
        let mut attr = MapElement {
            map_fd: descriptor(&self.peers),
            key: std::ptr::from_ref(&cookie) as u64,
            value: std::ptr::from_mut(&mut entry) as u64,
            ..MapElement::default()
        };
        bpf(MAP_LOOKUP_ELEM, &mut attr)?;
        Ok(entry.redirected_bytes)
    }
}

fn update<V>(map: &OwnedFd, key: u64, value: &V) -> io::Result<()> {
    let mut attr = MapElement {
        map_fd: descriptor(map),
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_ref(value) as u64,
        flags: UPDATE_ANY,
        ..MapElement::default()
    };
    bpf(MAP_UPDATE_ELEM, &mut attr).map(drop)
}

fn delete(map: &OwnedFd, key: u64) -> io::Result<()> {
    let mut attr = MapElement {
        map_fd: descriptor(map),
        key: std::ptr::from_ref(&key) as u64,
        ..MapElement::default()
    };
    bpf(MAP_DELETE_ELEM, &mut attr).map(drop)
}

fn load_program(instructions: &[Instruction]) -> Result<OwnedFd, LoadError> {
    let license = c"GPL";
    let mut log = vec![0u8; LOG_SIZE];
    let mut attr = ProgLoad {
        prog_type: PROG_TYPE_SK_SKB,
        insn_cnt: u32::try_from(instructions.len()).unwrap_or(u32::MAX),
        insns: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
    };
    if let Ok(fd) = bpf(PROG_LOAD, &mut attr) {
        return owned(fd).map_err(|error| LoadError::Program {
            error,
            log: String::new(),
        });
    }
    // Again with the verifier log, which is only worth its cost when something went wrong.
    attr.log_level = 1;
    attr.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
    attr.log_buf = log.as_mut_ptr() as u64;
    match bpf(PROG_LOAD, &mut attr) {
        Ok(fd) => owned(fd).map_err(|error| LoadError::Program {
            error,
            log: String::new(),
        }),
        Err(error) => {
            let end = log.iter().position(|&byte| byte == 0).unwrap_or(log.len());
            let log = String::from_utf8_lossy(&log[..end])
                .trim()
                .replace('\n', "; ");
            Err(LoadError::Program { error, log })
        }
    }
}
