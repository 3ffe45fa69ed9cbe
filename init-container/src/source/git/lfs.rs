//! Git LFS objects of a git layer. A blob that is an LFS pointer (spec v1) stands for the object
//! it names: the object is asked of the repository's LFS server through the batch API with the
//! layer's credentials, downloaded to a scratch file, checked against the pointer's sha256 and
//! size, and only then written where the pointer was. A pointer never reaches the tree.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use futures::StreamExt as _;
use sha2::{Digest, Sha256};

use super::{GitAuth, USER_AGENT};
use crate::Result;
use crate::error::Ctx;
use crate::retry;
use crate::tree::TreeWriter;

/// The largest blob read as a pointer (git-lfs's own limit).
const POINTER_MAX: usize = 1024;
/// Objects asked for in one batch request.
const BATCH: usize = 100;
/// The largest batch answer read (a few hundred bytes per object).
const ANSWER_MAX: usize = 8 << 20;
const MEDIA_TYPE: &str = "application/vnd.git-lfs+json";

/// What an LFS pointer names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pointer {
    /// sha256 of the object, 64 lower-case hex.
    pub oid: String,
    pub size: u64,
}

/// One pointer of the layer: where its object goes.
#[derive(Clone, Debug)]
pub(crate) struct Wanted {
    pub rel: String,
    pub exec: bool,
    pub pointer: Pointer,
}

/// The LFS pointer `content` is, if it is one: `version https://git-lfs.github.com/spec/v1`,
/// then `oid sha256:<64 hex>` and `size <n>`.
pub(crate) fn pointer(content: &[u8]) -> Option<Pointer> {
    if content.len() > POINTER_MAX {
        return None;
    }
    let text = std::str::from_utf8(content).ok()?;
    let mut lines = text.lines();
    if lines.next()? != "version https://git-lfs.github.com/spec/v1" {
        return None;
    }
    let (mut oid, mut size) = (None, None);
    for line in lines {
        if let Some(v) = line.strip_prefix("oid sha256:") {
            oid = Some(v);
        } else if let Some(v) = line.strip_prefix("size ") {
            size = v.parse::<u64>().ok();
        }
    }
    let (oid, size) = (oid?, size?);
    let hex = oid.len() == 64 && oid.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then(|| Pointer { oid: oid.to_owned(), size })
}

/// Where the repository's LFS objects are: `lfs.url` of its `.lfsconfig`, else git-lfs's
/// default, `<url>.git/info/lfs` (over https for ssh and git:// remotes).
pub(crate) fn endpoint(url: &str, lfsconfig: Option<&str>) -> std::result::Result<String, String> {
    if let Some(configured) = lfsconfig.and_then(lfs_url) {
        return Ok(configured.trim_end_matches('/').to_owned());
    }
    let base = if let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) {
        let scheme = if url.starts_with("https://") { "https" } else { "http" };
        format!("{scheme}://{}", rest.trim_end_matches('/'))
    } else if let Some(rest) = url.strip_prefix("ssh://").or_else(|| url.strip_prefix("git://")) {
        let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let (host, path) = rest.split_once('/').ok_or_else(|| format!("`{url}` names no repository path"))?;
        let host = host.split(':').next().unwrap_or(host);
        format!("https://{host}/{}", path.trim_end_matches('/'))
    } else {
        return Err(format!("no LFS server is known for `{url}`: set `lfs.url` in the repository's .lfsconfig"));
    };
    Ok(if base.ends_with(".git") { format!("{base}/info/lfs") } else { format!("{base}.git/info/lfs") })
}

/// `url` of the `[lfs]` section of a git config text.
fn lfs_url(text: &str) -> Option<&str> {
    let mut in_lfs = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_lfs = line.trim_start_matches('[').trim_end_matches(']').trim().eq_ignore_ascii_case("lfs");
        } else if in_lfs
            && let Some((k, v)) = line.split_once('=')
            && k.trim().eq_ignore_ascii_case("url")
        {
            return Some(v.trim().trim_matches('"'));
        }
    }
    None
}

#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default)]
    objects: Vec<Object>,
}

#[derive(serde::Deserialize)]
struct Object {
    oid: String,
    #[serde(default)]
    actions: Option<Actions>,
    #[serde(default)]
    error: Option<ObjectError>,
}

#[derive(serde::Deserialize)]
struct Actions {
    download: Option<Action>,
}

#[derive(serde::Deserialize)]
struct Action {
    href: String,
    /// Headers to send with the download (some servers send `null`).
    #[serde(default)]
    header: Option<BTreeMap<String, String>>,
}

#[derive(serde::Deserialize)]
struct ObjectError {
    code: u16,
    #[serde(default)]
    message: String,
}

/// Downloads every wanted object (once per oid) and writes it at each of its paths.
pub(crate) async fn fetch(
    ctx: &Ctx,
    auth: &GitAuth,
    endpoint: &str,
    wanted: &[Wanted],
    scratch: &Path,
    w: &TreeWriter,
) -> Result<()> {
    auth.egress.check_url("the LFS server (.lfsconfig lfs.url)", endpoint).map_err(|m| ctx.invalid(m))?;
    let client = crate::source::http_client(ctx, &auth.egress)?;
    let mut by_oid: BTreeMap<&str, (&Pointer, Vec<&Wanted>)> = BTreeMap::new();
    for x in wanted {
        by_oid.entry(x.pointer.oid.as_str()).or_insert_with(|| (&x.pointer, Vec::new())).1.push(x);
    }
    let oids: Vec<&str> = by_oid.keys().copied().collect();
    let mut written = std::collections::HashSet::new();
    for chunk in oids.chunks(BATCH) {
        let objects: Vec<_> =
            chunk.iter().map(|oid| serde_json::json!({"oid": oid, "size": by_oid[oid].0.size})).collect();
        let body = serde_json::json!({
            "operation": "download", "transfers": ["basic"], "objects": objects, "hash_algo": "sha256"
        });
        let answer = batch(ctx, auth, &client, endpoint, &body).await?;
        for object in answer.objects {
            let Some((pointer, places)) = by_oid.get(object.oid.as_str()) else { continue };
            let first = places[0];
            if let Some(e) = object.error {
                let message = crate::error::cap(e.message);
                return Err(match e.code {
                    404 | 410 => ctx.not_found(format!(
                        "the LFS server has no object {} for `{}` (HTTP {}: {message}); push it with `git lfs push --all`",
                        pointer.oid, first.rel, e.code
                    )),
                    401 | 403 => ctx.auth(auth_hint(auth)),
                    _ => ctx.source(format!("the LFS server refused object {} (HTTP {}: {message})", pointer.oid, e.code)),
                });
            }
            let Some(action) = object.actions.and_then(|a| a.download) else {
                return Err(ctx.source(format!("the LFS server gave no download for object {}", pointer.oid)));
            };
            download(ctx, auth, &client, endpoint, &action, pointer, scratch, &first.rel, first.exec, w).await?;
            for other in &places[1..] {
                w.copy_file(ctx, &other.rel, &first.rel)?;
            }
            written.insert(pointer.oid.as_str());
        }
        if let Some(missing) = chunk.iter().find(|oid| !written.contains(*oid)) {
            return Err(ctx.source(format!("the LFS server did not answer for object {missing}")));
        }
    }
    Ok(())
}

fn auth_hint(auth: &GitAuth) -> String {
    format!("the LFS server refused the layer's credentials; {}", auth.hint())
}

/// One batch request; its answer read up to [`ANSWER_MAX`].
async fn batch(
    ctx: &Ctx,
    auth: &GitAuth,
    client: &reqwest::Client,
    endpoint: &str,
    body: &serde_json::Value,
) -> Result<Answer> {
    let url = format!("{endpoint}/objects/batch");
    let req = client
        .post(&url)
        .header("Accept", MEDIA_TYPE)
        .header("Content-Type", MEDIA_TYPE)
        .header("User-Agent", USER_AGENT)
        .body(body.to_string());
    let resp = auth.authorize(req).send().await.map_err(|e| crate::source::reqwest_error(ctx, "the LFS server", &e))?;
    match resp.status().as_u16() {
        200 => {}
        401 | 403 => return Err(ctx.auth(auth_hint(auth))),
        s if retry::status_is_transient(s) => return Err(ctx.transient(format!("HTTP {s} from the LFS batch API"))),
        s => {
            let what = crate::source::status_phrase(s, ".lfsconfig lfs.url");
            return Err(ctx.source(format!("{what} from the LFS batch API at {url}")));
        }
    }
    let mut stream = resp.bytes_stream();
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| crate::source::reqwest_error(ctx, "the LFS server", &e))?;
        if text.len() + chunk.len() > ANSWER_MAX {
            return Err(ctx.source(format!("the LFS batch answer is over {ANSWER_MAX} bytes")));
        }
        text.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&text).map_err(|e| ctx.source(format!("the LFS batch answer is not what the API says: {e}")))
}

/// Downloads one object to a scratch file, checks its size and sha256 as it streams, then
/// writes it into the tree.
#[allow(clippy::too_many_arguments)]
async fn download(
    ctx: &Ctx,
    auth: &GitAuth,
    client: &reqwest::Client,
    endpoint: &str,
    action: &Action,
    pointer: &Pointer,
    scratch: &Path,
    rel: &str,
    exec: bool,
    w: &TreeWriter,
) -> Result<()> {
    auth.egress.check_url("an LFS download", &action.href).map_err(|m| ctx.invalid(m))?;
    let mut req = client.get(&action.href).header("User-Agent", USER_AGENT);
    let headers = action.header.clone().unwrap_or_default();
    for (k, v) in &headers {
        req = req.header(k, v);
    }
    // The layer's credentials go to the LFS server itself, never to another host it names.
    let same_origin = |a: &str, b: &str| {
        let (Ok(a), Ok(b)) = (url::Url::parse(a), url::Url::parse(b)) else { return false };
        a.scheme() == b.scheme()
            && a.host_str() == b.host_str()
            && a.port_or_known_default() == b.port_or_known_default()
    };
    if !headers.keys().any(|k| k.eq_ignore_ascii_case("authorization")) && same_origin(&action.href, endpoint) {
        req = auth.authorize(req);
    }
    let resp = req.send().await.map_err(|e| crate::source::reqwest_error(ctx, "an LFS download", &e))?;
    match resp.status().as_u16() {
        200 => {}
        401 | 403 => return Err(ctx.auth(auth_hint(auth))),
        s if retry::status_is_transient(s) => {
            return Err(ctx.transient(format!("HTTP {s} downloading LFS object {}", pointer.oid)));
        }
        s => return Err(ctx.source(format!("HTTP {s} downloading LFS object {} for `{rel}`", pointer.oid))),
    }
    let mut file = tempfile::Builder::new()
        .prefix(".lfs-")
        .tempfile_in(scratch)
        .map_err(|e| ctx.io(format!("create a scratch file in {}", scratch.display()), e))?;
    let (mut hasher, mut got) = (Sha256::new(), 0u64);
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| crate::source::reqwest_error(ctx, "an LFS download", &e))?;
        got += chunk.len() as u64;
        if got > pointer.size {
            return Err(ctx.verification(format!(
                "LFS object {} for `{rel}` is longer than the {} bytes its pointer says; the LFS server sent something else",
                pointer.oid, pointer.size
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(|e| ctx.io("write an LFS object to its scratch file", e))?;
    }
    let digest = hex::encode(hasher.finalize());
    if got != pointer.size || digest != pointer.oid {
        return Err(ctx.verification(format!(
            "LFS object for `{rel}` is {got} bytes with sha256 {digest}; its pointer says {} bytes with sha256 {}: the LFS server sent something else",
            pointer.size, pointer.oid
        )));
    }
    let mut read = file.reopen().map_err(|e| ctx.io("reopen an LFS object's scratch file", e))?;
    w.write_reader(ctx, rel, exec, &mut read)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

    #[test]
    fn a_pointer_is_the_v1_text_with_a_sha256_oid_and_a_size() {
        let text = format!("version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\nsize 12345\n");
        assert_eq!(pointer(text.as_bytes()), Some(Pointer { oid: OID.into(), size: 12345 }));
        assert_eq!(pointer(b"hello"), None);
        assert_eq!(pointer(text.replace("v1", "v2").as_bytes()), None);
        assert_eq!(pointer(text.replace("size 12345\n", "").as_bytes()), None, "no size");
        assert_eq!(pointer(text.replace(OID, "../../etc").as_bytes()), None, "not an oid");
        let long = format!("{text}{}", " ".repeat(POINTER_MAX));
        assert_eq!(pointer(long.as_bytes()), None, "a large blob is content");
    }

    #[test]
    fn the_lfs_server_is_the_lfsconfig_url_or_git_lfs_default() {
        let cfg = "[core]\n\turl = nope\n[lfs]\n\turl = http://127.0.0.1:9/api/org/game/\n";
        assert_eq!(endpoint("git://h/game", Some(cfg)).unwrap(), "http://127.0.0.1:9/api/org/game");
        assert_eq!(endpoint("https://h/org/game.git", None).unwrap(), "https://h/org/game.git/info/lfs");
        assert_eq!(endpoint("https://h/org/game", None).unwrap(), "https://h/org/game.git/info/lfs");
        assert_eq!(endpoint("ssh://git@h:22/org/game.git", None).unwrap(), "https://h/org/game.git/info/lfs");
        assert!(endpoint("git@h:org/game.git", None).unwrap_err().contains("lfs.url"));
    }
}
