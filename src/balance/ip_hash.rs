//! gobetween's `iphash`: FNV-1a (32-bit) of the client address, modulo the candidates sorted
//! by `host:port`. Computed exactly as gobetween computes it, so a client keeps its backend
//! when betwixt replaces gobetween.

use std::net::IpAddr;

use super::Candidates;
use crate::config::BindAddr;

/// The same client goes to the same backend while the candidate set stays the same.
#[derive(Debug)]
pub struct IpHash {
    form: ClientIpForm,
}

impl IpHash {
    pub fn new(form: ClientIpForm) -> Self {
        Self { form }
    }

    /// The pool is sorted by target, as gobetween sorts the live backends before hashing.
    pub fn select(&self, candidates: &Candidates<'_>, client: IpAddr) -> Option<usize> {
        let count = candidates.iter().count();
        if count == 0 {
            return None;
        }
        let slot = fnv1a_32(FNV_OFFSET, &self.form.bytes(client)) as usize % count;
        candidates.nth_or_last(slot)
    }
}

/// The bytes gobetween hashes for a client: Go's `net.IP` of the accepted connection.
///
/// Go accepts on a wildcard bind (`:6443`, `0.0.0.0:6443`) and on IPv6 addresses with an IPv6
/// socket, so an IPv4 client arrives as the 16-byte IPv4-mapped form (`::ffff:a.b.c.d`). On a
/// specific IPv4 bind address Go opens an IPv4 socket and the client is its 4 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpForm {
    /// Every address as 16 bytes.
    Sixteen,
    /// IPv4 clients as 4 bytes.
    Four,
}

impl ClientIpForm {
    pub fn for_bind(bind: &BindAddr) -> Self {
        let ip = bind.addr.ip();
        if ip.is_ipv4() && !ip.is_unspecified() && !bind.dual_stack {
            Self::Four
        } else {
            Self::Sixteen
        }
    }

    /// The client's bytes in this form. An IPv4-mapped client (from betwixt's own dual-stack
    /// socket) counts as IPv4 first, so it hashes like gobetween's view of the same client.
    pub(super) fn bytes(self, ip: IpAddr) -> Vec<u8> {
        match (ip.to_canonical(), self) {
            (IpAddr::V4(v4), Self::Four) => v4.octets().to_vec(),
            (IpAddr::V4(v4), Self::Sixteen) => v4.to_ipv6_mapped().octets().to_vec(),
            (IpAddr::V6(v6), _) => v6.octets().to_vec(),
        }
    }
}

/// FNV-1a's 32-bit offset basis: the hash of no bytes.
pub(super) const FNV_OFFSET: u32 = 0x811c_9dc5;

/// FNV-1a (32-bit) of `bytes`, continuing from `hash` (Go's `fnv.New32a` and `Write`).
pub(super) fn fnv1a_32(hash: u32, bytes: &[u8]) -> u32 {
    bytes.iter().fold(hash, |hash: u32, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Health;
    use crate::balance::Tried;
    use crate::balance::tests::{pool, spec};

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a_32(FNV_OFFSET, b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(FNV_OFFSET, b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(FNV_OFFSET, b"foobar"), 0xbf9c_f968);
        assert_eq!(fnv1a_32(fnv1a_32(FNV_OFFSET, b"foo"), b"bar"), 0xbf9c_f968);
    }

    /// Vectors worked out from gobetween's iphash.go: `fnv32a(ip) % live`, over the live
    /// backends sorted by `host:port`. `fnv32a(::ffff:192.0.2.7) = 0xccb5b9bc`,
    /// `fnv32a(192.0.2.7) = 0x736b986e`, `fnv32a(::ffff:10.1.2.3) = 0x7924572d`,
    /// `fnv32a(2001:db8::5) = 0x6a5afea8`.
    #[test]
    fn picks_what_gobetween_picks() {
        let backends = pool(&[spec(13, 1, 1), spec(11, 1, 1), spec(12, 1, 1)]);
        let backends = {
            let mut sorted = backends;
            sorted.sort_by(|a, b| a.target.cmp(&b.target));
            sorted
        };
        let tried = Tried::new(backends.len());
        let pick = |form, client: &str| {
            let candidates = Candidates::new(&backends, &tried, false);
            let index = IpHash::new(form)
                .select(&candidates, client.parse().unwrap())
                .unwrap();
            backends[index].target.to_string()
        };
        use ClientIpForm::{Four, Sixteen};
        assert_eq!(pick(Sixteen, "192.0.2.7"), "10.0.0.13:6443");
        assert_eq!(pick(Sixteen, "::ffff:192.0.2.7"), "10.0.0.13:6443");
        assert_eq!(pick(Four, "192.0.2.7"), "10.0.0.12:6443");
        assert_eq!(pick(Sixteen, "10.1.2.3"), "10.0.0.12:6443");
        assert_eq!(pick(Sixteen, "2001:db8::5"), "10.0.0.11:6443");
        // 10.0.0.12 down: 0x7924572d % 2 = 1 of [.11, .13].
        backends[1].state.set_health(Health::Down);
        assert_eq!(pick(Sixteen, "10.1.2.3"), "10.0.0.13:6443");
    }

    #[test]
    fn the_form_follows_the_socket_go_would_open() {
        let bind = |text: &str| BindAddr::resolve(text).unwrap();
        assert_eq!(
            ClientIpForm::for_bind(&bind(":6443")),
            ClientIpForm::Sixteen
        );
        assert_eq!(
            ClientIpForm::for_bind(&bind("0.0.0.0:6443")),
            ClientIpForm::Sixteen
        );
        assert_eq!(
            ClientIpForm::for_bind(&bind("[::1]:6443")),
            ClientIpForm::Sixteen
        );
        assert_eq!(
            ClientIpForm::for_bind(&bind("127.0.0.1:6443")),
            ClientIpForm::Four
        );
    }

    #[test]
    fn a_client_sticks_and_clients_spread() {
        let backends = pool(&[spec(1, 1, 1), spec(2, 1, 1), spec(3, 1, 1)]);
        let tried = Tried::new(backends.len());
        let candidates = Candidates::new(&backends, &tried, false);
        let hash = IpHash::new(ClientIpForm::Sixteen);
        let mut seen = [0; 3];
        for last in 0..=255u8 {
            let client = IpAddr::from([10, 0, 0, last]);
            let first = hash.select(&candidates, client).unwrap();
            assert_eq!(hash.select(&candidates, client), Some(first));
            seen[first] += 1;
        }
        assert!(seen.iter().all(|&n| n > 40), "{seen:?}");
    }
}
