//! End-to-end tests of loading: text in, [`Config`](super::Config) or every error out.

mod bad_configs;
mod every_key;
mod gobetween_08;
mod k3s;
mod tls;

use super::{ConfigErrors, LoadOptions, Loaded, load_str};

/// The file name every test config is loaded as.
const FILE: &str = "gobetween.toml";

/// Loads TOML text with default options.
fn load(text: &str) -> Result<Loaded, ConfigErrors> {
    load_str(FILE, text, &LoadOptions::default())
}

/// Loads TOML text that must be valid.
fn load_ok(text: &str) -> Loaded {
    load(text).unwrap_or_else(|errors| panic!("config should load:\n{errors}\n---\n{text}"))
}

/// Loads TOML text that must fail; every error as displayed.
fn load_errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("config should fail:\n{text}"),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}
