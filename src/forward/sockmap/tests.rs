//! Sessions through the kernel over loopback: the program loads (tests run as root), bytes
//! arrive intact both ways, and the counters match what moved.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::ForwardingMode;
use crate::forward::{Budget, Direction, Meter, Options, Stream, Transferred};

#[derive(Default)]
struct Counted {
    to_backend: AtomicU64,
    to_client: AtomicU64,
}

impl Meter for Counted {
    fn record(&self, direction: Direction, bytes: u64) {
        match direction {
            Direction::ToBackend => self.to_backend.fetch_add(bytes, Ordering::Relaxed),
            Direction::ToClient => self.to_client.fetch_add(bytes, Ordering::Relaxed),
        };
    }
}

/// Held by the tests that read the process-wide count of bytes moved by hand, so none counts
/// another's.
static BY_HAND_COUNT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn connected_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

fn options() -> Options {
    Options {
        client_idle_timeout: None,
        backend_idle_timeout: None,
        mode: ForwardingMode::Sockmap,
        pipe_size: 64 * 1024,
        copy_buffer_size: 1 << 20,
        budget: Arc::new(Budget::new(1 << 20)),
    }
}

#[test]
fn the_verdict_program_loads_as_root() {
    if !nix_is_root() {
        return;
    }
    if let Err(error) = super::Kernel::load() {
        panic!("{error}");
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `prefix` bytes are sent before the relay starts (they sit in the receive queue and are
/// moved by hand), the rest goes through the kernel; the backend echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_every_byte_and_counts_them() {
    let _counting = BY_HAND_COUNT.lock().await;
    let by_hand_before = super::MOVED_BY_HAND.load(Ordering::Relaxed);
    assert!(
        super::kernel().is_some(),
        "tests run as root: the program loads"
    );
    let len = 8 << 20;
    let prefix = 1000;
    let (client, relay_client) = connected_pair().await;
    let (relay_backend, backend) = connected_pair().await;
    let mut random = fastrand::Rng::with_seed(7);
    let sent: Vec<u8> = std::iter::repeat_with(|| random.u8(..)).take(len).collect();
    let (mut from_relay, mut to_relay) = client.into_split();
    to_relay.write_all(&sent[..prefix]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let meter = Arc::new(Counted::default());
    let relay_meter = Arc::clone(&meter);
    let relay = tokio::spawn(async move {
        let (mut client, mut backend) = (Stream::Tcp(relay_client), Stream::Tcp(relay_backend));
        crate::forward::relay(&mut client, &mut backend, &options(), &*relay_meter).await
    });
    let echo = tokio::spawn(async move {
        let (mut from_relay, mut to_relay) = backend.into_split();
        tokio::io::copy(&mut from_relay, &mut to_relay).await?;
        to_relay.shutdown().await
    });
    // The prefix comes back first: the session is in the kernel before the rest is sent.
    let mut echoed_prefix = vec![0u8; prefix];
    from_relay.read_exact(&mut echoed_prefix).await.unwrap();
    let send = async {
        to_relay.write_all(&sent[prefix..]).await.unwrap();
        to_relay.shutdown().await.unwrap();
    };
    let mut received = echoed_prefix;
    let receive = from_relay.read_to_end(&mut received);
    let run = async { tokio::join!(send, receive) };
    let ((), read) = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the echo completes");
    if let Err(error) = read {
        let relay = relay.await.unwrap();
        panic!("the client's read failed: {error}; the relay: {relay:?}");
    }
    echo.await.unwrap().unwrap();
    let transferred = relay.await.unwrap().unwrap();
    assert!(received == sent, "the echoed bytes differ");
    let expected = Transferred {
        to_backend: len as u64,
        to_client: len as u64,
    };
    assert_eq!(transferred, expected);
    assert_eq!(meter.to_backend.load(Ordering::Relaxed), len as u64);
    assert_eq!(meter.to_client.load(Ordering::Relaxed), len as u64);
    let by_hand = super::MOVED_BY_HAND.load(Ordering::Relaxed) - by_hand_before;
    // The queued prefix goes by hand, and so does whatever the client sent while the session
    // switched over (more on a busy machine); the kernel moves the rest.
    assert!(
        by_hand < len as u64,
        "{by_hand} bytes moved by hand: the kernel moved most of both ways"
    );
}

/// Bytes queued before the relay started, with nothing after them, still arrive: a request
/// the first flight did not consume must not wait for the next one.
#[tokio::test]
async fn queued_bytes_arrive_without_more_traffic() {
    let _counting = BY_HAND_COUNT.lock().await;
    let (mut client, relay_client) = connected_pair().await;
    let (relay_backend, mut backend) = connected_pair().await;
    client.write_all(b"queued before the relay").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let relay = tokio::spawn(async move {
        let (mut client, mut backend) = (Stream::Tcp(relay_client), Stream::Tcp(relay_backend));
        crate::forward::relay(&mut client, &mut backend, &options(), &Counted::default()).await
    });
    let mut got = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), backend.read_exact(&mut got))
        .await
        .expect("the queued bytes arrive")
        .unwrap();
    assert_eq!(&got, b"queued before the relay");
    relay.abort();
}

/// A client that never pauses: its bytes keep arriving while the session drains, inserts and
/// hands over, so some are moved by hand and the rest by the kernel, and the order must hold
/// across that switch. Many sessions at once make the switch land mid-burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_pauses_stays_in_order_across_the_switch() {
    let _counting = BY_HAND_COUNT.lock().await;
    const SESSIONS: usize = 24;
    const WORDS: u32 = 256 * 1024; // 1 MiB of counting u32s per session
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let (client, relay_client) = connected_pair().await;
        let (relay_backend, backend) = connected_pair().await;
        let send = tokio::spawn(async move {
            let mut client = client;
            let mut next = 0u32;
            while next < WORDS {
                let chunk: Vec<u8> = (next..(next + 256).min(WORDS))
                    .flat_map(u32::to_le_bytes)
                    .collect();
                client.write_all(&chunk).await.unwrap();
                next += 256;
            }
            client.shutdown().await.unwrap();
            client
        });
        let check = tokio::spawn(async move {
            let mut backend = backend;
            let mut received = Vec::with_capacity(WORDS as usize * 4);
            backend.read_to_end(&mut received).await.unwrap();
            received
                .chunks(4)
                .enumerate()
                .find(|(at, word)| word != &(*at as u32).to_le_bytes())
                .map(|(at, _)| at)
                .or((received.len() != WORDS as usize * 4).then_some(received.len()))
        });
        // The relay starts once the sender is well under way.
        tokio::time::sleep(Duration::from_micros(200)).await;
        let relay = tokio::spawn(async move {
            let (mut client, mut backend) = (Stream::Tcp(relay_client), Stream::Tcp(relay_backend));
            crate::forward::relay(&mut client, &mut backend, &options(), &Counted::default()).await
        });
        sessions.push((send, check, relay));
    }
    let by_hand_before = super::MOVED_BY_HAND.load(Ordering::Relaxed);
    for (index, (send, check, relay)) in sessions.into_iter().enumerate() {
        let client = tokio::time::timeout(Duration::from_secs(30), send)
            .await
            .expect("the sender finishes")
            .unwrap();
        let first_wrong = tokio::time::timeout(Duration::from_secs(30), check)
            .await
            .expect("the backend gets EOF")
            .unwrap();
        assert_eq!(first_wrong, None, "session {index}: first misplaced word");
        drop(client);
        relay.abort();
    }
    let moved_by_hand = super::MOVED_BY_HAND.load(Ordering::Relaxed) - by_hand_before;
    assert!(
        moved_by_hand < SESSIONS as u64 * u64::from(WORDS) * 2,
        "the kernel moved most of the streams ({moved_by_hand} bytes by hand)"
    );
}
