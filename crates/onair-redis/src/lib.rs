//! Redis implementations of onair's cluster traits, on the `fred` client.

mod bus;

pub use bus::RedisBus;
