//! Builds, offline, every object a GameZone turns into. The zone controller applies what these
//! functions return; `gamezone render` prints it. No client here, so it is unit-tested directly.

mod build;
mod children;
pub mod decide;
mod edits;
mod names;
mod sidecar;
pub mod tenancy;

pub use build::*;
pub use children::*;
pub use edits::*;
pub use names::*;
pub use sidecar::*;

#[cfg(test)]
mod tests;
