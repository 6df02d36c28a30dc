//! Every WebRTC peer of the relay, in one task that owns them all (str0m is sans-IO): datagrams
//! from the sockets are routed to their peer by remote address (ICE ufrag for a new address), what
//! the peers transmit goes out through the socket of their local candidate, and media frames of a
//! stream's publisher are written to each of its subscribers (str0m repacketizes per subscriber,
//! so SSRCs and sequence numbers are each subscriber's own; `layers` picks each subscriber's
//! simulcast layer by its bandwidth estimate and keeps its timestamps continuous, so neither a
//! layer switch nor a new publisher connection breaks a subscriber's decoder).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onair_core::{ErrorCode, PeerId, StreamId};
use onair_node::NodeLink;
use onair_proto::v1 as pb;
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::RelayConfig;
use crate::layers::{Accept, KeyframeRequests, LayerId, Layers, Ranked, Selector};
use crate::metrics::RelayMetrics;
use crate::net::{RelaySockets, candidates};
use crate::outbox::Outbox;

/// At most one keyframe request per second per layer goes to a stream's broadcaster (however
/// many subscribers ask), as mediasoup does.
const KEYFRAME_EVERY: Duration = Duration::from_secs(1);
/// RTP clock of video.
const VIDEO_CLOCK: u64 = 90_000;
/// How often each connection reports its RTP statistics (NACK counts for the metrics).
const STATS_EVERY: Duration = Duration::from_secs(2);
/// Datagrams waiting for the engine; more are dropped (and counted).
const INBOUND_QUEUE: usize = 4096;
/// A datagram larger than this is not WebRTC (MTU-sized packets are ~1200 bytes).
pub(crate) const MAX_DATAGRAM: usize = 2048;
/// A peer that has not connected within this long is dropped.
const CONNECT_WITHIN: Duration = Duration::from_secs(30);
/// A subscriber's bandwidth estimate starts here (it then follows TWCC feedback): enough for a
/// browser's top simulcast layer of a typical camera, so most start on it.
const INITIAL_ESTIMATE_BPS: u64 = 1_500_000;
/// Video packets a subscriber's connection keeps to answer NACKs from, at most (str0m's default
/// is 1 000); 400 is over a second of a 3 Mbit/s stream.
const SEND_BUFFER_VIDEO: usize = 400;
/// Audio packets kept for NACKs (str0m's default: a second of 20 ms frames).
const SEND_BUFFER_AUDIO: usize = 50;
/// How long a sent packet is kept for NACKs (str0m's default, 3 s, is most of a subscriber's
/// memory): a packet not asked again within a second is for a frame the watcher's jitter buffer
/// has given up on (it asks for a keyframe instead).
const NACK_WINDOW: Duration = Duration::from_secs(1);
/// str0m's default: queued resends are dropped when they pass this share of what is sent.
const RTX_RATIO_CAP: f32 = 0.15;
/// A subscriber whose receiver reports say it lost at least this share of its video, while its
/// estimate does not carry the lowest layer, is too slow for the stream (see `let_go_starved`).
const SLOW_LOSS: f32 = 0.1;
/// How often subscribers' estimators are told the rate of the stream's top layer (what they probe for).
const DESIRED_EVERY: Duration = Duration::from_secs(1);

/// What the hub asks the engine to do.
#[derive(Debug)]
pub enum Command {
    /// `relay` carries `stream`; `broadcaster` will offer to it.
    Assign {
        /// The relay peer.
        relay: PeerId,
        /// The stream.
        stream: StreamId,
        /// Its broadcaster.
        broadcaster: PeerId,
    },
    /// An offer, answer or candidate for `relay` from `from`.
    Signal {
        /// The relay peer.
        relay: PeerId,
        /// The sender.
        from: PeerId,
        /// What it is.
        kind: pb::SignalKind,
        /// The browser's JSON.
        payload: String,
    },
    /// A new watcher that brought its own offer (WHEP): answer it.
    Answer {
        /// The relay peer.
        relay: PeerId,
        /// The watcher.
        watcher: PeerId,
        /// Its offer (a browser-style JSON description).
        payload: String,
    },
    /// Offer the stream to a new watcher.
    Subscribe {
        /// The relay peer.
        relay: PeerId,
        /// The watcher.
        watcher: PeerId,
    },
    /// A watcher left.
    Unsubscribe {
        /// The relay peer.
        relay: PeerId,
        /// The watcher.
        watcher: PeerId,
    },
    /// The stream is over here (ended, moved, or the relay drains).
    Drop {
        /// The relay peer.
        relay: PeerId,
    },
}

/// A packet from a peer: a UDP datagram, or an ICE-TCP frame (`tcp.rs`).
pub(crate) struct Datagram {
    pub(crate) data: Vec<u8>,
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
    pub(crate) at: Instant,
    pub(crate) proto: Protocol,
}

type ClientId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Publisher,
    Subscriber,
}

struct Client {
    rtc: Rtc,
    relay: PeerId,
    remote: PeerId,
    role: Role,
    /// Our offer to a subscriber, until its answer.
    pending: Option<SdpPendingOffer>,
    /// A subscriber's send-only media, by kind.
    mids: Vec<(Mid, MediaKind)>,
    created: Instant,
    connected: bool,
    /// Since when ICE has had no working pair (reset when it works again, e.g. after a restart).
    silent_since: Option<Instant>,
    timeout: Instant,
    /// Our ICE ufrag on this connection (the index of `by_ufrag`).
    ufrag: String,
    /// A subscriber's video layer and timeline.
    video: Selector,
    /// NACKs counted so far per media and layer (str0m's statistics are totals).
    nacks: Vec<(Mid, LayerId, u64)>,
    /// The share of a subscriber's video packets lost, as its last receiver reports said.
    video_loss: f32,
}

/// The video codec a stream is published in (what its subscribers are offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VideoCodec {
    Vp8,
    H264,
}

struct StreamState {
    stream: StreamId,
    broadcaster: PeerId,
    /// The publisher's video codec, once its offer was accepted.
    video: Option<VideoCodec>,
    /// Watchers that joined before the publisher's offer: offered to once its codec is known.
    waiting: Vec<PeerId>,
    publisher: Option<ClientId>,
    subscribers: HashMap<PeerId, ClientId>,
    /// The publisher's incoming video media (for keyframe requests).
    video_in: Option<Mid>,
    /// The publisher's video layers (one, `None`, without simulcast).
    layers: Layers,
    /// Whether the publisher's offer has simulcast (its subscribers then estimate bandwidth).
    simulcast: bool,
    keyframes: KeyframeRequests,
}

impl StreamState {
    /// Whether `watcher`'s connection estimates its bandwidth: on a simulcast stream, to pick its
    /// layer; a recorder gets the top layer whatever its bandwidth, so nothing picks lower.
    fn estimates_for(&self, watcher: &PeerId) -> bool {
        self.simulcast && !watcher.is_recorder()
    }
}

/// The relay's media engine.
pub struct Engine {
    sockets: RelaySockets,
    local: Vec<Candidate>,
    link: NodeLink,
    metrics: RelayMetrics,
    max_subscribers: usize,
    drop_silent_after: Duration,
    drop_slow_after: Duration,
    commands: mpsc::Receiver<Command>,
    clients: HashMap<ClientId, Client>,
    next_id: ClientId,
    by_addr: HashMap<SocketAddr, ClientId>,
    by_ufrag: HashMap<String, ClientId>,
    streams: HashMap<PeerId, StreamState>,
    crypto: Arc<str0m::config::CryptoProvider>,
    /// When subscribers' estimators were last told what to probe for.
    desired_at: Instant,
    /// When subscribers' send queues were last observed.
    queues_at: Instant,
    /// Open ICE-TCP connections.
    tcp: crate::tcp::TcpConns,
    /// What the peers transmitted since the last flush (see `outbox`).
    outbox: Outbox,
    /// The remote peer of every connection removed (the hub ends a WHIP/WHEP session with it).
    gone: mpsc::UnboundedSender<PeerId>,
}

impl Engine {
    /// An engine over `sockets`, the sender the hub drives it with, and the receiver of the
    /// remote peers whose connection was removed.
    pub fn new(
        config: &RelayConfig,
        sockets: RelaySockets,
        link: NodeLink,
        metrics: RelayMetrics,
    ) -> (Self, mpsc::Sender<Command>, mpsc::UnboundedReceiver<PeerId>) {
        let (tx, commands) = mpsc::channel(4096);
        let (gone, gone_rx) = mpsc::unbounded_channel();
        let local = candidates(&sockets.addrs(), config.public);
        let engine = Self {
            sockets,
            local,
            link,
            metrics,
            max_subscribers: config.max_subscribers,
            drop_silent_after: config.drop_silent_after,
            drop_slow_after: config.drop_slow_after,
            commands,
            clients: HashMap::new(),
            next_id: 1,
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            streams: HashMap::new(),
            crypto: Arc::new(str0m::crypto::from_feature_flags()),
            desired_at: Instant::now(),
            queues_at: Instant::now(),
            tcp: crate::tcp::TcpConns::default(),
            outbox: Outbox::default(),
            gone,
        };
        (engine, tx, gone_rx)
    }

    /// Runs until `stop` fires (or the hub is gone).
    pub async fn run(mut self, stop: CancellationToken) {
        let (dtx, mut datagrams) = mpsc::channel::<Datagram>(INBOUND_QUEUE);
        let mut readers = tokio::task::JoinSet::new();
        for (addr, socket) in &self.sockets.sockets {
            readers.spawn(read_socket(*addr, Arc::clone(socket), dtx.clone(), self.metrics.clone(), stop.clone()));
        }
        for (addr, listener) in &self.sockets.listeners {
            let (conns, metrics) = (self.tcp.clone(), self.metrics.clone());
            readers.spawn(crate::tcp::accept(Arc::clone(listener), *addr, conns, dtx.clone(), metrics, stop.clone()));
        }
        drop(dtx);
        loop {
            let next = self.clients.values().map(|c| c.timeout).min();
            let sleep = next.map_or(Duration::from_millis(100), |t| t.saturating_duration_since(Instant::now()));
            tokio::select! {
                () = stop.cancelled() => break,
                c = self.commands.recv() => match c {
                    Some(c) => self.command(c),
                    None => break,
                },
                d = datagrams.recv() => match d {
                    Some(d) => {
                        self.datagram(d);
                        // Take whatever else arrived meanwhile before polling timers.
                        for _ in 0..64 {
                            match datagrams.try_recv() {
                                Ok(d) => self.datagram(d),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                () = tokio::time::sleep(sleep) => {}
            }
            self.tick(Instant::now());
        }
        for c in self.clients.values_mut() {
            c.rtc.disconnect();
        }
        readers.abort_all();
    }

    /// A new connection with Opus and `video` (`None`: VP8 and H.264, for offers we answer); with
    /// `estimate`, it estimates its bandwidth (TWCC), which picks a subscriber's simulcast layer.
    /// Only then: with one layer there is nothing to pick, and str0m paces what it sends to the
    /// estimate (added latency, and CPU for every feedback report). A subscriber that does not
    /// estimate is not offered transport-wide sequence numbers, so it sends no feedback to
    /// process; a publisher is (the broadcaster's encoder adapts to our feedback).
    fn rtc(&self, video: Option<VideoCodec>, role: Role, estimate: bool) -> Rtc {
        let mut builder = Rtc::builder();
        if role == Role::Subscriber && !estimate {
            let mut exts = ExtensionMap::empty();
            for (id, ext) in ExtensionMap::standard().iter() {
                if *ext != Extension::TransportSequenceNumber {
                    exts.set(id, ext.clone());
                }
            }
            builder = builder.set_extension_map(exts);
        }
        let estimate = estimate.then(|| Bitrate::bps(INITIAL_ESTIMATE_BPS));
        let mut rtc = builder
            .set_crypto_provider(Arc::clone(&self.crypto))
            .clear_codecs()
            .enable_vp8(video != Some(VideoCodec::H264))
            .enable_h264(video != Some(VideoCodec::Vp8))
            .enable_opus(true, false)
            .enable_bwe(estimate)
            .set_stats_interval(Some(STATS_EVERY))
            .build(Instant::now());
        for c in &self.local {
            rtc.add_local_candidate(c.clone());
        }
        rtc
    }

    fn add_client(&mut self, mut rtc: Rtc, relay: &PeerId, remote: &PeerId, role: Role) -> ClientId {
        let id = self.next_id;
        self.next_id += 1;
        let now = Instant::now();
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        self.by_ufrag.insert(ufrag.clone(), id);
        let client = Client {
            rtc,
            relay: relay.clone(),
            remote: remote.clone(),
            role,
            pending: None,
            mids: Vec::new(),
            created: now,
            connected: false,
            silent_since: None,
            timeout: now,
            ufrag,
            video: Selector::new(VIDEO_CLOCK),
            nacks: Vec::new(),
            video_loss: 0.0,
        };
        self.clients.insert(id, client);
        id
    }

    fn remove_client(&mut self, id: ClientId) {
        let Some(mut c) = self.clients.remove(&id) else { return };
        c.rtc.disconnect();
        let _ = self.gone.send(c.remote.clone());
        self.by_addr.retain(|_, v| *v != id);
        self.by_ufrag.remove(&c.ufrag);
        if let Some(s) = self.streams.get_mut(&c.relay) {
            match c.role {
                Role::Publisher if s.publisher == Some(id) => {
                    s.publisher = None;
                    s.video_in = None;
                }
                Role::Subscriber if s.subscribers.get(&c.remote) == Some(&id) => {
                    s.subscribers.remove(&c.remote);
                    self.metrics.subscribers.dec();
                }
                _ => {}
            }
        }
    }

    fn signal(&self, relay: &PeerId, to: &PeerId, kind: pb::SignalKind, payload: String) {
        self.link.send(pb::node_message::Msg::Signal(pb::Signal {
            from: relay.to_string(),
            to: to.to_string(),
            kind: kind.into(),
            payload,
        }));
    }

    /// Tells signaling this relay let `watcher` go (`code`: `too_slow`, `full`): the watch ends
    /// and the watcher sees why.
    fn let_go(&self, relay: &PeerId, watcher: &PeerId, code: ErrorCode, message: &str) {
        self.link.send(pb::node_message::Msg::WatcherDropped(pb::WatcherDropped {
            relay: relay.to_string(),
            watcher: watcher.to_string(),
            code: code.as_str().to_owned(),
            message: message.to_owned(),
        }));
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Assign { relay, stream, broadcaster } => {
                self.metrics.streams.inc();
                self.streams.insert(
                    relay,
                    StreamState {
                        stream,
                        broadcaster,
                        video: None,
                        waiting: Vec::new(),
                        publisher: None,
                        subscribers: HashMap::new(),
                        video_in: None,
                        layers: Layers::default(),
                        simulcast: false,
                        keyframes: KeyframeRequests::default(),
                    },
                );
            }
            Command::Signal { relay, from, kind, payload } => self.on_signal(&relay, &from, kind, &payload),
            Command::Subscribe { relay, watcher } => self.subscribe(&relay, &watcher),
            Command::Answer { relay, watcher, payload } => self.answer_watcher(&relay, &watcher, &payload),
            Command::Unsubscribe { relay, watcher } => {
                if let Some(s) = self.streams.get_mut(&relay) {
                    s.waiting.retain(|w| w != &watcher);
                }
                if let Some(id) = self.streams.get(&relay).and_then(|s| s.subscribers.get(&watcher).copied()) {
                    self.remove_client(id);
                }
            }
            Command::Drop { relay } => {
                let Some(s) = self.streams.get(&relay) else { return };
                let ids: Vec<ClientId> = s.publisher.into_iter().chain(s.subscribers.values().copied()).collect();
                for id in ids {
                    self.remove_client(id);
                }
                if let Some(s) = self.streams.remove(&relay) {
                    self.metrics.streams.dec();
                    tracing::info!(stream = %s.stream, %relay, "stream no longer relayed here");
                }
            }
        }
    }

    fn on_signal(&mut self, relay: &PeerId, from: &PeerId, kind: pb::SignalKind, payload: &str) {
        let Some(s) = self.streams.get(relay) else { return };
        let is_broadcaster = &s.broadcaster == from;
        let client = if is_broadcaster { s.publisher } else { s.subscribers.get(from).copied() };
        match kind {
            pb::SignalKind::Offer if is_broadcaster => self.publish(relay, from, payload, client),
            pb::SignalKind::Answer => {
                let Some(id) = client else { return };
                let Some(c) = self.clients.get_mut(&id) else { return };
                let (Some(pending), Ok(sdp)) = (c.pending.take(), sdp_of(payload)) else { return };
                let answer = match SdpAnswer::from_sdp_string(&sdp) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, peer = %from, "unparsable answer");
                        return;
                    }
                };
                if let Err(e) = c.rtc.sdp_api().accept_answer(pending, answer) {
                    tracing::debug!(error = %e, peer = %from, "answer not accepted; dropping the subscriber");
                    self.remove_client(id);
                    return;
                }
                self.learn_candidates(id, sdp_candidates(&sdp));
            }
            pb::SignalKind::Candidate => {
                let Some(id) = client else { return };
                let Some(c) = self.clients.get_mut(&id) else { return };
                if let Some(candidate) = remote_candidate(payload) {
                    let addr = candidate.addr();
                    c.rtc.add_remote_candidate(candidate);
                    self.learn_candidates(id, [addr]);
                }
            }
            _ => {}
        }
    }

    /// Routes datagrams from a peer's announced candidate addresses to it (our checks' responses
    /// come from there before the peer's own requests may have): at most 16 addresses per peer.
    fn learn_candidates(&mut self, id: ClientId, addrs: impl IntoIterator<Item = SocketAddr>) {
        let known = self.by_addr.values().filter(|v| **v == id).count();
        for addr in addrs.into_iter().take(16usize.saturating_sub(known)) {
            self.by_addr.entry(addr).or_insert(id);
        }
    }

    /// The broadcaster's offer: a new publisher connection, or a renegotiation (ICE restart) of
    /// the current one.
    fn publish(&mut self, relay: &PeerId, from: &PeerId, payload: &str, current: Option<ClientId>) {
        let parse = |sdp: &str| SdpOffer::from_sdp_string(sdp).map_err(|e| e.to_string());
        let sdp = match sdp_of(payload).map_err(str::to_owned).and_then(|s| parse(&s).map(|_| s)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, peer = %from, "unusable offer from the broadcaster");
                return;
            }
        };
        if let Some(id) = current
            && self.renegotiate(relay, from, id, &sdp)
        {
            return;
        }
        if let Some(id) = current {
            self.remove_client(id);
        }
        let Some((rtc, answer)) = self.accept(&sdp, from, None, Role::Publisher, false) else { return };
        let id = self.add_client(rtc, relay, from, Role::Publisher);
        self.learn_candidates(id, sdp_candidates(&sdp));
        let answer = answer.to_sdp_string();
        let waiting = match self.streams.get_mut(relay) {
            Some(s) => {
                s.publisher = Some(id);
                s.video_in = None;
                // Its layers are its own: subscribers wait for its first keyframe (it starts with one).
                s.layers = Layers::default();
                s.keyframes.clear();
                for sub in s.subscribers.values() {
                    if let Some(c) = self.clients.get_mut(sub) {
                        c.video.restart();
                    }
                }
                s.video = Some(answered_video(&answer));
                s.simulcast = sdp.lines().any(|l| l.trim().starts_with("a=simulcast:"));
                std::mem::take(&mut s.waiting)
            }
            None => Vec::new(),
        };
        let payload = serde_json::json!({ "type": "answer", "sdp": answer }).to_string();
        self.signal(relay, from, pb::SignalKind::Answer, payload);
        for watcher in waiting {
            self.subscribe(relay, &watcher);
        }
    }

    /// A new offer on `id`'s live connection (an ICE restart, or other renegotiation), answered
    /// to `from`; false when the connection is gone or refused it (the caller starts a new one).
    fn renegotiate(&mut self, relay: &PeerId, from: &PeerId, id: ClientId, sdp: &str) -> bool {
        let Some(c) = self.clients.get_mut(&id).filter(|c| c.rtc.is_alive()) else { return false };
        let Ok(offer) = SdpOffer::from_sdp_string(sdp) else { return false };
        match c.rtc.sdp_api().accept_offer(offer) {
            Ok(answer) => {
                // An ICE restart gives this connection a new ufrag of ours.
                let ufrag = c.rtc.direct_api().local_ice_credentials().ufrag;
                if ufrag != c.ufrag {
                    self.by_ufrag.remove(&std::mem::replace(&mut c.ufrag, ufrag.clone()));
                    self.by_ufrag.insert(ufrag, id);
                }
                self.learn_candidates(id, sdp_candidates(sdp));
                let payload = serde_json::json!({ "type": "answer", "sdp": answer.to_sdp_string() }).to_string();
                self.signal(relay, from, pb::SignalKind::Answer, payload);
                self.poll(id);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, peer = %from, "renegotiation refused; starting a new connection");
                false
            }
        }
    }

    /// A new connection (with `video`, see [`Engine::rtc`]) that accepted `sdp`, an offer of
    /// `from`, and its answer.
    fn accept(
        &self,
        sdp: &str,
        from: &PeerId,
        video: Option<VideoCodec>,
        role: Role,
        estimate: bool,
    ) -> Option<(Rtc, SdpAnswer)> {
        let offer = SdpOffer::from_sdp_string(sdp).ok()?;
        let mut rtc = self.rtc(video, role, estimate);
        match rtc.sdp_api().accept_offer(offer) {
            Ok(answer) => Some((rtc, answer)),
            Err(e) => {
                tracing::warn!(error = %e, peer = %from, "offer not accepted");
                None
            }
        }
    }

    /// Whether `relay`'s stream can take `watcher` (replacing its earlier connection): false when
    /// the stream is not here or the relay is full (counted).
    fn room_for(&mut self, relay: &PeerId, watcher: &PeerId) -> bool {
        let Some(s) = self.streams.get(relay) else { return false };
        if let Some(old) = s.subscribers.get(watcher).copied() {
            self.remove_client(old);
        }
        if usize::try_from(self.metrics.subscribers.get()).unwrap_or(usize::MAX) >= self.max_subscribers {
            self.metrics.refused_full.inc();
            tracing::warn!(%relay, %watcher, max = self.max_subscribers, "relay full; subscriber refused");
            self.let_go(relay, watcher, ErrorCode::Full, "the media server of this stream is full; try again later");
            return false;
        }
        true
    }

    /// Offers the stream to a new watcher: send-only video (in the publisher's codec) and audio.
    /// Until the publisher's offer came, the watcher waits.
    fn subscribe(&mut self, relay: &PeerId, watcher: &PeerId) {
        let Some(s) = self.streams.get_mut(relay) else { return };
        let Some(video) = s.video else {
            if !s.waiting.contains(watcher) {
                s.waiting.push(watcher.clone());
            }
            return;
        };
        if !self.room_for(relay, watcher) {
            return;
        }
        let Some(s) = self.streams.get(relay) else { return };
        let msid = s.stream.to_string();
        let mut rtc = self.rtc(Some(video), Role::Subscriber, s.estimates_for(watcher));
        let mut api = rtc.sdp_api();
        let video =
            api.add_media(MediaKind::Video, Direction::SendOnly, Some(msid.clone()), Some("video".into()), None);
        let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, Some(msid), Some("audio".into()), None);
        let Some((offer, pending)) = api.apply() else { return };
        let id = self.add_client(rtc, relay, watcher, Role::Subscriber);
        if let Some(c) = self.clients.get_mut(&id) {
            c.pending = Some(pending);
            c.mids = vec![(video, MediaKind::Video), (audio, MediaKind::Audio)];
        }
        if let Some(s) = self.streams.get_mut(relay) {
            s.subscribers.insert(watcher.clone(), id);
        }
        self.metrics.subscribers.inc();
        let payload = serde_json::json!({ "type": "offer", "sdp": offer.to_sdp_string() }).to_string();
        self.signal(relay, watcher, pb::SignalKind::Offer, payload);
    }

    /// A watcher that offered (WHEP, receive-only): its send-only media come from the offer
    /// (`Event::MediaAdded`), the answer goes back as a signal.
    fn answer_watcher(&mut self, relay: &PeerId, watcher: &PeerId, payload: &str) {
        let Ok(sdp) = sdp_of(payload) else { return };
        // A watcher's new offer on its live connection (a WHEP ICE restart) renegotiates it.
        let current = self.streams.get(relay).and_then(|s| s.subscribers.get(watcher).copied());
        if let Some(id) = current
            && self.renegotiate(relay, watcher, id, &sdp)
        {
            return;
        }
        if !self.room_for(relay, watcher) {
            return;
        }
        // The stream's codec when known, so the watcher's answer cannot pick one it is not sent in.
        let (video, estimate) = self.streams.get(relay).map_or((None, false), |s| (s.video, s.estimates_for(watcher)));
        let Some((rtc, answer)) = self.accept(&sdp, watcher, video, Role::Subscriber, estimate) else { return };
        let id = self.add_client(rtc, relay, watcher, Role::Subscriber);
        self.learn_candidates(id, sdp_candidates(&sdp));
        if let Some(s) = self.streams.get_mut(relay) {
            s.subscribers.insert(watcher.clone(), id);
        }
        self.metrics.subscribers.inc();
        let payload = serde_json::json!({ "type": "answer", "sdp": answer.to_sdp_string() }).to_string();
        self.signal(relay, watcher, pb::SignalKind::Answer, payload);
        self.poll(id);
    }

    fn datagram(&mut self, d: Datagram) {
        let Ok(contents) = d.data.as_slice().try_into() else {
            self.metrics.dropped_in.inc();
            return;
        };
        let input =
            Input::Receive(d.at, Receive { proto: d.proto, source: d.source, destination: d.destination, contents });
        // The peer using this address, else the one a STUN request's USERNAME names: one lookup
        // each, so datagrams from made-up addresses or with made-up ufrags cost no scan.
        let accepts = |id: &ClientId| self.clients.get(id).is_some_and(|c| c.rtc.accepts(&input));
        let known = self.by_addr.get(&d.source).copied().filter(accepts);
        let id = known
            .or_else(|| crate::demux::local_ufrag(&d.data).and_then(|u| self.by_ufrag.get(u).copied()).filter(accepts));
        let Some(id) = id else {
            self.metrics.dropped_in.inc();
            return;
        };
        self.by_addr.insert(d.source, id);
        if let Some(c) = self.clients.get_mut(&id)
            && let Err(e) = c.rtc.handle_input(input)
        {
            tracing::debug!(error = %e, "peer failed on input");
            c.rtc.disconnect();
        }
        self.poll(id);
    }

    /// Drives time in every peer that is due, requests keyframes that are due, drops dead peers.
    fn tick(&mut self, now: Instant) {
        let due: Vec<ClientId> = self.clients.iter().filter(|(_, c)| c.timeout <= now).map(|(id, _)| *id).collect();
        // A frame written to every subscriber goes out here (str0m sends queued media once time
        // moves): all their copies together, as in `forward`.
        for id in due {
            if let Some(c) = self.clients.get_mut(&id)
                && let Err(e) = c.rtc.handle_input(Input::Timeout(now))
            {
                tracing::debug!(error = %e, "peer failed on timeout");
                c.rtc.disconnect();
            }
            self.drive_batched(id);
        }
        self.flush();
        let wanted: Vec<PeerId> = self
            .streams
            .iter()
            .filter(|(_, s)| s.keyframes.any_wanted() && s.video_in.is_some())
            .map(|(r, _)| r.clone())
            .collect();
        for relay in wanted {
            self.request_keyframes(&relay, now);
        }
        if now.saturating_duration_since(self.desired_at) >= DESIRED_EVERY {
            self.desired_at = now;
            self.tell_desired(now);
            self.let_go_starved(now);
        }
        if now.saturating_duration_since(self.queues_at) >= STATS_EVERY {
            self.queues_at = now;
            self.observe_queues();
        }
        // str0m never gives up on a connection by itself: a subscriber whose network vanished while
        // its WebSocket stayed (or whose leave never reached us) would be forwarded to forever.
        let after = self.drop_silent_after;
        let silent = move |c: &Client| {
            c.role == Role::Subscriber && c.silent_since.is_some_and(|t| now.duration_since(t) > after)
        };
        let dead: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                !c.rtc.is_alive() || (!c.connected && now.duration_since(c.created) > CONNECT_WITHIN) || silent(c)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            if let Some(c) = self.clients.get(&id) {
                if silent(c) {
                    self.metrics.silent_dropped.inc();
                    tracing::info!(peer = %c.remote, ?after, "subscriber silent; dropped");
                } else {
                    tracing::debug!(peer = %c.remote, role = ?c.role, "peer connection gone");
                }
            }
            self.remove_client(id);
        }
    }

    /// Sends the keyframe requests of `relay`'s stream that are due (per layer, see
    /// [`KeyframeRequests`]) to its publisher.
    fn request_keyframes(&mut self, relay: &PeerId, now: Instant) {
        let Some(s) = self.streams.get_mut(relay) else { return };
        let (Some(publisher), Some(mid)) = (s.publisher, s.video_in) else { return };
        let due = s.keyframes.due(now, KEYFRAME_EVERY);
        if due.is_empty() {
            return;
        }
        let Some(c) = self.clients.get_mut(&publisher) else { return };
        for layer in due {
            if let Some(mut writer) = c.rtc.writer(mid)
                && writer.request_keyframe(layer, KeyframeRequestKind::Pli).is_ok()
            {
                self.metrics.keyframe_requests.inc();
            }
        }
        self.poll(publisher);
    }

    /// Observes every connected subscriber's send-queue depth: the packets str0m holds for it
    /// (paced to its bandwidth estimate; without an estimate, what a poll has not sent yet).
    fn observe_queues(&mut self) {
        let mut deepest = 0;
        for c in self.clients.values_mut().filter(|c| c.role == Role::Subscriber && c.connected) {
            let mut depth = 0;
            for (mid, _) in &c.mids {
                if let Some(q) = c.rtc.direct_api().stream_tx_by_mid(*mid, None).and_then(|tx| tx.queue_info()) {
                    depth += q.packet_count();
                }
            }
            #[allow(clippy::cast_precision_loss)]
            self.metrics.subscriber_queue.0.observe(depth as f64);
            deepest = deepest.max(depth);
        }
        self.metrics.subscriber_queue_max.set(i64::try_from(deepest).unwrap_or(i64::MAX));
    }

    /// Lets go of every subscriber whose bandwidth estimate has not carried even its stream's
    /// lowest layer while it lost packets, for `drop_slow_after` (see [`Selector::starved_for`]):
    /// it already gets the least there is, its pictures freeze, and what it is sent only adds to
    /// its congestion.
    /// Subscribers without an estimate (single-layer streams, recorders) are never judged so: the
    /// relay queues nothing for them (str0m sends at once), so they cost no memory when slow.
    fn let_go_starved(&mut self, now: Instant) {
        let after = self.drop_slow_after;
        let mut starved: Vec<(ClientId, PeerId, PeerId)> = Vec::new();
        for (relay, s) in &self.streams {
            let ranked = s.layers.ranked(now);
            for id in s.subscribers.values() {
                if let Some(c) = self.clients.get_mut(id)
                    && c.connected
                    && c.video.starved_for(&ranked, c.video_loss >= SLOW_LOSS, now, after)
                {
                    starved.push((*id, relay.clone(), c.remote.clone()));
                }
            }
        }
        for (id, relay, watcher) in starved {
            let (estimate, loss) = self.clients.get(&id).map_or((None, 0.0), |c| (c.video.estimate(), c.video_loss));
            tracing::info!(peer = %watcher, ?estimate, loss, ?after, "subscriber too slow for the lowest layer; let go");
            self.metrics.slow_dropped.inc();
            self.remove_client(id);
            self.let_go(
                &relay,
                &watcher,
                ErrorCode::TooSlow,
                "your connection is too slow for this stream, even at its lowest quality",
            );
        }
    }

    /// Tells every subscriber's bandwidth estimator the bitrate of its stream's top layer: it
    /// probes up to that, so a subscriber whose link allows it climbs back to the top layer.
    fn tell_desired(&mut self, now: Instant) {
        for s in self.streams.values() {
            let desired = s.layers.desired_bps(now);
            if desired == 0 {
                continue;
            }
            for id in s.subscribers.values() {
                if let Some(c) = self.clients.get_mut(id) {
                    c.rtc.bwe().set_desired_bitrate(Bitrate::bps(desired));
                }
            }
        }
    }

    /// Re-decides `id`'s layer (its estimate changed, or it connected) and asks the publisher for
    /// a keyframe of a new one.
    fn choose_layer(&mut self, id: ClientId, now: Instant) {
        let Some(c) = self.clients.get_mut(&id) else { return };
        let Some(s) = self.streams.get_mut(&c.relay) else { return };
        if let Some(layer) = rechoose(c, &s.layers.ranked(now), now) {
            s.keyframes.want(layer);
        }
    }

    /// Sends what a peer transmits and handles its events, until it only has a timeout left.
    fn poll(&mut self, id: ClientId) {
        self.drive(id);
        self.flush();
    }

    /// Sends what the peers transmitted.
    fn flush(&mut self) {
        self.outbox.flush(&self.sockets, &self.tcp, &self.metrics);
    }

    /// [`Engine::drive`] in a fan-out to many peers: the outbox is sent only when it is full (the
    /// caller flushes at the end).
    fn drive_batched(&mut self, id: ClientId) {
        self.drive(id);
        if self.outbox.len() >= crate::outbox::FLUSH_AT {
            self.flush();
        }
    }

    /// [`Engine::poll`], but what the peer transmits stays in the outbox.
    fn drive(&mut self, id: ClientId) {
        for _ in 0..10_000 {
            let Some(c) = self.clients.get_mut(&id) else { return };
            if !c.rtc.is_alive() {
                return;
            }
            let out = match c.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!(error = %e, "peer failed");
                    c.rtc.disconnect();
                    return;
                }
            };
            match out {
                Output::Timeout(t) => {
                    c.timeout = t;
                    return;
                }
                Output::Transmit(t) => self.outbox.push(t.proto, t.source, t.destination, t.contents.into()),
                Output::Event(e) => self.event(id, e),
            }
        }
    }

    fn event(&mut self, id: ClientId, e: Event) {
        let Some(c) = self.clients.get_mut(&id) else { return };
        let (role, relay) = (c.role, c.relay.clone());
        match e {
            Event::Connected => {
                c.connected = true;
                tracing::debug!(peer = %c.remote, ?role, "peer connected");
                // str0m's bandwidth probes resend from the cache: an estimating subscriber keeps the default.
                let estimates = self.streams.get(&relay).is_some_and(|s| s.estimates_for(&c.remote));
                if role == Role::Subscriber && !estimates {
                    for (mid, kind) in &c.mids {
                        let size = if *kind == MediaKind::Video { SEND_BUFFER_VIDEO } else { SEND_BUFFER_AUDIO };
                        if let Some(tx) = c.rtc.direct_api().stream_tx_by_mid(*mid, None) {
                            tx.set_rtx_cache(size, NACK_WINDOW, Some(RTX_RATIO_CAP));
                        }
                    }
                }
                if role == Role::Subscriber {
                    self.choose_layer(id, Instant::now());
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                tracing::debug!(peer = %c.remote, ?role, "ICE disconnected");
                c.silent_since.get_or_insert_with(Instant::now);
            }
            Event::IceConnectionStateChange(IceConnectionState::Connected | IceConnectionState::Completed) => {
                c.silent_since = None;
            }
            Event::MediaAdded(m) if role == Role::Publisher => {
                if m.kind == MediaKind::Video
                    && let Some(s) = self.streams.get_mut(&relay)
                {
                    s.video_in = Some(m.mid);
                }
            }
            // A watcher's own offer (WHEP) says which media it receives.
            Event::MediaAdded(m)
                if role == Role::Subscriber
                    && m.direction.is_sending()
                    && !c.mids.iter().any(|(mid, _)| *mid == m.mid) =>
            {
                c.mids.push((m.mid, m.kind));
            }
            Event::MediaData(data) if role == Role::Publisher => self.forward(&relay, &data),
            Event::KeyframeRequest(_) if role == Role::Subscriber => {
                let layer = c.video.current().or(c.video.target());
                if let (Some(layer), Some(s)) = (layer, self.streams.get_mut(&relay)) {
                    s.keyframes.want(layer);
                }
            }
            // NACKs a subscriber sent us (str0m resends from its buffer), NACKs we sent a publisher.
            Event::MediaEgressStats(st) => {
                let new = count_nacks(&mut c.nacks, st.mid, st.rid, st.nacks);
                self.metrics.nacks_received.inc_by(new);
                if let Some(loss) = st.loss
                    && c.mids.iter().any(|(mid, kind)| *mid == st.mid && *kind == MediaKind::Video)
                {
                    c.video_loss = loss;
                }
            }
            Event::MediaIngressStats(st) => {
                let new = count_nacks(&mut c.nacks, st.mid, st.rid, st.nacks);
                self.metrics.nacks_sent.inc_by(new);
            }
            Event::EgressBitrateEstimate(
                ref kind @ (BweKind::Twcc { estimate, .. } | BweKind::Remb { estimate, .. }),
            ) if role == Role::Subscriber => {
                tracing::trace!(peer = %c.remote, estimate = estimate.as_u64(), ?kind, "bandwidth estimate");
                c.video.set_estimate(estimate.as_u64());
                self.choose_layer(id, Instant::now());
            }
            _ => {}
        }
    }

    /// Writes one frame of the publisher to every subscriber of its stream (a video frame to
    /// those its layer is chosen for, on their own timeline).
    fn forward(&mut self, relay: &PeerId, data: &MediaData) {
        self.metrics.frames_in.inc();
        let Some(s) = self.streams.get_mut(relay) else { return };
        let kind = if s.video_in == Some(data.mid) { MediaKind::Video } else { MediaKind::Audio };
        let layer: LayerId = data.rid;
        let keyframe = kind == MediaKind::Video && data.is_keyframe();
        let ranked = (kind == MediaKind::Video).then(|| {
            s.layers.on_frame(layer, data.data.len(), data.network_time);
            s.layers.ranked(data.network_time)
        });
        if kind == MediaKind::Video && !data.contiguous {
            s.keyframes.want(layer);
        }
        let targets: Vec<ClientId> = s.subscribers.values().copied().collect();
        let payload = &data.data;
        let mut wanted: Vec<LayerId> = Vec::new();
        for id in targets {
            let Some(c) = self.clients.get_mut(&id) else { continue };
            if !c.connected {
                continue;
            }
            let time = match &ranked {
                None => data.time,
                Some(ranked) => {
                    wanted.extend(rechoose(c, ranked, data.network_time));
                    match c.video.accept(layer, keyframe, data.time.numer(), data.network_time) {
                        Accept::Skip => continue,
                        Accept::Send(t) => MediaTime::new(t, data.time.frequency()),
                        Accept::Switch(t) => {
                            self.metrics.layer_switches.inc();
                            tracing::debug!(peer = %c.remote, ?layer, estimate = ?c.video.estimate(), "subscriber on a new layer");
                            MediaTime::new(t, data.time.frequency())
                        }
                    }
                }
            };
            let Some(mid) = c.mids.iter().find(|(_, k)| *k == kind).map(|(m, _)| *m) else { continue };
            let Some(writer) = c.rtc.writer(mid) else { continue };
            let Some(pt) = writer.match_params(data.params) else { continue };
            match writer.write(pt, data.network_time, time, Arc::clone(payload)) {
                Ok(()) => {
                    self.metrics.frames_out.inc();
                }
                Err(e) => tracing::debug!(error = %e, "subscriber write failed"),
            }
            // Every subscriber's copy goes out together (one sendmmsg), once all are written.
            self.drive_batched(id);
        }
        self.flush();
        if let Some(s) = self.streams.get_mut(relay) {
            for layer in wanted {
                s.keyframes.want(layer);
            }
        }
    }
}

async fn read_socket(
    destination: SocketAddr,
    socket: Arc<tokio::net::UdpSocket>,
    tx: mpsc::Sender<Datagram>,
    metrics: RelayMetrics,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let r = tokio::select! {
            () = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let (n, source) = match r {
            Ok(v) => v,
            // ICMP errors of earlier sends (a peer went away) surface here on Linux.
            Err(_) => continue,
        };
        metrics.datagrams_in.inc();
        if n > MAX_DATAGRAM || n == 0 {
            metrics.dropped_in.inc();
            continue;
        }
        let d = Datagram { data: buf[..n].to_vec(), source, destination, at: Instant::now(), proto: Protocol::Udp };
        if tx.try_send(d).is_err() {
            metrics.dropped_in.inc();
        }
    }
}

/// Re-decides `c`'s video layer among `ranked`: the new one it wants (a keyframe of it is needed).
fn rechoose(c: &mut Client, ranked: &Ranked, now: Instant) -> Option<LayerId> {
    let layer = c.video.choose(ranked, now)?;
    tracing::debug!(peer = %c.remote, ?layer, estimate = ?c.video.estimate(), layers = ?ranked.0, "subscriber wants a new layer");
    Some(layer)
}

/// Records `total`, the NACK count str0m reports for `mid`/`rid` so far, in `seen`; returns how
/// many are new since the last report.
fn count_nacks(seen: &mut Vec<(Mid, LayerId, u64)>, mid: Mid, rid: LayerId, total: u64) -> u64 {
    if let Some(e) = seen.iter_mut().find(|(m, r, _)| *m == mid && *r == rid) {
        let new = total.saturating_sub(e.2);
        e.2 = e.2.max(total);
        return new;
    }
    // A connection has a few media (audio, video, each simulcast layer): bounded by its SDP.
    if seen.len() < 16 {
        seen.push((mid, rid, total));
    }
    total
}

/// The video codec an answer of ours chose (the first payload type of its video section); VP8
/// when it has none.
fn answered_video(sdp: &str) -> VideoCodec {
    let mut in_video = false;
    let mut first_pt: Option<&str> = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("m=") {
            in_video = rest.starts_with("video") && rest.split_whitespace().nth(1).is_none_or(|p| p != "0");
            if in_video && first_pt.is_none() {
                first_pt = rest.split_whitespace().nth(3);
            }
        } else if in_video
            && let (Some(pt), Some(map)) = (first_pt, line.strip_prefix("a=rtpmap:"))
            && map.split_whitespace().next() == Some(pt)
        {
            let codec = map.split_whitespace().nth(1).unwrap_or("");
            return if codec.to_ascii_uppercase().starts_with("H264/") { VideoCodec::H264 } else { VideoCodec::Vp8 };
        }
    }
    VideoCodec::Vp8
}

/// The SDP of a browser description (`{"type":…,"sdp":…}`, or a bare SDP string).
fn sdp_of(payload: &str) -> Result<String, &'static str> {
    let v: serde_json::Value = serde_json::from_str(payload).map_err(|_| "description is not JSON")?;
    match &v {
        serde_json::Value::String(s) => Ok(s.clone()),
        _ => v.get("sdp").and_then(|s| s.as_str()).map(str::to_owned).ok_or("description has no sdp"),
    }
}

/// The addresses of the `a=candidate` lines of an SDP.
fn sdp_candidates(sdp: &str) -> Vec<SocketAddr> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .filter_map(|l| Candidate::from_sdp_string(l).ok())
        .map(|c| c.addr())
        .collect()
}

/// A browser's trickled candidate (`{"candidate":"candidate:…",…}`); `None` for the end of
/// candidates, mDNS host names (the peer-reflexive candidate from its checks stands in) and junk.
fn remote_candidate(payload: &str) -> Option<Candidate> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let line = v.get("candidate")?.as_str()?.trim();
    if line.is_empty() {
        return None;
    }
    Candidate::from_sdp_string(line.strip_prefix("a=").unwrap_or(line)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answered_video_codec_is_the_first_of_the_video_section() {
        let h264 = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
                    m=video 9 UDP/TLS/RTP/SAVPF 108 109\r\na=rtpmap:108 H264/90000\r\na=rtpmap:109 rtx/90000\r\n";
        assert_eq!(answered_video(h264), VideoCodec::H264);
        let vp8 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 108\r\na=rtpmap:108 H264/90000\r\na=rtpmap:96 VP8/90000\r\n";
        assert_eq!(answered_video(vp8), VideoCodec::Vp8);
        assert_eq!(answered_video("v=0\r\nm=audio 9 RTP 111\r\n"), VideoCodec::Vp8, "audio only");
    }

    #[test]
    fn nack_totals_become_increments_per_media_and_layer() {
        let mut seen = Vec::new();
        let (a, v) = (Mid::from("0"), Mid::from("1"));
        assert_eq!(count_nacks(&mut seen, v, None, 3), 3);
        assert_eq!(count_nacks(&mut seen, v, None, 5), 2);
        assert_eq!(count_nacks(&mut seen, a, None, 1), 1, "another media counts apart");
        assert_eq!(count_nacks(&mut seen, v, Some("f".into()), 4), 4, "so does another layer");
        assert_eq!(count_nacks(&mut seen, v, None, 5), 0);
        assert_eq!(count_nacks(&mut seen, v, None, 2), 0, "a total never goes back");
    }

    #[test]
    fn descriptions_parse_in_both_shapes() {
        assert_eq!(sdp_of(r#"{"type":"offer","sdp":"v=0"}"#).unwrap(), "v=0");
        assert_eq!(sdp_of(r#""v=0""#).unwrap(), "v=0");
        assert!(sdp_of("{").is_err());
        assert!(sdp_of(r#"{"type":"offer"}"#).is_err());
    }

    #[test]
    fn sdp_candidate_lines_give_their_addresses() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2113937151 192.0.2.10 54400 typ host\r\n\
                   a=candidate:2 1 udp 1 junk 1 typ host\r\na=mid:0\r\n";
        assert_eq!(sdp_candidates(sdp), vec!["192.0.2.10:54400".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn browser_candidates_parse_and_junk_does_not() {
        let c = remote_candidate(
            r#"{"candidate":"candidate:1 1 udp 2113937151 192.0.2.10 54400 typ host generation 0","sdpMid":"0"}"#,
        )
        .expect("a host candidate");
        assert_eq!(c.addr(), "192.0.2.10:54400".parse().unwrap());
        assert!(remote_candidate(r#"{"candidate":""}"#).is_none());
        assert!(remote_candidate(r#"{"candidate":"candidate:1 1 udp 1 abc.local 5 typ host"}"#).is_none());
        assert!(remote_candidate("not json").is_none());
    }
}
