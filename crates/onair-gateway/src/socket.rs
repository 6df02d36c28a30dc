//! One browser WebSocket: the protocol state machine of a peer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use onair_core::PeerId;
use onair_proto::v1 as pb;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::access::SocketAccess;
use crate::coalesce::Coalescer;
use crate::hub::{Doing, Hub, Out, SocketTx};
use crate::protocol::{ClientFrame, ErrorCode, ServerFrame, SignalKind, parse};
use crate::queue::{SEND_TIMEOUT, socket_queue};
use crate::ratelimit::{RateLimiter, Verdict};

/// Largest text frame a client may send.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Frames larger than this are not even read: the connection is closed (1009).
pub const HARD_FRAME_LIMIT: usize = 1024 * 1024;
/// A socket silent for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Initial capacity of a socket's read buffer (it grows for larger frames).
pub const READ_BUFFER_BYTES: usize = 1024;
/// Rejected frames within [`STRIKE_WINDOW`] before the socket is closed with 4029.
pub const MAX_STRIKES: u32 = 200;
/// Window for counting strikes.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(10);
/// How long the `Resume` call on the upgrade may take before the socket goes on as a new peer.
pub const RESUME_DEADLINE: Duration = Duration::from_secs(3);

struct Conn {
    hub: Arc<Hub>,
    peer: PeerId,
    token: String,
    conn: u64,
    access: SocketAccess,
}

impl Conn {
    fn error(&self, code: ErrorCode, message: &str) -> Option<String> {
        self.hub.metrics.frames_rejected.inc();
        Some(ServerFrame::Error { code, message }.to_json())
    }

    fn welcome(&self) -> String {
        // Fresh TURN credentials on every welcome, so a resumed socket gets new ones too.
        let ice_servers = self.hub.cfg.ice.for_peer(&self.peer, std::time::SystemTime::now());
        ServerFrame::Welcome { peer_id: self.peer.as_str(), ice_servers: &ice_servers, resume_token: &self.token }
            .to_json()
    }

    /// Handles one parsed frame; returns frames to send back right away.
    async fn handle(&self, frame: ClientFrame) -> Vec<String> {
        use pb::node_message::Msg;
        let peer = self.peer.to_string();
        match frame {
            ClientFrame::Ping => vec![ServerFrame::Pong.to_json()],
            ClientFrame::Publish { title } => {
                if let Err((code, message)) = self.access.publish(&title) {
                    return self.error(code, &message).into_iter().collect();
                }
                // Signaling creates the stream and answers with `published` (or an error frame).
                let owner = self.access.subject().to_owned();
                self.hub.to_signaling(Msg::Publish(pb::Publish { peer, title, owner }));
                vec![]
            }
            ClientFrame::Unpublish => {
                self.hub.note(&self.peer, |d| d.broadcasting = None);
                self.hub.to_signaling(Msg::Unpublished(pb::Unpublished { peer }));
                vec![]
            }
            ClientFrame::Watch { stream_id } => {
                if let Err((code, message)) = self.access.watch(stream_id.as_str()) {
                    return self.error(code, &message).into_iter().collect();
                }
                self.hub.note(&self.peer, |d| d.watching = Some(stream_id.clone()));
                // A watch is traced end to end (OTLP export on): this span, signaling's, and the
                // broadcaster gateway's delivery of `watcher_joined` share one trace.
                let span = tracing::info_span!("gateway.watch", peer = %peer, stream = %stream_id);
                let traceparent = onair_ops::trace::traceparent(&span);
                self.hub
                    .to_signaling_traced(Msg::Watch(pb::Watch { peer, stream_id: stream_id.to_string() }), traceparent);
                vec![]
            }
            ClientFrame::Unwatch => {
                self.hub.note(&self.peer, |d| d.watching = None);
                self.hub.to_signaling(Msg::Unwatch(pb::Unwatch { peer }));
                vec![]
            }
            ClientFrame::Signal { to, kind, payload } => {
                let to = to.to_string();
                let kind = match kind {
                    SignalKind::Offer => pb::SignalKind::Offer,
                    SignalKind::Answer => pb::SignalKind::Answer,
                    SignalKind::Candidate => pb::SignalKind::Candidate,
                };
                // `from` is always this socket's peer id, whatever the client wrote.
                let s = pb::Signal { from: peer, to, kind: kind.into(), payload: payload.to_string() };
                self.hub.to_signaling(Msg::Signal(s));
                vec![]
            }
        }
    }
}

/// Moves the peer named in resume `token` to this gateway, bound to `tx` (signaling checks the
/// token, hands over what it parked for the peer, and tells the peer's old gateway to close its
/// socket), with what it broadcasts and watches; on failure, the `error` frame for the client.
async fn resume(hub: &Hub, token: &str, tx: &SocketTx) -> Result<(PeerId, u64), Refusal> {
    let old =
        hub.cfg.tokens.peer_of(token).ok_or((ErrorCode::NotFound, "unknown resume token; continuing as a new peer"))?;
    // Bound before signaling moves the peer here: what it routes here from then on is held, not lost.
    let claimed = hub.claim(&old, token, tx.clone());
    match ask_resume(hub, &old, token).await {
        Ok(doing) => {
            let conn = hub.confirm(&old, claimed, doing);
            Ok((old, conn))
        }
        Err(e) => {
            hub.unclaim(&old, claimed);
            Err(e)
        }
    }
}

/// Why a resume was refused: the `error` frame's code and message.
type Refusal = (ErrorCode, &'static str);

/// Asks signaling to move `old` here; what it broadcasts and watches.
async fn ask_resume(hub: &Hub, old: &PeerId, token: &str) -> Result<Doing, Refusal> {
    let mut signaling = hub.cfg.signaling.clone();
    let req = pb::ResumeRequest { peer: old.to_string(), resume_token: token.to_owned(), node: hub.node().to_string() };
    match tokio::time::timeout(RESUME_DEADLINE, signaling.resume(req)).await {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            let stream = |s: &str| s.parse().ok();
            Ok(Doing { broadcasting: stream(&r.broadcasting), watching: stream(&r.watching) })
        }
        Ok(Err(s)) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::PermissionDenied) => {
            Err((ErrorCode::NotFound, "that session has expired; continuing as a new peer"))
        }
        Ok(Err(_)) | Err(_) => Err((ErrorCode::Unavailable, "could not resume right now; continuing as a new peer")),
    }
}

/// Why sending stopped.
enum SendError {
    /// The connection is gone.
    Gone,
    /// The client does not read: the frame did not go out within [`SEND_TIMEOUT`], or its queue
    /// passed its bound meanwhile.
    TooSlow,
}

async fn send(socket: &mut WebSocket, hub: &Hub, text: String, too_slow: &CancellationToken) -> Result<(), SendError> {
    hub.metrics.frames_out.inc();
    tokio::select! {
        sent = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SendError::Gone),
            Err(_) => Err(SendError::TooSlow),
        },
        () = too_slow.cancelled() => Err(SendError::TooSlow),
    }
}

const TOO_SLOW: (u16, &str) = (4008, "too slow: the client does not read what it is sent");

/// Runs one socket until it closes, the client is evicted, or `shutdown` fires (close 1012).
///
/// `resume` is the token the client put on the upgrade (`/ws?resume=`): the socket takes that
/// peer's id and stream if signaling accepts it, before anything is sent, so the client gets
/// exactly one `welcome`. Otherwise it is a new peer, and the frame after `welcome` is the
/// `error` saying why the token was not taken.
/// `access` is what the socket's access token allows (everything when auth is off); a refused
/// token is explained in an `error` frame right after `welcome`.
pub async fn run(
    hub: Arc<Hub>,
    mut socket: WebSocket,
    resume_token: Option<String>,
    access: SocketAccess,
    shutdown: CancellationToken,
) {
    hub.metrics.sockets.inc();
    let (tx, mut rx) = socket_queue();
    let resumed = match resume_token {
        // Boxed: the gRPC call's future is large and lives only during the upgrade, so it stays out
        // of the socket task's state, which every idle socket keeps for its whole life.
        Some(token) => match Box::pin(resume(&hub, &token, &tx)).await {
            Ok((peer, conn)) => Ok((peer, token, conn)),
            Err(refusal) => Err(Some(refusal)),
        },
        None => Err(None),
    };
    let (peer, token, refusal, is_resumed, conn) = match resumed {
        Ok((peer, token, conn)) => {
            // The hub holds the socket's queue now: the socket ends when the hub lets go of it.
            drop(tx);
            (peer, token, None, true, conn)
        }
        Err(refusal) => {
            let peer = PeerId::generate();
            let token = hub.cfg.tokens.mint(&peer);
            let conn = hub.attach(&peer, &token, tx, false, Doing::default());
            (peer, token, refusal, false, conn)
        }
    };
    let too_slow = rx.too_slow.clone();
    let refused_token = access.refusal();
    let c = Conn { hub: Arc::clone(&hub), peer, token, conn, access };
    let mut list = hub.subscribe_list();
    let mut limiter =
        RateLimiter::new(hub.cfg.ws_rate.0, hub.cfg.ws_rate.1, MAX_STRIKES, STRIKE_WINDOW, std::time::Instant::now());
    let mut deadline = Instant::now() + IDLE_TIMEOUT;
    let mut changes = Coalescer::default();
    let mut clean_close = false;
    if is_resumed {
        tracing::info!(peer = %c.peer, "resumed");
    }
    tracing::debug!(peer = %c.peer, "socket open");

    let mut first = vec![c.welcome()];
    first.extend(refusal.and_then(|(code, message)| c.error(code, message)));
    first.extend(refused_token.and_then(|(code, message)| c.error(code, &message)));
    first.push(hub.streams_frame());
    let mut failed = None;
    for text in first {
        if let Err(e) = send(&mut socket, &hub, text, &too_slow).await {
            failed = Some(e);
            break;
        }
    }
    let close: Option<(u16, &'static str)> = if let Some(e) = failed {
        match e {
            SendError::TooSlow => Some(TOO_SLOW),
            SendError::Gone => None,
        }
    } else {
        loop {
            let replies: Vec<String> = tokio::select! {
                () = shutdown.cancelled() => break Some((1012, "server restarting; reconnect")),
                () = too_slow.cancelled() => break Some(TOO_SLOW),
                () = tokio::time::sleep_until(deadline) => break Some((1001, "idle timeout")),
                msg = socket.recv() => {
                    let msg = match msg {
                        Some(Ok(m)) => m,
                        // A frame over HARD_FRAME_LIMIT is refused unread: say why (1009), not 1006.
                        Some(Err(e)) => break too_big(e).then_some((1009, "frame too large")),
                        None => break None,
                    };
                    deadline = Instant::now() + IDLE_TIMEOUT;
                    match msg {
                        Message::Text(text) => {
                            hub.metrics.frames_in.inc();
                            match limiter.check(std::time::Instant::now()) {
                                Verdict::Allow => handle_text(&c, &text).await,
                                Verdict::Reject => {
                                    c.error(ErrorCode::RateLimited, "too many messages; slow down").into_iter().collect()
                                }
                                Verdict::Abuse => break Some((4029, "flooding")),
                            }
                        }
                        Message::Binary(_) => c.error(ErrorCode::BadJson, "binary frames are not supported; send JSON text").into_iter().collect(),
                        Message::Close(_) => {
                            // A deliberate close (tab closed, Stop): no resume grace.
                            clean_close = true;
                            break None;
                        }
                        Message::Ping(_) | Message::Pong(_) => vec![],
                    }
                }
                out = rx.recv() => match out {
                    Some(Out::Text(t)) => vec![t],
                    Some(Out::Close(code, reason)) => break Some((code, reason)),
                    None => break None,
                },
                ev = list.recv() => match ev {
                    Ok(t) => changes.change(t, Instant::now()).into_iter().collect(),
                    Err(broadcast::error::RecvError::Lagged(_)) => vec![changes.resync(hub.streams_frame(), Instant::now())],
                    Err(broadcast::error::RecvError::Closed) => vec![],
                },
                () = tokio::time::sleep_until(changes.deadline().unwrap_or(deadline)), if changes.deadline().is_some() => {
                    if changes.overflowed() {
                        vec![changes.resync(hub.streams_frame(), Instant::now())]
                    } else {
                        changes.tick(Instant::now()).into_iter().collect()
                    }
                }
            };
            let mut stop = None;
            for r in replies {
                if let Err(e) = send(&mut socket, &hub, r, &too_slow).await {
                    stop = Some(e);
                    break;
                }
            }
            match stop {
                None => {}
                Some(SendError::TooSlow) => break Some(TOO_SLOW),
                Some(SendError::Gone) => break None,
            }
        }
    };
    let close_frame = |(code, reason): (u16, &str)| Message::Close(Some(CloseFrame { code, reason: reason.into() }));
    // A client that does not read may never take the close frame either: bounded.
    if let Some(frame) = close
        && matches!(tokio::time::timeout(Duration::from_secs(1), socket.send(close_frame(frame))).await, Ok(Ok(())))
    {
        // Finish the closing handshake: read what the client still sends until its close frame,
        // so the client sees our close code instead of a connection reset. When the gateway is
        // restarting, what the client sent before it saw the 1012 is still its own: routed like
        // any other frame (their replies cannot reach it; it resumes elsewhere), not dropped.
        let restarting = frame.0 == 1012;
        let drain = async {
            while let Some(Ok(m)) = socket.recv().await {
                match m {
                    Message::Close(_) => break,
                    Message::Text(text) if restarting => {
                        hub.metrics.frames_in.inc();
                        if limiter.check(std::time::Instant::now()) == Verdict::Allow {
                            let _ = handle_text(&c, &text).await;
                        }
                    }
                    _ => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
    tracing::debug!(peer = %c.peer, ?close, clean_close, "socket closed");
    if clean_close {
        hub.detach_if_current(&c.peer, c.conn);
    } else {
        // Dropped without a close frame (network loss, crash): keep the peer for the resume grace.
        hub.disconnected(&c.peer, c.conn);
    }
    hub.metrics.sockets.dec();
}

/// Whether a read failed because the client sent a frame or message over [`HARD_FRAME_LIMIT`].
fn too_big(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    matches!(e.into_inner().downcast_ref::<Error>(), Some(Error::Capacity(_)))
}

async fn handle_text(c: &Conn, text: &str) -> Vec<String> {
    if text.len() > MAX_FRAME_BYTES {
        return c
            .error(ErrorCode::TooLarge, &format!("frame is {} bytes; the limit is {MAX_FRAME_BYTES}", text.len()))
            .into_iter()
            .collect();
    }
    match parse(text) {
        Ok(frame) => c.handle(frame).await,
        Err(e) => c.error(e.code, &e.message).into_iter().collect(),
    }
}
