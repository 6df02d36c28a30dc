//! Coalescing of list changes (`stream_on`/`stream_off`) per socket: the first change after a
//! quiet spell goes out at once; changes within [`LIST_WINDOW`] after it are held and sent together
//! as one `batch` frame at the window's end (and the window stays open while changes keep coming).
//! A burst of N streams going live costs each socket a frame per window instead of N, so setting
//! up N pairs is no longer N² frames; a lone change waits for nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// How long after a sent change the next ones are held.
pub const LIST_WINDOW: Duration = Duration::from_millis(100);
/// Most changes held; beyond, the `streams` snapshot replaces them (it says it all).
pub const BATCH_MAX: usize = 256;

/// One socket's held changes and its window.
#[derive(Debug, Default)]
pub struct Coalescer {
    held: Vec<Arc<str>>,
    window: Option<Instant>,
    /// Too many held: the next tick sends the snapshot instead.
    overflowed: bool,
}

impl Coalescer {
    /// A change at `now`: the frame to send now, if any.
    pub fn change(&mut self, frame: Arc<str>, now: Instant) -> Option<String> {
        if self.window.is_none() {
            self.window = Some(now + LIST_WINDOW);
            return Some(frame.to_string());
        }
        if self.held.len() < BATCH_MAX {
            self.held.push(frame);
        } else {
            self.overflowed = true;
        }
        None
    }

    /// The list was resynced with a snapshot sent now (`frame`): what was held is superseded.
    pub fn resync(&mut self, frame: String, now: Instant) -> String {
        self.held.clear();
        self.overflowed = false;
        self.window = Some(now + LIST_WINDOW);
        frame
    }

    /// Whether changes overflowed the batch (the caller sends the snapshot at the tick instead).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// When the window ends, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.window
    }

    /// The window ended at `now`: the batch to send (a lone held change as itself), or nothing and
    /// the window closes.
    pub fn tick(&mut self, now: Instant) -> Option<String> {
        if self.held.is_empty() {
            self.window = None;
            return None;
        }
        self.window = Some(now + LIST_WINDOW);
        let frames = std::mem::take(&mut self.held);
        Some(if frames.len() == 1 { frames[0].to_string() } else { batch(&frames) })
    }
}

/// One `batch` frame carrying already serialized frames, in order.
pub fn batch(frames: &[Arc<str>]) -> String {
    let mut out = String::with_capacity(frames.iter().map(|f| f.len() + 1).sum::<usize>() + 32);
    out.push_str(r#"{"type":"batch","frames":["#);
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(f);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(id: &str) -> Arc<str> {
        format!(r#"{{"type":"stream_on","stream":{{"id":"{id}"}}}}"#).into()
    }

    #[test]
    fn a_lone_change_goes_at_once_and_a_burst_goes_as_one_batch() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        assert_eq!(c.change(on("a"), t0).as_deref(), Some(r#"{"type":"stream_on","stream":{"id":"a"}}"#));
        assert_eq!(c.deadline(), Some(t0 + LIST_WINDOW));
        assert_eq!(c.change(on("b"), t0 + Duration::from_millis(10)), None);
        assert_eq!(c.change(on("c"), t0 + Duration::from_millis(20)), None);
        let sent: serde_json::Value = serde_json::from_str(&c.tick(t0 + LIST_WINDOW).unwrap()).unwrap();
        assert_eq!(sent["type"], "batch");
        assert_eq!(sent["frames"][0]["stream"]["id"], "b");
        assert_eq!(sent["frames"][1]["stream"]["id"], "c");
        // The window stays open after a batch; a quiet one closes it, and the next change is sent at once.
        assert_eq!(c.deadline(), Some(t0 + LIST_WINDOW * 2));
        assert_eq!(c.tick(t0 + LIST_WINDOW * 2), None);
        assert_eq!(c.deadline(), None);
        assert!(c.change(on("d"), t0 + LIST_WINDOW * 3).is_some());
    }

    #[test]
    fn one_held_change_is_sent_as_itself_and_an_overflow_asks_for_the_snapshot() {
        let t0 = Instant::now();
        let mut c = Coalescer::default();
        c.change(on("a"), t0);
        c.change(on("b"), t0);
        assert_eq!(c.tick(t0 + LIST_WINDOW).as_deref(), Some(&*on("b")));
        for i in 0..=BATCH_MAX {
            c.change(on(&i.to_string()), t0 + LIST_WINDOW);
        }
        assert!(c.overflowed());
        assert_eq!(c.resync("snapshot".into(), t0 + LIST_WINDOW * 2), "snapshot");
        assert!(!c.overflowed());
        assert_eq!(c.tick(t0 + LIST_WINDOW * 3), None, "what was held is superseded");
    }
}
