//! Auth: access tokens (JWT grants) on the WebSocket, admin tokens on the public gRPC APIs, the
//! cluster secret on the internal ones. Each attack of the security issue, as a client would try it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use onair_auth::{Grants, Minter, Scope};
use onair_proto::v1 as pb;
use onair_proto::v1::recorder_client::RecorderClient;
use onair_proto::v1::signaling_client::SignalingClient;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use onair_tests::Onair;
use onair_tests::cluster::{CLUSTER_SECRET, Cluster};
use onair_tests::procs::onair_bin;
use onair_tests::ws::Ws;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

const SECRET: &str = "auth-test-secret-0123456789";

/// Mints with the `onair token` command, as an operator would.
fn cli_token(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(onair_bin())
        .arg("token")
        .args(args)
        .env("ONAIR_AUTH_SECRET", SECRET)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn minted(grants: Grants, ttl: Duration, now: SystemTime) -> String {
    Minter::hs256(SECRET).unwrap().mint("test", grants, ttl, now).unwrap()
}

async fn start_secured(name: &str) -> Onair {
    Onair::start(name, &["--store", "memory", "--media", "p2p", "--auth-secret", SECRET, "--auto-record", "false"])
        .await
}

fn error_of(v: &Value) -> (&str, &str) {
    (v["code"].as_str().unwrap_or_default(), v["message"].as_str().unwrap_or_default())
}

#[test]
fn the_token_command_mints_what_it_is_asked_and_refuses_nonsense() {
    let token =
        cli_token(&["--grant", "publish", "--name", "Morning", "--grant", "subscribe", "--ttl", "10m"]).unwrap();
    let claims = onair_auth::Verifier::hs256(SECRET).unwrap().verify(&token).unwrap();
    assert_eq!(claims.grants.publish, Some(Scope::Only("Morning".into())));
    assert_eq!(claims.grants.subscribe, Some(Scope::Any));
    assert!(!claims.grants.admin);
    assert_eq!(claims.exp - claims.iat, 600);

    assert!(cli_token(&["--grant", "root"]).unwrap_err().contains("unknown grant `root`"));
    assert!(cli_token(&["--grant", "subscribe", "--name", "x"]).unwrap_err().contains("add --grant publish"));
    let out = std::process::Command::new(onair_bin())
        .args(["token", "--grant", "admin"])
        .env_remove("ONAIR_AUTH_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs the server's --auth-secret"));
}

#[tokio::test]
async fn sockets_act_only_within_their_token_grants() {
    let gw = start_secured("auth-ws").await;
    assert!(!gw.proc.output().contains("auth is off"), "auth is on:\n{}", gw.proc.output());

    // No token: the list is visible, but going live or watching says what is missing.
    let mut anon = Ws::connect(gw.http).await;
    anon.send(json!({"type": "publish", "title": "t"})).await;
    let e = anon.expect_error("unauthenticated").await;
    assert!(error_of(&e).1.contains("publish grant") && error_of(&e).1.contains("#access_token="), "{e}");

    // A publish token on the query (as the pages send it) goes live; one limited to a name only under it.
    let publish = cli_token(&["--grant", "publish", "--name", "Morning"]).unwrap();
    let (mut broadcaster, refusal) = Ws::open(gw.http, &format!("/ws?access_token={publish}")).await;
    assert!(refusal.is_none(), "{refusal:?}");
    broadcaster.send(json!({"type": "publish", "title": "Evening"})).await;
    let e = broadcaster.expect_error("forbidden").await;
    assert!(error_of(&e).1.contains("only as \u{201c}Morning\u{201d}"), "{e}");
    let stream = broadcaster.publish("Morning").await;
    let stream_id = stream["id"].as_str().unwrap().to_owned();

    // Watching: without a token, with a publish-only token, with a token for another stream: refused.
    anon.send(json!({"type": "watch", "stream_id": stream_id})).await;
    assert!(error_of(&anon.expect_error("unauthenticated").await).1.contains("subscribe grant"));
    broadcaster.send(json!({"type": "watch", "stream_id": stream_id})).await;
    assert_eq!(error_of(&broadcaster.expect_error("forbidden").await).1, "this access token has no subscribe grant");
    let other = minted(
        Grants { subscribe: Some(Scope::Only("another-stream".into())), ..Grants::default() },
        Duration::from_secs(60),
        SystemTime::now(),
    );
    let (mut w_other, _) = Ws::open(gw.http, &format!("/ws?access_token={other}")).await;
    w_other.send(json!({"type": "watch", "stream_id": stream_id})).await;
    assert!(
        error_of(&w_other.expect_error("forbidden").await).1.contains("only stream \u{201c}another-stream\u{201d}")
    );

    // A subscribe token for this stream, sent as a Bearer header (a non-browser client), watches.
    let mine = cli_token(&["--grant", &format!("subscribe={stream_id}")]).unwrap();
    let (mut watcher, refusal) = Ws::open_bearer(gw.http, &mine).await;
    assert!(refusal.is_none(), "{refusal:?}");
    watcher.send(json!({"type": "watch", "stream_id": stream_id})).await;
    broadcaster.expect_where("watcher_joined", |f| f["peer"] == watcher.peer_id.as_str()).await;

    // Expired and forged tokens: refused right after welcome, saying why; the socket goes on without grants.
    let expired = minted(Grants::all(), Duration::from_secs(60), SystemTime::now() - Duration::from_secs(3600));
    let (mut late, refusal) = Ws::open(gw.http, &format!("/ws?access_token={expired}")).await;
    let refusal = refusal.expect("an expired token must be refused");
    assert_eq!(
        error_of(&refusal),
        ("unauthenticated", "the access token has expired; ask for a new one; continuing without it")
    );
    late.send(json!({"type": "watch", "stream_id": stream_id})).await;
    late.expect_error("unauthenticated").await;
    let forged = Minter::hs256("someone-elses-secret-123").unwrap().mint(
        "x",
        Grants::all(),
        Duration::from_secs(60),
        SystemTime::now(),
    );
    let (_f, refusal) = Ws::open(gw.http, &format!("/ws?access_token={}", forged.unwrap())).await;
    assert!(error_of(&refusal.unwrap()).1.contains("signature is not valid"));

    let out = gw.proc.output();
    assert!(!out.contains(&publish) && !out.contains(&mine), "a token was logged");
}

#[tokio::test]
async fn with_auth_off_the_server_says_so_and_everyone_may_act() {
    let gw = Onair::start("auth-off", &["--store", "memory", "--media", "p2p", "--auto-record", "false"]).await;
    assert!(gw.proc.output().contains("WARNING: auth is off"), "{}", gw.proc.output());
    let mut b = Ws::connect(gw.http).await;
    b.publish("open").await;
}

async fn registry(
    url: &str,
    bearer: Option<&str>,
) -> StreamRegistryClient<tonic::service::interceptor::InterceptedService<Channel, onair_auth::Credentials>> {
    let channel = Channel::from_shared(url.to_owned()).unwrap().connect().await.unwrap();
    let creds = bearer.map_or_else(onair_auth::Credentials::none, |b| onair_auth::Credentials::bearer(b).unwrap());
    StreamRegistryClient::new(creds.on(channel))
}

#[tokio::test]
async fn the_registry_api_needs_an_admin_token() {
    let gw = start_secured("auth-grpc").await;
    let url = gw.grpc_url();
    let end = || pb::EndStreamRequest { id: "someone-elses-stream".into() };

    let status = registry(&url, None).await.end_stream(end()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("onair token --grant admin"), "{}", status.message());
    let create = pb::CreateStreamRequest { broadcaster: "victim".into(), title: "x".into(), ..Default::default() };
    assert_eq!(registry(&url, None).await.create_stream(create).await.unwrap_err().code(), Code::Unauthenticated);
    let update = pb::UpdateRecordingRequest { id: "r".into(), ..Default::default() };
    assert_eq!(registry(&url, None).await.update_recording(update).await.unwrap_err().code(), Code::Unauthenticated);

    let watcher = cli_token(&["--grant", "subscribe"]).unwrap();
    let status = registry(&url, Some(&watcher)).await.end_stream(end()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("no admin grant"));

    let admin = cli_token(&["--grant", "admin"]).unwrap();
    let status = registry(&url, Some(&admin)).await.end_stream(end()).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "an admin passes the check and reaches the registry: {status:?}");
    registry(&url, Some(&admin)).await.list_streams(pb::ListStreamsRequest::default()).await.unwrap();

    // Health stays open for probes, and the services inside (which use the cluster secret) are ready.
    gw.wait_ready().await;
    let ch = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let health = onair_tests::health::HealthClient::new(ch);
    onair_tests::procs::wait_until(Duration::from_secs(5), "health SERVING", || {
        let mut h = health.clone();
        async move { h.check("").await.ok() == Some(1) }
    })
    .await;
}

#[tokio::test]
async fn nobody_outside_the_cluster_can_call_signaling_or_the_recorder() {
    let cluster = Cluster::start_secured(1, false, true, Some(SECRET)).await;
    let gw = &cluster.gateways[0];

    // The peer-takeover attack: attach a victim's peer id from outside, then resume it.
    let victim = Ws::connect(gw.http).await;
    let channel = Channel::from_shared(cluster.signaling.grpc_url()).unwrap().connect().await.unwrap();
    let mut outsider = SignalingClient::new(channel.clone());
    let resume =
        pb::ResumeRequest { peer: victim.peer_id.clone(), resume_token: victim.token.clone(), node: "evil".into() };
    let status = outsider.resume(resume.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("internal to the onair cluster"), "{}", status.message());
    let heartbeat = outsider.heartbeat(pb::HeartbeatRequest { node: "evil".into(), relay: None }).await.unwrap_err();
    assert_eq!(heartbeat.code(), Code::Unauthenticated);
    let stream = outsider.node_stream(tokio_stream::iter(Vec::<pb::NodeMessage>::new())).await.unwrap_err();
    assert_eq!(stream.code(), Code::Unauthenticated);
    // An admin token is no cluster secret.
    let admin = cli_token(&["--grant", "admin"]).unwrap();
    let mut with_admin = SignalingClient::new(onair_auth::Credentials::bearer(&admin).unwrap().on(channel));
    assert_eq!(with_admin.resume(resume).await.unwrap_err().code(), Code::Unauthenticated);

    // The recorder's API takes an admin token, not an anonymous call.
    let recorder = cluster.recorder.as_ref().unwrap();
    let rch = Channel::from_shared(recorder.grpc_url()).unwrap().connect().await.unwrap();
    let stop = pb::StopRecordingRequest { stream_id: "any".into() };
    assert_eq!(
        RecorderClient::new(rch.clone()).stop_recording(stop.clone()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let creds = onair_auth::Credentials::bearer(&admin).unwrap();
    let status = RecorderClient::new(creds.on(rch)).stop_recording(stop).await.unwrap_err();
    assert_ne!(status.code(), Code::Unauthenticated, "an admin token passes: {status:?}");

    // Inside the cluster everything still works: a token holder goes live, another watches.
    let publish = cli_token(&["--grant", "publish"]).unwrap();
    let (mut b, _) = Ws::open(gw.http, &format!("/ws?access_token={publish}")).await;
    let s = b.publish("secured cluster").await;
    let subscribe = cli_token(&["--grant", "subscribe"]).unwrap();
    let (mut w, _) = Ws::open(gw.http, &format!("/ws?access_token={subscribe}")).await;
    w.send(json!({"type": "watch", "stream_id": s["id"]})).await;
    b.expect_where("watcher_joined", |f| f["peer"] == w.peer_id.as_str()).await;
    assert!(!cluster.signaling.proc.output().contains(CLUSTER_SECRET), "the cluster secret was logged");
}

#[tokio::test]
async fn a_cluster_service_with_auth_but_no_cluster_secret_refuses_to_start() {
    let (code, out) = Onair::start_expecting_exit(
        "auth-no-cluster-secret",
        &["--target", "registry", "--store", "memory", "--media", "p2p", "--auth-secret", SECRET],
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("need --cluster-secret"), "{out}");
    let (code, out) =
        Onair::start_expecting_exit("auth-short", &["--store", "memory", "--media", "p2p", "--auth-secret", "short"])
            .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("at least 16 characters"), "{out}");
}

#[tokio::test]
async fn pages_take_their_token_from_the_fragment_and_say_when_one_is_missing() {
    use onair_tests::browser::Browser;
    let gw = start_secured("auth-pages").await;
    gw.wait_ready().await;
    let base = format!("http://127.0.0.1:{}", gw.http);
    let long = Duration::from_secs(20);

    let b = Browser::start("auth-broadcaster").await;
    b.goto(&format!("{base}/broadcast")).await;
    b.wait_for(
        "the camera preview",
        long,
        "const v = document.getElementById('preview'); return v && v.videoWidth > 0",
    )
    .await;
    b.eval(
        "const t = document.getElementById('title'); t.value = 'No token'; t.dispatchEvent(new Event('input', {bubbles: true})); \
         document.getElementById('go-live').click(); return true",
    )
    .await;
    let status = b
        .wait_for(
            "the refusal in the status",
            long,
            "const s = document.getElementById('status').textContent; return s.includes('access token') ? s : null",
        )
        .await;
    assert!(status.as_str().unwrap().contains("publish grant"), "{status}");
    b.screenshot("auth-no-token").await;

    let publish = cli_token(&["--grant", "publish"]).unwrap();
    b.go_live_at(&format!("{base}/broadcast#access_token={publish}"), "With a token").await;
    assert_eq!(b.eval("return location.hash").await, "", "the token stays out of the address bar");

    let subscribe = cli_token(&["--grant", "subscribe"]).unwrap();
    let w = Browser::start("auth-watcher").await;
    w.goto(&format!("{base}/watcher#access_token={subscribe}")).await;
    let find = "return [...document.querySelectorAll('#streams [data-stream-id]')].find(li => li.textContent.includes('With a token')) || null";
    w.wait_for("the stream in the list", long, &format!("{find} ? true : false")).await;
    w.eval(&format!("const li = (() => {{ {find} }})(); (li.querySelector('button') || li).click(); return true"))
        .await;
    w.wait_for("a video frame", long, "return document.getElementById('player').videoWidth > 0").await;
    assert!(!gw.proc.output().contains(&publish), "the token was logged");
}
