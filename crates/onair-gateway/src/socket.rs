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
use crate::per_ip::IpSlot;
use crate::protocol::{ClientFrame, ErrorCode, ServerFrame, SignalKind, parse};
use crate::queue::{SEND_TIMEOUT, SocketRx, socket_queue};
use crate::ratelimit::{RateLimiter, Verdict};

/// Largest text frame a client may send.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Frames larger than this are not even read: the connection is closed (1009).
pub const HARD_FRAME_LIMIT: usize = 1024 * 1024;
/// A socket silent for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Initial capacity of a socket's read buffer, and the most one read takes from the connection (the
/// buffer grows to hold a larger frame). Every idle socket keeps it: 512 bytes hold a trickled
/// candidate in one read; an offer of a few KiB takes several.
pub const READ_BUFFER_BYTES: usize = 512;
/// Rejected frames within [`STRIKE_WINDOW`] before the socket is closed with 4029.
pub const MAX_STRIKES: u32 = 200;
/// Window for counting strikes.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(10);
/// How long the `Resume` call on the upgrade may take before the socket goes on as a new peer.
pub const RESUME_DEADLINE: Duration = Duration::from_secs(3);

/// A socket's peer, as its frames are handled: borrowed from the socket task's own state.
struct Conn<'a> {
    hub: &'a Hub,
    peer: PeerId,
    conn: u64,
    access: &'a SocketAccess,
}

/// An `error` frame (counted as a rejected frame).
fn error_frame(hub: &Hub, code: ErrorCode, message: &str) -> Option<String> {
    hub.metrics.frames_rejected.inc();
    Some(ServerFrame::Error { code, message }.to_json())
}

impl Conn<'_> {
    fn error(&self, code: ErrorCode, message: &str) -> Option<String> {
        error_frame(self.hub, code, message)
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
                self.hub.forget_routes(&self.peer);
                // Signaling creates the stream and answers with `published` (or an error frame).
                let owner = self.access.subject().to_owned();
                self.hub.to_signaling(Msg::Publish(pb::Publish { peer, title, owner }));
                vec![]
            }
            ClientFrame::Unpublish => {
                self.hub.forget_routes(&self.peer);
                self.hub.note(&self.peer, |d| d.broadcasting = None);
                self.hub.to_signaling(Msg::Unpublished(pb::Unpublished { peer }));
                vec![]
            }
            ClientFrame::Watch { stream_id } => {
                if let Err((code, message)) = self.access.watch(stream_id.as_str()) {
                    return self.error(code, &message).into_iter().collect();
                }
                self.hub.forget_routes(&self.peer);
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
                self.hub.forget_routes(&self.peer);
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
                self.hub.signal(&self.peer, s);
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

impl SendError {
    /// The close frame it calls for: 4008 for a client that does not read, none when it is gone.
    fn close(&self) -> Option<(u16, &'static str)> {
        match self {
            Self::TooSlow => Some(TOO_SLOW),
            Self::Gone => None,
        }
    }
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

/// Sends `texts` in order; stops at the first that cannot go out.
async fn send_all(
    socket: &mut WebSocket,
    hub: &Hub,
    texts: Vec<String>,
    too_slow: &CancellationToken,
) -> Result<(), SendError> {
    for text in texts {
        send(socket, hub, text, too_slow).await?;
    }
    Ok(())
}

const TOO_SLOW: (u16, &str) = (4008, "too slow: the client does not read what it is sent");

/// What a socket's task takes over from the upgrade request. Boxed: the upgrade callback keeps
/// what it captures for the socket's whole life (a future keeps room for its captures), so it
/// should capture a pointer, not the values.
pub struct Upgrade {
    /// The gateway.
    pub hub: Arc<Hub>,
    /// The token the client put on the upgrade (`/ws?resume=`), if any.
    pub resume_token: Option<String>,
    /// What the socket's access token allows (everything when auth is off).
    pub access: SocketAccess,
    /// Fires when the gateway stops (the socket closes with 1012).
    pub shutdown: CancellationToken,
    /// Counts the socket against its client address's limit until the socket ends.
    pub ip_slot: IpSlot,
}

/// A socket set up: its peer, its queue, and the frames to send first.
struct Opened {
    peer: PeerId,
    conn: u64,
    rx: SocketRx,
    first: Vec<String>,
}

/// Takes the peer over (resume) or makes a new one, and the first frames: `welcome`, the errors
/// explaining a refused resume or access token, and the live list.
async fn open(hub: &Hub, resume_token: Option<String>, access: &SocketAccess) -> Opened {
    let (tx, rx) = socket_queue();
    let resumed = match resume_token {
        Some(token) => match resume(hub, &token, &tx).await {
            Ok((peer, conn)) => Ok((peer, token, conn)),
            Err(refusal) => Err(Some(refusal)),
        },
        None => Err(None),
    };
    let (peer, token, refusal, conn) = match resumed {
        Ok((peer, token, conn)) => {
            // The hub holds the socket's queue now: the socket ends when the hub lets go of it.
            drop(tx);
            tracing::info!(%peer, "resumed");
            (peer, token, None, conn)
        }
        Err(refusal) => {
            let peer = PeerId::generate();
            let token = hub.cfg.tokens.mint(&peer);
            let conn = hub.attach(&peer, &token, tx, false, Doing::default());
            (peer, token, refusal, conn)
        }
    };
    tracing::debug!(%peer, "socket open");
    // Fresh TURN credentials on every welcome, so a resumed socket gets new ones too.
    let ice_servers = hub.cfg.ice.for_peer(&peer, std::time::SystemTime::now());
    let mut first = vec![
        ServerFrame::Welcome { peer_id: peer.as_str(), ice_servers: &ice_servers, resume_token: &token }.to_json(),
    ];
    first.extend(refusal.and_then(|(code, message)| error_frame(hub, code, message)));
    first.extend(access.refusal().and_then(|(code, message)| error_frame(hub, code, &message)));
    first.push(hub.streams_frame());
    Opened { peer, conn, rx, first }
}

/// Runs one socket until it closes, the client is evicted, or `shutdown` fires (close 1012).
///
/// With a resume token (`/ws?resume=`) the socket takes that peer's id and stream if signaling
/// accepts it, before anything is sent, so the client gets exactly one `welcome`. Otherwise it is a
/// new peer, and the frame after `welcome` is the `error` saying why the token was not taken. A
/// refused access token is explained in an `error` frame right after `welcome`.
///
/// Every idle socket keeps this future for its whole life, so it is kept small: an async block
/// (an async fn's state would hold both its arguments and the locals they move into), with the
/// work of setting up, handling a frame, sending and closing in boxed futures of their own.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn run(up: Box<Upgrade>, mut socket: WebSocket) -> impl Future<Output = ()> + Send {
    async move {
        let Upgrade { hub, resume_token, access, shutdown, ip_slot } = *up;
        hub.metrics.sockets.inc();
        let Opened { peer, conn, mut rx, first } = Box::pin(open(&hub, resume_token, &access)).await;
        let c = Conn { hub: &hub, peer, conn, access: &access };
        let too_slow = rx.too_slow.clone();
        let mut list = hub.subscribe_list();
        let mut limiter = RateLimiter::new(
            hub.cfg.ws_rate.0,
            hub.cfg.ws_rate.1,
            MAX_STRIKES,
            STRIKE_WINDOW,
            std::time::Instant::now(),
        );
        let mut deadline = Instant::now() + IDLE_TIMEOUT;
        let mut changes = Coalescer::default();
        let mut clean_close = false;
        let close: Option<(u16, &'static str)> = match Box::pin(send_all(&mut socket, &hub, first, &too_slow)).await {
            Err(e) => e.close(),
            Ok(()) => loop {
                let at = changes.deadline().map_or(deadline, |d| d.min(deadline));
                let replies: Vec<String> = match wake(&shutdown, &too_slow, &mut socket, &mut rx, &mut list, at).await {
                    Wake::Shutdown => break Some((1012, "server restarting; reconnect")),
                    Wake::TooSlow => break Some(TOO_SLOW),
                    // One timer for both the idle deadline and the list's coalescing window.
                    Wake::Timer => {
                        let now = Instant::now();
                        match changes.deadline() {
                            Some(d) if d <= now && changes.overflowed() => {
                                vec![changes.resync(hub.streams_frame(), now)]
                            }
                            Some(d) if d <= now => changes.tick(now).into_iter().collect(),
                            _ if now >= deadline => break Some((1001, "idle timeout")),
                            _ => vec![],
                        }
                    }
                    Wake::Frame(msg) => {
                        deadline = Instant::now() + IDLE_TIMEOUT;
                        match Box::pin(on_frame(&c, &mut limiter, msg)).await {
                            Step::Reply(replies) => replies,
                            Step::Close(close) => break close,
                            Step::Left => {
                                clean_close = true;
                                break None;
                            }
                        }
                    }
                    Wake::Queued(out) => match out {
                        Some(Out::Text(t)) => vec![t],
                        Some(Out::Close(code, reason)) => break Some((code, reason)),
                        None => break None,
                    },
                    Wake::List(ev) => match ev {
                        Ok(t) => changes.change(t, Instant::now()).into_iter().collect(),
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            vec![changes.resync(hub.streams_frame(), Instant::now())]
                        }
                        Err(broadcast::error::RecvError::Closed) => vec![],
                    },
                };
                if replies.is_empty() {
                    continue;
                }
                if let Err(e) = Box::pin(send_all(&mut socket, &hub, replies, &too_slow)).await {
                    break e.close();
                }
            },
        };
        if let Some(frame) = close {
            Box::pin(close_handshake(&mut socket, &c, &mut limiter, frame)).await;
        }
        tracing::debug!(peer = %c.peer, ?close, clean_close, "socket closed");
        if clean_close {
            hub.detach_if_current(&c.peer, c.conn);
        } else {
            // Dropped without a close frame (network loss, crash): keep the peer for the resume grace.
            hub.disconnected(&c.peer, c.conn);
        }
        hub.metrics.sockets.dec();
        drop(ip_slot);
    }
}

/// What a frame from the client leads to.
enum Step {
    /// Send these back.
    Reply(Vec<String>),
    /// Close, with this code and reason if any.
    Close(Option<(u16, &'static str)>),
    /// The client closed deliberately (tab closed, Stop): no resume grace.
    Left,
}

/// Handles what the client sent (boxed by the caller, like everything an idle socket does not
/// wait in).
async fn on_frame(c: &Conn<'_>, limiter: &mut RateLimiter, msg: Option<Result<Message, axum::Error>>) -> Step {
    let msg = match msg {
        Some(Ok(m)) => m,
        // A frame over HARD_FRAME_LIMIT is refused unread: say why (1009), not 1006.
        Some(Err(e)) => return Step::Close(too_big(e).then_some((1009, "frame too large"))),
        None => return Step::Close(None),
    };
    let replies = match msg {
        Message::Text(text) => {
            c.hub.metrics.frames_in.inc();
            match limiter.check(std::time::Instant::now()) {
                Verdict::Allow => handle_text(c, &text).await,
                Verdict::Reject => {
                    c.error(ErrorCode::RateLimited, "too many messages; slow down").into_iter().collect()
                }
                Verdict::Abuse => return Step::Close(Some((4029, "flooding"))),
            }
        }
        Message::Binary(_) => {
            c.error(ErrorCode::BadJson, "binary frames are not supported; send JSON text").into_iter().collect()
        }
        Message::Close(_) => return Step::Left,
        Message::Ping(_) | Message::Pong(_) => vec![],
    };
    Step::Reply(replies)
}

/// What woke an idle socket.
enum Wake {
    Shutdown,
    TooSlow,
    /// The idle deadline or the list's coalescing window.
    Timer,
    Frame(Option<Result<Message, axum::Error>>),
    Queued(Option<Out>),
    List(Result<Arc<str>, broadcast::error::RecvError>),
}

/// Waits for whatever comes first for an idle socket. Its own future, awaited in place: the
/// waits are the one state an idle socket keeps, and this keeps them apart from the locals of
/// handling what woke it.
async fn wake(
    shutdown: &CancellationToken,
    too_slow: &CancellationToken,
    socket: &mut WebSocket,
    rx: &mut SocketRx,
    list: &mut broadcast::Receiver<Arc<str>>,
    at: Instant,
) -> Wake {
    tokio::select! {
        () = shutdown.cancelled() => Wake::Shutdown,
        () = too_slow.cancelled() => Wake::TooSlow,
        () = tokio::time::sleep_until(at) => Wake::Timer,
        msg = socket.recv() => Wake::Frame(msg),
        out = rx.recv() => Wake::Queued(out),
        ev = list.recv() => Wake::List(ev),
    }
}

/// Closes with `frame` (code, reason) and finishes the closing handshake (boxed by the caller: it
/// runs once, so its state stays out of the idle socket's).
async fn close_handshake(socket: &mut WebSocket, c: &Conn<'_>, limiter: &mut RateLimiter, frame: (u16, &'static str)) {
    let (code, reason) = frame;
    let close = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
    // A client that does not read may never take the close frame either: bounded.
    if matches!(tokio::time::timeout(Duration::from_secs(1), socket.send(close)).await, Ok(Ok(()))) {
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
                        c.hub.metrics.frames_in.inc();
                        if limiter.check(std::time::Instant::now()) == Verdict::Allow {
                            let _ = handle_text(c, &text).await;
                        }
                    }
                    _ => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
}

/// Whether a read failed because the client sent a frame or message over [`HARD_FRAME_LIMIT`].
fn too_big(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    matches!(e.into_inner().downcast_ref::<Error>(), Some(Error::Capacity(_)))
}

async fn handle_text(c: &Conn<'_>, text: &str) -> Vec<String> {
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
