//! Client construction shared by the bus and the directory.

use std::time::Duration;

use fred::clients::Client;
use fred::prelude::{Builder, Config, ReconnectPolicy};
use onair_core::BusError;

/// Deadline of one Redis command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Maps any client error to the bus's unavailable error.
pub fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

/// A builder with short timeouts and endless exponential reconnects (50 ms .. 2 s).
pub fn builder(url: &str) -> Result<Builder, BusError> {
    let config = Config::from_url(url).map_err(unavailable)?;
    let mut b = Builder::from_config(config);
    b.with_connection_config(|c| {
        c.connection_timeout = Duration::from_secs(1);
        c.internal_command_timeout = Duration::from_secs(1);
    })
    .with_performance_config(|p| {
        p.default_command_timeout = COMMAND_TIMEOUT;
    })
    .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(b)
}

/// A connected command client (it reconnects in the background), failures as the directory's.
pub async fn command_client(url: &str) -> Result<Client, onair_core::DirectoryError> {
    use fred::interfaces::ClientLike;
    let unavailable = |e: String| onair_core::DirectoryError::Unavailable(e);
    let client = build_client(url).map_err(|e| unavailable(e.to_string()))?;
    client.init().await.map_err(|e| unavailable(self::unavailable(e).to_string()))?;
    Ok(client)
}

/// A command client (not yet initialised).
pub fn build_client(url: &str) -> Result<Client, BusError> {
    builder(url)?.build().map_err(unavailable)
}
