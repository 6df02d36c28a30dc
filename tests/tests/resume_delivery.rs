//! Nothing sent to a peer is lost while its socket moves: a gateway killed (-9) or draining
//! (SIGTERM), or a dropped connection that resumes where it was. Signaling parks what it routes to
//! a node nobody listens for and hands it to the gateway the peer resumes on; that gateway holds
//! what comes before the resume is confirmed; a gateway holds what comes during a peer's resume
//! grace. The peer gets every message (around the move, not always in the order sent).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use onair_tests::cluster::Cluster;
use onair_tests::ws::Ws;
use serde_json::json;

/// A broadcaster on gateway 0 and its watcher on gateway 1, paired.
async fn pair(c: &Cluster) -> (Ws, Ws) {
    let mut b = Ws::connect(c.gateways[0].http).await;
    let stream = b.publish("moves").await;
    let mut w = Ws::connect(c.gateways[1].http).await;
    w.send(json!({"type": "watch", "stream_id": stream["id"]})).await;
    b.expect_where("watcher_joined", |f| f["peer"] == w.peer_id.as_str()).await;
    (b, w)
}

/// `w` trickles `n` marked candidates to `to` (a peer between sockets), 20 ms apart; none may be
/// refused.
async fn trickle(w: &mut Ws, to: &str, tag: &str, n: usize) {
    for i in 0..n {
        w.send(
            json!({"type": "signal", "to": to, "kind": "candidate", "payload": {"candidate": format!("{tag}-{i}")}}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.expect_none_within("error", Duration::from_millis(300), |_| true).await;
}

/// The candidates tagged `tag` that reach `b`, until `n` came or 5 s passed, in the order they were
/// sent (around a move, what was parked and what was routed after the move may interleave).
async fn received(b: &mut Ws, tag: &str, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(f) = b.next(left).await else { break };
        if let Some(c) = f["payload"]["candidate"].as_str().filter(|c| c.starts_with(tag)) {
            got.push(c.to_owned());
        }
    }
    got.sort_by_key(|m| m.rsplit('-').next().and_then(|i| i.parse::<usize>().ok()));
    got
}

fn all(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

async fn resume(port: u16, old: &Ws) -> Ws {
    let (b, refusal) = Ws::resume(port, &old.token).await;
    assert!(refusal.is_none(), "{refusal:?}");
    assert_eq!(b.peer_id, old.peer_id, "the peer id is kept");
    b
}

#[tokio::test]
async fn signals_to_a_peer_whose_gateway_was_killed_reach_it_where_it_resumes() {
    let mut c = Cluster::start(2, false).await;
    let (b, mut w) = pair(&c).await;
    c.gateways[0].proc.kill();
    trickle(&mut w, &b.peer_id, "killed", 20).await;
    let mut b2 = resume(c.gateways[1].http, &b).await;
    assert_eq!(received(&mut b2, "killed", 20).await, all("killed", 20));
    let log = c.signaling.proc.output();
    assert!(log.contains("parked deliveries handed to the new node"), "{log}");
}

#[tokio::test]
async fn signals_to_the_peers_of_a_draining_gateway_reach_them_where_they_resume() {
    let mut c = Cluster::start(2, false).await;
    let (mut b, mut w) = pair(&c).await;
    let mut gw0 = c.gateways.remove(0);
    let draining = tokio::spawn(async move { gw0.proc.terminate(Duration::from_secs(20)).await });
    assert_eq!(b.expect_close(Duration::from_secs(10)).await, Some(1012));
    trickle(&mut w, &b.peer_id, "drained", 20).await;
    let mut b2 = resume(c.gateways[0].http, &b).await;
    assert_eq!(received(&mut b2, "drained", 20).await, all("drained", 20));
    assert_eq!(draining.await.unwrap(), Some(0), "the draining gateway exits cleanly");
}

#[tokio::test]
async fn signals_to_a_peer_whose_connection_dropped_wait_for_it_on_its_gateway() {
    let c = Cluster::start(2, false).await;
    let (b, mut w) = pair(&c).await;
    let (peer, token) = (b.peer_id.clone(), b.token.clone());
    b.drop_abruptly();
    tokio::time::sleep(Duration::from_millis(200)).await;
    trickle(&mut w, &peer, "dropped", 20).await;
    let (mut b2, refusal) = Ws::resume(c.gateways[0].http, &token).await;
    assert!(refusal.is_none(), "{refusal:?}");
    assert_eq!(b2.peer_id, peer);
    assert_eq!(received(&mut b2, "dropped", 20).await, all("dropped", 20));
    // And the pair goes on both ways.
    b2.send(json!({"type": "signal", "to": w.peer_id, "kind": "candidate", "payload": {"candidate": "back"}})).await;
    w.expect_where("signal", |f| f["payload"]["candidate"] == "back").await;
}

#[tokio::test]
async fn signals_published_while_a_gateways_redis_subscriber_reconnects_still_arrive() {
    let c = Cluster::start(2, false).await;
    let (mut b, mut w) = pair(&c).await;
    let port = c.redis.port.to_string();
    let n = 40;
    for i in 0..n {
        // Every pub/sub connection is cut (the gateways' subscribers reconnect at once): what is
        // published meanwhile reaches nobody.
        let killed = std::process::Command::new("redis-cli")
            .args(["-p", &port, "CLIENT", "KILL", "TYPE", "pubsub"])
            .output()
            .unwrap();
        assert!(killed.status.success(), "{killed:?}");
        let marker = format!("gap-{i}");
        w.send(json!({"type": "signal", "to": b.peer_id, "kind": "candidate", "payload": {"candidate": marker}})).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(received(&mut b, "gap", n).await, all("gap", n), "every signal arrives (parked ones may come late)");
}

#[tokio::test]
async fn signals_a_peer_sends_into_its_draining_gateway_reach_their_recipient() {
    let mut c = Cluster::start(2, false).await;
    let (mut b, mut w) = pair(&c).await;
    let mut gw0 = c.gateways.remove(0);
    let draining = tokio::spawn(async move { gw0.proc.terminate(Duration::from_secs(20)).await });
    // The broadcaster keeps trickling while its gateway stops, as a browser does until it reads the
    // 1012: 80 candidates 2 ms apart (within the socket's burst), written before it reads anything.
    let n = 80;
    for i in 0..n {
        let frame = json!({"type": "signal", "to": w.peer_id, "kind": "candidate", "payload": {"candidate": format!("into-drain-{i}")}});
        assert!(b.try_send_text(frame.to_string()).await, "the gateway closes only after the client's close frame");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(b.expect_close(Duration::from_secs(10)).await, Some(1012));
    assert_eq!(received(&mut w, "into-drain", n).await, all("into-drain", n));
    assert_eq!(draining.await.unwrap(), Some(0), "the draining gateway exits cleanly");
    let b2 = resume(c.gateways[0].http, &b).await;
    assert_eq!(b2.peer_id, b.peer_id);
}

#[tokio::test]
async fn signals_held_for_a_dropped_peer_follow_it_to_the_gateway_it_resumes_on() {
    let c = Cluster::start(2, false).await;
    let (b, mut w) = pair(&c).await;
    let (peer, token) = (b.peer_id.clone(), b.token.clone());
    b.drop_abruptly();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Held on gateway 0 (the peer's resume grace) ...
    trickle(&mut w, &peer, "followed", 20).await;
    // ... and the peer comes back through the *other* gateway (a load balancer's choice).
    let (mut b2, refusal) = Ws::resume(c.gateways[1].http, &token).await;
    assert!(refusal.is_none(), "{refusal:?}");
    assert_eq!(b2.peer_id, peer);
    assert_eq!(received(&mut b2, "followed", 20).await, all("followed", 20));
    c.signaling.proc.wait_output("held frames forwarded", Duration::from_secs(2)).await;
}
