//! TURN metrics (`onair_turn_*` in `/metrics`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// TURN server metrics.
#[derive(Debug, Clone, Default)]
pub struct TurnMetrics {
    /// Allocations alive now.
    pub allocations: Gauge,
    /// Allocations created.
    pub allocations_created: Counter,
    /// Payload bytes relayed from clients to peers.
    pub bytes_to_peers: Counter,
    /// Payload bytes relayed from peers to clients.
    pub bytes_to_clients: Counter,
    /// Requests refused for missing, wrong or expired credentials.
    pub auth_failures: Counter,
    /// Permissions or channels refused by the peer policy.
    pub peers_refused: Counter,
    /// Allocations refused by the per-user quota or for want of relay ports.
    pub quota_refusals: Counter,
    /// Packets dropped by the bandwidth cap.
    pub packets_over_bandwidth: Counter,
}

impl TurnMetrics {
    /// Registers into `m`.
    pub fn register(&self, m: &onair_ops::Metrics) {
        m.register("turn_allocations", "TURN allocations alive", self.allocations.clone());
        m.register("turn_allocations_created", "TURN allocations created", self.allocations_created.clone());
        m.register(
            "turn_relayed_bytes_to_peers",
            "Payload bytes relayed from clients to peers",
            self.bytes_to_peers.clone(),
        );
        m.register(
            "turn_relayed_bytes_to_clients",
            "Payload bytes relayed from peers to clients",
            self.bytes_to_clients.clone(),
        );
        m.register(
            "turn_auth_failures",
            "TURN requests refused: missing, wrong or expired credentials",
            self.auth_failures.clone(),
        );
        m.register("turn_peers_refused", "Permissions refused by the peer address policy", self.peers_refused.clone());
        m.register(
            "turn_quota_refusals",
            "Allocations refused: user quota reached or no relay port",
            self.quota_refusals.clone(),
        );
        m.register(
            "turn_packets_over_bandwidth",
            "Relayed packets dropped by the per-allocation bandwidth cap",
            self.packets_over_bandwidth.clone(),
        );
    }
}
