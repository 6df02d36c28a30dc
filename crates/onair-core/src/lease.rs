//! Leases: a key held by one holder at a time, for a time-to-live the holder keeps renewing.
//! Recorders claim the streams they record with one (`reclease:{stream}`), so that of several
//! replicas exactly one records each stream, and a replica that dies lets go by itself when its
//! leases expire. In the cluster they live in Redis (`onair-redis`), in one process in
//! [`MemoryLeases`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::directory::DirectoryError;

/// Time-limited exclusive claims on keys. Errors are the backend's (it shares the directory's).
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// Takes `key` for `holder` for `ttl` if it is free, has expired or is `holder`'s already (which
    /// renews it); whether `holder` holds it now.
    async fn claim(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, DirectoryError>;
    /// Who holds `key` now.
    async fn holder(&self, key: &str) -> Result<Option<String>, DirectoryError>;
    /// Gives `key` up, if `holder` holds it.
    async fn release(&self, key: &str, holder: &str) -> Result<(), DirectoryError>;
}

/// The in-process leases of the all-in-one binary.
#[derive(Debug, Default)]
pub struct MemoryLeases {
    held: Mutex<HashMap<String, (String, Instant)>>,
}

impl MemoryLeases {
    /// No lease held.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Leases for MemoryLeases {
    async fn claim(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, DirectoryError> {
        let now = Instant::now();
        let mut held = self.held.lock();
        match held.get(key) {
            Some((h, until)) if h != holder && *until > now => Ok(false),
            _ => {
                held.insert(key.to_owned(), (holder.to_owned(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn holder(&self, key: &str) -> Result<Option<String>, DirectoryError> {
        let held = self.held.lock();
        Ok(held.get(key).filter(|(_, until)| *until > Instant::now()).map(|(h, _)| h.clone()))
    }

    async fn release(&self, key: &str, holder: &str) -> Result<(), DirectoryError> {
        let mut held = self.held.lock();
        if held.get(key).is_some_and(|(h, _)| h == holder) {
            held.remove(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_until_release_or_expiry() {
        let l = MemoryLeases::new();
        let ttl = Duration::from_millis(50);
        assert!(l.claim("k", "a", ttl).await.unwrap());
        assert!(!l.claim("k", "b", ttl).await.unwrap(), "held by a");
        assert!(l.claim("k", "a", ttl).await.unwrap(), "a renews");
        assert_eq!(l.holder("k").await.unwrap().as_deref(), Some("a"));
        l.release("k", "b").await.unwrap();
        assert_eq!(l.holder("k").await.unwrap().as_deref(), Some("a"), "only the holder releases");
        l.release("k", "a").await.unwrap();
        assert!(l.claim("k", "b", ttl).await.unwrap(), "free after release");
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(l.holder("k").await.unwrap(), None, "expired");
        assert!(l.claim("k", "a", ttl).await.unwrap(), "free after expiry");
    }
}
