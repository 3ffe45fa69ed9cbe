//! The crate's one error type. Every error a user can cause names the layer, its source (never
//! with credentials) and what to do about it.

use std::path::PathBuf;

pub use gamezone_api::artifacts::MOUNTED_WRONG;

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while resolving or applying a layer plan.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The plan cannot be read or parsed.
    #[error("invalid plan: {0}")]
    Plan(String),
    /// A layer of the plan is invalid (a path, a reference, a missing source).
    #[error("layer {layer} ({src}): {message}")]
    Invalid {
        /// Index of the layer in the plan.
        layer: usize,
        /// The layer's source, without credentials.
        src: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The pinned revisions do not fit the plan.
    #[error("invalid revisions: {0}")]
    Revisions(String),
    /// A Secret is missing keys or cannot be read.
    #[error("layer {layer} ({src}): {message}")]
    Credentials {
        /// Index of the layer in the plan.
        layer: usize,
        /// The layer's source, without credentials.
        src: String,
        /// Which Secret and keys, and what to do.
        message: String,
    },
    /// The server rejected the credentials.
    #[error("layer {layer} ({src}): authentication failed; {hint}")]
    Auth {
        /// Index of the layer in the plan.
        layer: usize,
        /// The layer's source, without credentials.
        src: String,
        /// Which Secret keys to check.
        hint: String,
    },
    /// The repository, ref, bucket, key or directory does not exist.
    #[error("layer {layer} ({src}): {message}")]
    NotFound {
        /// Index of the layer in the plan.
        layer: usize,
        /// The layer's source, without credentials.
        src: String,
        /// What was not found and what to check.
        message: String,
    },
    /// A network failure that may go away (connection reset, 5xx, timeout).
    #[error(
        "layer {layer} ({src}): {message} (gave up after {attempts} attempt(s); check that the server is reachable, then run again)"
    )]
    Transient {
        /// Index of the layer in the plan.
        layer: usize,
        /// The layer's source, without credentials.
        src: String,
        /// What failed.
        message: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The source moved on since the revision was pinned.
    #[error(
        "layer {layer} ({src}): revision changed since it was pinned (pinned {pinned}, found {found}); resolve again"
    )]
    RevisionChanged {
        /// Index of the layer in the plan.
        layer: usize,
        /// The layer's source, without credentials.
        src: String,
        /// The revision the run was asked to apply.
        pinned: String,
        /// The revision the source has now.
        found: String,
    },
    /// Content does not match its digest or manifest.
    #[error("layer {layer} ({src}): verification failed: {message}")]
    Verification {
        /// Index of the layer in the plan.
        layer: usize,
        /// The layer's source, without credentials.
        src: String,
        /// Which file or archive, expected and found.
        message: String,
    },
    /// Input that would write outside the tree or create special files.
    #[error("layer {layer} ({src}): rejected unsafe input: {message}")]
    Hostile {
        /// Index of the layer in the plan.
        layer: usize,
        /// The layer's source, without credentials.
        src: String,
        /// Which entry and why.
        message: String,
    },
    /// A size or file-count cap was hit.
    #[error("layer {layer} ({src}): {message}")]
    Limit {
        /// Index of the layer in the plan.
        layer: usize,
        /// The layer's source, without credentials.
        src: String,
        /// Which cap and how to raise it.
        message: String,
    },
    /// Any other permanent failure of a source.
    #[error("layer {layer} ({src}): {message}")]
    Source {
        /// Index of the layer in the plan.
        layer: usize,
        /// The layer's source, without credentials.
        src: String,
        /// What failed.
        message: String,
    },
    /// An image volume holds another tree than the pinned one (a runtime that mounts image
    /// volumes empty, or a wrong image).
    #[error("{MOUNTED_WRONG} {message}")]
    MountedWrong {
        /// What was mounted, what was expected, and what happens next.
        message: String,
    },
    /// The destination directory cannot be written.
    #[error("destination {}: {message}: {io}", path.display())]
    Destination {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was being done.
        message: String,
        /// The underlying error.
        #[source]
        io: std::io::Error,
    },
}

impl Error {
    /// True for failures worth retrying later (network trouble, server errors, timeouts).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }

    /// The index of the layer the error is about, if any.
    pub fn layer(&self) -> Option<usize> {
        match self {
            Error::Invalid { layer, .. }
            | Error::Credentials { layer, .. }
            | Error::Auth { layer, .. }
            | Error::NotFound { layer, .. }
            | Error::Transient { layer, .. }
            | Error::RevisionChanged { layer, .. }
            | Error::Verification { layer, .. }
            | Error::Hostile { layer, .. }
            | Error::Limit { layer, .. }
            | Error::Source { layer, .. } => Some(*layer),
            Error::Plan(_) | Error::Revisions(_) | Error::MountedWrong { .. } | Error::Destination { .. } => None,
        }
    }

    pub(crate) fn with_attempts(mut self, n: u32) -> Self {
        if let Error::Transient { attempts, .. } = &mut self {
            *attempts = n;
        }
        self
    }

    pub(crate) fn destination(path: impl Into<PathBuf>, message: impl Into<String>, io: std::io::Error) -> Self {
        Error::Destination { path: path.into(), message: message.into(), io }
    }
}

/// Longest message an error built by [`Ctx`] carries, in bytes: as long as a condition's, so
/// what the operator shows of it is the whole of it.
pub use gamezone_api::conditions::MESSAGE_MAX as MAX_MESSAGE;

/// Cuts `m` to at most [`MAX_MESSAGE`] bytes on a char boundary, marked when cut, as the
/// operator's conditions are.
pub(crate) fn cap(m: String) -> String {
    if m.len() <= MAX_MESSAGE { m } else { gamezone_api::conditions::bounded(&m) }
}

/// The layer an operation works on: builds errors that name it, and scrubs secrets from
/// messages that come from libraries (which may echo URLs or headers).
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub layer: usize,
    pub src: String,
    secrets: Vec<String>,
}

impl Ctx {
    pub fn new(layer: usize, src: impl Into<String>) -> Self {
        Ctx { layer, src: cap(src.into()), secrets: Vec::new() }
    }

    /// Remembers a secret value so it is scrubbed from every message built by this context.
    pub fn add_secret(&mut self, secret: &str) {
        if secret.len() >= 3 {
            self.secrets.push(secret.to_owned());
        }
    }

    /// The message with secrets replaced, capped at [`MAX_MESSAGE`] bytes: every error built
    /// here goes through this, so none can carry a large remote answer into a status.
    pub fn scrub(&self, message: impl Into<String>) -> String {
        let mut m = message.into();
        for s in &self.secrets {
            if m.contains(s.as_str()) {
                m = m.replace(s.as_str(), "***");
            }
        }
        cap(m)
    }

    pub fn invalid(&self, m: impl Into<String>) -> Error {
        Error::Invalid { layer: self.layer, src: self.src.clone(), message: self.scrub(m) }
    }
    pub fn credentials(&self, m: impl Into<String>) -> Error {
        Error::Credentials { layer: self.layer, src: self.src.clone(), message: self.scrub(m) }
    }
    pub fn auth(&self, hint: impl Into<String>) -> Error {
        Error::Auth { layer: self.layer, src: self.src.clone(), hint: self.scrub(hint) }
    }
    pub fn not_found(&self, m: impl Into<String>) -> Error {
        Error::NotFound { layer: self.layer, src: self.src.clone(), message: self.scrub(m) }
    }
    pub fn transient(&self, m: impl Into<String>) -> Error {
        Error::Transient { layer: self.layer, src: self.src.clone(), message: self.scrub(m), attempts: 1 }
    }
    pub fn changed(&self, pinned: &str, found: &str) -> Error {
        Error::RevisionChanged {
            layer: self.layer,
            src: self.src.clone(),
            pinned: self.scrub(pinned),
            found: self.scrub(found),
        }
    }
    pub fn verification(&self, m: impl Into<String>) -> Error {
        Error::Verification { layer: self.layer, src: self.src.clone(), message: self.scrub(m) }
    }
    pub fn hostile(&self, m: impl Into<String>) -> Error {
        Error::Hostile { layer: self.layer, src: self.src.clone(), message: self.scrub(m) }
    }
    pub fn limit(&self, m: impl Into<String>) -> Error {
        Error::Limit { layer: self.layer, src: self.src.clone(), message: self.scrub(m) }
    }
    pub fn source(&self, m: impl Into<String>) -> Error {
        Error::Source { layer: self.layer, src: self.src.clone(), message: self.scrub(m) }
    }
    /// A local I/O failure while reading a source or writing the staging tree.
    pub fn io(&self, what: impl std::fmt::Display, e: std::io::Error) -> Error {
        self.source(format!("{what}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_capped_on_a_char_boundary() {
        let ctx = Ctx::new(0, "s");
        let Error::Source { message, .. } = ctx.source("é".repeat(2000)) else { unreachable!() };
        assert!(message.len() <= MAX_MESSAGE && message.ends_with("…(cut)"), "{}", message.len());
        let Error::Source { message, .. } = ctx.source("short") else { unreachable!() };
        assert_eq!(message, "short");
        let Error::Transient { message, .. } = ctx.transient("x".repeat(5000)) else { unreachable!() };
        assert!(message.len() <= MAX_MESSAGE);
    }
}
