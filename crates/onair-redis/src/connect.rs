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
    Ok(builder_for(Config::from_url(url).map_err(unavailable)?))
}

fn builder_for(config: Config) -> Builder {
    let mut b = Builder::from_config(config);
    b.with_connection_config(|c| {
        c.connection_timeout = Duration::from_secs(1);
        c.internal_command_timeout = Duration::from_secs(1);
    })
    .with_performance_config(|p| {
        p.default_command_timeout = COMMAND_TIMEOUT;
    })
    .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    b
}

/// A connected command client (it reconnects in the background), failures as the directory's.
pub async fn command_client(url: &str) -> Result<Client, onair_core::DirectoryError> {
    connected(config(url)?).await
}

/// A connected RESP3 client, for reads Redis should track (`CLIENT TRACKING`, see `peer_cache`).
pub async fn tracking_client(url: &str) -> Result<Client, onair_core::DirectoryError> {
    let mut config = config(url)?;
    config.version = fred::types::RespVersion::RESP3;
    connected(config).await
}

fn config(url: &str) -> Result<Config, onair_core::DirectoryError> {
    Config::from_url(url).map_err(|e| onair_core::DirectoryError::Unavailable(unavailable(e).to_string()))
}

/// Builds a client on `config` (see [`builder`]) and connects it.
async fn connected(config: Config) -> Result<Client, onair_core::DirectoryError> {
    use fred::interfaces::ClientLike;
    let directory_error = |e: BusError| onair_core::DirectoryError::Unavailable(e.to_string());
    let client = builder_for(config).build().map_err(|e| directory_error(unavailable(e)))?;
    client.init().await.map_err(|e| directory_error(unavailable(e)))?;
    Ok(client)
}

/// A command client (not yet initialised).
pub fn build_client(url: &str) -> Result<Client, BusError> {
    builder(url)?.build().map_err(unavailable)
}
