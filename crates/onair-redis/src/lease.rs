//! [`Leases`] in Redis: one string key per lease (`onair:` + the key), the holder as its value, the
//! time-to-live as its expiry. Claim and release are Lua scripts, so "free or mine" and "mine" are
//! checked and acted on atomically.

use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{KeysInterface, LuaInterface};
use onair_core::{DirectoryError, Leases};

use crate::connect::command_client;

/// Sets KEYS[1] to ARGV[1] for ARGV[2] ms when it is unset or already ARGV[1]; 1 if it is ARGV[1]'s now.
const CLAIM: &str = "local v = redis.call('GET', KEYS[1]) \
    if v == false or v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
    return 0";
/// Deletes KEYS[1] when it is ARGV[1].
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

fn err(e: fred::error::Error) -> DirectoryError {
    DirectoryError::Unavailable(e.to_string())
}

fn key(k: &str) -> String {
    format!("onair:{k}")
}

/// Redis-backed leases.
#[derive(Clone)]
pub struct RedisLeases {
    client: Client,
}

impl std::fmt::Debug for RedisLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLeases").finish_non_exhaustive()
    }
}

impl RedisLeases {
    /// Connects to `url`; reconnects in the background if Redis goes away.
    pub async fn connect(url: &str) -> Result<Self, DirectoryError> {
        Ok(Self { client: command_client(url).await? })
    }
}

#[async_trait]
impl Leases for RedisLeases {
    async fn claim(&self, k: &str, holder: &str, ttl: Duration) -> Result<bool, DirectoryError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1).to_string();
        let held: i64 = self.client.eval(CLAIM, key(k), vec![holder.to_owned(), ms]).await.map_err(err)?;
        Ok(held == 1)
    }

    async fn holder(&self, k: &str) -> Result<Option<String>, DirectoryError> {
        self.client.get(key(k)).await.map_err(err)
    }

    async fn release(&self, k: &str, holder: &str) -> Result<(), DirectoryError> {
        let _: i64 = self.client.eval(RELEASE, key(k), vec![holder.to_owned()]).await.map_err(err)?;
        Ok(())
    }
}
