//! Registry gRPC client helpers.

use std::time::Duration;

use onair_proto::v1 as pb;
use onair_proto::v1::stream_registry_client::StreamRegistryClient;
use tonic::transport::Channel;

/// Connects a registry client to `url`, retrying for up to 10 s.
pub async fn client(url: &str) -> StreamRegistryClient<Channel> {
    let start = std::time::Instant::now();
    loop {
        match StreamRegistryClient::connect(url.to_owned()).await {
            Ok(c) => return c,
            Err(e) if start.elapsed() > Duration::from_secs(10) => panic!("registry at {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The recordings of `stream` in the registry at `url` (empty while the registry does not answer).
pub async fn recordings_of(url: &str, stream: &str) -> Vec<pb::Recording> {
    let mut c = client(url).await;
    let req = pb::ListRecordingsRequest { stream_id: stream.into(), ..Default::default() };
    c.list_recordings(req).await.map(|r| r.into_inner().recordings).unwrap_or_default()
}

/// The first recording of `stream` for which `done` holds, waiting up to `within`.
pub async fn recording_where(
    url: &str,
    stream: &str,
    within: Duration,
    done: impl Fn(&pb::Recording) -> bool,
) -> pb::Recording {
    let start = std::time::Instant::now();
    loop {
        let recs = recordings_of(url, stream).await;
        if let Some(r) = recs.iter().find(|r| done(r)) {
            return r.clone();
        }
        assert!(start.elapsed() < within, "no such recording of {stream} within {within:?}: {recs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first recording of `stream` that is no longer RECORDING (COMPLETE or FAILED), waiting up to
/// `within`.
pub async fn finished_recording(url: &str, stream: &str, within: Duration) -> pb::Recording {
    recording_where(url, stream, within, |r| r.state() != pb::RecordingState::Recording).await
}

/// When the recorder took `stream`: the start of its first catalog entry.
pub async fn recording_started(url: &str, stream: &str) -> std::time::SystemTime {
    let rec = recordings_of(url, stream).await.remove(0);
    let ts = rec.started_at.unwrap_or_default();
    std::time::UNIX_EPOCH + Duration::new(ts.seconds.try_into().unwrap(), ts.nanos.try_into().unwrap())
}

/// The longest a recording that started at `started` and has stopped by now may be, in seconds.
pub fn longest_since(started: std::time::SystemTime) -> f64 {
    std::time::SystemTime::now().duration_since(started).unwrap_or_default().as_secs_f64() + 0.5
}

/// The shortest a recording of a broadcast that went live at `live_at` and stops now may be, in
/// seconds: the time since then minus the media set-up (ICE, DTLS, first keyframe) a loaded machine
/// may add after it.
pub fn shortest_since(live_at: std::time::Instant) -> f64 {
    live_at.elapsed().as_secs_f64() - 3.0
}

/// How long a file of a broadcast stopped now may be, in seconds: at most the time since the
/// recorder took the stream (its catalog entry), at least [`shortest_since`] `live_at`.
pub async fn duration_bounds(url: &str, stream: &str, live_at: std::time::Instant) -> (f64, f64) {
    let started = recording_started(url, stream).await;
    (shortest_since(live_at), longest_since(started))
}

pub fn assert_fits(dur: f64, (least, most): (f64, f64)) {
    println!("file {dur:.2} s; expected {least:.2} ..= {most:.2} s");
    assert!(dur >= least && dur <= most, "file is {dur:.2} s; expected {least:.2} ..= {most:.2} s");
}
