//! Black-box protocol tests: a real cluster (own redis-server, MongoDB-wire
//! server, registry, signaling, two gateways, nginx) driven by WebSocket clients
//! speaking the browser protocol.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use onair_tests::Onair;
use onair_tests::cluster::Cluster;
use onair_tests::ws::Ws;
use serde_json::{Value, json};

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn broadcaster_and_watcher_on_different_gateways_signal_each_other() {
    let c = Cluster::start(2, true).await;
    let mut b = Ws::connect(c.gateways[0].http).await;
    let mut w = Ws::connect(c.gateways[1].http).await;
    let mut far = Ws::connect(c.front()).await; // a third page, through nginx
    assert_ne!(b.peer_id, w.peer_id);

    // publish → everyone's list shows it without reloading
    let t0 = Instant::now();
    let stream = b.publish("Cross-gateway show").await;
    let sid = id(&stream);
    assert_eq!(stream["title"], "Cross-gateway show");
    assert_eq!(stream["broadcaster"], b.peer_id.as_str());
    w.expect_where("stream_on", |v| v["stream"]["id"] == sid.as_str()).await;
    far.expect_where("stream_on", |v| v["stream"]["id"] == sid.as_str()).await;
    println!("publish → stream_on on another gateway: {:?}", t0.elapsed());
    let (status, body) = c.gateways[1].http_get("/api/streams").await;
    assert_eq!(status, 200);
    assert!(body.contains(&sid), "{body}");

    // watch → the broadcaster learns about the watcher and its viewer count
    w.send(json!({"type": "watch", "stream_id": sid})).await;
    let joined = b.expect("watcher_joined").await;
    assert_eq!(joined["peer"], w.peer_id.as_str());
    b.expect_where("viewers", |v| v["count"] == 1 && v["stream_id"] == sid.as_str()).await;

    // offer / answer / candidates, with `from` stamped by the gateway (the spoof is ignored)
    let offer = json!({"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"});
    b.send(json!({"type": "signal", "to": w.peer_id, "kind": "offer", "payload": offer, "from": "spoofed"})).await;
    let got = w.expect("signal").await;
    assert_eq!((got["from"].as_str(), got["kind"].as_str()), (Some(b.peer_id.as_str()), Some("offer")));
    assert_eq!(got["payload"], offer);
    w.send(json!({"type": "signal", "to": b.peer_id, "kind": "answer", "payload": {"type": "answer", "sdp": "v=0"}}))
        .await;
    assert_eq!(b.expect("signal").await["kind"], "answer");
    let cand = json!({"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0"});
    w.send(json!({"type": "signal", "to": b.peer_id, "kind": "candidate", "payload": cand})).await;
    b.send(json!({"type": "signal", "to": w.peer_id, "kind": "candidate", "payload": cand})).await;
    assert_eq!(b.expect("signal").await["payload"], cand);
    assert_eq!(w.expect("signal").await["payload"], cand);

    // unwatch → watcher_left and the count drops
    w.send(json!({"type": "unwatch"})).await;
    assert_eq!(b.expect("watcher_left").await["peer"], w.peer_id.as_str());
    b.expect_where("viewers", |v| v["count"] == 0).await;

    // stop → stream_off everywhere within 1 s
    let t1 = Instant::now();
    b.send(json!({"type": "unpublish"})).await;
    for ws in [&mut w, &mut far] {
        ws.expect_within("stream_off", Duration::from_secs(1), |v| v["stream_id"] == sid.as_str()).await;
    }
    println!("unpublish → stream_off: {:?}", t1.elapsed());
}

/// Once signaling paired a watcher with a broadcaster, their signals go straight from one gateway
/// to the other (one Redis PUBLISH each), in order, without signaling. A watcher that resumed on
/// another gateway still gets what is sent along the old route (its old gateway hands it to
/// signaling), and once the pairing ends signaling refuses them again.
#[tokio::test]
async fn a_pairs_signals_go_straight_between_gateways_until_the_pairing_ends() {
    let c = Cluster::start(2, false).await;
    let mut b = Ws::connect(c.gateways[0].http).await;
    let mut w = Ws::connect(c.gateways[1].http).await;
    let sid = id(&b.publish("direct").await);
    w.send(json!({"type": "watch", "stream_id": sid})).await;
    b.expect("watcher_joined").await;
    let signaled = || async { c.signaling.metric(r#"onair_signaling_messages_total{action="signal"}"#).await };
    let direct = |i: usize| c.gateways[i].metric("onair_gateway_signals_direct_total");
    let before = signaled().await;
    for i in 0..20 {
        b.send(json!({"type": "signal", "to": w.peer_id, "kind": "candidate", "payload": {"i": i}})).await;
    }
    for i in 0..20 {
        let got = w.expect("signal").await;
        assert_eq!((&got["from"], &got["payload"]), (&json!(b.peer_id), &json!({"i": i})), "in order");
    }
    for i in 0..20 {
        w.send(json!({"type": "signal", "to": b.peer_id, "kind": "candidate", "payload": {"j": i}})).await;
    }
    for i in 0..20 {
        assert_eq!(b.expect("signal").await["payload"], json!({"j": i}));
    }
    assert_eq!(signaled().await, before, "signaling relayed none of them");
    assert_eq!((direct(0).await, direct(1).await), (20, 20));

    // The watcher moves to the broadcaster's gateway.
    let token = w.token.clone();
    w.drop_abruptly();
    let (mut w2, refusal) = Ws::resume(c.gateways[0].http, &token).await;
    assert!(refusal.is_none(), "resume refused: {refusal:?}");
    for k in 0..3 {
        b.send(json!({"type": "signal", "to": w2.peer_id, "kind": "candidate", "payload": {"k": k}})).await;
    }
    for k in 0..3 {
        assert_eq!(w2.expect("signal").await["payload"], json!({"k": k}), "in order after the move");
    }
    println!(
        "after the move: {} rerouted by the old gateway, {} direct in all",
        c.gateways[1].metric("onair_gateway_signals_rerouted_total").await,
        direct(0).await
    );

    // The pairing ends: neither may signal the other any more.
    w2.send(json!({"type": "unwatch"})).await;
    b.expect_where("watcher_left", |v| v["peer"] == w2.peer_id.as_str()).await;
    b.send(json!({"type": "signal", "to": w2.peer_id, "kind": "candidate", "payload": {}})).await;
    b.expect_error("forbidden").await;
    w2.send(json!({"type": "signal", "to": b.peer_id, "kind": "candidate", "payload": {}})).await;
    w2.expect_error("forbidden").await;
    w2.expect_none_within("signal", Duration::from_millis(300), |_| true).await;
}

#[tokio::test]
async fn signaling_rules_refuse_unrelated_peers() {
    let c = Cluster::start(2, false).await;
    let mut b = Ws::connect(c.gateways[0].http).await;
    let mut w1 = Ws::connect(c.gateways[1].http).await;
    let mut w2 = Ws::connect(c.gateways[0].http).await;
    let mut stranger = Ws::connect(c.gateways[1].http).await;
    let sid = id(&b.publish("rules").await);
    for w in [&mut w1, &mut w2] {
        w.send(json!({"type": "watch", "stream_id": sid})).await;
    }
    b.expect_where("viewers", |v| v["count"] == 2).await;

    // a peer that watches nothing may not signal the broadcaster
    stranger.send(json!({"type": "signal", "to": b.peer_id, "kind": "offer", "payload": {}})).await;
    stranger.expect_error("forbidden").await;
    // two watchers of the same stream may not signal each other
    w1.send(json!({"type": "signal", "to": w2.peer_id, "kind": "candidate", "payload": {}})).await;
    w1.expect_error("forbidden").await;
    // the broadcaster may not signal a peer that does not watch it
    b.send(json!({"type": "signal", "to": stranger.peer_id, "kind": "offer", "payload": {}})).await;
    b.expect_error("forbidden").await;
    // unknown peer (answered like an unrelated one: errors do not reveal who is connected),
    // unknown stream, own stream
    b.send(json!({"type": "signal", "to": "no-such-peer", "kind": "offer", "payload": {}})).await;
    let unknown = b.expect_error("forbidden").await;
    b.send(json!({"type": "signal", "to": stranger.peer_id, "kind": "offer", "payload": {}})).await;
    let unrelated = b.expect_error("forbidden").await;
    let shape = |v: &Value, id: &str| v["message"].as_str().unwrap().replace(id, "<peer>");
    assert_eq!(shape(&unknown, "no-such-peer"), shape(&unrelated, &stranger.peer_id));
    stranger.send(json!({"type": "watch", "stream_id": "no-such-stream"})).await;
    stranger.expect_error("not_found").await;
    b.send(json!({"type": "watch", "stream_id": sid})).await;
    b.expect_error("bad_request").await;
    // going live twice
    b.send(json!({"type": "publish", "title": "again"})).await;
    b.expect_error("conflict").await;
    // bad titles
    stranger.send(json!({"type": "publish", "title": "   "})).await;
    stranger.expect_error("bad_request").await;
    stranger.send(json!({"type": "publish", "title": "x".repeat(201)})).await;
    stranger.expect_error("bad_request").await;
    // nothing reached w2 from the refused messages, and everyone is still connected
    for ws in [&mut b, &mut w1, &mut w2, &mut stranger] {
        ws.ping().await;
    }
    w2.expect_none_within("signal", Duration::from_millis(500), |_| true).await;
}

#[tokio::test]
async fn bad_input_gets_error_frames_and_the_connection_stays_up() {
    let gw = Onair::start("all-bad-input", &["--store", "memory", "--media", "p2p"]).await;
    gw.wait_ready().await;
    let mut ws = Ws::connect(gw.http).await;
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "bad_json"),
        ("[1,2]".into(), "bad_json"),
        (json!({"type": "dance"}).to_string(), "unknown_type"),
        (json!({"no_type": 1}).to_string(), "unknown_type"),
        (json!({"type": "watch"}).to_string(), "bad_request"),
        (json!({"type": "publish"}).to_string(), "bad_request"),
        (json!({"type": "signal", "to": "x", "kind": "hug", "payload": {}}).to_string(), "bad_request"),
        (json!({"type": "signal", "kind": "offer", "payload": {}}).to_string(), "bad_request"),
        (json!({"type": "watch", "stream_id": "../../etc"}).to_string(), "bad_request"),
        (json!({"type": "signal", "to": "p", "kind": "offer", "payload": "x".repeat(70_000)}).to_string(), "too_large"),
        // Resuming is done on the upgrade (`/ws?resume=`), not with a frame.
        (json!({"type": "resume", "token": "nobody.secret"}).to_string(), "unknown_type"),
    ];
    for (frame, code) in cases {
        ws.send_text(frame.clone()).await;
        let err = ws.expect_error(code).await;
        assert!(!err["message"].as_str().unwrap().is_empty());
        ws.ping().await;
    }
    ws.send_binary(vec![1, 2, 3]).await;
    ws.expect_error("bad_json").await;
    ws.ping().await;
    // Resume tokens nobody issued, or that are not even shaped like one: a new peer, told why.
    for token in ["nobody.secret", "", "../..", "\u{e9}t\u{e9} 1"] {
        let (mut fresh, refusal) = Ws::resume(gw.http, token).await;
        if token.is_empty() {
            assert!(refusal.is_none(), "an empty resume parameter is no resume: {refusal:?}");
        } else {
            assert_eq!(refusal.as_ref().map(|e| e["code"].clone()), Some(json!("not_found")), "{token:?}");
        }
        assert_ne!(fresh.peer_id, ws.peer_id);
        fresh.ping().await;
    }
}

/// Reads frames up to the `pong` answering a `ping`; panics if another `welcome` comes first.
async fn no_second_welcome(ws: &mut Ws) {
    ws.send(json!({"type": "ping"})).await;
    loop {
        let v = ws.next(Duration::from_secs(5)).await.expect("no pong");
        assert_ne!(v["type"], "welcome", "a socket gets exactly one welcome");
        if v["type"] == "pong" {
            return;
        }
    }
}

#[tokio::test]
async fn flooding_is_rate_limited_and_sustained_flooding_closes_the_socket() {
    let gw = Onair::start("all-flood", &["--store", "memory", "--media", "p2p"]).await;
    gw.wait_ready().await;
    let mut ws = Ws::connect(gw.http).await;
    for _ in 0..150 {
        ws.send(json!({"type": "ping"})).await;
    }
    ws.expect_error("rate_limited").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while ws.next(Duration::from_millis(200)).await.is_some() {}
    ws.ping().await; // a burst is forgiven
    for _ in 0..600 {
        if !ws.try_send_text(json!({"type": "ping"}).to_string()).await {
            break;
        }
    }
    assert_eq!(ws.expect_close(Duration::from_secs(5)).await, Some(4029));
}

#[tokio::test]
async fn a_frame_over_a_mebibyte_is_refused_with_close_code_1009() {
    let gw = Onair::start("all-huge-frame", &["--store", "memory", "--media", "p2p"]).await;
    let mut ws = Ws::connect(gw.http).await;
    // 2 MiB: not even read (64 KiB..1 MiB frames get a too_large error and the socket stays up).
    let _ = ws.try_send_text("x".repeat(2 * 1024 * 1024)).await;
    assert_eq!(ws.expect_close(Duration::from_secs(5)).await, Some(1009));
}

#[tokio::test]
async fn the_per_socket_rate_limit_is_a_flag() {
    // A closed-loop tool may need more than a browser: --ws-rate/--ws-burst set the limit.
    let fast = Onair::start(
        "all-rate-high",
        &["--store", "memory", "--media", "p2p", "--ws-rate", "2000", "--ws-burst", "1000"],
    )
    .await;
    let mut ws = Ws::connect(fast.http).await;
    for _ in 0..500 {
        ws.send(json!({"type": "ping"})).await;
    }
    let mut pongs = 0;
    while let Some(v) = ws.next(Duration::from_millis(500)).await {
        assert_ne!(v["type"], "error", "500 frames within a burst of 1000 were refused: {v}");
        pongs += usize::from(v["type"] == "pong");
    }
    assert_eq!(pongs, 500);
    // ...and a tight one refuses a burst the default accepts.
    let slow =
        Onair::start("all-rate-low", &["--store", "memory", "--media", "p2p", "--ws-rate", "2", "--ws-burst", "3"])
            .await;
    let mut ws = Ws::connect(slow.http).await;
    for _ in 0..10 {
        ws.send(json!({"type": "ping"})).await;
    }
    ws.expect_error("rate_limited").await;
    // A limit of zero is a configuration error, said at start.
    let out = std::process::Command::new(onair_tests::procs::onair_bin())
        .args(["--ws-rate", "0", "--store", "memory", "--media", "p2p"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ws-rate"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn broadcaster_closing_its_tab_ends_the_stream_within_a_second() {
    let c = Cluster::start(2, false).await;
    let mut b = Ws::connect(c.gateways[0].http).await;
    let mut w = Ws::connect(c.gateways[1].http).await;
    let sid = id(&b.publish("short").await);
    w.expect_where("stream_on", |v| v["stream"]["id"] == sid.as_str()).await;
    b.close().await;
    w.expect_within("stream_off", Duration::from_secs(1), |v| v["stream_id"] == sid.as_str()).await;
}

#[tokio::test]
async fn reconnecting_with_the_resume_token_keeps_peer_id_and_stream() {
    let c = Cluster::start(2, false).await;
    let mut b = Ws::connect(c.gateways[0].http).await;
    let mut w = Ws::connect(c.gateways[1].http).await;
    let sid = id(&b.publish("resumable").await);
    w.send(json!({"type": "watch", "stream_id": sid})).await;
    b.expect("watcher_joined").await;
    let (peer, token) = (b.peer_id.clone(), b.token.clone());
    b.drop_abruptly();

    // The network drop does not end the stream...
    w.expect_none_within("stream_off", Duration::from_millis(1500), |v| v["stream_id"] == sid.as_str()).await;
    // ...and the broadcaster comes back through the other gateway with its token on the upgrade:
    // one welcome, already with its old peer id.
    let (mut b2, refusal) = Ws::resume(c.gateways[1].http, &token).await;
    assert!(refusal.is_none(), "resume refused: {refusal:?}");
    assert_eq!(b2.peer_id, peer);
    assert_eq!(b2.token, token);
    assert!(b2.initial_streams.iter().any(|s| s["id"] == sid.as_str()));
    no_second_welcome(&mut b2).await;
    // Signaling now routes to the new gateway, and the pairing is intact.
    w.send(json!({"type": "signal", "to": peer, "kind": "candidate", "payload": {"c": 1}})).await;
    let got = b2.expect("signal").await;
    assert_eq!(got["from"], w.peer_id.as_str());
    // Forged tokens are refused: a fresh peer, and the real one keeps its session. The cluster's
    // gateways share a resume secret, so tokens carry a MAC bound to the peer id.
    let (nonce_part, mac) = token.rsplit_once('.').expect("a signed token: peer.nonce.mac");
    let last = if mac.ends_with('0') { '1' } else { '0' };
    let flipped = format!("{nonce_part}.{}{last}", &mac[..mac.len() - 1]);
    let stranger = Ws::connect(c.gateways[0].http).await;
    let borrowed = token.replacen(peer.as_str(), stranger.peer_id.as_str(), 1);
    for forged in [format!("{peer}.forged"), nonce_part.to_owned(), flipped, borrowed] {
        let (mut other, refusal) = Ws::resume(c.gateways[0].http, &forged).await;
        assert_eq!(refusal.map(|e| e["code"].clone()), Some(json!("not_found")), "token {forged:?}");
        assert_ne!(other.peer_id, peer);
        no_second_welcome(&mut other).await;
    }
    w.send(json!({"type": "signal", "to": peer, "kind": "candidate", "payload": {"c": 2}})).await;
    assert_eq!(b2.expect("signal").await["payload"], json!({"c": 2}));
    // Resuming again on the same gateway replaces the socket holding the peer (closed with 4009).
    let (mut b3, refusal) = Ws::resume(c.gateways[1].http, &token).await;
    assert!(refusal.is_none(), "resume refused: {refusal:?}");
    assert_eq!(b3.peer_id, peer);
    assert_eq!(b2.expect_close(Duration::from_secs(5)).await, Some(4009));
    w.send(json!({"type": "signal", "to": peer, "kind": "candidate", "payload": {"c": 3}})).await;
    assert_eq!(b3.expect("signal").await["payload"], json!({"c": 3}));
}

#[tokio::test]
async fn peers_of_a_killed_gateway_expire_and_their_streams_end() {
    let mut c = Cluster::start(2, true).await;
    let mut b = Ws::connect(c.gateways[0].http).await;
    let mut w = Ws::connect(c.gateways[1].http).await;
    let sid = id(&b.publish("doomed").await);
    w.expect_where("stream_on", |v| v["stream"]["id"] == sid.as_str()).await;
    let t0 = Instant::now();
    c.gateways[0].proc.kill();
    w.expect_within("stream_off", Duration::from_secs(10), |v| v["stream_id"] == sid.as_str()).await;
    println!("killed gateway → stream_off after {:?}", t0.elapsed());
    // nginx keeps serving through the surviving gateway
    let mut again = Ws::connect(c.front()).await;
    again.ping().await;
}

#[tokio::test]
async fn all_in_one_binary_relays_signaling_without_redis() {
    let gw = Onair::start("all-in-one", &["--store", "memory", "--media", "p2p"]).await;
    gw.wait_ready().await;
    let mut b = Ws::connect(gw.http).await;
    let mut w = Ws::connect(gw.http).await;
    let sid = id(&b.publish("solo").await);
    w.expect_where("stream_on", |v| v["stream"]["id"] == sid.as_str()).await;
    w.send(json!({"type": "watch", "stream_id": sid})).await;
    // The recorder joins too (auto-record): wait for this watcher.
    b.expect_where("watcher_joined", |v| v["peer"] == w.peer_id.as_str()).await;
    b.send(json!({"type": "signal", "to": w.peer_id, "kind": "offer", "payload": {"sdp": "x"}})).await;
    assert_eq!(w.expect("signal").await["from"], b.peer_id.as_str());
    let (status, page) = gw.http_get("/broadcast").await;
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");
    assert_eq!(gw.http_get("/assets/ws.js").await.0, 200);
    assert_eq!(gw.http_get("/assets/nope.js").await.0, 404);
}

/// A stream the registry has live but whose broadcaster the directory does not know (yet: its
/// gateway re-asserts it after a Redis restart) is not "gone": a watch of it is told to retry.
#[tokio::test]
async fn watching_a_live_stream_whose_broadcaster_is_not_back_yet_says_retry_not_gone() {
    let gw = Onair::start("all-no-broadcaster", &["--store", "memory", "--media", "p2p"]).await;
    let mut registry = onair_tests::registry::client(&gw.grpc_url()).await;
    let req = onair_proto::v1::CreateStreamRequest {
        title: "between sockets".into(),
        broadcaster: "01a23c774cc07494942f249f633e2135".into(),
        node: "gw-elsewhere".into(),
        ..Default::default()
    };
    let live = registry.create_stream(req).await.unwrap().into_inner();
    let mut w = Ws::connect(gw.http).await;
    w.send(json!({"type": "watch", "stream_id": live.id})).await;
    let e = w.expect_error("unavailable").await;
    assert!(e["message"].as_str().unwrap().contains("retry"), "{e}");
    // An ended (or unknown) stream is gone.
    registry.end_stream(onair_proto::v1::EndStreamRequest { id: live.id.clone() }).await.unwrap();
    w.send(json!({"type": "watch", "stream_id": live.id})).await;
    w.expect_error("not_found").await;
    w.send(json!({"type": "watch", "stream_id": "01a23c774cc677a6b5042e327f3f43b5"})).await;
    w.expect_error("not_found").await;
}
