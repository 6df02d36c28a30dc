//! The allocation engine: authenticates requests, keeps allocations (one relay UDP socket
//! each) with their permissions and channels, and moves data between clients and peers.
//! Messages are parsed and built with `rtc::stun` / `rtc::turn`; this module only decides.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use onair_core::turn_rest::{check_turn_username, turn_credential};
use parking_lot::Mutex;
use rtc::crypto::RTCCryptoProvider;
use rtc::stun::attributes::{ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS};
use rtc::stun::error_code::{
    CODE_ADDR_FAMILY_NOT_SUPPORTED, CODE_ALLOC_MISMATCH, CODE_ALLOC_QUOTA_REACHED, CODE_BAD_REQUEST, CODE_FORBIDDEN,
    CODE_INSUFFICIENT_CAPACITY, CODE_PEER_ADDR_FAMILY_MISMATCH, CODE_STALE_NONCE, CODE_UNAUTHORIZED,
    CODE_UNSUPPORTED_TRANS_PROTO, CODE_WRONG_CREDENTIALS, ErrorCode, ErrorCodeAttribute,
};
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE,
    METHOD_BINDING, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_DATA, METHOD_REFRESH, METHOD_SEND, Message,
    MessageType, Setter, TransactionId,
};
use rtc::stun::textattrs::TextAttribute;
use rtc::stun::xoraddr::XorMappedAddress;
use rtc::turn::proto::PROTO_UDP;
use rtc::turn::proto::chandata::ChannelData;
use rtc::turn::proto::channum::ChannelNumber;
use rtc::turn::proto::data::Data;
use rtc::turn::proto::lifetime::Lifetime;
use rtc::turn::proto::peeraddr::PeerAddress;
use rtc::turn::proto::relayaddr::RelayedAddress;
use rtc::turn::proto::reqfamily::{REQUESTED_FAMILY_IPV4, RequestedAddressFamily};
use rtc::turn::proto::reqtrans::RequestedTransport;
use sha1::Sha1;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::TurnConfig;
use crate::metrics::TurnMetrics;
use crate::policy::PeerPolicy;

const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
const NONCE_LIFETIME: Duration = Duration::from_secs(3600);

/// How a client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain UDP.
    Udp,
    /// TCP (RFC 6062 framing of STUN and ChannelData on a stream).
    Tcp,
    /// TLS over TCP (`turns:`).
    Tls,
}

/// Identifies an allocation: the client's address, the server address it talks to, the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// The client's (reflexive) address.
    pub client: SocketAddr,
    /// The server's listening address.
    pub server: SocketAddr,
    /// The transport.
    pub transport: Transport,
}

/// Where messages to a client go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// Datagrams on the listening socket.
    Udp(Arc<UdpSocket>, SocketAddr),
    /// Frames for a TCP/TLS connection's writer (bounded: a client that does not read loses
    /// packets instead of growing a queue).
    Stream(mpsc::Sender<Vec<u8>>),
}

impl Sink {
    fn is_stream(&self) -> bool {
        matches!(self, Sink::Stream(_))
    }

    async fn send(&self, frame: Vec<u8>) {
        match self {
            Sink::Udp(socket, to) => {
                let _ = socket.send_to(&frame, to).await;
            }
            Sink::Stream(tx) => {
                let _ = tx.try_send(frame);
            }
        }
    }
}

/// A byte budget refilled at `rate` bytes per second, holding at most one second of it.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(bits_per_second: u64) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let rate = bits_per_second as f64 / 8.0;
        Self { rate, tokens: rate, at: Instant::now() }
    }

    fn take(&mut self, bytes: usize) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        #[allow(clippy::cast_precision_loss)]
        let bytes = bytes as f64;
        if self.tokens >= bytes {
            self.tokens -= bytes;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
struct AllocState {
    expires: Option<Instant>,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    by_peer: HashMap<SocketAddr, u16>,
}

impl AllocState {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|&until| until > now)
    }

    fn channel_of(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        let ch = *self.by_peer.get(&peer)?;
        self.channels.get(&ch).filter(|(_, until)| *until > now).map(|_| ch)
    }
}

/// One allocation: a relay socket on the server's relay range, owned by one five-tuple.
#[derive(Debug)]
struct Allocation {
    tuple: FiveTuple,
    user: String,
    username: String,
    key: Vec<u8>,
    relay: Arc<UdpSocket>,
    sink: Sink,
    state: Mutex<AllocState>,
    bucket: Mutex<Bucket>,
    stop: CancellationToken,
    /// The Allocate transaction and its success response, for retransmissions over UDP.
    created_by: (TransactionId, Vec<u8>),
}

/// Who sent an authenticated request.
struct Auth {
    username: String,
    user: String,
    key: Vec<u8>,
}

/// The TURN server's shared state.
pub struct Server {
    config: TurnConfig,
    policy: PeerPolicy,
    crypto: Arc<dyn RTCCryptoProvider>,
    nonce_key: [u8; 16],
    allocations: Mutex<HashMap<FiveTuple, Arc<Allocation>>>,
    per_user: Mutex<HashMap<String, usize>>,
    next_port: AtomicUsize,
    pub(crate) metrics: TurnMetrics,
    pub(crate) stop: CancellationToken,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("realm", &self.config.realm).finish_non_exhaustive()
    }
}

type Setters<'a> = Vec<Box<dyn Setter + 'a>>;

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Server {
    /// A server for `config`; `stop` ends every allocation.
    pub fn new(config: TurnConfig, crypto: Arc<dyn RTCCryptoProvider>, stop: CancellationToken) -> Self {
        let policy = PeerPolicy::new(config.allow_peers.clone());
        Self {
            policy,
            crypto,
            nonce_key: *uuid::Uuid::new_v4().as_bytes(),
            allocations: Mutex::new(HashMap::new()),
            per_user: Mutex::new(HashMap::new()),
            next_port: AtomicUsize::new(usize::from(uuid::Uuid::new_v4().as_bytes()[0])),
            metrics: TurnMetrics::default(),
            stop,
            config,
        }
    }

    fn nonce_mac(&self, stamp: &str) -> String {
        let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(&self.nonce_key).unwrap_or_else(|_| unreachable!());
        mac.update(stamp.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..8])
    }

    /// A stateless nonce: the issue time and a MAC over it.
    fn nonce(&self) -> String {
        let stamp = format!("{:x}", unix_secs(SystemTime::now()));
        format!("{stamp}-{}", self.nonce_mac(&stamp))
    }

    fn nonce_is_fresh(&self, nonce: &str) -> bool {
        let Some((stamp, mac)) = nonce.split_once('-') else { return false };
        let Ok(issued) = u64::from_str_radix(stamp, 16) else { return false };
        let age = unix_secs(SystemTime::now()).saturating_sub(issued);
        age <= NONCE_LIFETIME.as_secs() && self.nonce_mac(stamp) == mac
    }

    /// Handles one message from a client (a STUN message or ChannelData) and returns the
    /// response to send back, if any.
    pub fn handle(self: &Arc<Self>, data: &[u8], tuple: FiveTuple, sink: &Sink) -> Option<Vec<u8>> {
        if data.first().is_some_and(|b| (0x40..0x80).contains(b)) {
            self.channel_data_from_client(data, tuple);
            return None;
        }
        if !rtc::stun::message::is_stun_message(data) {
            return None;
        }
        let mut m = Message::new();
        m.unmarshal_binary(data).ok()?;
        let (method, class) = (m.typ.method, m.typ.class);
        if class == CLASS_INDICATION {
            if method == METHOD_SEND {
                self.send_indication(&m, tuple);
            }
            return None;
        }
        if class != CLASS_REQUEST {
            return None;
        }
        if method == METHOD_BINDING {
            let mapped = XorMappedAddress { ip: tuple.client.ip(), port: tuple.client.port() };
            return self.reply(&m, CLASS_SUCCESS_RESPONSE, vec![Box::new(mapped)], None);
        }
        if ![METHOD_ALLOCATE, METHOD_REFRESH, METHOD_CREATE_PERMISSION, METHOD_CHANNEL_BIND].contains(&method) {
            return self.error(&m, CODE_BAD_REQUEST, "unsupported method", None);
        }
        let auth = match self.authenticate(&mut m) {
            Ok(auth) => auth,
            Err(reply) => {
                // The first request of every client comes without credentials (to learn the
                // realm and nonce); only refused credentials count.
                if m.contains(ATTR_MESSAGE_INTEGRITY) {
                    self.metrics.auth_failures.inc();
                }
                return reply;
            }
        };
        match method {
            METHOD_ALLOCATE => self.allocate(&m, tuple, sink, auth),
            other => {
                let Some(alloc) = self.allocations.lock().get(&tuple).cloned() else {
                    return self.error(&m, CODE_ALLOC_MISMATCH, "no allocation", Some(&auth.key));
                };
                if alloc.username != auth.username {
                    return self.error(&m, CODE_WRONG_CREDENTIALS, "not the allocation's credentials", Some(&auth.key));
                }
                match other {
                    METHOD_REFRESH => self.refresh(&m, &alloc),
                    METHOD_CREATE_PERMISSION => self.create_permission(&m, &alloc),
                    _ => self.channel_bind(&m, &alloc),
                }
            }
        }
    }

    /// Long-term credentials (RFC 5389 §10.2) with the TURN REST API password:
    /// `base64(HMAC-SHA1(secret, username))`, refused once the username's expiry passed.
    fn authenticate(&self, m: &mut Message) -> Result<Auth, Option<Vec<u8>>> {
        if !m.contains(ATTR_MESSAGE_INTEGRITY) {
            return Err(self.challenge(m, CODE_UNAUTHORIZED, "credentials required"));
        }
        let text = |attr| TextAttribute::get_from_as(m, attr).ok().map(|t| t.text);
        let (Some(username), Some(realm), Some(nonce)) = (text(ATTR_USERNAME), text(ATTR_REALM), text(ATTR_NONCE))
        else {
            return Err(self.error(m, CODE_BAD_REQUEST, "USERNAME, REALM and NONCE are required", None));
        };
        if !self.nonce_is_fresh(&nonce) {
            return Err(self.challenge(m, CODE_STALE_NONCE, "stale nonce"));
        }
        if realm != self.config.realm {
            return Err(self.challenge(m, CODE_UNAUTHORIZED, "wrong realm"));
        }
        let user = match check_turn_username(&username, SystemTime::now()) {
            Ok(user) => user.to_owned(),
            Err(e) => {
                tracing::debug!(error = %e, "TURN credentials refused");
                return Err(self.challenge(m, CODE_UNAUTHORIZED, "expired or malformed username"));
            }
        };
        let password = turn_credential(&self.config.secret, &username);
        let crypto = self.crypto.crypto();
        let Ok(key) = MessageIntegrity::long_term_integrity_key(username.clone(), realm, password, crypto) else {
            return Err(self.challenge(m, CODE_UNAUTHORIZED, "credentials required"));
        };
        if MessageIntegrity::check(m, &key, crypto).is_err() {
            tracing::debug!(%user, "TURN request with a wrong credential");
            return Err(self.challenge(m, CODE_UNAUTHORIZED, "wrong credentials"));
        }
        Ok(Auth { username, user, key })
    }

    fn challenge(&self, m: &Message, code: ErrorCode, reason: &str) -> Option<Vec<u8>> {
        let extra: Setters<'_> = vec![
            Box::new(TextAttribute::new(ATTR_REALM, self.config.realm.clone())),
            Box::new(TextAttribute::new(ATTR_NONCE, self.nonce())),
        ];
        self.reply(m, CLASS_ERROR_RESPONSE, with_error(code, reason, extra), None)
    }

    fn error(&self, m: &Message, code: ErrorCode, reason: &str, key: Option<&[u8]>) -> Option<Vec<u8>> {
        self.reply(m, CLASS_ERROR_RESPONSE, with_error(code, reason, Vec::new()), key)
    }

    /// A response to `m` of `class` with `attrs`, then MESSAGE-INTEGRITY (with `key`) and FINGERPRINT.
    fn reply(
        &self,
        m: &Message,
        class: rtc::stun::message::MessageClass,
        attrs: Setters<'_>,
        key: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        let mut setters: Setters<'_> =
            vec![Box::new(MessageType::new(m.typ.method, class)), Box::new(m.transaction_id)];
        setters.extend(attrs);
        if let Some(key) = key {
            setters
                .push(Box::new(MessageIntegrity::new_raw_integrity_with_provider(key.to_vec(), self.crypto.crypto())));
        }
        setters.push(Box::new(FINGERPRINT));
        let mut out = Message::new();
        match out.build(&setters) {
            Ok(()) => Some(out.raw),
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a TURN response");
                None
            }
        }
    }

    fn allocate(self: &Arc<Self>, m: &Message, tuple: FiveTuple, sink: &Sink, auth: Auth) -> Option<Vec<u8>> {
        let key = Some(auth.key.as_slice());
        if let Some(existing) = self.allocations.lock().get(&tuple) {
            if existing.created_by.0 == m.transaction_id {
                return Some(existing.created_by.1.clone());
            }
            return self.error(m, CODE_ALLOC_MISMATCH, "this 5-tuple already has an allocation", key);
        }
        let mut transport = RequestedTransport::default();
        if transport.get_from(m).is_err() {
            return self.error(m, CODE_BAD_REQUEST, "REQUESTED-TRANSPORT is required", key);
        }
        if transport.protocol != PROTO_UDP {
            return self.error(m, CODE_UNSUPPORTED_TRANS_PROTO, "only UDP relays", key);
        }
        let mut family = RequestedAddressFamily::default();
        if family.get_from(m).is_ok() {
            let wanted_v4 = family == REQUESTED_FAMILY_IPV4;
            if wanted_v4 != self.config.relay_ip.is_ipv4() {
                return self.error(m, CODE_ADDR_FAMILY_NOT_SUPPORTED, "no relay of that address family", key);
            }
        }
        {
            let mut per_user = self.per_user.lock();
            let n = per_user.entry(auth.user.clone()).or_default();
            if *n >= self.config.user_quota {
                self.metrics.quota_refusals.inc();
                tracing::info!(user = %auth.user, quota = self.config.user_quota, "TURN allocation quota reached");
                return self.error(m, CODE_ALLOC_QUOTA_REACHED, "allocation quota reached", key);
            }
            *n += 1;
        }
        let Some(relay) = self.bind_relay() else {
            self.release_user(&auth.user);
            self.metrics.quota_refusals.inc();
            tracing::warn!(ports = %self.config.relay_ports, "no free TURN relay port");
            return self.error(m, CODE_INSUFFICIENT_CAPACITY, "no relay port free", key);
        };
        let port = relay.local_addr().map_or(0, |a| a.port());
        let lifetime = requested_lifetime(m).unwrap_or(DEFAULT_LIFETIME).min(MAX_LIFETIME);
        let attrs: Setters<'_> = vec![
            Box::new(RelayedAddress { ip: self.config.relay_ip, port }),
            Box::new(XorMappedAddress { ip: tuple.client.ip(), port: tuple.client.port() }),
            Box::new(Lifetime(lifetime)),
        ];
        let response = self.reply(m, CLASS_SUCCESS_RESPONSE, attrs, key)?;
        let alloc = Arc::new(Allocation {
            tuple,
            user: auth.user,
            username: auth.username,
            key: auth.key,
            relay: Arc::new(relay),
            sink: sink.clone(),
            state: Mutex::new(AllocState { expires: Some(Instant::now() + lifetime), ..AllocState::default() }),
            bucket: Mutex::new(Bucket::new(self.config.max_bitrate)),
            stop: self.stop.child_token(),
            created_by: (m.transaction_id, response.clone()),
        });
        self.allocations.lock().insert(tuple, Arc::clone(&alloc));
        tokio::spawn(Arc::clone(self).relay_task(Arc::clone(&alloc)));
        self.metrics.allocations.inc();
        self.metrics.allocations_created.inc();
        tracing::debug!(user = %alloc.user, client = %tuple.client, relay = port, ?lifetime, "TURN allocation");
        Some(response)
    }

    fn bind_relay(&self) -> Option<UdpSocket> {
        let ports = self.config.relay_ports;
        let start = self.next_port.fetch_add(1, Ordering::Relaxed);
        for i in 0..ports.len() {
            let offset = u16::try_from((start + i) % ports.len()).unwrap_or(0);
            let addr = SocketAddr::new(self.config.relay_bind, ports.min + offset);
            if let Ok(s) = std::net::UdpSocket::bind(addr)
                && s.set_nonblocking(true).is_ok()
                && let Ok(s) = UdpSocket::from_std(s)
            {
                return Some(s);
            }
        }
        None
    }

    fn release_user(&self, user: &str) {
        let mut per_user = self.per_user.lock();
        if let Some(n) = per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_user.remove(user);
            }
        }
    }

    /// Ends the allocation of `tuple` (refresh to 0, a closed TCP connection).
    pub fn remove(&self, tuple: &FiveTuple) {
        let Some(alloc) = self.allocations.lock().remove(tuple) else { return };
        self.ended(&alloc);
    }

    /// Ends `alloc` if it is still the allocation of its five-tuple (expiry).
    fn remove_exact(&self, alloc: &Arc<Allocation>) {
        let mut all = self.allocations.lock();
        if !all.get(&alloc.tuple).is_some_and(|a| Arc::ptr_eq(a, alloc)) {
            return;
        }
        all.remove(&alloc.tuple);
        drop(all);
        self.ended(alloc);
    }

    fn ended(&self, alloc: &Allocation) {
        let tuple = &alloc.tuple;
        alloc.stop.cancel();
        self.release_user(&alloc.user);
        self.metrics.allocations.dec();
        tracing::debug!(user = %alloc.user, client = %tuple.client, "TURN allocation ended");
    }

    fn refresh(&self, m: &Message, alloc: &Arc<Allocation>) -> Option<Vec<u8>> {
        let lifetime = requested_lifetime(m).unwrap_or(DEFAULT_LIFETIME).min(MAX_LIFETIME);
        if lifetime.is_zero() {
            self.remove(&alloc.tuple);
        } else {
            alloc.state.lock().expires = Some(Instant::now() + lifetime);
        }
        self.reply(m, CLASS_SUCCESS_RESPONSE, vec![Box::new(Lifetime(lifetime))], Some(&alloc.key))
    }

    /// Checks a peer against the policy and the relay's address family; the error to answer.
    fn check_peer(&self, alloc: &Allocation, peer: SocketAddr) -> Result<(), (ErrorCode, &'static str)> {
        if peer.is_ipv4() != self.config.relay_ip.is_ipv4() {
            return Err((CODE_PEER_ADDR_FAMILY_MISMATCH, "peer address family mismatch"));
        }
        if !self.policy.permits(peer.ip()) {
            self.metrics.peers_refused.inc();
            tracing::info!(user = %alloc.user, peer = %peer.ip(), "TURN peer refused (internal address; see --turn-allow-peer)");
            return Err((CODE_FORBIDDEN, "peer address not allowed"));
        }
        Ok(())
    }

    fn create_permission(&self, m: &Message, alloc: &Arc<Allocation>) -> Option<Vec<u8>> {
        let peers = peer_addresses(m);
        if peers.is_empty() {
            return self.error(m, CODE_BAD_REQUEST, "XOR-PEER-ADDRESS is required", Some(&alloc.key));
        }
        for &peer in &peers {
            if let Err((code, why)) = self.check_peer(alloc, peer) {
                return self.error(m, code, why, Some(&alloc.key));
            }
        }
        let until = Instant::now() + PERMISSION_LIFETIME;
        let mut state = alloc.state.lock();
        for peer in peers {
            state.permissions.insert(peer.ip(), until);
        }
        drop(state);
        self.reply(m, CLASS_SUCCESS_RESPONSE, Vec::new(), Some(&alloc.key))
    }

    fn channel_bind(&self, m: &Message, alloc: &Arc<Allocation>) -> Option<Vec<u8>> {
        let key = Some(alloc.key.as_slice());
        let mut number = ChannelNumber::default();
        let mut peer = PeerAddress::default();
        if number.get_from(m).is_err() || !number.valid() || peer.get_from(m).is_err() {
            return self.error(m, CODE_BAD_REQUEST, "a valid CHANNEL-NUMBER and XOR-PEER-ADDRESS are required", key);
        }
        let peer = SocketAddr::new(peer.ip, peer.port);
        if let Err((code, why)) = self.check_peer(alloc, peer) {
            return self.error(m, code, why, key);
        }
        let now = Instant::now();
        let mut state = alloc.state.lock();
        let bound_elsewhere = state.channels.get(&number.0).is_some_and(|(p, _)| *p != peer)
            || state.by_peer.get(&peer).is_some_and(|&ch| ch != number.0);
        if bound_elsewhere {
            drop(state);
            return self.error(m, CODE_BAD_REQUEST, "channel or peer already bound", key);
        }
        state.channels.insert(number.0, (peer, now + CHANNEL_LIFETIME));
        state.by_peer.insert(peer, number.0);
        state.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        drop(state);
        self.reply(m, CLASS_SUCCESS_RESPONSE, Vec::new(), key)
    }

    fn allocation(&self, tuple: &FiveTuple) -> Option<Arc<Allocation>> {
        self.allocations.lock().get(tuple).cloned()
    }

    fn send_indication(&self, m: &Message, tuple: FiveTuple) {
        let Some(alloc) = self.allocation(&tuple) else { return };
        let mut peer = PeerAddress::default();
        let mut data = Data::default();
        if peer.get_from(m).is_err() || data.get_from(m).is_err() {
            return;
        }
        let peer = SocketAddr::new(peer.ip, peer.port);
        if !alloc.state.lock().permitted(peer.ip(), Instant::now()) {
            return;
        }
        self.to_peer(&alloc, peer, &data.0);
    }

    fn channel_data_from_client(&self, data: &[u8], tuple: FiveTuple) {
        let Some(alloc) = self.allocation(&tuple) else { return };
        let mut cd = ChannelData { raw: data.to_vec(), ..ChannelData::default() };
        if cd.decode().is_err() {
            return;
        }
        let now = Instant::now();
        let peer = {
            let state = alloc.state.lock();
            match state.channels.get(&cd.number.0) {
                Some(&(peer, until)) if until > now && state.permitted(peer.ip(), now) => peer,
                _ => return,
            }
        };
        self.to_peer(&alloc, peer, &cd.data);
    }

    fn to_peer(&self, alloc: &Allocation, peer: SocketAddr, payload: &[u8]) {
        if !alloc.bucket.lock().take(payload.len()) {
            self.metrics.packets_over_bandwidth.inc();
            return;
        }
        if alloc.relay.try_send_to(payload, peer).is_ok() {
            self.metrics.bytes_to_peers.inc_by(payload.len() as u64);
        }
    }

    /// Relays what peers send to `tuple`'s relay socket back to its client until the allocation
    /// ends (expiry, refresh to 0, shutdown).
    async fn relay_task(self: Arc<Self>, alloc: Arc<Allocation>) {
        let mut buf = vec![0u8; 65536];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let (n, from) = tokio::select! {
                () = alloc.stop.cancelled() => break,
                _ = tick.tick() => {
                    if alloc.state.lock().expires.is_none_or(|e| e <= Instant::now()) {
                        break;
                    }
                    continue;
                }
                r = alloc.relay.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(_) => continue,
                },
            };
            let now = Instant::now();
            let channel = {
                let state = alloc.state.lock();
                if !state.permitted(from.ip(), now) {
                    continue;
                }
                state.channel_of(from, now)
            };
            if !alloc.bucket.lock().take(n) {
                self.metrics.packets_over_bandwidth.inc();
                continue;
            }
            let payload = &buf[..n];
            let frame = match channel {
                Some(number) => {
                    let mut cd = ChannelData { data: payload.to_vec(), number: ChannelNumber(number), raw: Vec::new() };
                    cd.encode();
                    if !alloc.sink.is_stream() {
                        // Over UDP the padding is optional; leave it out.
                        cd.raw.truncate(4 + n);
                    }
                    cd.raw
                }
                None => {
                    let mut out = Message::new();
                    let setters: Setters<'_> = vec![
                        Box::new(MessageType::new(METHOD_DATA, CLASS_INDICATION)),
                        Box::new(TransactionId::new()),
                        Box::new(PeerAddress { ip: from.ip(), port: from.port() }),
                        Box::new(Data(payload.to_vec())),
                    ];
                    if out.build(&setters).is_err() {
                        continue;
                    }
                    out.raw
                }
            };
            alloc.sink.send(frame).await;
            self.metrics.bytes_to_clients.inc_by(n as u64);
        }
        self.remove_exact(&alloc);
    }

    /// Whether `tuple` holds an allocation.
    pub fn has_allocation(&self, tuple: &FiveTuple) -> bool {
        self.allocations.lock().contains_key(tuple)
    }

    /// Drops the allocation of connection-oriented `tuple`: its TCP connection closed.
    pub fn connection_closed(&self, tuple: &FiveTuple) {
        self.remove(tuple);
    }
}

fn with_error<'a>(code: ErrorCode, reason: &str, extra: Setters<'a>) -> Setters<'a> {
    let mut out: Setters<'a> = vec![Box::new(ErrorCodeAttribute { code, reason: reason.as_bytes().to_vec() })];
    out.extend(extra);
    out
}

fn requested_lifetime(m: &Message) -> Option<Duration> {
    let mut lifetime = Lifetime::default();
    lifetime.get_from(m).ok().map(|()| lifetime.0)
}

/// Every XOR-PEER-ADDRESS of `m` (CreatePermission may carry several).
fn peer_addresses(m: &Message) -> Vec<SocketAddr> {
    m.attributes
        .0
        .iter()
        .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        .filter_map(|a| {
            let mut one = Message::new();
            one.transaction_id = m.transaction_id;
            one.attributes.0.push(a.clone());
            let mut peer = PeerAddress::default();
            peer.get_from(&one).ok().map(|()| SocketAddr::new(peer.ip, peer.port))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::policy::RelayPorts;

    fn server() -> Server {
        let config = TurnConfig {
            realm: "onair".into(),
            secret: onair_core::turn_rest::TurnSecret::new("s".into()),
            relay_ip: "127.0.0.1".parse().unwrap(),
            relay_bind: "127.0.0.1".parse().unwrap(),
            relay_ports: RelayPorts { min: 40000, max: 40001 },
            allow_peers: Vec::new(),
            user_quota: 1,
            max_bitrate: 8000,
        };
        Server::new(config, rtc::crypto::default_provider().unwrap(), CancellationToken::new())
    }

    #[test]
    fn nonces_are_checked_for_their_mac_and_age() {
        let s = server();
        let nonce = s.nonce();
        assert!(s.nonce_is_fresh(&nonce));
        let (stamp, _) = nonce.split_once('-').unwrap();
        assert!(!s.nonce_is_fresh(&format!("{stamp}-0000000000000000")), "a forged MAC passed");
        let old = format!("{:x}", unix_secs(SystemTime::now()) - NONCE_LIFETIME.as_secs() - 5);
        assert!(!s.nonce_is_fresh(&format!("{old}-{}", s.nonce_mac(&old))), "a stale nonce passed");
        assert!(!server().nonce_is_fresh(&nonce), "another server's nonce passed");
        assert!(!s.nonce_is_fresh("garbage"));
    }

    #[test]
    fn the_bucket_holds_one_second_of_the_rate() {
        let mut b = Bucket::new(8000); // 1000 bytes per second
        assert!(b.take(600));
        assert!(b.take(400));
        assert!(!b.take(100), "over the cap");
        b.at -= Duration::from_millis(500);
        assert!(b.take(400), "half a second refilled ~500 bytes");
        b.at -= Duration::from_secs(10);
        assert!(!b.take(1500), "never more than one second's worth");
    }
}
