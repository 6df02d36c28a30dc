//! The `onair.v1.StreamRegistry` gRPC implementation.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream as FutStream;
use onair_core::{Bus, BusItem, Recording, RecordingState, Stream, StreamEvent, StreamState, TITLE_MAX_CHARS};
use onair_proto::v1 as pb;
use onair_proto::v1::stream_registry_server::StreamRegistry;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::convert::{parse_id, recording_state_in, recording_to_pb, stream_state_filter, stream_to_pb};
use crate::error::RegistryError;
use crate::feed;
use crate::page::{self, paginate};
use crate::quota::{CreateRate, LimitLabels, Limited, Limits};
use crate::store::{Cursor, RecordingPatch, StreamStore};

/// Most live streams a snapshot carries.
pub const SNAPSHOT_MAX: usize = 10_000;

/// The registry service: stateless apart from its store and bus handles.
#[derive(Clone)]
pub struct RegistryService {
    store: Arc<dyn StreamStore>,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
    limits: Limits,
    create_rate: Arc<CreateRate>,
    limited: Limited,
}

impl std::fmt::Debug for RegistryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryService").finish_non_exhaustive()
    }
}

impl RegistryService {
    /// A service over `store`, publishing changes on `bus`, within `limits` (refusals counted in
    /// `limited`); watch streams end when `shutdown` fires.
    pub fn new(
        store: Arc<dyn StreamStore>,
        bus: Arc<dyn Bus>,
        limits: Limits,
        limited: Limited,
        shutdown: CancellationToken,
    ) -> Self {
        let create_rate = Arc::new(CreateRate::new(limits.creates_per_minute));
        Self { store, bus, shutdown, limits, create_rate, limited }
    }

    /// Counts a create against its caller's rate: developers (admin tokens) are limited per
    /// subject; the cluster's own services (signaling, creating for browsers whose publish grants
    /// are limited per owner) and an open registry are not.
    fn admit_create(&self, caller: Option<&onair_auth::Caller>) -> Result<(), Status> {
        let Some(onair_auth::Caller::Subject(subject)) = caller else { return Ok(()) };
        self.create_rate.admit(subject, std::time::Instant::now()).map_err(|wait| {
            self.limited.get_or_create(&LimitLabels { limit: "creates_per_minute" }).inc();
            Status::resource_exhausted(format!(
                "{subject:?} created {} streams in the last minute, the most one caller may \
                 (--max-creates-per-minute); retry in {wait} s",
                self.limits.creates_per_minute
            ))
        })
    }
}

fn validate_title(raw: &str) -> Result<String, RegistryError> {
    let title = raw.trim();
    if title.is_empty() {
        return Err(RegistryError::InvalidArgument("title must not be empty".to_owned()));
    }
    if title.chars().count() > TITLE_MAX_CHARS {
        return Err(RegistryError::InvalidArgument(format!("title is longer than {TITLE_MAX_CHARS} characters")));
    }
    if title.chars().any(char::is_control) {
        return Err(RegistryError::InvalidArgument("title must not contain control characters".to_owned()));
    }
    Ok(title.to_owned())
}

/// Longest owner (a token subject) the registry keeps.
const OWNER_MAX_CHARS: usize = 200;

fn validate_owner(raw: &str) -> Result<String, RegistryError> {
    if raw.chars().count() > OWNER_MAX_CHARS {
        return Err(RegistryError::InvalidArgument(format!("owner is longer than {OWNER_MAX_CHARS} characters")));
    }
    if raw.chars().any(char::is_control) {
        return Err(RegistryError::InvalidArgument("owner must not contain control characters".to_owned()));
    }
    Ok(raw.to_owned())
}

fn stream_cursor(s: &Stream) -> Cursor {
    Cursor { started_at: s.started_at, id: s.id.to_string() }
}

/// Every live stream, newest first, as a snapshot event.
async fn snapshot(store: &dyn StreamStore) -> Result<pb::StreamEvent, RegistryError> {
    let mut out = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let batch = store.list_streams(Some(StreamState::Live), cursor.as_ref(), page::MAX_PAGE_SIZE).await?;
        let done = batch.len() < page::MAX_PAGE_SIZE || out.len() + batch.len() >= SNAPSHOT_MAX;
        cursor = batch.last().map(stream_cursor);
        out.extend(batch.iter().map(stream_to_pb));
        if done {
            break;
        }
    }
    Ok(pb::StreamEvent { event: Some(pb::stream_event::Event::Snapshot(pb::Snapshot { streams: out })) })
}

fn event_to_pb(e: &StreamEvent) -> pb::StreamEvent {
    use pb::stream_event::Event;
    let event = match e {
        StreamEvent::Started(s) => Event::Started(stream_to_pb(s)),
        StreamEvent::Updated(s) => Event::Updated(stream_to_pb(s)),
        StreamEvent::Ended(s) => Event::Ended(stream_to_pb(s)),
    };
    pb::StreamEvent { event: Some(event) }
}

type EventStream = Pin<Box<dyn FutStream<Item = Result<pb::StreamEvent, Status>> + Send>>;

#[tonic::async_trait]
impl StreamRegistry for RegistryService {
    async fn create_stream(&self, req: Request<pb::CreateStreamRequest>) -> Result<Response<pb::Stream>, Status> {
        self.admit_create(req.extensions().get::<onair_auth::Caller>())?;
        let req = req.into_inner();
        let id = match req.id.as_str() {
            "" => onair_core::StreamId::generate(),
            given => parse_id("id", given)?,
        };
        let stream = Stream {
            id,
            title: validate_title(&req.title)?,
            state: StreamState::Live,
            broadcaster: parse_id("broadcaster", &req.broadcaster)?,
            node: parse_id("node", &req.node)?,
            started_at: onair_core::time::now_ms(),
            ended_at: None,
            viewers: 0,
            owner: validate_owner(&req.owner)?,
        };
        match self.store.insert_stream(&stream, self.limits.live_per_subject).await.map_err(RegistryError::from) {
            Err(e @ RegistryError::Exhausted(_)) => {
                self.limited.get_or_create(&LimitLabels { limit: "live_per_subject" }).inc();
                tracing::info!(owner = %stream.owner, "live streams per subject: limit reached");
                return Err(e.into());
            }
            other => other?,
        }
        tracing::info!(stream_id = %stream.id, broadcaster = %stream.broadcaster, "stream live");
        let out = stream_to_pb(&stream);
        feed::publish(&self.bus, &StreamEvent::Started(stream)).await;
        Ok(Response::new(out))
    }

    async fn get_stream(&self, req: Request<pb::GetStreamRequest>) -> Result<Response<pb::Stream>, Status> {
        let id: onair_core::StreamId = parse_id("id", &req.get_ref().id)?;
        match self.store.get_stream(&id).await.map_err(RegistryError::from)? {
            Some(s) => Ok(Response::new(stream_to_pb(&s))),
            None => Err(RegistryError::NotFound(format!("stream {id}")).into()),
        }
    }

    async fn list_streams(
        &self,
        req: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        let req = req.into_inner();
        let state = stream_state_filter(req.state)?;
        let limit = page::page_size(req.page_size)?;
        let cursor = page::decode(&req.page_token)?;
        let items = self.store.list_streams(state, cursor.as_ref(), limit + 1).await.map_err(RegistryError::from)?;
        let (items, next_page_token) = paginate(items, limit, stream_cursor);
        Ok(Response::new(pb::ListStreamsResponse {
            streams: items.iter().map(stream_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn end_stream(&self, req: Request<pb::EndStreamRequest>) -> Result<Response<pb::Stream>, Status> {
        let id: onair_core::StreamId = parse_id("id", &req.get_ref().id)?;
        let now = onair_core::time::now_ms();
        match self.store.end_stream(&id, now).await.map_err(RegistryError::from)? {
            Some((s, changed)) => {
                let out = stream_to_pb(&s);
                if changed {
                    tracing::info!(stream_id = %id, "stream ended");
                    feed::publish(&self.bus, &StreamEvent::Ended(s)).await;
                }
                Ok(Response::new(out))
            }
            None => Err(RegistryError::NotFound(format!("stream {id}")).into()),
        }
    }

    async fn set_viewers(&self, req: Request<pb::SetViewersRequest>) -> Result<Response<pb::Stream>, Status> {
        let req = req.into_inner();
        let id: onair_core::StreamId = parse_id("id", &req.id)?;
        match self.store.set_viewers(&id, req.viewers).await.map_err(RegistryError::from)? {
            Some((s, changed)) => {
                let out = stream_to_pb(&s);
                if changed {
                    feed::publish(&self.bus, &StreamEvent::Updated(s)).await;
                }
                Ok(Response::new(out))
            }
            None => Err(RegistryError::NotFound(format!("stream {id}")).into()),
        }
    }

    type WatchStreamsStream = EventStream;

    async fn watch_streams(
        &self,
        _req: Request<pb::WatchStreamsRequest>,
    ) -> Result<Response<Self::WatchStreamsStream>, Status> {
        // Subscribe before reading the snapshot so no change falls between the two.
        let mut sub = self.bus.subscribe(feed::CHANNEL).await.map_err(|e| {
            tracing::warn!(error = %e, "change feed unavailable");
            Status::unavailable("the change feed is unavailable; retry later")
        })?;
        let first = snapshot(self.store.as_ref()).await?;
        let (tx, rx) = mpsc::channel::<Result<pb::StreamEvent, Status>>(256);
        let _ = tx.send(Ok(first)).await;
        let store = Arc::clone(&self.store);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tx.closed() => break,
                    item = sub.recv() => item,
                };
                let out = match item {
                    Some(BusItem::Message(payload)) => match feed::decode(&payload) {
                        Some(e) => Ok(event_to_pb(&e)),
                        None => continue,
                    },
                    Some(BusItem::Gap) => {
                        tracing::info!("change feed gap; resending snapshot");
                        snapshot(store.as_ref()).await.map_err(Status::from)
                    }
                    None => Err(Status::unavailable("change feed closed")),
                };
                let fatal = out.is_err();
                if tx.send(out).await.is_err() || fatal {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn add_recording(&self, req: Request<pb::AddRecordingRequest>) -> Result<Response<pb::Recording>, Status> {
        let Some(r) = req.into_inner().recording else {
            return Err(RegistryError::InvalidArgument("recording is required".to_owned()).into());
        };
        let state = recording_state_in(r.state)?.unwrap_or(RecordingState::Recording);
        if !onair_core::is_plain_file_name(&r.file_name) {
            return Err(RegistryError::InvalidArgument("file_name must be a plain file name".to_owned()).into());
        }
        let recording = Recording {
            id: parse_id("recording.id", &r.id)?,
            stream_id: parse_id("recording.stream_id", &r.stream_id)?,
            title: r.title,
            file_name: r.file_name,
            started_at: r.started_at.as_ref().map_or_else(onair_core::time::now_ms, crate::convert::millis),
            duration_ms: r.duration_ms,
            bytes: r.bytes,
            video_codec: r.video_codec,
            audio_codec: r.audio_codec,
            state,
            error: r.error,
        };
        self.store.insert_recording(&recording).await.map_err(RegistryError::from)?;
        Ok(Response::new(recording_to_pb(&recording)))
    }

    async fn update_recording(
        &self,
        req: Request<pb::UpdateRecordingRequest>,
    ) -> Result<Response<pb::Recording>, Status> {
        let req = req.into_inner();
        let id: onair_core::RecordingId = parse_id("id", &req.id)?;
        if req.file_name.as_deref().is_some_and(|f| !onair_core::is_plain_file_name(f)) {
            return Err(RegistryError::InvalidArgument("file_name must be a plain file name".to_owned()).into());
        }
        let patch = RecordingPatch {
            duration_ms: req.duration_ms,
            bytes: req.bytes,
            video_codec: req.video_codec,
            audio_codec: req.audio_codec,
            state: recording_state_in(req.state)?,
            error: req.error,
            file_name: req.file_name,
        };
        match self.store.update_recording(&id, &patch).await.map_err(RegistryError::from)? {
            Some(r) => Ok(Response::new(recording_to_pb(&r))),
            None => Err(RegistryError::NotFound(format!("recording {id}")).into()),
        }
    }

    async fn list_recordings(
        &self,
        req: Request<pb::ListRecordingsRequest>,
    ) -> Result<Response<pb::ListRecordingsResponse>, Status> {
        let req = req.into_inner();
        let stream = if req.stream_id.is_empty() {
            None
        } else {
            Some(parse_id::<onair_core::StreamId>("stream_id", &req.stream_id)?)
        };
        let limit = page::page_size(req.page_size)?;
        let cursor = page::decode(&req.page_token)?;
        let items = self
            .store
            .list_recordings(stream.as_ref(), cursor.as_ref(), limit + 1)
            .await
            .map_err(RegistryError::from)?;
        let (items, next_page_token) =
            paginate(items, limit, |r| Cursor { started_at: r.started_at, id: r.id.to_string() });
        Ok(Response::new(pb::ListRecordingsResponse {
            recordings: items.iter().map(recording_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn get_recording(&self, req: Request<pb::GetRecordingRequest>) -> Result<Response<pb::Recording>, Status> {
        let id: onair_core::RecordingId = parse_id("id", &req.get_ref().id)?;
        match self.store.get_recording(&id).await.map_err(RegistryError::from)? {
            Some(r) => Ok(Response::new(recording_to_pb(&r))),
            None => Err(RegistryError::NotFound(format!("recording {id}")).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(validate_title("  hi ").ok().as_deref(), Some("hi"));
        assert!(validate_title("   ").is_err());
        assert!(validate_title(&"é".repeat(200)).is_ok());
        assert!(validate_title(&"é".repeat(201)).is_err());
        assert!(validate_title("a\u{7}b").is_err());
    }
}
