//! betwixt's `[rebalance]` table: per server, each key falling back to `[defaults.rebalance]`.

use std::time::Duration;

use super::value;
use super::{Key, Report};
use crate::config::Rebalance;
use crate::config::raw::RawRebalance;

const DEFAULT_TOLERANCE: f64 = 0.2;
const DEFAULT_MAX_FRACTION: f64 = 0.02;
const DEFAULT_MIN_AGE: Duration = Duration::from_secs(60);

/// The server's rebalancing, `None` when off: no `interval` (or "0"), or a hashing balancer,
/// whose clients would come back to the backend they were closed on.
pub(super) fn rebalance(
    report: &mut Report<'_>,
    server: &Key,
    own: Option<&RawRebalance>,
    defaults: Option<&RawRebalance>,
    balance: Option<&str>,
) -> Option<Rebalance> {
    if own.is_none() && defaults.is_none() {
        return None;
    }
    let empty = RawRebalance::default();
    let (own, defaults) = (own.unwrap_or(&empty), defaults.unwrap_or(&empty));
    let pick = |name: &str, own_set: bool| {
        if own_set {
            server.child("rebalance").child(name)
        } else {
            Key::root("defaults").child("rebalance").child(name)
        }
    };

    let interval_key = pick("interval", own.interval.is_some());
    let interval = own.interval.as_ref().or(defaults.interval.as_ref());
    let interval = value::timeout(report, &interval_key, interval.map(String::as_str), None);

    let tolerance_key = pick("tolerance", own.tolerance.is_some());
    let tolerance = own
        .tolerance
        .or(defaults.tolerance)
        .unwrap_or(DEFAULT_TOLERANCE);
    if !(0.0..=10.0).contains(&tolerance) {
        report.error(
            &tolerance_key,
            format!(
                "{tolerance} is out of range; expected 0 to 10 (0.2: a backend more than 20 % \
                 over its share)"
            ),
        );
    }

    let fraction_key = pick("max_fraction", own.max_fraction.is_some());
    let max_fraction = own
        .max_fraction
        .or(defaults.max_fraction)
        .unwrap_or(DEFAULT_MAX_FRACTION);
    if !(max_fraction > 0.0 && max_fraction <= 1.0) {
        report.error(
            &fraction_key,
            format!(
                "{max_fraction} is out of range; expected above 0 and at most 1 (0.02: 2 % of \
                 the server's sessions per interval)"
            ),
        );
    }

    let age_key = pick("min_age", own.min_age.is_some());
    let min_age = own.min_age.as_ref().or(defaults.min_age.as_ref());
    let min_age = match min_age.map(String::as_str).filter(|age| !age.is_empty()) {
        None => DEFAULT_MIN_AGE,
        Some(age) => value::duration(report, &age_key, age).unwrap_or(DEFAULT_MIN_AGE),
    };

    let interval = interval?;
    if matches!(balance, Some("iphash" | "iphash1")) {
        report.warn(
            &interval_key,
            "ignored with balance iphash/iphash1: a closed client would come back to the same \
             backend",
        );
        return None;
    }
    Some(Rebalance {
        interval,
        tolerance,
        max_fraction,
        min_age,
    })
}
