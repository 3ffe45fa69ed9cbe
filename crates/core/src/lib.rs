//! Everything GameZone decides, with no Kubernetes client and no runtime, so all of it is
//! unit-tested directly: [`zone`] builds every object a zone turns into (the controller applies
//! them, `gamezone render` prints them), [`ports`] hands out host ports, [`placement`] says which
//! nodes a server's pod can run on.
#![forbid(unsafe_code)]

pub use gamezone_api as api;

pub mod conditions;
mod error;
pub use error::{Error, Result};
pub mod key;
pub mod placement;
pub mod ports;
pub mod server;
pub mod zone;
