//! Relay metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Packets waiting in one subscriber's send queues (1, 2, 4 … 2 048).
#[derive(Debug, Clone)]
pub struct QueueDepth(pub Histogram);

impl Default for QueueDepth {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(1.0, 2.0, 12)))
    }
}

/// Relay metrics.
#[derive(Debug, Clone, Default)]
pub struct RelayMetrics {
    /// Streams relayed now.
    pub streams: Gauge,
    /// Subscribers forwarded to now.
    pub subscribers: Gauge,
    /// Media frames received from broadcasters.
    pub frames_in: Counter,
    /// Media frames written to subscribers.
    pub frames_out: Counter,
    /// UDP datagrams received.
    pub datagrams_in: Counter,
    /// UDP datagrams sent.
    pub datagrams_out: Counter,
    /// Bytes sent.
    pub bytes_out: Counter,
    /// Sends that carried datagrams: UDP system calls (one may carry several), ICE-TCP frames.
    pub send_calls: Counter,
    /// Datagrams dropped on arrival: unparsable, or from an address and ufrag no peer knows.
    pub dropped_in: Counter,
    /// Datagrams not sent because the socket's buffer was full.
    pub dropped_out: Counter,
    /// Keyframe requests sent to broadcasters.
    pub keyframe_requests: Counter,
    /// Subscribers moved to another video layer (simulcast), or to a new publisher connection.
    pub layer_switches: Counter,
    /// NACKs (packets asked again) received from subscribers; str0m resends from its buffer.
    pub nacks_received: Counter,
    /// NACKs sent to broadcasters for packets lost on their uplink.
    pub nacks_sent: Counter,
    /// Subscribers refused because the relay was at --relay-max-subscribers.
    pub refused_full: Counter,
    /// Subscribers dropped after their media connection was silent for --relay-drop-silent-after.
    pub silent_dropped: Counter,
    /// Subscribers let go: their bandwidth estimate stayed below the lowest simulcast layer for
    /// --relay-drop-slow-after.
    pub slow_dropped: Counter,
    /// Every subscriber's send-queue depth, observed every 2 s.
    pub subscriber_queue: QueueDepth,
    /// The deepest subscriber send queue at the last observation, packets.
    pub subscriber_queue_max: Gauge,
}

impl RelayMetrics {
    /// Registers into `m`.
    pub fn register(&self, m: &onair_ops::Metrics) {
        m.register("relay_streams", "Streams relayed now", self.streams.clone());
        m.register("relay_subscribers", "Subscribers (watchers, recorders) forwarded to now", self.subscribers.clone());
        m.register("relay_frames_in", "Media frames received from broadcasters", self.frames_in.clone());
        m.register("relay_frames_out", "Media frames written to subscribers", self.frames_out.clone());
        m.register("relay_datagrams_in", "UDP datagrams received", self.datagrams_in.clone());
        m.register("relay_datagrams_out", "UDP datagrams sent", self.datagrams_out.clone());
        m.register("relay_bytes_out", "Bytes sent", self.bytes_out.clone());
        m.register(
            "relay_send_calls",
            "Sends that carried datagrams: UDP system calls (one may carry several), ICE-TCP frames",
            self.send_calls.clone(),
        );
        m.register(
            "relay_dropped_in",
            "Datagrams dropped on arrival (unparsable, or no peer has their address or ufrag)",
            self.dropped_in.clone(),
        );
        m.register("relay_dropped_out", "Datagrams not sent: socket buffer full", self.dropped_out.clone());
        m.register("relay_keyframe_requests", "Keyframe requests sent to broadcasters", self.keyframe_requests.clone());
        m.register(
            "relay_layer_switches",
            "Subscribers moved to another video layer (simulcast, by bandwidth) or publisher connection",
            self.layer_switches.clone(),
        );
        m.register(
            "relay_nacks_received",
            "NACKs (packets asked again) received from subscribers, answered from the send buffer",
            self.nacks_received.clone(),
        );
        m.register(
            "relay_nacks_sent",
            "NACKs sent to broadcasters for packets lost on their uplink",
            self.nacks_sent.clone(),
        );
        m.register(
            "relay_refused_full",
            "Subscribers refused: the relay was at --relay-max-subscribers",
            self.refused_full.clone(),
        );
        m.register(
            "relay_silent_dropped",
            "Subscribers dropped: their media connection was silent for --relay-drop-silent-after",
            self.silent_dropped.clone(),
        );
        m.register(
            "relay_slow_dropped",
            "Subscribers let go (error too_slow): their bandwidth estimate stayed below the lowest layer for --relay-drop-slow-after",
            self.slow_dropped.clone(),
        );
        m.register(
            "relay_subscriber_queue_packets",
            "Packets waiting in a subscriber's send queues (paced to its bandwidth estimate), per subscriber every 2 s",
            self.subscriber_queue.0.clone(),
        );
        m.register(
            "relay_subscriber_queue_max",
            "The deepest subscriber send queue at the last observation, packets",
            self.subscriber_queue_max.clone(),
        );
    }
}
