//! CORS (`[api] cors = true`): the headers gobetween's gin-contrib/cors set-up sends.
//!
//! gobetween allows every origin, credentials, the methods `PUT, POST, DELETE, GET, OPTIONS`
//! and the headers `Origin, Authorization`, and answers a preflight `OPTIONS` with `204`
//! before authentication (browsers send no credentials on a preflight). Only requests with an
//! `Origin` header get CORS headers. One difference: gobetween answers
//! `Access-Control-Allow-Origin: *`, which browsers refuse together with credentials, so the
//! API's basic auth could not be used from a page; betwixt echoes the request's origin instead
//! (with `Vary: Origin`), which allows the same origins and works with credentials.
//!
//! Two limits on that echo: nothing is sent unless `cors = true` (the caller asks [`origin`]
//! only then, so without it no `Access-Control-Allow-Credentials` ever goes out), and the
//! origin `null` is never echoed. Browsers send `Origin: null` from sandboxed frames, `data:`
//! and `file:` pages and after some redirects; allowing it with credentials would let any
//! such page, whoever wrote it, drive the API.

use hyper::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, HeaderMap, HeaderValue, ORIGIN, VARY,
};
use hyper::{Method, Response, StatusCode};

use crate::http::response::{self, Body};

const METHODS: &str = "PUT, POST, DELETE, GET, OPTIONS";
const HEADERS: &str = "Origin, Authorization";
/// Twelve hours, gin-contrib/cors's default.
const MAX_AGE: &str = "43200";

/// The request's `Origin` when it is one to allow: present and not `null`.
pub fn origin(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(ORIGIN)
        .filter(|origin| !origin.as_bytes().eq_ignore_ascii_case(b"null"))
        .cloned()
}

/// The answer to a preflight request, if this is one (`OPTIONS` with an `Origin`).
pub fn preflight(method: &Method, origin: Option<&HeaderValue>) -> Option<Response<Body>> {
    let origin = origin.filter(|_| method == Method::OPTIONS)?;
    let mut response = response::empty(StatusCode::NO_CONTENT);
    let headers = response.headers_mut();
    allow(headers, origin);
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(METHODS),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(HEADERS),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
    Some(response)
}

/// Adds the headers of an actual cross-origin request's response.
pub fn decorate(response: &mut Response<Body>, origin: &HeaderValue) {
    allow(response.headers_mut(), origin);
}

fn allow(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    headers.append(VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_only_for_options_with_an_origin() {
        let origin = HeaderValue::from_static("https://ui.example");
        assert!(preflight(&Method::GET, Some(&origin)).is_none());
        assert!(preflight(&Method::OPTIONS, None).is_none());
        let response = preflight(&Method::OPTIONS, Some(&origin)).unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let headers = response.headers();
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], "https://ui.example");
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_METHODS], METHODS);
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_HEADERS], HEADERS);
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    }

    #[test]
    fn origin_null_is_not_an_origin_to_allow() {
        let mut headers = HeaderMap::new();
        assert_eq!(origin(&headers), None);
        headers.insert(ORIGIN, HeaderValue::from_static("null"));
        assert_eq!(origin(&headers), None);
        headers.insert(ORIGIN, HeaderValue::from_static("https://ui.example"));
        assert_eq!(origin(&headers).unwrap(), "https://ui.example");
    }

    #[test]
    fn actual_requests_get_origin_and_credentials() {
        let mut response = response::empty(StatusCode::OK);
        decorate(&mut response, &HeaderValue::from_static("http://a"));
        assert_eq!(response.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "http://a");
        assert_eq!(response.headers()[VARY], "Origin");
    }
}
