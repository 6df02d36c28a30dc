//! Simulcast: a publisher sends its video in several layers (RTP streams named by RID, e.g. the
//! broadcast page's `q`/`h`/`f` at quarter, half and full resolution), and each subscriber is sent
//! one of them: the best its bandwidth estimate allows. Pure logic, driven by the engine:
//! [`Layers`] measures what each layer carries, [`Selector`] picks a subscriber's layer, switches
//! only at a keyframe of the new layer, and rewrites RTP timestamps so the subscriber's stream
//! stays one continuous timeline across switches (str0m rewrites SSRC and sequence numbers).
//! A publisher without simulcast has one layer, `None`; a new publisher connection is a switch
//! too (to its first keyframe), so it never breaks a subscriber's timeline either.

use std::time::{Duration, Instant};

use str0m::media::Rid;

/// A layer's name: its RID, or `None` for a publisher that sends one video stream.
pub type LayerId = Option<Rid>;

/// A layer's bitrate is measured over windows this long.
const WINDOW: Duration = Duration::from_secs(1);
/// A layer that sent no frame for this long is not offered (the browser paused it, e.g. for CPU).
const INACTIVE_AFTER: Duration = Duration::from_millis(1500);
/// A subscriber moves up a layer only once its estimate has allowed it for this long (a
/// bandwidth estimate oscillates; moving down happens at once).
const UP_AFTER: Duration = Duration::from_secs(2);
/// A subscriber moves up to a layer when its estimate covers the layer's bitrate plus this share
/// (in percent) ...
const UP_HEADROOM_PERCENT: u64 = 15;
/// ... and stays on it while the estimate covers this share of it: an estimate hovers around what
/// is sent, and a keyframe's burst dents it, so staying needs less than getting there.
const STAY_PERCENT: u64 = 80;
/// For this long after a subscriber's first layer choice its estimate moves it up, never down: a
/// new connection's estimator starts from a guess, and the first keyframe's burst, arriving while
/// the receiver is busiest (its decoder starting), often reads as congestion; its estimate then
/// falls to what was acknowledged so far. Down at once from there, the subscriber would be sent
/// too little for the estimate to ever climb back (it stays near what is sent) but for probes.
const SETTLE: Duration = Duration::from_secs(3);
/// Subscribers' estimators probe for the top layer's bitrate plus this share (in percent).
const PROBE_HEADROOM_PERCENT: u64 = 50;
/// Bandwidth audio and RTCP need beside the video, in bits per second.
const AUDIO_BPS: u64 = 40_000;

/// One layer of a stream, as measured.
#[derive(Debug, Clone, Copy)]
struct Layer {
    rid: LayerId,
    /// Bits per second over the last complete window (0 until one completed).
    bps: u64,
    window_start: Instant,
    window_bytes: u64,
    last_frame: Instant,
}

/// The layers a stream's publisher sends, with their measured bitrates.
#[derive(Debug, Default)]
pub struct Layers {
    layers: Vec<Layer>,
}

/// At most this many layers per stream are tracked (browsers send up to three; a publisher
/// inventing RIDs cannot grow the list).
const MAX_LAYERS: usize = 4;

impl Layers {
    /// Counts a frame of `bytes` on layer `rid` at `at`.
    pub fn on_frame(&mut self, rid: LayerId, bytes: usize, at: Instant) {
        let bytes = bytes as u64;
        if let Some(l) = self.layers.iter_mut().find(|l| l.rid == rid) {
            l.last_frame = at;
            let elapsed = at.saturating_duration_since(l.window_start);
            if elapsed >= WINDOW {
                let measured = l.window_bytes * 8 * 1000 / (elapsed.as_millis().max(1) as u64);
                // Smooth over two windows: keyframes make one window spike.
                l.bps = if l.bps == 0 { measured } else { (l.bps + measured) / 2 };
                l.window_start = at;
                l.window_bytes = 0;
            }
            l.window_bytes += bytes;
        } else if self.layers.len() < MAX_LAYERS {
            self.layers.push(Layer { rid, bps: 0, window_start: at, window_bytes: bytes, last_frame: at });
        }
    }

    /// The active layers from lowest to highest bitrate, with their bitrates.
    pub fn ranked(&self, now: Instant) -> Ranked {
        let mut v: Vec<(LayerId, u64)> = self
            .layers
            .iter()
            .filter(|l| now.saturating_duration_since(l.last_frame) < INACTIVE_AFTER)
            .map(|l| (l.rid, l.bps))
            .collect();
        v.sort_by_key(|(_, bps)| *bps);
        Ranked(v)
    }

    /// The bitrate subscribers would need for the highest layer (and audio): what their
    /// bandwidth estimators probe towards.
    pub fn desired_bps(&self, now: Instant) -> u64 {
        let top = self.ranked(now).0.last().map_or(0, |(_, bps)| *bps);
        top + top * PROBE_HEADROOM_PERCENT / 100 + AUDIO_BPS
    }
}

/// Active layers, lowest bitrate first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranked(pub Vec<(LayerId, u64)>);

impl Ranked {
    /// The rank of the best layer `estimate` (bits per second; `None`: no estimate, take the
    /// best) can carry with headroom, else the lowest.
    fn best_rank(&self, estimate: Option<u64>) -> Option<usize> {
        if self.0.is_empty() {
            return None;
        }
        let Some(e) = estimate else { return Some(self.0.len() - 1) };
        let available = e.saturating_sub(AUDIO_BPS);
        let fits = |bps: u64| bps + bps * UP_HEADROOM_PERCENT / 100 <= available;
        Some(self.0.iter().rposition(|(_, bps)| fits(*bps)).unwrap_or(0))
    }

    /// Whether `estimate` still carries the layer ranked `rank` (see [`STAY_PERCENT`]).
    fn holds(&self, rank: usize, estimate: Option<u64>) -> bool {
        let Some(e) = estimate else { return true };
        self.0[rank].1 * STAY_PERCENT / 100 <= e.saturating_sub(AUDIO_BPS)
    }

    fn rank(&self, rid: LayerId) -> Option<usize> {
        self.0.iter().position(|(r, _)| *r == rid)
    }
}

/// What [`Selector::accept`] decided for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Not sent to this subscriber.
    Skip,
    /// Sent, with this RTP timestamp.
    Send(u64),
    /// Sent with this RTP timestamp: the first frame of a new layer (a switch).
    Switch(u64),
}

/// One subscriber's view of a simulcast stream: which layer it gets and wants, and the
/// timestamp offset that keeps its timeline continuous.
#[derive(Debug, Default)]
pub struct Selector {
    current: Option<LayerId>,
    target: Option<LayerId>,
    /// The subscriber's latest bandwidth estimate, bits per second.
    estimate: Option<u64>,
    /// Since when the estimate has allowed a higher layer than the target.
    higher_since: Option<Instant>,
    /// Since when the estimate has not carried even the lowest layer.
    starved_since: Option<Instant>,
    /// The first layer choice (see [`SETTLE`]).
    first_choice: Option<Instant>,
    /// Added to the current layer's timestamps (str0m's extended RTP times: no wrapping).
    offset: i128,
    /// The last timestamp sent and when its frame arrived.
    last_sent: Option<(u64, Instant)>,
    clock_rate: u64,
}

impl Selector {
    /// A selector for a video clock of `clock_rate` Hz (90 kHz for video).
    pub fn new(clock_rate: u64) -> Self {
        Self { clock_rate, ..Self::default() }
    }

    /// The subscriber's new bandwidth estimate.
    pub fn set_estimate(&mut self, bps: u64) {
        self.estimate = Some(bps);
    }

    /// The latest bandwidth estimate, bits per second.
    pub fn estimate(&self) -> Option<u64> {
        self.estimate
    }

    /// The layer wanted (being sent, or waited for).
    pub fn target(&self) -> Option<LayerId> {
        self.target
    }

    /// The publisher's connection was replaced: wait for the new one's keyframe (the timeline
    /// continues from the last frame sent).
    pub fn restart(&mut self) {
        self.current = None;
        self.target = None;
        self.higher_since = None;
    }

    /// The layer being sent.
    pub fn current(&self) -> Option<LayerId> {
        self.current
    }

    /// Re-decides the layer this subscriber should get from `ranked` at `now`; returns the new
    /// target when it changed (it needs a keyframe of that layer before the switch).
    pub fn choose(&mut self, ranked: &Ranked, now: Instant) -> Option<LayerId> {
        let best = ranked.best_rank(self.estimate)?;
        let settling = now.saturating_duration_since(*self.first_choice.get_or_insert(now)) < SETTLE;
        let rank = match self.target.and_then(|t| ranked.rank(t)) {
            // Nothing chosen yet, or the chosen layer went away: the best that fits, at once.
            None => best,
            // A new connection's estimate is not trusted downwards yet.
            Some(t) if settling && best <= t => t,
            // The estimate no longer holds the layer: down at once, to the best that fits.
            Some(t) if !ranked.holds(t, self.estimate) => {
                self.higher_since = None;
                best.min(t.saturating_sub(1))
            }
            // No estimate (a recorder): nothing oscillates, the top layer at once.
            Some(t) if best > t && self.estimate.is_none() => best,
            // A higher layer fits: up once it has fitted for a while.
            Some(t) if best > t => {
                let since = *self.higher_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= UP_AFTER {
                    self.higher_since = None;
                    best
                } else {
                    t
                }
            }
            Some(t) => {
                self.higher_since = None;
                t
            }
        };
        let target = ranked.0[rank].0;
        if self.target == Some(target) {
            return None;
        }
        self.target = Some(target);
        // Back to the layer still being sent: nothing to wait for.
        (self.current != Some(target)).then_some(target)
    }

    /// Whether this subscriber's estimate has not carried even the lowest of `ranked` while it
    /// was `losing` packets (its receiver reports say so), for `after`: it is on that layer, or on
    /// its way down to it, and still cannot keep up, as seen at `now`; the relay then lets it go.
    /// Both are needed: a receiver short of CPU reads packets late, and its estimate falls, but
    /// it loses few; a link too thin for the stream loses them. Call it regularly; an estimate
    /// that carries the lowest layer again, or no loss (or no estimate, no layer), starts over.
    pub fn starved_for(&mut self, ranked: &Ranked, losing: bool, now: Instant, after: Duration) -> bool {
        if !losing || ranked.0.is_empty() || ranked.holds(0, self.estimate) {
            self.starved_since = None;
            return false;
        }
        let since = *self.starved_since.get_or_insert(now);
        now.saturating_duration_since(since) >= after
    }

    /// Whether the frame of layer `rid` (a keyframe or not, RTP time `ts`, arrived `at`) goes to
    /// this subscriber, and with which timestamp.
    pub fn accept(&mut self, rid: LayerId, keyframe: bool, ts: u64, at: Instant) -> Accept {
        if self.current == Some(rid) {
            let out = shift(ts, self.offset);
            self.last_sent = Some((out, at));
            return Accept::Send(out);
        }
        if !(keyframe && self.target == Some(rid)) {
            return Accept::Skip;
        }
        // Switch: the new layer's first frame follows the last one sent by the time between
        // their arrivals (at least one tick), whatever the layers' own timestamp bases.
        let out = match self.last_sent {
            Some((last, last_at)) => {
                let elapsed = at.saturating_duration_since(last_at);
                let ticks = (elapsed.as_micros() as u64).saturating_mul(self.clock_rate) / 1_000_000;
                last.saturating_add(ticks.max(1))
            }
            None => ts,
        };
        self.offset = i128::from(out) - i128::from(ts);
        self.current = Some(rid);
        self.last_sent = Some((out, at));
        Accept::Switch(out)
    }
}

/// Keyframe requests to a publisher, per layer: wanted by any number of subscribers, sent at
/// most once per `every` per layer (as mediasoup does).
#[derive(Debug, Default)]
pub struct KeyframeRequests {
    /// Layer, wanted, last sent.
    layers: Vec<(LayerId, bool, Option<Instant>)>,
}

impl KeyframeRequests {
    /// Some subscriber needs a keyframe of `layer`.
    pub fn want(&mut self, layer: LayerId) {
        if let Some(e) = self.layers.iter_mut().find(|(l, ..)| *l == layer) {
            e.1 = true;
        } else if self.layers.len() <= MAX_LAYERS {
            self.layers.push((layer, true, None));
        }
    }

    /// Whether any request waits.
    pub fn any_wanted(&self) -> bool {
        self.layers.iter().any(|(_, w, _)| *w)
    }

    /// The layers whose request is due at `now` (at most one per `every`); marks them sent.
    pub fn due(&mut self, now: Instant, every: Duration) -> Vec<LayerId> {
        let mut due = Vec::new();
        for (layer, wanted, last) in &mut self.layers {
            if *wanted && last.is_none_or(|t| now.saturating_duration_since(t) >= every) {
                *wanted = false;
                *last = Some(now);
                due.push(*layer);
            }
        }
        due
    }

    /// Forgets everything (a new publisher connection).
    pub fn clear(&mut self) {
        self.layers.clear();
    }
}

/// `ts + offset`, clamped to the timestamps that exist.
fn shift(ts: u64, offset: i128) -> u64 {
    u64::try_from((i128::from(ts) + offset).max(0)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(s: &str) -> LayerId {
        Some(s.into())
    }

    impl Ranked {
        fn fitting(&self, estimate: Option<u64>) -> Option<LayerId> {
            self.best_rank(estimate).map(|r| self.0[r].0)
        }
    }

    /// Layers q/h/f at 100/400/1200 kbit/s, measured over two windows.
    fn three_layers(t0: Instant) -> Layers {
        let mut l = Layers::default();
        for i in 0..=60u32 {
            let at = t0 + Duration::from_millis(u64::from(i) * 33);
            // bytes per frame at 30 fps for each rate
            l.on_frame(rid("q"), 100_000 / 8 / 30, at);
            l.on_frame(rid("h"), 400_000 / 8 / 30, at);
            l.on_frame(rid("f"), 1_200_000 / 8 / 30, at);
        }
        l
    }

    #[test]
    fn layers_rank_by_measured_bitrate_and_inactive_ones_drop_out() {
        let t0 = Instant::now();
        let l = three_layers(t0);
        let now = t0 + Duration::from_secs(2);
        let ranked = l.ranked(now);
        let rids: Vec<LayerId> = ranked.0.iter().map(|(r, _)| *r).collect();
        assert_eq!(rids, vec![rid("q"), rid("h"), rid("f")]);
        let f = ranked.0[2].1;
        assert!((1_100_000..1_300_000).contains(&f), "full layer measured at {f}");
        assert!(l.ranked(now + Duration::from_secs(2)).0.is_empty(), "no frames for 2 s: none active");
        assert!(l.desired_bps(now) > f);
    }

    #[test]
    fn a_publisher_cannot_grow_the_layer_list() {
        let mut l = Layers::default();
        let t0 = Instant::now();
        for i in 0..100 {
            l.on_frame(rid(&format!("r{i}")), 10, t0);
        }
        assert_eq!(l.ranked(t0).0.len(), MAX_LAYERS);
    }

    #[test]
    fn the_estimate_picks_the_best_layer_that_fits() {
        let r = Ranked(vec![(rid("q"), 100_000), (rid("h"), 400_000), (rid("f"), 1_200_000)]);
        assert_eq!(r.fitting(None), Some(rid("f")), "no estimate: the best");
        assert_eq!(r.fitting(Some(5_000_000)), Some(rid("f")));
        assert_eq!(r.fitting(Some(1_200_000)), Some(rid("h")), "1.2 M leaves no headroom for f");
        assert_eq!(r.fitting(Some(1_430_000)), Some(rid("f")));
        assert_eq!(r.fitting(Some(600_000)), Some(rid("h")));
        assert_eq!(r.fitting(Some(300_000)), Some(rid("q")));
        assert_eq!(r.fitting(Some(10_000)), Some(rid("q")), "nothing fits: the lowest");
        assert_eq!(Ranked::default().fitting(Some(1)), None);
    }

    #[test]
    fn down_at_once_up_only_after_the_estimate_held() {
        let r = Ranked(vec![(rid("q"), 100_000), (rid("h"), 400_000), (rid("f"), 1_200_000)]);
        let start = Instant::now();
        let mut s = Selector::new(90_000);
        s.set_estimate(5_000_000);
        assert_eq!(s.choose(&r, start), Some(rid("f")), "first choice at once");
        s.set_estimate(300_000);
        assert_eq!(s.choose(&r, start + Duration::from_secs(1)), None, "a new connection's dip is not trusted");
        let t0 = start + SETTLE;
        s.set_estimate(5_000_000);
        assert_eq!(s.choose(&r, t0), None, "unchanged");
        s.set_estimate(1_100_000);
        assert_eq!(s.choose(&r, t0), None, "an estimate a little under the layer keeps it");
        s.set_estimate(900_000);
        assert_eq!(s.choose(&r, t0), Some(rid("h")), "down at once when it no longer holds");
        s.set_estimate(300_000);
        assert_eq!(s.choose(&r, t0), Some(rid("q")), "down again");
        s.set_estimate(5_000_000);
        assert_eq!(s.choose(&r, t0 + Duration::from_millis(100)), None, "not up yet");
        assert_eq!(s.choose(&r, t0 + Duration::from_secs(1)), None);
        assert_eq!(s.choose(&r, t0 + Duration::from_millis(2200)), Some(rid("f")), "up after 2 s");
        // A dip resets the wait.
        s.set_estimate(300_000);
        assert_eq!(s.choose(&r, t0 + Duration::from_secs(3)), Some(rid("q")));
        s.set_estimate(5_000_000);
        s.choose(&r, t0 + Duration::from_secs(4));
        s.set_estimate(300_000);
        s.choose(&r, t0 + Duration::from_millis(4500));
        s.set_estimate(5_000_000);
        assert_eq!(s.choose(&r, t0 + Duration::from_millis(5000)), None, "the wait started again");
    }

    #[test]
    fn a_subscriber_starved_below_the_lowest_layer_is_let_go_after_a_while() {
        let r = Ranked(vec![(rid("q"), 100_000), (rid("f"), 1_200_000)]);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let after = Duration::from_secs(10);
        let mut s = Selector::new(90_000);
        assert!(!s.starved_for(&r, true, at(0), after), "no estimate yet (a recorder never has one)");
        s.set_estimate(AUDIO_BPS + 90_000);
        assert!(!s.starved_for(&r, true, at(20), after), "90 % of the lowest layer holds it");
        s.set_estimate(AUDIO_BPS + 50_000);
        assert!(!s.starved_for(&r, true, at(20), after), "starved from now");
        assert!(!s.starved_for(&r, true, at(29), after));
        s.set_estimate(AUDIO_BPS + 100_000);
        assert!(!s.starved_for(&r, true, at(30), after), "it recovered: the wait starts over");
        s.set_estimate(10_000);
        assert!(!s.starved_for(&r, true, at(31), after));
        assert!(
            !s.starved_for(&Ranked::default(), true, at(35), after),
            "no layer (a new publisher): nothing to judge"
        );
        assert!(!s.starved_for(&r, true, at(36), after));
        assert!(!s.starved_for(&r, false, at(40), after), "a low estimate without loss (a busy receiver) starts over");
        assert!(!s.starved_for(&r, true, at(41), after));
        assert!(!s.starved_for(&r, false, at(55), after), "still not losing: never let go");
        assert!(!s.starved_for(&r, true, at(56), after));
        assert!(!s.starved_for(&r, true, at(65), after));
        assert!(s.starved_for(&r, true, at(66), after), "10 s below the lowest layer, losing packets");
    }

    #[test]
    fn without_an_estimate_the_top_layer_at_once() {
        let t0 = Instant::now();
        let mut s = Selector::new(90_000);
        let one = Ranked(vec![(rid("h"), 100_000)]);
        assert_eq!(s.choose(&one, t0), Some(rid("h")), "the only layer seen yet");
        let two = Ranked(vec![(rid("h"), 100_000), (rid("f"), 1_200_000)]);
        assert_eq!(s.choose(&two, t0), Some(rid("f")), "no hold: nothing to smooth");
    }

    #[test]
    fn a_switch_waits_for_a_keyframe_and_keeps_the_timeline_continuous() {
        let r = Ranked(vec![(rid("q"), 100_000), (rid("f"), 1_200_000)]);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = Selector::new(90_000);
        assert_eq!(s.choose(&r, t0), Some(rid("f")));
        assert_eq!(s.accept(rid("f"), false, 1000, at(0)), Accept::Skip, "waits for a keyframe");
        assert_eq!(s.accept(rid("q"), true, 50_000, at(0)), Accept::Skip, "not the target");
        assert_eq!(s.accept(rid("f"), true, 1000, at(0)), Accept::Switch(1000), "first frame as is");
        assert_eq!(s.accept(rid("f"), false, 4000, at(33)), Accept::Send(4000));
        assert_eq!(s.accept(rid("q"), false, 53_000, at(33)), Accept::Skip);
        s.set_estimate(200_000);
        assert_eq!(s.choose(&r, at(40) + SETTLE), Some(rid("q")));
        assert_eq!(s.accept(rid("f"), false, 7000, at(66)), Accept::Send(7000), "the old layer until the switch");
        assert_eq!(s.accept(rid("q"), false, 56_000, at(66)), Accept::Skip, "no keyframe yet");
        // q's keyframe 100 ms after f's last frame: 9 000 ticks later on the subscriber's timeline.
        assert_eq!(s.accept(rid("q"), true, 59_000, at(166)), Accept::Switch(16_000));
        assert_eq!(s.accept(rid("q"), false, 62_000, at(199)), Accept::Send(19_000));
        assert_eq!(s.accept(rid("f"), true, 13_000, at(199)), Accept::Skip, "f no longer sent");
        assert_eq!(s.current(), Some(rid("q")));
    }

    #[test]
    fn keyframe_requests_are_aggregated_per_layer_and_limited() {
        let t0 = Instant::now();
        let every = Duration::from_secs(1);
        let mut k = KeyframeRequests::default();
        assert!(k.due(t0, every).is_empty());
        k.want(rid("f"));
        k.want(rid("f"));
        k.want(rid("q"));
        assert!(k.any_wanted());
        assert_eq!(k.due(t0, every), vec![rid("f"), rid("q")], "one each, however many asked");
        assert!(!k.any_wanted());
        k.want(rid("f"));
        assert!(k.due(t0 + Duration::from_millis(500), every).is_empty(), "not twice within a second");
        assert_eq!(k.due(t0 + Duration::from_secs(1), every), vec![rid("f")], "the wish was kept");
        for i in 0..20 {
            k.want(rid(&format!("x{i}")));
        }
        assert!(k.layers.len() <= MAX_LAYERS + 1, "bounded");
    }

    #[test]
    fn a_new_publisher_connection_continues_the_timeline_from_its_keyframe() {
        let r = Ranked(vec![(None, 500_000)]);
        let t0 = Instant::now();
        let mut s = Selector::new(90_000);
        s.choose(&r, t0);
        assert_eq!(s.accept(None, true, 1000, t0), Accept::Switch(1000));
        s.restart();
        s.choose(&r, t0);
        assert_eq!(s.accept(None, false, 777_000, t0 + Duration::from_secs(1)), Accept::Skip);
        assert_eq!(s.accept(None, true, 780_000, t0 + Duration::from_secs(2)), Accept::Switch(1000 + 180_000));
    }

    #[test]
    fn a_layer_with_a_lower_timestamp_base_still_continues_the_timeline() {
        let r = Ranked(vec![(rid("q"), 100_000), (rid("f"), 1_200_000)]);
        let t0 = Instant::now();
        let mut s = Selector::new(90_000);
        s.choose(&r, t0);
        assert_eq!(s.accept(rid("f"), true, 4_000_000_000, t0), Accept::Switch(4_000_000_000));
        s.set_estimate(1);
        s.choose(&r, t0 + SETTLE);
        let next = 4_000_000_000 + 900;
        assert_eq!(s.accept(rid("q"), true, 5, t0 + Duration::from_millis(10)), Accept::Switch(next));
        assert_eq!(s.accept(rid("q"), false, 3005, t0), Accept::Send(next + 3000));
    }
}
