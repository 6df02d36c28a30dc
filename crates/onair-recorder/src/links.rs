//! The recorder's long-lived links, exactly like a gateway node's: the NodeStream
//! to signaling, heartbeats, its own bus channel `onair:node:{node}`, and the
//! registry change feed. Each reconnects with backoff until its token fires.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use onair_core::{Bus, BusItem};
use onair_proto::v1 as pb;
use onair_proto::v1::signaling_client::SignalingClient;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::hub::Hub;

/// Heartbeat period; signaling's presence TTL is a few of these.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

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

/// Keeps one NodeStream open to signaling and forwards `rx` into it, in order.
pub async fn signaling_link(
    hub: Arc<Hub>,
    signaling: SignalingClient<Channel>,
    mut rx: mpsc::Receiver<pb::NodeMessage>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new();
    let node = hub.config.node.to_string();
    let hello = || pb::NodeMessage { node: node.clone(), msg: Some(pb::node_message::Msg::Hello(pb::Hello {})) };
    loop {
        let (itx, irx) = mpsc::channel::<pb::NodeMessage>(1024);
        let _ = itx.send(hello()).await;
        match signaling.clone().node_stream(ReceiverStream::new(irx)).await {
            Ok(resp) => {
                hub.links.signaling_up.store(true, Ordering::SeqCst);
                backoff.reset();
                tracing::info!("signaling link up");
                let mut events = resp.into_inner();
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            // Let queued messages (final Detaches) go out before closing.
                            while let Ok(m) = rx.try_recv() {
                                if itx.send(m).await.is_err() { break }
                            }
                            drop(itx);
                            let _ = tokio::time::timeout(Duration::from_millis(500), events.message()).await;
                            hub.links.signaling_up.store(false, Ordering::SeqCst);
                            return;
                        }
                        m = rx.recv() => match m {
                            Some(m) => if itx.send(m).await.is_err() { break },
                            None => return,
                        },
                        ev = events.message() => match ev {
                            Ok(Some(ev)) => hub.node_event(ev),
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
        hub.links.signaling_up.store(false, Ordering::SeqCst);
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

/// Tells signaling this node is alive, every [`HEARTBEAT_EVERY`].
pub async fn heartbeat(hub: Arc<Hub>, signaling: SignalingClient<Channel>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let req = pb::HeartbeatRequest { node: hub.config.node.to_string() };
        if let Err(e) = signaling.clone().heartbeat(req).await {
            tracing::debug!(error = %e, "heartbeat failed");
        }
    }
}

/// Receives this node's deliveries from the bus and routes them to sessions.
pub async fn deliveries(hub: Arc<Hub>, bus: Arc<dyn Bus>, shutdown: CancellationToken) {
    let channel = format!("onair:node:{}", hub.config.node);
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
                            Ok(d) => hub.deliver(d),
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

/// Follows the registry's WatchStreams and applies it to the hub.
pub async fn registry_feed(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new();
    loop {
        let mut client = hub.catalog.client();
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
                                hub.links.feed_up.store(true, Ordering::SeqCst);
                                backoff.reset();
                                hub.apply_feed(e);
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
        hub.links.feed_up.store(false, Ordering::SeqCst);
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}
