//! ICE-TCP, passive (RFC 6544): for a peer whose network lets no UDP through (many corporate and
//! hotel networks), the relay also listens on TCP at its UDP port on every address and announces
//! `tcptype passive` candidates. The browser connects; STUN, DTLS and SRTP then travel that
//! connection framed as RFC 4571 (a 16-bit length before each packet), and reach the engine as
//! datagrams of protocol TCP from the connection's remote address. What a peer transmits over TCP
//! goes back through the connection of its destination.
//!
//! Bounded like the UDP path: at most [`MAX_CONNECTIONS`] at once, a connection must frame its first
//! packet within [`FIRST_PACKET_WITHIN`] and then one at least every [`IDLE_WITHIN`] (a live ICE pair
//! sends consent checks every few seconds), a frame longer than a datagram closes it, and a peer
//! that does not read has its packets dropped once [`WRITE_QUEUE`] wait (as a full UDP buffer would).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use str0m::net::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::{Datagram, MAX_DATAGRAM};
use crate::metrics::RelayMetrics;

/// Open ICE-TCP connections at once, per relay; more are closed on accept (and counted as dropped).
pub const MAX_CONNECTIONS: usize = 4096;
/// A connection that has not framed a packet within this long is closed.
const FIRST_PACKET_WITHIN: Duration = Duration::from_secs(5);
/// A connection silent this long after that is closed (its peer is gone).
const IDLE_WITHIN: Duration = Duration::from_secs(30);
/// Packets waiting to be written to one connection; more are dropped.
const WRITE_QUEUE: usize = 512;

/// The open connections by remote address: where the engine writes a peer's TCP packets.
#[derive(Debug, Clone, Default)]
pub struct TcpConns(Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>);

impl TcpConns {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `data` on the connection from `to`; false when there is none or its queue is full.
    pub fn send(&self, to: SocketAddr, data: &[u8]) -> bool {
        self.map().get(&to).is_some_and(|c| c.try_send(data.to_vec()).is_ok())
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.map().len()
    }
}

/// Accepts connections on `listener` (local address `local`) until `stop`, each read into `tx`.
pub async fn accept(
    listener: Arc<TcpListener>,
    local: SocketAddr,
    conns: TcpConns,
    tx: mpsc::Sender<Datagram>,
    metrics: RelayMetrics,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, remote)) = accepted else { continue };
        if conns.len() >= MAX_CONNECTIONS {
            metrics.dropped_in.inc();
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (conns, tx, metrics, stop) = (conns.clone(), tx.clone(), metrics.clone(), stop.clone());
        tokio::spawn(connection(stream, local, remote, conns, tx, metrics, stop));
    }
}

async fn connection(
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    conns: TcpConns,
    tx: mpsc::Sender<Datagram>,
    metrics: RelayMetrics,
    stop: CancellationToken,
) {
    let (rd, mut wr) = stream.into_split();
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    conns.map().insert(remote, wtx);
    let writer = async {
        let mut frame = Vec::with_capacity(MAX_DATAGRAM + 2);
        while let Some(packet) = wrx.recv().await {
            let Ok(len) = u16::try_from(packet.len()) else { continue };
            frame.clear();
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&packet);
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
    };
    let reader = async {
        let mut rd = BufReader::with_capacity(4096, rd);
        let mut first = true;
        loop {
            let mut len = [0u8; 2];
            let within = if first { FIRST_PACKET_WITHIN } else { IDLE_WITHIN };
            match tokio::time::timeout(within, rd.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    if first {
                        metrics.dropped_in.inc();
                    }
                    return;
                }
            }
            first = false;
            let n = usize::from(u16::from_be_bytes(len));
            metrics.datagrams_in.inc();
            if n == 0 || n > MAX_DATAGRAM {
                // Not ICE-TCP: nothing after it can be framed either.
                metrics.dropped_in.inc();
                return;
            }
            let mut data = vec![0u8; n];
            if rd.read_exact(&mut data).await.is_err() {
                return;
            }
            let d = Datagram { data, source: remote, destination: local, at: Instant::now(), proto: Protocol::Tcp };
            if tx.try_send(d).is_err() {
                metrics.dropped_in.inc();
            }
        }
    };
    tokio::select! {
        () = stop.cancelled() => {}
        () = reader => {}
        () = writer => {}
    }
    conns.map().remove(&remote);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn relay_side() -> (SocketAddr, TcpConns, mpsc::Receiver<Datagram>, RelayMetrics, CancellationToken) {
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let local = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(16);
        let (conns, metrics, stop) = (TcpConns::default(), RelayMetrics::default(), CancellationToken::new());
        tokio::spawn(accept(listener, local, conns.clone(), tx, metrics.clone(), stop.clone()));
        (local, conns, rx, metrics, stop)
    }

    #[tokio::test]
    async fn framed_packets_arrive_as_tcp_datagrams_and_replies_go_back_framed() {
        let (local, conns, mut rx, _metrics, stop) = relay_side().await;
        let mut client = TcpStream::connect(local).await.unwrap();
        client.write_all(&[0, 3, 1, 2, 3, 0, 2, 9, 9]).await.unwrap();
        let a = rx.recv().await.unwrap();
        let b = rx.recv().await.unwrap();
        assert_eq!((a.data.as_slice(), b.data.as_slice()), (&[1u8, 2, 3][..], &[9u8, 9][..]));
        assert_eq!((a.proto, a.destination, a.source), (Protocol::Tcp, local, client.local_addr().unwrap()));
        assert!(conns.send(a.source, &[7, 7, 7, 7]));
        let mut back = [0u8; 6];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, [0, 4, 7, 7, 7, 7]);
        assert!(!conns.send("127.0.0.1:9".parse().unwrap(), &[1]), "no such connection");
        stop.cancel();
    }

    #[tokio::test]
    async fn an_oversized_frame_closes_the_connection_and_is_counted() {
        let (local, conns, _rx, metrics, stop) = relay_side().await;
        let mut client = TcpStream::connect(local).await.unwrap();
        client.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "closed");
        assert_eq!(metrics.dropped_in.get(), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(conns.len(), 0);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed() {
        let (local, conns, _rx, metrics, stop) = relay_side().await;
        let mut client = TcpStream::connect(local).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "closed after {FIRST_PACKET_WITHIN:?}");
        assert_eq!(metrics.dropped_in.get(), 1);
        assert_eq!(conns.len(), 0);
        stop.cancel();
    }
}
