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
