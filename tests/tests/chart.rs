//! The helm chart, run: `helm template` with test values, every rendered Deployment and StatefulSet
//! started as podman containers of the image from their container specs alone (tests/src/kube.rs), on a
//! private bridge network with the Services' names resolvable; Redis and the MongoDB-wire server on the
//! host's bridge address; nginx on 127.0.0.1 in front of the two gateway pods; two Chromiums broadcast
//! and watch through it (media through the relay pod), one of the two recorder pods (the lease holder) records to the claim and a
//! gateway serves the file from its read-only mount. A renamed flag or env var, a missing one, or a wrong probe path fails here.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use onair_proto::v1 as pb;
use onair_tests::browser::Browser;
use onair_tests::cluster::Nginx;
use onair_tests::kube::{Network, Pod, Rendered, Workloads};
use onair_tests::procs::{http_get, http_get_at};
use onair_tests::registry::recordings_of;
use onair_tests::ws::Ws;
use onair_tests::{Mongo, Redis, container, wait_until};

const LONG: Duration = Duration::from_secs(30);

async fn sockets(g: &Pod) -> u64 {
    let (_, body) = http_get_at(g.ip, g.port("admin"), "/metrics").await.unwrap();
    onair_tests::procs::metric(&body, "onair_gateway_sockets").unwrap_or(0)
}

#[tokio::test]
async fn the_rendered_chart_runs_as_containers_for_a_two_gateway_browser_session_through_nginx() {
    let image = container::image();
    let (repository, tag) = image.rsplit_once(':').unwrap();
    let mut net = Network::create(image);
    let (redis, mongo) = tokio::join!(Redis::start_at(net.host()), Mongo::start_at(net.host()));

    // Test values: the local image, the host's Redis and MongoDB, fixed replica counts (no HPA here),
    // short grace periods. Everything else is the chart's default.
    let values = format!(
        r#"
image: {{repository: "{repository}", tag: "{tag}", pullPolicy: IfNotPresent}}
redis: {{url: "{redis}"}}
mongodb: {{uri: "{mongo}"}}
resumeSecret: chart-test-resume-secret
shutdownMarginSeconds: 2
gateway: {{autoscaling: {{enabled: false}}, replicaCount: 2, preStopSleepSeconds: 1, terminationGracePeriodSeconds: 10}}
signaling: {{autoscaling: {{enabled: false}}, replicaCount: 1, preStopSleepSeconds: 1, terminationGracePeriodSeconds: 10}}
registry: {{replicaCount: 1, preStopSleepSeconds: 1, terminationGracePeriodSeconds: 10}}
recorder: {{preStopSleepSeconds: 1, terminationGracePeriodSeconds: 15}}
relay: {{replicaCount: 1, hostNetwork: false, preStopSleepSeconds: 1, terminationGracePeriodSeconds: 10}}
"#,
        redis = redis.url(),
        mongo = mongo.uri(),
    );
    let rendered = Rendered::helm_template("onair", &values);
    let start = Instant::now();
    let mut w = Workloads::start(&rendered, &mut net, "onair");
    for pod in &mut w.pods {
        pod.wait_ready(LONG).await;
    }
    println!("{} pods ready (readinessProbe) {:.1?} after the first start", w.pods.len(), start.elapsed());
    for pod in &w.pods {
        assert!(pod.probe("livenessProbe").await, "{}: livenessProbe fails on a ready pod", pod.name);
    }
    let components: Vec<&str> = w.pods.iter().map(|p| p.component.as_str()).collect();
    assert_eq!(components, ["recorder", "recorder", "gateway", "gateway", "signaling", "registry", "relay"]);

    let gateways = w.of("gateway");
    let upstreams: Vec<String> = gateways.iter().map(|g| format!("{}:{}", g.ip, g.port("http"))).collect();
    let nginx = Nginx::start_upstreams(&upstreams).await;
    let base = format!("http://127.0.0.1:{}", nginx.port);
    assert_eq!(http_get(nginx.port, "/broadcast").await.0, 200);
    let mut ws = Ws::connect(nginx.port).await;
    ws.ping().await;
    ws.close().await;
    wait_until(LONG, "the probe socket to close", || async {
        sockets(gateways[0]).await + sockets(gateways[1]).await == 0
    })
    .await;

    // Broadcast and watch on different gateways (least_conn), through nginx.
    let b = Browser::start("chart-broadcaster").await;
    let sid = b.go_live(&base, "Chart E2E").await;
    let live_at = Instant::now();
    let v = Browser::start("chart-watcher").await;
    v.goto(&format!("{base}/watcher")).await;
    v.wait_for("the watcher socket", LONG, "return document.getElementById('connection').dataset.state === 'online'")
        .await;
    let per_gateway = (sockets(gateways[0]).await, sockets(gateways[1]).await);
    assert_eq!(per_gateway, (1, 1), "broadcaster and watcher should be on different gateway pods");
    v.wait_for(
        "the stream in the live list",
        LONG,
        "return document.querySelectorAll('#streams [data-stream-id]').length > 0",
    )
    .await;
    v.eval(
        "const p = document.getElementById('player'); window.__first = false; \
         const cb = () => { if (p.videoWidth > 0) window.__first = true; else p.requestVideoFrameCallback(cb); }; \
         p.requestVideoFrameCallback(cb); const li = document.querySelector('#streams [data-stream-id]'); \
         (li.querySelector('button') || li).click(); return true",
    )
    .await;
    v.wait_for("the first video frame across gateways", LONG, "return window.__first").await;
    // Through the relay pod: it forwards to the watcher and the recorder (one of the two replicas:
    // the one holding the stream's lease).
    let relay = w.of("relay")[0];
    wait_until(LONG, "the relay pod to forward to the watcher and the recorder", || async {
        let (_, body) = http_get_at(relay.ip, relay.port("admin"), "/metrics").await.unwrap();
        onair_tests::procs::metric(&body, "onair_relay_subscribers").unwrap_or(0) == 2
    })
    .await;

    // The recorder pod (ONAIR_RTC_IP = its pod IP) records onto the claim; a gateway serves the file
    // from its read-only mount.
    let reg = w.of("registry")[0];
    let reg_url = format!("http://{}:{}", reg.ip, reg.port("grpc"));
    wait_until(LONG, "the recording to hold media", || async {
        recordings_of(&reg_url, &sid).await.first().is_some_and(|r| r.bytes > 20_000)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(live_at.elapsed())).await;
    b.stop_broadcast().await;
    let stopped = Instant::now();
    let rec = loop {
        let recs = recordings_of(&reg_url, &sid).await;
        if let Some(r) = recs.iter().find(|r| r.state() == pb::RecordingState::Complete) {
            break r.clone();
        }
        assert!(stopped.elapsed() < LONG, "the recording did not complete: {recs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let claim = w.claims.values().next().expect("the chart claims a recordings volume");
    assert!(claim.join(&rec.file_name).exists(), "{} not on the claim", rec.file_name);
    let all = recordings_of(&reg_url, &sid).await;
    assert_eq!(all.len(), 1, "one recording of the stream across both recorder replicas: {all:?}");
    let (status, _) = http_get(nginx.port, &format!("/recordings/{}.webm", rec.id)).await;
    assert_eq!(status, 200, "a gateway pod serves the recording from the shared claim");
    drop((b, v));

    // Deleting the pods as a kubelet does (preStop, SIGTERM, SIGKILL after the grace period): every one
    // exits 0 in time. Front to back: gateways and the recorder first, the registry last.
    for pod in &mut w.pods {
        let (code, took) = pod.delete().await;
        assert_eq!(
            code,
            0,
            "pod {} exited {code} after {took:?} (137: killed at the end of its grace period):\n{}",
            pod.name,
            pod.proc.output()
        );
        assert!(took < pod.grace(), "pod {} took {took:?} to stop", pod.name);
    }
}
