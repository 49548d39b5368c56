//! The config values that are secrets, and masking them in what the API shows.
//!
//! Secrets are values whose key says so: `[api.basic_auth] password`, and the discovery
//! credentials gobetween has (`consul_auth_password`, `consul_acl_token`,
//! `lxd_server_remote_password`, which betwixt keeps in the raw config with a warning). File
//! paths (`[api.tls] key_path`) are not secrets: the path tells nothing of the key. Values
//! that came from `${NAME}` substitution cannot be told apart: the raw config is parsed from
//! the substituted text and does not record where a value came from, so a secret placed in
//! another key through the environment is shown like any other value of that key.

use crate::config::raw::{RawConfig, RawServer};

/// What a secret is replaced with.
pub const MASK: &str = "********";

/// `raw` with every secret replaced by [`MASK`].
pub fn masked(raw: &RawConfig) -> RawConfig {
    let mut raw = raw.clone();
    if let Some(auth) = raw.api.as_mut().and_then(|api| api.basic_auth.as_mut()) {
        mask(&mut auth.password);
    }
    raw.servers.values_mut().for_each(mask_server);
    raw
}

/// Masks the secrets of one server's table.
pub fn mask_server(server: &mut RawServer) {
    if let Some(discovery) = server.discovery.as_mut() {
        mask(&mut discovery.consul_auth_password);
        mask(&mut discovery.consul_acl_token);
        mask(&mut discovery.lxd_server_remote_password);
    }
}

fn mask(value: &mut Option<String>) {
    if let Some(value) = value.as_mut() {
        MASK.clone_into(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;
    use crate::config::raw::parse;

    #[test]
    fn passwords_and_tokens_masked_paths_and_logins_kept() {
        let text = r#"
            [api.basic_auth]
            login = "admin"
            password = "s3cret"
            [api.tls]
            cert_path = "/etc/api.pem"
            key_path = "/etc/api-key.pem"
            [servers.k3s.discovery]
            kind = "static"
            static_list = ["10.0.0.1:6443"]
            consul_auth_username = "consul"
            consul_auth_password = "pw1"
            consul_acl_token = "acl-xyz"
            lxd_server_remote_password = "pw2"
        "#;
        let raw = parse::<RawConfig>("t.toml", text, Format::Toml)
            .unwrap()
            .value;
        let shown = masked(&raw);
        let api = shown.api.as_ref().unwrap();
        let auth = api.basic_auth.as_ref().unwrap();
        assert_eq!(auth.login.as_deref(), Some("admin"));
        assert_eq!(auth.password.as_deref(), Some(MASK));
        let tls = api.tls.as_ref().unwrap();
        assert_eq!(tls.key_path.as_deref(), Some("/etc/api-key.pem"));
        let discovery = shown.servers["k3s"].discovery.as_ref().unwrap();
        assert_eq!(discovery.consul_auth_username.as_deref(), Some("consul"));
        for secret in [
            &discovery.consul_auth_password,
            &discovery.consul_acl_token,
            &discovery.lxd_server_remote_password,
        ] {
            assert_eq!(secret.as_deref(), Some(MASK));
        }
        assert_eq!(
            discovery.static_list,
            raw.servers["k3s"].discovery.as_ref().unwrap().static_list
        );
        let text = toml::to_string(&shown).unwrap();
        assert!(
            !["s3cret", "pw1", "pw2", "acl-xyz"]
                .iter()
                .any(|s| text.contains(s)),
            "{text}"
        );
        assert_eq!(masked(&RawConfig::default()), RawConfig::default());
    }
}
