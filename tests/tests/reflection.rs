//! gRPC reflection tells the truth per port: every gRPC listener lists exactly the
//! services it serves (plus health and reflection), in the all-in-one and in a cluster.
#![allow(clippy::unwrap_used)]

use onair_tests::Onair;
use onair_tests::cluster::Cluster;

const STANDARD: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// The services reflection lists on `port`, sorted.
async fn listed(port: u16) -> Vec<String> {
    let python = onair_tests::tools_dir().join("venv/bin/python");
    let script = onair_tests::tests_dir().join("reflection_client.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(format!("127.0.0.1:{port}"))
        .arg("--list")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "reflection on {port} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find_map(|l| l.strip_prefix("services:")).unwrap_or_else(|| panic!("{stdout}"));
    line.split_whitespace().map(str::to_owned).collect()
}

fn expected(service: &str) -> Vec<String> {
    let mut v: Vec<String> = STANDARD.iter().map(|s| (*s).to_owned()).collect();
    v.push(service.to_owned());
    v.sort();
    v
}

async fn assert_lists(o: &Onair, label: &str, service: &str) {
    let port = o.addrs.get(label).unwrap_or_else(|| panic!("no {label} address printed: {:?}", o.addrs)).port();
    assert_eq!(listed(port).await, expected(service), "reflection on the {label} port ({port})");
}

#[tokio::test]
async fn each_all_in_one_port_lists_only_its_own_service() {
    let aio = Onair::start("reflection-aio", &["--store", "memory"]).await;
    assert_lists(&aio, "registry", "onair.v1.StreamRegistry").await;
    assert_lists(&aio, "signaling", "onair.v1.Signaling").await;
    assert_lists(&aio, "recorder", "onair.v1.Recorder").await;
}

#[tokio::test]
async fn each_cluster_service_lists_only_its_own_service() {
    let c = Cluster::start_with(1, false, true).await;
    assert_lists(&c.registry, "registry", "onair.v1.StreamRegistry").await;
    assert_lists(&c.signaling, "signaling", "onair.v1.Signaling").await;
    assert_lists(c.recorder.as_ref().unwrap(), "recorder", "onair.v1.Recorder").await;
}
