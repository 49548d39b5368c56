//! The balancer as a separate process under resource pressure: out of descriptors (splice
//! falls back to copy, the accept loop backs off and recovers) and peers that stop reading
//! (it waits without spinning).

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

/// A betwixt process serving one server, logging to a file in its scratch directory.
struct Balancer {
    daemon: Daemon,
    addr: SocketAddr,
}

impl Balancer {
    async fn start(test: &str, backend: SocketAddr, betwixt_table: &str) -> Self {
        let scratch = Scratch::new(test);
        let port = free_port();
        let config = format!(
            "[logging]\nlevel = \"info\"\noutput = \"{}\"\n[betwixt]\n{betwixt_table}\n\
             [servers.k3s]\nbind = \"127.0.0.1:{port}\"\n\
             [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [\"{backend}\"]\n",
            scratch.0.join("betwixt.log").display()
        );
        let daemon = Daemon::spawn_in(scratch, &config, &[], &[]);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let balancer = Self { daemon, addr };
        eventually("the balancer listens", || {
            balancer.log().contains("betwixt ready")
        })
        .await;
        balancer
    }

    fn pid(&self) -> i32 {
        self.daemon.pid()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.daemon.scratch.0.join("betwixt.log")).unwrap_or_default()
    }

    /// The descriptor limit that leaves exactly `free` descriptor numbers available (the
    /// kernel hands out the lowest free number below the limit).
    fn fd_limit_leaving(&self, free: u64) -> u64 {
        let mut used: Vec<u64> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        used.sort_unstable();
        (0..100_000u64)
            .find(|&limit| limit - used.iter().filter(|&&fd| fd < limit).count() as u64 == free)
            .expect("a limit")
    }

    /// Sets the process's soft descriptor limit to `limit` (the hard limit stays).
    fn limit_fds(&self, limit: u64) {
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit on our own child, reading into a valid rlimit struct.
        let read = unsafe {
            libc::prlimit(
                self.pid(),
                libc::RLIMIT_NOFILE,
                std::ptr::null(),
                &mut current,
            )
        };
        assert_eq!(read, 0, "prlimit: {}", std::io::Error::last_os_error());
        let wanted = libc::rlimit {
            rlim_cur: limit.min(current.rlim_max),
            rlim_max: current.rlim_max,
        };
        // SAFETY: as above, writing from a valid rlimit struct.
        let written = unsafe {
            libc::prlimit(
                self.pid(),
                libc::RLIMIT_NOFILE,
                &wanted,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(written, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    /// CPU time (user + system) the process used, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    async fn stop(mut self) {
        self.daemon.signal(libc::SIGTERM);
        assert!(self.daemon.wait_for_exit().await.success());
    }
}

/// Sends `len` random bytes and checks the echo.
async fn echo_intact(stream: &mut TcpStream, len: usize) {
    let mut data = vec![0u8; len];
    fastrand::Rng::with_seed(len as u64).fill(&mut data);
    let (mut reader, mut writer) = stream.split();
    let send = async {
        writer.write_all(&data).await.unwrap();
    };
    let mut echoed = vec![0u8; len];
    let receive = async {
        reader.read_exact(&mut echoed).await.unwrap();
    };
    tokio::time::timeout(PATIENCE, async { tokio::join!(send, receive) })
        .await
        .expect("echo within the patience");
    assert_eq!(Sha256::digest(&echoed), Sha256::digest(&data));
}

#[tokio::test]
async fn splice_falls_back_to_copy_when_no_pipe_can_be_had() {
    let backend = echo_backend().await;
    let balancer = Balancer::start("fallback", backend.addr, "forwarding = \"splice\"").await;
    // One session fits (two sockets), its pipes do not (two descriptors each).
    balancer.limit_fds(balancer.fd_limit_leaving(3));
    let mut session = TcpStream::connect(balancer.addr).await.unwrap();
    echo_intact(&mut session, 1 << 20).await;
    let log = balancer.log();
    assert!(
        log.contains("falling back to user-space copy"),
        "no fallback logged:\n{log}"
    );
    drop(session);
    balancer.stop().await;
}

#[tokio::test]
async fn a_backend_that_stops_reading_costs_no_cpu() {
    for mode in ["splice", "copy"] {
        // Accepts and never reads: the balancer's writes to it block once buffers are full.
        let backend = silent_backend().await;
        let table = format!("forwarding = \"{mode}\"");
        let balancer = Balancer::start("stuck", backend.addr, &table).await;
        let mut client = TcpStream::connect(balancer.addr).await.unwrap();
        let chunk = vec![0u8; 64 * 1024];
        // Fill every buffer on the way until the client's own writes block.
        for _ in 0..10_000 {
            let write = tokio::time::timeout(Duration::from_millis(300), client.write_all(&chunk));
            if write.await.is_err() {
                break;
            }
        }
        let before = balancer.cpu_ticks();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = balancer.cpu_ticks() - before;
        // A busy loop would burn a whole core: about 100 ticks in 1 s.
        assert!(
            used < 20,
            "{mode}: {used} ticks of CPU while waiting for a stuck peer"
        );
        drop(client);
        balancer.stop().await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_costs_no_cpu() {
    // The backend streams forever; the client never reads.
    let backend = spawn_backend_on("127.0.0.1:0".parse().unwrap(), |mut stream| async move {
        let chunk = vec![1u8; 64 * 1024];
        for _ in 0..100_000 {
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    let balancer = Balancer::start("deaf", backend.addr, "").await;
    let client = TcpStream::connect(balancer.addr).await.unwrap();
    // Until every buffer on the way is full and the balancer waits for the client.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = balancer.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = balancer.cpu_ticks() - before;
    assert!(
        used < 20,
        "{used} ticks of CPU while the client does not read"
    );
    drop(client);
    balancer.stop().await;
}

#[tokio::test]
async fn the_accept_loop_survives_running_out_of_descriptors() {
    let backend = echo_backend().await;
    let balancer = Balancer::start("emfile", backend.addr, "forwarding = \"copy\"").await;
    // Room for exactly two sessions.
    balancer.limit_fds(balancer.fd_limit_leaving(4));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(balancer.addr).await.unwrap();
        echo_intact(&mut stream, 1024).await;
        held.push(stream);
    }
    // The kernel completes these handshakes, but accept(2) fails with EMFILE.
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(TcpStream::connect(balancer.addr).await.unwrap());
    }
    eventually("EMFILE is logged", || {
        balancer.log().contains("accept failed")
    })
    .await;
    let before = balancer.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        balancer.cpu_ticks() - before < 30,
        "the accept loop spins on EMFILE"
    );

    // Free the descriptors: the queued clients are served.
    drop(held);
    balancer.limit_fds(4096);
    for stream in &mut waiting {
        echo_intact(stream, 1024).await;
    }
    drop(waiting);
    balancer.stop().await;
}
