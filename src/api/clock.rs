//! Times as gobetween's `GET /` prints them: Go's `time.Time` JSON (RFC 3339 with nanoseconds,
//! trailing zeros dropped) and `time.Duration.String()` for the uptime.
//!
//! Times are printed in UTC (`Z`); Go prints the host's zone offset, which is the same instant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// The Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
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
