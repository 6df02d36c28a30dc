//! Trace context across onair's own hops: W3C `traceparent` strings carried in `NodeMessage` and
//! `Delivery`, so that a flow such as `watch` is one trace from the watcher's gateway through
//! signaling to the broadcaster's gateway. Without an OTLP exporter spans carry no context and
//! every helper here is a no-op that yields `""`.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const KEY: &str = "traceparent";

/// The `traceparent` of `span`; `""` when it is not traced.
pub fn traceparent(span: &tracing::Span) -> String {
    if span.is_none() {
        return String::new();
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(KEY).unwrap_or_default()
}

/// Makes `span` continue the trace `traceparent` names; nothing when it is empty or malformed.
pub fn follow(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() || span.is_none() {
        return;
    }
    let carrier = HashMap::from([(KEY.to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untraced_spans_carry_nothing() {
        assert_eq!(traceparent(&tracing::Span::none()), "");
        // No subscriber with an OpenTelemetry layer: nothing to continue, and no panic on junk.
        let span = tracing::info_span!("x");
        follow(&span, "not a traceparent");
        follow(&span, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert_eq!(traceparent(&span), "");
    }
}
