//! ICE servers in `welcome`, and TURN REST API credentials checked by a real coturn
//! (`use-auth-secret`): the credentials of a real `welcome` allocate over UDP and TCP; a wrong
//! password and an expired username do not; a resumed socket gets fresh credentials.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use onair_tests::Onair;
use onair_tests::turn::Coturn;
use onair_tests::ws::Ws;
use serde_json::{Value, json};

const SECRET: &str = "s3cret-shared-with-coturn";

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// The `ice_servers` entry carrying TURN credentials.
fn turn_entry(welcome: &Value) -> &Value {
    welcome["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e.get("username").is_some())
        .unwrap_or_else(|| panic!("no TURN entry with credentials in {welcome}"))
}

fn credentials(welcome: &Value) -> (String, String) {
    let e = turn_entry(welcome);
    (e["username"].as_str().unwrap().to_owned(), e["credential"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn welcome_credentials_allocate_on_coturn_and_wrong_ones_do_not() {
    let coturn = Coturn::start(SECRET).await;
    let ice = format!("stun:127.0.0.1:{p},turn:127.0.0.1:{p},turn:127.0.0.1:{p}?transport=tcp", p = coturn.port);
    let gw = Onair::start(
        "turn-creds",
        &[
            "--store",
            "memory",
            "--media",
            "p2p",
            "--ice-servers",
            &ice,
            "--turn-secret",
            SECRET,
            "--turn-credential-ttl",
            "10m",
        ],
    )
    .await;
    let ws = Ws::connect(gw.http).await;
    let servers = &ws.welcome["ice_servers"];
    assert_eq!(servers[0], json!({ "urls": [format!("stun:127.0.0.1:{}", coturn.port)] }), "{servers}");
    assert_eq!(
        turn_entry(&ws.welcome)["urls"],
        json!([format!("turn:127.0.0.1:{}", coturn.port), format!("turn:127.0.0.1:{}?transport=tcp", coturn.port)])
    );
    let (username, credential) = credentials(&ws.welcome);
    let (expiry, peer) = username.split_once(':').unwrap();
    assert_eq!(peer, ws.peer_id, "the username names the peer");
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry.abs_diff(unix_now() + 600) <= 5, "expiry {expiry} is not now + 10 min");
    assert!(!gw.proc.output().contains(SECRET), "the secret was logged");

    coturn.allocate(&username, &credential, false).await.unwrap_or_else(|o| panic!("UDP allocation refused:\n{o}"));
    coturn.allocate(&username, &credential, true).await.unwrap_or_else(|o| panic!("TCP allocation refused:\n{o}"));
    let wrong = coturn.allocate(&username, "d3JvbmcgY3JlZGVudGlhbA==", false).await;
    assert!(wrong.is_err(), "a wrong credential allocated:\n{wrong:?}");
    let other_peer = format!("{expiry}:someone-else");
    let stolen = coturn.allocate(&other_peer, &credential, false).await;
    assert!(stolen.is_err(), "the credential worked for another username:\n{stolen:?}");

    // A resumed socket gets a fresh welcome, with fresh credentials for the same peer.
    let token = ws.token.clone();
    ws.drop_abruptly();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (resumed, refusal) = Ws::resume(gw.http, &token).await;
    assert!(refusal.is_none(), "resume refused: {refusal:?}");
    let (username2, credential2) = credentials(&resumed.welcome);
    assert_eq!(resumed.peer_id, peer, "resume kept the peer id");
    assert!(username2.ends_with(&format!(":{peer}")), "{username2}");
    assert_ne!(username2, username, "the resumed welcome reused the old credentials");
    coturn.allocate(&username2, &credential2, false).await.unwrap_or_else(|o| panic!("resumed creds refused:\n{o}"));
}

#[tokio::test]
async fn expired_credentials_are_refused_by_coturn() {
    let coturn = Coturn::start(SECRET).await;
    let ice = format!("turn:127.0.0.1:{}", coturn.port);
    let gw = Onair::start(
        "turn-expiry",
        &[
            "--store",
            "memory",
            "--media",
            "p2p",
            "--ice-servers",
            &ice,
            "--turn-secret",
            SECRET,
            "--turn-credential-ttl",
            "2s",
        ],
    )
    .await;
    let ws = Ws::connect(gw.http).await;
    let (username, credential) = credentials(&ws.welcome);
    coturn.allocate(&username, &credential, false).await.unwrap_or_else(|o| panic!("fresh creds refused:\n{o}"));
    let expiry: u64 = username.split_once(':').unwrap().0.parse().unwrap();
    // coturn refuses a username whose timestamp is in the past.
    while unix_now() <= expiry {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late = coturn.allocate(&username, &credential, false).await;
    assert!(late.is_err(), "expired credentials allocated:\n{late:?}");
}

#[tokio::test]
async fn without_ice_servers_welcome_lists_none() {
    let gw = Onair::start("ice-none", &["--store", "memory", "--media", "p2p"]).await;
    let ws = Ws::connect(gw.http).await;
    assert_eq!(ws.welcome["ice_servers"], json!([]));
}
