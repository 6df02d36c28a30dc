//! The client side of being a signaling node. Gateways and recorders both hold
//! peers: each keeps one ordered `NodeStream` to signaling, heartbeats, listens
//! on its bus channel `onair:node:{node}`, and follows the registry's change
//! feed. Every link reconnects with backoff until its token fires; what arrives
//! goes to the node's [`NodeHandler`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use onair_core::{Bus, BusItem, NodeId};
use onair_proto::v1 as pb;
use onair_proto::v1::signaling_client::SignalingClient;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Heartbeat period; signaling's presence TTL is a few of these.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// What a node does with what its links receive.
pub trait NodeHandler: Send + Sync + 'static {
    /// This node's id.
    fn node(&self) -> &NodeId;
    /// Where link health is recorded.
    fn links(&self) -> &LinkState;
    /// Signaling refused a request of one of this node's peers.
    fn node_event(&self, ev: pb::NodeEvent);
    /// A delivery for one of this node's peers.
    fn deliver(&self, d: pb::Delivery);
    /// A registry change (the first one after each (re)connect is a snapshot).
    fn stream_event(self: &Arc<Self>, event: pb::stream_event::Event);
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

/// A lazily connecting gRPC channel with short connect timeouts and keepalives.
pub fn lazy_channel(url: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .connect_lazy())
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
pub async fn signaling_link<H: NodeHandler>(
    h: Arc<H>,
    signaling: SignalingClient<Channel>,
    mut rx: mpsc::Receiver<pb::NodeMessage>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new();
    let node = h.node().to_string();
    let hello = || pb::NodeMessage { node: node.clone(), msg: Some(pb::node_message::Msg::Hello(pb::Hello {})) };
    loop {
        let (itx, irx) = mpsc::channel::<pb::NodeMessage>(1024);
        let _ = itx.send(hello()).await;
        match signaling.clone().node_stream(ReceiverStream::new(irx)).await {
            Ok(resp) => {
                h.links().signaling_up.store(true, Ordering::SeqCst);
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
                            let _ = tokio::time::timeout(Duration::from_millis(500), events.message()).await;
                            h.links().signaling_up.store(false, Ordering::SeqCst);
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
        h.links().signaling_up.store(false, Ordering::SeqCst);
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

/// Tells signaling this node is alive, every [`HEARTBEAT_EVERY`].
pub async fn heartbeat<H: NodeHandler>(h: Arc<H>, signaling: SignalingClient<Channel>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let req = pb::HeartbeatRequest { node: h.node().to_string() };
        if let Err(e) = signaling.clone().heartbeat(req).await {
            tracing::debug!(error = %e, "heartbeat failed");
        }
    }
}

/// Receives this node's deliveries from the bus.
pub async fn deliveries<H: NodeHandler>(h: Arc<H>, bus: Arc<dyn Bus>, shutdown: CancellationToken) {
    let channel = format!("onair:node:{}", h.node());
    let mut backoff = Backoff::new();
    loop {
        match bus.subscribe(&channel).await {
            Ok(mut sub) => {
                backoff.reset();
                loop {
                    let item = tokio::select! {
                        () = shutdown.cancelled() => return,
                        item = sub.recv() => item,
                    };
                    match item {
                        Some(BusItem::Message(payload)) => match pb::Delivery::decode(payload) {
                            Ok(d) => h.deliver(d),
                            Err(e) => tracing::warn!(error = %e, "undecodable delivery"),
                        },
                        Some(BusItem::Gap) => tracing::warn!("deliveries may have been lost (bus gap)"),
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
    registry: StreamRegistryClient<Channel>,
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
                                h.links().feed_up.store(true, Ordering::SeqCst);
                                backoff.reset();
                                h.stream_event(e);
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
        h.links().feed_up.store(false, Ordering::SeqCst);
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}
