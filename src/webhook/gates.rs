//! Feature gates (`--feature-gates Name=bool,...`), parsed without any Kubernetes client.

use std::fmt;
use std::str::FromStr;

/// Every feature gate the operator knows, with its default.
const KNOWN: &[(&str, bool)] = &[(AUTOPILOT_PASSTHROUGH_PORT, false)];

/// Gate: Passthrough ports get their host port from the platform (GKE Autopilot) instead of the
/// operator's allocator, and the operator's webhook copies it into the container port.
pub const AUTOPILOT_PASSTHROUGH_PORT: &str = "AutopilotPassthroughPort";

/// The state of every feature gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeatureGates {
    /// [`AUTOPILOT_PASSTHROUGH_PORT`].
    pub autopilot_passthrough_port: bool,
}

/// A `--feature-gates` value that can't be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// An entry is not `Name=true` or `Name=false`.
    #[error("feature gate {entry:?} is not Name=true or Name=false")]
    Malformed {
        /// The entry as given.
        entry: String,
    },
    /// A name no gate has.
    #[error("unknown feature gate {name:?}; known gates: {}", known_names())]
    Unknown {
        /// The name as given.
        name: String,
    },
}

fn known_names() -> String {
    KNOWN.iter().map(|(n, d)| format!("{n} (default {d})")).collect::<Vec<_>>().join(", ")
}

impl FromStr for FeatureGates {
    type Err = GateError;

    /// Parses `Name=bool` entries separated by commas; blanks are ignored, later entries win.
    fn from_str(s: &str) -> Result<Self, GateError> {
        let mut gates = FeatureGates::default();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let malformed = || GateError::Malformed { entry: entry.to_string() };
            let (name, value) = entry.split_once('=').ok_or_else(malformed)?;
            let value = match value.trim().to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => return Err(malformed()),
            };
            match name.trim() {
                AUTOPILOT_PASSTHROUGH_PORT => gates.autopilot_passthrough_port = value,
                other => return Err(GateError::Unknown { name: other.to_string() }),
            }
        }
        Ok(gates)
    }
}

impl fmt::Display for FeatureGates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{AUTOPILOT_PASSTHROUGH_PORT}={}", self.autopilot_passthrough_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_gates() {
        assert_eq!("".parse::<FeatureGates>().unwrap(), FeatureGates::default());
        assert!("AutopilotPassthroughPort=true".parse::<FeatureGates>().unwrap().autopilot_passthrough_port);
        assert!(" AutopilotPassthroughPort = TRUE , ".parse::<FeatureGates>().unwrap().autopilot_passthrough_port);
        let later_wins: FeatureGates = "AutopilotPassthroughPort=true,AutopilotPassthroughPort=false".parse().unwrap();
        assert!(!later_wins.autopilot_passthrough_port);
        assert_eq!(FeatureGates { autopilot_passthrough_port: true }.to_string(), "AutopilotPassthroughPort=true");
    }

    #[test]
    fn rejects_unknown_and_malformed_gates() {
        let e = "PortMagic=true".parse::<FeatureGates>().unwrap_err();
        assert_eq!(e, GateError::Unknown { name: "PortMagic".into() });
        assert!(e.to_string().contains("known gates: AutopilotPassthroughPort (default false)"), "{e}");
        assert!(matches!("AutopilotPassthroughPort".parse::<FeatureGates>(), Err(GateError::Malformed { .. })));
        assert!(matches!("AutopilotPassthroughPort=yes".parse::<FeatureGates>(), Err(GateError::Malformed { .. })));
    }
}
