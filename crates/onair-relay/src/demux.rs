//! Which peer a datagram from an address no peer uses yet is for: only a STUN binding request can
//! open a path, and its USERNAME (`<our ufrag>:<their ufrag>`, RFC 8445 §7.2.2) names the peer. Parsed
//! here without allocating, so a flood of datagrams from made-up addresses costs a header check and
//! one map lookup each, never a scan of every peer.

/// STUN's magic cookie (RFC 5389 §6).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// The USERNAME attribute.
const USERNAME: u16 = 0x0006;
/// A binding request.
const BINDING_REQUEST: u16 = 0x0001;

/// The local ufrag a STUN binding request is addressed to; `None` for anything else (not STUN, not a
/// binding request, no or malformed USERNAME).
pub fn local_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < 20 || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    let kind = u16::from_be_bytes([datagram[0], datagram[1]]);
    if kind != BINDING_REQUEST {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let body = datagram.get(20..20 + len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let attr = u16::from_be_bytes([body[at], body[at + 1]]);
        let alen = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + alen)?;
        if attr == USERNAME {
            let name = std::str::from_utf8(value).ok()?;
            let (ours, _) = name.split_once(':')?;
            return (!ours.is_empty()).then_some(ours);
        }
        // Attributes are padded to 4 bytes.
        at += 4 + alen.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(username: &[u8]) -> Vec<u8> {
        let mut attrs = Vec::new();
        // PRIORITY first, as browsers send it.
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        attrs.extend_from_slice(&USERNAME.to_be_bytes());
        attrs.extend_from_slice(&u16::try_from(username.len()).unwrap().to_be_bytes());
        attrs.extend_from_slice(username);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn the_local_ufrag_of_a_binding_request() {
        assert_eq!(local_ufrag(&binding(b"abcd:xyz1")), Some("abcd"));
    }

    #[test]
    fn anything_else_names_nobody() {
        assert_eq!(local_ufrag(&binding(b"nocolon")), None);
        assert_eq!(local_ufrag(&binding(b":theirs")), None);
        assert_eq!(local_ufrag(&binding(&[0xff, 0xfe, b':', b'a'])), None);
        let mut response = binding(b"abcd:xyz1");
        response[1] = 0x01;
        response[0] = 0x01; // binding success response
        assert_eq!(local_ufrag(&response), None);
        let mut truncated = binding(b"abcd:xyz1");
        truncated.truncate(30);
        assert_eq!(local_ufrag(&truncated), None);
        assert_eq!(local_ufrag(&[0x80, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]), None);
        assert_eq!(local_ufrag(b""), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = local_ufrag(&data);
        }

        #[test]
        fn arbitrary_bytes_after_a_stun_header_never_panic(
            len in 0u16..700,
            rest in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        ) {
            let mut m = vec![0x00, 0x01];
            m.extend_from_slice(&len.to_be_bytes());
            m.extend_from_slice(&MAGIC_COOKIE);
            m.extend_from_slice(&[0; 12]);
            m.extend_from_slice(&rest);
            let _ = local_ufrag(&m);
        }
    }
}
