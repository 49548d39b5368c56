//! Backends from text, one a line: the `static_list` grammar (exec, and plaintext by default)
//! or a regular expression with named groups (plaintext's `plaintext_regex_pattern`).

use regex::Regex;

use crate::config::BackendSpec;
use crate::config::static_list::{StaticListError, parse_backend};

/// A line that is not a backend. The line's own text is quoted by `problem`.
#[derive(Debug, thiserror::Error)]
#[error("line {number}: {problem}")]
pub struct LineError {
    /// From 1.
    pub number: usize,
    pub problem: StaticListError,
}

/// Each non-empty line in the `static_list` grammar; any other line fails the whole list
/// (gobetween skips it with a warning; a silently dropped master is worse than a kept list).
///
/// # Errors
/// The first line that is not a backend.
pub fn static_lines(text: &str) -> Result<Vec<BackendSpec>, LineError> {
    numbered_lines(text)
        .map(|(number, line)| parse_backend(line).map_err(|problem| LineError { number, problem }))
        .collect()
}

/// The lines `pattern` matches, as gobetween reads them: groups `host` and `port` make the
/// address, which must be valid; `weight`, `priority` and `max_connections` apply when they
/// hold a number (else the default, as gobetween), `sni` when not empty. Lines the pattern
/// does not match are skipped: a custom pattern is also a filter.
///
/// # Errors
/// The first matched line whose host or port is not valid.
pub fn pattern_lines(text: &str, pattern: &Regex) -> Result<Vec<BackendSpec>, LineError> {
    let mut backends = Vec::new();
    for (number, line) in numbered_lines(text) {
        let Some(groups) = pattern.captures(line) else {
            continue;
        };
        let group = |name: &str| groups.name(name).map_or("", |found| found.as_str());
        let host = group("host");
        let address = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", group("port"))
        } else {
            format!("{host}:{}", group("port"))
        };
        let mut backend =
            parse_backend(&address).map_err(|problem| LineError { number, problem })?;
        let number_in = |name: &str| group(name).parse::<u32>().ok();
        backend.weight = number_in("weight").unwrap_or(1);
        backend.priority = number_in("priority").unwrap_or(1);
        backend.max_connections = number_in("max_connections").filter(|limit| *limit > 0);
        backend.sni = Some(group("sni").to_owned()).filter(|sni| !sni.is_empty());
        backends.push(backend);
    }
    Ok(backends)
}

/// Trimmed non-empty lines with their numbers from 1.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_lines_skip_blank_lines_and_name_a_bad_one() {
        let backends = static_lines("10.0.0.1:6443\n\n  10.0.0.2:6443 weight=3  \n").unwrap();
        assert_eq!(backends.len(), 2);
        assert_eq!(backends[1].weight, 3);
        let error = static_lines("10.0.0.1:6443\n\n10.0.0.2 6443\n").unwrap_err();
        assert_eq!(error.number, 3);
        assert!(
            error
                .to_string()
                .starts_with("line 3: \"10.0.0.2 6443\" is not a valid backend"),
            "{error}"
        );
    }

    #[test]
    fn a_pattern_reads_its_groups_and_skips_lines_it_does_not_match() {
        let pattern =
            Regex::new(r"^(?P<host>\S+) (?P<port>\d+)(?: w(?P<weight>\w+))?(?: (?P<sni>\S+))?$")
                .unwrap();
        let text = "# masters\n10.0.0.1 6443 w5 m1.k3s\nfd00::1 6443 wx\n";
        let backends = pattern_lines(text, &pattern).unwrap();
        assert_eq!(backends.len(), 2);
        assert_eq!(backends[0].target(), "10.0.0.1:6443");
        assert_eq!(
            (backends[0].weight, backends[0].sni.as_deref()),
            (5, Some("m1.k3s"))
        );
        assert_eq!(backends[1].target(), "[fd00::1]:6443");
        assert_eq!((backends[1].weight, backends[1].sni.as_deref()), (1, None));
        let error = pattern_lines(
            "a b c 6443\n",
            &Regex::new(r"^(?P<host>.+) (?P<port>\d+)$").unwrap(),
        )
        .unwrap_err();
        assert_eq!(error.number, 1);
    }
}
