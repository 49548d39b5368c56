//! Keeping web pages from driving the API through an operator's browser.
//!
//! Two ways a page could reach an API it was not served from, and the check against each:
//!
//! - **DNS rebinding**: a page on `evil.example` re-points that name to `127.0.0.1` and then
//!   calls "its own" origin, which is now the API; the browser sends `Host: evil.example:PORT`.
//!   A request is answered only when its `Host` (its host part; the port is not compared,
//!   since a NAT or a port forward may change it) is:
//!   - absent (browsers always send one; some HTTP/1.0 tools do not);
//!   - an IP address literal (`127.0.0.1`, `[::1]`, `10.0.0.5`): the browser connected to
//!     that address itself, there is no name to re-point;
//!   - `localhost`, which browsers resolve to loopback themselves;
//!   - any DNS name, when the connection arrived at a non-loopback address **and**
//!     `[api.basic_auth]` is on: an operator reaching the API across the network by name
//!     (`https://lb.example:8888`) is expected, and a rebinding page cannot supply the
//!     password. On loopback a name is never needed, so it is refused.
//!
//!   Anything else is `421 Misdirected Request`, naming the `Host` and the rule. `/ping`
//!   skips the check: it answers `OK` to anyone and changes nothing.
//! - **Cross-site requests**: a page may send a `POST` to any address without asking (an HTML
//!   form, or `fetch` with a "simple" content type). The API acts on `POST` and `DELETE` only
//!   with `Content-Type: application/json`, which a browser sends cross-site only after a CORS
//!   preflight that the API answers only with `[api] cors = true`; other requests get `415`.
//!   gobetween's own clients send JSON.

use std::net::{IpAddr, SocketAddr};

use hyper::header::{CONTENT_TYPE, HOST, HeaderMap};
use hyper::{Method, Response, StatusCode};

use crate::http::response::{self, Body};

/// The refusal of a request whose `Host` may come from a rebound DNS name (see the module
/// doc); `None` to go on. `local` is the address the connection arrived at.
pub fn host_refusal(
    headers: &HeaderMap,
    local: SocketAddr,
    basic_auth: bool,
) -> Option<Response<Body>> {
    let value = headers.get(HOST)?;
    let text = value.to_str().unwrap_or_default();
    let allowed = match host_part(text) {
        Some(Host::Address | Host::Localhost) => true,
        Some(Host::Name) => basic_auth && !local.ip().to_canonical().is_loopback(),
        None => false,
    };
    if allowed {
        return None;
    }
    let rule = if local.ip().to_canonical().is_loopback() {
        "a loopback API answers only to Host values that are an IP address or localhost"
    } else {
        "a DNS name in Host is accepted only with [api.basic_auth]; without it, use an IP \
         address or localhost"
    };
    Some(response::error(
        StatusCode::MISDIRECTED_REQUEST,
        format!("Host {text:?} refused: {rule} (a guard against DNS rebinding)"),
    ))
}

/// The refusal of a `POST` or `DELETE` without `Content-Type: application/json` (parameters
/// such as `charset` allowed); `None` to go on.
pub fn content_type_refusal(method: &Method, headers: &HeaderMap) -> Option<Response<Body>> {
    if method != Method::POST && method != Method::DELETE {
        return None;
    }
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        return None;
    }
    Some(response::error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("{method} needs Content-Type: application/json"),
    ))
}

/// What the host part of a `Host` value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    Address,
    Localhost,
    Name,
}

/// Classifies `host[:port]` or `[v6][:port]`; `None` when it is not of that form.
fn host_part(text: &str) -> Option<Host> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        (None, after.strip_prefix(':').map_or(Some(after), Some))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(text), None),
        }
    };
    let port_ok = port.is_none_or(|port| port.is_empty() || port.parse::<u16>().is_ok());
    if !port_ok {
        return None;
    }
    let Some(host) = host else {
        return Some(Host::Address);
    };
    if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4()) {
        return Some(Host::Address);
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.eq_ignore_ascii_case("localhost") {
        return Some(Host::Localhost);
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    name.split('.').all(label_ok).then_some(Host::Name)
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    const LOOPBACK: &str = "127.0.0.1:8888";
    const LAN: &str = "10.0.0.5:8888";

    fn host(value: &str, local: &str, basic_auth: bool) -> Option<StatusCode> {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_str(value).unwrap());
        host_refusal(&headers, local.parse().unwrap(), basic_auth).map(|response| response.status())
    }

    #[test]
    fn addresses_and_localhost_pass_everywhere() {
        for value in [
            "127.0.0.1:8888",
            "127.0.0.1",
            "[::1]:8888",
            "[::1]",
            "10.0.0.5:18888",
            "localhost:8888",
            "LOCALHOST.",
        ] {
            for local in [LOOPBACK, LAN, "[::ffff:127.0.0.1]:8888"] {
                for basic_auth in [false, true] {
                    assert_eq!(host(value, local, basic_auth), None, "{value} on {local}");
                }
            }
        }
        assert!(host_refusal(&HeaderMap::new(), LOOPBACK.parse().unwrap(), false).is_none());
    }

    #[test]
    fn names_pass_only_beyond_loopback_with_basic_auth() {
        let refused = Some(StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(host("evil.example:8888", LOOPBACK, false), refused);
        assert_eq!(host("evil.example:8888", LOOPBACK, true), refused);
        assert_eq!(
            host("evil.example:8888", "[::ffff:127.0.0.1]:1", true),
            refused
        );
        assert_eq!(host("evil.example:8888", LAN, false), refused);
        assert_eq!(host("lb.example:8888", LAN, true), None);
        assert_eq!(host("lb:8888", "[::]:8888", true), None);
    }

    #[test]
    fn malformed_hosts_are_refused() {
        for value in [
            "a b:1", "h:port", "[::1", "[evil]:1", "h:99999", "a..b", "user@h",
        ] {
            for local in [LOOPBACK, LAN] {
                assert_eq!(
                    host(value, local, true),
                    Some(StatusCode::MISDIRECTED_REQUEST),
                    "{value} on {local}"
                );
            }
        }
    }

    #[test]
    fn changes_need_json() {
        let mut headers = HeaderMap::new();
        assert!(content_type_refusal(&Method::GET, &headers).is_none());
        for method in [Method::POST, Method::DELETE] {
            let status = |headers: &HeaderMap| {
                content_type_refusal(&method, headers).map(|response| response.status())
            };
            assert_eq!(status(&headers), Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
            for refused in [
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/jsonp",
            ] {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(refused));
                assert_eq!(
                    status(&headers),
                    Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
                    "{refused}"
                );
            }
            for accepted in ["application/json", "Application/JSON; charset=utf-8"] {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(accepted));
                assert_eq!(status(&headers), None, "{accepted}");
            }
            headers.remove(CONTENT_TYPE);
        }
    }
}
