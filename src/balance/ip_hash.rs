//! gobetween's `iphash`: FNV-1a of the client address modulo the candidates.

use std::net::IpAddr;

use super::Candidates;

/// The same client goes to the same backend while the candidate set stays the same.
#[derive(Debug, Default)]
pub struct IpHash;

impl IpHash {
    pub fn select(&self, candidates: &Candidates<'_>, client: IpAddr) -> Option<usize> {
        let count = candidates.iter().count();
        if count == 0 {
            return None;
        }
        let slot = with_octets(client, fnv1a_32) as usize % count;
        candidates.nth_or_last(slot)
    }
}

/// The address bytes, IPv4-mapped IPv6 clients (from a dual-stack listener) as plain IPv4 so a
/// client hashes the same whichever socket it reached.
pub(super) fn with_octets<R>(ip: IpAddr, hash: impl FnOnce(&[u8]) -> R) -> R {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash(&v4.octets()),
        IpAddr::V6(v6) => hash(&v6.octets()),
    }
}

pub(super) fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash: u32, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Tried;
    use crate::balance::tests::{pool, spec};

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn a_client_sticks_and_clients_spread() {
        let backends = pool(&[spec(1, 1, 1), spec(2, 1, 1), spec(3, 1, 1)]);
        let tried = Tried::new(backends.len());
        let candidates = Candidates::new(&backends, &tried, false);
        let mut seen = [0; 3];
        for last in 0..=255u8 {
            let client = IpAddr::from([10, 0, 0, last]);
            let first = IpHash.select(&candidates, client).unwrap();
            assert_eq!(IpHash.select(&candidates, client), Some(first));
            seen[first] += 1;
        }
        assert!(seen.iter().all(|&n| n > 40), "{seen:?}");
    }

    #[test]
    fn mapped_v4_hashes_like_v4() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let octets = |ip| with_octets(ip, <[u8]>::to_vec);
        assert_eq!(octets(v4), octets(mapped));
    }
}
