//! The change feed: every registry replica publishes stream changes to one bus
//! channel and every `WatchStreams` call follows it. See ARCHITECTURE.md for
//! why the feed rides on Redis pub/sub rather than a MongoDB change stream.

use std::sync::Arc;

use bytes::Bytes;
use onair_core::{Bus, StreamEvent};

/// The bus channel carrying JSON-encoded [`StreamEvent`]s.
pub const CHANNEL: &str = "onair:streams";

/// Publishes a change; failures are logged (watchers resynchronise on the next gap).
pub async fn publish(bus: &Arc<dyn Bus>, event: &StreamEvent) {
    let payload = match serde_json::to_vec(event) {
        Ok(p) => Bytes::from(p),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode stream event");
            return;
        }
    };
    if let Err(e) = bus.publish(CHANNEL, payload).await {
        tracing::warn!(error = %e, stream_id = %event.stream().id, "change not published");
    }
}

/// Decodes a payload from the channel.
pub fn decode(payload: &[u8]) -> Option<StreamEvent> {
    serde_json::from_slice(payload).map_err(|e| tracing::warn!(error = %e, "ignoring undecodable stream event")).ok()
}
