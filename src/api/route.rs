//! The API's paths: a request's method and path to a [`Route`], with percent-decoded segments.
//!
//! gobetween's paths (`/ping`, `/`, `/dump`, `/servers`, `/servers/NAME`,
//! `/servers/NAME/stats`) plus betwixt's `POST /servers/NAME/backends/HOST:PORT/ACTION`. A
//! trailing slash is ignored. A backend may be written raw (`[::1]:6443`) or percent-encoded
//! (`%5B%3A%3A1%5D%3A6443`); an IP address is compared in its canonical form, so
//! `[0:0::1]:6443` names the same backend.

use std::net::SocketAddr;

use hyper::Method;

/// What the operator asked a backend to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// No new sessions; established ones stay.
    Drain,
    /// No new sessions; established ones are closed.
    Disable,
    /// Back to taking new sessions.
    Enable,
}

impl AdminAction {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "drain" => Some(Self::Drain),
            "disable" => Some(Self::Disable),
            "enable" => Some(Self::Enable),
            _ => None,
        }
    }
}

/// One endpoint of the API, with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /ping`: public.
    Ping,
    /// `GET /healthz`: public; whether this node should hold a virtual address (betwixt).
    Healthz,
    /// `GET /drain`: the node's drain state (betwixt).
    DrainState,
    /// `POST /drain`: stop listening, let sessions finish (betwixt).
    Drain,
    /// `POST /undrain`: listen again (betwixt).
    Undrain,
    /// `GET /`: gobetween's process information, or the status page for a browser.
    Root,
    /// `GET /status.json`: what the status page needs besides the stats (betwixt).
    Status,
    /// `GET /dump`.
    Dump,
    /// `GET /servers`.
    ListServers,
    /// `GET /servers/NAME`.
    GetServer(String),
    /// `POST /servers/NAME`.
    CreateServer(String),
    /// `DELETE /servers/NAME`.
    DeleteServer(String),
    /// `GET /servers/NAME/stats`.
    ServerStats(String),
    /// `POST /servers/NAME/backends/TARGET/ACTION` (betwixt).
    Admin {
        server: String,
        /// `host:port` as in the stats (`[v6]:port` for IPv6).
        target: String,
        action: AdminAction,
    },
}

impl Route {
    /// Whether the endpoint answers without credentials.
    pub fn is_public(&self) -> bool {
        matches!(self, Self::Ping | Self::Healthz)
    }
}

/// The outcome of matching a request against the API's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Found(Route),
    /// The path exists, not with this method; the value lists the allowed ones.
    MethodNotAllowed(&'static str),
    NotFound,
}

/// Matches `method` and `path` (without the query).
pub fn resolve(method: &Method, path: &str) -> Resolved {
    let segments = segments(path);
    let words: Vec<&str> = segments.iter().map(String::as_str).collect();
    let get_only = |route: Route| only(method, &Method::GET, "GET", route);
    match words.as_slice() {
        [] => get_only(Route::Root),
        ["ping"] => get_only(Route::Ping),
        ["healthz"] => get_only(Route::Healthz),
        ["drain"] => match *method {
            Method::GET => Resolved::Found(Route::DrainState),
            Method::POST => Resolved::Found(Route::Drain),
            _ => Resolved::MethodNotAllowed("GET, POST"),
        },
        ["undrain"] => only(method, &Method::POST, "POST", Route::Undrain),
        ["dump"] => get_only(Route::Dump),
        ["status.json"] => get_only(Route::Status),
        ["servers"] => get_only(Route::ListServers),
        ["servers", name] => server(method, name),
        ["servers", name, "stats"] => get_only(Route::ServerStats((*name).to_owned())),
        ["servers", server, "backends", target, action] => match AdminAction::parse(action) {
            Some(action) => {
                let route = Route::Admin {
                    server: (*server).to_owned(),
                    target: canonical_target(target),
                    action,
                };
                only(method, &Method::POST, "POST", route)
            }
            None => Resolved::NotFound,
        },
        _ => Resolved::NotFound,
    }
}

fn server(method: &Method, name: &str) -> Resolved {
    let name = name.to_owned();
    match *method {
        Method::GET => Resolved::Found(Route::GetServer(name)),
        Method::POST => Resolved::Found(Route::CreateServer(name)),
        Method::DELETE => Resolved::Found(Route::DeleteServer(name)),
        _ => Resolved::MethodNotAllowed("GET, POST, DELETE"),
    }
}

fn only(method: &Method, wanted: &Method, allow: &'static str, route: Route) -> Resolved {
    if method == wanted {
        Resolved::Found(route)
    } else {
        Resolved::MethodNotAllowed(allow)
    }
}

/// The percent-decoded segments of `path`, without empty ones (so `/servers/` is `/servers`).
fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|segment| !segment.is_empty())
        .map(percent_decode)
        .collect()
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as it is.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `host:port` as backends are named: an IP address in its canonical form, a name unchanged.
fn canonical_target(target: &str) -> String {
    target
        .parse::<SocketAddr>()
        .map_or_else(|_| target.to_owned(), |addr| addr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(method: Method, path: &str) -> Route {
        match resolve(&method, path) {
            Resolved::Found(route) => route,
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn gobetween_paths() {
        assert_eq!(found(Method::GET, "/"), Route::Root);
        assert_eq!(found(Method::GET, "/ping"), Route::Ping);
        assert_eq!(found(Method::GET, "/dump"), Route::Dump);
        assert_eq!(found(Method::GET, "/status.json"), Route::Status);
        assert!(!Route::Status.is_public());
        assert_eq!(found(Method::GET, "/servers/"), Route::ListServers);
        assert_eq!(
            found(Method::GET, "/servers/k3s"),
            Route::GetServer("k3s".into())
        );
        assert_eq!(
            found(Method::POST, "/servers/k3s"),
            Route::CreateServer("k3s".into())
        );
        assert_eq!(
            found(Method::DELETE, "/servers/k3s"),
            Route::DeleteServer("k3s".into())
        );
        assert_eq!(
            found(Method::GET, "/servers/k3s/stats"),
            Route::ServerStats("k3s".into())
        );
        assert!(Route::Ping.is_public() && !Route::Root.is_public());
    }

    #[test]
    fn node_paths() {
        assert_eq!(found(Method::GET, "/healthz"), Route::Healthz);
        assert!(Route::Healthz.is_public());
        assert_eq!(found(Method::GET, "/drain"), Route::DrainState);
        assert_eq!(found(Method::POST, "/drain"), Route::Drain);
        assert_eq!(found(Method::POST, "/undrain"), Route::Undrain);
        for route in [Route::DrainState, Route::Drain, Route::Undrain] {
            assert!(!route.is_public(), "{route:?}");
        }
        assert_eq!(
            resolve(&Method::GET, "/undrain"),
            Resolved::MethodNotAllowed("POST")
        );
    }

    #[test]
    fn wrong_methods_and_unknown_paths() {
        assert_eq!(
            resolve(&Method::POST, "/ping"),
            Resolved::MethodNotAllowed("GET")
        );
        assert_eq!(
            resolve(&Method::PUT, "/servers/k3s"),
            Resolved::MethodNotAllowed("GET, POST, DELETE")
        );
        assert_eq!(resolve(&Method::GET, "/nope"), Resolved::NotFound);
        assert_eq!(
            resolve(&Method::POST, "/servers/k3s/backends/a:1/reboot"),
            Resolved::NotFound
        );
    }

    #[test]
    fn admin_targets_raw_encoded_and_canonical() {
        let expected = Route::Admin {
            server: "k3s".into(),
            target: "[::1]:6443".into(),
            action: AdminAction::Drain,
        };
        for path in [
            "/servers/k3s/backends/[::1]:6443/drain",
            "/servers/k3s/backends/%5B%3A%3A1%5D%3A6443/drain",
            "/servers/k3s/backends/%5b0:0::1%5d:6443/drain",
        ] {
            assert_eq!(found(Method::POST, path), expected, "{path}");
        }
        let named = found(
            Method::POST,
            "/servers/a%20b/backends/master-1:6443/disable",
        );
        assert_eq!(
            named,
            Route::Admin {
                server: "a b".into(),
                target: "master-1:6443".into(),
                action: AdminAction::Disable,
            }
        );
    }

    #[test]
    fn bad_escapes_stay_literal() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%41%42"), "AB");
    }
}
