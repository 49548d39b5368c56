//! The PROXY protocol (`[servers.NAME.proxy_protocol] version = "1"` or `"2"`): tells the
//! backend the client's real address in a header before the client's bytes. Version 1 is a
//! text line (TCP only, gobetween's); version 2 is binary, has a UDP form (the header before
//! each datagram) and carries TLVs such as the server name the client asked for. [`accept`]
//! reads either version from a balancer in front (`[accept_proxy]`).

pub mod accept;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The 12 bytes every v2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 2, command PROXY (a relayed connection, as opposed to LOCAL).
const V2_PROXY_COMMAND: u8 = 0x21;

/// `PP2_TYPE_AUTHORITY`: the host name the client asked for (TLS SNI).
const PP2_TYPE_AUTHORITY: u8 = 0x02;

/// What a v2 header says the client's connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Stream,
    Datagram,
}

/// The v1 header for a connection from `client` accepted on `local`.
///
/// Both addresses are shown in the same family: a client reaching a dual-stack listener over
/// IPv4 appears as `TCP4`, as it would on an IPv4 listener.
pub fn v1_header(client: SocketAddr, local: SocketAddr) -> String {
    let (client_ip, local_ip) = (client.ip().to_canonical(), local.ip().to_canonical());
    match (client_ip, local_ip) {
        (IpAddr::V4(c), IpAddr::V4(l)) => {
            format!("PROXY TCP4 {c} {l} {} {}\r\n", client.port(), local.port())
        }
        _ => {
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

/// The v2 header for `client` reaching `local` over `transport`, with the server name the
/// client asked for as an AUTHORITY TLV when there is one (longer than a TLV can hold: left
/// out). An IPv4 client on a dual-stack listener is sent as IPv4, as in [`v1_header`].
pub fn v2_header(
    transport: Transport,
    client: SocketAddr,
    local: SocketAddr,
    authority: Option<&str>,
) -> Vec<u8> {
    let mut header = Vec::with_capacity(52);
    write_v2_header(&mut header, transport, client, local, authority);
    header
}

/// [`v2_header`] into `header` (cleared first), which keeps its allocation for the next.
pub fn write_v2_header(
    header: &mut Vec<u8>,
    transport: Transport,
    client: SocketAddr,
    local: SocketAddr,
    authority: Option<&str>,
) {
    header.clear();
    let (client_ip, local_ip) = (client.ip().to_canonical(), local.ip().to_canonical());
    let (family, addresses_len) = match (client_ip, local_ip) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (0x10, 12),
        _ => (0x20, 36),
    };
    let protocol = match transport {
        Transport::Stream => 0x01,
        Transport::Datagram => 0x02,
    };
    let authority = authority
        .map(str::as_bytes)
        .filter(|name| !name.is_empty() && u16::try_from(name.len()).is_ok());
    let tlv_len = authority.map_or(0, |name| 3 + name.len());
    let body_len = addresses_len + tlv_len;
    header.extend_from_slice(&V2_SIGNATURE);
    header.push(V2_PROXY_COMMAND);
    header.push(family | protocol);
    // At most 36 address bytes plus a TLV whose length fits a u16: within u16 only if the
    // name is short enough, which a DNS name (253 bytes) always is.
    header.extend_from_slice(&u16::try_from(body_len).unwrap_or(u16::MAX).to_be_bytes());
    match (client_ip, local_ip) {
        (IpAddr::V4(c), IpAddr::V4(l)) => {
            header.extend_from_slice(&c.octets());
            header.extend_from_slice(&l.octets());
        }
        _ => {
            header.extend_from_slice(&as_v6(client_ip).octets());
            header.extend_from_slice(&as_v6(local_ip).octets());
        }
    }
    header.extend_from_slice(&client.port().to_be_bytes());
    header.extend_from_slice(&local.port().to_be_bytes());
    if let Some(name) = authority {
        header.push(PP2_TYPE_AUTHORITY);
        header.extend_from_slice(&u16::try_from(name.len()).unwrap_or(0).to_be_bytes());
        header.extend_from_slice(name);
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_headers_follow_the_specification_byte_for_byte() {
        let header = v2_header(
            Transport::Stream,
            "192.0.2.1:56324".parse().unwrap(),
            "[::ffff:192.0.2.9]:6443".parse().unwrap(),
            None,
        );
        let mut expected = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 1, 192, 0, 2, 9]);
        expected.extend_from_slice(&[0xdc, 0x04, 0x19, 0x2b]);
        assert_eq!(header, expected);

        let header = v2_header(
            Transport::Datagram,
            "[2001:db8::1]:53000".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
            Some("k3s.example"),
        );
        assert_eq!(&header[12..16], &[0x21, 0x22, 0, 36 + 3 + 11]);
        assert_eq!(
            &header[16..32],
            &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(&header[32..48], &Ipv6Addr::LOCALHOST.octets());
        assert_eq!(&header[48..52], &[0xcf, 0x08, 0, 53]);
        assert_eq!(&header[52..55], &[0x02, 0, 11]);
        assert_eq!(&header[55..], b"k3s.example");
    }

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
