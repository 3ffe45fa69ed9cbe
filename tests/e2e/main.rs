//! Whole zones on a real node, end to end (root only): `zones` runs the operator, real git and
//! S3 servers and the example game server; `drains` holds players' sessions through node drains,
//! scale-downs and rolling updates; `edits` changes a test zone's files over SMB; `stress` loads a
//! zone with bots scaled by `endId` and checks what they report against what the servers saw;
//! `monitoring` has a real Prometheus scrape the operator and the games by version, and a real
//! OpenTelemetry Collector label the games' log lines with their servers' versions.
//!
//! The tests share one control plane with a KWOK node and a real node (`cp.sh up DIR --nodes 1
//! --real-nodes 1`), started by this binary and stopped when it exits, unless
//! `GAMEZONE_REAL_KUBECONFIG` names the kubeconfig of one already running. The images come from
//! `scripts/images.sh` (the binaries of this test's own profile, cached by content), imported
//! first unless `GAMEZONE_IMAGES_IMPORTED` is set. Tests run one at a time ([`ONE_AT_A_TIME`]).
//!
//! ```sh
//! cargo test --test e2e            # all of them
//! cargo test --test e2e edits::    # one module
//! ```

mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod drains;
mod edits;
mod monitoring;
mod servers;
mod stress;
#[path = "../support/mod.rs"]
mod support;
mod zones;

/// One test at a time: they share the real node and its host ports.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
