//! HTTP plumbing for the operator endpoints (the REST API, the metrics): a bounded listener
//! with TLS and timeouts ([`listener`]) that makes room by closing idle connections
//! ([`slots`]), the certificate files behind it ([`tls`]), and the
//! shapes of responses ([`response`]). What a request means is up to the [`listener::Site`]
//! it serves; nothing here knows about servers or backends.

pub(crate) mod listener;
pub(crate) mod response;
pub(crate) mod slots;
pub(crate) mod tls;
