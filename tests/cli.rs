//! The binary as users run it: gobetween's command line, `check`, the pidfile, exit codes.

use std::path::Path;
use std::process::{Command, Output};

use crate::util::*;

fn betwixt(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_remove("GOBETWEEN")
        .env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const K3S: &str = r#"
[servers.k3s]
bind = "127.0.0.1:0"
balance = "roundrobin"

[servers.k3s.discovery]
kind = "static"
static_list = ["10.0.0.11:6443", "10.0.0.12:6443 weight=2", "master-3.example:6443"]

[servers.k3s.healthcheck]
kind = "ping"
interval = "2s"
timeout = "1s"
ping_timeout_duration = "1s"
"#;

#[test]
fn check_prints_the_servers_and_warns_about_unknown_keys() {
    let scratch = Scratch::new("check");
    let path = scratch.file("gobetween.toml", K3S);
    let output = betwixt(&["check", "-c", path.to_str().unwrap()], &[]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("server k3s"), "{stdout}");
    assert!(stdout.contains("10.0.0.12:6443") && stdout.contains("master-3.example:6443"));
    assert!(stdout.contains("configuration is valid"));
    assert!(
        stderr.contains("servers.k3s.healthcheck.ping_timeout_duration"),
        "unknown key not named: {stderr}"
    );

    let strict = betwixt(&["check", "--strict", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(strict.status.code(), Some(1));
    assert!(text(&strict.stderr).contains("servers.k3s.healthcheck.ping_timeout_duration"));
}

#[test]
fn check_names_the_file_the_server_and_the_key_of_each_error() {
    let scratch = Scratch::new("check-bad");
    let bad = K3S
        .replace("\"roundrobin\"", "\"roundrobbin\"")
        .replace("\"10.0.0.12:6443 weight=2\"", "\"10.0.0.12:6443 weigth=2\"");
    let path = scratch.file("gobetween.toml", &bad);
    let output = betwixt(&["check", "-c", path.to_str().unwrap()], &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("gobetween.toml"), "{stderr}");
    assert!(stderr.contains("servers.k3s.balance"), "{stderr}");
    assert!(
        stderr.contains("servers.k3s.discovery.static_list[1]"),
        "{stderr}"
    );
}

#[test]
fn the_shipped_k3s_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/k3s.toml");
    let output = betwixt(&["check", "--strict", "-c", path.to_str().unwrap()], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("healthcheck https"));
}

#[test]
fn a_bad_config_stops_start_up_with_status_1() {
    let scratch = Scratch::new("bad-start");
    let path = scratch.file(
        "g.toml",
        &K3S.replace("interval = \"2s\"", "interval = \"2\""),
    );
    let output = betwixt(&["-c", path.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("servers.k3s.healthcheck.interval"));
}

#[test]
fn version_help_and_the_gobetween_variable() {
    let version = betwixt(&["-v"], &[]);
    assert!(version.status.success());
    assert!(text(&version.stdout).starts_with("betwixt "));

    let help = betwixt(&[], &[]);
    assert!(help.status.success());
    assert!(text(&help.stdout).contains("from-file"));

    let scratch = Scratch::new("env-args");
    let path = scratch.file("g.toml", K3S);
    let args = format!("[\"check\", \"-c\", \"{}\"]", path.display());
    let from_env = betwixt(&[], &[("GOBETWEEN", &args)]);
    assert!(from_env.status.success(), "{}", text(&from_env.stderr));
    assert!(text(&from_env.stdout).contains("server k3s"));

    let both = betwixt(&["-v"], &[("GOBETWEEN", &args)]);
    assert_eq!(both.status.code(), Some(1));
}

#[test]
fn env_substitution_and_json_format() {
    let scratch = Scratch::new("env-json");
    let path = scratch.file(
        "g.toml",
        &K3S.replace("\"10.0.0.11:6443\"", "\"${MASTER_ONE}:6443\""),
    );
    let output = betwixt(
        &["check", "-e", "-c", path.to_str().unwrap()],
        &[("MASTER_ONE", "10.9.8.7")],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("10.9.8.7:6443"));

    let json = r#"{"servers": {"api": {"bind": "127.0.0.1:0",
        "discovery": {"kind": "static", "static_list": ["10.0.0.1:6443"]}}}}"#;
    let path = scratch.file("g.json", json);
    let output = betwixt(&["check", "-f", "json", "-c", path.to_str().unwrap()], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("server api"));
}

#[tokio::test]
async fn the_daemon_serves_writes_its_pidfile_and_drains_on_sigterm() {
    let backend = name_backend("master-1").await;
    let scratch = Scratch::new("daemon");
    let port = free_port();
    let config = format!(
        "[logging]\nlevel = \"info\"\noutput = \"stderr\"\n\
         [servers.k3s]\nbind = \"127.0.0.1:{port}\"\n\
         [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [\"{}\"]\n",
        backend.addr
    );
    let pidfile = scratch.0.join("betwixt.pid");
    let mut daemon = Daemon::spawn("pidfile", &config, &["-p", pidfile.to_str().unwrap()], &[]);
    eventually("the pidfile", || pidfile.exists()).await;
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, daemon.pid());

    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(fetch_name(addr).await.unwrap(), "master-1");

    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_for_exit().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(!Path::new(&pidfile).exists(), "pidfile left behind");
}

/// Starts the daemon with `args`, expecting it to exit on its own within the patience;
/// returns its exit code and standard error.
async fn start_expecting_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BINARY)
        .args(args)
        .env_remove("GOBETWEEN")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for_exit(&mut child).await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

fn serving_config(port: u16, logging: &str) -> String {
    format!(
        "[logging]\nlevel = \"info\"\n{logging}\n\
         [servers.k3s]\nbind = \"127.0.0.1:{port}\"\n\
         [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:1\"]\n"
    )
}

#[tokio::test]
async fn a_symlinked_pidfile_is_refused_and_its_target_untouched() {
    let scratch = Scratch::new("pid-link");
    let config = scratch.file(
        "g.toml",
        &serving_config(free_port(), "output = \"stderr\""),
    );
    let target = scratch.file("precious", "precious\n");
    let pidfile = scratch.0.join("betwixt.pid");
    std::os::unix::fs::symlink(&target, &pidfile).unwrap();
    let (code, stderr) = start_expecting_exit(&[
        "-c",
        config.to_str().unwrap(),
        "-p",
        pidfile.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(pidfile.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
}

#[tokio::test]
async fn a_symlinked_log_file_is_refused_and_its_target_untouched() {
    let scratch = Scratch::new("log-link");
    let target = scratch.file("precious", "precious\n");
    let log = scratch.0.join("betwixt.log");
    std::os::unix::fs::symlink(&target, &log).unwrap();
    let logging = format!("output = \"{}\"", log.display());
    let config = scratch.file("g.toml", &serving_config(free_port(), &logging));
    let (code, stderr) = start_expecting_exit(&["-c", config.to_str().unwrap()]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("logging.output"), "{stderr}");
    assert!(stderr.contains(log.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
}

/// `-e` under systemd's `LoadCredential=` (systemd/api-credentials.conf): the basic-auth
/// password is read from `${credential:api-password}`, a file in `$CREDENTIALS_DIRECTORY`.
#[tokio::test]
async fn the_api_password_can_come_from_a_systemd_credential() {
    use crate::api::{basic, request};
    use hyper::header::{AUTHORIZATION, HeaderMap};
    use hyper::{Method, StatusCode};

    let scratch = Scratch::new("credential");
    let credentials = scratch.0.join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("api-password"), "from-credential\n").unwrap();
    let api_port = free_port();
    let api = format!(
        "output = \"stderr\"\n[api]\nenabled = true\nbind = \"127.0.0.1:{api_port}\"\n\
         [api.basic_auth]\nlogin = \"admin\"\npassword = \"${{credential:api-password}}\"\n"
    );
    let config = serving_config(free_port(), &api);
    let _daemon = Daemon::spawn_in(
        scratch,
        &config,
        &["-e"],
        &[("CREDENTIALS_DIRECTORY", credentials.to_str().unwrap())],
    );
    let addr = format!("127.0.0.1:{api_port}").parse().unwrap();
    eventually("the API listens", || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    let get = |password: &'static str| async move {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, basic("admin", password));
        request(addr, Method::GET, "/servers", headers, "")
            .await
            .status
    };
    assert_eq!(get("from-credential").await, StatusCode::OK);
    assert_eq!(get("").await, StatusCode::UNAUTHORIZED);
    assert_eq!(get("from-credential\n").await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_second_daemon_on_the_same_address_exits_naming_it() {
    let port = free_port();
    let first = Daemon::spawn("twice-1", &serving_config(port, ""), &[], &[]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually("the first daemon listens", || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    let scratch = Scratch::new("twice-2");
    let config = scratch.file("g.toml", &serving_config(port, "output = \"stderr\""));
    let (code, stderr) = start_expecting_exit(&["-c", config.to_str().unwrap()]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("\"k3s\""), "{stderr}");
    assert!(
        stderr.contains("another process already listens"),
        "{stderr}"
    );
    drop(first);
}

#[tokio::test]
async fn a_pidfile_naming_a_running_daemon_refuses_a_second_one() {
    let scratch = Scratch::new("pid-live");
    let pidfile = scratch.0.join("betwixt.pid");
    let pidfile_arg = pidfile.to_str().unwrap();
    let first = Daemon::spawn(
        "pid-live-1",
        &serving_config(free_port(), ""),
        &["-p", pidfile_arg],
        &[],
    );
    eventually("the pidfile", || pidfile.exists()).await;
    let config = scratch.file(
        "g.toml",
        &serving_config(free_port(), "output = \"stderr\""),
    );
    let (code, stderr) =
        start_expecting_exit(&["-c", config.to_str().unwrap(), "-p", pidfile_arg]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("process {}", first.pid())),
        "{stderr}"
    );
    assert!(stderr.contains(pidfile_arg), "{stderr}");
    let written: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        written,
        first.pid(),
        "the running daemon's pidfile was overwritten"
    );

    // A pidfile left by a process that is gone does not block a start.
    drop(first);
    std::fs::write(&pidfile, "999999999\n").unwrap();
    let mut daemon = Daemon::spawn_in(
        Scratch::new("pid-stale"),
        &serving_config(free_port(), ""),
        &["-p", pidfile_arg],
        &[],
    );
    eventually("the stale pidfile replaced", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|text| text.trim() == daemon.pid().to_string())
    })
    .await;
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_for_exit().await.success());
}

#[test]
fn migrate_lists_per_server_differences_from_gobetween() {
    let scratch = Scratch::new("migrate");
    let config = r#"
[servers.k3s]
bind = "127.0.0.1:6443"

[servers.k3s.discovery]
kind = "static"
static_list = ["10.0.0.11:6443"]

[servers.k3s.healthcheck]
kind = "exec"
interval = "2s"
exec_command = "/usr/local/bin/check apiserver.sh"
"#;
    let path = scratch.file("gobetween.toml", config);
    let output = betwixt(&["migrate", path.to_str().unwrap()], &[]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let server = stdout.split("server k3s").nth(1).expect("a k3s section");
    assert!(
        server.contains("backend_connection_timeout unset: betwixt gives up a connect after 5s"),
        "{stdout}"
    );
    assert!(
        server.contains(
            "exec_command \"/usr/local/bin/check apiserver.sh\" contains spaces: \
             it is run as one program path"
        ),
        "{stdout}"
    );
    assert!(server.contains("passive_fails = 3"), "{stdout}");

    // The same server with a connect timeout of its own has no connect-timeout line.
    let with_timeout = config.replace(
        "bind = \"127.0.0.1:6443\"",
        "bind = \"127.0.0.1:6443\"\nbackend_connection_timeout = \"2s\"",
    );
    let path = scratch.file("timeout.toml", &with_timeout);
    let output = betwixt(&["migrate", path.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(0));
    assert!(!text(&output.stdout).contains("backend_connection_timeout"));
}

#[test]
fn migrate_exits_1_on_an_invalid_config_and_names_the_error() {
    let scratch = Scratch::new("migrate-bad");
    let path = scratch.file(
        "gobetween.json",
        r#"{"servers": {"k3s": {"bind": "127.0.0.1:6443", "balance": "roundrobbin",
            "discovery": {"kind": "static", "static_list": ["10.0.0.11:6443"]}}}}"#,
    );
    let output = betwixt(&["migrate", "-f", "json", path.to_str().unwrap()], &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("servers.k3s.balance"), "{stderr}");

    let valid = text(&std::fs::read(&path).unwrap()).replace("roundrobbin", "roundrobin");
    std::fs::write(&path, valid).unwrap();
    let output = betwixt(&["migrate", "-f", "json", path.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("server k3s"));
}

/// `[logging] format = "gobetween-text"`: the daemon's own lines read as gobetween's, for log
/// parsers written against it.
#[tokio::test]
async fn the_daemon_logs_in_gobetweens_text_shape_when_asked() {
    let scratch = Scratch::new("gobetween-log");
    let log = scratch.0.join("betwixt.log");
    let logging = format!(
        "output = \"{}\"\nformat = \"gobetween-text\"",
        log.display()
    );
    let config = serving_config(free_port(), &logging);
    let _daemon = Daemon::spawn_in(scratch, &config, &[], &[]);
    let line =
        regex::Regex::new(r"(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[INFO \] \([a-z_]+\): \S.*k3s")
            .unwrap();
    eventually("a gobetween-shaped line about server k3s", || {
        std::fs::read_to_string(&log).is_ok_and(|text| line.is_match(&text))
    })
    .await;
}
