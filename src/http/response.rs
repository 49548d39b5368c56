//! Building HTTP responses: gobetween's indented JSON, plain text, and error bodies.
//!
//! gobetween answers through gin's `IndentedJSON`: four-space indentation and
//! `application/json; charset=utf-8`; errors are a JSON string holding the message. The API
//! keeps that shape so clients written for gobetween read betwixt's answers unchanged.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// The body of every response: small and built in memory.
pub type Body = Full<Bytes>;

const JSON: &str = "application/json; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// `value` as JSON indented by four spaces, like gin's `IndentedJSON`.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    match indented(value) {
        Ok(body) => with_type(status, JSON, body),
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer as JSON: {error}"),
        ),
    }
}

/// A JSON string holding `message`: how gobetween reports an error.
pub fn error(status: StatusCode, message: impl AsRef<str>) -> Response<Body> {
    json(status, message.as_ref())
}

/// Plain UTF-8 text.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, TEXT, body.into())
}

/// A body of the given media type.
pub fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A response without a body.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// `value` as JSON indented by four spaces.
///
/// # Errors
/// `value` cannot be represented in JSON (a map with non-string keys).
pub fn indented<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Bytes> {
    let mut out = Vec::with_capacity(256);
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut serializer)?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_indented_by_four_spaces() {
        let body = indented(&serde_json::json!({"a": [1]})).unwrap();
        assert_eq!(&body[..], b"{\n    \"a\": [\n        1\n    ]\n}");
        let response = json(StatusCode::OK, &1);
        assert_eq!(response.headers()[CONTENT_TYPE], JSON);
    }

    #[test]
    fn errors_are_json_strings() {
        let body = indented("bad \"key\"").unwrap();
        assert_eq!(&body[..], br#""bad \"key\"""#);
        assert_eq!(
            error(StatusCode::CONFLICT, "x").status(),
            StatusCode::CONFLICT
        );
    }
}
