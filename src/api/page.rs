//! The status page: `GET /` answers HTML to a browser and gobetween's JSON to everyone else,
//! and `GET /status.json` gives the page what the other endpoints do not (server names and
//! the recent health transitions).
//!
//! The page is one self-contained file ([`PAGE`]: no fonts, no CDN), so it works on an LB
//! node without internet access and leaks no request to a third party. Its script polls
//! `/status.json` and `/servers/NAME/stats` and keeps the rate history itself: the daemon
//! stores nothing for a page nobody may be looking at.

use hyper::header::{ACCEPT, CONTENT_SECURITY_POLICY, HeaderMap, HeaderValue, VARY};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::clock;
use crate::http::response::{self, Body};
use crate::supervisor::{NodeDrain, Supervisor};

/// The page: HTML, CSS and script in one file.
const PAGE: &str = include_str!("page.html");

/// Inline style and script only, data only from this origin, and no framing (clickjacking).
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'";

/// Whether the client prefers HTML to JSON: a browser navigating to `/`. No `Accept`, `*/*`
/// or a tie keeps the JSON gobetween's clients expect.
pub(super) fn wants_html(headers: &HeaderMap) -> bool {
    let accept = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    quality(&accept, "text", "html") > quality(&accept, "application", "json")
}

/// The quality `accept` gives `kind/subtype`: that of the most specific range matching it
/// (RFC 9110 section 12.5.1), 0 when none does. In thousandths, as `q` has three decimals.
fn quality(accept: &str, kind: &str, subtype: &str) -> u16 {
    let mut best: Option<(u8, u16)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let Some((range_kind, range_subtype)) = parts.next().and_then(|r| r.split_once('/')) else {
            continue;
        };
        let specificity = match (range_kind, range_subtype) {
            (k, s) if k.eq_ignore_ascii_case(kind) && s.eq_ignore_ascii_case(subtype) => 2,
            (k, "*") if k.eq_ignore_ascii_case(kind) => 1,
            ("*", "*") => 0,
            _ => continue,
        };
        let q = parts
            .filter_map(|parameter| parameter.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1000), |(_, value)| thousandths(value.trim()))
            .unwrap_or(0);
        if best.is_none_or(|(specific, _)| specificity > specific) {
            best = Some((specificity, q));
        }
    }
    best.map_or(0, |(_, q)| q)
}

/// `q` as thousandths (`0.8` is 800); `None` when it is not a valid quality.
fn thousandths(value: &str) -> Option<u16> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u16 = match whole {
        "0" => 0,
        "1" => 1000,
        _ => return None,
    };
    let padded = format!("{fraction:0<3}");
    let fraction: u16 = padded.parse().ok()?;
    (whole + fraction <= 1000).then_some(whole + fraction)
}

/// Answers `GET /` for a browser.
pub(super) fn html() -> Response<Body> {
    let mut response = response::with_type(
        StatusCode::OK,
        "text/html; charset=utf-8",
        bytes::Bytes::from_static(PAGE.as_bytes()),
    );
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(VARY, HeaderValue::from_static("Accept"));
    response
}

/// `GET /status.json`.
#[derive(Debug, Serialize)]
struct Status {
    time: String,
    /// The node's drain state (`POST /drain`): `serving`, `draining` or `drained`.
    node: &'static str,
    /// Server names, sorted; the page asks each one's stats.
    servers: Vec<String>,
    /// Newest first.
    transitions: Vec<Transition>,
}

#[derive(Debug, Serialize)]
struct Transition {
    time: String,
    server: String,
    backend: String,
    /// `up` or `down`.
    state: &'static str,
    reason: String,
}

/// Answers `GET /status.json`.
pub(super) fn status(supervisor: &Supervisor) -> Response<Body> {
    let snapshot = supervisor.snapshot();
    let transitions = supervisor
        .events()
        .recent()
        .into_iter()
        .rev()
        .map(|event| Transition {
            time: clock::rfc3339(event.at),
            server: event.server,
            backend: event.backend.to_string(),
            state: if event.up { "up" } else { "down" },
            reason: event.reason,
        })
        .collect();
    let status = Status {
        time: clock::rfc3339(std::time::SystemTime::now()),
        node: match supervisor.drain_state() {
            NodeDrain::Serving => "serving",
            NodeDrain::Draining { .. } => "draining",
            NodeDrain::Drained => "drained",
        },
        servers: snapshot
            .servers()
            .map(|server| server.name().to_owned())
            .collect(),
        transitions,
    };
    response::json(StatusCode::OK, &status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_accept(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(ACCEPT, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn browsers_get_html_api_clients_json() {
        let chromium = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,\
                        image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        for accept in [
            chromium,
            firefox,
            "text/*",
            "application/json;q=0.5, text/html",
        ] {
            assert!(wants_html(&with_accept(&[accept])), "{accept}");
        }
        assert!(!wants_html(&HeaderMap::new()), "no Accept");
        for accept in [
            "*/*",
            "application/json",
            "application/json, text/html",
            "text/html;q=0.5, application/json",
            "text/html;q=0, */*",
            "text/plain",
            "text/html;q=2",
            "garbage",
        ] {
            assert!(!wants_html(&with_accept(&[accept])), "{accept}");
        }
        assert!(wants_html(&with_accept(&[
            "application/json;q=0.1",
            "text/html"
        ])));
    }

    #[test]
    fn qualities() {
        assert_eq!(thousandths("0.8"), Some(800));
        assert_eq!(thousandths("1"), Some(1000));
        assert_eq!(thousandths("1.000"), Some(1000));
        assert_eq!(thousandths("1.5"), None);
        assert_eq!(thousandths("0.1234"), None);
        assert_eq!(
            quality("text/*;q=0.3, text/html;q=0.7", "text", "html"),
            700
        );
        assert_eq!(
            quality("text/html;q=0.7, text/*;q=0.3", "text", "html"),
            700
        );
    }

    #[test]
    fn the_page_needs_nothing_from_elsewhere() {
        // The SVG namespace is a name, never fetched.
        let page = PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
        for external in ["http://", "https://", "//fonts", "@import", "src=", "url("] {
            assert!(!page.contains(external), "{external}");
        }
        assert!(PAGE.contains("/status.json"));
    }
}
