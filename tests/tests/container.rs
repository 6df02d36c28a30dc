//! The runtime image, run: deploy/Dockerfile built by deploy/image.sh (podman), the all-in-one
//! container as uid 10001 on a read-only root filesystem with its data on a volume. Fails (never
//! skips) without podman: `make deps` installs it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use onair_proto::v1 as pb;
use onair_tests::browser::Browser;
use onair_tests::container::{Container, UID, Volume};
use onair_tests::registry::{assert_fits, longest_since, recording_started, recordings_of, shortest_since};
use onair_tests::ws::Ws;
use onair_tests::{media, procs::http_get, wait_until};

const LONG: Duration = Duration::from_secs(20);

/// Reads `/proc/PID/status` of the container's main process on the host: its real uid.
fn host_uid_of(c: &Container) -> u32 {
    let pid = c.inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_all_in_one_image_serves_everything_as_non_root_on_a_read_only_root() {
    let volume = Volume::new("serve");
    onair_tests::container::image();
    let start = Instant::now();
    let mut c = Container::run("serve", &volume, &[]).await;
    c.onair.wait_ready().await;
    println!("cold start: podman run -> /readyz 200 in {:.2?}", start.elapsed());

    // Non-root, read-only root, nothing to escalate with.
    assert_eq!(host_uid_of(&c), UID, "the entrypoint must run as the image's user");
    assert_eq!(c.inspect("{{.Config.User}}"), format!("{UID}:{UID}"));
    let touch = c.exec(&["touch", "/usr/local/bin/x"]);
    assert!(!touch.status.success(), "the root filesystem must be read-only");
    assert!(String::from_utf8_lossy(&touch.stderr).contains("Read-only file system"), "{touch:?}");

    // Pages, assets, the API.
    for page in ["/", "/watcher", "/broadcast", "/recordings"] {
        let (status, body) = c.onair.http_get(page).await;
        assert_eq!(status, 200, "GET {page}");
        assert!(body.contains("<html"), "GET {page} is not a page: {body:.200}");
    }
    assert_eq!(c.onair.http_get("/assets/ws.js").await.0, 200);
    let (status, body) = c.onair.http_get("/api/streams").await;
    assert_eq!(status, 200, "{body}");

    // A WebSocket: welcome, streams, ping/pong.
    let mut ws = Ws::connect(c.onair.http).await;
    assert!(!ws.peer_id.is_empty());
    ws.ping().await;
    ws.close().await;

    // Admin: liveness, readiness, metrics.
    assert_eq!(c.onair.admin_get("/healthz").await.0, 200);
    assert_eq!(c.onair.admin_get("/readyz").await, (200, "ready\n".to_owned()));
    let (status, metrics) = c.onair.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("onair_grpc_server_handled_total"), "{metrics:.500}");
    // The image's own HEALTHCHECK works in the image (bash, no curl), pointed at this admin port.
    let mut hc = onair_tests::container::healthcheck();
    let script = hc.last_mut().unwrap();
    assert!(script.contains("/127.0.0.1/9090"), "the HEALTHCHECK no longer probes the admin port 9090: {script}");
    *script = script.replace("/127.0.0.1/9090", &format!("/127.0.0.1/{}", c.onair.admin));
    let ok = c.exec(&hc.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok.status.success(), "the image's HEALTHCHECK fails against a healthy container: {ok:?}");
    // ... and fails against a port that does not answer it with 200 (the gRPC port).
    *hc.last_mut().unwrap() = hc.last().unwrap().replace(&format!("/{}", c.onair.admin), &format!("/{}", c.onair.grpc));
    let bad = c.exec(&hc.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!bad.status.success(), "the HEALTHCHECK passes against the gRPC port: {bad:?}");

    // State went to the volume, owned by the image's user.
    assert!(volume.path.join("registry").is_dir(), "no registry journal directory on the volume: {:?}", volume.files());
    let meta = std::fs::metadata(volume.path.join("recordings")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), UID);

    // SIGTERM with nothing to drain: a clean exit, well within the grace period.
    let (code, took) = c.stop(Duration::from_secs(10)).await;
    assert_eq!(code, 0, "exit code after SIGTERM:\n{}", c.onair.proc.output());
    assert!(took < Duration::from_secs(5), "stopping an idle container took {took:?}");
}

#[tokio::test]
async fn a_browser_broadcast_through_the_container_is_recorded_on_its_volume_and_finalized_on_sigterm() {
    const GRACE: Duration = Duration::from_secs(10);
    let volume = Volume::new("record");
    let grace = format!("{}s", GRACE.as_secs());
    let args = ["--store", "embedded", "--shutdown-grace", &grace];
    let mut c = Container::run("record", &volume, &args).await;
    c.onair.wait_ready().await;

    let base = format!("http://127.0.0.1:{}", c.onair.http);
    let b = Browser::start("container-broadcaster").await;
    let sid = b.go_live(&base, "From the container").await;
    let live_at = Instant::now();
    let reg = c.onair.grpc_url();
    wait_until(LONG, "the recording to hold media", || async {
        recordings_of(&reg, &sid).await.first().is_some_and(|r| r.bytes > 20_000)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(live_at.elapsed())).await;

    // Only the volume is written: the recording is there, /tmp (the only other writable place) is empty.
    let on_volume = volume.files();
    assert!(
        on_volume.iter().any(|f| f.starts_with("recordings") && f.extension().is_some_and(|e| e == "webm")),
        "{on_volume:?}"
    );
    let tmp = c.exec(&["find", "/tmp", "-mindepth", "1"]);
    assert!(tmp.status.success() && tmp.stdout.is_empty(), "the container wrote to /tmp: {tmp:?}");

    // SIGTERM mid-broadcast: exits 0 within the grace period, having finalized the file.
    // The media goes on until the recorder stops, so the longest bound is taken after the stop.
    let started = recording_started(&reg, &sid).await;
    let least = shortest_since(live_at);
    let (code, took) = c.stop(GRACE).await;
    let most = longest_since(started);
    let log = c.onair.proc.output();
    assert_eq!(code, 0, "exit code {code} after SIGTERM ({took:?}; 137 = killed after the grace period):\n{log}");
    assert!(took < GRACE, "stopping took {took:?}, the grace period is {GRACE:?}");
    // A progress update may time out under load (the final state overwrites it); the final one must not.
    assert!(!log.contains("final recording state not stored"), "the final recording state was lost:\n{log}");
    drop(b);

    let webm: Vec<_> = volume.files().into_iter().filter(|f| f.starts_with("recordings")).collect();
    assert_eq!(webm.len(), 1, "exactly one file in recordings/ (no temporary left behind): {webm:?}");
    let path = volume.path.join(&webm[0]);
    let probe = media::probe(&path);
    assert_eq!(media::codecs(&probe), vec!["opus", "vp8"], "{probe}");
    let dur = media::duration(&probe).expect("a finalized file has a duration");
    println!("stopped in {took:.2?}");
    assert_fits(dur, (least, most));
    let (errors, frames) = media::decode(&path);
    assert!(errors.trim().is_empty(), "ffmpeg decode errors: {errors}");
    assert!(frames > 30, "only {frames} video frames decoded");
    drop(c);

    // The catalog on the volume agrees: a new container on it lists the recording COMPLETE.
    let again = Container::run("record-again", &volume, &["--store", "embedded"]).await;
    let recs = recordings_of(&again.onair.grpc_url(), &sid).await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0].state(), pb::RecordingState::Complete, "{:?}", recs[0]);
    assert_eq!(http_get(again.onair.http, &format!("/recordings/{}.webm", recs[0].id)).await.0, 200);
}
