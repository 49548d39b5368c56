//! gobetween's `iphash1`: rendezvous (highest random weight) hashing of the client address.
//!
//! Unlike `iphash`, removing or losing a backend moves only the clients that were on it.

use std::net::IpAddr;
use std::sync::Arc;

use super::Candidates;
use super::ip_hash::with_octets;
use crate::backend::Backend;

/// Each (client, backend) pair gets a score; the candidate with the highest score wins.
#[derive(Debug)]
pub struct IpHash1 {
    /// A hash of each backend's target, by pool index, computed when the pool is built.
    target_hashes: Vec<u64>,
}

impl IpHash1 {
    pub fn new(backends: &[Arc<Backend>]) -> Self {
        let target_hashes = backends
            .iter()
            .map(|backend| fnv1a_64(backend.target.as_bytes()))
            .collect();
        Self { target_hashes }
    }

    pub fn select(&self, candidates: &Candidates<'_>, client: IpAddr) -> Option<usize> {
        let client_hash = with_octets(client, fnv1a_64);
        candidates
            .iter()
            .max_by_key(|&(index, _)| {
                let target_hash = self.target_hashes.get(index).copied().unwrap_or(0);
                mix(client_hash ^ target_hash)
            })
            .map(|(index, _)| index)
    }
}

fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash: u64, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// splitmix64's finaliser: spreads the XOR of two FNV hashes over all 64 bits.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Health;
    use crate::balance::Tried;
    use crate::balance::tests::{pool, spec};

    fn clients() -> impl Iterator<Item = IpAddr> {
        (0..=255u8).flat_map(|c| (0..4u8).map(move |d| IpAddr::from([172, 16, c, d])))
    }

    #[test]
    fn only_clients_of_a_lost_backend_move() {
        let backends = pool(&[spec(1, 1, 1), spec(2, 1, 1), spec(3, 1, 1), spec(4, 1, 1)]);
        let hash = IpHash1::new(&backends);
        let tried = Tried::new(backends.len());
        let before: Vec<_> = {
            let candidates = Candidates::new(&backends, &tried, false);
            clients()
                .map(|c| hash.select(&candidates, c).unwrap())
                .collect()
        };
        let mut counts = [0; 4];
        before.iter().for_each(|&i| counts[i] += 1);
        assert!(counts.iter().all(|&n| n > 150), "uneven spread: {counts:?}");

        backends[2].state.set_health(Health::Down);
        let candidates = Candidates::new(&backends, &tried, false);
        for (client, &was) in clients().zip(&before) {
            let now = hash.select(&candidates, client).unwrap();
            if was == 2 {
                assert_ne!(now, 2);
            } else {
                assert_eq!(now, was, "client {client} moved off a healthy backend");
            }
        }
    }

    #[test]
    fn removal_from_the_pool_moves_only_its_clients() {
        let full = pool(&[spec(1, 1, 1), spec(2, 1, 1), spec(3, 1, 1)]);
        let reduced = pool(&[spec(1, 1, 1), spec(3, 1, 1)]);
        let (full_hash, reduced_hash) = (IpHash1::new(&full), IpHash1::new(&reduced));
        let (full_tried, reduced_tried) = (Tried::new(3), Tried::new(2));
        let full_candidates = Candidates::new(&full, &full_tried, false);
        let reduced_candidates = Candidates::new(&reduced, &reduced_tried, false);
        for client in clients() {
            let was = &full[full_hash.select(&full_candidates, client).unwrap()].target;
            let now = &reduced[reduced_hash.select(&reduced_candidates, client).unwrap()].target;
            if !was.starts_with("10.0.0.2:") {
                assert_eq!(was, now);
            }
        }
    }
}
