//! One `static_list` entry in gobetween's grammar:
//! `host:port[ weight=N][ priority=N][ max_connections=N][ sni=NAME]`.
//!
//! The grammar is gobetween's regular expression read literally: surrounding whitespace is
//! trimmed, the options come in that order, each at most once, separated by single spaces.
//! gobetween drops an entry that does not match with a log line; betwixt refuses the config
//! instead, because a silently dropped control-plane node is worse than a failed start.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::BackendSpec;

/// The grammar, as shown in error messages.
pub const GRAMMAR: &str = "host:port[ weight=N][ priority=N][ max_connections=N][ sni=NAME]";

/// The options in the order gobetween requires them.
const OPTIONS: [&str; 4] = ["weight", "priority", "max_connections", "sni"];

/// A `static_list` entry that is not a valid backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not a valid backend; expected {GRAMMAR} ({problem})")]
pub struct StaticListError {
    /// The entry as written.
    pub entry: String,
    pub problem: EntryProblem,
}

/// Why an entry does not match the grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryProblem {
    Empty,
    MissingPort,
    /// An IPv6 address without brackets, such as `::1:6443`.
    UnbracketedIpv6,
    BadHost(String),
    BadPort(String),
    /// Two separators in a row, or a tab and a space.
    ExtraSpace,
    UnknownOption(String),
    /// An option after one that must follow it, or twice.
    OutOfOrder(&'static str),
    BadNumber {
        option: &'static str,
        value: String,
    },
    EmptySni,
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("the entry is empty"),
            Self::MissingPort => f.write_str("missing \":port\""),
            Self::UnbracketedIpv6 => {
                f.write_str("write an IPv6 address in brackets, like \"[fd00::1]:6443\"")
            }
            Self::BadHost(host) => write!(
                f,
                "{host:?} is not an IPv4 address, a [bracketed] IPv6 address or a DNS name"
            ),
            Self::BadPort(port) => write!(
                f,
                "port {port:?} is not a number from 1 to 65535 or a known TCP service name"
            ),
            Self::ExtraSpace => f.write_str("separate the options with single spaces"),
            Self::UnknownOption(option) => write!(f, "unknown option {option:?}"),
            Self::OutOfOrder(option) => write!(
                f,
                "{option} is repeated or out of order; the order is weight, priority, \
                 max_connections, sni"
            ),
            Self::BadNumber { option, value } => {
                write!(
                    f,
                    "{option}={value} is not a whole number from 0 to 4294967295"
                )
            }
            Self::EmptySni => f.write_str("sni needs a name"),
        }
    }
}

/// Parses one `static_list` entry. Defaults: weight 1, priority 1, max_connections 0 (`None`).
///
/// # Errors
/// A [`StaticListError`] quoting the entry, showing the grammar and saying what is wrong.
pub fn parse_backend(entry: &str) -> Result<BackendSpec, StaticListError> {
    parse(entry.trim()).map_err(|problem| StaticListError {
        entry: entry.to_owned(),
        problem,
    })
}

fn parse(entry: &str) -> Result<BackendSpec, EntryProblem> {
    if entry.is_empty() {
        return Err(EntryProblem::Empty);
    }
    let mut tokens = entry.split(is_separator);
    let address = tokens.next().unwrap_or_default();
    let (host, port) = split_address(address)?;
    let mut backend = BackendSpec {
        host,
        port,
        weight: 1,
        priority: 1,
        max_connections: None,
        sni: None,
    };
    let mut next_allowed = 0;
    for token in tokens {
        if token.is_empty() {
            return Err(EntryProblem::ExtraSpace);
        }
        let (name, value) = token
            .split_once('=')
            .ok_or_else(|| EntryProblem::UnknownOption(token.to_owned()))?;
        let position = OPTIONS
            .iter()
            .position(|option| *option == name)
            .ok_or_else(|| EntryProblem::UnknownOption(token.to_owned()))?;
        if position < next_allowed {
            return Err(EntryProblem::OutOfOrder(OPTIONS[position]));
        }
        next_allowed = position + 1;
        apply_option(&mut backend, OPTIONS[position], value)?;
    }
    Ok(backend)
}

/// gobetween's `\s`: the ASCII whitespace of Go's regular expressions.
fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c')
}

fn apply_option(
    backend: &mut BackendSpec,
    option: &'static str,
    value: &str,
) -> Result<(), EntryProblem> {
    if option == "sni" {
        if value.is_empty() {
            return Err(EntryProblem::EmptySni);
        }
        backend.sni = Some(value.to_owned());
        return Ok(());
    }
    let number = number(option, value)?;
    match option {
        "weight" => backend.weight = number,
        "priority" => backend.priority = number,
        _ => backend.max_connections = (number > 0).then_some(number),
    }
    Ok(())
}

/// An option value: ASCII digits only, as gobetween's `\d+`.
fn number(option: &'static str, value: &str) -> Result<u32, EntryProblem> {
    let bad = || EntryProblem::BadNumber {
        option,
        value: value.to_owned(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// Splits `host:port`; a bracketed IPv6 host loses its brackets.
fn split_address(address: &str) -> Result<(String, u16), EntryProblem> {
    let (host, port) = if let Some(bracketed) = address.strip_prefix('[') {
        let (inside, after) = bracketed
            .split_once(']')
            .ok_or_else(|| EntryProblem::BadHost(address.to_owned()))?;
        let port = after.strip_prefix(':').ok_or(EntryProblem::MissingPort)?;
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err(EntryProblem::BadHost(format!("[{inside}]")));
        }
        (inside, port)
    } else {
        let (host, port) = address.rsplit_once(':').ok_or(EntryProblem::MissingPort)?;
        if host.parse::<Ipv6Addr>().is_ok() {
            return Err(EntryProblem::UnbracketedIpv6);
        }
        check_host(host)?;
        (host, port)
    };
    Ok((host.to_owned(), parse_port(port)?))
}

/// A port number, or a TCP service name (`https`) that Go's dialer would accept.
fn parse_port(port: &str) -> Result<u16, EntryProblem> {
    let bad = || EntryProblem::BadPort(port.to_owned());
    if port.is_empty() {
        return Err(bad());
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return super::services::tcp_port(port).ok_or_else(bad);
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(number) => Ok(number),
    }
}

/// An IPv4 address or a DNS name (letters, digits, `-` and `_` in dot-separated labels).
fn check_host(host: &str) -> Result<(), EntryProblem> {
    let bad = || EntryProblem::BadHost(host.to_owned());
    let looks_numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if looks_numeric {
        return host.parse::<Ipv4Addr>().map(|_| ()).map_err(|_| bad());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(
        host: &str,
        port: u16,
        weight: u32,
        priority: u32,
        max_connections: Option<u32>,
        sni: Option<&str>,
    ) -> BackendSpec {
        BackendSpec {
            host: host.into(),
            port,
            weight,
            priority,
            max_connections,
            sni: sni.map(Into::into),
        }
    }

    #[test]
    fn accepts_gobetween_entries() {
        let table = [
            ("10.0.0.1:6443", backend("10.0.0.1", 6443, 1, 1, None, None)),
            (
                "  10.0.0.1:6443  ",
                backend("10.0.0.1", 6443, 1, 1, None, None),
            ),
            ("master-1:6443", backend("master-1", 6443, 1, 1, None, None)),
            (
                "k3s_1.lan.:6443",
                backend("k3s_1.lan.", 6443, 1, 1, None, None),
            ),
            ("[fd00::1]:6443", backend("fd00::1", 6443, 1, 1, None, None)),
            ("[::1]:1", backend("::1", 1, 1, 1, None, None)),
            ("h:6443 weight=5", backend("h", 6443, 5, 1, None, None)),
            ("h:6443 weight=0", backend("h", 6443, 0, 1, None, None)),
            ("h:https", backend("h", 443, 1, 1, None, None)),
            ("h:6443 priority=2", backend("h", 6443, 1, 2, None, None)),
            ("h:6443 priority=0", backend("h", 6443, 1, 0, None, None)),
            (
                "h:6443 max_connections=0",
                backend("h", 6443, 1, 1, None, None),
            ),
            (
                "h:6443 max_connections=100",
                backend("h", 6443, 1, 1, Some(100), None),
            ),
            (
                "h:6443 sni=api.lan",
                backend("h", 6443, 1, 1, None, Some("api.lan")),
            ),
            ("h:6443\tweight=2", backend("h", 6443, 2, 1, None, None)),
            (
                "10.0.0.2:65535 weight=3 priority=2 max_connections=10 sni=a.b",
                backend("10.0.0.2", 65535, 3, 2, Some(10), Some("a.b")),
            ),
            ("h:1 weight=2 sni=x", backend("h", 1, 2, 1, None, Some("x"))),
        ];
        for (entry, expected) in table {
            assert_eq!(parse_backend(entry), Ok(expected), "{entry}");
        }
    }

    #[test]
    fn refuses_what_gobetween_would_drop() {
        use EntryProblem::*;
        let table = [
            ("", Empty),
            ("   ", Empty),
            ("10.0.0.1", MissingPort),
            ("10.0.0.1:", BadPort("".into())),
            ("10.0.0.1:0", BadPort("0".into())),
            ("10.0.0.1:65536", BadPort("65536".into())),
            ("10.0.0.1:+80", BadPort("+80".into())),
            (
                "10.0.0.1:no-such-service",
                BadPort("no-such-service".into()),
            ),
            ("::1:6443", UnbracketedIpv6),
            ("fd00::1:6443", UnbracketedIpv6),
            ("[::1]6443", MissingPort),
            ("[::1:6443", BadHost("[::1:6443".into())),
            ("[10.0.0.1]:6443", BadHost("[10.0.0.1]".into())),
            ("10.0.0.256:6443", BadHost("10.0.0.256".into())),
            (":6443", BadHost("".into())),
            ("bad..name:6443", BadHost("bad..name".into())),
            ("http://h:6443", BadHost("http://h".into())),
            ("h:6443  weight=2", ExtraSpace),
            ("h:6443 weigth=2", UnknownOption("weigth=2".into())),
            ("h:6443 weight", UnknownOption("weight".into())),
            ("h:6443 backup", UnknownOption("backup".into())),
            ("h:6443 priority=2 weight=2", OutOfOrder("weight")),
            ("h:6443 weight=2 weight=3", OutOfOrder("weight")),
            (
                "h:6443 sni=a max_connections=1",
                OutOfOrder("max_connections"),
            ),
            (
                "h:6443 weight=-1",
                BadNumber {
                    option: "weight",
                    value: "-1".into(),
                },
            ),
            (
                "h:6443 priority=",
                BadNumber {
                    option: "priority",
                    value: "".into(),
                },
            ),
            (
                "h:6443 max_connections=4294967296",
                BadNumber {
                    option: "max_connections",
                    value: "4294967296".into(),
                },
            ),
            ("h:6443 sni=", EmptySni),
        ];
        for (entry, problem) in table {
            let error = parse_backend(entry).expect_err(entry);
            assert_eq!(error.problem, problem, "{entry}");
            assert_eq!(error.entry, entry);
        }
    }

    #[test]
    fn message_quotes_entry_and_grammar() {
        let error = parse_backend("10.0.0.2:6443 weigth=2").expect_err("typo");
        assert_eq!(
            error.to_string(),
            "\"10.0.0.2:6443 weigth=2\" is not a valid backend; expected host:port[ weight=N]\
             [ priority=N][ max_connections=N][ sni=NAME] (unknown option \"weigth=2\")"
        );
    }

    #[test]
    fn target_brackets_ipv6() {
        let spec = parse_backend("[fd00::1]:6443").expect("valid");
        assert_eq!(spec.target(), "[fd00::1]:6443");
    }
}
