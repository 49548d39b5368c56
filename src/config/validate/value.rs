//! Checks of single values shared by every section: durations, counts, names from a list.
//!
//! Each records an error under the given key and returns `None` (or the default) on failure,
//! so the caller carries on and the run reports everything.

use std::time::Duration;

use super::{Key, Report};
use crate::config::duration::parse_duration;

/// Whether a raw value says anything. gobetween's Go zero values (`""`, `0`, `false`, `[]`,
/// which its JSON dumps write out) mean "not set", like an absent key.
pub(super) trait Given {
    fn given(&self) -> bool;
}

impl Given for Option<String> {
    fn given(&self) -> bool {
        self.as_deref().is_some_and(|text| !text.is_empty())
    }
}

impl Given for Option<i64> {
    fn given(&self) -> bool {
        self.is_some_and(|number| number != 0)
    }
}

impl Given for Option<bool> {
    fn given(&self) -> bool {
        self.unwrap_or(false)
    }
}

impl<T> Given for Option<Vec<T>> {
    fn given(&self) -> bool {
        self.as_ref().is_some_and(|items| !items.is_empty())
    }
}

/// The text of a string key, `None` when absent or empty.
pub(super) fn text(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|text| !text.is_empty())
}

/// A duration in Go syntax.
pub(super) fn duration(report: &mut Report<'_>, key: &Key, text: &str) -> Option<Duration> {
    parse_duration(text)
        .map_err(|error| report.error(key, error.to_string()))
        .ok()
}

/// A timeout where `"0"` means none. Absent or empty: `default`.
pub(super) fn timeout(
    report: &mut Report<'_>,
    key: &Key,
    value: Option<&str>,
    default: Option<Duration>,
) -> Option<Duration> {
    match value.filter(|text| !text.is_empty()) {
        None => default,
        Some(text) => duration(report, key, text).filter(|duration| !duration.is_zero()),
    }
}

/// A whole number from 0 to `u32::MAX`.
pub(super) fn unsigned(report: &mut Report<'_>, key: &Key, value: i64) -> Option<u32> {
    u32::try_from(value)
        .map_err(|_| {
            report.error(
                key,
                format!(
                    "must be a whole number from 0 to {}, found {value}",
                    u32::MAX
                ),
            );
        })
        .ok()
}

/// A count where 0 means unlimited: `None` for 0 or absent.
pub(super) fn limit(report: &mut Report<'_>, key: &Key, value: Option<i64>) -> Option<u32> {
    value
        .and_then(|value| unsigned(report, key, value))
        .filter(|count| *count > 0)
}

/// A number in `min..=max`; absent gives `default`.
pub(super) fn bounded(
    report: &mut Report<'_>,
    key: &Key,
    value: Option<i64>,
    (min, max, default): (i64, i64, i64),
) -> i64 {
    match value {
        None => default,
        Some(number) if (min..=max).contains(&number) => number,
        Some(number) => {
            report.error(key, format!("must be from {min} to {max}, found {number}"));
            default
        }
    }
}

/// The keys of a raw table whose values are [`Given`] (not absent, `""`, 0, false or `[]`).
pub(super) fn given_keys<T: serde::Serialize>(table: &T) -> Vec<String> {
    let Ok(serde_json::Value::Object(map)) = serde_json::to_value(table) else {
        return Vec::new();
    };
    let zero = |value: &serde_json::Value| match value {
        serde_json::Value::Null => true,
        serde_json::Value::Bool(flag) => !flag,
        serde_json::Value::Number(number) => number.as_i64() == Some(0),
        serde_json::Value::String(text) => text.is_empty(),
        serde_json::Value::Array(items) => items.is_empty(),
        serde_json::Value::Object(fields) => fields.is_empty(),
    };
    map.into_iter()
        .filter(|(_, value)| !zero(value))
        .map(|(key, _)| key)
        .collect()
}

/// One of `options` by name; absent or empty gives `default`.
pub(super) fn choice<T: Copy>(
    report: &mut Report<'_>,
    key: &Key,
    value: &Option<String>,
    default: T,
    options: &[(&str, T)],
) -> T {
    let Some(name) = text(value) else {
        return default;
    };
    if let Some((_, found)) = options.iter().find(|(option, _)| *option == name) {
        return *found;
    }
    report.error(
        key,
        format!("unknown value {name:?}; expected {}", one_of(options)),
    );
    default
}

/// `"a, b or c"` from the option names.
pub(super) fn one_of<T>(options: &[(&str, T)]) -> String {
    let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
    match names.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_of_lists_names() {
        assert_eq!(one_of(&[("a", 1)]), "a");
        assert_eq!(one_of(&[("a", 1), ("b", 2), ("c", 3)]), "a, b or c");
    }

    #[test]
    fn zero_values_are_not_given() {
        assert!(!Option::<String>::Some(String::new()).given());
        assert!(!Some(0_i64).given());
        assert!(!Some(false).given());
        assert!(!Option::<Vec<i64>>::Some(vec![]).given());
        assert!(Some("x".to_owned()).given());
        assert!(Some(-1_i64).given());
    }

    #[test]
    fn values_report_under_their_key() {
        let mut report = Report::new("f");
        let key = Key::root("a");
        assert_eq!(timeout(&mut report, &key, Some("0"), None), None);
        assert_eq!(
            timeout(&mut report, &key, None, Some(Duration::from_secs(5))),
            Some(Duration::from_secs(5))
        );
        assert_eq!(limit(&mut report, &key, Some(0)), None);
        assert_eq!(limit(&mut report, &key, Some(7)), Some(7));
        assert!(report.errors.is_empty());
        assert_eq!(limit(&mut report, &key, Some(-1)), None);
        assert_eq!(timeout(&mut report, &key, Some("10"), None), None);
        assert_eq!(report.errors.len(), 2);
    }
}
