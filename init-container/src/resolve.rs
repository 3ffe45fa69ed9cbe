//! Turning moving references (branches, prefixes, exports) into exact revisions.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::creds::Credentials;
use crate::egress::Egress;
use crate::error::Ctx;
use crate::plan::{Layer, SourceRef};
use crate::retry::RetryPolicy;
use crate::source::{self, git, local, p4, s3};
use crate::{Error, Result};

/// The exact revision of one layer. Serializes as
/// `{"layer":0,"source":"git https://host/repo.git","revision":"<40 hex>"}`; never holds credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// Index of the layer in the plan.
    pub layer: usize,
    /// The layer's source, without credentials.
    pub source: String,
    /// git: 40-hex commit; s3: `sha256:<hex>` of `key etag` lines; p4 export:
    /// `<changelist>@sha256:<archive hex>`; local: `sha256:<hex>` of `relpath size mtime mode` lines.
    pub revision: String,
}

/// How a resolve runs: retries, which servers may be reached, and how long each layer may take.
#[derive(Clone, Debug)]
pub struct Options {
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Which servers layers may be fetched from.
    pub egress: Egress,
    /// Total time one layer may take to resolve, retries included.
    pub deadline: Duration,
}

/// Default total time to resolve one layer.
pub const RESOLVE_DEADLINE: Duration = Duration::from_secs(60);

impl Default for Options {
    /// Default retries, the strict egress policy, [`RESOLVE_DEADLINE`].
    fn default() -> Self {
        Options { retry: RetryPolicy::default(), egress: Egress::strict(), deadline: RESOLVE_DEADLINE }
    }
}

/// A layer with its credentials read, ready to resolve or fetch.
pub(crate) struct Prepared {
    pub ctx: Ctx,
    pub kind: Kind,
}

pub(crate) enum Kind {
    Git(Box<(Arc<git::GitAuth>, crate::plan::GitSource)>),
    S3(Arc<s3::S3Layer>),
    P4(Arc<p4::P4Layer>),
    Local(PathBuf),
}

/// Reads the layer's Secret and builds its client.
/// URLs are checked against `egress` here, before any connection.
pub(crate) fn prepare(
    index: usize,
    layer: &Layer,
    creds: &dyn Credentials,
    policy: &RetryPolicy,
    egress: &Egress,
) -> Result<Prepared> {
    let mut ctx = Ctx::new(index, layer.describe());
    let sub = layer
        .sub_path
        .as_deref()
        .map(crate::paths::components)
        .transpose()
        .map_err(|m| ctx.invalid(m))?
        .unwrap_or_default();
    let sub = crate::paths::join(&sub);
    let kind = match layer.source() {
        Some(SourceRef::Git(g)) => {
            egress.check_url("git.url", &g.url).map_err(|m| ctx.invalid(m))?;
            Kind::Git(Box::new((Arc::new(git::load_auth(&mut ctx, g, creds, egress)?), g.clone())))
        }
        Some(SourceRef::S3(s)) => {
            let secret = s.secret_ref.as_ref().map(|r| r.name.clone());
            let keys = source::s3_keys(&mut ctx, secret.as_deref(), creds)?;
            let store = source::s3_store(
                &ctx,
                ("s3.endpoint", &s.endpoint),
                s.region.as_deref(),
                &s.bucket,
                s.path_style,
                keys.as_ref().map(|(a, k)| (a.as_str(), k.as_str())),
                egress,
            )?;
            let prefix = crate::paths::components(s.prefix.as_deref().unwrap_or("")).map_err(|m| ctx.invalid(m))?;
            let prefix = crate::paths::join2(&crate::paths::join(&prefix), &sub);
            Kind::S3(Arc::new(s3::S3Layer {
                ctx: ctx.clone(),
                store: Arc::new(store),
                prefix,
                secret,
                policy: policy.clone(),
                listed: Default::default(),
            }))
        }
        Some(SourceRef::P4Export(p)) => {
            let secret = p.secret_ref.as_ref().map(|r| r.name.clone());
            if let Some(u) = &p.url {
                egress.check_url("p4Export.url", u).map_err(|m| ctx.invalid(m))?;
            }
            let location = match (&p.url, &p.s3) {
                (Some(u), _) if u.starts_with("http://") || u.starts_with("https://") => {
                    let (mut basic, mut bearer) = (None, None);
                    if let Some(s) = &secret {
                        let user = crate::creds::text_key(creds, &ctx, s, "username")?;
                        let pass = crate::creds::text_key(creds, &ctx, s, "password")?;
                        bearer = crate::creds::text_key(creds, &ctx, s, "bearerToken")?;
                        for v in [&pass, &bearer].into_iter().flatten() {
                            ctx.add_secret(v);
                        }
                        basic = user.zip(pass);
                        if basic.is_none() && bearer.is_none() {
                            return Err(
                                ctx.credentials(format!("Secret `{s}` needs `username`+`password` or `bearerToken`"))
                            );
                        }
                    }
                    p4::Location::Http { url: u.clone(), basic, bearer, secret }
                }
                (Some(u), _) => p4::Location::File(PathBuf::from(u.strip_prefix("file://").unwrap_or(u))),
                (None, Some(o)) => {
                    let secret = o.secret_ref.as_ref().map(|r| r.name.clone());
                    let keys = source::s3_keys(&mut ctx, secret.as_deref(), creds)?;
                    let store = source::s3_store(
                        &ctx,
                        ("p4Export.s3.endpoint", &o.endpoint),
                        o.region.as_deref(),
                        &o.bucket,
                        o.path_style,
                        keys.as_ref().map(|(a, k)| (a.as_str(), k.as_str())),
                        egress,
                    )?;
                    p4::Location::S3 { store: Arc::new(store), key: o.key.clone(), secret }
                }
                (None, None) => return Err(ctx.invalid("set p4Export.url or p4Export.s3")),
            };
            Kind::P4(Arc::new(p4::P4Layer {
                ctx: ctx.clone(),
                location,
                expected_sha256: p.sha256.clone(),
                policy: policy.clone(),
                egress: egress.clone(),
            }))
        }
        Some(SourceRef::Local(_)) if !egress.local_sources_allowed() => {
            return Err(ctx.invalid(
                "local: folders on the node are read only when the admin allows local sources (--allow-local-sources); use a git, s3 or p4Export source",
            ));
        }
        Some(SourceRef::Local(l)) => Kind::Local(local::source_dir(&l.path, &sub)),
        None => return Err(ctx.invalid("set exactly one source: git, s3, p4Export or local")),
    };
    Ok(Prepared { ctx, kind })
}

/// Resolves one prepared layer within `deadline`; an S3 layer keeps its listing for `apply` of
/// the same layer.
pub(crate) async fn resolve_one(p: &Prepared, policy: &RetryPolicy, deadline: Duration) -> Result<String> {
    crate::retry::within(&p.ctx, deadline, resolve_kind(p, policy, deadline)).await
}

async fn resolve_kind(p: &Prepared, policy: &RetryPolicy, deadline: Duration) -> Result<String> {
    match &p.kind {
        Kind::Git(b) => {
            let (auth, g) = &**b;
            git::resolve(&p.ctx, g, auth.clone(), policy, deadline).await
        }
        Kind::S3(s) => s.resolve().await,
        Kind::P4(x) => x.resolve().await,
        Kind::Local(dir) => {
            let (ctx, dir) = (p.ctx.clone(), dir.clone());
            tokio::task::spawn_blocking(move || local::resolve(&ctx, &dir))
                .await
                .map_err(|e| Error::Plan(format!("resolve task failed: {e}")))?
        }
    }
}

/// Resolves every layer to an exact revision, with the default [`Options`] (strict egress).
pub async fn resolve(layers: &[Layer], creds: &dyn Credentials) -> Result<Vec<Revision>> {
    resolve_opts(layers, creds, &Options::default()).await
}

/// Resolves every layer to an exact revision with `policy` and the default, strict egress.
pub async fn resolve_with(layers: &[Layer], creds: &dyn Credentials, policy: &RetryPolicy) -> Result<Vec<Revision>> {
    resolve_opts(layers, creds, &Options { retry: policy.clone(), ..Options::default() }).await
}

/// Resolves every layer to an exact revision (layers are resolved concurrently, each within
/// `opts.deadline`, connecting only where `opts.egress` allows).
pub async fn resolve_opts(layers: &[Layer], creds: &dyn Credentials, opts: &Options) -> Result<Vec<Revision>> {
    crate::plan::validate(layers)?;
    let prepared = layers
        .iter()
        .enumerate()
        .map(|(i, l)| prepare(i, l, creds, &opts.retry, &opts.egress))
        .collect::<Result<Vec<_>>>()?;
    let revs =
        futures::future::try_join_all(prepared.iter().map(|p| resolve_one(p, &opts.retry, opts.deadline))).await?;
    Ok(revs
        .into_iter()
        .enumerate()
        .map(|(i, revision)| Revision { layer: i, source: layers[i].describe(), revision })
        .collect())
}

/// Parses pinned revisions: the JSON `resolve` prints (a list of [`Revision`]) or a list of strings.
pub fn parse_revisions(text: &str) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Doc {
        Full(Vec<Revision>),
        Plain(Vec<String>),
    }
    match serde_json::from_str::<Doc>(text) {
        Ok(Doc::Plain(v)) => Ok(v),
        Ok(Doc::Full(mut v)) => {
            v.sort_by_key(|r| r.layer);
            if v.iter().enumerate().any(|(i, r)| r.layer != i) {
                return Err(Error::Revisions("layers must be numbered 0..n without gaps".into()));
            }
            Ok(v.into_iter().map(|r| r.revision).collect())
        }
        Err(e) => Err(Error::Revisions(format!(
            "expected the JSON printed by `gamezone-init resolve` or a list of strings: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_revision_forms() {
        let full = r#"[{"layer":1,"source":"s","revision":"b"},{"layer":0,"source":"s","revision":"a"}]"#;
        assert_eq!(parse_revisions(full).unwrap(), ["a", "b"]);
        assert_eq!(parse_revisions(r#"["x"]"#).unwrap(), ["x"]);
        assert!(parse_revisions("{").is_err());
        assert!(parse_revisions(r#"[{"layer":2,"source":"s","revision":"a"}]"#).is_err());
    }

    #[test]
    fn revision_json_shape() {
        let r = Revision { layer: 0, source: "git https://h/r.git".into(), revision: "a".repeat(40) };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            format!(r#"{{"layer":0,"source":"git https://h/r.git","revision":"{}"}}"#, "a".repeat(40))
        );
    }
}
