//! `GET /recordings/{id}.webm` (VP8) and `GET /recordings/{id}.mp4` (H.264): recording files
//! with HTTP range requests, so a browser can seek. The id is looked up in the registry; only
//! the plain file name it stores is opened, inside the recordings directory, and only under its
//! own extension (the content type follows it).

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use onair_core::RecordingId;
use onair_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::hub::Hub;

/// A parsed `Range` header (one range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` or `bytes=a-`.
    From(u64, Option<u64>),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// Parses a single-range `Range` header; `None` for anything else (served as a full 200).
pub fn parse_range(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return b.parse().ok().map(ByteRange::Suffix);
    }
    let start = a.parse().ok()?;
    let end = if b.is_empty() { None } else { Some(b.parse().ok()?) };
    Some(ByteRange::From(start, end))
}

/// Resolves a range against a file length: inclusive (start, end), or `None` if unsatisfiable.
pub fn resolve(range: ByteRange, len: u64) -> Option<(u64, u64)> {
    if len == 0 {
        return None;
    }
    match range {
        ByteRange::From(start, end) => {
            if start >= len {
                return None;
            }
            let end = end.map_or(len - 1, |e| e.min(len - 1));
            (start <= end).then_some((start, end))
        }
        ByteRange::Suffix(0) => None,
        ByteRange::Suffix(n) => Some((len.saturating_sub(n), len - 1)),
    }
}

/// `inline` with the file name as RFC 6266 wants it: an ASCII `filename` fallback (characters that
/// could end or escape the quoted string replaced by `_`) and the exact name as `filename*` (RFC 5987
/// percent-encoding), so no catalogued name can inject header parameters.
pub fn content_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| if c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '%') || c == ' ' { c } else { '_' })
        .collect();
    let mut encoded = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("inline; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// The content type of a recording file extension; `None` for files that are not recordings.
fn content_type(ext: &str) -> Option<&'static str> {
    match ext {
        "webm" => Some("video/webm"),
        "mp4" => Some("video/mp4"),
        _ => None,
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such recording\n").into_response()
}

/// Where recordings are read from.
#[derive(Debug, Clone)]
pub struct RecordingsDir(pub PathBuf);

/// The handler.
pub async fn recording(
    State((hub, dir)): State<(Arc<Hub>, RecordingsDir)>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some((id, ext)) = file.rsplit_once('.') else { return not_found() };
    let Some(content_type) = content_type(ext) else { return not_found() };
    let Ok(id) = id.parse::<RecordingId>() else { return not_found() };
    let mut registry = hub.cfg.registry.clone();
    let rec = match registry.get_recording(pb::GetRecordingRequest { id: id.to_string() }).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => return not_found(),
        Err(_) => return (StatusCode::SERVICE_UNAVAILABLE, "registry unavailable\n").into_response(),
    };
    let name = rec.file_name;
    if !onair_core::is_plain_file_name(&name) || name.rsplit_once('.').map(|(_, e)| e) != Some(ext) {
        return not_found();
    }
    let path = dir.0.join(&name);
    let Ok(mut f) = tokio::fs::File::open(&path).await else { return not_found() };
    let Ok(meta) = f.metadata().await else { return not_found() };
    let len = meta.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(parse_range);
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len.saturating_sub(1)),
        Some(r) => match resolve(r, len) {
            Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
            None => {
                let mut resp = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return resp;
            }
        },
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    if f.seek(SeekFrom::Start(start)).await.is_err() {
        return not_found();
    }
    let body = Body::from_stream(ReaderStream::new(f.take(count)));
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&count.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_recording_extensions_have_a_content_type() {
        assert_eq!(content_type("mp4"), Some("video/mp4"));
        assert_eq!(content_type("webm"), Some("video/webm"));
        assert_eq!(content_type("jsonl"), None);
    }

    #[test]
    fn content_disposition_cannot_be_injected() {
        assert_eq!(content_disposition("abc.webm"), "inline; filename=\"abc.webm\"; filename*=UTF-8''abc.webm");
        let evil = content_disposition("a\"; filename=x.exe; b=\"é.webm");
        assert_eq!(evil.matches('"').count(), 2, "{evil}");
        assert!(evil.ends_with("filename*=UTF-8''a%22%3B%20filename%3Dx.exe%3B%20b%3D%22%C3%A9.webm"), "{evil}");
        assert!(HeaderValue::from_str(&content_disposition("tab\tcr\r.webm")).is_ok());
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(parse_range("bytes=0-99"), Some(ByteRange::From(0, Some(99))));
        assert_eq!(parse_range("bytes=100-"), Some(ByteRange::From(100, None)));
        assert_eq!(parse_range("bytes=-500"), Some(ByteRange::Suffix(500)));
        assert_eq!(parse_range("bytes=0-1,5-6"), None);
        assert_eq!(parse_range("items=0-1"), None);
        assert_eq!(parse_range("bytes=x-1"), None);
    }

    #[test]
    fn resolves_against_length() {
        assert_eq!(resolve(ByteRange::From(0, Some(99)), 1000), Some((0, 99)));
        assert_eq!(resolve(ByteRange::From(900, Some(5000)), 1000), Some((900, 999)));
        assert_eq!(resolve(ByteRange::From(1000, None), 1000), None);
        assert_eq!(resolve(ByteRange::Suffix(10), 1000), Some((990, 999)));
        assert_eq!(resolve(ByteRange::Suffix(5000), 1000), Some((0, 999)));
        assert_eq!(resolve(ByteRange::From(5, Some(2)), 1000), None);
        assert_eq!(resolve(ByteRange::Suffix(0), 1000), None);
    }
}
