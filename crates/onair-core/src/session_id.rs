//! The id of a WHIP/WHEP session, `<relay node>~<peer>~<secret>`: the relay makes it, the client
//! gets it in its `Location`, and any gateway routes a PATCH or DELETE by the node it names. One
//! definition for both sides of that contract.

use crate::{NodeId, PeerId};

/// Separates the parts (never in an id).
const SEP: char = '~';

/// A parsed session id. The secret is checked by the relay holding the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionId<'a> {
    /// The relay node holding the session.
    pub node: NodeId,
    /// The peer the relay attached for the client.
    pub peer: PeerId,
    /// The part only the client knows.
    pub secret: &'a str,
}

impl<'a> SessionId<'a> {
    /// Parses `<node>~<peer>~<secret>` (none of them empty, ids valid).
    pub fn parse(id: &'a str) -> Option<Self> {
        let mut parts = id.split(SEP);
        let (node, peer, secret) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || secret.is_empty() {
            return None;
        }
        Some(Self { node: node.parse().ok()?, peer: peer.parse().ok()?, secret })
    }

    /// The id as the client gets it.
    pub fn format(node: &NodeId, peer: &PeerId, secret: &str) -> String {
        format!("{node}{SEP}{peer}{SEP}{secret}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_round_trip_and_malformed_ones_are_refused() {
        let (node, peer): (NodeId, PeerId) = ("relay-1".parse().unwrap(), PeerId::generate());
        let id = SessionId::format(&node, &peer, "s3cret");
        assert_eq!(SessionId::parse(&id), Some(SessionId { node, peer, secret: "s3cret" }));
        for bad in ["", "relay-1", "relay-1~p", "relay-1~p~", "a~b~c~d", "bad node~p~s", "n~../x~s"] {
            assert!(SessionId::parse(bad).is_none(), "{bad:?}");
        }
    }
}
