//! Publish/subscribe between processes. In the cluster the implementation is
//! Redis pub/sub (`onair-redis`); in the all-in-one binary it is [`LocalBus`].
//!
//! Delivery is at most once. When a subscriber may have missed messages (its
//! buffer overflowed, or the connection to Redis was re-established) it receives
//! [`BusItem::Gap`] and must resynchronise from the source of truth.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

/// Messages buffered per channel for a slow subscriber before it sees a gap.
pub const CHANNEL_CAPACITY: usize = 1024;

/// A bus failure.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The backend (Redis) cannot be reached right now.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusItem {
    /// One published payload.
    Message(Bytes),
    /// Messages may have been lost since the previous item.
    Gap,
}

/// Channel-based publish/subscribe.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `payload` to every current subscriber of `channel`.
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BusError>;
    /// Like [`Bus::publish`], and says how many subscribers it reached (`None`: the bus cannot
    /// tell). Zero means nobody listens on `channel` now: its node is gone, or draining.
    async fn publish_counted(&self, channel: &str, payload: Bytes) -> Result<Option<usize>, BusError> {
        self.publish(channel, payload).await.map(|()| None)
    }
    /// Stops listening on `channel` in this process (a draining node: what is published to it
    /// from now on reaches nobody, and its publishers can tell).
    async fn unsubscribe(&self, channel: &str) -> Result<(), BusError> {
        let _ = channel;
        Ok(())
    }
    /// Subscribes to `channel`; messages published after this returns are delivered.
    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError>;
    /// Whether the backend answers (for readiness probes).
    async fn ping(&self) -> Result<(), BusError>;
}

/// A live subscription; dropping it unsubscribes (lazily).
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<BusItem>,
}

impl Subscription {
    /// Wraps a receiver of a channel fan-out (for bus implementations).
    pub fn new(rx: broadcast::Receiver<BusItem>) -> Self {
        Self { rx }
    }

    /// The next item; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<BusItem> {
        match self.rx.recv().await {
            Ok(item) => Some(item),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(BusItem::Gap),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// Per-channel fan-out shared by bus implementations: one broadcast sender per channel.
#[derive(Debug, Default, Clone)]
pub struct FanOut {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<BusItem>>>>,
}

impl FanOut {
    /// Registers a local subscriber; returns the subscription and whether the
    /// channel is new in this process (the backend must then subscribe to it).
    pub fn subscribe(&self, channel: &str) -> (Subscription, bool) {
        let mut map = self.lock();
        if let Some(tx) = map.get(channel).filter(|tx| tx.receiver_count() > 0) {
            return (Subscription::new(tx.subscribe()), false);
        }
        let (tx, rx) = broadcast::channel(CHANNEL_CAPACITY);
        map.insert(channel.to_owned(), tx);
        (Subscription::new(rx), true)
    }

    /// Delivers an item to the local subscribers of `channel`; drops channels nobody listens to.
    /// Returns the number of receivers reached.
    pub fn deliver(&self, channel: &str, item: BusItem) -> usize {
        let mut map = self.lock();
        let Some(tx) = map.get(channel) else { return 0 };
        match tx.send(item) {
            Ok(n) => n,
            Err(_) => {
                map.remove(channel);
                0
            }
        }
    }

    /// Forgets `channel`: its local subscriptions end (their `recv` returns `None`).
    pub fn remove(&self, channel: &str) {
        self.lock().remove(channel);
    }

    /// Sends a gap marker on every channel (after a backend reconnect).
    pub fn gap_all(&self) {
        let map = self.lock();
        for tx in map.values() {
            let _ = tx.send(BusItem::Gap);
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, broadcast::Sender<BusItem>>> {
        self.channels.lock()
    }
}

/// The in-process bus of the all-in-one binary.
#[derive(Debug, Default, Clone)]
pub struct LocalBus {
    fan: FanOut,
}

impl LocalBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BusError> {
        self.fan.deliver(channel, BusItem::Message(payload));
        Ok(())
    }

    async fn publish_counted(&self, channel: &str, payload: Bytes) -> Result<Option<usize>, BusError> {
        Ok(Some(self.fan.deliver(channel, BusItem::Message(payload))))
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        Ok(self.fan.subscribe(channel).0)
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BusError> {
        self.fan.remove(channel);
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_in_order_to_every_subscriber() {
        let bus = LocalBus::new();
        let mut a = bus.subscribe("c").await.unwrap();
        let mut b = bus.subscribe("c").await.unwrap();
        let mut other = bus.subscribe("d").await.unwrap();
        for i in 0..3u8 {
            bus.publish("c", Bytes::from(vec![i])).await.unwrap();
        }
        for sub in [&mut a, &mut b] {
            for i in 0..3u8 {
                assert_eq!(sub.recv().await, Some(BusItem::Message(Bytes::from(vec![i]))));
            }
        }
        bus.publish("d", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(other.recv().await, Some(BusItem::Message(Bytes::from_static(b"x"))));
    }

    #[tokio::test]
    async fn slow_subscriber_sees_a_gap() {
        let bus = LocalBus::new();
        let mut sub = bus.subscribe("c").await.unwrap();
        for _ in 0..CHANNEL_CAPACITY + 5 {
            bus.publish("c", Bytes::from_static(b"m")).await.unwrap();
        }
        assert_eq!(sub.recv().await, Some(BusItem::Gap));
    }
}
