//! WebSockets per client address: who the client is (behind trusted proxies), and a bounded count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// An address block, e.g. `10.0.0.0/8` or `::1/128` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let net: IpAddr = addr.trim().parse().map_err(|_| format!("`{s}` is not an address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("`{s}`: bad prefix length"))?
            }
        };
        Ok(Self { net, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let (bits, a, b) = match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (32, u128::from(u32::from(n)), u128::from(u32::from(i))),
            (IpAddr::V6(n), IpAddr::V6(i)) => (128, u128::from(n), u128::from(i)),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (a >> shift) == (b >> shift)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest address in
/// `X-Forwarded-For` that is not one (the rightmost untrusted hop: a client can prepend anything).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let peer = canonical(peer);
    if !is_trusted(peer) {
        return peer;
    }
    let hops = forwarded_for.into_iter().flat_map(|h| h.rsplit(',')).map(str::trim);
    let mut client = peer;
    for hop in hops {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(client) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// Open sockets per client address, at most `limit` each (0: no limit).
#[derive(Debug)]
pub struct PerIp {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One socket counted against its address; uncounted when dropped.
#[derive(Debug)]
pub struct IpSlot {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// A counter allowing `limit` sockets per address (0: unlimited).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, counts: Mutex::new(HashMap::new()) })
    }

    /// Counts one more socket for `ip`, or `None` if it already has `limit`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut counts = self.counts.lock();
        let n = counts.entry(ip).or_insert(0);
        if self.limit != 0 && *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(IpSlot { owner: Arc::clone(self), ip })
    }

    /// The configured limit (0: none).
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_blocks_parse_and_contain() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.200.1.2")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped");
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("2001:db8::1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().unwrap_err().contains("not an address"));
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let trusted: Vec<Cidr> = vec!["127.0.0.0/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        // Untrusted peers cannot claim another address.
        assert_eq!(client_ip(ip("198.51.100.7"), Some("1.2.3.4"), &trusted), ip("198.51.100.7"));
        // nginx on loopback: the rightmost untrusted hop is the client, whatever it prepended.
        assert_eq!(client_ip(ip("127.0.0.1"), Some("6.6.6.6, 203.0.113.5"), &trusted), ip("203.0.113.5"));
        assert_eq!(client_ip(ip("127.0.0.1"), Some("203.0.113.5, 10.1.2.3"), &trusted), ip("203.0.113.5"));
        assert_eq!(client_ip(ip("127.0.0.1"), None, &trusted), ip("127.0.0.1"));
        assert_eq!(client_ip(ip("127.0.0.1"), Some("garbage"), &trusted), ip("127.0.0.1"));
    }

    #[test]
    fn slots_are_bounded_per_address_and_freed_on_drop() {
        let per = PerIp::new(2);
        let a = ip("203.0.113.1");
        let (s1, s2) = (per.acquire(a).unwrap(), per.acquire(a).unwrap());
        assert!(per.acquire(a).is_none());
        assert!(per.acquire(ip("203.0.113.2")).is_some(), "other addresses are not affected");
        drop(s1);
        let s3 = per.acquire(a).unwrap();
        drop((s2, s3));
        assert!(per.counts.lock().is_empty(), "no entry left for idle addresses");
        let unlimited = PerIp::new(0);
        let held: Vec<_> = (0..1000).map(|_| unlimited.acquire(a).unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }
}
