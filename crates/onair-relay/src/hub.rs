//! The relay as a signaling node: turns deliveries for its relay peers into engine commands,
//! remembers which stream each relay peer carries (to re-assert and to drop ended streams), holds
//! the WHIP/WHEP sessions (`sessions.rs`), and reports its load with every heartbeat.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use onair_core::{PeerId, StreamEvent, StreamId};
use onair_node::NodeLink;
use onair_proto::convert::FeedEvent;
use onair_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::engine::Command;
use crate::metrics::RelayMetrics;
use crate::sessions::{self, Pending, Role, Session, Sessions};

/// How long a WHIP/WHEP request may wait for its stream, pairing and answer before it fails.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(6);

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
    sessions: Mutex<Sessions>,
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
            sessions: Mutex::new(Sessions::default()),
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
        for s in self.sessions.lock().drain() {
            if let Some(p) = &s.pending {
                self.reply(p, 503, "the relay is shutting down; retry");
            }
            self.detach(&s.peer);
        }
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

    fn detach(&self, peer: &PeerId) {
        self.link.send(pb::node_message::Msg::Detach(pb::Detach { peer: peer.to_string() }));
    }

    fn send_reply(&self, reply: pb::SessionReply) {
        self.link.send(pb::node_message::Msg::SessionReply(reply));
    }

    fn reply(&self, p: &Pending, status: u32, message: &str) {
        self.send_reply(pb::SessionReply {
            id: p.id.clone(),
            reply_to: p.reply_to.clone(),
            status,
            message: message.to_owned(),
            ..Default::default()
        });
    }

    /// A WHIP/WHEP request from a gateway (through signaling).
    fn session_request(&self, req: pb::SessionRequest) {
        let pending = Pending {
            id: req.id.clone(),
            reply_to: req.reply_to.clone(),
            offer: String::new(),
            since: Instant::now(),
            restart: false,
        };
        match pb::SessionOp::try_from(req.op).unwrap_or(pb::SessionOp::Unspecified) {
            pb::SessionOp::Publish => self.open(req, pending, Role::Publisher),
            pb::SessionOp::Subscribe => match req.stream_id.parse::<StreamId>() {
                Ok(stream) => self.open(req, pending, Role::Watcher(stream)),
                Err(_) => self.reply(&pending, 404, "no such stream"),
            },
            pb::SessionOp::Patch => self.patch(&req, &pending),
            pb::SessionOp::Delete => {
                let found = self.sessions.lock().find(&req.session).map(|s| s.peer.clone());
                match found {
                    Some(peer) => {
                        self.sessions.lock().remove(&peer);
                        tracing::info!(%peer, "session ended by its client");
                        self.detach(&peer);
                        self.reply(&pending, 200, "");
                    }
                    None => self.reply(&pending, 404, "no such session (it ended, or its relay is gone)"),
                }
            }
            pb::SessionOp::Unspecified => self.reply(&pending, 400, "unknown session operation"),
        }
    }

    /// A new session: a peer of this node that publishes (WHIP) or watches (WHEP) for the client.
    fn open(&self, req: pb::SessionRequest, mut pending: Pending, role: Role) {
        if !self.accepting.load(Ordering::SeqCst) {
            return self.reply(&pending, 503, "the relay is shutting down; retry");
        }
        if let Err(e) = str0m::change::SdpOffer::from_sdp_string(&req.sdp) {
            return self.reply(&pending, 400, &format!("the body is not an SDP offer: {e}"));
        }
        if !req.sdp.lines().any(|l| l.starts_with("m=video") || l.starts_with("m=audio")) {
            return self.reply(&pending, 400, "the offer has no audio or video");
        }
        pending.offer = serde_json::json!({ "type": "offer", "sdp": req.sdp }).to_string();
        let peer = PeerId::generate();
        let session = Session::new(peer.clone(), role.clone(), &req.sdp, pending);
        self.sessions.lock().insert(session);
        // A session's peer lives and dies with this node (no resume token), like a relay peer.
        self.link
            .send(pb::node_message::Msg::Attach(pb::Attach { peer: peer.to_string(), resume_token: String::new() }));
        match role {
            Role::Publisher => {
                let title = if req.title.trim().is_empty() { "WHIP stream".to_owned() } else { req.title };
                tracing::info!(%peer, "WHIP publish");
                let owner = req.owner;
                self.link.send(pb::node_message::Msg::Publish(pb::Publish { peer: peer.to_string(), title, owner }));
            }
            Role::Watcher(stream) => {
                tracing::info!(%peer, %stream, "WHEP watch");
                self.link.send(pb::node_message::Msg::Watch(pb::Watch {
                    peer: peer.to_string(),
                    stream_id: stream.to_string(),
                }));
            }
        }
    }

    /// Trickle ICE for a session (RFC 9725 §4.3): the sdpfrag's candidates go to its connection;
    /// an sdpfrag with new ICE credentials is an ICE restart (§4.4.1), answered with ours once the
    /// connection renegotiated.
    fn patch(&self, req: &pb::SessionRequest, pending: &Pending) {
        let mut all = self.sessions.lock();
        let Some(s) = all.find(&req.session) else {
            drop(all);
            return self.reply(pending, 404, "no such session (it ended, or its relay is gone)");
        };
        let if_match = req.if_match.trim();
        if !if_match.is_empty() && if_match != "*" && if_match.trim_matches('"') != s.etag {
            drop(all);
            return self.reply(pending, 412, "If-Match does not name this session's current ICE session");
        }
        let Some(relay) = s.relay.clone() else {
            drop(all);
            return self.reply(pending, 409, "the session is not established yet");
        };
        if s.pending.is_some() {
            drop(all);
            return self.reply(pending, 409, "an ICE restart of this session is under way; retry when it is answered");
        }
        let peer = s.peer.clone();
        let new_ufrag = sessions::ice_ufrag(&req.sdp).filter(|u| Some(u) != s.remote_ufrag.as_ref());
        let restarting = new_ufrag.is_some();
        if let Some(ufrag) = new_ufrag {
            if if_match.is_empty() {
                drop(all);
                return self.reply(pending, 428, "an ICE restart needs If-Match (\"*\" or the session's ETag)");
            }
            let Some(offer) = sessions::restart_offer(&s.offer_sdp, &req.sdp) else {
                drop(all);
                return self.reply(pending, 400, "an ICE restart sdpfrag needs a=ice-ufrag and a=ice-pwd");
            };
            tracing::info!(%peer, "ICE restart");
            let payload = serde_json::json!({ "type": "offer", "sdp": offer }).to_string();
            s.remote_ufrag = Some(ufrag);
            s.offer_sdp = offer;
            s.pending = Some(Pending { restart: true, ..pending.clone() });
            let role = s.role.clone();
            drop(all);
            self.command(match role {
                Role::Publisher => {
                    Command::Signal { relay: relay.clone(), from: peer.clone(), kind: pb::SignalKind::Offer, payload }
                }
                Role::Watcher(_) => Command::Answer { relay: relay.clone(), watcher: peer.clone(), payload },
            });
        } else {
            drop(all);
        }
        for candidate in sessions::frag_candidates(&req.sdp) {
            self.command(Command::Signal {
                relay: relay.clone(),
                from: peer.clone(),
                kind: pb::SignalKind::Candidate,
                payload: candidate,
            });
        }
        // A restart is answered when the connection renegotiated (`session_event`).
        if !restarting {
            self.reply(pending, 204, "");
        }
    }

    /// A delivery for a session's peer.
    fn session_event(&self, peer: &PeerId, event: pb::delivery::Event) {
        use pb::delivery::Event;
        let mut all = self.sessions.lock();
        let Some(s) = all.get_mut(peer) else { return };
        match event {
            Event::Media(m) if m.relay.is_empty() => {
                // Not relayed here (this node stopped taking streams meanwhile): no media path.
                let s = all.remove(peer);
                drop(all);
                if let Some(p) = s.and_then(|s| s.pending) {
                    self.reply(&p, 503, "no relay could take the stream; retry");
                }
                self.detach(peer);
            }
            Event::Published(stream) => s.stream = stream.id.parse().ok(),
            Event::WatcherJoined(r) if s.role == Role::Publisher => {
                // The stream's relay peer, on this node: the client's offer goes to it.
                let (Ok(relay), Some(p)) = (r.parse::<PeerId>(), s.pending.as_ref()) else { return };
                s.relay = Some(relay.clone());
                let payload = p.offer.clone();
                drop(all);
                self.command(Command::Signal { relay, from: peer.clone(), kind: pb::SignalKind::Offer, payload });
            }
            Event::Signal(sig) if pb::SignalKind::try_from(sig.kind) == Ok(pb::SignalKind::Answer) => {
                let Some(p) = s.pending.take() else { return };
                let sdp = serde_json::from_str::<serde_json::Value>(&sig.payload)
                    .ok()
                    .and_then(|v| v.get("sdp").and_then(|x| x.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                if p.restart {
                    // A new ICE session: a new entity tag, and our new credentials in an sdpfrag.
                    s.etag = sessions::new_etag();
                    let reply = pb::SessionReply {
                        id: p.id,
                        reply_to: p.reply_to,
                        status: 200,
                        sdp: sessions::restart_answer_frag(&sdp),
                        etag: s.etag.clone(),
                        ..Default::default()
                    };
                    drop(all);
                    return self.send_reply(reply);
                }
                let reply = pb::SessionReply {
                    id: p.id,
                    reply_to: p.reply_to,
                    status: 201,
                    session: s.id(self.link.node()),
                    sdp,
                    etag: s.etag.clone(),
                    message: String::new(),
                    stream_id: s.stream.as_ref().map(ToString::to_string).unwrap_or_default(),
                };
                drop(all);
                self.send_reply(reply);
            }
            Event::Error(e) => {
                drop(all);
                self.session_failed(peer, &e.code, &e.message);
            }
            Event::Evicted(_) => {
                all.remove(peer);
            }
            _ => {}
        }
    }

    /// Signaling refused what a session's peer asked (publish, watch): the request fails with
    /// the matching HTTP status and the peer goes.
    fn session_failed(&self, peer: &PeerId, code: &str, message: &str) {
        let Some(s) = self.sessions.lock().remove(peer) else { return };
        if let Some(p) = &s.pending {
            self.reply(p, u32::from(onair_core::ErrorCode::from_wire(code).http_status()), message);
        }
        self.detach(peer);
    }

    /// A session's media connection is gone (the client left without DELETE, or never connected):
    /// the session ends (a publisher's stream with it).
    pub fn connection_gone(&self, peer: &PeerId) {
        let s = self.sessions.lock().remove(peer);
        if let Some(s) = s {
            tracing::info!(%peer, role = ?s.role, "session's connection gone; ending it");
            if let Some(p) = &s.pending {
                self.reply(p, 503, "the media connection could not be set up");
            }
            self.detach(peer);
        }
    }

    /// Fails the requests that waited too long (a stream or pairing that never came).
    pub fn expire_requests(&self) {
        let overdue = self.sessions.lock().overdue(Instant::now(), ANSWER_WITHIN);
        for peer in overdue {
            tracing::warn!(%peer, "session request not answered in time");
            self.session_failed(&peer, "unavailable", "the relay did not get the stream in time; retry");
        }
    }

    fn deliver(&self, d: pb::Delivery) {
        use pb::delivery::Event;
        if d.to.is_empty() {
            if let Some(Event::SessionRequest(req)) = d.event {
                self.session_request(req);
            }
            return;
        }
        let Ok(relay) = d.to.parse::<PeerId>() else { return };
        if self.sessions.lock().contains(&relay) {
            if let Some(event) = d.event {
                self.session_event(&relay, event);
            }
            return;
        }
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
                if !self.assigned.lock().contains_key(&relay) {
                    return;
                }
                // A WHEP watcher brought its own offer: answer it instead of offering.
                let whep = {
                    let mut all = self.sessions.lock();
                    all.get_mut(&watcher).and_then(|s| {
                        s.relay = Some(relay.clone());
                        s.pending.as_ref().map(|p| p.offer.clone())
                    })
                };
                match whep {
                    Some(payload) => self.command(Command::Answer { relay, watcher, payload }),
                    None => self.command(Command::Subscribe { relay, watcher }),
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
        if let Ok(peer) = ev.peer.parse::<PeerId>() {
            self.session_failed(&peer, &ev.code, &ev.message);
        }
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
        let mut states: Vec<pb::PeerState> = self
            .assigned
            .lock()
            .iter()
            .map(|(peer, a)| pb::PeerState {
                peer: peer.to_string(),
                resume_token: String::new(),
                broadcasting: String::new(),
                watching: String::new(),
                relaying: a.stream.to_string(),
            })
            .collect();
        states.extend(self.sessions.lock().states());
        states
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
