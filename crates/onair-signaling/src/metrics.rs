//! Signaling metrics: node messages handled by action, how long each took, refusals by code.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// The kind of node message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `signal`, `watch`, `publish`, ...
    pub action: &'static str,
}

/// The error code of a refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// The stable error code (`forbidden`, `not_found`, `unavailable`, ...).
    pub code: &'static str,
}

fn handling_histogram() -> Histogram {
    // 20 µs .. ~0.65 s
    Histogram::new(exponential_buckets(0.000_02, 2.0, 16))
}

/// Signaling metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct SignalingMetrics {
    /// Node messages handled, by action.
    pub messages: Family<ActionLabels, Counter>,
    /// Time to handle one node message (directory, registry, deliveries), by action.
    pub handling: Family<ActionLabels, Histogram, fn() -> Histogram>,
    /// Messages refused (an error event back to the node), by code.
    pub refused: Family<CodeLabels, Counter>,
}

impl Default for SignalingMetrics {
    fn default() -> Self {
        Self {
            messages: Family::default(),
            handling: Family::new_with_constructor(handling_histogram),
            refused: Family::default(),
        }
    }
}

impl SignalingMetrics {
    /// Registers into `m`.
    pub fn register(&self, m: &onair_ops::Metrics) {
        m.register("signaling_messages", "Node messages handled, by action", self.messages.clone());
        m.register(
            "signaling_handling_seconds",
            "Time to handle one node message (directory, registry, deliveries), by action",
            self.handling.clone(),
        );
        m.register("signaling_refused", "Node messages refused with an error event, by code", self.refused.clone());
    }
}
