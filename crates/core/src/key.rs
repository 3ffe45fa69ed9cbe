//! The one key of an object in this process's memos, port tables and indexes: its namespace
//! and name. Shown as `namespace/name` in logs.

use std::fmt;

use kube::{Resource, ResourceExt};

/// Where an object lives: its namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    namespace: String,
    name: String,
}

impl ObjectKey {
    /// The key of `name` in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey { namespace: namespace.into(), name: name.into() }
    }

    /// The key of `obj`.
    pub fn of<K: Resource>(obj: &K) -> Self {
        ObjectKey::new(obj.namespace().unwrap_or_default(), obj.name_any())
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
