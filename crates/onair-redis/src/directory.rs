//! [`Directory`] in Redis. Keys (all prefixed `onair:`):
//! - `peer:{peer}` hash: `node`, `token`, `broadcasting`, `watching`, `relaying`
//! - `nodepeers:{node}` set of peers on a node
//! - `nodes` sorted set: node → last heartbeat (Unix ms)
//! - `watchers:{stream}` set of watchers
//! - `bcast:{stream}` string: the broadcaster
//! - `relay:{stream}` string: the stream's relay peer
//! - `relays` hash: relay node → `"<last report ms>,<subscribers>,<streams>"`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{
    ClientLike, EventInterface, HashesInterface, KeysInterface, ListInterface, SetsInterface, SortedSetsInterface,
    TrackingInterface,
};
use fred::types::Expiration;
use onair_core::{Directory, DirectoryError, NodeId, PeerId, PeerRecord, RelayNode, StreamId};
use tokio::sync::broadcast::error::RecvError;

use crate::connect::{command_client, tracking_client};
use crate::peer_cache::PeerCache;

/// Peers whose node never cleaned up (every signaling replica gone at once) expire after a day.
const PEER_KEY_TTL_SECS: i64 = 86_400;

fn peer_key(p: &PeerId) -> String {
    format!("onair:peer:{p}")
}
fn node_peers_key(n: &NodeId) -> String {
    format!("onair:nodepeers:{n}")
}
fn watchers_key(s: &StreamId) -> String {
    format!("onair:watchers:{s}")
}
fn bcast_key(s: &StreamId) -> String {
    format!("onair:bcast:{s}")
}
fn relay_key(s: &StreamId) -> String {
    format!("onair:relay:{s}")
}
/// Deliveries parked for a peer whose node nobody listens for (see `Directory::park`).
fn parked_key(p: &PeerId) -> String {
    format!("onair:parked:{p}")
}

const NODES: &str = "onair:nodes";
/// Relay nodes taking streams: node → `"<ms>,<subscribers>,<streams>"`.
const RELAYS: &str = "onair:relays";

fn err(e: fred::error::Error) -> DirectoryError {
    DirectoryError::Unavailable(e.to_string())
}

fn ids<T: std::str::FromStr>(raw: Vec<String>) -> Vec<T> {
    raw.into_iter().filter_map(|s| s.parse().ok()).collect()
}

/// Redis-backed directory, with peer records cached (see [`crate::peer_cache`]).
#[derive(Clone)]
pub struct RedisDirectory {
    client: Client,
    /// RESP3 with `CLIENT TRACKING ON`: peer records are read on it, so Redis invalidates them.
    tracked: Client,
    cache: Arc<PeerCache>,
}

impl std::fmt::Debug for RedisDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDirectory").finish_non_exhaustive()
    }
}

impl RedisDirectory {
    /// Connects to `url`; reconnects in the background if Redis goes away.
    pub async fn connect(url: &str) -> Result<Self, DirectoryError> {
        let client = command_client(url).await?;
        let tracked = tracking_client(url).await?;
        let cache = Arc::new(PeerCache::new());
        enable_tracking(&tracked, &cache).await;
        tokio::spawn(follow_invalidations(tracked.clone(), client.clone(), Arc::clone(&cache)));
        Ok(Self { client, tracked, cache })
    }

    /// Reads answered from the peer cache, and reads that went to Redis.
    pub fn cache_hits_and_misses(&self) -> (u64, u64) {
        self.cache.hits_and_misses()
    }

    async fn read_peer(client: &Client, key: &str) -> Result<Option<PeerRecord>, DirectoryError> {
        let h: HashMap<String, String> = client.hgetall(key).await.map_err(err)?;
        let Some(node) = h.get("node").and_then(|n| n.parse().ok()) else {
            return Ok(None);
        };
        let opt = |f: &str| h.get(f).filter(|v| !v.is_empty()).and_then(|v| v.parse().ok());
        Ok(Some(PeerRecord {
            node,
            token: h.get("token").cloned().unwrap_or_default(),
            broadcasting: opt("broadcasting"),
            watching: opt("watching"),
            relaying: opt("relaying"),
        }))
    }

    /// Runs a write to `peer`'s record and forgets the cached copy once it is done, so this
    /// replica reads its own writes (the invalidation push may come a moment later).
    async fn writing<T>(&self, peer: &PeerId, write: impl Future<Output = T>) -> T {
        let out = write.await;
        self.cache.invalidate(&peer_key(peer));
        out
    }
}

/// Turns tracking on (retrying while Redis is away), then caching.
async fn enable_tracking(tracked: &Client, cache: &PeerCache) {
    cache.reset(false);
    for attempt in 0u32.. {
        match tracked.start_tracking(Vec::<String>::new(), false, false, false, false).await {
            Ok(()) => {
                cache.reset(true);
                return;
            }
            Err(e) if attempt % 20 == 0 => tracing::warn!(error = %e, "peer cache off: client tracking failed"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Applies Redis' invalidation pushes to the cache; drops it whenever some may have been missed.
async fn follow_invalidations(tracked: Client, commands: Client, cache: Arc<PeerCache>) {
    let mut invalidations = tracked.invalidation_rx();
    let mut reconnects = tracked.reconnect_rx();
    // The command connection reconnecting may mean Redis restarted (empty): the tracking connection
    // notices only on its next read, so the cache is dropped now.
    let mut command_reconnects = commands.reconnect_rx();
    loop {
        tokio::select! {
            inv = invalidations.recv() => match inv {
                // No keys: the server flushed its tracking table (FLUSHALL, memory pressure).
                Ok(inv) if inv.keys.is_empty() => cache.reset(cache.enabled()),
                Ok(inv) => {
                    for key in &inv.keys {
                        match key.as_str() {
                            Some(k) => cache.invalidate(k),
                            None => cache.reset(cache.enabled()),
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "peer cache dropped: invalidations lagged");
                    cache.reset(cache.enabled());
                }
                Err(RecvError::Closed) => break,
            },
            // Tracking is per connection: a new one starts untracked.
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => enable_tracking(&tracked, &cache).await,
                Err(RecvError::Closed) => break,
            },
            r = command_reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => cache.reset(cache.enabled()),
                Err(RecvError::Closed) => break,
            },
        }
    }
    cache.reset(false);
}

#[async_trait]
impl Directory for RedisDirectory {
    async fn attach(&self, peer: &PeerId, node: &NodeId, token: &str) -> Result<(), DirectoryError> {
        self.writing(peer, async {
            let key = peer_key(peer);
            let pipe = self.client.pipeline();
            let _: () = pipe.del(&key).await.map_err(err)?;
            let _: () = pipe.hset(&key, [("node", node.as_str()), ("token", token)]).await.map_err(err)?;
            let _: () = pipe.expire(&key, PEER_KEY_TTL_SECS, None).await.map_err(err)?;
            let _: () = pipe.sadd(node_peers_key(node), peer.as_str()).await.map_err(err)?;
            let _: Vec<fred::types::Value> = pipe.all().await.map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn peer(&self, peer: &PeerId) -> Result<Option<PeerRecord>, DirectoryError> {
        Self::read_peer(&self.client, &peer_key(peer)).await
    }

    async fn peer_cached(&self, peer: &PeerId) -> Result<Option<PeerRecord>, DirectoryError> {
        let key = peer_key(peer);
        if let Some(r) = self.cache.get(&key) {
            return Ok(Some(r));
        }
        let ticket = self.cache.begin(&key);
        let record = Self::read_peer(&self.tracked, &key).await?;
        if let Some(t) = ticket {
            self.cache.fill(&key, t, record.as_ref());
        }
        Ok(record)
    }

    async fn move_peer(&self, peer: &PeerId, from: &NodeId, to: &NodeId) -> Result<(), DirectoryError> {
        self.writing(peer, async {
            let pipe = self.client.pipeline();
            let _: () = pipe.srem(node_peers_key(from), peer.as_str()).await.map_err(err)?;
            let _: () = pipe.sadd(node_peers_key(to), peer.as_str()).await.map_err(err)?;
            let _: () = pipe.hset(peer_key(peer), ("node", to.as_str())).await.map_err(err)?;
            let _: Vec<fred::types::Value> = pipe.all().await.map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn remove_peer(&self, peer: &PeerId, node: &NodeId) -> Result<(), DirectoryError> {
        self.writing(peer, async {
            let pipe = self.client.pipeline();
            let _: () = pipe.del(peer_key(peer)).await.map_err(err)?;
            let _: () = pipe.srem(node_peers_key(node), peer.as_str()).await.map_err(err)?;
            let _: Vec<fred::types::Value> = pipe.all().await.map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn set_broadcasting(
        &self,
        peer: &PeerId,
        stream: Option<&StreamId>,
        previous: Option<&StreamId>,
    ) -> Result<(), DirectoryError> {
        self.writing(peer, async {
            let pipe = self.client.pipeline();
            if let Some(p) = previous {
                let _: () = pipe.del(bcast_key(p)).await.map_err(err)?;
            }
            match stream {
                Some(s) => {
                    let _: () = pipe
                        .set(bcast_key(s), peer.as_str(), Some(Expiration::EX(PEER_KEY_TTL_SECS)), None, false)
                        .await
                        .map_err(err)?;
                    let _: () = pipe.hset(peer_key(peer), ("broadcasting", s.as_str())).await.map_err(err)?;
                }
                None => {
                    let _: () = pipe.hdel(peer_key(peer), "broadcasting").await.map_err(err)?;
                }
            }
            let _: Vec<fred::types::Value> = pipe.all().await.map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn broadcaster(&self, stream: &StreamId) -> Result<Option<PeerId>, DirectoryError> {
        let v: Option<String> = self.client.get(bcast_key(stream)).await.map_err(err)?;
        Ok(v.and_then(|s| s.parse().ok()))
    }

    async fn set_watching(&self, peer: &PeerId, stream: Option<&StreamId>) -> Result<(), DirectoryError> {
        self.writing(peer, async {
            match stream {
                Some(s) => self.client.hset::<(), _, _>(peer_key(peer), ("watching", s.as_str())).await.map_err(err),
                None => self.client.hdel::<(), _, _>(peer_key(peer), "watching").await.map_err(err),
            }
        })
        .await
    }

    async fn add_watcher(&self, stream: &StreamId, peer: &PeerId) -> Result<u32, DirectoryError> {
        let key = watchers_key(stream);
        let pipe = self.client.pipeline();
        let _: () = pipe.sadd(&key, peer.as_str()).await.map_err(err)?;
        let _: () = pipe.expire(&key, PEER_KEY_TTL_SECS, None).await.map_err(err)?;
        let _: () = pipe.scard(&key).await.map_err(err)?;
        let (_, _, n): (i64, i64, u32) = pipe.all().await.map_err(err)?;
        Ok(n)
    }

    async fn remove_watcher(&self, stream: &StreamId, peer: &PeerId) -> Result<u32, DirectoryError> {
        let key = watchers_key(stream);
        let pipe = self.client.pipeline();
        let _: () = pipe.srem(&key, peer.as_str()).await.map_err(err)?;
        let _: () = pipe.scard(&key).await.map_err(err)?;
        let (_, n): (i64, u32) = pipe.all().await.map_err(err)?;
        Ok(n)
    }

    async fn watchers(&self, stream: &StreamId) -> Result<Vec<PeerId>, DirectoryError> {
        let members: Vec<String> = self.client.smembers(watchers_key(stream)).await.map_err(err)?;
        Ok(ids(members))
    }

    async fn clear_stream(&self, stream: &StreamId) -> Result<Vec<PeerId>, DirectoryError> {
        let key = watchers_key(stream);
        let members: Vec<String> = self.client.smembers(&key).await.map_err(err)?;
        let _: i64 = self.client.del((key, bcast_key(stream), relay_key(stream))).await.map_err(err)?;
        Ok(ids(members))
    }

    async fn set_relay(&self, stream: &StreamId, relay: Option<&PeerId>) -> Result<(), DirectoryError> {
        match relay {
            Some(r) => {
                self.writing(r, async {
                    let pipe = self.client.pipeline();
                    let _: () = pipe
                        .set(relay_key(stream), r.as_str(), Some(Expiration::EX(PEER_KEY_TTL_SECS)), None, false)
                        .await
                        .map_err(err)?;
                    let _: () = pipe.hset(peer_key(r), ("relaying", stream.as_str())).await.map_err(err)?;
                    let _: Vec<fred::types::Value> = pipe.all().await.map_err(err)?;
                    Ok(())
                })
                .await
            }
            None => self.client.del::<(), _>(relay_key(stream)).await.map_err(err),
        }
    }

    async fn relay(&self, stream: &StreamId) -> Result<Option<PeerId>, DirectoryError> {
        let v: Option<String> = self.client.get(relay_key(stream)).await.map_err(err)?;
        Ok(v.and_then(|s| s.parse().ok()))
    }

    async fn relay_load(&self, node: &NodeId, load: Option<(u32, u32)>, now_ms: i64) -> Result<(), DirectoryError> {
        match load {
            Some((subscribers, streams)) => {
                let v = format!("{now_ms},{subscribers},{streams}");
                self.client.hset::<(), _, _>(RELAYS, (node.as_str(), v)).await.map_err(err)
            }
            None => self.client.hdel::<(), _, _>(RELAYS, node.as_str()).await.map_err(err),
        }
    }

    async fn relay_nodes(&self, since_ms: i64) -> Result<Vec<RelayNode>, DirectoryError> {
        let all: HashMap<String, String> = self.client.hgetall(RELAYS).await.map_err(err)?;
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for (node, v) in all {
            let mut parts = v.split(',').map(str::parse::<i64>);
            let (Some(Ok(t)), Some(Ok(subs)), Some(Ok(streams))) = (parts.next(), parts.next(), parts.next()) else {
                stale.push(node);
                continue;
            };
            match node.parse::<NodeId>() {
                Ok(n) if t >= since_ms => out.push(RelayNode {
                    node: n,
                    subscribers: u32::try_from(subs).unwrap_or(u32::MAX),
                    streams: u32::try_from(streams).unwrap_or(u32::MAX),
                }),
                _ => stale.push(node),
            }
        }
        if !stale.is_empty() {
            let _: Result<i64, _> = self.client.hdel(RELAYS, stale).await;
        }
        Ok(out)
    }

    async fn heartbeat(&self, node: &NodeId, now_ms: i64) -> Result<bool, DirectoryError> {
        #[allow(clippy::cast_precision_loss)]
        let score = now_ms as f64;
        // ZADD answers how many members it added: 1 for a node the set did not hold.
        let added: i64 =
            self.client.zadd(NODES, None, None, false, false, (score, node.as_str())).await.map_err(err)?;
        Ok(added == 0)
    }

    async fn stale_nodes(&self, before_ms: i64) -> Result<Vec<NodeId>, DirectoryError> {
        #[allow(clippy::cast_precision_loss)]
        let max = before_ms as f64;
        let raw: Vec<String> =
            self.client.zrangebyscore(NODES, f64::NEG_INFINITY, max, false, None).await.map_err(err)?;
        Ok(ids(raw))
    }

    async fn claim_node(&self, node: &NodeId) -> Result<bool, DirectoryError> {
        let n: i64 = self.client.zrem(NODES, node.as_str()).await.map_err(err)?;
        Ok(n == 1)
    }

    async fn node_peers(&self, node: &NodeId) -> Result<Vec<PeerId>, DirectoryError> {
        let raw: Vec<String> = self.client.smembers(node_peers_key(node)).await.map_err(err)?;
        Ok(ids(raw))
    }

    async fn park(&self, peer: &PeerId, delivery: bytes::Bytes, ttl_ms: i64) -> Result<(), DirectoryError> {
        let key = parked_key(peer);
        let keep = i64::try_from(onair_core::PARKED_MAX).unwrap_or(i64::MAX);
        let pipe = self.client.pipeline();
        let _: () = pipe.rpush(&key, delivery).await.map_err(err)?;
        let _: () = pipe.ltrim(&key, -keep, -1).await.map_err(err)?;
        let _: () = pipe.pexpire(&key, ttl_ms, None).await.map_err(err)?;
        let _: Vec<fred::types::Value> = pipe.all().await.map_err(err)?;
        Ok(())
    }

    async fn unpark(&self, peer: &PeerId) -> Result<Vec<bytes::Bytes>, DirectoryError> {
        // LPOP with a count takes and removes in one command: a delivery parked meanwhile is either
        // in this batch or stays for the next.
        let count = onair_core::PARKED_MAX;
        let taken: Option<Vec<bytes::Bytes>> = self.client.lpop(parked_key(peer), Some(count)).await.map_err(err)?;
        Ok(taken.unwrap_or_default())
    }

    async fn ping(&self) -> Result<(), DirectoryError> {
        let _: String = self.client.ping(None).await.map_err(err)?;
        Ok(())
    }
}
