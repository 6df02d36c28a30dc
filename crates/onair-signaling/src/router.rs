//! The routing rules. Every method is one peer action; state lives in the
//! [`Directory`], deliveries go out as one `PUBLISH` to the recipient node's
//! channel, and stream lifecycle changes go to the registry.

use std::sync::Arc;

use bytes::Bytes;
use onair_auth::Upstream;
use onair_core::{Bus, Directory, DirectoryError, ErrorCode, NodeId, PeerId, PeerRecord, StreamId};
use onair_proto::v1 as pb;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use prost::Message;

use crate::error::RouteError;

/// A relay's reason for letting a watcher go is cut to this many characters.
const MAX_DROP_MESSAGE: usize = 300;

fn parse<T: std::str::FromStr<Err = onair_core::IdError>>(field: &str, v: &str) -> Result<T, RouteError> {
    v.parse().map_err(|e| RouteError::BadRequest(format!("{field}: {e}")))
}

/// One peer action of a node, validated (converted from `pb::node_message::Msg` at the edge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The node's NodeStream opened.
    Hello,
    /// A peer connected to the node.
    Attach {
        /// The peer.
        peer: PeerId,
        /// Its resume token.
        resume_token: String,
    },
    /// A peer is gone for good.
    Detach {
        /// The peer.
        peer: PeerId,
    },
    /// A peer wants to go live with a stream titled `title`.
    Publish {
        /// The broadcaster.
        peer: PeerId,
        /// The title (validated by the registry).
        title: String,
        /// The subject of its publish grant (empty: none).
        owner: String,
    },
    /// A peer stopped broadcasting.
    Unpublished {
        /// The broadcaster.
        peer: PeerId,
    },
    /// A peer wants to watch `stream`.
    Watch {
        /// The watcher.
        peer: PeerId,
        /// The stream.
        stream: StreamId,
    },
    /// A peer stops watching.
    Unwatch {
        /// The watcher.
        peer: PeerId,
    },
    /// Offer, answer or candidate from `from` to `to`.
    Signal {
        /// Sender (stamped by its gateway).
        from: PeerId,
        /// Recipient.
        to: PeerId,
        /// Offer, answer or candidate (never unspecified).
        kind: pb::SignalKind,
        /// Passed through untouched.
        payload: String,
    },
    /// Everything the node's peers are doing (the directory lost it).
    Reassert {
        /// The node's peers.
        peers: Vec<PeerState>,
    },
    /// A WHIP/WHEP request of a gateway, for a relay node.
    SessionRequest(pb::SessionRequest),
    /// A relay's answer to one, for the gateway that asked.
    SessionReply(pb::SessionReply),
    /// Frames a node held for `peer`, which resumed on another node: they go where it is now.
    Forward {
        /// The peer.
        peer: PeerId,
        /// Its frames, oldest first.
        frames: Vec<String>,
    },
    /// A relay peer let one of its watchers go: the watch ends and the watcher is told why.
    WatcherDropped {
        /// The relay peer.
        relay: PeerId,
        /// The watcher.
        watcher: PeerId,
        /// Why: `too_slow` or `full`.
        code: ErrorCode,
        /// Shown to the watcher.
        message: String,
    },
}

impl TryFrom<pb::node_message::Msg> for Action {
    type Error = RouteError;
    fn try_from(msg: pb::node_message::Msg) -> Result<Self, RouteError> {
        use pb::node_message::Msg;
        Ok(match msg {
            Msg::Hello(_) => Self::Hello,
            Msg::Attach(a) => Self::Attach { peer: parse("peer", &a.peer)?, resume_token: a.resume_token },
            Msg::Detach(d) => Self::Detach { peer: parse("peer", &d.peer)? },
            Msg::Publish(p) => Self::Publish { peer: parse("peer", &p.peer)?, title: p.title, owner: p.owner },
            Msg::Unpublished(u) => Self::Unpublished { peer: parse("peer", &u.peer)? },
            Msg::Watch(w) => Self::Watch { peer: parse("peer", &w.peer)?, stream: parse("stream_id", &w.stream_id)? },
            Msg::Unwatch(u) => Self::Unwatch { peer: parse("peer", &u.peer)? },
            Msg::Signal(s) => {
                let kind = pb::SignalKind::try_from(s.kind).unwrap_or(pb::SignalKind::Unspecified);
                if kind == pb::SignalKind::Unspecified {
                    return Err(RouteError::BadRequest("kind must be offer, answer or candidate".into()));
                }
                Self::Signal { from: parse("from", &s.from)?, to: parse("to", &s.to)?, kind, payload: s.payload }
            }
            Msg::Reassert(r) => {
                Self::Reassert { peers: r.peers.into_iter().map(PeerState::try_from).collect::<Result<_, _>>()? }
            }
            Msg::SessionRequest(r) => Self::SessionRequest(r),
            Msg::SessionReply(r) => Self::SessionReply(r),
            Msg::Forward(f) => Self::Forward { peer: parse("peer", &f.peer)?, frames: f.frames },
            Msg::WatcherDropped(d) => {
                let code = match ErrorCode::from_wire(&d.code) {
                    c @ (ErrorCode::TooSlow | ErrorCode::Full) if c.as_str() == d.code => c,
                    _ => return Err(RouteError::BadRequest("code must be too_slow or full".into())),
                };
                let message = d.message.chars().take(MAX_DROP_MESSAGE).collect();
                Self::WatcherDropped {
                    relay: parse("relay", &d.relay)?,
                    watcher: parse("watcher", &d.watcher)?,
                    code,
                    message,
                }
            }
        })
    }
}

/// One peer as its node re-asserts it after the directory lost its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    /// The peer.
    pub peer: PeerId,
    /// Its resume token.
    pub resume_token: String,
    /// The stream it broadcasts.
    pub broadcasting: Option<StreamId>,
    /// The stream it watches.
    pub watching: Option<StreamId>,
    /// The stream it relays (a relay node's peer).
    pub relaying: Option<StreamId>,
}

fn optional_stream(field: &str, v: &str) -> Result<Option<StreamId>, RouteError> {
    if v.is_empty() { Ok(None) } else { parse(field, v).map(Some) }
}

impl TryFrom<pb::PeerState> for PeerState {
    type Error = RouteError;
    fn try_from(p: pb::PeerState) -> Result<Self, RouteError> {
        Ok(Self {
            peer: parse("peer", &p.peer)?,
            resume_token: p.resume_token,
            broadcasting: optional_stream("broadcasting", &p.broadcasting)?,
            watching: optional_stream("watching", &p.watching)?,
            relaying: optional_stream("relaying", &p.relaying)?,
        })
    }
}

/// Applies the routing rules.
#[derive(Clone)]
pub struct Router {
    dir: Arc<dyn Directory>,
    bus: Arc<dyn Bus>,
    registry: StreamRegistryClient<Upstream>,
    max_watchers: u32,
    refused_full: prometheus_client::metrics::counter::Counter,
    /// Place new streams on relay nodes (false: `--media p2p`).
    relays: bool,
    /// A relay node whose last report is older than this takes no new streams.
    relay_fresh: std::time::Duration,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl Router {
    /// A router over the given state, bus and registry.
    pub fn new(dir: Arc<dyn Directory>, bus: Arc<dyn Bus>, registry: StreamRegistryClient<Upstream>) -> Self {
        Self {
            dir,
            bus,
            registry,
            max_watchers: 0,
            refused_full: Default::default(),
            relays: true,
            relay_fresh: std::time::Duration::from_secs(6),
        }
    }

    /// Whether new streams go to relay nodes when one is up (`relays`), and how recent a relay's
    /// report must be to count as up.
    pub fn with_media(mut self, relays: bool, fresh: std::time::Duration) -> Self {
        self.relays = relays;
        self.relay_fresh = fresh;
        self
    }

    /// At most `max` watchers per stream (0: no limit); refusals are counted in `refused`.
    pub fn with_watcher_limit(mut self, max: u32, refused: prometheus_client::metrics::counter::Counter) -> Self {
        self.max_watchers = max;
        self.refused_full = refused;
        self
    }

    /// The directory (for the reaper and readiness).
    pub fn directory(&self) -> &Arc<dyn Directory> {
        &self.dir
    }

    /// Publishes one delivery to `node`'s channel.
    pub async fn deliver(&self, node: &NodeId, to: &PeerId, event: pb::delivery::Event) {
        self.deliver_from(node, to, event, "").await;
    }

    /// [`Router::deliver`] of an event about a peer on `from_node` (see [`Router::try_deliver_from`]).
    async fn deliver_from(&self, node: &NodeId, to: &PeerId, event: pb::delivery::Event, from_node: &str) {
        if let Err(e) = self.try_deliver_from(node, to, event, from_node).await {
            tracing::warn!(error = %e, peer = %to, "delivery failed");
        }
    }

    /// Publishes one delivery to `node`'s channel; the bus error if it could not. When nobody
    /// listens there (the node died, or drains and its peers are moving), the delivery is parked
    /// for the peer instead, and [`Router::resume`] hands it to the node the peer resumes on.
    /// `from_node` (may be empty) is the node of the peer the event is about (a signal from it, a
    /// `watcher_joined` naming it): the recipient's node sends its signals to that peer straight
    /// there from then on (a direct route).
    async fn try_deliver_from(
        &self,
        node: &NodeId,
        to: &PeerId,
        event: pb::delivery::Event,
        from_node: &str,
    ) -> Result<(), RouteError> {
        let parkable = !matches!(event, pb::delivery::Event::Evicted(_));
        // Inside a traced flow (see service.rs), the delivery carries the trace on.
        let traceparent = onair_ops::trace::traceparent(&tracing::Span::current());
        let d = pb::Delivery {
            to: to.to_string(),
            event: Some(event),
            traceparent,
            from_node: from_node.to_owned(),
            direct: false,
        };
        let payload = Bytes::from(d.encode_to_vec());
        let reached = self
            .bus
            .publish_counted(&node.channel(), payload.clone())
            .await
            .map_err(|e| RouteError::Unavailable(DirectoryError::Unavailable(e.to_string())))?;
        if reached == Some(0) && parkable {
            self.dir.park(to, payload, PARK_TTL_MS).await?;
            tracing::debug!(peer = %to, %node, "nobody listens for the peer's node; delivery parked");
            // `Resume` moves the peer, then takes what is parked: parked after that take, this would
            // wait forever, but then the move is visible here, and it is handed over now.
            if let Some(rec) = self.dir.peer(to).await?
                && &rec.node != node
            {
                self.hand_over_parked(to, &rec.node).await?;
            }
        }
        Ok(())
    }

    async fn deliver_to_peer(&self, to: &PeerId, event: pb::delivery::Event) -> Result<(), RouteError> {
        self.deliver_to_peer_from(to, event, "").await
    }

    /// [`Router::deliver_to_peer`] of an event about a peer on `from_node`.
    async fn deliver_to_peer_from(
        &self,
        to: &PeerId,
        event: pb::delivery::Event,
        from_node: &str,
    ) -> Result<(), RouteError> {
        if let Some(rec) = self.dir.peer(to).await? {
            self.deliver_from(&rec.node, to, event, from_node).await;
        }
        Ok(())
    }

    /// Handles one node action.
    pub async fn handle(&self, node: &NodeId, action: Action) -> Result<(), RouteError> {
        match action {
            Action::Hello => {
                self.dir.heartbeat(node, onair_core::time::now_ms()).await?;
                Ok(())
            }
            Action::Attach { peer, resume_token } => {
                self.dir.attach(&peer, node, &resume_token).await?;
                Ok(())
            }
            Action::Detach { peer } => self.detach(node, &peer).await,
            Action::Publish { peer, title, owner } => self.publish(node, &peer, title, owner).await,
            Action::Unpublished { peer } => {
                if let Some(rec) = self.dir.peer(&peer).await? {
                    self.stop_broadcast(&peer, &rec).await?;
                }
                Ok(())
            }
            Action::Watch { peer, stream } => self.watch(&peer, &stream).await,
            Action::Unwatch { peer } => {
                if let Some(rec) = self.dir.peer(&peer).await? {
                    self.leave(&peer, &rec).await?;
                }
                Ok(())
            }
            Action::Signal { from, to, kind, payload } => self.signal(from, to, kind, payload).await,
            Action::Reassert { peers } => self.reassert(node, peers).await,
            Action::SessionRequest(req) => self.session_request(node, req).await,
            Action::Forward { peer, frames } => {
                tracing::debug!(%peer, from = %node, frames = frames.len(), "held frames forwarded to where the peer resumed");
                self.deliver_to_peer(&peer, pb::delivery::Event::Forwarded(pb::Forwarded { frames })).await?;
                Ok(())
            }
            Action::WatcherDropped { relay, watcher, code, message } => {
                self.watcher_dropped(node, &relay, &watcher, code, message).await
            }
            Action::SessionReply(reply) => {
                let to: NodeId = parse("reply_to", &reply.reply_to)?;
                self.deliver_to_node(&to, pb::delivery::Event::SessionReply(reply)).await;
                Ok(())
            }
        }
    }

    /// Publishes one delivery for `node` itself (not one of its peers).
    async fn deliver_to_node(&self, node: &NodeId, event: pb::delivery::Event) {
        let d = pb::Delivery { to: String::new(), event: Some(event), ..Default::default() };
        if let Err(e) = self.bus.publish(&node.channel(), Bytes::from(d.encode_to_vec())).await {
            tracing::warn!(error = %e, %node, "delivery failed");
        }
    }

    /// Relays a gateway's WHIP/WHEP request to the relay node it is for: a new publish to the
    /// least loaded relay (its stream is then relayed there), a new subscription to the stream's
    /// relay, a PATCH or DELETE to the node its session names. What cannot be routed is answered
    /// here, in HTTP terms.
    async fn session_request(&self, gateway: &NodeId, mut req: pb::SessionRequest) -> Result<(), RouteError> {
        req.reply_to = gateway.to_string();
        match self.session_node(&req).await? {
            Ok(node) => {
                req.node = node.to_string();
                self.deliver_to_node(&node, pb::delivery::Event::SessionRequest(req)).await;
            }
            Err((status, message)) => {
                let reply =
                    pb::SessionReply { id: req.id, reply_to: req.reply_to, status, message, ..Default::default() };
                self.deliver_to_node(gateway, pb::delivery::Event::SessionReply(reply)).await;
            }
        }
        Ok(())
    }

    /// The relay node a session request goes to, or the HTTP status and message to answer with.
    async fn session_node(&self, req: &pb::SessionRequest) -> Result<Result<NodeId, (u32, String)>, RouteError> {
        let no_relay = || Err((503, "no relay is up to carry WebRTC media; retry shortly".to_owned()));
        let relays = self.fresh_relays().await?;
        Ok(match pb::SessionOp::try_from(req.op).unwrap_or(pb::SessionOp::Unspecified) {
            pb::SessionOp::Publish => match least_loaded(relays, None) {
                Some(n) => Ok(n),
                None => no_relay(),
            },
            pb::SessionOp::Subscribe => {
                let Ok(stream) = req.stream_id.parse::<StreamId>() else {
                    return Ok(Err((404, "no such stream".into())));
                };
                if self.dir.broadcaster(&stream).await?.is_none() {
                    return Ok(Err((404, format!("stream {stream} is not live"))));
                }
                let relay = self.dir.relay(&stream).await?;
                let node = match relay {
                    Some(r) => self.dir.peer(&r).await?.map(|rec| rec.node),
                    None => None,
                };
                match node {
                    Some(n) => Ok(n),
                    None => Err((503, format!("stream {stream} is not on a relay (peer to peer); WHEP needs one"))),
                }
            }
            pb::SessionOp::Patch | pb::SessionOp::Delete => {
                let node = req.node.parse::<NodeId>().ok().filter(|n| relays.iter().any(|r| &r.node == n));
                match node {
                    Some(n) => Ok(n),
                    None => Err((404, "no such session (it ended, or its relay is gone)".into())),
                }
            }
            pb::SessionOp::Unspecified => Err((400, "unknown session operation".into())),
        })
    }

    /// Relay nodes that reported within the freshness window and take streams.
    async fn fresh_relays(&self) -> Result<Vec<onair_core::RelayNode>, RouteError> {
        if !self.relays {
            return Ok(Vec::new());
        }
        let fresh = i64::try_from(self.relay_fresh.as_millis()).unwrap_or(i64::MAX);
        Ok(self.dir.relay_nodes(onair_core::time::now_ms().saturating_sub(fresh)).await?)
    }

    /// Rebuilds the directory entries of `node`'s peers from what the node knows (after Redis came
    /// back empty): presence, broadcasters, then watchers (telling broadcasters the new counts).
    /// Only peers the directory lost are rebuilt: one it still knows is more current there than in
    /// the node's report (a `published` may still be on its way to the node), and one it places on
    /// another node resumed there.
    async fn reassert(&self, node: &NodeId, peers: Vec<PeerState>) -> Result<(), RouteError> {
        let done = self.rebuild(node, peers).await;
        if done.is_err() {
            // Half rebuilt: forget the node so that its next heartbeat is asked to re-assert again.
            let _ = self.dir.claim_node(node).await;
        }
        done
    }

    /// [`Self::reassert`]'s work, which may stop half way when the directory fails.
    async fn rebuild(&self, node: &NodeId, peers: Vec<PeerState>) -> Result<(), RouteError> {
        let mut mine = Vec::with_capacity(peers.len());
        for p in peers {
            if let Some(rec) = self.dir.peer(&p.peer).await? {
                // Known, and still on this node: what was parked for it while the node's bus
                // subscription was down (a reconnect after a gap) goes to it now.
                if &rec.node == node {
                    self.hand_over_parked(&p.peer, node).await?;
                }
                continue;
            }
            self.dir.attach(&p.peer, node, &p.resume_token).await?;
            if let Some(stream) = &p.broadcasting {
                self.dir.set_broadcasting(&p.peer, Some(stream), None).await?;
            }
            if let Some(stream) = &p.relaying {
                self.dir.set_relay(stream, Some(&p.peer)).await?;
            }
            mine.push(p);
        }
        for p in &mine {
            let Some(stream) = &p.watching else { continue };
            let count = self.dir.add_watcher(stream, &p.peer).await?;
            self.dir.set_watching(&p.peer, Some(stream)).await?;
            if let Some(b) = self.dir.broadcaster(stream).await? {
                self.viewers_changed(&b, stream, count).await?;
            }
        }
        if !mine.is_empty() {
            tracing::info!(%node, peers = mine.len(), "node re-asserted its peers");
        }
        Ok(())
    }

    /// Publishes to `node` what was parked for `peer`, oldest first.
    async fn hand_over_parked(&self, peer: &PeerId, node: &NodeId) -> Result<(), RouteError> {
        let parked = self.dir.unpark(peer).await?;
        if !parked.is_empty() {
            tracing::debug!(%peer, %node, deliveries = parked.len(), "parked deliveries handed to the new node");
        }
        for payload in parked {
            match self.bus.publish_counted(&node.channel(), payload.clone()).await {
                // Nobody listens there yet either: parked again, for the next hand-over.
                Ok(Some(0)) => self.dir.park(peer, payload, PARK_TTL_MS).await?,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, %peer, "a parked delivery could not be handed over"),
            }
        }
        Ok(())
    }

    /// Ends live streams whose broadcaster the directory no longer knows, once `suspects` (the ones
    /// found orphaned by the previous sweep) confirms them: a broadcaster's node re-asserts within a
    /// heartbeat or two after a directory loss, so only streams still orphaned a sweep later are
    /// gone for real (their gateway died meanwhile). Returns this sweep's orphans.
    pub async fn end_orphans(
        &self,
        suspects: &std::collections::HashSet<StreamId>,
    ) -> Result<std::collections::HashSet<StreamId>, RouteError> {
        let mut orphans = std::collections::HashSet::new();
        let mut page_token = String::new();
        for _ in 0..1000 {
            let req = pb::ListStreamsRequest {
                state: pb::StreamState::Live.into(),
                page_size: 100,
                page_token: page_token.clone(),
            };
            let page = match self.registry.clone().list_streams(req).await {
                Ok(r) => r.into_inner(),
                Err(status) => return Err(RouteError::RegistryUnavailable(status.message().to_owned())),
            };
            for s in page.streams {
                let Ok(id) = s.id.parse::<StreamId>() else { continue };
                if self.dir.broadcaster(&id).await?.is_none() {
                    orphans.insert(id);
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        for stream in orphans.intersection(suspects) {
            tracing::warn!(%stream, "live stream without a broadcaster (its node is gone); ending it");
            self.end_stream(stream).await?;
        }
        Ok(orphans)
    }

    /// The hot path: checks the pairing and forwards one signaling message.
    async fn signal(&self, from: PeerId, to: PeerId, kind: pb::SignalKind, payload: String) -> Result<(), RouteError> {
        let paired = |a: &PeerRecord, b: &PeerRecord| {
            (a.watching.is_some() && a.watching == b.broadcasting)
                || (a.relaying.is_some() && (a.relaying == b.watching || a.relaying == b.broadcasting))
        };
        let allowed = |f: &Option<PeerRecord>, t: &Option<PeerRecord>| match (f, t) {
            (Some(f), Some(t)) => paired(f, t) || paired(t, f),
            _ => false,
        };
        let (mut from_rec, mut to_rec) = tokio::try_join!(self.dir.peer_cached(&from), self.dir.peer_cached(&to))?;
        if !allowed(&from_rec, &to_rec) {
            // Cached records may lag another replica's write by a moment: ask Redis before refusing.
            (from_rec, to_rec) = tokio::try_join!(self.dir.peer(&from), self.dir.peer(&to))?;
        }
        let from_rec = from_rec.ok_or_else(|| not_connected(&from))?;
        // An unknown recipient gets the same answer as an unrelated one: the error must not tell a
        // client which peer ids are connected.
        let to_rec = match to_rec {
            Some(t) if paired(&from_rec, &t) || paired(&t, &from_rec) => t,
            _ => {
                return Err(RouteError::Forbidden(format!(
                    "peer {to} is not the broadcaster of the stream you watch, nor one of your watchers"
                )));
            }
        };
        let s = pb::Signal { from: from.to_string(), to: to.to_string(), kind: kind.into(), payload };
        // With both records cached, Redis being down shows here: the sender is told, as it would be
        // by a failed lookup, instead of its message vanishing.
        // The recipient's node learns where the sender is: the reply goes there straight.
        self.try_deliver_from(&to_rec.node, &to, pb::delivery::Event::Signal(s), from_rec.node.as_str()).await
    }

    /// Creates the peer's stream in the registry under an id chosen here, after recording the peer
    /// as its broadcaster, so a watcher who sees the stream announced can always be routed; then
    /// tells the broadcaster's node (`Delivery.published`).
    async fn publish(&self, node: &NodeId, peer: &PeerId, title: String, owner: String) -> Result<(), RouteError> {
        let rec = self.dir.peer(peer).await?.ok_or_else(|| not_connected(peer))?;
        if rec.broadcasting.is_some() {
            return Err(RouteError::Conflict("you are already live".into()));
        }
        let stream = StreamId::generate();
        self.dir.set_broadcasting(peer, Some(&stream), None).await?;
        // A broadcaster that is itself a relay node's peer (a WHIP publisher) is relayed there.
        let relay = match self.place(&stream, peer, None, Some(&rec.node)).await {
            Ok(r) => r,
            Err(e) => {
                self.dir.set_broadcasting(peer, None, Some(&stream)).await?;
                return Err(e);
            }
        };
        let req = pb::CreateStreamRequest {
            title,
            broadcaster: peer.to_string(),
            node: node.to_string(),
            id: stream.to_string(),
            owner,
        };
        let created = match self.registry.clone().create_stream(req).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                self.dir.set_broadcasting(peer, None, Some(&stream)).await?;
                if let Some(r) = &relay {
                    self.drop_relay(&stream, r).await?;
                }
                return Err(match status.code() {
                    tonic::Code::InvalidArgument => RouteError::BadRequest(status.message().to_owned()),
                    tonic::Code::AlreadyExists => RouteError::Conflict("you are already live".into()),
                    // The registry's limits are the publisher's own (live streams per subject).
                    tonic::Code::ResourceExhausted => RouteError::Limited(status.message().to_owned()),
                    _ => {
                        tracing::warn!(error = %status, "registry did not create the stream");
                        RouteError::RegistryUnavailable("could not go live right now; retry".into())
                    }
                });
            }
        };
        tracing::info!(%peer, %stream, relay = ?relay, "published");
        self.deliver(&rec.node, peer, media(&stream, relay.as_ref())).await;
        self.deliver(&rec.node, peer, pb::delivery::Event::Published(created)).await;
        if let Some(r) = relay {
            self.deliver(&rec.node, peer, pb::delivery::Event::WatcherJoined(r.to_string())).await;
        }
        Ok(())
    }

    /// Puts `stream` on a relay node, if relays are on and one is up: `prefer` if it is one, else
    /// the least loaded (not `not_on`). A new peer on that node, told to relay the stream, becomes
    /// the stream's media source. `None`: peer to peer.
    async fn place(
        &self,
        stream: &StreamId,
        broadcaster: &PeerId,
        not_on: Option<&NodeId>,
        prefer: Option<&NodeId>,
    ) -> Result<Option<PeerId>, RouteError> {
        let nodes = self.fresh_relays().await?;
        let preferred = prefer.filter(|p| nodes.iter().any(|n| &n.node == *p)).cloned();
        let Some(node) = preferred.or_else(|| least_loaded(nodes, not_on)) else {
            return Ok(None);
        };
        let relay = PeerId::generate();
        // No resume token: a relay peer lives and dies with its node.
        self.dir.attach(&relay, &node, "").await?;
        self.dir.set_relay(stream, Some(&relay)).await?;
        let assign = pb::RelayAssign { stream_id: stream.to_string(), broadcaster: broadcaster.to_string() };
        self.deliver(&node, &relay, pb::delivery::Event::Relay(assign)).await;
        tracing::debug!(%stream, %relay, %node, "stream placed on a relay");
        Ok(Some(relay))
    }

    /// Forgets `relay` as the source of `stream` and tells its node to drop it.
    async fn drop_relay(&self, stream: &StreamId, relay: &PeerId) -> Result<(), RouteError> {
        if self.dir.relay(stream).await?.as_ref() == Some(relay) {
            self.dir.set_relay(stream, None).await?;
        }
        if let Some(rec) = self.dir.peer(relay).await? {
            self.deliver(&rec.node, relay, pb::delivery::Event::Evicted(pb::Evicted {})).await;
            self.dir.remove_peer(relay, &rec.node).await?;
        }
        Ok(())
    }

    /// The relay peer of `stream` is gone (its node died or dropped it): while the stream is live,
    /// it moves to another relay, or to peer to peer when none is up; either way the new source
    /// is told about every watcher (and offers to them), so watchers see a short freeze.
    async fn relay_lost(&self, stream: &StreamId, relay: &PeerId, node: &NodeId) -> Result<(), RouteError> {
        if self.dir.relay(stream).await?.as_ref() != Some(relay) {
            return Ok(());
        }
        self.dir.set_relay(stream, None).await?;
        let Some(broadcaster) = self.dir.broadcaster(stream).await? else { return Ok(()) };
        let Some(brec) = self.dir.peer(&broadcaster).await? else { return Ok(()) };
        self.deliver(&brec.node, &broadcaster, pb::delivery::Event::WatcherLeft(relay.to_string())).await;
        let next = self.place(stream, &broadcaster, Some(node), None).await?;
        tracing::warn!(%stream, lost = %relay, next = ?next, "relay lost; moving the stream");
        self.deliver(&brec.node, &broadcaster, media(stream, next.as_ref())).await;
        let source = match &next {
            Some(r) => {
                self.deliver(&brec.node, &broadcaster, pb::delivery::Event::WatcherJoined(r.to_string())).await;
                r.clone()
            }
            None => broadcaster,
        };
        for w in self.dir.watchers(stream).await? {
            self.deliver_to_peer(&source, pb::delivery::Event::WatcherJoined(w.to_string())).await?;
        }
        Ok(())
    }

    /// Where a watcher of `stream` gets its media: the stream's relay, else its broadcaster.
    async fn source(&self, stream: &StreamId, broadcaster: PeerId) -> Result<PeerId, RouteError> {
        Ok(self.dir.relay(stream).await?.unwrap_or(broadcaster))
    }

    async fn watch(&self, peer: &PeerId, stream: &StreamId) -> Result<(), RouteError> {
        let rec = self.dir.peer(peer).await?.ok_or_else(|| not_connected(peer))?;
        let Some(broadcaster) = self.dir.broadcaster(stream).await? else {
            return Err(self.no_broadcaster(stream).await);
        };
        if &broadcaster == peer || rec.relaying.is_some() {
            return Err(RouteError::BadRequest("you cannot watch your own stream".into()));
        }
        if rec.watching.as_ref() == Some(stream) {
            return Ok(());
        }
        if rec.watching.is_some() {
            self.leave(peer, &rec).await?;
        }
        let count = self.dir.add_watcher(stream, peer).await?;
        if self.max_watchers != 0 && count > self.max_watchers {
            self.dir.remove_watcher(stream, peer).await?;
            self.refused_full.inc();
            return Err(RouteError::Full(format!(
                "this stream has its maximum of {} watchers; try again later",
                self.max_watchers
            )));
        }
        self.dir.set_watching(peer, Some(stream)).await?;
        tracing::debug!(%peer, %stream, count, "watcher joined");
        let source = self.source(stream, broadcaster.clone()).await?;
        // The source's node learns where the watcher is: its offer goes there straight.
        let joined = pb::delivery::Event::WatcherJoined(peer.to_string());
        self.deliver_to_peer_from(&source, joined, rec.node.as_str()).await?;
        self.viewers_changed(&broadcaster, stream, count).await
    }

    /// Why a watch found no broadcaster for `stream`: it is not live (`not_found`), or it is live
    /// in the registry and its broadcaster's node has not re-asserted it yet after the directory
    /// lost it (a Redis restart): `unavailable`, retry in a moment, not "gone".
    async fn no_broadcaster(&self, stream: &StreamId) -> RouteError {
        let req = pb::GetStreamRequest { id: stream.to_string() };
        match self.registry.clone().get_stream(req).await {
            Ok(s) if s.get_ref().state == i32::from(pb::StreamState::Live) => {
                RouteError::RegistryUnavailable("the stream's broadcaster is reconnecting; retry in a moment".into())
            }
            Err(status) if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => {
                RouteError::RegistryUnavailable("could not check the stream right now; retry".into())
            }
            _ => RouteError::NotFound(format!("stream {stream} is not live")),
        }
    }

    /// A relay peer of `node` let `watcher` go: its watch ends (the broadcaster's count drops) and
    /// it is told why. Only the relay of the stream the watcher watches may do this.
    async fn watcher_dropped(
        &self,
        node: &NodeId,
        relay: &PeerId,
        watcher: &PeerId,
        code: ErrorCode,
        message: String,
    ) -> Result<(), RouteError> {
        let (rrec, wrec) = tokio::try_join!(self.dir.peer(relay), self.dir.peer(watcher))?;
        let (Some(rrec), Some(wrec)) = (rrec, wrec) else { return Ok(()) };
        if &rrec.node != node || rrec.relaying.is_none() || rrec.relaying != wrec.watching {
            return Err(RouteError::Forbidden(format!("{relay} does not relay what {watcher} watches")));
        }
        tracing::info!(%watcher, %relay, %code, "the relay let a watcher go");
        self.leave(watcher, &wrec).await?;
        let event = pb::NodeEvent { peer: watcher.to_string(), code: code.as_str().to_owned(), message };
        self.deliver(&wrec.node, watcher, pb::delivery::Event::Error(event)).await;
        Ok(())
    }

    /// Removes `peer` from the stream it watches, telling the broadcaster.
    async fn leave(&self, peer: &PeerId, rec: &PeerRecord) -> Result<(), RouteError> {
        let Some(stream) = &rec.watching else { return Ok(()) };
        let count = self.dir.remove_watcher(stream, peer).await?;
        self.dir.set_watching(peer, None).await?;
        if let Some(b) = self.dir.broadcaster(stream).await? {
            let source = self.source(stream, b.clone()).await?;
            self.deliver_to_peer(&source, pb::delivery::Event::WatcherLeft(peer.to_string())).await?;
            self.viewers_changed(&b, stream, count).await?;
        }
        Ok(())
    }

    async fn viewers_changed(&self, broadcaster: &PeerId, stream: &StreamId, count: u32) -> Result<(), RouteError> {
        let vc = pb::ViewerCount { stream_id: stream.to_string(), count };
        self.deliver_to_peer(broadcaster, pb::delivery::Event::Viewers(vc)).await?;
        let mut registry = self.registry.clone();
        let req = pb::SetViewersRequest { id: stream.to_string(), viewers: count };
        if let Err(e) = registry.set_viewers(req).await {
            tracing::debug!(error = %e, %stream, "viewer count not stored");
        }
        Ok(())
    }

    /// Ends the peer's broadcast: registry first (so every page sees stream_off), then membership.
    async fn stop_broadcast(&self, peer: &PeerId, rec: &PeerRecord) -> Result<(), RouteError> {
        let Some(stream) = &rec.broadcasting else { return Ok(()) };
        self.end_stream(stream).await?;
        self.dir.set_broadcasting(peer, None, Some(stream)).await?;
        tracing::info!(%peer, %stream, "broadcast stopped");
        Ok(())
    }

    /// Ends `stream` in the registry (so every page sees stream_off) and drops its membership.
    async fn end_stream(&self, stream: &StreamId) -> Result<(), RouteError> {
        let mut registry = self.registry.clone();
        if let Err(e) = registry.end_stream(pb::EndStreamRequest { id: stream.to_string() }).await {
            tracing::warn!(error = %e, %stream, "registry did not end the stream");
        }
        if let Some(r) = self.dir.relay(stream).await? {
            self.drop_relay(stream, &r).await?;
        }
        for w in self.dir.clear_stream(stream).await? {
            self.dir.set_watching(&w, None).await?;
        }
        Ok(())
    }

    /// A peer is gone for good. Ignored if it has since resumed on another node.
    pub async fn detach(&self, node: &NodeId, peer: &PeerId) -> Result<(), RouteError> {
        let Some(rec) = self.dir.peer(peer).await? else { return Ok(()) };
        if &rec.node != node {
            return Ok(());
        }
        self.stop_broadcast(peer, &rec).await?;
        self.leave(peer, &rec).await?;
        self.dir.remove_peer(peer, node).await?;
        if let Some(stream) = &rec.relaying {
            self.relay_lost(stream, peer, node).await?;
        }
        Ok(())
    }

    /// Moves a peer to `node` if the token matches; returns what it was doing.
    pub async fn resume(&self, peer: &PeerId, token: &str, node: &NodeId) -> Result<pb::ResumeResponse, RouteError> {
        let rec = self.dir.peer(peer).await?.ok_or_else(|| RouteError::NotFound("that session has expired".into()))?;
        if rec.token.is_empty() || rec.token != token {
            return Err(RouteError::Forbidden("bad resume token".into()));
        }
        if &rec.node != node {
            self.dir.move_peer(peer, &rec.node, node).await?;
            self.deliver(&rec.node, peer, pb::delivery::Event::Evicted(pb::Evicted {})).await;
            // What reached nobody while the peer moved goes to its new node first, in order; the
            // gateway holds it until the socket is attached (it expects the resume).
            self.hand_over_parked(peer, node).await?;
        }
        let s = |o: &Option<StreamId>| o.as_ref().map(ToString::to_string).unwrap_or_default();
        Ok(pb::ResumeResponse { broadcasting: s(&rec.broadcasting), watching: s(&rec.watching) })
    }
}

/// The least loaded of `nodes` (fewest subscribers, then streams), not `not_on`.
fn least_loaded(nodes: Vec<onair_core::RelayNode>, not_on: Option<&NodeId>) -> Option<NodeId> {
    nodes
        .into_iter()
        .filter(|n| Some(&n.node) != not_on)
        .min_by_key(|n| (n.subscribers, n.streams, n.node.to_string()))
        .map(|n| n.node)
}

/// The `media` delivery telling a broadcaster how its stream travels: to `relay`, or peer to peer.
fn media(stream: &StreamId, relay: Option<&PeerId>) -> pb::delivery::Event {
    pb::delivery::Event::Media(pb::MediaMode {
        stream_id: stream.to_string(),
        relay: relay.map(ToString::to_string).unwrap_or_default(),
    })
}

/// How long deliveries for a peer whose node is gone wait for it to resume (longer than the
/// gateways' resume grace, 15 s by default).
const PARK_TTL_MS: i64 = 30_000;

fn not_connected(p: &PeerId) -> RouteError {
    RouteError::NotFound(format!("peer {p} is not connected"))
}
