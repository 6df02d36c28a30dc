//! WHIP and WHEP sessions held by this relay: a publisher (WHIP) or watcher (WHEP) peer that
//! the relay attaches to signaling on behalf of an HTTP client, so the stream is like any other
//! (listed, recorded, watchable) while the media session lives here. The gateway that took the
//! HTTP request only relays it; the session id carries this node's id, so any gateway can route
//! a later PATCH or DELETE here.
//!
//! This module is the bookkeeping and the pure parts (session ids, sdpfrags, status codes); the
//! hub drives it.

use std::collections::HashMap;
use std::time::Instant;

use onair_core::{NodeId, PeerId, SessionId, StreamId};
use onair_proto::v1 as pb;

/// What the HTTP client of a session does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// WHIP: it publishes a stream titled so.
    Publisher,
    /// WHEP: it watches this stream.
    Watcher(StreamId),
}

/// The request waiting for its answer (the gateway holds the HTTP request open).
#[derive(Debug, Clone)]
pub struct Pending {
    /// The gateway's request id.
    pub id: String,
    /// The gateway node.
    pub reply_to: String,
    /// The client's offer (JSON description, as a browser would signal it).
    pub offer: String,
    /// When it was asked.
    pub since: Instant,
    /// Whether it is an ICE restart (answered with an sdpfrag, not a whole answer).
    pub restart: bool,
}

/// One session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The peer the relay attached for the client.
    pub peer: PeerId,
    /// The part of the session id only its client knows.
    pub secret: String,
    /// The session's entity tag: one per ICE session, so a new one after each ICE restart.
    pub etag: String,
    /// The client's ICE ufrag (from its offer): a PATCH naming another one is an ICE restart.
    pub remote_ufrag: Option<String>,
    /// The client's offer as last negotiated (an ICE restart re-offers it with new credentials).
    pub offer_sdp: String,
    /// Publisher or watcher.
    pub role: Role,
    /// The stream's relay peer, once known.
    pub relay: Option<PeerId>,
    /// The stream (a publisher's, once published).
    pub stream: Option<StreamId>,
    /// Until answered.
    pub pending: Option<Pending>,
}

impl Session {
    /// A new session for `peer` with fresh secrets.
    pub fn new(peer: PeerId, role: Role, offer_sdp: &str, pending: Pending) -> Self {
        let stream = match &role {
            Role::Watcher(s) => Some(s.clone()),
            Role::Publisher => None,
        };
        Self {
            peer,
            secret: random_hex(),
            etag: new_etag(),
            remote_ufrag: ice_ufrag(offer_sdp),
            offer_sdp: offer_sdp.to_owned(),
            role,
            relay: None,
            stream,
            pending: Some(pending),
        }
    }

    /// The session id the client gets (in its `Location`).
    pub fn id(&self, node: &NodeId) -> String {
        SessionId::format(node, &self.peer, &self.secret)
    }

    /// What signaling should know this peer does (to re-assert it).
    pub fn state(&self) -> pb::PeerState {
        let s = |o: Option<&StreamId>| o.map(ToString::to_string).unwrap_or_default();
        let (broadcasting, watching) = match &self.role {
            Role::Publisher => (s(self.stream.as_ref()), String::new()),
            Role::Watcher(w) => (String::new(), w.to_string()),
        };
        pb::PeerState {
            peer: self.peer.to_string(),
            resume_token: String::new(),
            broadcasting,
            watching,
            relaying: String::new(),
        }
    }
}

/// Every session of this relay, by peer.
#[derive(Debug, Default)]
pub struct Sessions {
    by_peer: HashMap<PeerId, Session>,
}

impl Sessions {
    /// Adds a session.
    pub fn insert(&mut self, s: Session) {
        self.by_peer.insert(s.peer.clone(), s);
    }

    /// The session of `peer`.
    pub fn get_mut(&mut self, peer: &PeerId) -> Option<&mut Session> {
        self.by_peer.get_mut(peer)
    }

    /// Whether `peer` is a session's.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.by_peer.contains_key(peer)
    }

    /// Forgets `peer`'s session.
    pub fn remove(&mut self, peer: &PeerId) -> Option<Session> {
        self.by_peer.remove(peer)
    }

    /// The session a client's session id names, if its secret is right.
    pub fn find(&mut self, id: &str) -> Option<&mut Session> {
        let id = SessionId::parse(id)?;
        self.by_peer.get_mut(&id.peer).filter(|s| onair_auth::secrets_match(&s.secret, id.secret))
    }

    /// Every session's peer state.
    pub fn states(&self) -> Vec<pb::PeerState> {
        self.by_peer.values().map(Session::state).collect()
    }

    /// Takes every session (the relay drains).
    pub fn drain(&mut self) -> Vec<Session> {
        self.by_peer.drain().map(|(_, s)| s).collect()
    }

    /// Peers whose request waited longer than `limit` at `now`.
    pub fn overdue(&self, now: Instant, limit: std::time::Duration) -> Vec<PeerId> {
        self.by_peer
            .values()
            .filter(|s| s.pending.as_ref().is_some_and(|p| now.duration_since(p.since) > limit))
            .map(|s| s.peer.clone())
            .collect()
    }
}

/// The first `a=ice-ufrag:` of an SDP or sdpfrag.
pub fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines().find_map(|l| l.trim().strip_prefix("a=ice-ufrag:")).map(|u| u.trim().to_owned())
}

/// The candidates of an sdpfrag, each as a browser would trickle it (`{"candidate": …}`).
pub fn frag_candidates(frag: &str) -> Vec<String> {
    frag.lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .map(|c| serde_json::json!({ "candidate": c }).to_string())
        .collect()
}

/// The client's offer with the ICE credentials of an ICE-restart sdpfrag (RFC 8840) in place of
/// its own and without its old candidates (the frag's are trickled after it); `None` when the frag
/// lacks `a=ice-ufrag` or `a=ice-pwd`.
pub fn restart_offer(offer: &str, frag: &str) -> Option<String> {
    let value = |prefix: &str| frag.lines().find_map(|l| l.trim().strip_prefix(prefix)).map(str::trim);
    let (ufrag, pwd) = (value("a=ice-ufrag:")?, value("a=ice-pwd:")?);
    if ufrag.is_empty() || pwd.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(offer.len());
    for line in offer.lines().map(str::trim_end) {
        if line.starts_with("a=candidate:") || line == "a=end-of-candidates" {
            continue;
        }
        if line.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
        } else if line.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(pwd);
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    Some(out)
}

/// The sdpfrag answering an ICE restart (RFC 9725 §4.4.1): our new credentials and candidates,
/// taken from the renegotiated answer (bundled: the first media section's).
pub fn restart_answer_frag(answer: &str) -> String {
    let mut out = String::new();
    let mut lines = answer.lines().map(str::trim_end);
    let first = |p: &str| answer.lines().map(str::trim_end).find(|l| l.starts_with(p));
    for l in [first("a=ice-ufrag:"), first("a=ice-pwd:")].into_iter().flatten() {
        out.push_str(l);
        out.push_str("\r\n");
    }
    if let Some(m) = lines.find(|l| l.starts_with("m=")) {
        out.push_str(m);
        out.push_str("\r\n");
        for l in lines.take_while(|l| !l.starts_with("m=")) {
            if l.starts_with("a=mid:") || l.starts_with("a=candidate:") || l == "a=end-of-candidates" {
                out.push_str(l);
                out.push_str("\r\n");
            }
        }
    }
    out
}

/// A fresh entity tag.
pub fn new_etag() -> String {
    random_hex()[..16].to_owned()
}

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Pending {
        Pending { id: "r1".into(), reply_to: "gw".into(), offer: String::new(), since: Instant::now(), restart: false }
    }

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
                         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:old1\r\na=ice-pwd:oldpassword\r\n\
                         a=candidate:1 1 udp 2122260223 192.0.2.1 5000 typ host\r\na=end-of-candidates\r\n\
                         m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=ice-ufrag:old1\r\na=ice-pwd:oldpassword\r\n";

    #[test]
    fn an_ice_restart_re_offers_with_the_new_credentials_and_no_old_candidates() {
        let frag = "a=ice-ufrag:new2\r\na=ice-pwd:newpassword\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
                    a=candidate:2 1 udp 2122260223 192.0.2.9 6000 typ host\r\n";
        let offer = restart_offer(OFFER, frag).unwrap();
        assert_eq!(offer.matches("a=ice-ufrag:new2\r\n").count(), 2, "{offer}");
        assert_eq!(offer.matches("a=ice-pwd:newpassword\r\n").count(), 2, "{offer}");
        assert!(!offer.contains("old1") && !offer.contains("oldpassword"), "{offer}");
        assert!(!offer.contains("a=candidate") && !offer.contains("end-of-candidates"), "{offer}");
        assert!(offer.contains("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n"), "{offer}");
        assert_eq!(restart_offer(OFFER, "a=ice-ufrag:new2\r\n"), None, "no password");
        assert_eq!(restart_offer(OFFER, "a=ice-ufrag:\r\na=ice-pwd:x\r\n"), None, "empty ufrag");
    }

    #[test]
    fn the_restart_answer_frag_has_our_credentials_and_candidates_only() {
        let answer = OFFER.replace("old1", "ours").replace("oldpassword", "ourpassword");
        let frag = restart_answer_frag(&answer);
        assert_eq!(
            frag,
            "a=ice-ufrag:ours\r\na=ice-pwd:ourpassword\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
             a=candidate:1 1 udp 2122260223 192.0.2.1 5000 typ host\r\na=end-of-candidates\r\n"
        );
        assert_eq!(ice_ufrag(&frag).as_deref(), Some("ours"));
    }

    #[test]
    fn session_ids_route_to_their_node_and_need_the_secret() {
        let node: NodeId = "relay-1".parse().unwrap();
        let peer = PeerId::generate();
        let s = Session::new(peer.clone(), Role::Publisher, "v=0\r\na=ice-ufrag:abcd\r\n", pending());
        assert_eq!(s.remote_ufrag.as_deref(), Some("abcd"));
        let id = s.id(&node);
        assert_eq!(SessionId::parse(&id).map(|s| s.node), Some(node.clone()));
        let mut all = Sessions::default();
        all.insert(s.clone());
        assert!(all.find(&id).is_some());
        let forged = format!("{node}~{peer}~{}", "0".repeat(32));
        assert!(all.find(&forged).is_none(), "a wrong secret finds nothing");
    }

    #[test]
    fn sdpfrag_candidates_become_trickled_candidates() {
        let frag = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n\
                    a=mid:0\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n\
                    a=end-of-candidates\r\n";
        assert_eq!(ice_ufrag(frag).as_deref(), Some("EsAw"));
        let c = frag_candidates(frag);
        assert_eq!(c.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&c[0]).unwrap();
        assert_eq!(v["candidate"], "candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0");
        assert!(frag_candidates("a=end-of-candidates\r\n").is_empty());
    }
}
