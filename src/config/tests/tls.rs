//! `[tls]`, `[backends_tls]` and `[sni]`: what rustls cannot do is dropped with a warning
//! naming it, a table with nothing usable left is refused, and gobetween's defaults hold.

use std::time::Duration;

use super::{load_errors, load_ok};
use crate::config::{HostnameMatching, TlsVersion, UnexpectedHostname};

const ACME_HOSTS: &str = "[servers.web.tls]\nacme_hosts = [\"a.example\"]\n";

const SERVER: &str = "[servers.web]\nbind = \":443\"\n\
    [servers.web.discovery]\nkind = \"static\"\nstatic_list = [\"10.0.0.1:443 sni=a.example\"]\n";

fn with_tls(tls: &str) -> String {
    format!(
        "{SERVER}[servers.web.tls]\ncert_path = \"/etc/ssl/c.pem\"\nkey_path = \"/etc/ssl/k.pem\"\n{tls}\n"
    )
}

fn warnings(text: &str) -> Vec<String> {
    load_ok(text)
        .warnings
        .iter()
        .map(|warning| format!("{}: {}", warning.key, warning.message))
        .collect()
}

#[test]
fn tls_1_0_and_cbc_suites_are_dropped_by_name() {
    let text = with_tls(
        "min_version = \"tls1\"\nciphers = [\"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA\", \
         \"TLS_RSA_WITH_AES_128_GCM_SHA256\", \"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\"]",
    );
    let warned = warnings(&text);
    let expected = [
        "servers.web.tls.min_version: \"tls1\" is below TLS 1.2, which rustls does not implement: TLS 1.0 and 1.1 are dropped, TLS 1.2 is the minimum",
        "servers.web.tls.ciphers[0]: \"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA\" dropped: a CBC, RC4 or 3DES suite, which rustls does not implement",
        "servers.web.tls.ciphers[1]: \"TLS_RSA_WITH_AES_128_GCM_SHA256\" dropped: RSA key exchange (no forward secrecy), which rustls does not implement",
    ];
    for expected in expected {
        assert!(
            warned.iter().any(|w| w == expected),
            "{expected:?} not in {warned:#?}"
        );
    }
    let config = load_ok(&text).config;
    let tls = config.servers["web"].tls.as_ref().unwrap();
    assert_eq!(tls.protocol.min_version, TlsVersion::Tls12);
    assert_eq!(
        tls.protocol.tls12_suites.as_deref(),
        Some(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_owned()][..])
    );
    assert!(
        !tls.protocol.session_tickets,
        "off unless asked, as in gobetween"
    );
}

#[test]
fn nothing_usable_left_is_an_error() {
    let errors = load_errors(&with_tls("max_version = \"tls1.1\""));
    assert_eq!(
        errors,
        [
            "gobetween.toml: servers.web.tls.max_version: \"tls1.1\" leaves no usable version: rustls implements TLS 1.2 and 1.3 only"
        ]
    );
    let errors = load_errors(&with_tls(
        "max_version = \"tls1.2\"\nciphers = [\"TLS_RSA_WITH_AES_128_CBC_SHA\"]",
    ));
    assert_eq!(
        errors,
        [
            "gobetween.toml: servers.web.tls.ciphers: no cipher suite is left for TLS 1.2, the only version allowed"
        ]
    );
}

#[test]
fn bad_tables_are_refused_by_key() {
    let cases = [
        (
            SERVER.replace("bind = \":443\"\n", "bind = \":443\"\nprotocol = \"tls\"\n"),
            "servers.web.protocol: protocol \"tls\" needs a [servers.web.tls] table with cert_path and key_path",
        ),
        (
            with_tls("ciphers = [\"TLS_FANCY_NEW\"]"),
            "servers.web.tls.ciphers[0]: unknown cipher suite \"TLS_FANCY_NEW\"",
        ),
        (
            format!("{SERVER}[servers.web.tls]\ncert_path = \"/c.pem\"\n"),
            "servers.web.tls.key_path: missing; TLS termination needs cert_path and key_path",
        ),
        (
            format!("{SERVER}[servers.web.sni]\nhostname_matching_strategy = \"regexp\"\n")
                .replace("sni=a.example", "sni=(unclosed"),
            "servers.web.discovery.static_list[0]: sni=\"(unclosed\" is not a valid regular expression",
        ),
        (
            format!("{SERVER}[servers.web.sni]\nunexpected_hostname_strategy = \"drop\"\n"),
            "servers.web.sni.unexpected_hostname_strategy: unknown value \"drop\"; expected default, reject or any",
        ),
        (
            format!("{SERVER}[servers.web.backends_tls]\n")
                .replace(" sni=a.example", "")
                .replace("bind = \":443\"\n", "bind = \":443\"\nprotocol = \"udp\"\n"),
            "servers.web.backends_tls: TLS and SNI are for TCP streams",
        ),
    ];
    for (text, expected) in cases {
        let errors = load_errors(&text);
        assert!(
            errors.iter().any(|error| error.contains(expected)),
            "{expected:?} not in {errors:#?}"
        );
    }
}

#[test]
fn sni_defaults_are_gobetweens() {
    let config = load_ok(&format!("{SERVER}[servers.web.sni]\n")).config;
    let sni = config.servers["web"].sni.as_ref().unwrap();
    assert_eq!(sni.read_timeout, Duration::from_secs(2));
    assert_eq!(sni.matching, HostnameMatching::Exact);
    assert_eq!(sni.unexpected, UnexpectedHostname::Default);
}

#[test]
fn acme_hosts_need_the_acme_table_and_its_cache_dir() {
    let errors = load_errors(&format!("{SERVER}{ACME_HOSTS}"));
    assert_eq!(
        errors,
        ["gobetween.toml: servers.web.tls.acme_hosts: needs an [acme] table with cache_dir"]
    );
    let errors = load_errors(&format!(
        "[acme]\nchallenge = \"dns\"\n{SERVER}{ACME_HOSTS}"
    ));
    assert_eq!(
        errors,
        [
            "gobetween.toml: acme.challenge: unknown challenge \"dns\"; expected http (HTTP-01, as gobetween)",
            "gobetween.toml: acme.cache_dir: missing; the account and certificates are kept there",
        ]
    );
    let text = format!("[acme]\ncache_dir = \"/var/cache/betwixt\"\n{SERVER}{ACME_HOSTS}");
    let config = load_ok(&text).config;
    let tls = config.servers["web"].tls.as_ref().unwrap();
    assert_eq!(
        tls.certificate, None,
        "the ACME hosts need no certificate file"
    );
    let acme = tls.acme.as_ref().unwrap();
    assert_eq!(acme.hosts, ["a.example"]);
    assert_eq!(acme.http_bind.addr.port(), 80);
    assert_eq!(
        acme.directory_url,
        "https://acme-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(acme.renew_after, Duration::from_secs(60 * 86_400));
}

#[test]
fn the_acme_responder_cannot_share_a_servers_port() {
    let plain = "[servers.http]\nbind = \"127.0.0.1:80\"\n\
        [servers.http.discovery]\nkind = \"static\"\nstatic_list = [\"10.0.0.1:8080\"]\n";
    let text = format!("[acme]\ncache_dir = \"/var/cache/betwixt\"\n{SERVER}{ACME_HOSTS}{plain}");
    assert_eq!(
        load_errors(&text),
        [
            "gobetween.toml: acme.http_bind: \":80\" conflicts with servers.http.bind (\"127.0.0.1:80\"): both listen on port 80"
        ]
    );
    let moved = format!(
        "[acme]\ncache_dir = \"/var/cache/betwixt\"\nhttp_bind = \":8080\"\n{SERVER}{ACME_HOSTS}{plain}"
    );
    load_ok(&moved);
}
