//! A WebSocket client speaking the browser protocol, for black-box tests.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long `expect` waits for a frame.
pub const WAIT: Duration = Duration::from_secs(5);

/// One browser-like connection.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames of a `batch` not handed out yet (a batch is read as the frames it carries).
    unpacked: std::collections::VecDeque<Value>,
    /// `batch` frames received (how coalesced the list changes were).
    pub batches: usize,
    /// WebSocket text messages received (a batch counts once).
    pub messages: usize,
    /// Peer id from the last `welcome`.
    pub peer_id: String,
    /// Resume token from the last `welcome`.
    pub token: String,
    /// The `streams` list received right after `welcome`.
    pub initial_streams: Vec<Value>,
    /// The last `welcome` frame as received (with its `ice_servers`).
    pub welcome: Value,
    /// The `streams` frame received right after `welcome` (with its `total`).
    pub streams_frame: Value,
}

impl Ws {
    /// Connects to `ws://127.0.0.1:PORT/ws` and reads `welcome` and `streams`.
    pub async fn connect(port: u16) -> Self {
        let (ws, refusal) = Self::open(port, "/ws").await;
        assert!(refusal.is_none(), "a plain connect got {refusal:?}");
        ws
    }

    /// Reconnects like a page does, with `token` on the upgrade (`/ws?resume=TOKEN`). Returns the
    /// socket (its `peer_id` from the one `welcome`) and the `error` frame that followed the
    /// `welcome` if the token was refused.
    pub async fn resume(port: u16, token: &str) -> (Self, Option<Value>) {
        let encoded: String = token
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        Self::open(port, &format!("/ws?resume={encoded}")).await
    }

    /// Connects to `wss://localhost:PORT/ws`, trusting what `tls` trusts, and reads `welcome` and
    /// `streams`.
    pub async fn connect_tls(port: u16, tls: std::sync::Arc<rustls::ClientConfig>) -> Self {
        let connector = tokio_tungstenite::Connector::Rustls(tls);
        let (ws, refusal) = Self::open_url(&format!("wss://localhost:{port}/ws"), Some(connector)).await;
        assert!(refusal.is_none(), "a plain connect got {refusal:?}");
        ws
    }

    /// Opens `path` (with its query, e.g. `/ws?access_token=T`) and reads the opening frames:
    /// `welcome`, an optional `error` (returned), `streams`.
    pub async fn open(port: u16, path: &str) -> (Self, Option<Value>) {
        Self::open_url(&format!("ws://127.0.0.1:{port}{path}"), None).await
    }

    /// Opens `/ws` sending `Authorization: Bearer TOKEN` (as a non-browser client may), and reads
    /// the opening frames like [`Ws::open`].
    pub async fn open_bearer(port: u16, token: &str) -> (Self, Option<Value>) {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://127.0.0.1:{port}/ws").into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        Self::open_request(req, None).await
    }

    async fn open_url(url: &str, tls: Option<tokio_tungstenite::Connector>) -> (Self, Option<Value>) {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        Self::open_request(url.into_client_request().unwrap(), tls).await
    }

    async fn open_request(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
        tls: Option<tokio_tungstenite::Connector>,
    ) -> (Self, Option<Value>) {
        let connect = tokio_tungstenite::connect_async_tls_with_config(req, None, false, tls);
        let (stream, _) = tokio::time::timeout(WAIT, connect)
            .await
            .expect("WebSocket connect timed out")
            .expect("WebSocket connect failed");
        let mut ws = Self {
            stream,
            unpacked: std::collections::VecDeque::new(),
            batches: 0,
            messages: 0,
            peer_id: String::new(),
            token: String::new(),
            initial_streams: vec![],
            welcome: Value::Null,
            streams_frame: Value::Null,
        };
        let welcome = ws.next(WAIT).await.expect("no frame after the upgrade");
        assert_eq!(welcome["type"], "welcome", "the first frame must be welcome: {welcome}");
        ws.peer_id = welcome["peer_id"].as_str().unwrap().to_owned();
        ws.token = welcome["resume_token"].as_str().unwrap().to_owned();
        ws.welcome = welcome;
        let mut next = ws.next(WAIT).await.expect("nothing after welcome");
        let refusal = (next["type"] == "error").then(|| next.clone());
        if refusal.is_some() {
            next = ws.next(WAIT).await.expect("nothing after the refusal");
        }
        assert_eq!(next["type"], "streams", "welcome must be followed by streams: {next}");
        ws.initial_streams = next["streams"].as_array().cloned().unwrap_or_default();
        ws.streams_frame = next;
        (ws, refusal)
    }

    /// Sends a JSON value as a text frame.
    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: String) {
        self.stream.send(Message::Text(text.into())).await.expect("send failed");
    }

    /// Sends raw text; `false` if the connection is gone.
    pub async fn try_send_text(&mut self, text: String) -> bool {
        self.stream.send(Message::Text(text.into())).await.is_ok()
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.stream.send(Message::Binary(data.into())).await.expect("send failed");
    }

    /// The next JSON frame within `wait` (those of a `batch` one by one, as the pages read them);
    /// `None` if the socket closed or nothing came.
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        if let Some(v) = self.unpacked.pop_front() {
            return Some(v);
        }
        loop {
            match tokio::time::timeout(wait, self.stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    self.messages += 1;
                    let v: Value = serde_json::from_str(&t).expect("server sent bad JSON");
                    if v["type"] == "batch" {
                        self.batches += 1;
                        self.unpacked.extend(v["frames"].as_array().cloned().unwrap_or_default());
                        match self.unpacked.pop_front() {
                            Some(first) => return Some(first),
                            None => continue,
                        }
                    }
                    return Some(v);
                }
                Ok(Some(Ok(Message::Close(_)) | Err(_))) | Ok(None) | Err(_) => return None,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Skips frames until one of type `ty` arrives (within [`WAIT`]).
    pub async fn expect(&mut self, ty: &str) -> Value {
        self.expect_where(ty, |_| true).await
    }

    /// Skips frames until one of type `ty` matching `pred` arrives (within [`WAIT`]).
    pub async fn expect_where(&mut self, ty: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.expect_within(ty, WAIT, pred).await
    }

    /// Like [`Ws::expect_where`] with an explicit deadline.
    pub async fn expect_within(&mut self, ty: &str, wait: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(v) if v["type"] == ty && pred(&v) => return v,
                Some(v) => seen.push(v),
                None => panic!("no {ty:?} frame within {wait:?}; saw {seen:?}"),
            }
        }
    }

    /// Reads every frame for `window` and fails if one of type `ty` matching `pred` arrives
    /// (a negative check that cannot pass just because another frame came first).
    pub async fn expect_none_within(&mut self, ty: &str, window: Duration, pred: impl Fn(&Value) -> bool) {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next(left).await {
                Some(v) if v["type"] == ty && pred(&v) => panic!("unexpected {ty:?} frame within {window:?}: {v}"),
                Some(_) => {}
                None => return,
            }
        }
    }

    /// Expects an `error` frame with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        self.expect_where("error", |v| v["code"] == code).await
    }

    /// Round trip: ping → pong (proves the connection is still up and in order).
    pub async fn ping(&mut self) {
        self.send(json!({"type": "ping"})).await;
        self.expect("pong").await;
    }

    /// Waits for the server to close; returns the close code.
    pub async fn expect_close(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => return None,
                Err(_) => panic!("socket not closed within {wait:?}"),
            }
        }
    }

    /// Closes cleanly (close frame), like a tab being closed.
    pub async fn close(mut self) {
        let _ = self.stream.close(Some(CloseFrame { code: 1001.into(), reason: "bye".into() })).await;
    }

    /// Drops the TCP connection without a close frame, like a network failure.
    pub fn drop_abruptly(self) {
        drop(self.stream);
    }

    /// Publishes and returns the `published` stream.
    pub async fn publish(&mut self, title: &str) -> Value {
        self.send(json!({"type": "publish", "title": title})).await;
        self.expect("published").await["stream"].clone()
    }
}
