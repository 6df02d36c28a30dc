//! The pages and their assets, embedded at build time from web/.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/web_files.rs"));

/// Content-Security-Policy of every page: nothing leaves the origin (`connect-src 'self'` covers the
/// page's own `ws:`/`wss:` origin and no other host), and no other site may frame the pages
/// (clickjacking a "Go live" button).
pub const CSP: &str = "default-src 'self'; connect-src 'self'; media-src 'self' blob:; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// The embedded file at `path` (relative to web/), if any.
pub fn file(path: &str) -> Option<&'static [u8]> {
    FILES.iter().find(|(p, _)| *p == path).map(|(_, b)| *b)
}

fn serve(path: &str) -> Response {
    let Some(bytes) = file(path) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let mut resp = Response::new(Body::from(bytes));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(path)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    resp
}

/// `/` and `/watcher`.
pub async fn watcher() -> Response {
    serve("watcher.html")
}

/// `/broadcast`.
pub async fn broadcast() -> Response {
    serve("broadcast.html")
}

/// `/recordings`.
pub async fn recordings() -> Response {
    serve("recordings.html")
}

/// `/assets/{file}`; only files that exist under web/assets are served.
pub async fn asset(Path(file): Path<String>) -> Response {
    if file.contains("..") || file.starts_with('/') {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    serve(&format!("assets/{file}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_embedded() {
        for p in ["watcher.html", "broadcast.html", "recordings.html", "assets/ws.js"] {
            assert!(file(p).is_some_and(|b| !b.is_empty()), "{p}");
        }
        assert_eq!(content_type("assets/ws.js"), "text/javascript; charset=utf-8");
        assert!(file("../Cargo.toml").is_none());
    }
}
