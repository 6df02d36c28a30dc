//! Media time: RTP timestamps (32-bit, per-track clock) → nanoseconds on one
//! recording timeline, and a small reorder buffer that releases frames of all
//! tracks in timestamp order (WebM requires monotonic timestamps across tracks).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Extends 32-bit RTP timestamps to 64 bits across wrap-arounds (and small backward steps).
#[derive(Debug, Default, Clone)]
pub struct Unwrapper {
    last: Option<(u32, i64)>,
}

impl Unwrapper {
    /// The extended value of `ts`.
    pub fn unwrap(&mut self, ts: u32) -> i64 {
        let ext = match self.last {
            None => i64::from(ts),
            // Interpreting the difference as signed handles both a forward wrap and reordering.
            Some((prev, prev_ext)) => prev_ext + i64::from(ts.wrapping_sub(prev) as i32),
        };
        self.last = Some((ts, ext));
        ext
    }
}

/// Maps one track's RTP clock onto the recording timeline.
///
/// The first packet of the track is anchored at its arrival time (nanoseconds since the
/// first packet of any track); later packets follow the RTP clock from there, so jitter
/// in arrival times does not leak into timestamps while tracks stay aligned to within
/// the network delay difference of their first packets.
#[derive(Debug, Clone)]
pub struct TrackClock {
    clock_rate: i64,
    unwrapper: Unwrapper,
    anchor: Option<(i64, i64)>,
}

impl TrackClock {
    /// A clock for a track sampled at `clock_rate` Hz (90 000 for video, 48 000 for Opus).
    pub fn new(clock_rate: u32) -> Self {
        Self { clock_rate: i64::from(clock_rate.max(1)), unwrapper: Unwrapper::default(), anchor: None }
    }

    /// Timeline nanoseconds of a packet with RTP timestamp `ts` that arrived at `arrival_ns`.
    pub fn ns_at(&mut self, ts: u32, arrival_ns: i64) -> i64 {
        let ext = self.unwrapper.unwrap(ts);
        let (first, offset) = *self.anchor.get_or_insert((ext, arrival_ns));
        let ticks = i128::from(ext - first);
        let ns = ticks * 1_000_000_000 / i128::from(self.clock_rate);
        offset + i64::try_from(ns).unwrap_or(i64::MAX / 2)
    }
}

struct Entry<T> {
    ts: i64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.ts, self.seq) == (other.ts, other.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ts, self.seq).cmp(&(other.ts, other.seq))
    }
}

/// Interleaves frames of several tracks in timestamp order.
///
/// A frame is released once every track that has started has delivered a frame at least as
/// new (so a track that lags, e.g. video stalled by a busy CPU, holds the others back instead
/// of being written out of order), or once a frame `window_ns` newer exists (so a track that
/// stops entirely cannot hold the file back forever), or on [`Reorder::drain`]. Released
/// timestamps never decrease: a frame later than even that is written at the last timestamp.
pub struct Reorder<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    window_ns: i64,
    newest: i64,
    newest_per_track: Vec<i64>,
    last_out: i64,
    seq: u64,
}

impl<T> std::fmt::Debug for Reorder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reorder").field("len", &self.heap.len()).field("window_ns", &self.window_ns).finish()
    }
}

impl<T> Reorder<T> {
    /// An empty buffer with a reordering window of `window_ns`.
    pub fn new(window_ns: i64) -> Self {
        Self {
            heap: BinaryHeap::new(),
            window_ns,
            newest: i64::MIN,
            newest_per_track: Vec::new(),
            last_out: i64::MIN,
            seq: 0,
        }
    }

    /// Frames held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no frame is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Adds a frame of track 0.
    #[cfg(test)]
    pub fn push(&mut self, ts: i64, item: T) {
        self.push_on(0, ts, item);
    }

    /// Adds a frame of `track` (a small index: 0 video, 1 audio, ...).
    pub fn push_on(&mut self, track: usize, ts: i64, item: T) {
        if self.newest_per_track.len() <= track {
            self.newest_per_track.resize(track + 1, i64::MIN);
        }
        let t = &mut self.newest_per_track[track];
        *t = (*t).max(ts);
        self.newest = self.newest.max(ts);
        self.seq += 1;
        self.heap.push(Reverse(Entry { ts, seq: self.seq, item }));
    }

    fn release(&mut self) -> Option<(i64, T)> {
        let Reverse(e) = self.heap.pop()?;
        let ts = e.ts.max(self.last_out);
        self.last_out = ts;
        Some((ts, e.item))
    }

    /// The next frame that is old enough to be written, if any.
    pub fn pop_ready(&mut self) -> Option<(i64, T)> {
        let Reverse(top) = self.heap.peek()?;
        let all_caught_up =
            self.newest_per_track.iter().filter(|t| **t != i64::MIN).all(|t| *t >= top.ts) && self.started_tracks() > 1;
        if all_caught_up || top.ts.saturating_add(self.window_ns) <= self.newest { self.release() } else { None }
    }

    fn started_tracks(&self) -> usize {
        self.newest_per_track.iter().filter(|t| **t != i64::MIN).count()
    }

    /// The next frame regardless of age (end of recording).
    pub fn drain(&mut self) -> Option<(i64, T)> {
        self.release()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrapper_handles_wraparound_and_reordering() {
        let mut u = Unwrapper::default();
        assert_eq!(u.unwrap(u32::MAX - 10), i64::from(u32::MAX - 10));
        assert_eq!(u.unwrap(5), i64::from(u32::MAX) + 6);
        // A reordered packet from before the wrap.
        assert_eq!(u.unwrap(u32::MAX - 2), i64::from(u32::MAX - 2));
        assert_eq!(u.unwrap(100), i64::from(u32::MAX) + 101);
    }

    #[test]
    fn track_clock_converts_rtp_ticks_from_the_anchor() {
        let mut video = TrackClock::new(90_000);
        assert_eq!(video.ns_at(1_000, 0), 0);
        assert_eq!(video.ns_at(1_000 + 3_000, 99_000_000), 33_333_333, "arrival jitter is ignored");
        let mut audio = TrackClock::new(48_000);
        // The audio track started 20 ms after the video track.
        assert_eq!(audio.ns_at(u32::MAX - 479, 20_000_000), 20_000_000);
        assert_eq!(audio.ns_at(480, 40_000_000), 40_000_000, "wraps across u32::MAX");
    }

    #[test]
    fn track_clock_handles_a_long_recording() {
        let mut c = TrackClock::new(90_000);
        c.ns_at(0, 0);
        let mut ts: u32 = 0;
        // ~26.5 h of 90 kHz ticks: more than one full wrap of the 32-bit timestamp.
        for _ in 0..100 {
            ts = ts.wrapping_add(90_000 * 1000);
            c.ns_at(ts, 0);
        }
        assert_eq!(c.ns_at(ts, 0), 100_000 * 1_000_000_000);
    }

    #[test]
    fn reorder_releases_in_timestamp_order_after_the_window() {
        let mut r = Reorder::new(100);
        r.push(0, "v0");
        r.push(20, "a20");
        r.push(10, "a10");
        assert!(r.pop_ready().is_none());
        r.push(115, "v115");
        assert_eq!(r.pop_ready(), Some((0, "v0")));
        assert_eq!(r.pop_ready(), Some((10, "a10")));
        assert!(r.pop_ready().is_none(), "20 + 100 > 115");
        assert_eq!(r.drain(), Some((20, "a20")));
        assert_eq!(r.drain(), Some((115, "v115")));
        assert!(r.drain().is_none());
        assert!(r.is_empty());
    }

    #[test]
    fn reorder_never_goes_backwards() {
        let mut r = Reorder::new(10);
        r.push(100, 1);
        r.push(200, 2);
        assert_eq!(r.pop_ready(), Some((100, 1)));
        r.push(50, 3); // far too late
        assert_eq!(r.pop_ready(), Some((100, 3)));
        assert_eq!(r.drain(), Some((200, 2)));
    }

    #[test]
    fn a_lagging_track_holds_the_others_back_instead_of_being_clamped() {
        let mut r = Reorder::new(2_000);
        r.push_on(0, 0, "v0");
        r.push_on(1, 0, "a0");
        // Audio runs ahead while video stalls (within the 2_000 hold).
        for t in (20..=600).step_by(20) {
            r.push_on(1, t, "a");
        }
        assert_eq!(r.pop_ready(), Some((0, "v0")));
        assert_eq!(r.pop_ready(), Some((0, "a0")));
        assert!(r.pop_ready().is_none(), "audio waits for video");
        // The stalled video frames arrive late, in a burst: all written in order, none clamped.
        for t in [33, 66, 100] {
            r.push_on(0, t, "v");
        }
        let mut out = Vec::new();
        while let Some((ts, _)) = r.pop_ready() {
            out.push(ts);
        }
        assert!(out.windows(2).all(|w| w[0] <= w[1]), "{out:?}");
        assert!(out.contains(&33) && out.contains(&66));
    }

    #[test]
    fn equal_timestamps_keep_insertion_order() {
        let mut r = Reorder::new(0);
        r.push(5, 'a');
        r.push(5, 'b');
        assert_eq!(r.drain(), Some((5, 'a')));
        assert_eq!(r.drain(), Some((5, 'b')));
        assert_eq!(r.len(), 0);
    }
}
