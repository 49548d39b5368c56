//! `kind = "json"`: GET `json_endpoint`, a JSON array with one object per backend, each field
//! found by its `json_*_pattern` path.
//!
//! Paths follow gobetween's query library (gojq): segments separated by dots, `[N]` an array
//! index, a segment in single quotes may contain dots (`'node.ip'`). As in gobetween, host
//! (a string) and port (a number or a string) are required; weight and priority (numbers)
//! default to 1, sni (a string) to none, max_connections to unlimited, and a field of the
//! wrong type counts as absent.

use serde_json::Value;

use super::http;
use crate::config::static_list::{StaticListError, parse_backend};
use crate::config::{BackendSpec, JsonDiscovery, JsonPaths};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Get(#[from] http::Error),
    /// The parser's message says where; it is not a `source()`, so it prints once.
    #[error("{url}: not JSON: {problem}")]
    NotJson { url: String, problem: String },
    #[error("{url}: expected a JSON array of backends")]
    NotArray { url: String },
    #[error("{url}: [{index}].{path}: {problem}")]
    Field {
        url: String,
        index: usize,
        path: String,
        problem: &'static str,
    },
    #[error("{url}: [{index}]: {problem}")]
    Backend {
        url: String,
        index: usize,
        problem: StaticListError,
    },
}

pub(crate) async fn fetch(source: &JsonDiscovery) -> Result<Vec<BackendSpec>, Error> {
    let url = &source.endpoint;
    let body = http::get(url).await?;
    parse(url, &body, &source.paths)
}

fn parse(url: &str, body: &[u8], paths: &JsonPaths) -> Result<Vec<BackendSpec>, Error> {
    let document: Value = serde_json::from_slice(body).map_err(|error| Error::NotJson {
        url: url.to_owned(),
        problem: error.to_string(),
    })?;
    let Value::Array(elements) = document else {
        return Err(Error::NotArray {
            url: url.to_owned(),
        });
    };
    elements
        .iter()
        .enumerate()
        .map(|(index, element)| backend(url, index, element, paths))
        .collect()
}

fn backend(
    url: &str,
    index: usize,
    element: &Value,
    paths: &JsonPaths,
) -> Result<BackendSpec, Error> {
    let field_error = |path: &str, problem| Error::Field {
        url: url.to_owned(),
        index,
        path: path.to_owned(),
        problem,
    };
    let host = match lookup(element, &paths.host) {
        Some(Value::String(host)) => host.as_str(),
        Some(_) => return Err(field_error(&paths.host, "the host must be a string")),
        None => return Err(field_error(&paths.host, "missing")),
    };
    let port = match lookup(element, &paths.port) {
        Some(Value::String(port)) => port.clone(),
        Some(Value::Number(port)) => port.to_string(),
        Some(_) => {
            return Err(field_error(
                &paths.port,
                "the port must be a number or a string",
            ));
        }
        None => return Err(field_error(&paths.port, "missing")),
    };
    let address = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut backend = parse_backend(&address).map_err(|problem| Error::Backend {
        url: url.to_owned(),
        index,
        problem,
    })?;
    let number = |path: &str| {
        lookup(element, path)
            .and_then(Value::as_f64)
            .filter(|number| *number >= 0.0 && *number <= f64::from(u32::MAX))
            .map(|number| number as u32)
    };
    backend.weight = number(&paths.weight).unwrap_or(1);
    backend.priority = number(&paths.priority).unwrap_or(1);
    backend.max_connections = number(&paths.max_connections).filter(|limit| *limit > 0);
    backend.sni = lookup(element, &paths.sni)
        .and_then(Value::as_str)
        .filter(|sni| !sni.is_empty())
        .map(str::to_owned);
    Ok(backend)
}

/// The value at a gojq path, `None` when a step is missing or null.
fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    let mut current = value;
    for segment in segments(path) {
        current = match segment
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            Some(index) => current.as_array()?.get(index.parse::<usize>().ok()?)?,
            None => current.as_object()?.get(segment.trim_matches('\''))?,
        };
    }
    Some(current).filter(|found| !found.is_null())
}

/// A path's segments: split on dots outside single quotes; `.` alone is the element itself.
fn segments(path: &str) -> Vec<&str> {
    let mut segments = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (at, c) in path.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '.' if !quoted => {
                segments.push(&path[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    segments.push(&path[start..]);
    segments.retain(|segment| !segment.is_empty());
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> JsonPaths {
        JsonPaths {
            host: "host".into(),
            port: "port".into(),
            weight: "weight".into(),
            priority: "priority".into(),
            sni: "sni".into(),
            max_connections: "max_connections".into(),
        }
    }

    #[test]
    fn gobetween_paths_reach_nested_fields_and_array_elements() {
        let body = br#"[
            {"node": {"addresses": ["10.0.0.9", "10.0.0.1"], "k8s.port": "6443"},
             "meta": {"w": 3, "p": 2.0, "name": "m1"}}
        ]"#;
        let paths = JsonPaths {
            host: "node.addresses.[1]".into(),
            port: "node.'k8s.port'".into(),
            weight: "meta.w".into(),
            priority: "meta.p".into(),
            sni: "meta.name".into(),
            max_connections: "meta.none".into(),
        };
        let backends = parse("u", body, &paths).unwrap();
        assert_eq!(backends.len(), 1);
        let backend = &backends[0];
        assert_eq!(backend.target(), "10.0.0.1:6443");
        assert_eq!((backend.weight, backend.priority), (3, 2));
        assert_eq!(
            (backend.sni.as_deref(), backend.max_connections),
            (Some("m1"), None)
        );
    }

    #[test]
    fn defaults_and_errors_name_the_element_and_path() {
        let body = br#"[{"host": "::1", "port": 6443, "weight": "heavy"}, {"port": 1}]"#;
        let error = parse("http://d/x", body, &paths()).unwrap_err();
        assert_eq!(error.to_string(), "http://d/x: [1].host: missing");
        let broken = parse("u", b"[{", &paths()).unwrap_err();
        assert!(broken.to_string().starts_with("u: not JSON: "), "{broken}");
        let one = parse(
            "u",
            br#"[{"host": "::1", "port": 6443, "weight": "heavy"}]"#,
            &paths(),
        )
        .unwrap();
        assert_eq!(
            (one[0].target(), one[0].weight),
            ("[::1]:6443".to_owned(), 1)
        );
        let error = parse("u", br#"{"host": "a"}"#, &paths()).unwrap_err();
        assert_eq!(error.to_string(), "u: expected a JSON array of backends");
    }
}
