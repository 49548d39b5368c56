//! Service-name ports (`":https"`, `"10.0.0.1:http"`): gobetween hands addresses to Go's `net`
//! package, which accepts a TCP service name wherever a port number goes.
//!
//! Resolved as Go's pure resolver does: a small built-in table (so `http` and `https` work on a
//! host without `/etc/services`, such as a scratch container), overridden by `/etc/services`.
//! Names match in any case. The file is read each time a name is looked up, which only
//! validation does, so a changed file is seen by the next reload.

use std::path::Path;

/// Where the services database lives on every Linux distribution.
const SERVICES_FILE: &str = "/etc/services";

/// Go's built-in TCP services (net/lookup.go), for hosts without the database.
const BUILT_IN: [(&str, u16); 14] = [
    ("ftp", 21),
    ("ftps", 990),
    ("gopher", 70),
    ("http", 80),
    ("https", 443),
    ("imap2", 143),
    ("imap3", 220),
    ("imaps", 993),
    ("pop3", 110),
    ("pop3s", 995),
    ("smtp", 25),
    ("submissions", 465),
    ("ssh", 22),
    ("telnet", 23),
];

/// The TCP port of service `name`, or `None` when neither the database nor the built-in table
/// knows it.
pub fn tcp_port(name: &str) -> Option<u16> {
    let database = std::fs::read_to_string(Path::new(SERVICES_FILE)).unwrap_or_default();
    tcp_port_in(&database, name)
}

/// [`tcp_port`] over the text of a services database.
fn tcp_port_in(database: &str, name: &str) -> Option<u16> {
    let name = name.to_ascii_lowercase();
    lookup_database(database, &name).or_else(|| {
        BUILT_IN
            .iter()
            .find(|(known, _)| *known == name)
            .map(|&(_, port)| port)
    })
}

/// One line is `name port/protocol [aliases...] [# comment]`; as in Go, a later line naming
/// the service (or an alias) for tcp replaces an earlier one.
fn lookup_database(database: &str, name: &str) -> Option<u16> {
    database.lines().rev().find_map(|line| {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_ascii_whitespace();
        let service = fields.next()?;
        let (port, protocol) = fields.next()?.split_once('/')?;
        if protocol != "tcp" {
            return None;
        }
        let named = service.eq_ignore_ascii_case(name)
            || fields.any(|alias| alias.eq_ignore_ascii_case(name));
        named
            .then(|| port.parse().ok().filter(|&port: &u16| port > 0))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATABASE: &str = "# comment\n\
        http\t\t80/tcp\t\twww # WorldWideWeb HTTP\n\
        domain\t\t53/udp\n\
        kube-api\t6443/tcp\tk8s\n\
        https\t\t8443/tcp\n\
        broken\t\tx/tcp\n";

    #[test]
    fn names_and_aliases_resolve_for_tcp_only() {
        assert_eq!(tcp_port_in(DATABASE, "http"), Some(80));
        assert_eq!(tcp_port_in(DATABASE, "WWW"), Some(80));
        assert_eq!(tcp_port_in(DATABASE, "k8s"), Some(6443));
        assert_eq!(tcp_port_in(DATABASE, "domain"), None);
        assert_eq!(tcp_port_in(DATABASE, "broken"), None);
        assert_eq!(tcp_port_in(DATABASE, "nope"), None);
    }

    #[test]
    fn the_database_overrides_the_built_in_table() {
        assert_eq!(tcp_port_in(DATABASE, "https"), Some(8443));
        assert_eq!(tcp_port_in("", "HTTPS"), Some(443));
        assert_eq!(tcp_port_in("", "ssh"), Some(22));
    }
}
