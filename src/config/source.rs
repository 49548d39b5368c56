//! Reading a config: the file, `${NAME}` substitution (gobetween's `-e`), parsing, unknown-key
//! warnings and validation, in that order.
//!
//! [`load_file`] and [`load_str`] are the whole pipeline; they return either a [`Config`] with
//! its warnings or every error found, each naming the file.

use std::borrow::Cow;
use std::ffi::OsString;
use std::path::Path;
use std::str::FromStr;

use super::raw::{self, RawConfig};
use super::{Config, ConfigError, ConfigErrors, ConfigWarning, validate};

/// The syntax of a config file (gobetween's `-f/--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Toml,
    Json,
}

impl FromStr for Format {
    type Err = String;

    /// `toml` or `json`, as gobetween's `--format` accepts.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "toml" => Ok(Self::Toml),
            "json" => Ok(Self::Json),
            _ => Err(format!("unknown format {name:?}; expected toml or json")),
        }
    }
}

/// How to load a config. The default is TOML, no substitution, unknown keys as warnings.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub format: Format,
    /// gobetween's `-e`: replace every `${NAME}` in the text by the environment variable
    /// (unset: empty) before parsing, and (a betwixt extension) every `${credential:NAME}` by
    /// the systemd credential `NAME`: the file `$CREDENTIALS_DIRECTORY/NAME` that
    /// `LoadCredential=` provides, without its final newline. A credential that cannot be read
    /// is an error, not an empty value (an empty password must not slip through).
    pub substitute_env: bool,
    /// Refuse unknown keys instead of warning about them.
    pub strict: bool,
}

/// A loaded config and what is worth a look in it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigWarning>,
}

impl Loaded {
    /// The config, after logging each warning.
    pub fn into_config_logging_warnings(self) -> Config {
        for warning in &self.warnings {
            tracing::warn!("{warning}");
        }
        self.config
    }
}

/// Reads and loads the config at `path`; messages name the file as `path` displays.
///
/// # Errors
/// [`ConfigError::Read`] if the file cannot be read, else as [`load_str`].
pub fn load_file(path: &Path, options: &LoadOptions) -> Result<Loaded, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|cause| {
        ConfigErrors(vec![ConfigError::Read {
            file: file.clone(),
            cause,
        }])
    })?;
    load_str(&file, &text, options)
}

/// Loads a config from `text`; `file` names it in every message.
///
/// # Errors
/// A syntax or type error alone (parsing stops there), or else every validation error, plus
/// one per unknown key in strict mode.
pub fn load_str(file: &str, text: &str, options: &LoadOptions) -> Result<Loaded, ConfigErrors> {
    let text = if options.substitute_env {
        let directory = std::env::var_os("CREDENTIALS_DIRECTORY");
        let mut problems = Vec::new();
        let text = substitute_env(text, |name| match name.strip_prefix(CREDENTIAL) {
            Some(credential) => read_credential(credential, directory.as_ref())
                .map_err(|problem| problems.push(problem))
                .ok(),
            None => std::env::var(name).ok(),
        });
        if !problems.is_empty() {
            let errors = problems.into_iter().map(|message| ConfigError::Syntax {
                file: file.to_owned(),
                message,
            });
            return Err(ConfigErrors(errors.collect()));
        }
        Cow::Owned(text)
    } else {
        Cow::Borrowed(text)
    };
    let parsed = raw::parse::<RawConfig>(file, &text, options.format)
        .map_err(|error| ConfigErrors(vec![error]))?;
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    for key in parsed.unknown_keys {
        let hint = unknown_key_hint(&key);
        if options.strict {
            let message = format!("unknown key, refused in strict mode{hint}");
            errors.push(ConfigError::Invalid {
                file: file.to_owned(),
                key,
                message,
            });
        } else {
            let message = format!("unknown key, ignored (as gobetween does){hint}");
            warnings.push(ConfigWarning {
                file: file.to_owned(),
                key,
                message,
            });
        }
    }
    match validate::validate(file, &parsed.value) {
        Ok((config, more)) if errors.is_empty() => {
            warnings.extend(more);
            Ok(Loaded { config, warnings })
        }
        Ok(_) => Err(ConfigErrors(errors)),
        Err(more) => {
            errors.extend(more);
            Err(ConfigErrors(errors))
        }
    }
}

/// A pointer for unknown keys that real gobetween configs are known to carry.
fn unknown_key_hint(key: &str) -> &'static str {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    match leaf {
        "ping_timeout_duration" => "; the check timeout is the healthcheck's \"timeout\" key",
        "balance" if key.starts_with("defaults.") => {
            "; balance is set per server, in [servers.NAME]"
        }
        _ => "",
    }
}

/// Under `-e`, `${credential:NAME}` is the systemd credential NAME.
const CREDENTIAL: &str = "credential:";

/// The content of credential `name` in `directory` (`$CREDENTIALS_DIRECTORY`), without one
/// final newline.
///
/// # Errors
/// A message naming the placeholder: no directory, a name that is not a plain file name, or
/// the file cannot be read.
fn read_credential(name: &str, directory: Option<&OsString>) -> Result<String, String> {
    let placeholder = format!("${{{CREDENTIAL}{name}}}");
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!("{placeholder}: not a credential name"));
    }
    let Some(directory) = directory else {
        return Err(format!(
            "{placeholder}: CREDENTIALS_DIRECTORY is not set (systemd sets it for a unit with \
             LoadCredential=)"
        ));
    };
    let path = Path::new(directory).join(name);
    let text = std::fs::read_to_string(&path)
        .map_err(|error| format!("{placeholder}: cannot read {}: {error}", path.display()))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
}

/// Replaces every `${NAME}` in `text` by `lookup(NAME)`, or by nothing when that is `None`.
///
/// Like gobetween's `\$\{.*?\}`, a placeholder ends at the first `}` and does not span lines;
/// a `${` without a closing `}` on its line stays as written. Substituted values are not
/// scanned again.
pub fn substitute_env(text: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after
            .find(['}', '\n'])
            .filter(|&end| after[end..].starts_with('}'));
        out.push_str(&rest[..start]);
        match end {
            Some(end) => {
                out.push_str(&lookup(&after[..end]).unwrap_or_default());
                rest = &after[end + 1..];
            }
            None => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("6443".into()),
            "HOST" => Some("10.0.0.1".into()),
            "LOOP" => Some("${PORT}".into()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_placeholders() {
        let table = [
            ("bind = \":${PORT}\"", "bind = \":6443\""),
            ("${HOST}:${PORT}", "10.0.0.1:6443"),
            ("${UNSET}x", "x"),
            ("${}", ""),
            ("$PORT {PORT}", "$PORT {PORT}"),
            ("${PORT", "${PORT"),
            ("${PORT\n}", "${PORT\n}"),
            ("a ${PORT} b ${PORT", "a 6443 b ${PORT"),
            ("${LOOP}", "${PORT}"),
            ("µ${HOST}µ", "µ10.0.0.1µ"),
            ("$${PORT}}", "$6443}"),
        ];
        for (text, expected) in table {
            assert_eq!(substitute_env(text, env), expected, "{text}");
        }
    }

    #[test]
    fn credentials_are_read_from_the_credentials_directory() {
        let dir = std::env::temp_dir().join(format!("betwixt-credentials-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("api-password"), "s3cret\n").unwrap();
        let directory = Some(dir.clone().into_os_string());
        assert_eq!(
            read_credential("api-password", directory.as_ref()).as_deref(),
            Ok("s3cret")
        );
        let missing = read_credential("nope", directory.as_ref()).unwrap_err();
        assert!(
            missing.starts_with("${credential:nope}: cannot read"),
            "{missing}"
        );
        assert!(
            missing.contains(dir.join("nope").to_str().unwrap()),
            "{missing}"
        );
        let escape = read_credential("../etc/passwd", directory.as_ref()).unwrap_err();
        assert!(escape.contains("not a credential name"), "{escape}");
        let unset = read_credential("api-password", None).unwrap_err();
        assert!(
            unset.contains("CREDENTIALS_DIRECTORY is not set"),
            "{unset}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn format_names() {
        assert_eq!("toml".parse(), Ok(Format::Toml));
        assert_eq!("json".parse(), Ok(Format::Json));
        assert!("yaml".parse::<Format>().is_err());
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let path = Path::new("/nonexistent/betwixt.toml");
        let errors = load_file(path, &LoadOptions::default()).expect_err("missing file");
        assert!(matches!(errors.0.as_slice(), [ConfigError::Read { .. }]));
        // The cause is in the message and not repeated as a source (printed once by `{:#}`).
        assert!(std::error::Error::source(&errors.0[0]).is_none());
        assert!(
            errors
                .to_string()
                .starts_with("/nonexistent/betwixt.toml: cannot read")
        );
    }
}
