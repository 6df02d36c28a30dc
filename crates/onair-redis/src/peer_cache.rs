//! Peer records cached in the signaling process, kept exact by Redis itself: the directory's
//! connection speaks RESP3 with `CLIENT TRACKING ON`, so Redis remembers which keys it read and
//! pushes an invalidation on that connection when any client (any signaling replica) changes or
//! expires one. Signaling reads two peer records per relayed message; with the cache, a message
//! costs Redis one `PUBLISH` instead of two `HGETALL`s as well.
//!
//! A read that misses takes a ticket before it asks Redis and stores its answer only if the
//! ticket is still there: an invalidation (or a reset) that lands while the read is in flight
//! removes the ticket, so an answer older than a change is never kept. The directory's own
//! writes invalidate their key locally as soon as they complete, so a replica always reads its
//! own writes; other replicas' writes reach it with the invalidation push (sub-millisecond on a
//! LAN). Whenever invalidations may have been missed — a reconnect (tracking is per connection),
//! a lagging invalidation channel, a flush — the whole cache is dropped, and caching stays off
//! until tracking is on again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use onair_core::PeerRecord;
use parking_lot::Mutex;

/// Entries kept at most; past it the cache starts over (one miss per peer).
pub const MAX_ENTRIES: usize = 200_000;

#[derive(Debug)]
enum Slot {
    /// A read is in flight with this ticket.
    Pending(u64),
    Ready(PeerRecord),
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Slot>,
    next_ticket: u64,
    enabled: bool,
}

/// A read's claim on a key's slot (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// The cache of peer records by Redis key.
#[derive(Debug, Default)]
pub struct PeerCache {
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl PeerCache {
    /// An empty, disabled cache (nothing is stored until [`PeerCache::reset`] enables it).
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached record of `key`, if any.
    pub fn get(&self, key: &str) -> Option<PeerRecord> {
        let found = match self.inner.lock().entries.get(key) {
            Some(Slot::Ready(r)) => Some(r.clone()),
            _ => None,
        };
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Claims `key` for a read about to be sent; `None` while caching is off.
    pub fn begin(&self, key: &str) -> Option<Ticket> {
        let mut inner = self.inner.lock();
        if !inner.enabled {
            return None;
        }
        if inner.entries.len() >= MAX_ENTRIES && !inner.entries.contains_key(key) {
            inner.entries.clear();
        }
        inner.next_ticket += 1;
        let ticket = inner.next_ticket;
        inner.entries.insert(key.to_owned(), Slot::Pending(ticket));
        Some(Ticket(ticket))
    }

    /// Stores what the read of `ticket` found, if nothing invalidated the key meanwhile (a peer
    /// Redis does not know is not stored: its creation is rare on the hot path).
    pub fn fill(&self, key: &str, ticket: Ticket, record: Option<&PeerRecord>) {
        let mut inner = self.inner.lock();
        if let Some(slot) = inner.entries.get_mut(key)
            && matches!(slot, Slot::Pending(t) if *t == ticket.0)
        {
            match record {
                Some(r) => *slot = Slot::Ready(r.clone()),
                None => {
                    inner.entries.remove(key);
                }
            }
        }
    }

    /// Forgets `key` (it changed, or is about to).
    pub fn invalidate(&self, key: &str) {
        self.inner.lock().entries.remove(key);
    }

    /// Forgets everything, and turns caching on or off.
    pub fn reset(&self, enabled: bool) {
        let mut inner = self.inner.lock();
        inner.entries.clear();
        inner.enabled = enabled;
    }

    /// Whether records are being cached now.
    pub fn enabled(&self) -> bool {
        self.inner.lock().enabled
    }

    /// Reads answered from the cache, and reads that went to Redis, since start.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node: &str) -> PeerRecord {
        PeerRecord {
            node: node.parse().unwrap_or_else(|_| unreachable!("a valid node id")),
            token: "t".into(),
            broadcasting: None,
            watching: None,
            relaying: None,
        }
    }

    fn enabled() -> PeerCache {
        let c = PeerCache::new();
        c.reset(true);
        c
    }

    #[test]
    fn a_read_is_kept_until_its_key_is_invalidated() {
        let c = enabled();
        assert_eq!(c.get("k"), None);
        let t = c.begin("k").unwrap_or_else(|| unreachable!("enabled"));
        assert_eq!(c.get("k"), None, "a pending read is not an answer");
        c.fill("k", t, Some(&record("gw-a")));
        assert_eq!(c.get("k"), Some(record("gw-a")));
        c.invalidate("k");
        assert_eq!(c.get("k"), None);
        assert_eq!(c.hits_and_misses(), (1, 3));
    }

    #[test]
    fn an_answer_older_than_an_invalidation_is_not_kept() {
        let c = enabled();
        let t = c.begin("k").unwrap_or_else(|| unreachable!("enabled"));
        c.invalidate("k"); // the key changed while the read was in flight
        c.fill("k", t, Some(&record("old")));
        assert_eq!(c.get("k"), None);
        // Two reads in flight: only the later one's answer may land.
        let first = c.begin("k").unwrap_or_else(|| unreachable!("enabled"));
        let second = c.begin("k").unwrap_or_else(|| unreachable!("enabled"));
        c.fill("k", first, Some(&record("first")));
        assert_eq!(c.get("k"), None);
        c.fill("k", second, Some(&record("second")));
        assert_eq!(c.get("k"), Some(record("second")));
    }

    #[test]
    fn a_reset_drops_everything_and_off_means_nothing_is_stored() {
        let c = enabled();
        let t = c.begin("a").unwrap_or_else(|| unreachable!("enabled"));
        c.fill("a", t, Some(&record("x")));
        let in_flight = c.begin("b").unwrap_or_else(|| unreachable!("enabled"));
        c.reset(false);
        assert_eq!(c.get("a"), None);
        assert!(c.begin("c").is_none(), "no tickets while tracking is off");
        c.reset(true);
        c.fill("b", in_flight, Some(&record("x")));
        assert_eq!(c.get("b"), None, "a read from before the reset is not kept");
    }

    #[test]
    fn unknown_peers_are_not_cached_and_the_size_is_bounded() {
        let c = enabled();
        let t = c.begin("gone").unwrap_or_else(|| unreachable!("enabled"));
        c.fill("gone", t, None);
        assert_eq!(c.get("gone"), None);
        assert!(c.inner.lock().entries.is_empty());
        for i in 0..MAX_ENTRIES + 5 {
            let key = format!("k{i}");
            let t = c.begin(&key).unwrap_or_else(|| unreachable!("enabled"));
            c.fill(&key, t, Some(&record("n")));
        }
        assert!(c.inner.lock().entries.len() <= MAX_ENTRIES);
    }
}
