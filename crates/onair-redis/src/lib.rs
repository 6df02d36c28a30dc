//! Redis implementations of onair's cluster traits, on the `fred` client.

mod bus;
mod connect;
mod directory;
mod lease;
pub mod peer_cache;

pub use bus::RedisBus;
pub use directory::RedisDirectory;
pub use lease::RedisLeases;

/// Whether `url` is a Redis URL this client can use (checked before connecting, so a typo fails at
/// once instead of being retried like an unreachable server).
pub fn check_url(url: &str) -> Result<(), String> {
    fred::prelude::Config::from_url(url).map(drop).map_err(|e| e.to_string())
}
