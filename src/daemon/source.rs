//! Where the daemon's configuration comes from: a file (`-c`, `from-file`), an HTTP(S) URL
//! (`from-url`) or a Consul key (`from-consul`), read again the same way on every SIGHUP.
//!
//! A fetched configuration goes through the same pipeline as a file ([`config::load_str`]):
//! `-e` substitution, the `-f` format, unknown keys, validation. Every message names the URL
//! asked where a file's would name the file, so a refused reload says which source and which
//! key. Requests go through the discovery HTTP client: one connection per fetch, https
//! verified against the system's roots (as gobetween's Go client), a 2xx answer required
//! (gobetween parsed any body, so an error page would have become a config error at best).

use std::path::PathBuf;

use hyper::StatusCode;
use hyper::header::HeaderName;
use serde::Deserialize;

use crate::api::wire::ConfigurationSource;
use crate::config::{self, ConfigError, ConfigErrors, LoadOptions, Loaded};
use crate::discovery::client::{self, Client, ClientError, Endpoint};
use crate::discovery::http;

/// Where the configuration comes from, so a reload reads it again the same way.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub origin: Origin,
    pub options: LoadOptions,
}

/// The command that named the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `-c FILE` or `from-file FILE`.
    File(PathBuf),
    /// `from-url URL`: the body of a GET.
    Url(String),
    /// `from-consul HOST:PORT -k KEY -s SCHEME`: the value of a key in Consul's KV store.
    Consul {
        /// `HOST:PORT`, or `SCHEME://HOST:PORT`, whose scheme then wins over `scheme` (as in
        /// Consul's Go client).
        address: String,
        key: String,
        scheme: ConsulScheme,
    },
}

/// `from-consul -s`: how Consul is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsulScheme {
    #[default]
    Http,
    Https,
}

/// The token Consul's Go client (and so gobetween's `from-consul`) sends when it is set.
const CONSUL_TOKEN_VARIABLE: &str = "CONSUL_HTTP_TOKEN";

impl ConfigSource {
    /// Reads (or fetches), parses and validates the configuration.
    ///
    /// # Errors
    /// Every problem found, each naming the file or URL and the key; a fetch that failed is
    /// one [`ConfigError::Fetch`].
    pub async fn load(&self) -> Result<Loaded, ConfigErrors> {
        match &self.origin {
            Origin::File(path) => config::load_file(path, &self.options),
            Origin::Url(url) => {
                let text = fetch_url(url).await?;
                config::load_str(url, &text, &self.options)
            }
            Origin::Consul { key, .. } => {
                let url = self.name();
                let text = fetch_consul(&self.consul_client().await?, &url, key).await?;
                config::load_str(&url, &text, &self.options)
            }
        }
    }

    /// The file or URL that messages name: for Consul, the KV URL, which names the key.
    pub fn name(&self) -> String {
        match &self.origin {
            Origin::File(path) => path.display().to_string(),
            Origin::Url(url) => url.clone(),
            Origin::Consul {
                address,
                key,
                scheme,
            } => {
                let (endpoint, _) = consul_endpoint(address, *scheme);
                format!("{endpoint}{}", kv_path(key))
            }
        }
    }

    /// What `GET /` reports, as gobetween's `info.Configuration`.
    pub fn describe(&self) -> ConfigurationSource {
        match &self.origin {
            Origin::File(path) => ConfigurationSource::file(path),
            Origin::Url(url) => ConfigurationSource::url(url),
            Origin::Consul { address, key, .. } => ConfigurationSource::consul(address, key),
        }
    }

    async fn consul_client(&self) -> Result<Client, ConfigErrors> {
        let Origin::Consul {
            address, scheme, ..
        } = &self.origin
        else {
            return Err(fetch_error(self.name(), "not a Consul source".to_owned()));
        };
        let failed = |message: String| fetch_error(self.name(), message);
        let (text, secure) = consul_endpoint(address, *scheme);
        let endpoint = Endpoint::parse(&text, false).map_err(failed)?;
        let tls = if secure {
            Some(
                http::system_roots()
                    .await
                    .map_err(|error| failed(error.to_string()))?,
            )
        } else {
            None
        };
        let mut client = Client::new(endpoint, tls).map_err(|error| failed(error.to_string()))?;
        if let Some(token) = std::env::var(CONSUL_TOKEN_VARIABLE)
            .ok()
            .filter(|token| !token.is_empty())
        {
            client = client
                .header(HeaderName::from_static("x-consul-token"), &token)
                .map_err(|_| {
                    failed(format!(
                        "{CONSUL_TOKEN_VARIABLE} holds characters HTTP cannot carry"
                    ))
                })?;
        }
        Ok(client)
    }
}

/// `SCHEME://HOST:PORT` of Consul, and whether that is https.
fn consul_endpoint(address: &str, scheme: ConsulScheme) -> (String, bool) {
    if let Some((given, _)) = address.split_once("://") {
        return (address.to_owned(), given.eq_ignore_ascii_case("https"));
    }
    match scheme {
        ConsulScheme::Http => (format!("http://{address}"), false),
        ConsulScheme::Https => (format!("https://{address}"), true),
    }
}

/// `/v1/kv/KEY`, each segment of the key percent-encoded and its slashes kept; a leading
/// slash is dropped, as Consul's Go client does.
fn kv_path(key: &str) -> String {
    let segments: Vec<String> = key
        .trim_start_matches('/')
        .split('/')
        .map(client::encode)
        .collect();
    format!("/v1/kv/{}", segments.join("/"))
}

fn fetch_error(file: String, message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError::Fetch { file, message }])
}

/// The client's message without the URL it starts with: [`ConfigError::Fetch`] names it.
fn problem(error: &ClientError, url: &str) -> String {
    let message = error.to_string();
    match message
        .strip_prefix(url)
        .and_then(|rest| rest.strip_prefix(": "))
    {
        Some(rest) => rest.to_owned(),
        None => message,
    }
}

fn text(body: Vec<u8>, url: &str) -> Result<String, ConfigErrors> {
    String::from_utf8(body)
        .map_err(|_| fetch_error(url.to_owned(), "the answer is not UTF-8 text".to_owned()))
}

async fn fetch_url(url: &str) -> Result<String, ConfigErrors> {
    let body = http::get(url)
        .await
        .map_err(|error| fetch_error(url.to_owned(), problem(&error, url)))?;
    text(body.to_vec(), url)
}

/// One entry of Consul's `GET /v1/kv/KEY` answer; other fields are ignored.
#[derive(Debug, Deserialize)]
struct KvPair {
    /// Base64; null for a key that holds no value.
    #[serde(rename = "Value", default)]
    value: Option<String>,
}

/// The value of `key`, decoded from the base64 of the KV API's JSON.
async fn fetch_consul(client: &Client, url: &str, key: &str) -> Result<String, ConfigErrors> {
    use base64::Engine;
    let failed = |message: String| fetch_error(url.to_owned(), message);
    let body = match client.get(&kv_path(key)).await {
        Ok(body) => body,
        Err(ClientError::Status {
            status: StatusCode::NOT_FOUND,
            ..
        }) => return Err(failed(format!("Consul has no key {key:?}"))),
        Err(error) => return Err(failed(problem(&error, url))),
    };
    let pairs: Vec<KvPair> = serde_json::from_slice(&body)
        .map_err(|error| failed(format!("not a KV API answer: {error}")))?;
    let Some(value) = pairs.into_iter().next().and_then(|pair| pair.value) else {
        return Err(failed(format!("key {key:?} holds no value")));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|error| failed(format!("the value is not base64: {error}")))?;
    text(decoded, url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::responder::{Answer, FakeConsul, Responder};

    fn consul(address: String, key: &str) -> ConfigSource {
        ConfigSource {
            origin: Origin::Consul {
                address,
                key: key.to_owned(),
                scheme: ConsulScheme::Http,
            },
            options: LoadOptions::default(),
        }
    }

    const CONFIG: &str = "[servers.k3s]\nbind = \"127.0.0.1:0\"\n[servers.k3s.discovery]\n\
                          kind = \"static\"\nstatic_list = [\"10.0.0.1:6443\"]\n";

    fn kv_answer(key: &str, value: &str) -> String {
        use base64::Engine;
        let value = base64::engine::general_purpose::STANDARD.encode(value);
        format!(
            r#"[{{"LockIndex":0,"Key":"{key}","Flags":0,"Value":"{value}","CreateIndex":5,"ModifyIndex":7}}]"#
        )
    }

    #[test]
    fn kv_paths_keep_slashes_and_encode_the_rest() {
        assert_eq!(kv_path("gobetween"), "/v1/kv/gobetween");
        assert_eq!(kv_path("/lb/gobetween.toml"), "/v1/kv/lb/gobetween.toml");
        assert_eq!(kv_path("lb/my config"), "/v1/kv/lb/my%20config");
    }

    #[test]
    fn the_address_may_carry_its_scheme() {
        assert_eq!(
            consul_endpoint("10.0.0.5:8500", ConsulScheme::Https),
            ("https://10.0.0.5:8500".to_owned(), true)
        );
        assert_eq!(
            consul_endpoint("http://10.0.0.5:8500", ConsulScheme::Https),
            ("http://10.0.0.5:8500".to_owned(), false)
        );
    }

    #[tokio::test]
    async fn a_consul_value_is_decoded_and_loaded() {
        let (fake, responder) = FakeConsul::start().await;
        fake.set_key("lb/gobetween", CONFIG);
        let source = consul(responder.authority(), "lb/gobetween");
        let loaded = source.load().await.unwrap();
        assert_eq!(
            loaded.config.servers["k3s"].backends[0].target(),
            "10.0.0.1:6443"
        );
        let described = source.describe();
        assert_eq!(
            (
                described.kind.as_str(),
                described.host,
                described.key.as_str()
            ),
            ("consul", responder.authority(), "lb/gobetween")
        );

        let missing = consul(responder.authority(), "nothing").load().await;
        let message = missing.unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "http://{}/v1/kv/nothing: cannot fetch the configuration: Consul has no key \"nothing\"",
                responder.authority()
            )
        );
    }

    #[tokio::test]
    async fn an_invalid_consul_value_names_the_key_url_and_the_key_at_fault() {
        let broken = CONFIG.replace("[servers.k3s]\n", "[servers.k3s]\nbalance = \"nope\"\n");
        let answer = kv_answer("gobetween", &broken);
        let responder = Responder::http(move |_| Answer::json(&answer)).await;
        let message = consul(responder.authority(), "gobetween")
            .load()
            .await
            .unwrap_err()
            .to_string();
        let url = format!("http://{}/v1/kv/gobetween", responder.authority());
        assert!(
            message.starts_with(&format!("{url}: servers.k3s.balance: ")),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_url_that_fails_names_itself_once() {
        let responder = Responder::http(|_| Answer::status(500, "boom")).await;
        let url = format!("http://{}/gobetween.toml", responder.authority());
        let source = ConfigSource {
            origin: Origin::Url(url.clone()),
            options: LoadOptions::default(),
        };
        let message = source.load().await.unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "{url}: cannot fetch the configuration: answered 500 Internal Server Error: boom"
            )
        );
    }
}
