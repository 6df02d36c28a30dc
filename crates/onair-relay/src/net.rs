//! The relay's sockets: one UDP socket per local address, all on the same port, so every peer of
//! the process shares them (str0m is told each datagram's destination, which the socket it came in
//! on gives without `IP_PKTINFO`), and the ICE candidates announced for them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use str0m::Candidate;
use tokio::net::UdpSocket;

/// The bound UDP sockets of a relay (one port, one socket per address).
#[derive(Debug, Clone)]
pub struct RelaySockets {
    /// Each socket with its local address (read once: the send path picks a socket per datagram).
    pub(crate) sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    port: u16,
}

impl RelaySockets {
    /// Binds `port` (0: a free one, the same on every address) on each of `ips`.
    pub async fn bind(ips: &[IpAddr], port: u16) -> std::io::Result<Self> {
        let Some((first, rest)) = ips.split_first() else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind the relay on"));
        };
        let mut attempts = if port == 0 { 20 } else { 1 };
        loop {
            attempts -= 1;
            let head = UdpSocket::bind(SocketAddr::new(*first, port)).await?;
            let head_addr = head.local_addr()?;
            let chosen = head_addr.port();
            let mut sockets = vec![(head_addr, Arc::new(head))];
            let mut failed = None;
            for ip in rest {
                let bound = UdpSocket::bind(SocketAddr::new(*ip, chosen)).await;
                match bound.and_then(|s| Ok((s.local_addr()?, Arc::new(s)))) {
                    Ok(pair) => sockets.push(pair),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => return Ok(Self { sockets, port: chosen }),
                Some(e) if attempts == 0 => return Err(e),
                Some(_) => {}
            }
        }
    }

    /// The UDP port of every socket.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The local addresses bound.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(a, _)| *a).collect()
    }
}

/// The candidates every peer announces: a host candidate per socket, and with a public address a
/// server-reflexive one at it for each non-loopback socket (the NAT forwards to that socket).
pub(crate) fn candidates(addrs: &[SocketAddr], public: Option<IpAddr>) -> Vec<Candidate> {
    let mut out = Vec::new();
    for a in addrs {
        match Candidate::host(*a, "udp") {
            Ok(c) => out.push(c),
            Err(e) => tracing::warn!(addr = %a, error = %e, "no host candidate for this address"),
        }
    }
    if let Some(ip) = public {
        let is_local = addrs.iter().any(|a| a.ip() == ip);
        for base in addrs.iter().filter(|a| !a.ip().is_loopback() && a.is_ipv4() == ip.is_ipv4()) {
            if is_local {
                break;
            }
            if let Ok(c) = Candidate::server_reflexive(SocketAddr::new(ip, base.port()), *base, "udp") {
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_address_adds_reflexive_twins_of_non_loopback_sockets() {
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:4000".parse().unwrap(), "10.0.0.5:4000".parse().unwrap()];
        let c = candidates(&addrs, Some("198.51.100.7".parse().unwrap()));
        let sdp: Vec<String> = c.iter().map(Candidate::to_sdp_string).collect();
        assert_eq!(c.len(), 3, "{sdp:?}");
        assert!(sdp[2].contains("198.51.100.7 4000 typ srflx"), "{sdp:?}");
    }

    #[test]
    fn a_public_address_that_is_local_adds_nothing() {
        let addrs: Vec<SocketAddr> = vec!["198.51.100.7:4000".parse().unwrap()];
        assert_eq!(candidates(&addrs, Some("198.51.100.7".parse().unwrap())).len(), 1);
    }
}
