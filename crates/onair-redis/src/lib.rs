//! Redis implementations of onair's cluster traits, on the `fred` client.

mod bus;
mod connect;
mod directory;

pub use bus::RedisBus;
pub use directory::RedisDirectory;
