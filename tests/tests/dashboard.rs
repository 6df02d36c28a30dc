//! The Grafana dashboard the chart ships (helm/onair/files/grafana-dashboard.json) queries only
//! metrics onair exposes: every metric name in every panel's expression is in the `/metrics` of the
//! all-in-one (which runs gateway, signaling, registry, recorder and relay), with the right type.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use onair_tests::Onair;

/// The `onair_…` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("onair_") {
        let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[i + name.len()..];
        out.push(name);
    }
    out
}

/// A sample name's family and the type it implies (`_total` counter, `_bucket`/`_sum`/`_count` histogram).
fn family(sample: &str) -> (&str, Option<&'static str>) {
    if let Some(f) = sample.strip_suffix("_total") {
        return (f, Some("counter"));
    }
    for s in ["_bucket", "_sum", "_count"] {
        if let Some(f) = sample.strip_suffix(s) {
            return (f, Some("histogram"));
        }
    }
    (sample, None)
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exposed() {
    let path = onair_tests::cluster::repo_root().join("helm/onair/files/grafana-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let mut queried = BTreeSet::new();
    for p in panels {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
        assert!(!targets.is_empty(), "panel {} queries nothing", p["title"]);
        for t in targets {
            let names = metric_names(t["expr"].as_str().unwrap());
            assert!(!names.is_empty(), "panel {}: {} names no onair metric", p["title"], t["expr"]);
            queried.extend(names);
        }
    }
    for wanted in [
        "Live streams",
        "Viewers",
        "Signaling messages",
        "Signaling handling time",
        "Recordings",
        "Relay egress",
        "Errors by code",
    ] {
        assert!(panels.iter().any(|p| p["title"].as_str().unwrap().starts_with(wanted)), "no panel {wanted:?}");
    }

    let dir = std::env::temp_dir().join(format!("onair-dashboard-{}", std::process::id()));
    let aio = Onair::start("dashboard", &["--store", "memory", "--data-dir", dir.to_str().unwrap()]).await;
    aio.wait_ready().await;
    // Labelled families show in /metrics once they have a sample: a refused watch gives signaling's
    // refusals one (its messages and handling times have theirs from the node's hello and attach).
    let mut ws = onair_tests::ws::Ws::connect(aio.http).await;
    ws.send(serde_json::json!({"type": "watch", "stream_id": "no-such-stream"})).await;
    ws.expect("error").await;
    let (status, body) = aio.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let types: BTreeMap<&str, &str> =
        body.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_once(' ')).collect();
    for name in &queried {
        let (fam, implied) = family(name);
        let ty = types.get(fam).unwrap_or_else(|| panic!("the dashboard queries {name}, which /metrics does not have"));
        assert!(implied.is_none_or(|t| t == *ty), "{name}: /metrics has {fam} as a {ty}");
        if implied.is_none() {
            assert_eq!(*ty, "gauge", "{name} is queried as a gauge but is a {ty}");
        }
    }
    println!("{} panels, {} metrics queried, all exposed", panels.len(), queried.len());
    let _ = std::fs::remove_dir_all(&dir);
}
