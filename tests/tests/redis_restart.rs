//! Redis is a cache of who is where: when it restarts empty, the nodes re-assert their peers and
//! the pairs that existed signal again, with no client action; while it is down, messages that cannot
//! be routed are answered with `error{unavailable}`, never dropped in silence; a live stream whose
//! gateway died meanwhile is ended once Redis is back.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use onair_tests::cluster::Cluster;
use onair_tests::ws::Ws;
use onair_tests::{Onair, Redis};
use serde_json::json;

fn candidate(to: &str, marker: &str) -> serde_json::Value {
    json!({"type": "signal", "to": to, "kind": "candidate", "payload": {"candidate": marker}})
}

/// Sends marked candidates from `from` to `to` until one arrives (each gets 250 ms); the time it took.
async fn until_signal_flows(from: &mut Ws, to: &mut Ws, limit: Duration) -> Duration {
    let start = Instant::now();
    for i in 0.. {
        assert!(start.elapsed() < limit, "no signal from {} reached {} within {limit:?}", from.peer_id, to.peer_id);
        let marker = format!("probe-{i}");
        from.send(candidate(&to.peer_id, &marker)).await;
        while let Some(f) = to.next(Duration::from_millis(250)).await {
            if f["type"] == "signal" && f["payload"]["candidate"] == marker.as_str() {
                return start.elapsed();
            }
        }
    }
    unreachable!()
}

#[tokio::test]
async fn pairs_signal_again_after_redis_restarts_empty_and_get_errors_while_it_is_down() {
    let mut c = Cluster::start(2, false).await;
    let mut b = Ws::connect(c.gateways[0].http).await;
    let stream = b.publish("survives redis").await;
    let mut w = Ws::connect(c.gateways[1].http).await;
    w.send(json!({"type": "watch", "stream_id": stream["id"]})).await;
    b.expect_where("watcher_joined", |f| f["peer"] == w.peer_id.as_str()).await;
    until_signal_flows(&mut w, &mut b, Duration::from_secs(5)).await;

    c.redis.proc.kill();
    // Down: the watcher's candidate cannot be routed, and it is told so.
    w.send(candidate(&b.peer_id, "while-down")).await;
    let e = w.expect_within("error", Duration::from_secs(5), |_| true).await;
    assert_eq!(e["code"], "unavailable", "{e}");

    c.redis.restart().await;
    let back = Instant::now();
    let w_to_b = until_signal_flows(&mut w, &mut b, Duration::from_secs(10)).await;
    let b_to_w = until_signal_flows(&mut b, &mut w, Duration::from_secs(10)).await;
    let repaired = back.elapsed();
    println!("pair repaired {repaired:?} after Redis came back (watcher→broadcaster {w_to_b:?}, back {b_to_w:?})");
    assert!(w_to_b < Duration::from_secs(3), "the pair took {w_to_b:?} to signal again");

    // The stream is still live and watchable by a newcomer (the directory knows its broadcaster again).
    // Routing may still be catching up: a watch refused as `unavailable` is sent again, as the watcher
    // page does; anything else, or silence, fails.
    let mut w2 = Ws::connect(c.gateways[0].http).await;
    let mut refusals = Vec::new();
    'watch: for _ in 0..5 {
        w2.send(json!({"type": "watch", "stream_id": stream["id"]})).await;
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Some(f) = b.next(Duration::from_millis(50)).await
                && f["type"] == "watcher_joined"
                && f["peer"] == w2.peer_id.as_str()
            {
                break 'watch;
            }
            if let Some(f) = w2.next(Duration::from_millis(50)).await
                && f["type"] == "error"
            {
                assert_eq!(f["code"], "unavailable", "the newcomer's watch was refused: {f} (before: {refusals:?})");
                refusals.push(f);
                continue 'watch;
            }
        }
        panic!("the newcomer's watch got neither watcher_joined nor an error in 3 s (refusals before: {refusals:?})");
    }
    assert!(refusals.len() < 5, "the watch was refused 5 times: {refusals:?}");
    println!("newcomer's watch refused {} time(s) before it joined", refusals.len());
    c.signaling.proc.wait_output("re-asserted its peers", Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_stream_whose_gateway_died_while_redis_was_down_is_ended_when_it_returns() {
    let mut c = Cluster::start(2, false).await;
    let mut b = Ws::connect(c.gateways[0].http).await;
    let stream = b.publish("orphaned").await;
    let id = stream["id"].as_str().unwrap().to_owned();
    let mut w = Ws::connect(c.gateways[1].http).await;

    c.redis.proc.kill();
    c.gateways[0].proc.kill();
    c.redis.restart().await;
    let back = Instant::now();
    let off = w.expect_within("stream_off", Duration::from_secs(30), |f| f["stream_id"] == id.as_str()).await;
    println!("orphaned stream ended {:?} after Redis came back: {off}", back.elapsed());
}

#[tokio::test]
async fn redis_unresponsive_for_longer_than_the_presence_ttl_kills_no_session() {
    let c = Cluster::start(2, false).await;
    let mut b = Ws::connect(c.gateways[0].http).await;
    let stream = b.publish("outlives an outage").await;
    let mut w = Ws::connect(c.gateways[1].http).await;
    w.send(json!({"type": "watch", "stream_id": stream["id"]})).await;
    b.expect_where("watcher_joined", |f| f["peer"] == w.peer_id.as_str()).await;

    // Frozen, not dead: its data survives, but nobody's heartbeat lands for 8 s (presence TTL: 4 s).
    let pid = c.redis.proc.pid().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let frozen = Instant::now();
    let mut saw_unready = false;
    while frozen.elapsed() < Duration::from_secs(8) {
        saw_unready |= c.signaling.admin_get("/readyz").await.0 == 503;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    assert!(saw_unready, "/readyz of signaling never reflected the outage");

    let flows = until_signal_flows(&mut w, &mut b, Duration::from_secs(10)).await;
    assert!(flows < Duration::from_secs(3), "took {flows:?}");
    // No node was judged dead for the outage: the stream stays live for a while after.
    w.expect_none_within("stream_off", Duration::from_secs(6), |_| true).await;
    assert!(!c.signaling.proc.output().contains("missed its heartbeats"), "a node was reaped for Redis's outage");
}

#[tokio::test]
async fn a_service_started_before_redis_waits_for_it_and_a_bad_redis_url_fails_at_once() {
    let started = Instant::now();
    let (code, out) =
        Onair::start_expecting_exit("bad-redis-url", &["--target", "signaling", "--redis-url", "notaurl"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--redis-url"), "the error does not name the flag:\n{out}");
    assert!(started.elapsed() < Duration::from_secs(10), "a malformed URL was retried like an unreachable server");

    // Redis is down when the service starts (a pod starting before Redis): it waits, then serves.
    let mut redis = Redis::start().await;
    redis.proc.kill();
    let url = redis.url();
    let back = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        redis.restart().await;
        redis
    });
    let sig = Onair::start(
        "late-redis",
        &["--target", "signaling", "--redis-url", &url, "--cluster-secret", "late-redis-test-cluster-secret-0123"],
    )
    .await;
    sig.wait_ready().await;
    assert!(sig.proc.output().contains("redis not reachable yet; retrying"), "{}", sig.proc.output());
    drop(back.await.unwrap());
}
