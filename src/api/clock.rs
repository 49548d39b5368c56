//! Times as gobetween's `GET /` prints them: Go's `time.Time` JSON (RFC 3339 with nanoseconds,
//! trailing zeros dropped) and `time.Duration.String()` for the uptime.
//!
//! Times are printed in UTC (`Z`); Go prints the host's zone offset, which is the same instant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::logging::access::civil_from_days;

/// `2024-05-01T12:00:00.5Z`: RFC 3339 in UTC with as many fraction digits as needed.
pub fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
    let nanos = since_epoch.subsec_nanos();
    if nanos > 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// Go's `Duration.String()`: `1h2m3.5s`, `150ms`, `0s`.
pub fn go_duration(duration: Duration) -> String {
    crate::config::duration::format_duration(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(seconds, nanos)
    }

    #[test]
    fn rfc3339_like_go() {
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(at(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(at(1_714_564_800, 500_000_000)),
            "2024-05-01T12:00:00.5Z"
        );
        assert_eq!(
            rfc3339(at(4_102_444_799, 123_456_789)),
            "2099-12-31T23:59:59.123456789Z"
        );
    }

    #[test]
    fn durations_like_go() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_millis(3_723_500)), "1h2m3.5s");
    }
}
