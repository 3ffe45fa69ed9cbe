//! The artifact layer types: which sources are layered, in which order, where.
//!
//! This is the shape of a GameZone's `spec.artifacts` and of the plan gamezone-init reads; the
//! CRD embeds these types, so every field carries a doc comment (it becomes `kubectl explain`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One artifact layer: a source whose content (or only its `subPath`) is placed at `path`.
/// Layers apply top to bottom; a later layer's file replaces an earlier one at the same path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.git), has(self.s3), has(self.p4Export), has(self.local)].filter(x, x).size() == 1",
    "message": "set exactly one source per artifact: git, s3, p4Export or local"
}]))]
pub struct Layer {
    /// Where the layer's content goes. In a GameZone this is the absolute path the game processes see
    /// (for example `/app/artifacts/config`); in a plan given to the init-container it is relative to
    /// the destination root.
    pub path: String,
    /// Take only this folder of the source (relative, no `..`); the whole source when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    /// A git repository at a branch, tag or exact commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
    /// A key prefix in an S3-compatible bucket (AWS S3, Tencent COS, MinIO ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Source>,
    /// A Perforce depot exported as a tarball plus manifest by a CI job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p4_export: Option<P4ExportSource>,
    /// A directory on the machine running the layering (development, tests, live editing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalSource>,
}

/// The source of a layer, borrowed from whichever field of [`Layer`] is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceRef<'a> {
    /// A git repository.
    Git(&'a GitSource),
    /// An S3 prefix.
    S3(&'a S3Source),
    /// A p4 export.
    P4Export(&'a P4ExportSource),
    /// A local directory.
    Local(&'a LocalSource),
}

impl Layer {
    /// The one source this layer names, or `None` when zero or several are set.
    pub fn source(&self) -> Option<SourceRef<'_>> {
        let mut found = [
            self.git.as_ref().map(SourceRef::Git),
            self.s3.as_ref().map(SourceRef::S3),
            self.p4_export.as_ref().map(SourceRef::P4Export),
            self.local.as_ref().map(SourceRef::Local),
        ]
        .into_iter()
        .flatten();
        match (found.next(), found.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }
}

/// What a Secret's name may be (a DNS subdomain), so a name like `../x` is refused by the API
/// server before it reaches a path or a URL.
pub const SECRET_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Names a Secret holding credentials. Keys follow Flux's conventions:
/// git: `username` + `password`, or `bearerToken`, or `identity` (SSH private key) + `known_hosts`;
/// S3: `accesskey` + `secretkey`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret, in the zone's namespace. The init-container reads it mounted as files
    /// at `<secrets dir>/<name>/<key>`.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_NAME_PATTERN))]
    pub name: String,
}

/// A git repository and the reference to take from it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.branch), has(self.tag), has(self.commit)].filter(x, x).size() <= 1",
    "message": "set at most one of branch, tag or commit"
}]))]
pub struct GitSource {
    /// Repository URL: `https://`, `http://`, `git://` or `ssh://` (or `user@host:path`).
    pub url: String,
    /// Branch to follow; the default branch (HEAD) when no branch, tag or commit is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Tag to take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Exact 40-hex commit to take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Secret with `username`/`password`, `bearerToken`, or `identity`/`known_hosts` for SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// A key prefix in an S3-compatible bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    /// Endpoint URL, for example `https://cos.ap-beijing.myqcloud.com` or `http://minio:9000`.
    pub endpoint: String,
    /// Region; `us-east-1` when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix to take (a folder when it ends with `/`); the whole bucket when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`, MinIO and most on-prem stores) instead of
    /// virtual-hosted (`bucket.endpoint/key`, AWS and COS). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// Secret with `accesskey` and `secretkey`; anonymous access when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// A Perforce depot exported as a tarball (`.tar`, `.tar.gz`, `.tar.zst`) with a manifest beside it
/// (`<archive>.manifest.json`: changelist, archive sha256, and per file depot path, revision, size, sha256).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.url) != has(self.s3)",
    "message": "set exactly one of url or s3"
}]))]
pub struct P4ExportSource {
    /// Where the archive is: `https://`, `http://`, `file://` or a plain path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Where the archive is, when it is in an S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Object>,
    /// Expected sha256 of the archive (hex); when set, a different archive is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Secret for an HTTP(S) URL: `username`/`password` or `bearerToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// One object in an S3-compatible bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Object {
    /// Endpoint URL.
    pub endpoint: String,
    /// Region; `us-east-1` when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Bucket name.
    pub bucket: String,
    /// Object key of the archive.
    pub key: String,
    /// Path-style addressing; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// Secret with `accesskey` and `secretkey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// A directory readable where the layering runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalSource {
    /// Absolute path of the directory.
    pub path: String,
}

/// Removes `user:password@` from a URL and drops its query (presigned URLs carry tokens there).
pub fn redact_url(url: &str) -> String {
    let (head, _query) = url.split_once('?').map_or((url, None), |(h, q)| (h, Some(q)));
    if let Some((scheme, rest)) = head.split_once("://") {
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if path.is_empty() && !rest.contains('/') {
            format!("{scheme}://{host}")
        } else {
            format!("{scheme}://{host}/{path}")
        }
    } else {
        head.to_owned()
    }
}

impl Layer {
    /// The layer's source in words, for logs, errors and revisions: kind and location, never credentials.
    pub fn describe(&self) -> String {
        match self.source() {
            Some(SourceRef::Git(g)) => format!("git {}", redact_url(&g.url)),
            Some(SourceRef::S3(s)) => {
                let prefix = s.prefix.as_deref().unwrap_or("");
                format!("s3 {}/{}/{}", redact_url(&s.endpoint).trim_end_matches('/'), s.bucket, prefix)
            }
            Some(SourceRef::P4Export(p)) => match (&p.url, &p.s3) {
                (Some(u), _) => format!("p4Export {}", redact_url(u)),
                (None, Some(o)) => {
                    format!("p4Export s3 {}/{}/{}", redact_url(&o.endpoint).trim_end_matches('/'), o.bucket, o.key)
                }
                (None, None) => "p4Export (no location)".to_owned(),
            },
            Some(SourceRef::Local(l)) => format!("local {}", l.path),
            None => "no single source".to_owned(),
        }
    }

    /// The reference a layer follows, in words (`branch main`, `tag v1`, `commit abc…`).
    pub fn reference(&self) -> Option<String> {
        let g = self.git.as_ref()?;
        g.branch
            .as_ref()
            .map(|b| format!("branch {b}"))
            .or_else(|| g.tag.as_ref().map(|t| format!("tag {t}")))
            .or_else(|| g.commit.as_ref().map(|c| format!("commit {c}")))
    }
}
