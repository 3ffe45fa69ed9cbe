//! GameZone: a Kubernetes operator that turns one `GameZone` object into a complete, running game zone.
//!
//! Layout: [`api`] is the `gamezone-api` crate, the resource types (no client code); [`ports`] the
//! pure port allocator; [`zone`] builds a zone's child objects offline (used by both the
//! controller and `render`); [`controller`] holds the zone and server reconcilers and their
//! runtime wiring.
#![forbid(unsafe_code)]

pub use gamezone_api as api;
pub use gamezone_core::{conditions, key, placement, ports, server, zone};
pub mod cli;
mod error;
pub use error::{Error, Result};
pub mod controller;
pub mod edits;
pub mod sdk;
pub mod telemetry;
pub mod webhook;
