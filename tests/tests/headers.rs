//! Security headers a browser relies on: pages may not be framed by another site and may only
//! connect back to their own origin; no response's type is ever sniffed.
#![allow(clippy::unwrap_used)]

use onair_tests::Onair;
use onair_tests::procs::http_head_of;

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn pages_forbid_framing_and_foreign_connections_and_nothing_is_sniffed() {
    let gw = Onair::start("all-headers", &["--store", "memory"]).await;
    for page in ["/", "/watcher", "/broadcast", "/recordings"] {
        let (status, h) = http_head_of(gw.http, page).await;
        assert_eq!(status, 200, "{page}");
        let csp = header(&h, "content-security-policy").unwrap_or_else(|| panic!("{page}: no CSP in {h:?}"));
        let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
        assert!(directives.contains(&"frame-ancestors 'none'"), "{page}: {csp}");
        assert!(directives.contains(&"connect-src 'self'"), "{page}: connect-src must be the own origin only: {csp}");
        assert!(!csp.contains("ws:") && !csp.contains("wss:"), "{page}: any-host WebSocket sources: {csp}");
    }
    for path in ["/", "/assets/ws.js", "/api/streams", "/healthz", "/no-such-page", "/recordings/nope.webm"] {
        let (status, h) = http_head_of(gw.http, path).await;
        assert_eq!(header(&h, "x-content-type-options"), Some("nosniff"), "{path} ({status}): {h:?}");
    }
}

/// Opens `/ws` with `origin` (and the gateway's own Host); returns the HTTP status of the refusal,
/// or 101 when the upgrade went through.
async fn ws_status(port: u16, origin: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{port}/ws").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("upgrade failed oddly: {e}"),
    }
}

#[tokio::test]
async fn a_page_of_another_origin_cannot_open_the_websocket() {
    let gw = Onair::start("all-origins", &["--store", "memory", "--allowed-origins", "https://app.example"]).await;
    let own = format!("http://127.0.0.1:{}", gw.http);
    assert_eq!(ws_status(gw.http, Some(&own)).await, 101, "the gateway's own pages");
    assert_eq!(ws_status(gw.http, None).await, 101, "a non-browser client sends no Origin");
    assert_eq!(ws_status(gw.http, Some("https://app.example")).await, 101, "listed in --allowed-origins");
    for foreign in ["https://evil.example", "http://app.example", "null", "http://127.0.0.1:1"] {
        assert_eq!(ws_status(gw.http, Some(foreign)).await, 403, "origin {foreign}");
    }
}
