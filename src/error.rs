//! The operator's error type.

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the operator.
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
    /// An object the zone would make exists and is not the zone's: nothing is written to it.
    #[error(
        "{kind} {name:?} already exists and is not this zone's ({held}); the operator never changes, adopts or deletes what it does not own: rename the zone (its name starts every object it makes) or the service type, or have that {kind} removed"
    )]
    NameConflict {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// Who holds it instead.
        held: String,
    },
    /// Pinning an artifact layer failed.
    #[error("spec.artifacts: {0}")]
    Artifacts(#[from] gamezone_init::Error),
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A finalizer step failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Work is under way elsewhere (pods terminating ...); try again shortly.
    #[error("waiting: {0}")]
    Waiting(String),
    /// An object could not be (de)serialized.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl From<gamezone_core::Error> for Error {
    fn from(e: gamezone_core::Error) -> Self {
        match e {
            gamezone_core::Error::InvalidSpec { field, message } => Error::InvalidSpec { field, message },
            gamezone_core::Error::MissingSecret { field, secret, problem, namespace } => {
                Error::MissingSecret { field, secret, problem, namespace }
            }
            gamezone_core::Error::Serialization(e) => Error::Serialization(e),
        }
    }
}

impl Error {
    /// Short CamelCase reason for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } => "InvalidSpec",
            Error::MissingSecret { .. } => "SecretNotFound",
            Error::NameConflict { .. } => "NameConflict",
            Error::Artifacts(e) if e.is_transient() => "ArtifactsUnavailable",
            Error::Artifacts(_) => "ArtifactsFailed",
            Error::Kube(_) => "ApiError",
            Error::Finalizer(_) => "FinalizerFailed",
            Error::Waiting(_) => "Waiting",
            Error::Serialization(_) => "SerializationFailed",
        }
    }

    /// Whether a person must change something (spec, Secret, source) before retrying helps.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::InvalidSpec { .. } | Error::MissingSecret { .. } | Error::NameConflict { .. } => true,
            Error::Artifacts(e) => !e.is_transient(),
            _ => false,
        }
    }

    /// Whether the API server or a person refused a write for good until someone changes
    /// something (a name held by another object, a quota, an admission policy, an invalid
    /// object), as against trouble that passes.
    pub fn is_refusal(&self) -> bool {
        self.is_user_error() || matches!(self, Error::Kube(kube::Error::Api(s)) if matches!(s.code, 400 | 403 | 422))
    }

    /// An [`Error::InvalidSpec`] for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidSpec { field: field.into(), message: message.into() }
    }
}
