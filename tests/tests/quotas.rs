//! What one publisher or developer may create is bounded: live streams per subject of a publish
//! grant (browser and WHIP alike), `CreateStream` calls per minute per admin token subject. Each
//! refusal says which limit and what to do, and is counted in `onair_registry_limited_total`.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use onair_auth::{Grants, Minter, Scope};
use onair_proto::v1 as pb;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use onair_tests::Onair;
use onair_tests::ws::Ws;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

const SECRET: &str = "quota-test-secret-0123456789";

fn token(subject: &str, grants: Grants) -> String {
    Minter::hs256(SECRET).unwrap().mint(subject, grants, Duration::from_secs(600), SystemTime::now()).unwrap()
}

fn publisher(subject: &str) -> String {
    token(subject, Grants { publish: Some(Scope::Any), ..Grants::default() })
}

async fn start(name: &str, extra: &[&str]) -> Onair {
    let mut args = vec!["--store", "memory", "--media", "p2p", "--auth-secret", SECRET, "--auto-record", "false"];
    args.extend_from_slice(extra);
    Onair::start(name, &args).await
}

async fn socket_of(gw: &Onair, token: &str) -> Ws {
    let (ws, refusal) = Ws::open(gw.http, &format!("/ws?access_token={token}")).await;
    assert!(refusal.is_none(), "{refusal:?}");
    ws
}

#[tokio::test]
async fn a_publisher_has_at_most_its_live_streams_and_others_are_not_affected() {
    let gw = start("live-per-subject", &["--max-live-per-subject", "2"]).await;
    let alice = publisher("alice");
    let mut a1 = socket_of(&gw, &alice).await;
    let mut a2 = socket_of(&gw, &alice).await;
    let mut a3 = socket_of(&gw, &alice).await;
    let first = a1.publish("alice one").await;
    a2.publish("alice two").await;

    a3.send(json!({"type": "publish", "title": "alice three"})).await;
    let e = a3.expect_error("limited").await;
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("\"alice\" already has 2 live streams"), "{e}");
    assert!(message.contains("--max-live-per-subject") && message.contains("end one first"), "{e}");
    let limited = r#"onair_registry_limited_total{limit="live_per_subject"}"#;
    assert_eq!(gw.metric(limited).await, 1);

    // Another publisher is not affected, and the list does not tell watchers who owns a stream.
    let mut viewer = Ws::connect(gw.http).await;
    assert!(viewer.initial_streams.iter().all(|s| s.get("owner").is_none()), "{:?}", viewer.initial_streams);
    let mut b = socket_of(&gw, &publisher("bob")).await;
    let bobs = b.publish("bob's").await;
    assert_eq!(bobs["owner"], "bob", "the publisher sees its own stream's owner: {bobs}");
    let on = viewer.expect_where("stream_on", |f| f["stream"]["id"] == bobs["id"]).await;
    assert!(on["stream"].get("owner").is_none(), "{on}");

    // Ending one frees its slot.
    a1.send(json!({"type": "unpublish"})).await;
    viewer.expect_where("stream_off", |f| f["stream_id"] == first["id"]).await;
    a3.publish("alice three").await;
    assert_eq!(gw.metric(limited).await, 1);
}

#[tokio::test]
async fn a_developer_creates_at_most_its_rate_per_minute_on_the_registry_api() {
    let gw = start("creates-per-minute", &["--max-creates-per-minute", "3"]).await;
    let channel = Channel::from_shared(gw.grpc_url()).unwrap().connect().await.unwrap();
    let client = |subject: &str| {
        let creds = onair_auth::Credentials::bearer(&token(subject, Grants { admin: true, ..Grants::default() }));
        StreamRegistryClient::new(creds.unwrap().on(channel.clone()))
    };
    let create = |i: usize| pb::CreateStreamRequest {
        title: format!("api {i}"),
        broadcaster: format!("api-peer-{i}"),
        node: "api".into(),
        ..Default::default()
    };
    let mut dev = client("dev");
    for i in 0..3 {
        dev.create_stream(create(i)).await.unwrap();
    }
    let status = dev.create_stream(create(3)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("\"dev\" created 3 streams in the last minute"), "{}", status.message());
    assert!(status.message().contains("--max-creates-per-minute") && status.message().contains("retry in"));
    assert_eq!(gw.metric(r#"onair_registry_limited_total{limit="creates_per_minute"}"#).await, 1);

    // Per caller: another developer creates; and browsers, whose streams signaling creates with the
    // cluster's own credentials, are not held to the API rate.
    client("other").create_stream(create(4)).await.unwrap();
    for i in 0..4 {
        let mut b = socket_of(&gw, &publisher(&format!("browser-{i}"))).await;
        b.publish("from a browser").await;
    }

    // Nonsense owners are refused with a reason.
    let long = pb::CreateStreamRequest { owner: "x".repeat(201), ..create(9) };
    let status = client("third").create_stream(long).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("owner is longer than 200 characters"), "{}", status.message());
}
