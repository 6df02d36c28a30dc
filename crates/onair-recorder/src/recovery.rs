//! Crash recovery: recordings a recorder that died left in state RECORDING. A non-empty
//! file is a valid (truncated) WebM (see [`crate::mux`]), so it becomes COMPLETE with a
//! note; an empty one becomes FAILED. Two moments close them: this recorder's start (what
//! its previous run left), and a recorder claiming a stream whose previous recorder lost it
//! (the earlier part). Only entries whose file is in this recorder's directory are touched,
//! and at start none whose stream another recorder holds (that recorder writes it now).

use std::time::Duration;

use onair_core::{RecordingState, StreamId};
use tokio_util::sync::CancellationToken;

use crate::catalog::OpenRecording;
use crate::error::RecorderError;
use crate::hub::Hub;

/// The catalog note on a recording closed by recovery.
pub const TRUNCATED: &str = "recorder restarted; recording truncated";
/// The catalog note on an empty recording closed by recovery.
pub const EMPTY: &str = "recorder restarted before any media was written";
/// The catalog note on the part a lost recorder left, closed by the recorder that took over.
pub const TAKEN_OVER: &str = "recorder lost; the recording continues in the next part";
/// The same, when the lost part is empty.
pub const TAKEN_OVER_EMPTY: &str = "recorder lost before any media was written";

/// What recovery does with a file of `size` bytes (`None` = not in this directory).
pub fn verdict(size: Option<u64>) -> Option<(RecordingState, &'static str)> {
    match size? {
        0 => Some((RecordingState::Failed, EMPTY)),
        _ => Some((RecordingState::Complete, TRUNCATED)),
    }
}

/// One pass over the catalog; returns how many recordings were closed.
pub async fn recover(hub: &Hub) -> Result<usize, RecorderError> {
    let mut orphans = Vec::new();
    for open in hub.catalog.recording_now(None).await? {
        if !hub.held_elsewhere(&open.stream).await? {
            orphans.push(open);
        }
    }
    close(hub, orphans, verdict).await
}

/// Closes the parts of `stream` a lost recorder left open (call holding the stream's lease).
pub async fn close_earlier_parts(hub: &Hub, stream: &StreamId) -> Result<usize, RecorderError> {
    let open = hub.catalog.recording_now(Some(stream)).await?;
    close(hub, open, |size| match verdict(size)? {
        (RecordingState::Failed, _) => Some((RecordingState::Failed, TAKEN_OVER_EMPTY)),
        (state, _) => Some((state, TAKEN_OVER)),
    })
    .await
}

/// Closes each entry that is not active here and whose file is in this directory, as `verdict` says.
async fn close(
    hub: &Hub,
    open: Vec<OpenRecording>,
    verdict: impl Fn(Option<u64>) -> Option<(RecordingState, &'static str)>,
) -> Result<usize, RecorderError> {
    let active = hub.active_ids();
    let mut closed = 0;
    for OpenRecording { id, file_name, .. } in open {
        if active.contains(&id) || !onair_core::is_plain_file_name(&file_name) {
            continue;
        }
        let path = hub.config.recordings_dir.join(&file_name);
        let size = std::fs::metadata(&path).ok().filter(|m| m.is_file());
        let size = size.map(|m| m.len());
        let Some((state, note)) = verdict(size) else { continue };
        let bytes = size.unwrap_or(0);
        hub.catalog.close_orphan(&id, state, bytes, note).await?;
        tracing::warn!(recording = %id, file = %file_name, bytes, ?state, note, "closed a recording left open");
        closed += 1;
    }
    Ok(closed)
}

/// Runs [`recover`] until it succeeds, `give_up` passes, or `shutdown` fires.
pub async fn recover_with_retries(hub: &Hub, give_up: Duration, shutdown: &CancellationToken) {
    let deadline = tokio::time::Instant::now() + give_up;
    let mut delay = Duration::from_millis(200);
    loop {
        match recover(hub).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(recordings = n, "crash recovery done");
                }
                return;
            }
            Err(e) if tokio::time::Instant::now() + delay > deadline => {
                tracing::warn!(error = %e, "crash recovery skipped: registry unavailable");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "crash recovery retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(verdict(None), None);
        assert_eq!(verdict(Some(0)), Some((RecordingState::Failed, EMPTY)));
        assert_eq!(verdict(Some(10)), Some((RecordingState::Complete, TRUNCATED)));
    }
}
