//! The operator's error type.

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec asks for what cannot be built, or names a Secret (or key) that is missing: the
    /// core's refusals, which name the field.
    #[error(transparent)]
    Spec(#[from] gamezone_core::Error),
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

impl Error {
    /// Short CamelCase reason for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Spec(gamezone_core::Error::InvalidSpec { .. }) => "InvalidSpec",
            Error::Spec(gamezone_core::Error::MissingSecret { .. }) => "SecretNotFound",
            Error::Spec(gamezone_core::Error::Serialization(_)) => "SerializationFailed",
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
            Error::Spec(e) => !matches!(e, gamezone_core::Error::Serialization(_)),
            Error::NameConflict { .. } => true,
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

    /// The core's `InvalidSpec` for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Spec(gamezone_core::Error::invalid(field, message))
    }
}
