//! `kind = "plaintext"`: GET `plaintext_endpoint`, one backend per line, in the `static_list`
//! grammar or by `plaintext_regex_pattern` (see [`super::lines`]).

use super::http;
use super::lines::{LineError, pattern_lines, static_lines};
use crate::config::{BackendSpec, PlaintextDiscovery};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Get(#[from] http::Error),
    #[error("{url}: the body is not UTF-8")]
    NotText { url: String },
    #[error("{url}: {lines}")]
    Line { url: String, lines: LineError },
}

pub(crate) async fn fetch(source: &PlaintextDiscovery) -> Result<Vec<BackendSpec>, Error> {
    let url = &source.endpoint;
    let body = http::get(url).await?;
    let text = std::str::from_utf8(&body).map_err(|_| Error::NotText { url: url.clone() })?;
    let backends = match &source.pattern {
        None => static_lines(text),
        Some(pattern) => pattern_lines(text, pattern),
    };
    backends.map_err(|lines| Error::Line {
        url: url.clone(),
        lines,
    })
}
