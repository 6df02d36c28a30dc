//! The relay's sockets: one UDP socket per local address, all on the same port, so every peer of
//! the process shares them (str0m is told each datagram's destination, which the socket it came in
//! on gives without `IP_PKTINFO`), a TCP listener beside each (ICE-TCP, `tcp.rs`), and the ICE
//! candidates announced for them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use str0m::Candidate;
use str0m::net::TcpType;
use tokio::net::{TcpListener, UdpSocket};

/// The bound sockets of a relay: one port, a UDP socket and a TCP listener per address.
#[derive(Debug, Clone)]
pub struct RelaySockets {
    /// Each socket with its local address (read once: the send path picks a socket per datagram).
    pub(crate) sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    /// The ICE-TCP listeners, on the same addresses and port.
    pub(crate) listeners: Vec<(SocketAddr, Arc<TcpListener>)>,
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
            let mut listeners = Vec::new();
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
            // ICE-TCP on the same port of every address.
            for ip in ips {
                if failed.is_some() {
                    break;
                }
                let bound = TcpListener::bind(SocketAddr::new(*ip, chosen)).await;
                match bound.and_then(|l| Ok((l.local_addr()?, Arc::new(l)))) {
                    Ok(pair) => listeners.push(pair),
                    Err(e) => failed = Some(e),
                }
            }
            match failed {
                None => return Ok(Self { sockets, listeners, port: chosen }),
                Some(e) if attempts == 0 => return Err(e),
                Some(_) => {}
            }
        }
    }

    /// The UDP port of every socket.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The local addresses bound (UDP and TCP alike).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(a, _)| *a).collect()
    }
}

/// The candidates every peer announces: a UDP host candidate per socket and a TCP passive one per
/// listener, and with a public address server-reflexive twins at it for each non-loopback address
/// (the NAT forwards to that socket). Browsers try TCP only when UDP fails: its priority is lower.
pub(crate) fn candidates(addrs: &[SocketAddr], public: Option<IpAddr>) -> Vec<Candidate> {
    let mut out = Vec::new();
    for a in addrs {
        match (Candidate::host(*a, "udp"), Candidate::builder().tcp().host(*a).tcptype(TcpType::Passive).build()) {
            (Ok(u), Ok(t)) => out.extend([u, t]),
            (Err(e), _) | (_, Err(e)) => tracing::warn!(addr = %a, error = %e, "no host candidate for this address"),
        }
    }
    if let Some(ip) = public {
        let is_local = addrs.iter().any(|a| a.ip() == ip);
        for base in addrs.iter().filter(|a| !a.ip().is_loopback() && a.is_ipv4() == ip.is_ipv4()) {
            if is_local {
                break;
            }
            let public = SocketAddr::new(ip, base.port());
            if let Ok(c) = Candidate::server_reflexive(public, *base, "udp") {
                out.push(c);
            }
            if let Ok(c) = Candidate::builder().tcp().server_reflexive(public, *base).tcptype(TcpType::Passive).build()
            {
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
        assert_eq!(c.len(), 6, "UDP and TCP host candidates for both, reflexive twins of one: {sdp:?}");
        assert!(sdp[4].contains("udp") && sdp[4].contains("198.51.100.7 4000 typ srflx"), "{sdp:?}");
        assert!(sdp[5].contains("tcp") && sdp[5].contains("198.51.100.7 4000 typ srflx"), "{sdp:?}");
        for tcp in [&sdp[1], &sdp[3], &sdp[5]] {
            assert!(tcp.contains("tcptype passive"), "{sdp:?}");
        }
    }

    #[test]
    fn a_public_address_that_is_local_adds_nothing() {
        let addrs: Vec<SocketAddr> = vec!["198.51.100.7:4000".parse().unwrap()];
        assert_eq!(
            candidates(&addrs, Some("198.51.100.7".parse().unwrap())).len(),
            2,
            "its UDP and TCP host candidates"
        );
    }
}
