//! The recording writers (WebM for VP8, fragmented MP4 for H.264) fed any sequence of frames and
//! timestamps — out of order, huge gaps, empty frames, audio before video — must write or refuse,
//! never panic, and finish the file. Input: a header byte (container, tracks), then frames, each
//! a flags byte, a 4-byte timestamp step (ms, signed) and a 2-byte length with that many bytes.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use onair_recorder::container::Container;
use onair_recorder::mux::{MediaFrame, Tracks};
use onair_recorder::video::VideoCodec;

static FILES: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let Some((&header, mut rest)) = data.split_first() else { return };
    let codec = if header & 1 == 0 { VideoCodec::Vp8 } else { VideoCodec::H264 };
    let tracks = Tracks { video: header & 2 == 0, audio: header & 4 == 0, audio_channels: 1 + (header >> 3 & 1) };
    let dir = std::env::temp_dir().join(format!("onair-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.rec", FILES.fetch_add(1, Ordering::Relaxed) % 4));
    let Ok(mut out) = Container::create(&path, tracks, Some(codec)) else { return };
    let mut ts_ns: i64 = 1_000_000_000;
    for _ in 0..512 {
        let Some((head, tail)) = rest.split_first_chunk::<7>() else { break };
        let flags = head[0];
        let step_ms = i64::from(i32::from_be_bytes([head[1], head[2], head[3], head[4]]));
        let len = usize::from(u16::from_be_bytes([head[5], head[6]])).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        ts_ns = ts_ns.saturating_add(step_ms.saturating_mul(1_000_000));
        let frame = if flags & 1 == 0 {
            MediaFrame::Video { data: payload.to_vec(), keyframe: flags & 2 != 0 }
        } else {
            MediaFrame::Audio { data: payload.to_vec() }
        };
        if out.write(ts_ns, &frame).is_err() {
            break;
        }
        if flags & 4 != 0 {
            let _ = out.flush();
        }
    }
    let _ = out.finish();
    let _ = std::fs::remove_file(&path);
});
