//! WHIP (RFC 9725) ingest and WHEP playback over HTTP. The gateway keeps no session: it checks
//! the request (type, size, grant), relays it through signaling to a relay node as a
//! `SessionRequest` and answers with the relay's `SessionReply`. The session URL
//! (`/session/<relay node>~<peer>~<secret>`) names the relay that holds the session, so a PATCH
//! or DELETE works through any gateway.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use onair_core::PeerId;
use onair_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::AppState;
use crate::access::SocketAccess;
use crate::protocol::ErrorCode;

/// Largest SDP offer or sdpfrag accepted (browsers' offers are a few KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// How long a request waits for the relay's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// New sessions (WHIP/WHEP POSTs) one client address may open per second, sustained, and in a burst.
const POSTS_PER_SEC: f64 = 2.0;
const POST_BURST: f64 = 10.0;
/// Addresses tracked at most; beyond, those whose bucket is full again are forgotten.
const TRACKED: usize = 10_000;

/// A token bucket per client address for session-creating POSTs: each one costs the relay a peer
/// and signaling a stream, so a flood from one address is refused with 429 before any of that.
#[derive(Debug, Default)]
pub struct PostRate(Mutex<HashMap<std::net::IpAddr, (f64, std::time::Instant)>>);

impl PostRate {
    /// Whether `ip` may open a session at `now`; else how many seconds until it may.
    pub fn check(&self, ip: std::net::IpAddr, now: std::time::Instant) -> Result<(), u64> {
        let mut all = self.0.lock();
        if all.len() >= TRACKED {
            all.retain(|_, (tokens, last)| {
                *tokens + now.duration_since(*last).as_secs_f64() * POSTS_PER_SEC < POST_BURST
            });
        }
        let (tokens, last) = all.entry(ip).or_insert((POST_BURST, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * POSTS_PER_SEC).min(POST_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / POSTS_PER_SEC).ceil().max(1.0) as u64)
        }
    }
}

/// Requests waiting for their relay's reply, by request id.
#[derive(Debug, Default)]
pub struct Waiting(Mutex<HashMap<String, oneshot::Sender<pb::SessionReply>>>);

impl Waiting {
    /// Hands `reply` to the request waiting for it; false if none waits (it timed out).
    pub fn complete(&self, reply: pb::SessionReply) -> bool {
        match self.0.lock().remove(&reply.id) {
            Some(tx) => tx.send(reply).is_ok(),
            None => false,
        }
    }

    /// Fails request `id` with signaling's error `code`, if it waits.
    pub fn fail(&self, id: &str, code: &str, message: &str) -> bool {
        let status = u32::from(ErrorCode::from_wire(code).http_status());
        let reply = pb::SessionReply { id: id.to_owned(), status, message: message.to_owned(), ..Default::default() };
        self.complete(reply)
    }
}

fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link, Accept-Patch, Onair-Stream-Id"),
    );
    r
}

/// A refused request: its status and the message the client sees.
#[derive(Debug)]
pub struct Refusal(u16, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

fn refuse(status: u16, message: &str) -> Refusal {
    Refusal(status, message.to_owned())
}

fn error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut r = (status, format!("{message}\n")).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    }
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    cors(r)
}

/// `OPTIONS` on the WHIP/WHEP endpoints and sessions: what they accept (and CORS preflight).
pub async fn options() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static("OPTIONS, POST, PATCH, DELETE"));
    h.insert("accept-post", HeaderValue::from_static(SDP));
    h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("OPTIONS, POST, PATCH, DELETE"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Authorization, Content-Type, If-Match"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    cors(r)
}

/// The body as text if its type is `want`; else the response to send.
fn body_of(headers: &HeaderMap, body: &Bytes, want: &str) -> Result<String, Refusal> {
    let ty = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = ty.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(want) {
        return Err(refuse(415, &format!("the body must be {want} (got {essence:?})")));
    }
    let text = std::str::from_utf8(body).map_err(|_| refuse(400, "the body is not UTF-8 text"))?;
    if text.trim().is_empty() {
        return Err(refuse(400, "the body is empty"));
    }
    Ok(text.to_owned())
}

/// The caller's grants from `Authorization: Bearer` (auth off: everything).
fn access(state: &AppState, headers: &HeaderMap) -> SocketAccess {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = auth.and_then(onair_auth::bearer).map(str::trim).filter(|t| !t.is_empty());
    SocketAccess::from_token(state.tokens.as_deref(), token)
}

fn refused((code, message): (ErrorCode, String)) -> Refusal {
    let message = message.replace("open this page with #access_token=<token>", "send Authorization: Bearer <token>");
    Refusal(if code == ErrorCode::Unauthenticated { 401 } else { 403 }, message)
}

/// Sends `req` to its relay through signaling and waits for the reply.
async fn ask(state: &AppState, mut req: pb::SessionRequest) -> Result<Response, Refusal> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    req.id.clone_from(&id);
    let (tx, rx) = oneshot::channel();
    state.hub.waiting.0.lock().insert(id.clone(), tx);
    state.hub.to_signaling(pb::node_message::Msg::SessionRequest(req));
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(reply)) => {
            if reply.status == 201 && !reply.stream_id.is_empty() {
                tracing::info!(stream_id = %reply.stream_id, "WHIP/WHEP session created");
            }
            Ok(respond(state, reply))
        }
        _ => {
            state.hub.waiting.0.lock().remove(&id);
            Err(refuse(503, "no answer from the relay in time; retry"))
        }
    }
}

/// `Link: <url>; rel="ice-server"` headers for the ICE servers a client should use (TURN with
/// time-limited credentials), as RFC 9725 §4.6 describes.
fn ice_links(state: &AppState) -> Vec<HeaderValue> {
    let servers = state.hub.cfg.ice.for_peer(&PeerId::generate(), SystemTime::now());
    let mut links = Vec::new();
    for s in servers {
        let urls: Vec<&str> =
            s["urls"].as_array().map(|a| a.iter().filter_map(|u| u.as_str()).collect()).unwrap_or_default();
        for url in urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(u), Some(c)) = (s["username"].as_str(), s["credential"].as_str()) {
                link.push_str(&format!("; username=\"{u}\"; credential=\"{c}\"; credential-type=\"password\""));
            }
            if let Ok(v) = HeaderValue::from_str(&link) {
                links.push(v);
            }
        }
    }
    links
}

/// Turns a relay's reply into the HTTP response.
fn respond(state: &AppState, reply: pb::SessionReply) -> Response {
    match reply.status {
        201 => {
            let mut r = (StatusCode::CREATED, reply.sdp).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
            if let Ok(v) = HeaderValue::from_str(&format!("/session/{}", reply.session)) {
                h.insert(header::LOCATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", reply.etag)) {
                h.insert(header::ETAG, v);
            }
            if let Ok(v) = HeaderValue::from_str(&reply.stream_id) {
                h.insert("onair-stream-id", v);
            }
            h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
            for link in ice_links(state) {
                h.append(header::LINK, link);
            }
            cors(r)
        }
        // An ICE restart's answer (RFC 9725 §4.4.1): our new credentials, and the new ETag.
        200 if !reply.sdp.is_empty() => {
            let mut r = (StatusCode::OK, reply.sdp).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDPFRAG));
            if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", reply.etag)) {
                h.insert(header::ETAG, v);
            }
            cors(r)
        }
        200 | 204 => cors(StatusCode::from_u16(reply.status as u16).unwrap_or(StatusCode::OK).into_response()),
        status => error(u16::try_from(status).unwrap_or(503), &reply.message),
    }
}

/// The 429 (with `Retry-After`) for a POST whose client address opens sessions too fast.
fn rate_limited(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Option<Response> {
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let client = crate::per_ip::client_ip(peer.ip(), forwarded, &state.trusted_proxies);
    state.post_rate.check(client, std::time::Instant::now()).err().map(|wait| {
        tracing::debug!(%client, "WHIP/WHEP POST refused: too many from this address");
        let mut r = error(429, &format!("too many new sessions from your address; retry in {wait} s"));
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    })
}

/// What a WHIP publish names: a channel (`/whip/{name}`: one live stream at a time) or nothing.
enum Title {
    Named(String),
    Untitled,
}

async fn publish(
    state: AppState,
    title: Title,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    if let Some(r) = rate_limited(&state, peer, &headers) {
        return Ok(r);
    }
    let sdp = body_of(&headers, &body, SDP)?;
    let (title, named) = match title {
        Title::Named(name) => (name, true),
        Title::Untitled => ("WHIP stream".to_owned(), false),
    };
    let access = access(&state, &headers);
    access.publish(&title).map_err(refused)?;
    // A named channel has one publisher: a second encoder on the same name (a restarted OBS whose
    // old session still runs, a copied stream key) is told, not given a duplicate stream. The list
    // is this gateway's copy, milliseconds behind: two POSTs racing within that both go live.
    if named && state.hub.is_live_titled(&title) {
        let message = format!(
            "a stream named {title:?} is already live; end it (DELETE its session) or publish under another name"
        );
        return Err(refuse(409, &message));
    }
    let owner = access.subject().to_owned();
    let req = pb::SessionRequest { op: pb::SessionOp::Publish.into(), title, sdp, owner, ..Default::default() };
    ask(&state, req).await
}

/// `POST /whip`: go live with the offer in the body (title "WHIP stream").
pub async fn publish_untitled(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    publish(state, Title::Untitled, peer, headers, body).await
}

/// `POST /whip/{name}`: go live titled `name`.
pub async fn publish_named(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    publish(state, Title::Named(name), peer, headers, body).await
}

/// `POST /whep/{stream_id}`: watch a live stream with the (receive-only) offer in the body.
pub async fn watch(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    if let Some(r) = rate_limited(&state, peer, &headers) {
        return Ok(r);
    }
    let sdp = body_of(&headers, &body, SDP)?;
    if stream.parse::<onair_core::StreamId>().is_err() {
        return Err(refuse(404, "no such stream"));
    }
    access(&state, &headers).watch(&stream).map_err(refused)?;
    ask(
        &state,
        pb::SessionRequest { op: pb::SessionOp::Subscribe.into(), stream_id: stream, sdp, ..Default::default() },
    )
    .await
}

/// The relay node a session id names, else 404.
fn session_node(id: &str) -> Result<String, Refusal> {
    onair_core::SessionId::parse(id).map(|s| s.node.to_string()).ok_or_else(|| refuse(404, "no such session"))
}

/// `PATCH /session/{id}`: trickle ICE (`application/trickle-ice-sdpfrag`) → 204; an ICE restart
/// (new credentials in the sdpfrag, `If-Match: *` or the ETag) → 200 with our new sdpfrag and
/// ETag; 412 on a stale `If-Match`, 428 for a restart without one.
pub async fn patch(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let node = session_node(&id)?;
    let frag = body_of(&headers, &body, SDPFRAG)?;
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let req = pb::SessionRequest {
        op: pb::SessionOp::Patch.into(),
        node,
        session: id,
        sdp: frag,
        if_match,
        ..Default::default()
    };
    ask(&state, req).await
}

/// `DELETE /session/{id}`: ends the session (a WHIP session's stream ends with it).
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, Refusal> {
    let node = session_node(&id)?;
    ask(&state, pb::SessionRequest { op: pb::SessionOp::Delete.into(), node, session: id, ..Default::default() }).await
}

/// The WHIP/WHEP routes.
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::{options as opt, post};
    axum::Router::new()
        .route("/whip", post(publish_untitled).options(options))
        .route("/whip/{name}", post(publish_named).options(options))
        .route("/whep/{stream}", post(watch).options(options))
        .route("/session/{id}", opt(options).patch(patch).delete(delete))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn an_address_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let rate = PostRate::default();
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(rate.check(a, t0).is_ok());
        }
        assert_eq!(rate.check(a, t0), Err(1), "the burst is spent");
        assert!(rate.check(b, t0).is_ok(), "another address has its own bucket");
        assert!(rate.check(a, t0 + Duration::from_millis(500)).is_ok(), "2 per second come back");
        assert!(rate.check(a, t0 + Duration::from_millis(500)).is_err());
    }
}
