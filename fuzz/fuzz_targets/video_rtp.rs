//! RTP in, frames out: the recorder's VP8 and H.264 frame assemblers (reordering, depacketizing,
//! the loss policy) and the keyframe facts read from the frames, on packets an attacker shapes.
//! Input: a codec byte, then packets, each a 2-byte big-endian length and that many bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onair_recorder::fuzzing::{h264_keyframe, h264_nal_units, h264_sps_size};
use onair_recorder::video::{FrameAssembler, VideoCodec, keyframe_size};
use rtc::shared::marshal::Unmarshal;

fuzz_target!(|data: &[u8]| {
    let Some((&codec, mut rest)) = data.split_first() else { return };
    let codec = if codec & 1 == 0 { VideoCodec::Vp8 } else { VideoCodec::H264 };
    let mut assembler = FrameAssembler::new(codec);
    for _ in 0..256 {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else { break };
        let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let (packet, tail) = tail.split_at(len);
        rest = tail;
        let mut buf = bytes::Bytes::copy_from_slice(packet);
        let Ok(packet) = rtc::rtp::Packet::unmarshal(&mut buf) else { continue };
        assembler.push(packet, |frame| match codec {
            VideoCodec::Vp8 => {
                let _ = keyframe_size(&frame.data);
            }
            VideoCodec::H264 => {
                assert_eq!(frame.keyframe, h264_keyframe(&frame.data));
                for nal in h264_nal_units(&frame.data) {
                    let _ = h264_sps_size(nal);
                }
            }
        });
    }
});
