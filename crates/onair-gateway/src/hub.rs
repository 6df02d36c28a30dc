//! The gateway's local state: its sockets by peer id, the cached live list, and
//! the fan-out of list changes to every socket. Nothing here must survive the
//! process: peers reconnect elsewhere with their resume token.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use onair_auth::Upstream;
use onair_core::{NodeId, PeerId, Stream, StreamEvent, StreamId};
use onair_node::{NodeHandler, NodeLink};
use onair_proto::convert::FeedEvent;
use onair_proto::v1 as pb;
use onair_proto::v1::signaling_client::SignalingClient;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use parking_lot::{Mutex, MutexGuard, RwLock};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use crate::ice::IceServers;
use crate::protocol::{ErrorCode, ServerFrame, SignalKind};
use crate::resume_token::TokenSigner;
use crate::route::{Direct, DirectTx, RouteMetrics, Routes};

pub use crate::queue::{Out, SocketTx};

struct Slot {
    tx: Option<SocketTx>,
    conn: u64,
    /// What signaling knows about the peer, kept to re-assert it if the directory is lost.
    token: String,
    doing: Doing,
    /// Frames that came while the peer had no socket (its resume grace) or while its resume was
    /// being confirmed (`resuming`), oldest first, at most [`HELD_MAX`]: they go out, in order, on
    /// the socket it resumes with.
    held: Vec<Out>,
    /// A socket took this peer and signaling has not confirmed the resume yet: frames are held.
    resuming: bool,
    /// Where the peers it may signal directly are (see `route.rs`).
    routes: Routes,
}

/// Most frames held for one peer between sockets (as many as signaling parks for it), and most
/// bytes (a socket's own queue holds no more: a client too slow to read costs no more once gone).
const HELD_MAX: usize = onair_core::PARKED_MAX;
const HELD_MAX_BYTES: usize = crate::queue::MAX_QUEUED_BYTES;

impl Slot {
    fn hold(&mut self, out: Out) {
        if out.len() > HELD_MAX_BYTES {
            return;
        }
        let mut bytes = self.held.iter().map(Out::len).sum::<usize>() + out.len();
        while self.held.len() >= HELD_MAX || bytes > HELD_MAX_BYTES {
            bytes -= self.held.remove(0).len();
        }
        self.held.push(out);
    }
}

/// What [`Hub::claim`] replaced, to put back if the resume is refused.
pub struct Claimed {
    conn: u64,
    previous: Option<Slot>,
}

/// Gateway metrics.
#[derive(Debug, Clone, Default)]
pub struct GatewayMetrics {
    /// Open WebSockets.
    pub sockets: Gauge,
    /// Frames received from browsers.
    pub frames_in: Counter,
    /// Frames sent to browsers.
    pub frames_out: Counter,
    /// Frames rejected (bad input, rate limit).
    pub frames_rejected: Counter,
    /// WebSocket upgrades refused because the client address had too many open.
    pub sockets_refused_per_ip: Counter,
    /// Live streams (the cached live list: every gateway has the same).
    pub live_streams: Gauge,
    /// Viewers of the live streams, summed (from the same list).
    pub viewers: Gauge,
}

impl GatewayMetrics {
    /// Registers into `m`.
    pub fn register(&self, m: &onair_ops::Metrics) {
        m.register("gateway_sockets", "Open browser WebSockets", self.sockets.clone());
        m.register("gateway_frames_in", "Frames received from browsers", self.frames_in.clone());
        m.register("gateway_frames_out", "Frames sent to browsers", self.frames_out.clone());
        m.register("gateway_frames_rejected", "Frames rejected with an error frame", self.frames_rejected.clone());
        m.register(
            "gateway_sockets_refused_per_ip",
            "WebSocket upgrades refused with 429: too many open from one client address (--max-sockets-per-ip)",
            self.sockets_refused_per_ip.clone(),
        );
        m.register(
            "gateway_live_streams",
            "Live streams (every gateway has the whole list)",
            self.live_streams.clone(),
        );
        m.register(
            "gateway_viewers",
            "Viewers of the live streams, summed (every gateway has the whole list)",
            self.viewers.clone(),
        );
    }
}

/// Most streams a `streams` frame carries (newest first); the rest are paged over `/api/streams`.
pub const SNAPSHOT_MAX: usize = 200;

/// Shared gateway state.
pub struct Hub {
    peers: Mutex<HashMap<PeerId, Slot>>,
    streams: RwLock<Vec<Stream>>,
    fanout: broadcast::Sender<Arc<str>>,
    /// Upstream clients and per-socket settings, as built by `serve`.
    pub cfg: HubParts,
    next_conn: AtomicU64,
    /// Metrics.
    pub metrics: GatewayMetrics,
    /// Direct-route metrics.
    pub route_metrics: RouteMetrics,
    /// WHIP/WHEP requests waiting for their relay's reply.
    pub waiting: crate::whip::Waiting,
    /// The socket tasks: a draining gateway waits for their closing handshakes.
    pub sockets: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("node", self.node()).finish_non_exhaustive()
    }
}

/// What a hub is built from: the node's link, upstream clients and per-socket settings.
#[derive(Debug)]
pub struct HubParts {
    /// The node's signaling link.
    pub link: NodeLink,
    /// Registry client.
    pub registry: StreamRegistryClient<Upstream>,
    /// Signaling client.
    pub signaling: SignalingClient<Upstream>,
    /// Resume grace.
    pub resume_grace: Duration,
    /// ICE servers.
    pub ice: IceServers,
    /// Resume tokens.
    pub tokens: TokenSigner,
    /// Per-socket frame rate limit: (sustained per second, burst).
    pub ws_rate: (u32, u32),
    /// The direct sender's queue (`route.rs`).
    pub direct: DirectTx,
}

impl Hub {
    /// A hub over `parts`.
    pub fn new(parts: HubParts) -> Arc<Self> {
        let (fanout, _) = broadcast::channel(1024);
        Arc::new(Self {
            peers: Mutex::new(HashMap::new()),
            streams: RwLock::new(Vec::new()),
            fanout,
            cfg: parts,
            sockets: tokio_util::task::TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            metrics: GatewayMetrics::default(),
            route_metrics: RouteMetrics::default(),
            waiting: crate::whip::Waiting::default(),
        })
    }

    /// This gateway's node id.
    pub fn node(&self) -> &NodeId {
        self.cfg.link.node()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PeerId, Slot>> {
        self.peers.lock()
    }

    /// Runs `f` on `peer`'s slot under one lock; `None` when the peer is not here.
    fn with_slot<R>(&self, peer: &PeerId, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
        self.lock().get_mut(peer).map(f)
    }

    /// Subscribes a socket to list changes.
    pub fn subscribe_list(&self) -> broadcast::Receiver<Arc<str>> {
        self.fanout.subscribe()
    }

    /// Whether a stream titled `title` is live (as this gateway's list has it, milliseconds behind).
    pub fn is_live_titled(&self, title: &str) -> bool {
        self.streams.read().iter().any(|s| s.title == title)
    }

    /// The live list, newest first.
    pub fn streams(&self) -> Vec<Stream> {
        self.streams.read().clone()
    }

    /// The `streams` frame for the current list: the newest [`SNAPSHOT_MAX`] and the total, so a
    /// socket opening while thousands of streams are live gets kilobytes, not megabytes.
    pub fn streams_frame(&self) -> String {
        let list = self.streams.read();
        let shown = &list[..list.len().min(SNAPSHOT_MAX)];
        ServerFrame::Streams { streams: shown, total: list.len() }.to_json()
    }

    /// Up to `limit` live streams after `cursor` (a stream's `started_at` and id, the list's order:
    /// newest first), and the cursor of the last one returned if more follow.
    pub fn streams_page(&self, cursor: Option<(i64, &str)>, limit: usize) -> (Vec<Stream>, usize, Option<String>) {
        let list = self.streams.read();
        let start = cursor.map_or(0, |(ts, id)| {
            list.iter().position(|s| (s.started_at, s.id.as_str()) < (ts, id)).unwrap_or(list.len())
        });
        let page: Vec<Stream> = list[start..].iter().take(limit).cloned().collect();
        let next = (start + page.len() < list.len()).then(|| page.last().map(|s| format!("{}:{}", s.started_at, s.id)));
        (page, list.len(), next.flatten())
    }

    /// Queues a message for signaling (in order).
    pub fn to_signaling(&self, msg: pb::node_message::Msg) {
        self.cfg.link.send(msg);
    }

    /// Like [`Hub::to_signaling`], as part of a trace (`onair_ops::trace`).
    pub fn to_signaling_traced(&self, msg: pb::node_message::Msg, traceparent: String) {
        self.cfg.link.send_traced(msg, traceparent);
    }

    /// Sends a local peer's signal: straight to the recipient's node when `from` has a route to
    /// it, else through signaling (which checks the pairing, and tells the recipient's node where
    /// `from` is).
    pub fn signal(&self, from: &PeerId, signal: pb::Signal) {
        let node = match signal.to.parse::<PeerId>() {
            Ok(to) => self.lock().get(from).and_then(|s| s.routes.get(&to).cloned()),
            Err(_) => None,
        };
        let signal = match node {
            Some(node) => match self.cfg.direct.send(Direct { node, signal }) {
                Ok(()) => return,
                Err(d) => d.signal,
            },
            None => signal,
        };
        self.to_signaling(pb::node_message::Msg::Signal(signal));
    }

    /// A signal whose direct route failed (its node no longer listens, or no longer holds the
    /// recipient) goes through signaling, and the sender's route is forgotten when it is ours.
    pub fn reroute(&self, signal: pb::Signal) {
        self.route_metrics.rerouted.inc();
        if let (Ok(from), Ok(to)) = (signal.from.parse::<PeerId>(), signal.to.parse::<PeerId>()) {
            self.with_slot(&from, |slot| slot.routes.forget(&to));
        }
        self.to_signaling(pb::node_message::Msg::Signal(signal));
    }

    /// A local peer's pairings changed (it watches, publishes, or stops): no direct routes until
    /// signaling pairs it again.
    pub fn forget_routes(&self, peer: &PeerId) {
        self.with_slot(peer, |slot| slot.routes.clear());
    }

    /// Binds `peer` to a new socket; returns its connection number. A new peer is announced to
    /// signaling with its resume `token`; a `resumed` one was moved here by the `Resume` call
    /// already. An older socket of the same peer on this gateway is closed (4009).
    /// `doing` is what a resumed peer broadcasts and watches (from signaling's `Resume`).
    pub fn attach(&self, peer: &PeerId, token: &str, tx: SocketTx, resumed: bool, doing: Doing) -> u64 {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            tx: Some(tx),
            conn,
            token: token.to_owned(),
            doing,
            held: Vec::new(),
            resuming: false,
            routes: Routes::default(),
        };
        let old = self.lock().insert(peer.clone(), slot);
        if let Some(Slot { tx: Some(old_tx), .. }) = old {
            old_tx.send(Out::Close(4009, "session resumed on another connection"));
        }
        if !resumed {
            self.to_signaling(pb::node_message::Msg::Attach(pb::Attach {
                peer: peer.to_string(),
                resume_token: token.to_owned(),
            }));
        }
        conn
    }

    /// A socket wants to resume `peer` here: binds it to `tx` before signaling is asked, so that
    /// nothing routed here once signaling moved the peer (its parked deliveries first) is dropped
    /// for want of a socket; until [`Hub::confirm`], what comes is held. A slot the peer already had
    /// here (its resume grace) keeps what it held.
    pub fn claim(&self, peer: &PeerId, token: &str, tx: SocketTx) -> Claimed {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut peers = self.lock();
        let (held, doing) =
            peers.get_mut(peer).map(|s| (std::mem::take(&mut s.held), s.doing.clone())).unwrap_or_default();
        let slot = Slot {
            tx: Some(tx),
            conn,
            token: token.to_owned(),
            doing,
            held,
            resuming: true,
            routes: Routes::default(),
        };
        let previous = peers.insert(peer.clone(), slot);
        Claimed { conn, previous }
    }

    /// Signaling moved the peer of `claimed` here: what was held goes out first, then the rest as
    /// it comes. Returns the connection id.
    pub fn confirm(&self, peer: &PeerId, claimed: Claimed, doing: Doing) -> u64 {
        let mut peers = self.lock();
        if let Some(slot) = peers.get_mut(peer).filter(|s| s.conn == claimed.conn) {
            slot.resuming = false;
            slot.doing = doing;
            if let Some(tx) = &slot.tx {
                for out in slot.held.drain(..) {
                    tx.send(out);
                }
            }
        }
        drop(peers);
        if let Some(Slot { tx: Some(old_tx), .. }) = claimed.previous {
            old_tx.send(Out::Close(4009, "session resumed on another connection"));
        }
        claimed.conn
    }

    /// Signaling refused the resume of `claimed`: the peer's previous slot here (if any) comes back
    /// with what it held; the socket goes on as a new peer.
    pub fn unclaim(&self, peer: &PeerId, claimed: Claimed) {
        let mut peers = self.lock();
        if peers.get(peer).is_some_and(|s| s.conn == claimed.conn) {
            let held = peers.remove(peer).map(|s| s.held).unwrap_or_default();
            if let Some(mut previous) = claimed.previous {
                previous.held = held;
                peers.insert(peer.clone(), previous);
            }
        }
    }

    /// The client closed connection `conn` deliberately: detach its peer now (if still bound to it).
    pub fn detach_if_current(&self, peer: &PeerId, conn: u64) {
        let current = {
            let mut peers = self.lock();
            let is = peers.get(peer).is_some_and(|s| s.conn == conn);
            if is {
                peers.remove(peer);
            }
            is
        };
        if current {
            self.to_signaling(pb::node_message::Msg::Detach(pb::Detach { peer: peer.to_string() }));
        }
    }

    /// The socket of connection `conn` closed: keep the peer for the resume grace, then detach it.
    pub fn disconnected(self: &Arc<Self>, peer: &PeerId, conn: u64) {
        {
            let mut peers = self.lock();
            match peers.get_mut(peer) {
                Some(slot) if slot.conn == conn => slot.tx = None,
                _ => return,
            }
        }
        let hub = Arc::clone(self);
        let peer = peer.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hub.cfg.resume_grace).await;
            let expired = {
                let mut peers = hub.lock();
                let gone = peers.get(&peer).is_some_and(|s| s.conn == conn && s.tx.is_none());
                if gone {
                    peers.remove(&peer);
                }
                gone
            };
            if expired {
                tracing::debug!(%peer, "resume grace over; detaching");
                hub.to_signaling(pb::node_message::Msg::Detach(pb::Detach { peer: peer.to_string() }));
            }
        });
    }

    /// Records what a local peer asked signaling for (`watch`/`unwatch`/`unpublish`), so a re-assert
    /// after a directory loss carries it.
    pub fn note(&self, peer: &PeerId, change: impl FnOnce(&mut Doing)) {
        self.with_slot(peer, |slot| change(&mut slot.doing));
    }

    /// Sends to a local peer; a client whose queue passes its bound (it does not read) is closed
    /// (4008). A peer between sockets (resume grace, resume being confirmed) has it held.
    pub fn send_to(&self, peer: &PeerId, out: Out) {
        let mut peers = self.lock();
        let Some(slot) = peers.get_mut(peer) else { return };
        match &slot.tx {
            Some(tx) if !slot.resuming => tx.send(out),
            _ => slot.hold(out),
        }
    }

    /// Sends an error frame to a local peer.
    pub fn send_error(&self, peer: &PeerId, code: ErrorCode, message: &str) {
        self.send_to(peer, Out::Text(ServerFrame::Error { code, message }.to_json()));
    }

    /// Detaches every peer of this gateway now (the all-in-one's shutdown: no other gateway can
    /// take the sessions over, so their streams end instead of waiting for a resume).
    pub fn detach_all(&self) {
        let peers: Vec<PeerId> = self.lock().drain().map(|(p, _)| p).collect();
        for peer in peers {
            self.to_signaling(pb::node_message::Msg::Detach(pb::Detach { peer: peer.to_string() }));
        }
    }

    /// Closes every socket (shutdown: clients reconnect elsewhere).
    pub fn close_all(&self, code: u16, reason: &'static str) {
        for slot in self.lock().values() {
            if let Some(tx) = &slot.tx {
                tx.send(Out::Close(code, reason));
            }
        }
    }

    /// Applies one delivery from signaling to a local peer.
    pub fn deliver(&self, d: pb::Delivery) {
        use pb::delivery::Event;
        if let Some(Event::SessionReply(reply)) = d.event {
            if !self.waiting.complete(reply) {
                tracing::debug!("a WHIP/WHEP reply came after its request gave up");
            }
            return;
        }
        let Ok(to) = d.to.parse::<PeerId>() else { return };
        let Some(event) = d.event else { return };
        // The end of a traced flow (e.g. a watch, here its `watcher_joined` at the broadcaster).
        let span = if d.traceparent.is_empty() {
            tracing::Span::none()
        } else {
            let span = tracing::info_span!("gateway.deliver", peer = %to, event = event_name(&event));
            onair_ops::trace::follow(&span, &d.traceparent);
            span
        };
        let _traced = span.enter();
        // Where the peer this event is about is: `to`'s signals to it go there straight.
        let from_node = if d.from_node.is_empty() { None } else { d.from_node.parse::<NodeId>().ok() };
        let text = match event {
            Event::Signal(s) => {
                // `to` may signal the sender straight at its node; one lock also tells whether `to` is here.
                let sender = from_node.zip(s.from.parse::<PeerId>().ok());
                let here = self.with_slot(&to, |slot| {
                    if let Some((node, from)) = sender {
                        slot.routes.learn(from, node);
                    }
                });
                if here.is_none() && d.direct {
                    // Sent along a route to a peer no longer here (it resumed elsewhere): signaling
                    // knows where it went.
                    self.reroute(s);
                    return;
                }
                let kind = match pb::SignalKind::try_from(s.kind) {
                    Ok(pb::SignalKind::Offer) => SignalKind::Offer,
                    Ok(pb::SignalKind::Answer) => SignalKind::Answer,
                    Ok(pb::SignalKind::Candidate) => SignalKind::Candidate,
                    _ => return,
                };
                // Passed on as written: checked to be JSON (`null` if not), never parsed into a tree.
                let null = RawValue::NULL;
                let payload: &RawValue = serde_json::from_str(&s.payload).unwrap_or(null);
                ServerFrame::Signal { from: &s.from, kind, payload }.to_json()
            }
            Event::WatcherJoined(p) => {
                if let (Some(node), Ok(watcher)) = (from_node, p.parse::<PeerId>()) {
                    self.with_slot(&to, |slot| slot.routes.learn(watcher, node));
                }
                ServerFrame::WatcherJoined { peer: &p }.to_json()
            }
            Event::WatcherLeft(p) => {
                if let Ok(watcher) = p.parse::<PeerId>() {
                    self.with_slot(&to, |slot| slot.routes.forget(&watcher));
                }
                ServerFrame::WatcherLeft { peer: &p }.to_json()
            }
            Event::Viewers(v) => ServerFrame::Viewers { stream_id: &v.stream_id, count: v.count }.to_json(),
            Event::Error(e) => {
                ServerFrame::Error { code: ErrorCode::from_wire(&e.code), message: &e.message }.to_json()
            }
            Event::Published(stream) => match Stream::try_from(&stream) {
                Ok(stream) => {
                    tracing::info!(peer = %to, stream_id = %stream.id, "published");
                    self.note(&to, |d| d.broadcasting = Some(stream.id.clone()));
                    ServerFrame::Published { stream: &stream }.to_json()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "signaling sent a malformed stream");
                    ServerFrame::Error { code: ErrorCode::Unavailable, message: "could not go live right now; retry" }
                        .to_json()
                }
            },
            Event::Media(m) => {
                let relay = (!m.relay.is_empty()).then_some(m.relay.as_str());
                ServerFrame::Media {
                    stream_id: &m.stream_id,
                    mode: if relay.is_some() { "relay" } else { "p2p" },
                    relay,
                }
                .to_json()
            }
            // Only relay nodes get relay assignments and session requests; replies came first.
            Event::Relay(_) | Event::SessionRequest(_) | Event::SessionReply(_) => return,
            Event::Evicted(_) => {
                let Some(slot) = self.lock().remove(&to) else { return };
                if let Some(tx) = &slot.tx {
                    tx.send(Out::Close(4009, "session resumed on another connection"));
                }
                // What came for the peer while it was between sockets here follows it.
                let frames: Vec<String> = slot
                    .held
                    .into_iter()
                    .filter_map(|o| match o {
                        Out::Text(t) => Some(t),
                        Out::Close(..) => None,
                    })
                    .collect();
                if !frames.is_empty() {
                    tracing::debug!(peer = %to, frames = frames.len(), "forwarding held frames to where the peer resumed");
                    self.to_signaling(pb::node_message::Msg::Forward(pb::Forward { peer: to.to_string(), frames }));
                }
                return;
            }
            Event::Forwarded(f) => {
                for text in f.frames {
                    self.send_to(&to, Out::Text(text));
                }
                return;
            }
        };
        self.send_to(&to, Out::Text(text));
    }

    fn broadcast(&self, text: String) {
        let _ = self.fanout.send(Arc::from(text));
    }

    fn with_streams<R>(&self, f: impl FnOnce(&mut Vec<Stream>) -> R) -> R {
        let mut list = self.streams.write();
        let r = f(&mut list);
        self.metrics.live_streams.set(i64::try_from(list.len()).unwrap_or(i64::MAX));
        self.metrics.viewers.set(list.iter().map(|s| i64::from(s.viewers)).sum());
        r
    }

    /// Applies one registry change to the cached list and tells every socket. Who owns a stream
    /// (its publisher's token subject) is not everyone's business: the list leaves it out.
    pub fn apply(&self, event: FeedEvent) {
        match event {
            FeedEvent::Snapshot(mut fresh) => {
                fresh.retain(|s| s.state == onair_core::StreamState::Live);
                fresh.iter_mut().for_each(|s| s.owner.clear());
                fresh.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
                self.with_streams(|list| *list = fresh);
                self.broadcast(self.streams_frame());
            }
            FeedEvent::Change(StreamEvent::Started(mut s) | StreamEvent::Updated(mut s)) => {
                s.owner.clear();
                self.with_streams(|list| match list.iter_mut().find(|x| x.id == s.id) {
                    Some(x) => *x = s.clone(),
                    None => {
                        list.push(s.clone());
                        list.sort_by(|a, b| (b.started_at, &b.id).cmp(&(a.started_at, &a.id)));
                    }
                });
                self.broadcast(ServerFrame::StreamOn { stream: &s }.to_json());
            }
            FeedEvent::Change(StreamEvent::Ended(s)) => {
                self.with_streams(|list| list.retain(|x| x.id != s.id));
                for slot in self.lock().values_mut() {
                    let d = &mut slot.doing;
                    let mut paired = false;
                    if d.broadcasting.as_ref() == Some(&s.id) {
                        d.broadcasting = None;
                        paired = true;
                    }
                    if d.watching.as_ref() == Some(&s.id) {
                        d.watching = None;
                        paired = true;
                    }
                    if paired {
                        // Its pairings of that stream are over.
                        slot.routes.clear();
                    }
                }
                self.broadcast(ServerFrame::StreamOff { stream_id: &s.id }.to_json());
            }
        }
    }
}

/// The name of a delivery's event, for traces.
fn event_name(e: &pb::delivery::Event) -> &'static str {
    use pb::delivery::Event;
    match e {
        Event::Signal(_) => "signal",
        Event::WatcherJoined(_) => "watcher_joined",
        Event::WatcherLeft(_) => "watcher_left",
        Event::Viewers(_) => "viewers",
        Event::Error(_) => "error",
        Event::Evicted(_) => "evicted",
        Event::Published(_) => "published",
        Event::Relay(_) => "relay",
        Event::Media(_) => "media",
        Event::SessionRequest(_) => "session_request",
        Event::SessionReply(_) => "session_reply",
        Event::Forwarded(_) => "forwarded",
    }
}

impl NodeHandler for Hub {
    fn link(&self) -> &NodeLink {
        &self.cfg.link
    }
    fn node_event(&self, ev: pb::NodeEvent) {
        if self.waiting.fail(&ev.peer, &ev.code, &ev.message) {
            return;
        }
        if let Ok(peer) = ev.peer.parse() {
            self.send_error(&peer, ErrorCode::from_wire(&ev.code), &ev.message);
        }
    }
    fn deliver(&self, d: pb::Delivery) {
        Hub::deliver(self, d);
    }
    fn stream_event(self: &Arc<Self>, event: FeedEvent) {
        self.apply(event);
    }
    fn peer_states(&self) -> Vec<pb::PeerState> {
        let s = |o: &Option<StreamId>| o.as_ref().map(ToString::to_string).unwrap_or_default();
        self.lock()
            .iter()
            .map(|(peer, slot)| pb::PeerState {
                peer: peer.to_string(),
                resume_token: slot.token.clone(),
                broadcasting: s(&slot.doing.broadcasting),
                watching: s(&slot.doing.watching),
                relaying: String::new(),
            })
            .collect()
    }
}

/// What a peer broadcasts and watches, as far as its gateway knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Doing {
    /// The stream it broadcasts.
    pub broadcasting: Option<StreamId>,
    /// The stream it watches.
    pub watching: Option<StreamId>,
}
