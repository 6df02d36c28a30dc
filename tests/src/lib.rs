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
pub mod ws;

pub use procs::{Mongo, Onair, Proc, Redis, free_port, tools_dir, unique, wait_until};
