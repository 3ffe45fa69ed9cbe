//! The operator on the shared local control plane (KWOK nodes), one operator process per test,
//! scoped to the test's namespace: `zones` provisions, converges, restarts and tears zones down,
//! `lifecycle` keeps players safe through gates, drains, evictions and rollouts, `cordon` moves
//! 200 servers off a cordoned node, `upgrade` hands a running zone from the previous commit's
//! operator to this one (both on control planes of their own), `edits` turns a test zone's
//! live edits on and off, and `status` follows a zone's rollout in a terminal.
//!
//! ```sh
//! cargo test --test zone               # all of them
//! cargo test --test zone lifecycle::   # one module
//! ```

#[path = "../common/mod.rs"]
mod common;
mod cordon;
mod edits;
mod lifecycle;
mod status;
#[path = "../support/mod.rs"]
mod support;
mod upgrade;
mod zones;
