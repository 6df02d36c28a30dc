//! Which peers an allocation may relay to, and the relay port range: the values of
//! `--turn-allow-peer` and `--turn-relay-ports`, parsed with messages that name the mistake.

use std::net::IpAddr;
use std::str::FromStr;

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`, or a bare address: one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a flag value is not a CIDR or a port range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?}: {why}")]
pub struct ParseError {
    value: String,
    why: &'static str,
}

fn err(value: &str, why: &'static str) -> ParseError {
    ParseError { value: value.to_owned(), why }
}

impl Cidr {
    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err(s, "expected an IP network such as 10.0.0.0/8 or fd00::/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(err(s, "the prefix length must be 0..=32 (IPv4) or 0..=128 (IPv6)")),
            },
        };
        Ok(Self { addr: canonical(addr), prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Addresses a TURN server must not relay to by default: this host, private and shared
/// networks, link-local, multicast and unspecified addresses. A relay to them would let any
/// holder of credentials reach services inside the deployment (coturn's `denied-peer-ip`).
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10, shared address space
                || a >= 240
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (first & 0xffc0) == 0xfe80 // fe80::/10 link-local
        }
    }
}

/// Which peer addresses allocations may send to: anything public, plus the networks of
/// `--turn-allow-peer`.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    allowed: Vec<Cidr>,
}

impl PeerPolicy {
    /// Public addresses, and internal ones inside `allowed`.
    pub fn new(allowed: Vec<Cidr>) -> Self {
        Self { allowed }
    }

    /// Whether an allocation may relay to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.allowed.iter().any(|c| c.contains(ip))
    }
}

/// An inclusive UDP port range for relayed addresses (`49160-49200`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayPorts {
    /// First port.
    pub min: u16,
    /// Last port (inclusive).
    pub max: u16,
}

impl RelayPorts {
    /// How many ports the range holds.
    pub fn len(&self) -> usize {
        usize::from(self.max - self.min) + 1
    }

    /// Never true: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl FromStr for RelayPorts {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let s = s.trim();
        let (min, max) =
            s.split_once('-').ok_or_else(|| err(s, "expected a port range MIN-MAX such as 49160-49200"))?;
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(p @ 1..) => Ok(p),
            _ => Err(err(s, "ports must be numbers from 1 to 65535")),
        };
        let (min, max) = (port(min)?, port(max)?);
        if min > max {
            return Err(err(s, "the first port must not be above the last"));
        }
        Ok(Self { min, max })
    }
}

impl std::fmt::Display for RelayPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let policy = PeerPolicy::default();
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!policy.permits(ip(internal)), "{internal} should be refused");
        }
        for public in ["198.51.100.7", "203.0.113.9", "8.8.8.8", "2001:db8::1", "172.32.0.1", "100.128.0.1"] {
            assert!(policy.permits(ip(public)), "{public} should be allowed");
        }
        let policy = PeerPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]);
        assert!(policy.permits(ip("127.0.0.1")));
        assert!(policy.permits(ip("::ffff:127.0.0.2")));
        assert!(policy.permits(ip("fd12::1")));
        assert!(!policy.permits(ip("10.0.0.1")));
    }

    #[test]
    fn cidrs_and_port_ranges_parse_or_say_why_not() {
        assert!("10.0.0.0/8".parse::<Cidr>().unwrap().contains(ip("10.255.0.1")));
        assert!("192.0.2.1".parse::<Cidr>().unwrap().contains(ip("192.0.2.1")));
        assert!(!"192.0.2.1".parse::<Cidr>().unwrap().contains(ip("192.0.2.2")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("127.0.0.1")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", "::/129", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!("49160-49200".parse::<RelayPorts>().unwrap(), RelayPorts { min: 49160, max: 49200 });
        assert_eq!("5000-5000".parse::<RelayPorts>().unwrap().len(), 1);
        for bad in ["49200-49160", "0-10", "10", "a-b", "1-70000"] {
            assert!(bad.parse::<RelayPorts>().is_err(), "{bad}");
        }
    }
}
