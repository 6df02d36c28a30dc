//! Direct routes: a local peer's signals go straight to the node of the peer they are for, one
//! bus `PUBLISH`, without a trip through signaling. A route is only learnt from what signaling
//! delivered (a `watcher_joined` naming the watcher's node, a signal naming its sender's), or from
//! a signal that came along such a route, so a peer reaches only peers signaling paired it with;
//! it is forgotten when the pairing ends (`watcher_left`, the peer's own watch/unwatch/publish/
//! unpublish, its stream ending) and when its node no longer listens (then signaling routes that
//! signal and parks it for the peer). A node that no longer holds the recipient (it resumed
//! elsewhere) hands a direct signal to signaling, which knows where it went.

use std::sync::Arc;

use bytes::Bytes;
use onair_core::{Bus, NodeId, PeerId};
use onair_proto::v1 as pb;
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::protocol::ErrorCode;

/// Most routes one peer keeps (a broadcaster sending peer to peer has one per watcher); past it,
/// its signals to new peers go through signaling, which is always right, only slower.
pub const MAX_ROUTES: usize = 512;

/// Signals queued for the direct sender; past it, they go through signaling.
const QUEUE: usize = 8192;

/// Signals published together (their `PUBLISH`es share the Redis connection's writes).
const BATCH: usize = 128;

/// One local peer's routes: the node of each peer it may signal directly.
#[derive(Debug, Default)]
pub struct Routes(Vec<(PeerId, NodeId)>);

impl Routes {
    /// The node `peer` is on, if known.
    pub fn get(&self, peer: &PeerId) -> Option<&NodeId> {
        self.0.iter().find(|(p, _)| p == peer).map(|(_, n)| n)
    }

    /// `peer` is on `node` (a move updates it); ignored past [`MAX_ROUTES`].
    pub fn learn(&mut self, peer: PeerId, node: NodeId) {
        if let Some(e) = self.0.iter_mut().find(|(p, _)| *p == peer) {
            e.1 = node;
        } else if self.0.len() < MAX_ROUTES {
            self.0.push((peer, node));
        }
    }

    /// No route to `peer` any more.
    pub fn forget(&mut self, peer: &PeerId) {
        self.0.retain(|(p, _)| p != peer);
    }

    /// No routes at all.
    pub fn clear(&mut self) {
        self.0 = Vec::new();
    }
}

/// Direct-route metrics.
#[derive(Debug, Clone, Default)]
pub struct RouteMetrics {
    /// Signals published straight to the recipient's node.
    pub direct: Counter,
    /// Signals that went to signaling instead: their route's node no longer listened, or no
    /// longer held the recipient (it moved).
    pub rerouted: Counter,
}

impl RouteMetrics {
    /// Registers into `m`.
    pub fn register(&self, m: &onair_ops::Metrics) {
        m.register(
            "gateway_signals_direct",
            "Signals published straight to the recipient's node along a direct route (not through signaling)",
            self.direct.clone(),
        );
        m.register(
            "gateway_signals_rerouted",
            "Signals handed to signaling after their direct route failed (node gone or draining, recipient moved)",
            self.rerouted.clone(),
        );
    }
}

/// A signal for the direct sender.
#[derive(Debug)]
pub struct Direct {
    /// Where the recipient is.
    pub node: NodeId,
    /// The signal (`from` stamped by this gateway).
    pub signal: pb::Signal,
}

/// The queue of the direct sender task.
#[derive(Debug, Clone)]
pub struct DirectTx(mpsc::Sender<Direct>);

impl DirectTx {
    /// A queue and its receiving end, for [`run`].
    pub fn new() -> (Self, mpsc::Receiver<Direct>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self(tx), rx)
    }

    /// Queues `d`; gives it back when the queue is full.
    pub fn send(&self, d: Direct) -> Result<(), Direct> {
        self.0.try_send(d).map_err(|e| e.into_inner())
    }
}

/// The delivery a direct signal is published as, for the node named in it.
fn delivery(from_node: &NodeId, signal: pb::Signal) -> pb::Delivery {
    pb::Delivery {
        to: signal.to.clone(),
        event: Some(pb::delivery::Event::Signal(signal)),
        traceparent: String::new(),
        from_node: from_node.to_string(),
        direct: true,
    }
}

/// The signal of an encoded delivery.
fn signal_of(bytes: &[u8]) -> Option<pb::Signal> {
    match pb::Delivery::decode(bytes).ok()?.event? {
        pb::delivery::Event::Signal(s) => Some(s),
        _ => None,
    }
}

/// Publishes queued direct signals in order, a batch at a time, until `stop` fires and the queue
/// is empty. A signal whose node no longer listens goes to signaling (which parks it for the peer)
/// and its route is forgotten; a bus failure is the sender's `error{unavailable}`, as signaling
/// would answer.
pub async fn run(hub: Arc<Hub>, bus: Arc<dyn Bus>, mut rx: mpsc::Receiver<Direct>, stop: CancellationToken) {
    let node = hub.node().clone();
    let mut batch: Vec<Direct> = Vec::with_capacity(BATCH);
    let mut sent: Vec<(String, Bytes)> = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, BATCH) => n,
            () = stop.cancelled() => 0,
        };
        if n == 0 {
            break;
        }
        sent.extend(
            batch.drain(..).map(|d| (d.node.channel(), Bytes::from(delivery(&node, d.signal).encode_to_vec()))),
        );
        // Every PUBLISH is queued on the one Redis connection before any answer is awaited: in order,
        // and written together.
        let results =
            futures::future::join_all(sent.iter().map(|(channel, bytes)| bus.publish_counted(channel, bytes.clone())))
                .await;
        for ((_, bytes), result) in sent.drain(..).zip(results) {
            if matches!(result, Ok(n) if n != Some(0)) {
                hub.route_metrics.direct.inc();
                continue;
            }
            // Rare: the signal is read back from what was published.
            let Some(signal) = signal_of(&bytes) else { continue };
            match result {
                Err(e) => {
                    tracing::debug!(error = %e, "direct signal not published");
                    if let Ok(from) = signal.from.parse::<PeerId>() {
                        hub.send_error(&from, ErrorCode::Unavailable, "signaling state unavailable");
                    }
                }
                Ok(_) => hub.reroute(signal),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u8) -> PeerId {
        format!("{i:032x}").parse().unwrap()
    }

    fn node(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    #[test]
    fn routes_are_learnt_moved_forgotten_and_bounded() {
        let mut r = Routes::default();
        assert_eq!(r.get(&peer(1)), None);
        r.learn(peer(1), node("gw-a"));
        r.learn(peer(2), node("gw-b"));
        assert_eq!(r.get(&peer(1)), Some(&node("gw-a")));
        r.learn(peer(1), node("gw-c"));
        assert_eq!(r.get(&peer(1)), Some(&node("gw-c")), "a peer that moved");
        r.forget(&peer(1));
        assert_eq!(r.get(&peer(1)), None);
        assert_eq!(r.get(&peer(2)), Some(&node("gw-b")));
        r.clear();
        assert_eq!(r.get(&peer(2)), None);
        for i in 0..=u8::MAX {
            r.learn(format!("{i:030x}ff").parse().unwrap(), node("gw-a"));
        }
        for i in 0..=u8::MAX {
            r.learn(format!("{i:030x}ee").parse().unwrap(), node("gw-a"));
        }
        r.learn(peer(3), node("gw-a"));
        assert_eq!(r.0.len(), MAX_ROUTES);
        assert_eq!(r.get(&peer(3)), None, "no new route past the bound");
    }

    #[test]
    fn a_direct_delivery_names_its_sender_node_and_says_it_is_direct() {
        let s = pb::Signal { from: peer(1).to_string(), to: peer(2).to_string(), kind: 3, payload: "{}".into() };
        let d = delivery(&node("gw-a"), s.clone());
        assert_eq!((d.to.as_str(), d.from_node.as_str(), d.direct), (s.to.as_str(), "gw-a", true));
        assert_eq!(d.event, Some(pb::delivery::Event::Signal(s)));
    }
}
