//! Traces you can follow: a cluster exporting to a real OTLP/gRPC receiver (tests/src/otlp.rs). A
//! `watch` on one gateway is one trace through signaling to the broadcaster's gateway, with the
//! peer and stream ids as attributes, and no signaling payload (SDP, candidates) in any span.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use onair_tests::cluster::Cluster;
use onair_tests::otlp::{Receiver, Span};
use onair_tests::wait_until;
use onair_tests::ws::Ws;
use serde_json::json;

#[tokio::test]
async fn a_watch_is_one_trace_from_the_watchers_gateway_through_signaling_to_the_broadcasters() {
    let otlp = Receiver::start().await;
    let c = Cluster::start_all_with(2, false, false, None, &[], &["--otlp-endpoint", &otlp.endpoint]).await;
    let mut b = Ws::connect(c.gateways[0].http).await;
    let mut w = Ws::connect(c.gateways[1].http).await;
    let sid = b.publish("Traced").await["id"].as_str().unwrap().to_owned();
    w.send(json!({"type": "watch", "stream_id": sid})).await;
    b.expect("watcher_joined").await;
    // Signaling traffic of the pair, which must not show up in any span.
    let offer = json!({"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=secret-sdp-marker\r\n"});
    b.send(json!({"type": "signal", "to": w.peer_id, "kind": "offer", "payload": offer})).await;
    w.expect("signal").await;

    let (bp, wp) = (b.peer_id.clone(), w.peer_id.clone());
    let trace_of = |spans: &[Span]| -> Option<Vec<Span>> {
        let watch = spans.iter().find(|s| s.name == "gateway.watch" && s.attr("peer") == Some(wp.as_str()))?;
        let trace: Vec<Span> = spans.iter().filter(|s| s.trace_id == watch.trace_id).cloned().collect();
        let joined = trace.iter().any(|s| {
            s.name == "gateway.deliver"
                && s.attr("event") == Some("watcher_joined")
                && s.attr("peer") == Some(bp.as_str())
        });
        (trace.iter().any(|s| s.name == "signaling.handle") && joined).then_some(trace)
    };
    wait_until(Duration::from_secs(15), "the watch's spans from both gateways and signaling", || {
        let spans = otlp.spans();
        std::future::ready(trace_of(&spans).is_some())
    })
    .await;
    let all = otlp.spans();
    let trace = trace_of(&all).unwrap();
    for s in &trace {
        println!("{} {} {} ← {} {:?}", s.service, s.name, s.span_id, s.parent_id, s.attributes);
    }
    let by_name = |n: &str| trace.iter().find(|s| s.name == n).unwrap();
    let (watch, handle, deliver) = (by_name("gateway.watch"), by_name("signaling.handle"), by_name("gateway.deliver"));
    assert_eq!(watch.service, "onair-gateway");
    assert_eq!(handle.service, "onair-signaling");
    assert_eq!(deliver.service, "onair-gateway");
    assert_eq!(watch.attr("stream"), Some(sid.as_str()));
    assert_eq!((handle.attr("action"), handle.attr("stream")), (Some("watch"), Some(sid.as_str())));
    // One chain: the watch is signaling's parent, signaling's span the delivery's.
    assert!(watch.parent_id.is_empty(), "the watch starts the trace: {watch:?}");
    assert_eq!(handle.parent_id, watch.span_id);
    assert_eq!(deliver.parent_id, handle.span_id);
    // Nothing of the payloads anywhere (plain signals are not traced at all).
    for s in &all {
        for (k, v) in &s.attributes {
            assert!(!v.contains("secret-sdp-marker") && !v.contains("v=0"), "span {} attribute {k} = {v}", s.name);
        }
    }
}
