//! [`Bus`] over Redis pub/sub: one pipelined client for `PUBLISH`, one
//! subscriber connection per process whose messages fan out to local
//! subscribers. After a reconnect the subscriber re-subscribes and every local
//! subscription receives [`BusItem::Gap`].

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Value;
use onair_core::bus::FanOut;
use onair_core::{Bus, BusError, BusItem, Subscription};

use crate::connect::{build_client, builder, unavailable};

/// Pub/sub messages the subscriber connection buffers for the dispatch task: half a second of a
/// gateway's deliveries at the bench's highest load (8 000/s each), far more than the dispatch task
/// falls behind. fred sizes all nine of its event channels with it and tokio allocates their slots
/// up front (16 384 cost every process 9 MiB of its ~27 MiB idle; 4 096 cost 2.3 MiB).
pub const SUBSCRIBER_BUFFER: usize = 4 * 1024;

/// Redis-backed bus.
#[derive(Clone)]
pub struct RedisBus {
    client: Client,
    subscriber: SubscriberClient,
    fan: FanOut,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus").finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379`). Keeps reconnecting forever in the background
    /// if Redis goes away; does not fail when Redis is down at start-up.
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        let client = build_client(url)?;
        // fred hands pub/sub messages to us through a broadcast channel of 32 by default: under a
        // few thousand deliveries a second the dispatch task fell behind and whole bursts were lost
        // (a gap). Room for bursts of this many messages (tokio allocates the slots up front).
        let subscriber = builder(url)?
            .with_performance_config(|p| p.broadcast_channel_capacity = SUBSCRIBER_BUFFER)
            .build_subscriber_client()
            .map_err(unavailable)?;
        let fan = FanOut::default();

        // Dispatch every message to local subscribers.
        let mut messages = subscriber.message_rx();
        let dispatch = fan.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(msg) => {
                        let payload = match msg.value {
                            Value::Bytes(b) => b,
                            Value::String(s) => s.into_inner(),
                            other => match other.as_bytes() {
                                Some(b) => Bytes::copy_from_slice(b),
                                None => continue,
                            },
                        };
                        dispatch.deliver(&msg.channel, BusItem::Message(payload));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "redis subscriber lagged");
                        dispatch.gap_all();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        // After a reconnect, messages published meanwhile are lost: tell subscribers.
        let mut reconnects = subscriber.reconnect_rx();
        let gaps = fan.clone();
        tokio::spawn(async move {
            while reconnects.recv().await.is_ok() {
                tracing::info!("redis subscriber reconnected");
                gaps.gap_all();
            }
        });
        subscriber.manage_subscriptions();
        client.init().await.map_err(unavailable)?;
        subscriber.init().await.map_err(unavailable)?;
        Ok(Self { client, subscriber, fan })
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BusError> {
        let _: i64 = self.client.publish(channel, payload).await.map_err(unavailable)?;
        Ok(())
    }

    async fn publish_counted(&self, channel: &str, payload: Bytes) -> Result<Option<usize>, BusError> {
        // PUBLISH answers how many subscriptions received it (standalone Redis: all of them).
        let n: i64 = self.client.publish(channel, payload).await.map_err(unavailable)?;
        Ok(Some(usize::try_from(n).unwrap_or(0)))
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BusError> {
        self.fan.remove(channel);
        self.subscriber.unsubscribe(channel).await.map_err(unavailable)
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        let (sub, new) = self.fan.subscribe(channel);
        if new {
            self.subscriber.subscribe(channel).await.map_err(unavailable)?;
        }
        Ok(sub)
    }

    async fn ping(&self) -> Result<(), BusError> {
        let _: String = self.client.ping(None).await.map_err(unavailable)?;
        Ok(())
    }
}
