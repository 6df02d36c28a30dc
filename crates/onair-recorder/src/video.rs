//! Video frames from RTP: the `rtc` stack's [`SampleBuilder`] (reorders packets by sequence
//! number and reassembles frames) over its depacketizers — RFC 7741 [`Vp8Packet`] for VP8,
//! RFC 6184 [`H264Packet`] for H.264 (AVCC output, see [`crate::h264`]) — plus the
//! recorder's loss policy and the keyframe facts read from the VP8 frame header
//! (RFC 6386 §9.1) or the H.264 NAL unit types.
//!
//! Loss handling is deliberately simple: the sample builder drops a frame with a missing
//! packet, and every frame after that is held back until the next keyframe, which the
//! caller asks for with a PLI while [`FrameAssembler::needs_keyframe`] is true.

use std::time::{Duration, Instant};

use rtc::media::Sample;
use rtc::media::io::sample_builder::SampleBuilder;
use rtc::rtp::Packet;
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::codec::vp8::Vp8Packet;

/// Packets the sample builder holds while it waits for a missing one (about 2 s of video at 2 Mbit/s).
pub const MAX_LATE_PACKETS: u16 = 512;
/// Media time the sample builder waits for a missing packet (room for a NACK round trip).
pub const MAX_LATE: Duration = Duration::from_millis(500);

/// The video codecs the recorder writes: VP8 to WebM, H.264 to MP4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// VP8 (browsers' first choice).
    Vp8,
    /// H.264, packetization-mode 1 (OBS and other WHIP encoders).
    H264,
}

impl VideoCodec {
    /// The codec of an RTP MIME type (`video/VP8`, `video/H264`), any case.
    pub fn from_mime(mime: &str) -> Option<Self> {
        match mime.to_ascii_lowercase().as_str() {
            "video/vp8" => Some(Self::Vp8),
            "video/h264" => Some(Self::H264),
            _ => None,
        }
    }

    /// The codec of an SDP `a=rtpmap` encoding name (`VP8/90000`, `H264/90000`).
    pub fn from_rtpmap(encoding: &str) -> Option<Self> {
        let name = encoding.split('/').next().unwrap_or("");
        Self::from_mime(&format!("video/{name}"))
    }

    /// The name stored in the recording catalog.
    pub fn catalog_name(self) -> &'static str {
        match self {
            Self::Vp8 => "VP8",
            Self::H264 => "H264",
        }
    }
}

/// One complete video frame (a VP8 frame, or an H.264 access unit in AVCC form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// RTP timestamp shared by the frame's packets (90 kHz).
    pub rtp_ts: u32,
    /// The frame's bitstream.
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

enum Builder {
    Vp8(SampleBuilder<Vp8Packet>),
    H264(SampleBuilder<H264Packet>),
}

impl Builder {
    fn new(codec: VideoCodec) -> Self {
        match codec {
            VideoCodec::Vp8 => Self::Vp8(
                SampleBuilder::new(MAX_LATE_PACKETS, Vp8Packet::default(), 90_000).with_max_time_delay(MAX_LATE),
            ),
            // AVCC out: length-prefixed NAL units, what MP4 samples hold.
            VideoCodec::H264 => {
                let mut depacketizer = H264Packet::default();
                depacketizer.is_avc = true;
                Self::H264(SampleBuilder::new(MAX_LATE_PACKETS, depacketizer, 90_000).with_max_time_delay(MAX_LATE))
            }
        }
    }

    fn push(&mut self, now: Instant, p: Packet) {
        match self {
            Self::Vp8(b) => b.push(now, p),
            Self::H264(b) => b.push(now, p),
        }
    }

    fn pop(&mut self, now: Instant) -> Option<Sample> {
        match self {
            Self::Vp8(b) => b.pop(now),
            Self::H264(b) => b.pop(now),
        }
    }

    fn is_keyframe(&self, frame: &[u8]) -> bool {
        match self {
            Self::Vp8(_) => keyframe_size(frame).is_some(),
            Self::H264(_) => crate::h264::is_keyframe(frame),
        }
    }
}

/// Turns the RTP packets of one video SSRC (in any order) into decodable frames.
///
/// A sequence number more than [`MAX_LATE_PACKETS`] away from the highest one seen is not
/// reordering: an older one is dropped, a newer one (an encoder restart, a new source) starts the
/// assembly over from the next keyframe. Without that, `rtc`'s sample builder purges the gap one
/// slot at a time, rescanning it each time: two packets 29 000 apart cost it 3 s of CPU (found by
/// the `video_rtp` fuzz target), and any broadcaster could send them.
pub struct FrameAssembler {
    codec: VideoCodec,
    builder: Builder,
    need_keyframe: bool,
    dropped: u64,
    /// The highest sequence number pushed (modulo 2^16).
    highest: Option<u16>,
    /// When the assembly last started over (at most once per [`RESTART_EVERY`]).
    restarted: Option<Instant>,
}

/// How often a sequence-number jump may start the assembly over (each costs a new sample
/// builder, ~10 MB of tables); jumps closer together are dropped as out of range.
pub const RESTART_EVERY: Duration = Duration::from_secs(1);

impl std::fmt::Debug for FrameAssembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameAssembler")
            .field("need_keyframe", &self.need_keyframe)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl FrameAssembler {
    /// An assembler of `codec` frames waiting for its first keyframe.
    pub fn new(codec: VideoCodec) -> Self {
        Self { codec, builder: Builder::new(codec), need_keyframe: true, dropped: 0, highest: None, restarted: None }
    }

    /// Whether `seq` may go to the sample builder (near the highest sequence seen); restarts the
    /// assembly on a jump forward.
    fn in_range(&mut self, seq: u16, now: Instant) -> bool {
        let window = i32::from(MAX_LATE_PACKETS);
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            return true;
        };
        #[allow(clippy::cast_possible_wrap)]
        let ahead = i32::from(seq.wrapping_sub(highest) as i16);
        if ahead > window {
            if self.restarted.is_some_and(|t| now.duration_since(t) < RESTART_EVERY) {
                return false;
            }
            tracing::debug!(from = highest, to = seq, "RTP sequence jump; assembling from the next keyframe");
            self.builder = Builder::new(self.codec);
            self.need_keyframe = true;
            self.restarted = Some(now);
            self.highest = Some(seq);
            return true;
        }
        if ahead < -window {
            return false;
        }
        if ahead > 0 {
            self.highest = Some(seq);
        }
        true
    }

    /// True until a keyframe has been emitted after start or after a loss (send PLIs meanwhile).
    pub fn needs_keyframe(&self) -> bool {
        self.need_keyframe
    }

    /// Frames skipped so far while waiting for a keyframe (frames lost in the network not included).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Feeds one RTP packet and calls `out` for every frame that is now complete and decodable.
    pub fn push(&mut self, packet: Packet, mut out: impl FnMut(Frame)) {
        let now = Instant::now();
        if !self.in_range(packet.header.sequence_number, now) {
            return;
        }
        self.builder.push(now, packet);
        while let Some(sample) = self.builder.pop(now) {
            if sample.prev_dropped_packets > sample.prev_padding_packets {
                // A frame before this one was lost: what follows cannot be decoded until a keyframe.
                self.need_keyframe = true;
            }
            let keyframe = self.builder.is_keyframe(&sample.data);
            if self.need_keyframe && !keyframe {
                self.dropped += 1;
                continue;
            }
            self.need_keyframe = false;
            out(Frame { rtp_ts: sample.packet_timestamp, data: sample.data.to_vec(), keyframe });
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rtc::rtp::Header;

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

    /// Splits a frame into RTP packets with a 4-byte descriptor (X, I with 15-bit PictureID).
    fn packetize(seq: &mut u16, ts: u32, frame: &[u8], chunk: usize) -> Vec<Packet> {
        let chunks: Vec<_> = frame.chunks(chunk).collect();
        let n = chunks.len();
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let s = if i == 0 { 0x10 } else { 0x00 };
                let mut p = vec![0x80 | s, 0x80, 0x80, 7];
                p.extend_from_slice(c);
                let header = Header { sequence_number: *seq, timestamp: ts, marker: i + 1 == n, ..Header::default() };
                *seq = seq.wrapping_add(1);
                Packet { header, payload: Bytes::from(p) }
            })
            .collect()
    }

    fn feed(a: &mut FrameAssembler, packets: Vec<Packet>) -> Vec<Frame> {
        let mut out = Vec::new();
        for p in packets {
            a.push(p, |f| out.push(f));
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
    fn reassembles_multi_packet_frames_and_waits_for_a_keyframe() {
        let mut a = FrameAssembler::new(VideoCodec::Vp8);
        let mut seq = 65_530; // wraps during the test
        assert!(a.needs_keyframe());
        let k = keyframe(350);
        let mut packets = packetize(&mut seq, 1000, &delta(250), 100);
        packets.extend(packetize(&mut seq, 4000, &k, 100));
        packets.extend(packetize(&mut seq, 7000, &delta(120), 100));
        // The frame after the last one: the builder emits a frame once the next one starts.
        packets.extend(packetize(&mut seq, 10_000, &delta(50), 100));
        let frames = feed(&mut a, packets);
        assert_eq!(frames.len(), 2, "the delta frame before the keyframe is dropped: {frames:?}");
        assert!(frames[0].keyframe);
        assert_eq!(frames[0].data, k);
        assert_eq!(frames[0].rtp_ts, 4000);
        assert!(!frames[1].keyframe);
        assert_eq!(frames[1].data.len(), 120);
        assert!(!a.needs_keyframe());
        assert_eq!(a.dropped(), 1);
    }

    #[test]
    fn reordered_and_duplicated_packets_are_reassembled() {
        let mut a = FrameAssembler::new(VideoCodec::Vp8);
        let mut seq = 100;
        let k = keyframe(350);
        let mut packets = packetize(&mut seq, 0, &k, 100);
        packets.swap(1, 2);
        packets.insert(1, packets[0].clone());
        packets.extend(packetize(&mut seq, 3000, &delta(50), 100));
        let frames = feed(&mut a, packets);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].data, k);
    }

    #[test]
    fn a_sequence_jump_starts_over_at_the_next_keyframe_and_costs_no_scan_of_the_gap() {
        let mut a = FrameAssembler::new(VideoCodec::Vp8);
        let mut seq = 50_229;
        let mut packets = packetize(&mut seq, 0, &keyframe(100), 100);
        packets.extend(packetize(&mut seq, 3000, &delta(50), 100));
        // 28 875 ahead (the fuzz target's input, which took 3.3 s), then a late packet from before.
        let mut seq = 13_568;
        let mut jumped = packetize(&mut seq, 900_000, &delta(50), 100);
        jumped.extend(packetize(&mut seq, 903_000, &keyframe(100), 100));
        jumped.extend(packetize(&mut seq, 906_000, &delta(60), 100));
        jumped.extend(packetize(&mut seq, 909_000, &delta(70), 100));
        jumped.push(packetize(&mut 50_300, 6000, &delta(50), 100).remove(0));
        packets.extend(jumped);
        let started = Instant::now();
        let frames = feed(&mut a, packets);
        assert!(started.elapsed() < Duration::from_millis(200), "took {:?}", started.elapsed());
        let ts: Vec<u32> = frames.iter().map(|f| f.rtp_ts).collect();
        assert_eq!(ts, [0, 903_000, 906_000], "the delta after the jump waits for the keyframe");
        assert!(frames[1].keyframe);
        assert_eq!(a.dropped(), 1);
    }

    #[test]
    fn jumps_closer_together_than_the_restart_interval_are_dropped() {
        let mut a = FrameAssembler::new(VideoCodec::Vp8);
        let started = Instant::now();
        for i in 0..200u16 {
            let mut seq = i.wrapping_mul(20_011);
            a.push(packetize(&mut seq, u32::from(i) * 3000, &keyframe(60), 100).remove(0), |_| {});
        }
        assert!(started.elapsed() < Duration::from_millis(500), "200 jumps took {:?}", started.elapsed());
        assert!(a.restarted.is_some());
    }

    #[test]
    fn a_lost_packet_drops_frames_until_the_next_keyframe() {
        let mut a = FrameAssembler::new(VideoCodec::Vp8);
        let mut seq = 10;
        let mut packets = packetize(&mut seq, 0, &keyframe(100), 100);
        let mut lossy = packetize(&mut seq, 3000, &delta(250), 100);
        lossy.remove(1);
        packets.extend(lossy);
        let mut ts = 6000;
        // Enough delta frames (with no keyframe) for the builder to give up on the lost packet.
        for _ in 0..20 {
            packets.extend(packetize(&mut seq, ts, &delta(50), 100));
            ts += 3000;
        }
        let frames = feed(&mut a, packets);
        assert_eq!(
            frames.len(),
            1,
            "only the first keyframe: {:?}",
            frames.iter().map(|f| f.rtp_ts).collect::<Vec<_>>()
        );
        assert!(a.needs_keyframe());
        let mut packets = packetize(&mut seq, ts, &keyframe(80), 100);
        packets.extend(packetize(&mut seq, ts + 3000, &delta(50), 100));
        packets.extend(packetize(&mut seq, ts + 6000, &delta(50), 100));
        let frames = feed(&mut a, packets);
        assert_eq!(frames.len(), 2);
        assert!(frames[0].keyframe && !frames[1].keyframe);
        assert!(!a.needs_keyframe());
    }
}
