//! Where credentials come from. The init-container reads mounted Secrets from a directory; the
//! operator supplies its own [`Credentials`] backed by Secrets it fetched from the API server.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;

use zeroize::Zeroizing;

/// A secret value, wiped from memory when dropped.
pub type Secret = Zeroizing<Vec<u8>>;

/// Looks up one key of one Secret.
pub trait Credentials: Send + Sync {
    /// The value of `key` in Secret `secret`; `None` when the Secret or the key does not exist.
    fn get(&self, secret: &str, key: &str) -> io::Result<Option<Secret>>;
}

/// Secrets mounted as files: `<dir>/<secret>/<key>`.
#[derive(Clone, Debug)]
pub struct DirCredentials {
    dir: PathBuf,
}

impl DirCredentials {
    /// Reads Secrets below `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirCredentials { dir: dir.into() }
    }
}

fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

impl Credentials for DirCredentials {
    fn get(&self, secret: &str, key: &str) -> io::Result<Option<Secret>> {
        if !plain_name(secret) || !plain_name(key) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("Secret name `{secret}` / key `{key}` must be a plain name"),
            ));
        }
        match std::fs::read(self.dir.join(secret).join(key)) {
            Ok(v) => Ok(Some(Zeroizing::new(v))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Credentials held in memory, keyed by (Secret, key). Handy for the operator and for tests.
#[derive(Clone, Default)]
pub struct MapCredentials {
    values: HashMap<(String, String), Vec<u8>>,
}

impl MapCredentials {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` of Secret `secret`.
    pub fn insert(&mut self, secret: &str, key: &str, value: impl Into<Vec<u8>>) -> &mut Self {
        self.values.insert((secret.to_owned(), key.to_owned()), value.into());
        self
    }
}

impl std::fmt::Debug for MapCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapCredentials").field("entries", &self.values.len()).finish()
    }
}

impl Credentials for MapCredentials {
    fn get(&self, secret: &str, key: &str) -> io::Result<Option<Secret>> {
        Ok(self.values.get(&(secret.to_owned(), key.to_owned())).map(|v| Zeroizing::new(v.clone())))
    }
}

/// No credentials at all.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCredentials;

impl Credentials for NoCredentials {
    fn get(&self, _secret: &str, _key: &str) -> io::Result<Option<Secret>> {
        Ok(None)
    }
}

/// Reads a text key, trimming the trailing newline `kubectl create secret --from-file` often leaves.
pub(crate) fn text_key(
    creds: &dyn Credentials,
    ctx: &crate::error::Ctx,
    secret: &str,
    key: &str,
) -> crate::Result<Option<Zeroizing<String>>> {
    let raw = creds
        .get(secret, key)
        .map_err(|e| ctx.credentials(format!("cannot read Secret `{secret}` key `{key}`: {e}")))?;
    let Some(raw) = raw else { return Ok(None) };
    let s = std::str::from_utf8(&raw)
        .map_err(|_| ctx.credentials(format!("Secret `{secret}` key `{key}` is not UTF-8 text")))?;
    Ok(Some(Zeroizing::new(s.trim_end_matches(['\n', '\r']).to_owned())))
}
