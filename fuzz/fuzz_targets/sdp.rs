//! SDP and ICE text from clients: the recorder's reading of offers and answers (media sections,
//! codecs) and its 1:1 NAT rewrite of candidates, the relay's sdpfrag handling (WHIP/WHEP trickle)
//! and its STUN demultiplexer (which peer a datagram from a new address is for).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use onair_recorder::fuzzing::{answered_video, nat_1to1, offered_media};
use onair_relay::fuzzing::{frag_candidates, ice_ufrag, local_ufrag};

fuzz_target!(|data: &[u8]| {
    if let Some(ufrag) = local_ufrag(data) {
        assert!(!ufrag.is_empty() && !ufrag.contains(':'));
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = offered_media(text);
    let _ = answered_video(text);
    let public = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    for line in text.lines() {
        if let Some(rewritten) = nat_1to1(line, public) {
            assert!(rewritten.contains("203.0.113.7"), "{rewritten}");
        }
    }
    for c in frag_candidates(text) {
        assert!(c.starts_with("{\"candidate\":"), "{c}");
    }
    let _ = ice_ufrag(text);
});
