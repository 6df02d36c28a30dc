//! Presence and membership for signaling: which node holds each peer, who
//! broadcasts and who watches which stream, and which nodes are alive. In the
//! cluster it lives in Redis (`onair-redis`), in one process in [`MemoryDirectory`].

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};

use async_trait::async_trait;

use crate::ids::{NodeId, PeerId, StreamId};

/// A directory failure.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The backend (Redis) cannot be reached.
    #[error("directory unavailable: {0}")]
    Unavailable(String),
}

/// What the directory knows about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// The node holding its socket.
    pub node: NodeId,
    /// The secret it must show to resume.
    pub token: String,
    /// The stream it broadcasts.
    pub broadcasting: Option<StreamId>,
    /// The stream it watches.
    pub watching: Option<StreamId>,
    /// The stream it relays (a peer signaling created on a relay node).
    pub relaying: Option<StreamId>,
}

/// A relay node that takes streams, and how busy it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayNode {
    /// The node.
    pub node: NodeId,
    /// Subscribers it forwards to now.
    pub subscribers: u32,
    /// Streams it relays now.
    pub streams: u32,
}

/// Presence and membership store. Every method is a small atomic step; the
/// signaling service composes them.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// Registers a new peer on `node`.
    async fn attach(&self, peer: &PeerId, node: &NodeId, token: &str) -> Result<(), DirectoryError>;
    /// One peer, read from the backend itself.
    async fn peer(&self, peer: &PeerId) -> Result<Option<PeerRecord>, DirectoryError>;
    /// One peer, possibly from a cache kept exact by invalidations (which may lag another replica's
    /// write by a moment): for the signal hot path only, which re-reads with [`Directory::peer`]
    /// before refusing. Every decision that changes state reads [`Directory::peer`].
    async fn peer_cached(&self, peer: &PeerId) -> Result<Option<PeerRecord>, DirectoryError> {
        self.peer(peer).await
    }
    /// Moves a peer to another node (resume).
    async fn move_peer(&self, peer: &PeerId, from: &NodeId, to: &NodeId) -> Result<(), DirectoryError>;
    /// Forgets a peer.
    async fn remove_peer(&self, peer: &PeerId, node: &NodeId) -> Result<(), DirectoryError>;
    /// Sets or clears the stream a peer broadcasts (and the stream → broadcaster link).
    async fn set_broadcasting(
        &self,
        peer: &PeerId,
        stream: Option<&StreamId>,
        previous: Option<&StreamId>,
    ) -> Result<(), DirectoryError>;
    /// The broadcaster of a live stream.
    async fn broadcaster(&self, stream: &StreamId) -> Result<Option<PeerId>, DirectoryError>;
    /// Sets or clears the stream a peer watches.
    async fn set_watching(&self, peer: &PeerId, stream: Option<&StreamId>) -> Result<(), DirectoryError>;
    /// Adds a watcher; returns the watcher count.
    async fn add_watcher(&self, stream: &StreamId, peer: &PeerId) -> Result<u32, DirectoryError>;
    /// Removes a watcher; returns the watcher count.
    async fn remove_watcher(&self, stream: &StreamId, peer: &PeerId) -> Result<u32, DirectoryError>;
    /// A stream's watchers.
    async fn watchers(&self, stream: &StreamId) -> Result<Vec<PeerId>, DirectoryError>;
    /// Removes a stream's membership; returns its watchers.
    async fn clear_stream(&self, stream: &StreamId) -> Result<Vec<PeerId>, DirectoryError>;
    /// Records that `node` is alive at `now_ms`; `false` if the directory did not know the node (it is
    /// new, was reaped, or the directory lost its data).
    async fn heartbeat(&self, node: &NodeId, now_ms: i64) -> Result<bool, DirectoryError>;
    /// Makes `relay` the media source of `stream` (or forgets the stream's relay), and marks the
    /// relay peer as relaying it.
    async fn set_relay(&self, stream: &StreamId, relay: Option<&PeerId>) -> Result<(), DirectoryError>;
    /// The relay peer of a stream, if it has one.
    async fn relay(&self, stream: &StreamId) -> Result<Option<PeerId>, DirectoryError>;
    /// Records a relay node's load at `now_ms` (`None`: it takes no new streams).
    async fn relay_load(&self, node: &NodeId, load: Option<(u32, u32)>, now_ms: i64) -> Result<(), DirectoryError>;
    /// Relay nodes that reported since `since_ms` and take new streams.
    async fn relay_nodes(&self, since_ms: i64) -> Result<Vec<RelayNode>, DirectoryError>;
    /// Nodes whose last heartbeat is older than `before_ms`.
    async fn stale_nodes(&self, before_ms: i64) -> Result<Vec<NodeId>, DirectoryError>;
    /// Removes a node from the live set; `true` for exactly one caller (the one that cleans up).
    async fn claim_node(&self, node: &NodeId) -> Result<bool, DirectoryError>;
    /// Peers registered on `node`.
    async fn node_peers(&self, node: &NodeId) -> Result<Vec<PeerId>, DirectoryError>;
    /// Keeps `delivery` for `peer`, whose node nobody listens for (it died or drains), for `ttl_ms`
    /// or until [`Directory::unpark`]: at most [`PARKED_MAX`] per peer, the oldest dropped first.
    async fn park(&self, peer: &PeerId, delivery: bytes::Bytes, ttl_ms: i64) -> Result<(), DirectoryError>;
    /// Takes what was parked for `peer`, oldest first (its session resumed on a node that listens).
    async fn unpark(&self, peer: &PeerId) -> Result<Vec<bytes::Bytes>, DirectoryError>;
    /// Whether the backend answers.
    async fn ping(&self) -> Result<(), DirectoryError>;
}

/// Most deliveries parked for one peer (a browser trickles 10-20 candidates; an offer is one).
pub const PARKED_MAX: usize = 64;

#[derive(Default)]
struct State {
    peers: HashMap<PeerId, PeerRecord>,
    node_peers: HashMap<NodeId, HashSet<PeerId>>,
    nodes: HashMap<NodeId, i64>,
    watchers: HashMap<StreamId, HashSet<PeerId>>,
    broadcasters: HashMap<StreamId, PeerId>,
    relays: HashMap<StreamId, PeerId>,
    relay_nodes: HashMap<NodeId, (i64, u32, u32)>,
    parked: HashMap<PeerId, (i64, std::collections::VecDeque<bytes::Bytes>)>,
}

/// The in-process directory of the all-in-one binary.
#[derive(Default)]
pub struct MemoryDirectory {
    state: Mutex<State>,
}

impl std::fmt::Debug for MemoryDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDirectory").finish_non_exhaustive()
    }
}

impl MemoryDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }
}

fn count(set: Option<&HashSet<PeerId>>) -> u32 {
    set.map_or(0, |s| u32::try_from(s.len()).unwrap_or(u32::MAX))
}

#[async_trait]
impl Directory for MemoryDirectory {
    async fn attach(&self, peer: &PeerId, node: &NodeId, token: &str) -> Result<(), DirectoryError> {
        let mut s = self.lock();
        let rec = PeerRecord {
            node: node.clone(),
            token: token.to_owned(),
            broadcasting: None,
            watching: None,
            relaying: None,
        };
        s.peers.insert(peer.clone(), rec);
        s.node_peers.entry(node.clone()).or_default().insert(peer.clone());
        Ok(())
    }

    async fn peer(&self, peer: &PeerId) -> Result<Option<PeerRecord>, DirectoryError> {
        Ok(self.lock().peers.get(peer).cloned())
    }

    async fn move_peer(&self, peer: &PeerId, from: &NodeId, to: &NodeId) -> Result<(), DirectoryError> {
        let mut s = self.lock();
        if let Some(set) = s.node_peers.get_mut(from) {
            set.remove(peer);
        }
        s.node_peers.entry(to.clone()).or_default().insert(peer.clone());
        if let Some(rec) = s.peers.get_mut(peer) {
            rec.node = to.clone();
        }
        Ok(())
    }

    async fn remove_peer(&self, peer: &PeerId, node: &NodeId) -> Result<(), DirectoryError> {
        let mut s = self.lock();
        s.peers.remove(peer);
        if let Some(set) = s.node_peers.get_mut(node) {
            set.remove(peer);
        }
        Ok(())
    }

    async fn set_broadcasting(
        &self,
        peer: &PeerId,
        stream: Option<&StreamId>,
        previous: Option<&StreamId>,
    ) -> Result<(), DirectoryError> {
        let mut s = self.lock();
        if let Some(p) = previous {
            s.broadcasters.remove(p);
        }
        if let Some(st) = stream {
            s.broadcasters.insert(st.clone(), peer.clone());
        }
        if let Some(rec) = s.peers.get_mut(peer) {
            rec.broadcasting = stream.cloned();
        }
        Ok(())
    }

    async fn broadcaster(&self, stream: &StreamId) -> Result<Option<PeerId>, DirectoryError> {
        Ok(self.lock().broadcasters.get(stream).cloned())
    }

    async fn set_watching(&self, peer: &PeerId, stream: Option<&StreamId>) -> Result<(), DirectoryError> {
        if let Some(rec) = self.lock().peers.get_mut(peer) {
            rec.watching = stream.cloned();
        }
        Ok(())
    }

    async fn add_watcher(&self, stream: &StreamId, peer: &PeerId) -> Result<u32, DirectoryError> {
        let mut s = self.lock();
        let set = s.watchers.entry(stream.clone()).or_default();
        set.insert(peer.clone());
        Ok(count(Some(set)))
    }

    async fn remove_watcher(&self, stream: &StreamId, peer: &PeerId) -> Result<u32, DirectoryError> {
        let mut s = self.lock();
        if let Some(set) = s.watchers.get_mut(stream) {
            set.remove(peer);
        }
        Ok(count(s.watchers.get(stream)))
    }

    async fn watchers(&self, stream: &StreamId) -> Result<Vec<PeerId>, DirectoryError> {
        Ok(self.lock().watchers.get(stream).map(|w| w.iter().cloned().collect()).unwrap_or_default())
    }

    async fn clear_stream(&self, stream: &StreamId) -> Result<Vec<PeerId>, DirectoryError> {
        let mut s = self.lock();
        s.broadcasters.remove(stream);
        s.relays.remove(stream);
        Ok(s.watchers.remove(stream).map(|w| w.into_iter().collect()).unwrap_or_default())
    }

    async fn set_relay(&self, stream: &StreamId, relay: Option<&PeerId>) -> Result<(), DirectoryError> {
        let mut s = self.lock();
        match relay {
            Some(r) => {
                s.relays.insert(stream.clone(), r.clone());
                if let Some(rec) = s.peers.get_mut(r) {
                    rec.relaying = Some(stream.clone());
                }
            }
            None => {
                s.relays.remove(stream);
            }
        }
        Ok(())
    }

    async fn relay(&self, stream: &StreamId) -> Result<Option<PeerId>, DirectoryError> {
        Ok(self.lock().relays.get(stream).cloned())
    }

    async fn relay_load(&self, node: &NodeId, load: Option<(u32, u32)>, now_ms: i64) -> Result<(), DirectoryError> {
        let mut s = self.lock();
        match load {
            Some((subscribers, streams)) => s.relay_nodes.insert(node.clone(), (now_ms, subscribers, streams)),
            None => s.relay_nodes.remove(node),
        };
        Ok(())
    }

    async fn relay_nodes(&self, since_ms: i64) -> Result<Vec<RelayNode>, DirectoryError> {
        let s = self.lock();
        Ok(s.relay_nodes
            .iter()
            .filter(|(_, (t, _, _))| *t >= since_ms)
            .map(|(node, (_, subscribers, streams))| RelayNode {
                node: node.clone(),
                subscribers: *subscribers,
                streams: *streams,
            })
            .collect())
    }

    async fn heartbeat(&self, node: &NodeId, now_ms: i64) -> Result<bool, DirectoryError> {
        Ok(self.lock().nodes.insert(node.clone(), now_ms).is_some())
    }

    async fn stale_nodes(&self, before_ms: i64) -> Result<Vec<NodeId>, DirectoryError> {
        Ok(self.lock().nodes.iter().filter(|(_, t)| **t < before_ms).map(|(n, _)| n.clone()).collect())
    }

    async fn claim_node(&self, node: &NodeId) -> Result<bool, DirectoryError> {
        Ok(self.lock().nodes.remove(node).is_some())
    }

    async fn node_peers(&self, node: &NodeId) -> Result<Vec<PeerId>, DirectoryError> {
        Ok(self.lock().node_peers.get(node).map(|s| s.iter().cloned().collect()).unwrap_or_default())
    }

    async fn park(&self, peer: &PeerId, delivery: bytes::Bytes, ttl_ms: i64) -> Result<(), DirectoryError> {
        let now = crate::time::now_ms();
        let mut s = self.lock();
        if s.parked.len() >= 4096 {
            s.parked.retain(|_, (until, _)| *until > now);
        }
        let (until, queue) = s.parked.entry(peer.clone()).or_default();
        *until = now.saturating_add(ttl_ms);
        if queue.len() == PARKED_MAX {
            queue.pop_front();
        }
        queue.push_back(delivery);
        Ok(())
    }

    async fn unpark(&self, peer: &PeerId) -> Result<Vec<bytes::Bytes>, DirectoryError> {
        let now = crate::time::now_ms();
        Ok(match self.lock().parked.remove(peer) {
            Some((until, queue)) if until > now => queue.into(),
            _ => Vec::new(),
        })
    }

    async fn ping(&self) -> Result<(), DirectoryError> {
        Ok(())
    }
}
