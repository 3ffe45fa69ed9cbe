//! What building a zone's objects, or checking what its spec names, can refuse.

/// Result with the core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a zone's objects cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The GameZone's spec asks for something that cannot be built; `field` names where.
    #[error("{field}: {message}")]
    InvalidSpec {
        /// JSON path of the offending field, e.g. `spec.services[1].type`.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A Secret or one of its keys that the spec refers to does not exist.
    #[error("{field}: Secret {secret:?} {problem}; create it in namespace {namespace:?}")]
    MissingSecret {
        /// The field referring to the Secret.
        field: String,
        /// Secret name.
        secret: String,
        /// "does not exist" or "has no key \"x\"".
        problem: String,
        /// Namespace searched.
        namespace: String,
    },
    /// An object could not be (de)serialized.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl Error {
    /// An [`Error::InvalidSpec`] for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidSpec { field: field.into(), message: message.into() }
    }
}
