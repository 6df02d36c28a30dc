//! The embedded TURN server (RFC 5766 / RFC 8656 over UDP, TCP and TLS, UDP relays): what
//! browsers behind symmetric NATs or UDP-blocking networks relay their media through.
//!
//! - Credentials are the TURN REST API ones the gateway hands out in `welcome`
//!   (`onair_core::turn_rest`): username `<expiry-unix>:<peer-id>`, password
//!   `base64(HMAC-SHA1(secret, username))`, checked as long-term credentials; an expired
//!   username is refused like a wrong password (401).
//! - Allocations are limited per user (the part after the expiry: the peer id), each relays at
//!   most `max_bitrate`, and relay sockets bind in `relay_ports`.
//! - Peers on loopback, private, shared, link-local and multicast addresses are refused (403)
//!   unless inside `allow_peers`.
//!
//! STUN/TURN messages are parsed and built by webrtc-rs's `rtc-stun` / `rtc-turn` (through
//! `rtc`); `server` holds the allocation logic, this module the sockets.

mod metrics;
pub mod policy;
mod server;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use onair_core::turn_rest::TurnSecret;
use onair_ops::{Admin, ServeError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use metrics::TurnMetrics;
pub use policy::{Cidr, ParseError, PeerPolicy, RelayPorts};
use server::{FiveTuple, Server, Sink, Transport};

/// TURN server settings.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// The realm of the long-term credentials.
    pub realm: String,
    /// The secret shared with the gateways (`--turn-secret`).
    pub secret: TurnSecret,
    /// The address relayed addresses are announced at (XOR-RELAYED-ADDRESS): the public address.
    pub relay_ip: IpAddr,
    /// The local address relay sockets bind (usually unspecified: every interface).
    pub relay_bind: IpAddr,
    /// The UDP ports relay sockets bind.
    pub relay_ports: RelayPorts,
    /// Internal networks peers may be on after all (`--turn-allow-peer`).
    pub allow_peers: Vec<Cidr>,
    /// Allocations one user (peer id) may hold at once.
    pub user_quota: usize,
    /// Most bits per second one allocation relays, both directions together; more is dropped.
    pub max_bitrate: u64,
}

/// The sockets the server answers on; any of them may be empty.
#[derive(Debug, Default)]
pub struct TurnListeners {
    /// UDP sockets (`turn:host:port`).
    pub udp: Vec<UdpSocket>,
    /// TCP listeners (`turn:host:port?transport=tcp`).
    pub tcp: Vec<TcpListener>,
    /// TLS listeners and their configuration (`turns:host:port?transport=tcp`).
    pub tls: Vec<(TcpListener, Arc<rustls::ServerConfig>)>,
}

/// Connections (TCP and TLS) served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 4096;
/// Frames queued to one TCP/TLS client before packets to it are dropped.
const STREAM_QUEUE: usize = 256;
/// Longest a TLS handshake may take.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// How long a TCP/TLS connection may wait for its next frame while it holds no allocation (a
/// connection that never allocates is closed instead of holding a connection slot).
const IDLE_WITHOUT_ALLOCATION: Duration = Duration::from_secs(30);

/// Prepares the TURN server on `listeners`: registers its metrics with `admin`, and returns the
/// future that serves until `shutdown` fires, which ends every allocation and connection.
pub fn serve(
    config: TurnConfig,
    admin: &Admin,
    listeners: TurnListeners,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = Result<(), ServeError>> + Send + 'static, ServeError> {
    let crypto = rtc::crypto::default_provider()
        .map_err(|e| ServeError::Io(std::io::Error::other(format!("TURN crypto provider: {e}"))))?;
    let server = Arc::new(Server::new(config, crypto, shutdown.child_token()));
    server.metrics.register(admin.metrics());
    Ok(async move {
        let mut tasks = JoinSet::new();
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        for socket in listeners.udp {
            tasks.spawn(udp_loop(Arc::clone(&server), Arc::new(socket)));
        }
        for listener in listeners.tcp {
            tasks.spawn(accept_loop(Arc::clone(&server), listener, None, Arc::clone(&connections)));
        }
        for (listener, tls) in listeners.tls {
            tasks.spawn(accept_loop(Arc::clone(&server), listener, Some(tls), Arc::clone(&connections)));
        }
        tracing::info!("TURN server starting");
        shutdown.cancelled().await;
        server.stop.cancel();
        while tasks.join_next().await.is_some() {}
        tracing::info!("TURN server stopped");
        Ok(())
    })
}

async fn udp_loop(server: Arc<Server>, socket: Arc<UdpSocket>) {
    let Ok(local) = socket.local_addr() else { return };
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::select! {
            () = server.stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                // ICMP errors surface as recv errors on some systems: keep serving.
                Err(_) => continue,
            },
        };
        let tuple = FiveTuple { client: from, server: local, transport: Transport::Udp };
        let sink = Sink::Udp(Arc::clone(&socket), from);
        if let Some(response) = server.handle(&buf[..n], tuple, &sink) {
            let _ = socket.send_to(&response, from).await;
        }
    }
}

async fn accept_loop(
    server: Arc<Server>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: Arc<Semaphore>,
) {
    let Ok(local) = listener.local_addr() else { return };
    // TURN clients negotiate no application protocol: drop the gateway's h2/http1.1 ALPN so a
    // client that offers another one (`stun.turn`) is not refused. The certificate resolver (and
    // its rotation) is shared.
    let acceptor = tls.map(|c| {
        let mut c = (*c).clone();
        c.alpn_protocols.clear();
        tokio_rustls::TlsAcceptor::from(Arc::new(c))
    });
    let mut conns = JoinSet::new();
    loop {
        let Ok(permit) = Arc::clone(&connections).acquire_owned().await else { return };
        let (stream, client) = tokio::select! {
            () = server.stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "TURN accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let server = Arc::clone(&server);
        let acceptor = acceptor.clone();
        conns.spawn(async move {
            let _permit = permit;
            match acceptor {
                None => {
                    let tuple = FiveTuple { client, server: local, transport: Transport::Tcp };
                    serve_stream(&server, stream, tuple).await;
                }
                Some(acceptor) => {
                    let tuple = FiveTuple { client, server: local, transport: Transport::Tls };
                    match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_stream(&server, stream, tuple).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, %client, "TURN TLS handshake failed"),
                        Err(_) => tracing::debug!(%client, "TURN TLS handshake timed out"),
                    }
                }
            }
        });
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}

/// The length of the STUN message or ChannelData frame that starts with `header` (RFC 6062
/// framing: ChannelData is padded to 4 bytes on streams); `None` for anything else.
fn frame_len(header: [u8; 4]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    match header[0] {
        0x00..=0x3f => Some(20 + len),
        0x40..=0x7f => Some(4 + len.div_ceil(4) * 4),
        _ => None,
    }
}

/// One TCP or TLS client: frames in, responses and relayed data out, the allocation ended
/// when the connection closes.
async fn serve_stream<S: AsyncRead + AsyncWrite + Send + Unpin>(server: &Arc<Server>, stream: S, tuple: FiveTuple) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
    let writer = async move {
        while let Some(frame) = rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
    };
    let sink = Sink::Stream(tx.clone());
    let reader = async {
        let mut buf = vec![0u8; 65536 + 24];
        loop {
            let mut header = [0u8; 4];
            let read = rd.read_exact(&mut header);
            let read = if server.has_allocation(&tuple) {
                read.await
            } else {
                match tokio::time::timeout(IDLE_WITHOUT_ALLOCATION, read).await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            };
            if read.is_err() {
                return;
            }
            let Some(len) = frame_len(header) else { return };
            buf[..4].copy_from_slice(&header);
            if rd.read_exact(&mut buf[4..len]).await.is_err() {
                return;
            }
            if let Some(response) = server.handle(&buf[..len], tuple, &sink)
                && tx.send(response).await.is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        () = server.stop.cancelled() => {}
        () = reader => {}
        () = writer => {}
    }
    server.connection_closed(&tuple);
}

#[cfg(test)]
mod tests {
    use super::frame_len;

    #[test]
    fn stream_frames_are_delimited_by_their_headers() {
        assert_eq!(frame_len([0x00, 0x01, 0x00, 0x08]), Some(28), "STUN: header + attributes");
        assert_eq!(frame_len([0x40, 0x00, 0x00, 0x05]), Some(12), "ChannelData padded to 4 on streams");
        assert_eq!(frame_len([0x40, 0x00, 0x00, 0x08]), Some(12));
        assert_eq!(frame_len([0x80, 0x00, 0x00, 0x00]), None, "neither STUN nor ChannelData");
    }
}
