//! The relay as a signaling node: turns deliveries for its relay peers into engine commands,
//! remembers which stream each relay peer carries (to re-assert and to drop ended streams), and
//! reports its load with every heartbeat.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use onair_core::{PeerId, StreamEvent, StreamId};
use onair_node::NodeLink;
use onair_proto::convert::FeedEvent;
use onair_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::engine::Command;
use crate::metrics::RelayMetrics;

/// One stream this relay carries.
#[derive(Debug, Clone)]
struct Assigned {
    stream: StreamId,
}

/// The relay node.
pub struct Hub {
    link: NodeLink,
    commands: mpsc::Sender<Command>,
    assigned: Mutex<HashMap<PeerId, Assigned>>,
    accepting: AtomicBool,
    metrics: RelayMetrics,
}

impl Hub {
    /// A hub driving the engine through `commands`.
    pub fn new(link: NodeLink, commands: mpsc::Sender<Command>, metrics: RelayMetrics) -> Arc<Self> {
        Arc::new(Self {
            link,
            commands,
            assigned: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            metrics,
        })
    }

    fn command(&self, c: Command) {
        if self.commands.try_send(c).is_err() {
            tracing::warn!("relay engine busy; signaling message dropped");
        }
    }

    /// Stops taking streams and gives the current ones back to signaling (which moves them on).
    pub fn drain(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        let peers: Vec<PeerId> = self.assigned.lock().drain().map(|(p, _)| p).collect();
        for relay in peers {
            self.command(Command::Drop { relay: relay.clone() });
            self.link.send(pb::node_message::Msg::Detach(pb::Detach { peer: relay.to_string() }));
        }
    }

    fn drop_relay(&self, relay: &PeerId) {
        if self.assigned.lock().remove(relay).is_some() {
            self.command(Command::Drop { relay: relay.clone() });
        }
    }

    fn deliver(&self, d: pb::Delivery) {
        use pb::delivery::Event;
        let Ok(relay) = d.to.parse::<PeerId>() else { return };
        match d.event {
            Some(Event::Relay(a)) => {
                let (Ok(stream), Ok(broadcaster)) = (a.stream_id.parse::<StreamId>(), a.broadcaster.parse::<PeerId>())
                else {
                    return;
                };
                if !self.accepting.load(Ordering::SeqCst) {
                    self.link.send(pb::node_message::Msg::Detach(pb::Detach { peer: relay.to_string() }));
                    return;
                }
                tracing::info!(%stream, %relay, %broadcaster, "relaying stream");
                self.assigned.lock().insert(relay.clone(), Assigned { stream: stream.clone() });
                self.command(Command::Assign { relay, stream, broadcaster });
            }
            Some(Event::Signal(s)) => {
                let Ok(from) = s.from.parse::<PeerId>() else { return };
                if !self.assigned.lock().contains_key(&relay) {
                    return;
                }
                let kind = pb::SignalKind::try_from(s.kind).unwrap_or(pb::SignalKind::Unspecified);
                self.command(Command::Signal { relay, from, kind, payload: s.payload });
            }
            Some(Event::WatcherJoined(w)) => {
                let Ok(watcher) = w.parse::<PeerId>() else { return };
                if self.assigned.lock().contains_key(&relay) {
                    self.command(Command::Subscribe { relay, watcher });
                }
            }
            Some(Event::WatcherLeft(w)) => {
                if let Ok(watcher) = w.parse::<PeerId>() {
                    self.command(Command::Unsubscribe { relay, watcher });
                }
            }
            Some(Event::Evicted(_)) => self.drop_relay(&relay),
            Some(Event::Error(e)) => tracing::debug!(%relay, code = %e.code, message = %e.message, "signaling refused"),
            _ => {}
        }
    }
}

impl onair_node::NodeHandler for Hub {
    fn link(&self) -> &NodeLink {
        &self.link
    }
    fn node_event(&self, ev: pb::NodeEvent) {
        tracing::debug!(peer = %ev.peer, code = %ev.code, message = %ev.message, "signaling refused a relay message");
    }
    fn deliver(&self, d: pb::Delivery) {
        Hub::deliver(self, d);
    }
    fn stream_event(self: &Arc<Self>, event: FeedEvent) {
        let ended: Vec<PeerId> = {
            let assigned = self.assigned.lock();
            match &event {
                FeedEvent::Snapshot(live) => assigned
                    .iter()
                    .filter(|(_, a)| !live.iter().any(|s| s.id == a.stream))
                    .map(|(p, _)| p.clone())
                    .collect(),
                FeedEvent::Change(StreamEvent::Ended(s)) => {
                    assigned.iter().filter(|(_, a)| a.stream == s.id).map(|(p, _)| p.clone()).collect()
                }
                FeedEvent::Change(_) => Vec::new(),
            }
        };
        for relay in ended {
            self.drop_relay(&relay);
        }
    }
    fn peer_states(&self) -> Vec<pb::PeerState> {
        self.assigned
            .lock()
            .iter()
            .map(|(peer, a)| pb::PeerState {
                peer: peer.to_string(),
                resume_token: String::new(),
                broadcasting: String::new(),
                watching: String::new(),
                relaying: a.stream.to_string(),
            })
            .collect()
    }
    fn relay_load(&self) -> Option<pb::RelayLoad> {
        // The engine keeps the subscriber gauge; the streams are the ones this node was assigned.
        let streams = u32::try_from(self.assigned.lock().len()).unwrap_or(u32::MAX);
        Some(pb::RelayLoad {
            subscribers: u32::try_from(self.metrics.subscribers.get()).unwrap_or(0),
            streams,
            accepting: self.accepting.load(Ordering::SeqCst),
        })
    }
}
