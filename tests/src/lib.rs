//! Test harness for black-box tests: starts real processes on free ports
//! (`onair --target ...`, an own `redis-server`, a MongoDB-wire server), kills
//! or restarts them on demand, and cleans everything up on drop.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod browser;
pub mod cluster;
pub mod container;
pub mod health;
pub mod kube;
pub mod media;
pub mod netlab;
pub mod otlp;
pub mod procs;
pub mod registry;
pub mod relayload;
pub mod tls;
pub mod turn;
pub mod whip;
pub mod ws;

pub use procs::{Mongo, Onair, Proc, Redis, free_port, tools_dir, unique, wait_until, wait_until_value};

/// This crate's directory (`tests/`) in the checkout being tested. Cargo and nextest set
/// `CARGO_MANIFEST_DIR` when they run a test, which wins over the path compiled in: CI clones
/// share one target directory, and a test binary built from another clone must still read this
/// checkout's files (scripts, nginx config, chart).
pub fn tests_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), std::path::PathBuf::from)
}
