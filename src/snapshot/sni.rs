//! SNI routing: which backends of a server may serve the name a client asked for, with
//! gobetween's rules (its `balance/middleware/sni.go`).
//!
//! A backend matches when its `sni=` tag equals the name ignoring ASCII case (`exact`), or,
//! with `regexp`, when its tag, a regular expression, finds a match in the name (an untagged
//! backend matches only a client that sent no name). When none matches, the
//! `unexpected_hostname_strategy` decides: `reject` closes the client, `any` allows every
//! backend, `default` allows the backends that match an empty name (the untagged ones), and
//! nothing for a client that sent no name.

use regex::Regex;

use crate::backend::Backend;
use crate::config::{HostnameMatching, SniConfig, UnexpectedHostname};
use crate::pool::Pool;

/// A server's `[sni]` with each backend's pattern compiled, in pool order.
#[derive(Debug)]
pub struct SniRouter {
    pub config: SniConfig,
    /// `regexp` matching: the compiled tag of each backend (`None` untagged, or invalid: the
    /// config refused those already).
    patterns: Vec<Option<Regex>>,
}

/// Where a client may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Per backend, in pool order: may this client be sent there.
    pub eligible: Vec<bool>,
    /// No backend matched the name itself: the unexpected hostname strategy decided.
    pub unmatched: bool,
}

impl Route {
    /// True when no backend at all is allowed: the client is closed.
    pub fn is_rejected(&self) -> bool {
        !self.eligible.iter().any(|eligible| *eligible)
    }
}

impl SniRouter {
    pub fn new(config: &SniConfig, pool: &Pool) -> Self {
        let patterns = match config.matching {
            HostnameMatching::Exact => Vec::new(),
            HostnameMatching::Regexp => pool
                .backends()
                .iter()
                .map(|backend| {
                    backend
                        .spec
                        .sni
                        .as_deref()
                        .and_then(|tag| Regex::new(tag).ok())
                })
                .collect(),
        };
        Self {
            config: config.clone(),
            patterns,
        }
    }

    /// The backends of `pool` (the pool this router was built with) that may serve a client
    /// asking for `name` (`None`: it sent no server name).
    pub fn route(&self, pool: &Pool, name: Option<&str>) -> Route {
        let requested = name.unwrap_or("");
        let matching = |requested: &str| -> Vec<bool> {
            pool.backends()
                .iter()
                .enumerate()
                .map(|(index, backend)| self.matches(index, backend, requested))
                .collect()
        };
        let eligible = matching(requested);
        if eligible.iter().any(|matched| *matched) {
            return Route {
                eligible,
                unmatched: false,
            };
        }
        let eligible = match self.config.unexpected {
            UnexpectedHostname::Reject => eligible,
            UnexpectedHostname::Any => vec![true; eligible.len()],
            UnexpectedHostname::Default if requested.is_empty() => eligible,
            UnexpectedHostname::Default => matching(""),
        };
        Route {
            eligible,
            unmatched: true,
        }
    }

    fn matches(&self, index: usize, backend: &Backend, requested: &str) -> bool {
        let tag = backend.spec.sni.as_deref().unwrap_or("");
        match self.config.matching {
            HostnameMatching::Exact => tag.eq_ignore_ascii_case(requested),
            HostnameMatching::Regexp if tag.is_empty() => requested.is_empty(),
            HostnameMatching::Regexp => self
                .patterns
                .get(index)
                .and_then(Option::as_ref)
                .is_some_and(|pattern| pattern.is_match(requested)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::{pool as backends, spec};
    use crate::config::BalanceKind;

    fn router(
        matching: HostnameMatching,
        unexpected: UnexpectedHostname,
        tags: &[Option<&str>],
    ) -> (SniRouter, Pool) {
        let specs: Vec<_> = tags
            .iter()
            .enumerate()
            .map(|(index, tag)| {
                let mut backend = spec(index as u8 + 1, 1, 1);
                backend.sni = tag.map(str::to_owned);
                backend
            })
            .collect();
        let pool = Pool::new(BalanceKind::RoundRobin, backends(&specs));
        let config = SniConfig {
            read_timeout: std::time::Duration::from_secs(2),
            matching,
            unexpected,
        };
        (SniRouter::new(&config, &pool), pool)
    }

    #[test]
    fn exact_matching_ignores_case_and_falls_back_per_strategy() {
        let tags = [Some("a.example"), Some("b.example"), None];
        let cases = [
            (
                UnexpectedHostname::Default,
                Some("A.Example"),
                [true, false, false],
                false,
            ),
            (
                UnexpectedHostname::Default,
                Some("c.example"),
                [false, false, true],
                true,
            ),
            (
                UnexpectedHostname::Default,
                None,
                [false, false, true],
                false,
            ),
            (
                UnexpectedHostname::Reject,
                Some("c.example"),
                [false, false, false],
                true,
            ),
            (
                UnexpectedHostname::Any,
                Some("c.example"),
                [true, true, true],
                true,
            ),
        ];
        for (unexpected, name, eligible, unmatched) in cases {
            let (router, pool) = router(HostnameMatching::Exact, unexpected, &tags);
            let route = router.route(&pool, name);
            assert_eq!(route.eligible, eligible, "{unexpected:?} {name:?}");
            assert_eq!(route.unmatched, unmatched, "{unexpected:?} {name:?}");
        }
        let (router, pool) = router(
            HostnameMatching::Exact,
            UnexpectedHostname::Default,
            &[Some("a.example")],
        );
        assert!(
            router.route(&pool, None).is_rejected(),
            "no name, no untagged backend"
        );
    }

    #[test]
    fn regexp_tags_search_the_name() {
        let tags = [Some(r"^api\.a\."), Some("b"), None];
        let (router, pool) = router(HostnameMatching::Regexp, UnexpectedHostname::Default, &tags);
        assert_eq!(
            router.route(&pool, Some("api.a.example")).eligible,
            [true, false, false]
        );
        assert_eq!(
            router.route(&pool, Some("x.b.example")).eligible,
            [false, true, false]
        );
        assert_eq!(
            router.route(&pool, Some("zzz")).eligible,
            [false, false, true]
        );
    }
}
