//! GameZone: a Kubernetes operator that turns one `GameZone` object into a complete, running game zone.
//!
//! The operator: the runtime, the reconcilers' requests, the one writer, the webhook and edits
//! servers and the command line. What it decides is [`gamezone_core`] (re-exported as [`zone`],
//! [`ports`], [`server`], [`placement`], [`conditions`], [`key`]); the resource types are
//! [`gamezone_api`] ([`api`]); the SDK sidecar is [`gamezone_sdk`] ([`sdk`]).
#![forbid(unsafe_code)]

pub use gamezone_api as api;
pub use gamezone_core::{conditions, key, placement, ports, server, zone};
pub mod cli;
mod error;
pub use error::{Error, Result};
pub mod controller;
pub mod edits_api;
pub use gamezone_sdk as sdk;
pub mod status_view;
pub use gamezone_telemetry as telemetry;
pub mod webhook;
