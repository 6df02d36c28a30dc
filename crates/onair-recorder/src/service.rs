//! The `onair.v1.Recorder` gRPC implementation over the [`Hub`].

use std::sync::Arc;

use onair_core::StreamId;
use onair_proto::v1 as pb;
use onair_proto::v1::recorder_server::Recorder;
use tonic::{Request, Response, Status};

use crate::error::RecorderError;
use crate::hub::Hub;
use onair_proto::convert::recording_to_pb;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct RecorderService {
    hub: Arc<Hub>,
}

impl RecorderService {
    /// A service over `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

fn stream_id(raw: &str) -> Result<StreamId, RecorderError> {
    raw.parse().map_err(|e| RecorderError::InvalidArgument(format!("stream_id: {e}")))
}

#[tonic::async_trait]
impl Recorder for RecorderService {
    async fn start_recording(
        &self,
        req: Request<pb::StartRecordingRequest>,
    ) -> Result<Response<pb::Recording>, Status> {
        let id = stream_id(&req.get_ref().stream_id)?;
        let stream = self.hub.catalog.live_stream(&id).await?;
        let recording = self.hub.start(stream).await?;
        Ok(Response::new(recording_to_pb(&recording)))
    }

    async fn stop_recording(&self, req: Request<pb::StopRecordingRequest>) -> Result<Response<pb::Recording>, Status> {
        let id = stream_id(&req.get_ref().stream_id)?;
        let recording = self.hub.stop(&id).await?;
        Ok(Response::new(recording_to_pb(&recording)))
    }

    async fn list_active(
        &self,
        _req: Request<pb::ListActiveRequest>,
    ) -> Result<Response<pb::ListActiveResponse>, Status> {
        let recordings = self.hub.list_active().iter().map(recording_to_pb).collect();
        Ok(Response::new(pb::ListActiveResponse { recordings }))
    }
}
