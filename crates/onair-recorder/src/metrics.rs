//! Recorder metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// Recorder metrics.
#[derive(Debug, Clone, Default)]
pub struct RecorderMetrics {
    /// Recordings in progress.
    pub active: Gauge,
    /// Bytes written to recording files.
    pub bytes_written: Counter,
    /// RTP packets received from broadcasters.
    pub rtp_packets: Counter,
    /// Recordings started.
    pub started: Counter,
    /// Recordings finished COMPLETE.
    pub completed: Counter,
    /// Recordings finished FAILED.
    pub failed: Counter,
    /// Streams not recorded because the recorder was at its maximum.
    pub skipped: Counter,
    /// Streams not recorded because the recordings volume was below --min-free-mib.
    pub refused_disk_full: Counter,
    /// New parts started because a part lost its media connection while the stream stayed live.
    pub recorded_on: Counter,
}

impl RecorderMetrics {
    /// Registers into `m`.
    pub fn register(&self, m: &onair_ops::Metrics) {
        m.register("recorder_active_recordings", "Recordings in progress", self.active.clone());
        m.register("recorder_bytes_written", "Bytes written to recording files", self.bytes_written.clone());
        m.register("recorder_rtp_packets", "RTP packets received from broadcasters", self.rtp_packets.clone());
        m.register("recorder_recordings_started", "Recordings started", self.started.clone());
        m.register("recorder_recordings_completed", "Recordings finalized as COMPLETE", self.completed.clone());
        m.register("recorder_recordings_failed", "Recordings finalized as FAILED", self.failed.clone());
        m.register(
            "recorder_refused_disk_full",
            "Streams not recorded: the recordings volume had less than --min-free-mib free",
            self.refused_disk_full.clone(),
        );
        m.register(
            "recorder_recorded_on",
            "New parts started after a part lost its media connection while the stream stayed live",
            self.recorded_on.clone(),
        );
        m.register("recorder_recordings_skipped", "Streams not recorded: at max concurrent", self.skipped.clone());
    }
}
