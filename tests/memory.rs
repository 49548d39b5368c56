//! `[betwixt] forwarding_memory`: past the cap, sessions slow down to a small copy buffer but
//! every byte still arrives, whatever the forwarding mode.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

const STREAMS: u64 = 4;
const BYTES_PER_STREAM: usize = 4 * 1024 * 1024;

/// Sends `len` seeded random bytes through `addr` to an echo backend; true when exactly the
/// same bytes came back.
async fn echoes_intact(addr: SocketAddr, seed: u64, len: usize) -> bool {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let mut random = fastrand::Rng::with_seed(seed);
    let sent: Vec<u8> = std::iter::repeat_with(|| random.u8(..)).take(len).collect();
    let send = async {
        writer.write_all(&sent).await.unwrap();
        writer.shutdown().await.unwrap();
    };
    let mut received = Vec::with_capacity(len);
    let ((), read) = tokio::join!(send, reader.read_to_end(&mut received));
    read.unwrap();
    received == sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_memory_cap_every_mode_still_forwards_everything() {
    // 0: no pipe and no buffer growth is ever granted; 100 KiB: a few, contended.
    for (mode, cap) in [("splice", 0), ("auto", 0), ("copy", 0), ("splice", 102_400)] {
        let backend = echo_backend().await;
        let config = server_config("bulk", "", &[backend.addr], "");
        let betwixt = format!(
            "[betwixt]\nforwarding = \"{mode}\"\npipe_size = 65536\nforwarding_memory = {cap}\n"
        );
        let balancer = start_balancer(&format!("{betwixt}{config}")).await;
        let addr = balancer.local_addr("bulk").unwrap();
        let streams: Vec<_> = (0..STREAMS)
            .map(|seed| tokio::spawn(echoes_intact(addr, seed, BYTES_PER_STREAM)))
            .collect();
        for stream in streams {
            let intact = tokio::time::timeout(PATIENCE, stream)
                .await
                .expect("the stream finishes")
                .unwrap();
            assert!(intact, "{mode} with a {cap}-byte cap: the echo differs");
        }
        let server = server_report(&balancer, "bulk");
        assert_eq!(server.to_clients, STREAMS * BYTES_PER_STREAM as u64);
    }
}
