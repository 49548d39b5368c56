//! betwixt's command line: gobetween's surface (`-c FILE`, `from-file`, `from-url`,
//! `from-consul`, `-f`, `-e`, `-p`, `-v`, the `GOBETWEEN` environment variable) plus `check`,
//! `migrate`, `status` and `demo`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use betwixt::config::{Format, LoadOptions, Loaded};
use betwixt::daemon::{self, ConfigSource, ConsulScheme, DaemonOptions, Origin};
use clap::{ArgAction, Parser, Subcommand, ValueEnum};

mod cli;

use cli::status::StatusOptions;

/// L4 TCP load balancer for Kubernetes/k3s API servers; a drop-in replacement for gobetween.
#[derive(Debug, Parser)]
#[command(name = "betwixt", version, disable_version_flag = true)]
struct Cli {
    /// Path to the configuration file (gobetween's `-c`).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Configuration format.
    #[arg(short = 'f', long, global = true, value_enum, default_value_t = FormatArg::Toml)]
    format: FormatArg,
    /// Write the process id to this file once listening; removed on a clean exit.
    #[arg(short = 'p', long, global = true, value_name = "PATH")]
    pidfile: Option<PathBuf>,
    /// Replace every ${NAME} in the configuration text with the environment variable NAME.
    #[arg(short = 'e', long = "use-config-env-vars", global = true)]
    use_config_env_vars: bool,
    /// Print the version.
    #[arg(short = 'v', long, action = ArgAction::Version)]
    version: Option<bool>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where a running daemon's REST API is.
#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// The REST API's URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8888")]
    api: String,
    /// Login of [api.basic_auth].
    #[arg(long, requires = "password")]
    login: Option<String>,
    /// Password of [api.basic_auth].
    #[arg(long, requires = "login")]
    password: Option<String>,
    /// PEM CA certificate to verify an https API against (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
}

impl From<ApiArgs> for StatusOptions {
    fn from(args: ApiArgs) -> Self {
        Self {
            api: args.api,
            login: args.login,
            password: args.password,
            ca_cert: args.cacert,
        }
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    betwixt::config::duration::parse_duration(text).map_err(|error| error.to_string())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Toml,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SchemeArg {
    Http,
    Https,
}

impl From<SchemeArg> for ConsulScheme {
    fn from(scheme: SchemeArg) -> Self {
        match scheme {
            SchemeArg::Http => ConsulScheme::Http,
            SchemeArg::Https => ConsulScheme::Https,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start using the configuration in FILE.
    FromFile {
        #[arg(value_name = "FILE")]
        path: PathBuf,
    },
    /// Start using the configuration fetched by GET from URL (http or https); SIGHUP fetches
    /// it again.
    FromUrl {
        #[arg(value_name = "URL")]
        url: String,
    },
    /// Start using the configuration stored under a key of Consul's KV store; SIGHUP fetches
    /// it again. CONSUL_HTTP_TOKEN, when set, is sent as the ACL token.
    FromConsul {
        #[arg(value_name = "HOST:PORT")]
        address: String,
        /// Consul key to read the configuration from.
        #[arg(short = 'k', long, default_value = "gobetween")]
        key: String,
        /// How to reach Consul.
        #[arg(short = 's', long, value_enum, default_value_t = SchemeArg::Http)]
        scheme: SchemeArg,
    },
    /// Validate a configuration and print its servers and backends (like `haproxy -c`).
    Check {
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(value_name = "FILE", conflicts_with = "config")]
        path: Option<PathBuf>,
        /// Fetch the configuration from URL, as `from-url` does.
        #[arg(long, value_name = "URL", conflicts_with_all = ["config", "path"])]
        url: Option<String>,
        /// Read the configuration from Consul's KV store, as `from-consul` does.
        #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["config", "path", "url"])]
        consul: Option<String>,
        /// With `--consul`: the key holding the configuration.
        #[arg(short = 'k', long, default_value = "gobetween", requires = "consul")]
        key: String,
        /// With `--consul`: how to reach Consul.
        #[arg(short = 's', long, value_enum, default_value_t = SchemeArg::Http, requires = "consul")]
        scheme: SchemeArg,
        /// Treat unknown keys as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Print, per server, where betwixt will behave differently from gobetween with this
    /// configuration, to review before a cutover.
    Migrate {
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(value_name = "FILE", conflicts_with = "config")]
        path: Option<PathBuf>,
    },
    /// Show a running betwixt's (or gobetween's) servers and backends, through its REST API.
    Status {
        /// The REST API's URL.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8888")]
        api: String,
        /// Login of [api.basic_auth].
        #[arg(long, requires = "password")]
        login: Option<String>,
        /// Password of [api.basic_auth].
        #[arg(long, requires = "login")]
        password: Option<String>,
        /// PEM CA certificate to verify an https API against (default: the system's roots).
        #[arg(long, value_name = "FILE")]
        cacert: Option<PathBuf>,
        /// Print one line and exit 0 only if the daemon answers and every server has a live
        /// backend (a keepalived track_script).
        #[arg(long)]
        check: bool,
    },
    /// Stop listening and let sessions finish, for a planned switchover to a VRRP peer.
    Drain {
        #[command(flatten)]
        api: ApiArgs,
        /// Close the sessions still open after this long (Go syntax, e.g. 30s, 5m).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        deadline: std::time::Duration,
        /// Wait until no session is left.
        #[arg(long)]
        wait: bool,
    },
    /// Listen again after `drain`.
    Undrain {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Run the balancer in front of three local demo backends, to watch it balance and fail over.
    Demo {
        /// Port the demo balancer listens on (127.0.0.1).
        #[arg(long, default_value_t = 6443)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("betwixt: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("betwixt: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the arguments, or gobetween's `GOBETWEEN` variable holding them as a JSON array.
fn parse_cli() -> anyhow::Result<Cli> {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    if let Some(from_env) = std::env::var_os("GOBETWEEN") {
        if args.len() > 1 {
            bail!(
                "GOBETWEEN is set: pass the arguments either there or on the command line, not both"
            );
        }
        let from_env = from_env
            .into_string()
            .map_err(|_| anyhow::anyhow!("GOBETWEEN is not valid UTF-8"))?;
        let extra: Vec<String> = serde_json::from_str(&from_env).context(
            "GOBETWEEN must hold a JSON array of strings, e.g. [\"-c\", \"/etc/gobetween.toml\"]",
        )?;
        args.extend(extra.into_iter().map(OsString::from));
    }
    Ok(Cli::parse_from(args))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let options = LoadOptions {
        format: match cli.format {
            FormatArg::Toml => Format::Toml,
            FormatArg::Json => Format::Json,
        },
        substitute_env: cli.use_config_env_vars,
        strict: false,
    };
    let origin = match cli.command {
        None => cli.config.map(Origin::File),
        Some(Command::FromFile { path }) => Some(Origin::File(path)),
        Some(Command::FromUrl { url }) => Some(Origin::Url(url)),
        Some(Command::FromConsul {
            address,
            key,
            scheme,
        }) => Some(Origin::Consul {
            address,
            key,
            scheme: scheme.into(),
        }),
        Some(Command::Check {
            config,
            path,
            url,
            consul,
            key,
            scheme,
            strict,
        }) => {
            let origin = match (config.or(path), url, consul) {
                (Some(path), _, _) => Origin::File(path),
                (None, Some(url), _) => Origin::Url(url),
                (None, None, Some(address)) => Origin::Consul {
                    address,
                    key,
                    scheme: scheme.into(),
                },
                (None, None, None) => bail!(
                    "check needs a configuration: betwixt check -c FILE (or --url URL, or \
                     --consul HOST:PORT -k KEY)"
                ),
            };
            let options = LoadOptions { strict, ..options };
            return cli::check::run(&ConfigSource { origin, options });
        }
        Some(Command::Migrate { config, path }) => {
            let Some(path) = config.or(path) else {
                bail!("migrate needs a gobetween configuration: betwixt migrate FILE");
            };
            return Ok(cli::migrate::run(&path, &options));
        }
        Some(Command::Demo { port }) => return cli::demo::run_blocking(port),
        Some(Command::Status {
            api,
            login,
            password,
            cacert,
            check,
        }) => {
            let options = StatusOptions {
                api,
                login,
                password,
                ca_cert: cacert,
            };
            if check {
                return cli::status::run_check(&options);
            }
            return cli::status::run(&options);
        }
        Some(Command::Drain {
            api,
            deadline,
            wait,
        }) => return cli::node::run_drain(&api.into(), deadline, wait),
        Some(Command::Undrain { api }) => return cli::node::run_undrain(&api.into()),
    };
    let Some(origin) = origin else {
        use clap::CommandFactory;
        Cli::command().print_help()?;
        return Ok(ExitCode::SUCCESS);
    };
    serve(ConfigSource { origin, options }, cli.pidfile)
}

/// Runs the daemon until SIGTERM/SIGINT.
fn serve(source: ConfigSource, pidfile: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    // Before the config: fetching one (from-url, from-consul) needs the runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let Loaded { config, warnings } = match runtime.block_on(source.load()) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let log_control = betwixt::logging::init(&config.logging)
        .with_context(|| format!("{}: logging.output", source.name()))?;
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    let options = DaemonOptions {
        source,
        pidfile,
        log_control: Some(log_control),
    };
    match runtime.block_on(daemon::run(config, options)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            tracing::error!("{error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn gobetween_forms_parse() {
        let cli = Cli::try_parse_from(["betwixt", "-c", "/etc/gobetween.toml", "-f", "json", "-e"])
            .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("/etc/gobetween.toml")));
        assert!(matches!(cli.format, FormatArg::Json) && cli.use_config_env_vars);
        let cli =
            Cli::try_parse_from(["betwixt", "from-file", "g.toml", "-p", "/run/g.pid"]).unwrap();
        assert!(matches!(cli.command, Some(Command::FromFile { .. })));
        assert_eq!(cli.pidfile, Some(PathBuf::from("/run/g.pid")));
        let cli =
            Cli::try_parse_from(["betwixt", "from-consul", "10.0.0.5:8500", "-f", "json"]).unwrap();
        let Some(Command::FromConsul { key, scheme, .. }) = cli.command else {
            panic!("from-consul parses as itself");
        };
        assert_eq!(key, "gobetween", "gobetween's default key");
        assert!(matches!(scheme, SchemeArg::Http) && matches!(cli.format, FormatArg::Json));
        let cli = Cli::try_parse_from([
            "betwixt",
            "from-consul",
            "10.0.0.5:8500",
            "-k",
            "lb/config",
            "-s",
            "https",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::FromConsul { key, scheme: SchemeArg::Https, .. }) if key == "lb/config"
        ));
        assert!(Cli::try_parse_from(["betwixt", "from-consul", "h:1", "-s", "ftp"]).is_err());
    }
}
