//! HTTP basic authentication (`[api.basic_auth]`), as gobetween checks it.
//!
//! Like gin's `BasicAuth`, the expected `Authorization` value is computed once and compared
//! with the request's in constant time (`subtle`, so the time taken tells nothing about how
//! much of a guess was right; the length is not secret); a refusal is `401` with
//! `WWW-Authenticate: Basic realm="Authorization Required"`.

use hyper::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use subtle::ConstantTimeEq;

use crate::config::BasicAuth;
use crate::http::response::{self, Body};

/// The realm gin announces.
const REALM: &str = "Basic realm=\"Authorization Required\"";

/// The credentials a request must carry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `Basic BASE64(login:password)`.
    expected: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

impl Credentials {
    pub fn new(auth: &BasicAuth) -> Self {
        Self {
            expected: authorization_value(&auth.login, &auth.password),
        }
    }

    /// Whether `headers` carry these credentials.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        headers
            .get(AUTHORIZATION)
            .is_some_and(|value| bool::from(value.as_bytes().ct_eq(self.expected.as_bytes())))
    }
}

/// The `401` a request without the right credentials gets.
pub fn challenge() -> Response<Body> {
    let mut response = response::empty(StatusCode::UNAUTHORIZED);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
    response
}

/// `Basic BASE64(login:password)`, the `Authorization` header value of basic authentication.
pub fn authorization_value(login: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{login}:{password}").as_bytes()))
}

/// Standard base64 with padding (RFC 4648 section 4).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let bytes = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let group = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                let index = (group >> (18 - 6 * i)) & 0x3f;
                out.push(char::from(ALPHABET[index as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(
            authorization_value("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn only_the_exact_credentials_pass() {
        let credentials = Credentials::new(&BasicAuth {
            login: "admin".into(),
            password: "s3cret".into(),
        });
        let mut headers = HeaderMap::new();
        assert!(!credentials.allows(&headers));
        for wrong in ["admin:s3cret", "Basic YWRtaW46czNjcmV0IA==", "Basic "] {
            headers.insert(AUTHORIZATION, HeaderValue::from_static(wrong));
            assert!(!credentials.allows(&headers), "{wrong}");
        }
        let right = authorization_value("admin", "s3cret");
        for near in [&right[..right.len() - 1], &format!("{right}=")] {
            headers.insert(AUTHORIZATION, HeaderValue::from_str(near).unwrap());
            assert!(!credentials.allows(&headers), "{near}");
        }
        headers.insert(AUTHORIZATION, HeaderValue::from_str(&right).unwrap());
        assert!(credentials.allows(&headers));
        assert_eq!(challenge().headers()[WWW_AUTHENTICATE], REALM);
        assert_eq!(format!("{credentials:?}"), "Credentials(..)");
    }
}
