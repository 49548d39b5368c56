//! The measured targets: a direct connection to the backend, betwixt with `forwarding =
//! "splice"` and `"copy"`, HAProxy (`mode tcp`, `option splice-auto`) and nginx `stream`.
//!
//! Every balancer listens on a fresh 127.0.0.1 port, forwards to one backend, runs the same
//! number of worker threads (betwixt: `TOKIO_WORKER_THREADS`; HAProxy: `nbthread`) or worker
//! processes (nginx: `worker_processes`), logs only warnings, and is sized to the per-process
//! open-file limit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::child::Child;
use crate::cli::{Plan, TargetKind};
use crate::system;

/// How long a balancer may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// HAProxy's `maxpipes`: splice pipes kept for connections with data in flight (its default,
/// maxconn/4, would not fit the descriptor limit beside maxconn).
const HAPROXY_MAXPIPES: u64 = 256;
/// Descriptors left for HAProxy's and nginx's own use (listeners, pollers, logs).
const OWN_FDS: u64 = 500;

/// Which optional programs are here.
pub struct Tools {
    pub betwixt: PathBuf,
    pub haproxy: bool,
    /// `None` when nginx or its stream module is missing.
    pub nginx_stream: Option<NginxStream>,
    pub iperf3: bool,
    pub taskset: bool,
}

/// How nginx gets its `stream` module.
pub enum NginxStream {
    BuiltIn,
    Module(PathBuf),
}

impl Tools {
    pub fn detect(plan: &Plan) -> Tools {
        Tools {
            betwixt: plan.betwixt.clone(),
            haproxy: system::on_path("haproxy"),
            nginx_stream: system::on_path("nginx").then(nginx_stream).flatten(),
            iperf3: system::on_path("iperf3"),
            taskset: system::on_path("taskset"),
        }
    }

    /// Why `kind` cannot be measured here, if it cannot.
    pub fn missing(&self, kind: TargetKind) -> Option<String> {
        match kind {
            TargetKind::Direct => None,
            TargetKind::Betwixt
            | TargetKind::BetwixtSplice
            | TargetKind::BetwixtCopy
            | TargetKind::BetwixtSockmap
            | TargetKind::BetwixtAccessLog => (!self.betwixt.is_file())
                .then(|| format!("betwixt binary {} not found", self.betwixt.display())),
            TargetKind::Haproxy => (!self.haproxy).then(|| "haproxy is not installed".into()),
            TargetKind::Nginx => self.nginx_stream.is_none().then(|| {
                "nginx with the stream module is not installed (libnginx-mod-stream)".into()
            }),
        }
    }
}

/// Finds the stream module from `nginx -V`: compiled in, or a loadable `.so`.
fn nginx_stream() -> Option<NginxStream> {
    let output = Command::new("nginx").arg("-V").output().ok()?;
    let flags = String::from_utf8_lossy(&output.stderr).into_owned();
    if flags.contains("--with-stream ") || flags.ends_with("--with-stream") {
        return Some(NginxStream::BuiltIn);
    }
    [
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "/usr/share/nginx/modules/ngx_stream_module.so",
        "/usr/lib64/nginx/modules/ngx_stream_module.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|path| path.is_file())
    .map(NginxStream::Module)
}

/// Where and how a balancer is started.
pub struct Launch<'a> {
    /// Directory for its configuration and log.
    pub dir: &'a Path,
    pub backend: SocketAddr,
    /// `taskset -c` CPU list, or `None` to leave it unpinned.
    pub cpus: Option<&'a str>,
    pub workers: usize,
    pub nofile_limit: u64,
}

/// A running target: where clients connect, and the balancer process if there is one.
pub struct Endpoint {
    pub kind: TargetKind,
    pub addr: SocketAddr,
    balancer: Option<Child>,
}

impl Endpoint {
    /// Starts `kind` in front of `launch.backend` and waits until it listens.
    ///
    /// # Errors
    /// The balancer cannot be started, exits, or does not listen within 10 s.
    pub fn start(kind: TargetKind, tools: &Tools, launch: &Launch<'_>) -> anyhow::Result<Self> {
        let port = system::free_port()?;
        let command = match kind {
            TargetKind::Direct => {
                return Ok(Endpoint {
                    kind,
                    addr: launch.backend,
                    balancer: None,
                });
            }
            TargetKind::Betwixt => betwixt(tools, launch, port, "auto", false)?,
            TargetKind::BetwixtSplice => betwixt(tools, launch, port, "splice", false)?,
            TargetKind::BetwixtCopy => betwixt(tools, launch, port, "copy", false)?,
            TargetKind::BetwixtSockmap => betwixt(tools, launch, port, "sockmap", false)?,
            TargetKind::BetwixtAccessLog => betwixt(tools, launch, port, "auto", true)?,
            TargetKind::Haproxy => haproxy(launch, port)?,
            TargetKind::Nginx => nginx(tools, launch, port)?,
        };
        let command = pinned(command, launch.cpus);
        let log = launch.dir.join(format!("{}.log", kind.name()));
        let mut balancer = Child::spawn(kind.name(), command, &log)?;
        system::wait_for(&format!("{} to listen", kind.name()), START_TIMEOUT, || {
            balancer.ensure_running().is_err() || system::is_listening(port)
        })?;
        balancer.ensure_running()?;
        Ok(Endpoint {
            kind,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            balancer: Some(balancer),
        })
    }

    /// The balancer's processes (all of nginx's workers); empty for a direct connection.
    pub fn pids(&self) -> Vec<u32> {
        self.balancer
            .as_ref()
            .map_or_else(Vec::new, |child| system::process_tree(child.pid()))
    }

    /// # Errors
    /// The balancer has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match &mut self.balancer {
            Some(child) => child.ensure_running(),
            None => Ok(()),
        }
    }
}

/// Wraps `command` in `taskset -c CPUS` when pinning is asked for.
fn pinned(command: Command, cpus: Option<&str>) -> Command {
    let Some(cpus) = cpus else {
        return command;
    };
    let mut wrapped = Command::new("taskset");
    wrapped.arg("-c").arg(cpus).arg(command.get_program());
    wrapped.args(command.get_args());
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            wrapped.env(key, value);
        }
    }
    wrapped
}

fn write_config(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// betwixt with `forwarding = mode`, and with `access_log` an access log file in the run
/// directory (truncated first, so its size is this run's).
fn betwixt(
    tools: &Tools,
    launch: &Launch<'_>,
    port: u16,
    mode: &str,
    access_log: bool,
) -> anyhow::Result<Command> {
    let (name, access_log) = if access_log {
        let path = launch.dir.join("access.log");
        std::fs::write(&path, "").with_context(|| format!("truncating {}", path.display()))?;
        (
            "betwixt-access-log.toml".to_owned(),
            format!("access_log = {:?}\n", path.display().to_string()),
        )
    } else {
        (format!("betwixt-{mode}.toml"), String::new())
    };
    let text = format!(
        r#"# betwixt under benchmark: one listener, one backend, no checks, warnings only.
[logging]
level = "warn"
output = "stderr"
{access_log}
[defaults]
max_connections = 0
client_idle_timeout = "0"
backend_idle_timeout = "0"
backend_connection_timeout = "2s"

[betwixt]
forwarding = "{mode}"

[servers.bench]
bind = "127.0.0.1:{port}"
protocol = "tcp"
balance = "roundrobin"

  [servers.bench.discovery]
  kind = "static"
  static_list = ["{backend}"]

  [servers.bench.healthcheck]
  kind = "none"
"#,
        backend = launch.backend
    );
    let config = write_config(launch.dir, &name, &text)?;
    let mut command = Command::new(&tools.betwixt);
    command
        .arg("-c")
        .arg(config)
        .env("TOKIO_WORKER_THREADS", launch.workers.to_string());
    Ok(command)
}

/// HAProxy's `maxconn`: two descriptors per connection and its pipes must fit the limit.
pub fn haproxy_maxconn(nofile_limit: u64) -> u64 {
    nofile_limit.saturating_sub(2 * HAPROXY_MAXPIPES + OWN_FDS) / 2
}

fn haproxy(launch: &Launch<'_>, port: u16) -> anyhow::Result<Command> {
    let text = format!(
        "# HAProxy under benchmark: tcp mode, splice when it pays off, no health checks.
global
    nbthread {workers}
    maxconn {maxconn}
    maxpipes {HAPROXY_MAXPIPES}

defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend bench
    bind 127.0.0.1:{port}
    default_backend servers

backend servers
    server backend1 {backend}
",
        workers = launch.workers,
        maxconn = haproxy_maxconn(launch.nofile_limit),
        backend = launch.backend,
    );
    let config = write_config(launch.dir, "haproxy.cfg", &text)?;
    let mut command = Command::new("haproxy");
    command.arg("-db").arg("-f").arg(config);
    Ok(command)
}

/// nginx's `worker_connections`: a proxied session counts twice (client and upstream).
pub fn nginx_worker_connections(nofile_limit: u64) -> u64 {
    nofile_limit.saturating_sub(OWN_FDS)
}

fn nginx(tools: &Tools, launch: &Launch<'_>, port: u16) -> anyhow::Result<Command> {
    let load_module = match &tools.nginx_stream {
        Some(NginxStream::Module(path)) => format!("load_module {};", path.display()),
        _ => String::new(),
    };
    let dir = launch.dir.canonicalize()?;
    let text = format!(
        "# nginx under benchmark: stream proxy_pass to one backend, errors only.
{load_module}
worker_processes {workers};
worker_rlimit_nofile {limit};
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log error;

events {{
    worker_connections {connections};
}}

stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass {backend};
        proxy_connect_timeout 5s;
        proxy_timeout 1h;
    }}
}}
",
        dir = dir.display(),
        workers = launch.workers,
        limit = launch.nofile_limit,
        connections = nginx_worker_connections(launch.nofile_limit),
        backend = launch.backend,
    );
    let config = write_config(&dir, "nginx.conf", &text)?;
    let mut command = Command::new("nginx");
    command
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(config)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-g")
        .arg("daemon off;");
    Ok(command)
}
