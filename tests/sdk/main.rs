//! The SDK sidecar as games and the API server see it: `local` drives `gamezone sdk --local`
//! with Agones' and Carrier's clients, `cluster` runs it against the local control plane,
//! `policy` checks what the API server refuses it, and `proto` that the committed gRPC code is
//! current.
//!
//! ```sh
//! cargo test --test sdk            # all of them
//! cargo test --test sdk local::    # one module
//! ```

mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod local;
mod policy;
mod proto;
#[path = "../support/mod.rs"]
mod support;
mod webhook_server;
