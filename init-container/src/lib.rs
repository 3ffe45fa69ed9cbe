//! Layers artifacts (git, S3-compatible, Perforce exports, local folders) into a directory tree,
//! pinned to exact revisions, swapped in atomically. No Kubernetes client in here: the operator
//! reuses [`resolve::resolve`] to pin revisions (the layer types are the API's, see [`plan`]); the init-container binary
//! calls [`apply::apply`]. See README.md for the destination layout and semantics.
#![forbid(unsafe_code)]

pub mod apply;
pub mod creds;
pub mod edits_layer;
pub mod egress;
pub mod error;
pub mod hook;
mod lock;
pub mod mounted;
pub mod oci;
pub mod p4export;
mod paths;
pub mod plan;
pub mod progress;
pub mod prune;
pub mod resolve;
pub mod retry;
pub mod samba;
mod source;
pub mod state;
mod summary;
mod tree;
pub mod watch;

pub use error::{Error, Result};
pub use lock::LOCK_FILE;
pub use tree::{Limits, digest_dir, shape_of_dir};
