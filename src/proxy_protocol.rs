//! PROXY protocol v1 (`[servers.NAME.proxy_protocol] version = "1"`): tells the backend the
//! client's real address in a one-line header before the client's bytes.

use std::net::SocketAddr;

/// The v1 header for a connection from `client` accepted on `local`.
///
/// Both addresses are shown in the same family: a client reaching a dual-stack listener over
/// IPv4 appears as `TCP4`, as it would on an IPv4 listener.
pub fn v1_header(client: SocketAddr, local: SocketAddr) -> String {
    let (client_ip, local_ip) = (client.ip().to_canonical(), local.ip().to_canonical());
    match (client_ip, local_ip) {
        (std::net::IpAddr::V4(c), std::net::IpAddr::V4(l)) => {
            format!("PROXY TCP4 {c} {l} {} {}\r\n", client.port(), local.port())
        }
        _ => {
            let as_v6 = |ip: std::net::IpAddr| match ip {
                std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                std::net::IpAddr::V6(v6) => v6,
            };
            format!(
                "PROXY TCP6 {} {} {} {}\r\n",
                as_v6(client_ip),
                as_v6(local_ip),
                client.port(),
                local.port()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_v6_headers() {
        let header = v1_header(
            "192.0.2.1:56324".parse().unwrap(),
            "[::ffff:192.0.2.9]:6443".parse().unwrap(),
        );
        assert_eq!(header, "PROXY TCP4 192.0.2.1 192.0.2.9 56324 6443\r\n");
        let header = v1_header(
            "[2001:db8::1]:40000".parse().unwrap(),
            "[::1]:6443".parse().unwrap(),
        );
        assert_eq!(header, "PROXY TCP6 2001:db8::1 ::1 40000 6443\r\n");
    }
}
