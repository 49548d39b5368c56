//! Durations in Go's `time.ParseDuration` syntax, the form every gobetween timeout uses.
//!
//! Accepted: one or more `NUMBER UNIT` pairs (`"1h30m"`, `"1.5s"`, `".5s"`, `"1.s"`), units `ns`,
//! `us`, `µs` (U+00B5), `μs` (U+03BC), `ms`, `s`, `m`, `h`; a bare `"0"`; an optional leading `+`.
//! Refused, unlike Go: negative durations (Go accepts them, but no gobetween key means anything by
//! them). Refused, like Go: `""`, a number without a unit (`"10"`), unknown units (`"1d"`), and
//! anything above Go's limit of 2^63-1 nanoseconds (about 292 years).

use std::fmt;
use std::time::Duration;

/// The largest duration Go can represent: `i64::MAX` nanoseconds.
const MAX_NANOS: u128 = i64::MAX as u128;

/// The units Go accepts, with their length in nanoseconds.
const UNITS: [(&str, u64); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// A duration string that Go's syntax (or betwixt's no-negatives rule) does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {problem}")]
pub struct DurationError {
    /// The text as written in the file.
    pub input: String,
    pub problem: DurationProblem,
}

/// What is wrong with a duration string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationProblem {
    Empty,
    /// A number not followed by a unit, as in `"10"`.
    MissingUnit,
    /// A unit Go does not know, as in `"1d"`.
    UnknownUnit(String),
    /// Something other than a number where one is expected.
    Syntax,
    Negative,
    TooLarge,
}

impl fmt::Display for DurationProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNIT_HINT: &str = "use ns, us, ms, s, m or h";
        match self {
            Self::Empty => f.write_str("empty; write a duration such as \"5s\", or \"0\""),
            Self::MissingUnit => write!(f, "missing unit ({UNIT_HINT})"),
            Self::UnknownUnit(unit) => write!(f, "unknown unit {unit:?} ({UNIT_HINT})"),
            Self::Syntax => f.write_str(
                "expected numbers each followed by a unit, such as \"500ms\", \"5s\" or \"1h30m\"",
            ),
            Self::Negative => f.write_str("negative durations are not allowed"),
            Self::TooLarge => f.write_str("too large (the maximum is about 292 years)"),
        }
    }
}

/// Parses `text` as Go's `time.ParseDuration` does, refusing negative values.
///
/// # Errors
/// A [`DurationError`] naming the text and what is wrong with it.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let fail = |problem| DurationError {
        input: text.to_owned(),
        problem,
    };
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(fail(if text.is_empty() {
            DurationProblem::Empty
        } else {
            DurationProblem::Syntax
        }));
    }
    let nanos = sum_terms(rest).map_err(fail)?;
    if negative && nanos > 0 {
        return Err(fail(DurationProblem::Negative));
    }
    let nanos = u64::try_from(nanos).map_err(|_| fail(DurationProblem::TooLarge))?;
    Ok(Duration::from_nanos(nanos))
}

/// Adds up the `NUMBER UNIT` terms of `text` (sign already removed), in nanoseconds.
fn sum_terms(mut text: &str) -> Result<u128, DurationProblem> {
    let mut total: u128 = 0;
    while !text.is_empty() {
        let (nanos, rest) = term(text)?;
        total += nanos;
        if total > MAX_NANOS {
            return Err(DurationProblem::TooLarge);
        }
        text = rest;
    }
    Ok(total)
}

/// Parses one `NUMBER UNIT` term at the start of `text`: its value and the remaining text.
fn term(text: &str) -> Result<(u128, &str), DurationProblem> {
    let int_len = digits_len(text);
    let (int_digits, rest) = text.split_at(int_len);
    let (frac_digits, rest) = match rest.strip_prefix('.') {
        Some(after_dot) => after_dot.split_at(digits_len(after_dot)),
        None => ("", rest),
    };
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(DurationProblem::Syntax);
    }
    let unit_len = rest
        .find(|c: char| c == '.' || c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (unit, rest) = rest.split_at(unit_len);
    if unit.is_empty() {
        return Err(DurationProblem::MissingUnit);
    }
    let unit_nanos = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, nanos)| u128::from(*nanos))
        .ok_or_else(|| DurationProblem::UnknownUnit(unit.to_owned()))?;
    let whole = integer(int_digits)?
        .checked_mul(unit_nanos)
        .filter(|nanos| *nanos <= MAX_NANOS)
        .ok_or(DurationProblem::TooLarge)?;
    Ok((whole + fraction(frac_digits, unit_nanos), rest))
}

/// The number of leading ASCII digits of `text`.
fn digits_len(text: &str) -> usize {
    text.bytes().take_while(u8::is_ascii_digit).count()
}

/// The value of a run of ASCII digits; "" is 0. Values above Go's limit are an error.
fn integer(digits: &str) -> Result<u128, DurationProblem> {
    let mut value: u128 = 0;
    for digit in digits.bytes() {
        value = value * 10 + u128::from(digit - b'0');
        if value > MAX_NANOS {
            return Err(DurationProblem::TooLarge);
        }
    }
    Ok(value)
}

/// `0.DIGITS` units in nanoseconds, truncated. Like Go, digits beyond nanosecond precision of
/// the largest unit are ignored.
fn fraction(digits: &str, unit_nanos: u128) -> u128 {
    let mut numerator: u128 = 0;
    let mut denominator: u128 = 1;
    for digit in digits.bytes().take(20) {
        numerator = numerator * 10 + u128::from(digit - b'0');
        denominator *= 10;
    }
    numerator * unit_nanos / denominator
}

/// Formats a duration in Go's style (`"1h30m0s"`, `"1.5s"`, `"500ms"`), for messages.
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        let (value, unit) = match nanos {
            n if n < 1_000 => return format!("{n}ns"),
            n if n < 1_000_000 => (n as f64 / 1e3, "µs"),
            n => (n as f64 / 1e6, "ms"),
        };
        return format!("{value}{unit}");
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = nanos / 60_000_000_000 % 60;
    let seconds = (nanos % 60_000_000_000) as f64 / 1e9;
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        match parse_duration(text) {
            Ok(duration) => duration,
            Err(error) => panic!("{text:?} should parse: {error}"),
        }
    }

    #[test]
    fn accepts_go_syntax() {
        let table: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("+0", Duration::ZERO),
            ("-0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("-0s", Duration::ZERO),
            ("5s", Duration::from_secs(5)),
            ("+5s", Duration::from_secs(5)),
            ("500ms", Duration::from_millis(500)),
            ("1ns", Duration::from_nanos(1)),
            ("7us", Duration::from_micros(7)),
            ("7\u{b5}s", Duration::from_micros(7)),
            ("7\u{3bc}s", Duration::from_micros(7)),
            ("2m", Duration::from_secs(120)),
            ("2h", Duration::from_secs(7200)),
            ("1h30m", Duration::from_secs(5400)),
            ("1h30m15s", Duration::from_secs(5415)),
            ("1m1m", Duration::from_secs(120)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("0.5h", Duration::from_secs(1800)),
            ("1.000000001s", Duration::from_nanos(1_000_000_001)),
            ("1.0000000019s", Duration::from_nanos(1_000_000_001)),
            ("00010s", Duration::from_secs(10)),
            ("1h1.5m", Duration::from_secs(3690)),
            ("2562047h", Duration::from_secs(2_562_047 * 3600)),
            (
                "9223372036854775807ns",
                Duration::from_nanos(9_223_372_036_854_775_807),
            ),
        ];
        for (text, expected) in table {
            assert_eq!(ok(text), *expected, "{text}");
        }
    }

    #[test]
    fn refuses_invalid_forms() {
        use DurationProblem::*;
        let table: &[(&str, DurationProblem)] = &[
            ("", Empty),
            ("+", Syntax),
            ("-", Syntax),
            ("10", MissingUnit),
            ("1.5", MissingUnit),
            ("1s10", MissingUnit),
            ("1.5.5s", MissingUnit),
            ("1d", UnknownUnit("d".into())),
            ("5 s", UnknownUnit(" s".into())),
            ("5S", UnknownUnit("S".into())),
            ("5sec", UnknownUnit("sec".into())),
            ("s", Syntax),
            (".s", Syntax),
            ("abc", Syntax),
            (" 5s", Syntax),
            ("1s ", UnknownUnit("s ".into())),
            ("-5s", Negative),
            ("-1h30m", Negative),
            ("9223372036854775808ns", TooLarge),
            ("2562048h", TooLarge),
            ("2562047h48m", TooLarge),
            ("99999999999999999999999h", TooLarge),
        ];
        for (text, problem) in table {
            let error = parse_duration(text).expect_err(text);
            assert_eq!(&error.problem, problem, "{text}");
            assert_eq!(error.input, *text);
        }
    }

    #[test]
    fn messages_name_the_text_and_the_fix() {
        let message = |text: &str| parse_duration(text).expect_err(text).to_string();
        assert_eq!(
            message("10"),
            "invalid duration \"10\": missing unit (use ns, us, ms, s, m or h)"
        );
        assert_eq!(
            message("1d"),
            "invalid duration \"1d\": unknown unit \"d\" (use ns, us, ms, s, m or h)"
        );
        assert!(message("-5s").contains("negative"));
        assert!(message("").contains("empty"));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m0s");
        assert_eq!(format_duration(Duration::from_nanos(3)), "3ns");
    }
}
