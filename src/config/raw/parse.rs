//! Parsing TOML or JSON text into a raw table, recording the keys it does not know.
//!
//! The deserialiser chain is `serde_path_to_error` (names the key of a type error) around
//! `serde_ignored` (reports each unknown key's path) around the TOML or JSON deserialiser.

use serde::de::DeserializeOwned;

use crate::config::{ConfigError, Format};

/// A deserialised value and the dotted paths of the keys it did not know.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    pub value: T,
    /// Sorted, e.g. `servers.k3s.healthcheck.ping_timeout_duration`; a key that is not a TOML
    /// bare key is quoted, with control characters escaped (`servers."a\nb"`).
    pub unknown_keys: Vec<String>,
}

impl<T> Parsed<T> {
    fn new(value: T, mut unknown_keys: Vec<String>) -> Self {
        unknown_keys.sort();
        unknown_keys.dedup();
        Self {
            value,
            unknown_keys,
        }
    }
}

/// Parses `text` in `format` into `T`: a [`RawConfig`](super::RawConfig), or a
/// [`RawServer`](super::RawServer) for the REST API.
///
/// # Errors
/// [`ConfigError::Syntax`] for text that is not TOML/JSON, with its line and column;
/// [`ConfigError::Invalid`] for a value of the wrong type, naming its key path.
pub fn parse<T: DeserializeOwned>(
    file: &str,
    text: &str,
    format: Format,
) -> Result<Parsed<T>, ConfigError> {
    match format {
        Format::Toml => parse_toml(file, text),
        Format::Json => parse_json(file, text),
    }
}

fn parse_toml<T: DeserializeOwned>(file: &str, text: &str) -> Result<Parsed<T>, ConfigError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|error| ConfigError::Syntax {
        file: file.to_owned(),
        message: format!("{}{}", position(text, error.span()), error.message()),
    })?;
    let mut unknown_keys = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown_keys.push(dotted(&path));
    let result = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        deserializer,
        &mut record,
    ));
    let value = result.map_err(|error| {
        let key = error_path(error.path());
        let inner = error.into_inner();
        let message = format!("{}{}", position(text, inner.span()), plain(inner.message()));
        type_error(file, key, message)
    })?;
    Ok(Parsed::new(value, unknown_keys))
}

fn parse_json<T: DeserializeOwned>(file: &str, text: &str) -> Result<Parsed<T>, ConfigError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let mut unknown_keys = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown_keys.push(dotted(&path));
    let result = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        &mut deserializer,
        &mut record,
    ));
    let value = result.map_err(|error| {
        let key = error_path(error.path());
        let inner = error.into_inner();
        let message = format!(
            "line {}, column {}: {}",
            inner.line(),
            inner.column(),
            plain(&json_message(&inner))
        );
        match inner.classify() {
            serde_json::error::Category::Data => type_error(file, key, message),
            _ => syntax(file, message),
        }
    })?;
    deserializer.end().map_err(|error| {
        let message = format!(
            "line {}, column {}: {}",
            error.line(),
            error.column(),
            json_message(&error)
        );
        syntax(file, message)
    })?;
    Ok(Parsed::new(value, unknown_keys))
}

/// A serde_json message without its trailing " at line L column C" (we print it first).
fn json_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// A type error at `key`; at the root it is a problem of the whole file.
fn type_error(file: &str, key: String, message: String) -> ConfigError {
    if key.is_empty() {
        return syntax(file, message);
    }
    if key.starts_with('[') {
        let message = "the top level must be a table of sections, not an array".to_owned();
        return syntax(file, message);
    }
    ConfigError::Invalid {
        file: file.to_owned(),
        key,
        message,
    }
}

fn syntax(file: &str, message: String) -> ConfigError {
    ConfigError::Syntax {
        file: file.to_owned(),
        message,
    }
}

/// `"line L, column C: "` for a byte span of `text`, or nothing without one.
fn position(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(start) = span.map(|span| span.start.min(text.len())) else {
        return String::new();
    };
    let before = text.get(..start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |last| last.chars().count())
        + 1;
    format!("line {line}, column {column}: ")
}

/// serde's type names in type errors, in the words of TOML and JSON config authors.
fn plain(message: &str) -> String {
    message
        .replace("expected i64", "expected an integer")
        .replace("` as i128", "` (too large)")
        .replace("expected a sequence", "expected an array")
        .replace("invalid type: sequence", "invalid type: array")
        .replace("expected a map", "expected a table")
        .replace("invalid type: map", "invalid type: table")
}

/// A serde_ignored path as dotted keys with `[index]` for arrays.
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", dotted(parent)),
        Path::Map { parent, key } => match dotted(parent) {
            prefix if prefix.is_empty() => key_segment(key),
            prefix => format!("{prefix}.{}", key_segment(key)),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => dotted(parent),
    }
}

/// The key path of a type error, like [`dotted`]; empty at the root.
fn error_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        let name = match segment {
            Segment::Seq { index } => {
                key.push_str(&format!("[{index}]"));
                continue;
            }
            Segment::Map { key } => key_segment(key),
            Segment::Enum { variant } => key_segment(variant),
            Segment::Unknown => "?".to_owned(),
        };
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(&name);
    }
    key
}

/// One key of a path as it is printed: as written when it is a TOML bare key, else quoted
/// with Rust's escapes. Keys come from the file and end up in log lines and API replies, so a
/// newline or terminal escape in one must not reach them raw (it could forge a log line).
fn key_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw::{RawConfig, RawServer};

    fn toml_config(text: &str) -> Parsed<RawConfig> {
        parse("t.toml", text, Format::Toml).expect("parses")
    }

    #[test]
    fn unknown_keys_have_full_paths() {
        let parsed = toml_config(
            "[defaults]\nbalance = \"weight\"\n\
             [servers.k3s]\nbind = \":6443\"\n\
             [servers.k3s.healthcheck]\nkind = \"ping\"\nping_timeout_duration = \"500ms\"\n\
             [servers.k3s.discovery]\nstatic_lst = [\"a:1\"]\n[extra]\nx = 1\n",
        );
        assert_eq!(
            parsed.unknown_keys,
            [
                "defaults.balance",
                "extra",
                "servers.k3s.discovery.static_lst",
                "servers.k3s.healthcheck.ping_timeout_duration",
            ]
        );
        let server = &parsed.value.servers["k3s"];
        assert_eq!(server.bind.as_deref(), Some(":6443"));
    }

    #[test]
    fn type_errors_name_the_key_and_line() {
        let text =
            "[servers.a]\nbind = \":1\"\n[servers.a.discovery]\nstatic_list = [\"a:1\", 2]\n";
        let error = parse::<RawConfig>("f.toml", text, Format::Toml).expect_err("type error");
        let message = error.to_string();
        assert!(
            message.starts_with("f.toml: servers.a.discovery.static_list[1]: line 4"),
            "{message}"
        );
        let text = "[defaults]\nmax_connections = \"10\"\n";
        let message = parse::<RawConfig>("f.toml", text, Format::Toml)
            .expect_err("type error")
            .to_string();
        assert!(message.contains("defaults.max_connections"), "{message}");
        assert!(message.contains("expected an integer"), "{message}");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let error = parse::<RawConfig>("f.toml", "[api]\nenabled = tru\n", Format::Toml)
            .expect_err("bad toml");
        assert!(matches!(error, ConfigError::Syntax { .. }));
        assert!(
            error.to_string().starts_with("f.toml: line 2, column 11"),
            "{error}"
        );
        let error = parse::<RawConfig>("f.json", "{\"api\": {\"enabled\": true}", Format::Json)
            .expect_err("bad json");
        assert!(matches!(error, ConfigError::Syntax { .. }), "{error}");
        let error = parse::<RawConfig>("f.json", "{} x", Format::Json).expect_err("trailing");
        assert!(error.to_string().contains("trailing"), "{error}");
    }

    #[test]
    fn json_type_errors_name_the_key() {
        let text = r#"{"servers": {"a": {"healthcheck": {"fails": "3"}}}}"#;
        let error = parse::<RawConfig>("f.json", text, Format::Json).expect_err("type");
        let message = error.to_string();
        assert!(
            message.starts_with("f.json: servers.a.healthcheck.fails: line 1"),
            "{message}"
        );
    }

    #[test]
    fn json_unknown_keys_and_nulls() {
        let text = r#"{"servers": {"a": {"bind": ":1", "sni": null, "bogus": [1]}}}"#;
        let parsed: Parsed<RawConfig> = parse("f.json", text, Format::Json).expect("parses");
        assert_eq!(parsed.unknown_keys, ["servers.a.bogus"]);
        assert_eq!(parsed.value.servers["a"].sni, None);
    }

    #[test]
    fn arrays_are_not_tables() {
        let text = "[servers.k3s]\nhealthcheck = [\"ping\", \"2s\"]\n";
        let error = parse::<RawConfig>("f.toml", text, Format::Toml).expect_err("array");
        let message = error.to_string();
        assert!(
            message.starts_with("f.toml: servers.k3s.healthcheck: line 2"),
            "{message}"
        );
        assert!(
            message.ends_with("invalid type: array, expected a table"),
            "{message}"
        );
        let error = parse::<RawConfig>("f.json", "[]", Format::Json).expect_err("array");
        assert!(matches!(error, ConfigError::Syntax { .. }), "{error}");
        let text = r#"{"servers": {"a": {"bind": ":1", "bind": ":2"}}}"#;
        let error = parse::<RawConfig>("f.json", text, Format::Json).expect_err("twice");
        assert!(
            error.to_string().contains("duplicate field `bind`"),
            "{error}"
        );
    }

    #[test]
    fn keys_that_could_forge_a_log_line_are_escaped() {
        let text = "[servers.k3s]\n\"x\\nERROR forged\" = 1\n\"a.b\" = 2\n\"\\u001b[2J\" = 3\n";
        let parsed = toml_config(text);
        assert_eq!(
            parsed.unknown_keys,
            [
                r#"servers.k3s."\u{1b}[2J""#,
                r#"servers.k3s."a.b""#,
                r#"servers.k3s."x\nERROR forged""#,
            ]
        );
        let text = r#"{"servers": {"a\nb": {"bogus\r": 1, "bind": 2}}}"#;
        let parsed = parse::<RawConfig>("f.json", text, Format::Json);
        let message = parsed.expect_err("bind is no string").to_string();
        assert!(
            message.starts_with(r#"f.json: servers."a\nb".bind: "#),
            "{message}"
        );
        let text = r#"{"servers": {"a\nb": {"bogus\r": 1}}}"#;
        let parsed: Parsed<RawConfig> = parse("f.json", text, Format::Json).expect("parses");
        assert_eq!(parsed.unknown_keys, [r#"servers."a\nb"."bogus\r""#]);
    }

    #[test]
    fn one_server_parses_alone() {
        let text = r#"{"bind": ":1", "discovery": {"kind": "static"}, "x": 1}"#;
        let parsed: Parsed<RawServer> = parse("POST", text, Format::Json).expect("parses");
        assert_eq!(parsed.unknown_keys, ["x"]);
        assert_eq!(parsed.value.bind.as_deref(), Some(":1"));
    }
}
