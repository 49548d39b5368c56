//! gobetween's `iphash1`: for each candidate, FNV-1a (32-bit) of the client address followed
//! by the backend's `host:port`; the highest wins (rendezvous hashing). Computed exactly as
//! gobetween computes it, so a client keeps its backend when betwixt replaces gobetween.
//!
//! Unlike `iphash`, removing or losing a backend moves only the clients that were on it.

use std::net::IpAddr;

use super::Candidates;
use super::ip_hash::{ClientIpForm, FNV_OFFSET, fnv1a_32};

/// Each (client, backend) pair gets a score; the candidate with the highest score wins.
#[derive(Debug)]
pub struct IpHash1 {
    form: ClientIpForm,
}

impl IpHash1 {
    pub fn new(form: ClientIpForm) -> Self {
        Self { form }
    }

    /// Ties keep the first candidate in pool order, as gobetween keeps the first it meets
    /// (its order is a map's, so a tie, one pair in four billion, may differ).
    pub fn select(&self, candidates: &Candidates<'_>, client: IpAddr) -> Option<usize> {
        let client_hash = fnv1a_32(FNV_OFFSET, &self.form.bytes(client));
        let mut best: Option<(u32, usize)> = None;
        for (index, backend) in candidates.iter() {
            let score = fnv1a_32(client_hash, backend.target.as_bytes());
            if best.is_none_or(|(best_score, _)| score > best_score) {
                best = Some((score, index));
            }
        }
        best.map(|(_, index)| index)
    }
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

    fn hash() -> IpHash1 {
        IpHash1::new(ClientIpForm::Sixteen)
    }

    /// Vectors worked out from gobetween's iphash1.go: the argmax over the live backends of
    /// `fnv32a(ip ++ "host:port")`.
    #[test]
    fn picks_what_gobetween_picks() {
        let backends = pool(&[spec(11, 1, 1), spec(12, 1, 1), spec(13, 1, 1)]);
        let tried = Tried::new(backends.len());
        let pick = |form, client: &str| {
            let candidates = Candidates::new(&backends, &tried, false);
            let index = IpHash1::new(form)
                .select(&candidates, client.parse().unwrap())
                .unwrap();
            backends[index].target.to_string()
        };
        use ClientIpForm::{Four, Sixteen};
        assert_eq!(pick(Sixteen, "192.0.2.7"), "10.0.0.12:6443");
        assert_eq!(pick(Sixteen, "10.1.2.3"), "10.0.0.11:6443");
        assert_eq!(pick(Four, "10.1.2.3"), "10.0.0.13:6443");
        assert_eq!(pick(Sixteen, "172.16.0.1"), "10.0.0.11:6443");
        assert_eq!(pick(Sixteen, "2001:db8::5"), "10.0.0.13:6443");
        backends[0].state.set_health(Health::Down);
        assert_ne!(pick(Sixteen, "10.1.2.3"), "10.0.0.11:6443");
        assert_eq!(pick(Sixteen, "192.0.2.7"), "10.0.0.12:6443");
    }

    #[test]
    fn only_clients_of_a_lost_backend_move() {
        let backends = pool(&[spec(1, 1, 1), spec(2, 1, 1), spec(3, 1, 1), spec(4, 1, 1)]);
        let hash = hash();
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
        let (full_tried, reduced_tried) = (Tried::new(3), Tried::new(2));
        let full_candidates = Candidates::new(&full, &full_tried, false);
        let reduced_candidates = Candidates::new(&reduced, &reduced_tried, false);
        for client in clients() {
            let was = &full[hash().select(&full_candidates, client).unwrap()].target;
            let now = &reduced[hash().select(&reduced_candidates, client).unwrap()].target;
            if !was.starts_with("10.0.0.2:") {
                assert_eq!(was, now);
            }
        }
    }
}
