//! The browser WebSocket protocol (`onair.v1`, JSON text frames). See DESIGN.md.

pub use onair_core::ErrorCode;
use onair_core::{PeerId, Stream, StreamId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// Signal kinds in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// SDP offer.
    Offer,
    /// SDP answer.
    Answer,
    /// ICE candidate.
    Candidate,
}

/// A frame from the browser.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Go live.
    Publish {
        /// 1..=200 characters.
        title: String,
    },
    /// Stop broadcasting.
    Unpublish,
    /// Watch a stream.
    Watch {
        /// The stream.
        stream_id: StreamId,
    },
    /// Stop watching.
    Unwatch,
    /// Signaling to a paired peer.
    Signal {
        /// Recipient peer id.
        to: PeerId,
        /// Offer, answer or candidate.
        kind: SignalKind,
        /// SDP or candidate, passed through.
        payload: Value,
    },
    /// Keep-alive.
    Ping,
}

/// Client frame types, to tell "unknown type" from "bad fields".
pub const CLIENT_TYPES: &[&str] = &["publish", "unpublish", "watch", "unwatch", "signal", "ping"];

/// A frame to the browser.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// Reply to ping.
    Pong,
    /// First frame: who you are.
    Welcome {
        /// Your peer id.
        peer_id: &'a str,
        /// ICE servers for RTCPeerConnection.
        ice_servers: &'a [Value],
        /// Reconnect with it on the upgrade (`/ws?resume=<token>`) to keep this peer id.
        resume_token: &'a str,
    },
    /// The live list: the newest [`crate::hub::SNAPSHOT_MAX`] streams, and how many are live in all
    /// (the page fetches the rest from `/api/streams?cursor=` if it wants them).
    Streams {
        /// Live streams, newest first.
        streams: &'a [Stream],
        /// Live streams in all (more than `streams` holds when the list is capped).
        total: usize,
    },
    /// A stream went live (or changed).
    StreamOn {
        /// The stream.
        stream: &'a Stream,
    },
    /// A stream ended.
    StreamOff {
        /// Its id.
        stream_id: &'a StreamId,
    },
    /// Your publish succeeded.
    Published {
        /// Your stream.
        stream: &'a Stream,
    },
    /// How your stream's media travels: to a relay peer (it appears as your one watcher, and
    /// every watcher receives from it), or peer to peer (`relay` absent: you send to each watcher).
    Media {
        /// Your stream.
        stream_id: &'a str,
        /// `relay` or `p2p`.
        mode: &'static str,
        /// The relay peer you upload to; absent: peer to peer.
        #[serde(skip_serializing_if = "Option::is_none")]
        relay: Option<&'a str>,
    },
    /// A watcher joined your stream.
    WatcherJoined {
        /// Its peer id.
        peer: &'a str,
    },
    /// A watcher left your stream.
    WatcherLeft {
        /// Its peer id.
        peer: &'a str,
    },
    /// Signaling from a paired peer.
    Signal {
        /// Sender (stamped by its gateway).
        from: &'a str,
        /// Offer, answer or candidate.
        kind: SignalKind,
        /// Passed through as the sender wrote it (checked to be JSON, not re-encoded).
        payload: &'a RawValue,
    },
    /// Watcher count of a stream.
    Viewers {
        /// The stream.
        stream_id: &'a str,
        /// Watchers now.
        count: u32,
    },
    /// Your last frame failed.
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Explanation.
        message: &'a str,
    },
}

impl ServerFrame<'_> {
    /// JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","code":"unavailable","message":"encoding"}"#.into())
    }
}

/// Why a text frame could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Code to send.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
}

/// Parses one text frame, classifying failures.
pub fn parse(text: &str) -> Result<ClientFrame, ParseError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ParseError { code: ErrorCode::BadJson, message: format!("frame is not valid JSON: {e}") })?;
    let Some(obj) = value.as_object() else {
        return Err(ParseError { code: ErrorCode::BadJson, message: "frame must be a JSON object".into() });
    };
    let ty = obj.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    if !CLIENT_TYPES.contains(&ty.as_str()) {
        return Err(ParseError {
            code: ErrorCode::UnknownType,
            message: format!("unknown type {ty:?}; expected one of {}", CLIENT_TYPES.join(", ")),
        });
    }
    serde_json::from_value(value)
        .map_err(|e| ParseError { code: ErrorCode::BadRequest, message: format!("bad {ty} frame: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,12}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever a client sends, parsing answers a frame or a classified error, never a panic.
        #[test]
        fn any_text_parses_or_is_classified(text in ".{0,300}") {
            if let Err(e) = parse(&text) {
                proptest::prop_assert!(!e.message.is_empty());
            }
        }

        /// Known frame types with arbitrary fields: a frame, or `bad_request` (never `unknown_type`).
        #[test]
        fn known_types_with_any_fields_are_frames_or_bad_requests(
            ty in proptest::sample::select(CLIENT_TYPES.to_vec()),
            fields in proptest::collection::btree_map("[a-z_]{1,10}", json_value(), 0..5),
        ) {
            let mut obj: serde_json::Map<String, Value> = fields.into_iter().collect();
            obj.insert("type".into(), Value::String(ty.to_owned()));
            match parse(&Value::Object(obj).to_string()) {
                Ok(_) => {}
                Err(e) => proptest::prop_assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message),
            }
        }
    }

    #[test]
    fn classifies_bad_frames() {
        assert_eq!(parse("nope").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(parse("[1]").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(parse(r#"{"type":"dance"}"#).unwrap_err().code, ErrorCode::UnknownType);
        assert_eq!(parse(r#"{"x":1}"#).unwrap_err().code, ErrorCode::UnknownType);
        assert_eq!(parse(r#"{"type":"watch"}"#).unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(
            parse(r#"{"type":"signal","to":"a","kind":"hug","payload":{}}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        let bad_id = parse(r#"{"type":"watch","stream_id":"../etc"}"#).unwrap_err();
        assert_eq!(bad_id.code, ErrorCode::BadRequest);
        assert!(bad_id.message.contains("invalid character"), "{}", bad_id.message);
        assert_eq!(
            parse(r#"{"type":"signal","to":"..","kind":"offer","payload":{}}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn parses_good_frames() {
        assert_eq!(parse(r#"{"type":"ping"}"#).unwrap(), ClientFrame::Ping);
        assert_eq!(
            parse(r#"{"type":"watch","stream_id":"s1"}"#).unwrap(),
            ClientFrame::Watch { stream_id: "s1".parse().unwrap() }
        );
        let f = parse(r#"{"type":"signal","to":"p","kind":"offer","payload":{"sdp":"v=0"},"from":"spoofed"}"#).unwrap();
        assert!(matches!(f, ClientFrame::Signal { kind: SignalKind::Offer, .. }));
    }

    #[test]
    fn a_signal_payload_goes_out_as_it_came() {
        let payload: &RawValue =
            serde_json::from_str(r#"{"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host"}"#).unwrap();
        let j = ServerFrame::Signal { from: "p", kind: SignalKind::Candidate, payload }.to_json();
        assert_eq!(
            j,
            r#"{"type":"signal","from":"p","kind":"candidate","payload":{"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host"}}"#
        );
    }

    #[test]
    fn frames_serialize_with_type_tags() {
        let j = ServerFrame::Viewers { stream_id: "s", count: 2 }.to_json();
        assert_eq!(j, r#"{"type":"viewers","stream_id":"s","count":2}"#);
        let e = ServerFrame::Error { code: ErrorCode::RateLimited, message: "slow down" }.to_json();
        assert_eq!(e, r#"{"type":"error","code":"rate_limited","message":"slow down"}"#);
    }
}
