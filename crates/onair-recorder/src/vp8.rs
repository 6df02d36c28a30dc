//! VP8 RTP depacketization (RFC 7741): RTP payloads → whole VP8 frames, with
//! keyframe detection and frame size from the VP8 payload header (RFC 6386 §9.1).
//!
//! Loss handling is deliberately simple: a frame with a missing packet is dropped
//! and every frame after it is held back until the next keyframe, which the
//! caller asks for with a PLI while [`Depacketizer::needs_keyframe`] is true.

/// One complete VP8 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// RTP timestamp shared by the frame's packets (90 kHz).
    pub rtp_ts: u32,
    /// The VP8 bitstream of the frame.
    pub data: Vec<u8>,
    /// Whether this is a keyframe (intra frame).
    pub keyframe: bool,
}

/// Width and height of a VP8 keyframe, or `None` if `frame` is not a well-formed keyframe.
pub fn keyframe_size(frame: &[u8]) -> Option<(u16, u16)> {
    // 3-byte frame tag (bit 0 of byte 0 clear for keyframes), start code 9d 01 2a,
    // then 14-bit width and height (upper 2 bits are the scaling mode).
    if frame.len() < 10 || frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let h = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    (w > 0 && h > 0).then_some((w, h))
}

/// Where the VP8 payload starts inside an RTP payload, and whether the packet starts a frame.
fn parse_descriptor(p: &[u8]) -> Option<(usize, bool)> {
    let b0 = *p.first()?;
    let start_of_partition = b0 & 0x10 != 0;
    let partition_id = b0 & 0x07;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let x = *p.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            let pid = *p.get(i)?;
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID / Y / KEYIDX
        }
    }
    (i < p.len()).then_some((i, start_of_partition && partition_id == 0))
}

/// Reassembles VP8 frames from RTP packets of one SSRC, in arrival order.
#[derive(Debug, Default)]
pub struct Depacketizer {
    buf: Vec<u8>,
    ts: u32,
    in_frame: bool,
    corrupt: bool,
    last_seq: Option<u16>,
    need_keyframe: bool,
    dropped: u64,
}

impl Depacketizer {
    /// A depacketizer waiting for its first frame.
    pub fn new() -> Self {
        Self { need_keyframe: true, ..Self::default() }
    }

    /// True until a keyframe has been emitted after start or after a loss (send PLIs meanwhile).
    pub fn needs_keyframe(&self) -> bool {
        self.need_keyframe
    }

    /// Frames dropped so far (incomplete, or waiting for a keyframe).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn drop_current(&mut self) {
        if self.in_frame {
            self.dropped += 1;
            self.need_keyframe = true;
        }
        self.in_frame = false;
        self.corrupt = false;
        self.buf.clear();
    }

    /// Feeds one RTP packet; returns a frame when `marker` completes one.
    pub fn push(&mut self, seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Option<Frame> {
        if let Some(last) = self.last_seq {
            let delta = seq.wrapping_sub(last);
            if delta == 0 || delta >= 0x8000 {
                return None; // duplicate or late (already counted as lost)
            }
            if delta != 1 {
                self.corrupt = true;
            }
        }
        self.last_seq = Some(seq);
        let (offset, starts_frame) = parse_descriptor(payload)?;
        if starts_frame {
            self.drop_current();
            self.in_frame = true;
            self.ts = ts;
        } else if !self.in_frame || ts != self.ts {
            // A continuation without its start: the frame is lost.
            self.drop_current();
            self.need_keyframe = true;
            return None;
        }
        self.buf.extend_from_slice(&payload[offset..]);
        if !marker {
            return None;
        }
        let data = std::mem::take(&mut self.buf);
        let corrupt = std::mem::replace(&mut self.corrupt, false);
        self.in_frame = false;
        let keyframe = data.first().is_some_and(|b| b & 0x01 == 0);
        if corrupt {
            self.dropped += 1;
            self.need_keyframe = true;
            return None;
        }
        if self.need_keyframe && !(keyframe && keyframe_size(&data).is_some()) {
            self.dropped += 1;
            return None;
        }
        self.need_keyframe = false;
        Some(Frame { rtp_ts: ts, data, keyframe })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake keyframe: tag with P=0, start code, 64x48.
    fn keyframe(len: usize) -> Vec<u8> {
        let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 64, 0, 48, 0];
        f.resize(len, 0xab);
        f
    }

    fn delta(len: usize) -> Vec<u8> {
        let mut f = vec![0x31, 0x02, 0x00];
        f.resize(len, 0xcd);
        f
    }

    /// Splits a frame into RTP payloads with a 4-byte descriptor (X, I with 15-bit PictureID).
    fn packetize(frame: &[u8], chunk: usize, picture_id: u16) -> Vec<Vec<u8>> {
        frame
            .chunks(chunk)
            .enumerate()
            .map(|(i, c)| {
                let s = if i == 0 { 0x10 } else { 0x00 };
                let mut p = vec![0x80 | s, 0x80, 0x80 | (picture_id >> 8) as u8, picture_id as u8];
                p.extend_from_slice(c);
                p
            })
            .collect()
    }

    fn feed(d: &mut Depacketizer, seq: &mut u16, ts: u32, frame: &[u8]) -> Option<Frame> {
        let pkts = packetize(frame, 100, 7);
        let n = pkts.len();
        let mut out = None;
        for (i, p) in pkts.iter().enumerate() {
            out = d.push(*seq, ts, i + 1 == n, p);
            *seq = seq.wrapping_add(1);
        }
        out
    }

    #[test]
    fn keyframe_size_reads_the_header() {
        assert_eq!(keyframe_size(&keyframe(20)), Some((64, 48)));
        assert_eq!(keyframe_size(&delta(20)), None);
        assert_eq!(keyframe_size(&[0x10, 0x02]), None);
    }

    #[test]
    fn descriptor_variants() {
        // Minimal descriptor, S=1 PID=0.
        assert_eq!(parse_descriptor(&[0x10, 0xaa]), Some((1, true)));
        // X with I (7-bit), L, T.
        assert_eq!(parse_descriptor(&[0x90, 0xe0, 0x05, 0x01, 0x20, 0xaa]), Some((5, true)));
        // Partition 1 does not start a frame.
        assert_eq!(parse_descriptor(&[0x11, 0xaa]), Some((1, false)));
        // Truncated.
        assert_eq!(parse_descriptor(&[0x90, 0x80]), None);
        assert_eq!(parse_descriptor(&[]), None);
    }

    #[test]
    fn reassembles_multi_packet_frames_and_waits_for_a_keyframe() {
        let mut d = Depacketizer::new();
        let mut seq = 65_530; // wraps during the test
        assert!(d.needs_keyframe());
        assert_eq!(feed(&mut d, &mut seq, 1000, &delta(250)), None, "delta before keyframe is dropped");
        let k = keyframe(350);
        let f = feed(&mut d, &mut seq, 4000, &k).expect("keyframe");
        assert!(f.keyframe);
        assert_eq!(f.data, k);
        assert_eq!(f.rtp_ts, 4000);
        assert!(!d.needs_keyframe());
        let f = feed(&mut d, &mut seq, 7000, &delta(120)).expect("delta");
        assert!(!f.keyframe);
        assert_eq!(f.data.len(), 120);
    }

    #[test]
    fn a_lost_packet_drops_the_frame_until_the_next_keyframe() {
        let mut d = Depacketizer::new();
        let mut seq = 10;
        feed(&mut d, &mut seq, 0, &keyframe(100)).expect("keyframe");
        let pkts = packetize(&delta(250), 100, 8);
        assert_eq!(d.push(seq, 3000, false, &pkts[0]), None);
        // pkts[1] lost
        assert_eq!(d.push(seq + 2, 3000, true, &pkts[2]), None);
        seq += 3;
        assert!(d.needs_keyframe());
        assert_eq!(feed(&mut d, &mut seq, 6000, &delta(50)), None);
        assert!(feed(&mut d, &mut seq, 9000, &keyframe(80)).is_some_and(|f| f.keyframe));
        assert!(feed(&mut d, &mut seq, 12000, &delta(50)).is_some());
        assert_eq!(d.dropped(), 2);
    }

    #[test]
    fn duplicates_are_ignored() {
        let mut d = Depacketizer::new();
        let pkts = packetize(&keyframe(150), 100, 1);
        assert_eq!(d.push(1, 0, false, &pkts[0]), None);
        assert_eq!(d.push(1, 0, false, &pkts[0]), None);
        assert!(d.push(2, 0, true, &pkts[1]).is_some());
    }
}
