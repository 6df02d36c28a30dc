//! The client side of being a signaling node. Gateways and recorders both hold
//! peers: each keeps one ordered `NodeStream` to signaling, heartbeats, listens
//! on its bus channel `onair:node:{node}`, and follows the registry's change
//! feed. Every link reconnects with backoff until its token fires; what arrives
//! goes to the node's [`NodeHandler`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use onair_auth::{Credentials, Upstream};
use onair_core::{Bus, BusItem, NodeId};
use onair_ops::{ReadyCheck, ServeError};
use onair_proto::convert::FeedEvent;
use onair_proto::v1 as pb;
use onair_proto::v1::signaling_client::SignalingClient;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// Heartbeat period; signaling's presence TTL is a few of these.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// What a node does with what its links receive.
pub trait NodeHandler: Send + Sync + 'static {
    /// The node's link (id, queue to signaling, link health).
    fn link(&self) -> &NodeLink;
    /// Signaling refused a request of one of this node's peers.
    fn node_event(&self, ev: pb::NodeEvent);
    /// A delivery for one of this node's peers.
    fn deliver(&self, d: pb::Delivery);
    /// A registry change (the first one after each (re)connect is a snapshot).
    fn stream_event(self: &Arc<Self>, event: FeedEvent);
    /// Every peer this node holds and what it does, for signaling to rebuild the directory from
    /// when it lost it (a heartbeat answered `reassert`).
    fn peer_states(&self) -> Vec<pb::PeerState>;
    /// A relay node's load, sent with every heartbeat (`None`: this node relays nothing).
    fn relay_load(&self) -> Option<pb::RelayLoad> {
        None
    }
}

/// Health of a node's two upstream links, for readiness.
#[derive(Debug, Default)]
pub struct LinkState {
    /// The NodeStream to signaling is open.
    pub signaling_up: AtomicBool,
    /// The registry's WatchStreams is flowing.
    pub feed_up: AtomicBool,
}

impl LinkState {
    /// `Ok` when both links are up; otherwise which one is down.
    pub fn check(&self) -> Result<(), String> {
        match (self.signaling_up.load(Ordering::SeqCst), self.feed_up.load(Ordering::SeqCst)) {
            (true, true) => Ok(()),
            (false, _) => Err("signaling link down".into()),
            (_, false) => Err("registry feed down".into()),
        }
    }
}

/// How many messages may wait for the NodeStream before new ones are dropped (with a warning).
const OUTBOX_CAPACITY: usize = 8192;

/// A node's side of signaling: its id, the ordered queue of messages for its NodeStream,
/// and the health of its links. Owned by the node's state; the link tasks drain the queue.
/// Clones share the queue and the health.
#[derive(Debug, Clone)]
pub struct NodeLink {
    node: NodeId,
    tx: mpsc::Sender<pb::NodeMessage>,
    state: Arc<LinkState>,
}

/// The receiving end of a [`NodeLink`]'s queue, handed to [`Links::spawn`].
#[derive(Debug)]
pub struct Outbox(mpsc::Receiver<pb::NodeMessage>);

impl NodeLink {
    /// The link of node `node` and the queue its NodeStream task drains.
    pub fn new(node: NodeId) -> (Self, Outbox) {
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        (Self { node, tx, state: Arc::default() }, Outbox(rx))
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Link health.
    pub fn state(&self) -> &LinkState {
        &self.state
    }

    /// Queues a message for signaling; messages go out in the order they were queued.
    pub fn send(&self, msg: pb::node_message::Msg) {
        self.send_traced(msg, String::new());
    }

    /// Like [`NodeLink::send`], as part of the trace `traceparent` names (see `onair_ops::trace`).
    pub fn send_traced(&self, msg: pb::node_message::Msg, traceparent: String) {
        let m = pb::NodeMessage { node: self.node.to_string(), msg: Some(msg), traceparent };
        if self.tx.try_send(m).is_err() {
            tracing::warn!("signaling queue full; message dropped");
        }
    }
}

/// Readiness of a node: its signaling link and registry feed are both up.
pub fn ready_check<H: NodeHandler>(h: &Arc<H>) -> ReadyCheck {
    let h = Arc::clone(h);
    ReadyCheck::from_fn("upstreams", move || std::future::ready(h.link().state().check()))
}

/// The running link tasks of a node (NodeStream, heartbeats, bus deliveries).
pub struct Links {
    cancel: CancellationToken,
    deliveries: CancellationToken,
    bus: Arc<dyn Bus>,
    channel: String,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").field("channel", &self.channel).finish_non_exhaustive()
    }
}

impl Links {
    /// Starts the NodeStream (draining `outbox` in order), the heartbeat and the bus subscription
    /// of node `h`. They run until [`Links::close`].
    pub fn spawn<H: NodeHandler>(
        h: &Arc<H>,
        outbox: Outbox,
        signaling: SignalingClient<Upstream>,
        bus: Arc<dyn Bus>,
    ) -> Self {
        let cancel = CancellationToken::new();
        let deliveries_cancel = cancel.child_token();
        let mut tasks = JoinSet::new();
        tasks.spawn(signaling_link(Arc::clone(h), signaling.clone(), outbox.0, cancel.clone()));
        tasks.spawn(heartbeat(Arc::clone(h), signaling, cancel.clone()));
        tasks.spawn(deliveries(Arc::clone(h), Arc::clone(&bus), deliveries_cancel.clone()));
        let channel = h.link().node().channel();
        Self { cancel, deliveries: deliveries_cancel, bus, channel, tasks }
    }

    /// Stops listening on the node's bus channel (a draining node, before it lets its peers go):
    /// what signaling routes here from now on reaches nobody, so signaling parks it for the peers
    /// to pick up on the node they resume on.
    pub async fn stop_deliveries(&self) {
        self.deliveries.cancel();
        if let Err(e) = self.bus.unsubscribe(&self.channel).await {
            tracing::warn!(error = %e, "could not unsubscribe the node channel");
        }
    }

    /// Stops the links; what is already queued for signaling still goes out first.
    pub async fn close(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A lazily connecting gRPC channel with short connect timeouts and keepalives, sending `credentials`
/// (the cluster secret) on every call.
pub fn lazy_channel(url: &str, credentials: &Credentials) -> Result<Upstream, ServeError> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .connect_lazy();
    Ok(credentials.on(channel))
}

struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(100))
    }
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }
    fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
}

/// Keeps one NodeStream open to signaling and forwards `rx` into it, in order. At shutdown,
/// what is already queued (final detaches) still goes out before the stream closes.
async fn signaling_link<H: NodeHandler>(
    h: Arc<H>,
    signaling: SignalingClient<Upstream>,
    mut rx: mpsc::Receiver<pb::NodeMessage>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new();
    let node = h.link().node().to_string();
    let hello = || pb::NodeMessage {
        node: node.clone(),
        msg: Some(pb::node_message::Msg::Hello(pb::Hello {})),
        ..Default::default()
    };
    loop {
        let (itx, irx) = mpsc::channel::<pb::NodeMessage>(1024);
        let _ = itx.send(hello()).await;
        match signaling.clone().node_stream(ReceiverStream::new(irx)).await {
            Ok(resp) => {
                h.link().state().signaling_up.store(true, Ordering::SeqCst);
                backoff.reset();
                tracing::info!("signaling link up");
                let mut events = resp.into_inner();
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            while let Ok(m) = rx.try_recv() {
                                if itx.send(m).await.is_err() { break }
                            }
                            drop(itx);
                            // Signaling handles a node's messages in order and ends the response
                            // stream after the last one: wait for that (bounded).
                            let drained = async { while let Ok(Some(ev)) = events.message().await { h.node_event(ev) } };
                            let _ = tokio::time::timeout(Duration::from_secs(2), drained).await;
                            h.link().state().signaling_up.store(false, Ordering::SeqCst);
                            return;
                        }
                        m = rx.recv() => match m {
                            Some(m) => if itx.send(m).await.is_err() { break },
                            None => return,
                        },
                        ev = events.message() => match ev {
                            Ok(Some(ev)) => h.node_event(ev),
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "signaling link failed");
                                break;
                            }
                        },
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "signaling unreachable"),
        }
        h.link().state().signaling_up.store(false, Ordering::SeqCst);
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

/// Tells signaling this node is alive, every [`HEARTBEAT_EVERY`]; when signaling answers that the
/// directory did not know the node (Redis came back empty), re-asserts every peer through the
/// NodeStream, behind whatever is already queued.
///
/// The first heartbeat that succeeds after a failed one re-asserts too: a failed heartbeat may
/// still have reached a Redis that came back empty (its client replays queued commands after a
/// reconnect), so the directory would know the node again, answer `reassert: false`, and never
/// learn its peers. Re-asserting is idempotent (signaling skips the peers it still knows).
async fn heartbeat<H: NodeHandler>(h: Arc<H>, signaling: SignalingClient<Upstream>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    let mut failed = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let req = pb::HeartbeatRequest { node: h.link().node().to_string(), relay: h.relay_load() };
        match signaling.clone().heartbeat(req).await {
            Ok(r) if r.get_ref().reassert || failed => {
                failed = false;
                let peers = h.peer_states();
                tracing::info!(peers = peers.len(), "signaling may have lost this node's peers; re-asserting them");
                h.link().send(pb::node_message::Msg::Reassert(pb::Reassert { peers }));
            }
            Ok(_) => {}
            Err(e) => {
                failed = true;
                tracing::debug!(error = %e, "heartbeat failed");
            }
        }
    }
}

/// After a bus gap, how long a node waits before it re-asserts (its subscription is re-made after
/// the reconnect it learns of), and the least time between two such re-assertions (a lagging
/// subscriber gaps often; the gaps in between are covered by the next one).
const GAP_REASSERT_AFTER: Duration = Duration::from_millis(250);
const GAP_REASSERT_EVERY: Duration = Duration::from_secs(2);

/// Receives this node's deliveries from the bus. After a gap (the subscription reconnected, or
/// lagged), re-asserts the node's peers: signaling then hands over what it parked for them while
/// nobody listened here.
async fn deliveries<H: NodeHandler>(h: Arc<H>, bus: Arc<dyn Bus>, shutdown: CancellationToken) {
    let channel = h.link().node().channel();
    let mut backoff = Backoff::new();
    let mut last_reassert: Option<tokio::time::Instant> = None;
    let mut reassert_at: Option<tokio::time::Instant> = None;
    loop {
        match bus.subscribe(&channel).await {
            Ok(mut sub) => {
                backoff.reset();
                loop {
                    let due = async {
                        match reassert_at {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    };
                    let item = tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = due => {
                            reassert_at = None;
                            last_reassert = Some(tokio::time::Instant::now());
                            let peers = h.peer_states();
                            h.link().send(pb::node_message::Msg::Reassert(pb::Reassert { peers }));
                            continue;
                        }
                        item = sub.recv() => item,
                    };
                    match item {
                        Some(BusItem::Message(payload)) => match pb::Delivery::decode(payload) {
                            Ok(d) => h.deliver(d),
                            Err(e) => tracing::warn!(error = %e, "undecodable delivery"),
                        },
                        Some(BusItem::Gap) => {
                            tracing::warn!("deliveries may have been lost (bus gap)");
                            let soonest = tokio::time::Instant::now() + GAP_REASSERT_AFTER;
                            let allowed = last_reassert.map_or(soonest, |t| (t + GAP_REASSERT_EVERY).max(soonest));
                            reassert_at.get_or_insert(allowed);
                        }
                        None => break,
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to the node channel"),
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

/// Follows the registry's WatchStreams and hands every event to the node.
pub async fn registry_feed<H: NodeHandler>(
    h: Arc<H>,
    registry: StreamRegistryClient<Upstream>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new();
    loop {
        let mut client = registry.clone();
        let call = tokio::select! {
            () = shutdown.cancelled() => return,
            call = client.watch_streams(pb::WatchStreamsRequest {}) => call,
        };
        match call {
            Ok(resp) => {
                let mut events = resp.into_inner();
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        ev = events.message() => match ev {
                            Ok(Some(pb::StreamEvent { event: Some(e) })) => {
                                h.link().state().feed_up.store(true, Ordering::SeqCst);
                                backoff.reset();
                                match FeedEvent::try_from(e) {
                                    Ok(e) => h.stream_event(e),
                                    Err(e) => tracing::warn!(error = %e, "malformed registry event ignored"),
                                }
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "registry feed failed");
                                break;
                            }
                        },
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "registry unreachable"),
        }
        h.link().state().feed_up.store(false, Ordering::SeqCst);
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}
