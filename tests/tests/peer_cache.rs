//! The directory's peer cache against a real Redis, as two signaling replicas use it: reads are
//! answered from the cache, a replica reads its own writes at once, another replica's write
//! reaches it through Redis' invalidation push, and a Redis restart (tracking state lost) never
//! leaves a stale record behind.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use onair_core::{Directory, NodeId, PeerId, StreamId};
use onair_redis::RedisDirectory;
use onair_tests::Redis;

/// Connects a directory, retrying while Redis is (re)starting.
async fn directory(redis: &Redis) -> RedisDirectory {
    for _ in 0..50 {
        if let Ok(d) = RedisDirectory::connect(&redis.url()).await {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no directory on {}", redis.url());
}

/// Polls `a` until `peer`'s record satisfies `ok` (bounded); how long it took.
async fn until(
    a: &RedisDirectory,
    peer: &PeerId,
    what: &str,
    ok: impl Fn(&onair_core::PeerRecord) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(Some(r)) = a.peer_cached(peer).await
            && ok(&r)
        {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{what}: never seen");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn cached_peer_records_follow_every_replicas_writes_and_survive_a_redis_restart() {
    let mut redis = Redis::start().await;
    let (a, b) = (directory(&redis).await, directory(&redis).await);
    let peer = PeerId::generate();
    let (gw1, gw2): (NodeId, NodeId) = ("gw-1".parse().unwrap(), "gw-2".parse().unwrap());
    let stream = StreamId::generate();

    a.attach(&peer, &gw1, "token").await.unwrap();
    let (hits, misses) = a.cache_hits_and_misses();
    for _ in 0..100 {
        assert_eq!(a.peer_cached(&peer).await.unwrap().unwrap().node, gw1);
    }
    let (hits2, misses2) = a.cache_hits_and_misses();
    assert!(
        misses2 - misses <= 1,
        "one read goes to Redis, then the cache answers ({hits}/{misses} → {hits2}/{misses2})"
    );
    assert!(hits2 - hits >= 99);

    // Another replica's write: invalidated by Redis' push.
    b.set_watching(&peer, Some(&stream)).await.unwrap();
    let took = until(&a, &peer, "the other replica's write", |r| r.watching.as_ref() == Some(&stream)).await;
    println!("another replica's write seen through the cache after {took:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");

    // Its own write: read back at once, no waiting on the push.
    a.move_peer(&peer, &gw1, &gw2).await.unwrap();
    assert_eq!(a.peer_cached(&peer).await.unwrap().unwrap().node, gw2);
    a.set_watching(&peer, None).await.unwrap();
    assert_eq!(a.peer_cached(&peer).await.unwrap().unwrap().watching, None);
    a.remove_peer(&peer, &gw2).await.unwrap();
    assert_eq!(a.peer_cached(&peer).await.unwrap(), None);

    // Redis restarts empty: nothing cached from before may answer, and new writes show through.
    b.attach(&peer, &gw1, "token").await.unwrap();
    until(&a, &peer, "the record before the restart", |r| r.node == gw1).await;
    redis.restart().await;
    // Redis came back empty: the record cached before must not outlive it (signaling's re-assertion
    // of its peers depends on seeing them gone).
    let start = Instant::now();
    while a.peer_cached(&peer).await.ok().flatten().is_some() {
        assert!(start.elapsed() < Duration::from_secs(5), "a cached record outlived the Redis restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("after a Redis restart, the cached record was gone after {:?}", start.elapsed());
    let start = Instant::now();
    loop {
        if b.attach(&peer, &gw2, "token2").await.is_ok() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "Redis did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = until(&a, &peer, "the record written after the restart", |r| r.node == gw2 && r.token == "token2").await;
    println!("after a Redis restart, the other replica's write seen after {took:?}");
    b.set_watching(&peer, Some(&stream)).await.unwrap();
    until(&a, &peer, "a write after the restart (tracking on again)", |r| r.watching.as_ref() == Some(&stream)).await;
    // And the cache answers again (tracking was turned back on for the new connection).
    let start = Instant::now();
    loop {
        let (hits, _) = a.cache_hits_and_misses();
        for _ in 0..10 {
            a.peer_cached(&peer).await.unwrap();
        }
        if a.cache_hits_and_misses().0 - hits >= 9 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the cache stayed off after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
