//! The process-wide Prometheus registry.

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a gRPC call counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `package.Service/Method`.
    pub method: String,
    /// gRPC status name, e.g. `OK`, `NOT_FOUND`.
    pub code: String,
}

/// Labels of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `package.Service/Method`.
    pub method: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Shared handle to the metrics registry; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    grpc_calls: Family<CallLabels, Counter>,
    grpc_latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the `onair_` prefix and the gRPC server metrics registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("onair");
        let grpc_calls = Family::<CallLabels, Counter>::default();
        let grpc_latency: Family<MethodLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register("grpc_server_handled", "gRPC calls completed, by method and status code", grpc_calls.clone());
        registry.register(
            "grpc_server_handling_seconds",
            "gRPC call latency until response headers, by method",
            grpc_latency.clone(),
        );
        Self { registry: Arc::new(Mutex::new(registry)), grpc_calls, grpc_latency }
    }

    /// Registers a service's own metric.
    pub fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry.lock().register(name, help, metric);
    }

    /// Records one finished gRPC call.
    pub fn observe_grpc(&self, method: &str, code: &str, elapsed: Duration) {
        self.grpc_calls.get_or_create(&CallLabels { method: method.to_owned(), code: code.to_owned() }).inc();
        self.grpc_latency.get_or_create(&MethodLabels { method: method.to_owned() }).observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry.lock()).is_err() {
            out.clear();
        }
        out
    }
}
