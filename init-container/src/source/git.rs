//! git layers: resolve a branch/tag to a commit, fetch what the layer needs into a bare cache
//! repository, write only the `subPath` subtree from the tree objects.
//!
//! Fetching prefers a partial fetch over protocol v2 (`partial`: the commit's trees, then only the
//! blobs below `subPath`); servers or URLs that cannot do that get libgit2's depth-1 fetch of the
//! whole commit.

mod lfs;
mod partial;
mod protocol;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use git2::{
    CertificateCheckStatus, Cred, CredentialType, ErrorClass, ErrorCode, FetchOptions, Oid, RemoteCallbacks, Repository,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::creds::{Credentials, text_key};
use crate::egress::Egress;
use crate::error::{Ctx, Error};
use crate::plan::GitSource;
use crate::retry::{self, RetryPolicy};
use crate::tree::TreeWriter;
use crate::{Result, paths};

/// Sent on smart-HTTP requests: some servers only speak the smart protocol to `git/` agents.
const USER_AGENT: &str = "git/2.39 (gamezone-init)";

/// Credentials for one git layer, read from its Secret (and URL userinfo).
#[derive(Default)]
pub(crate) struct GitAuth {
    secret: Option<String>,
    userpass: Option<(Zeroizing<String>, Zeroizing<String>)>,
    bearer: Option<Zeroizing<String>>,
    identity: Option<Zeroizing<String>>,
    known_hosts: Option<String>,
    /// URL without userinfo, used for every connection.
    url: String,
    /// Why the ssh host key was refused: libgit2 replaces the callback's message with its own.
    host_key_refused: std::sync::Mutex<Option<String>>,
    /// Which servers may be connected to.
    egress: Egress,
}

impl GitAuth {
    fn hint(&self) -> String {
        match &self.secret {
            Some(s) if self.userpass.is_some() => format!("check Secret `{s}` keys `username`/`password`"),
            Some(s) if self.bearer.is_some() => format!("check Secret `{s}` key `bearerToken`"),
            Some(s) if self.identity.is_some() => format!("check Secret `{s}` keys `identity`/`known_hosts`"),
            Some(s) => format!("Secret `{s}` has none of `username`/`password`, `bearerToken`, `identity`"),
            None if self.userpass.is_some() => "check the credentials in git.url".to_owned(),
            None => "the server wants credentials: set git.secretRef to a Secret with `username`/`password`, `bearerToken` or `identity`/`known_hosts`".to_owned(),
        }
    }

    /// Adds this layer's credentials to a smart-HTTP request.
    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some((u, p)) = &self.userpass {
            req.basic_auth(u.as_str(), Some(p.as_str()))
        } else if let Some(t) = &self.bearer {
            req.bearer_auth(t.as_str())
        } else {
            req
        }
    }

    fn headers(&self) -> Vec<String> {
        self.bearer.as_ref().map(|t| vec![format!("Authorization: Bearer {}", t.as_str())]).unwrap_or_default()
    }
}

/// Reads the layer's Secret; registers every secret value with `ctx` so messages are scrubbed.
pub(crate) fn load_auth(ctx: &mut Ctx, g: &GitSource, creds: &dyn Credentials, egress: &Egress) -> Result<GitAuth> {
    let mut auth = GitAuth { url: g.url.clone(), egress: egress.clone(), ..Default::default() };
    if let Ok(mut u) = url::Url::parse(&g.url)
        && (!u.username().is_empty() || u.password().is_some())
        && matches!(u.scheme(), "http" | "https")
    {
        let user = url_decode(u.username());
        let pass = url_decode(u.password().unwrap_or(""));
        ctx.add_secret(&pass);
        auth.userpass = Some((Zeroizing::new(user), Zeroizing::new(pass)));
        let _ = u.set_username("");
        let _ = u.set_password(None);
        auth.url = u.to_string();
    }
    let Some(secret) = g.secret_ref.as_ref().map(|s| s.name.clone()) else {
        return Ok(auth);
    };
    let get = |key: &str| text_key(creds, ctx, &secret, key);
    let (user, pass, token) = (get("username")?, get("password")?, get("bearerToken")?);
    let identity = creds
        .get(&secret, "identity")
        .map_err(|e| ctx.credentials(format!("cannot read Secret `{secret}` key `identity`: {e}")))?
        .map(|v| Zeroizing::new(String::from_utf8_lossy(&v).into_owned()));
    let known_hosts = get("known_hosts")?.map(|k| k.to_string());
    for s in [&pass, &token].into_iter().flatten() {
        ctx.add_secret(s);
    }
    match (user, pass) {
        (Some(u), Some(p)) => auth.userpass = Some((u, p)),
        (Some(_), None) | (None, Some(_)) => {
            return Err(ctx.credentials(format!("Secret `{secret}` needs both `username` and `password`")));
        }
        (None, None) => {}
    }
    auth.bearer = token;
    if identity.is_some() && known_hosts.is_none() {
        return Err(ctx.credentials(format!(
            "Secret `{secret}` has `identity` but no `known_hosts`; add the server's host key (ssh-keyscan HOST)"
        )));
    }
    auth.identity = identity;
    auth.known_hosts = known_hosts;
    if auth.userpass.is_none() && auth.bearer.is_none() && auth.identity.is_none() {
        return Err(ctx.credentials(format!(
            "Secret `{secret}` has none of the keys `username`+`password`, `bearerToken` or `identity`+`known_hosts`"
        )));
    }
    auth.secret = Some(secret);
    Ok(auth)
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which advertised ref a layer follows.
fn wanted_ref(g: &GitSource) -> (String, String) {
    match (&g.branch, &g.tag) {
        (Some(b), _) => (format!("refs/heads/{b}"), format!("branch `{b}` not found; check git.branch")),
        (None, Some(t)) => (format!("refs/tags/{t}"), format!("tag `{t}` not found; check git.tag")),
        _ => ("HEAD".to_owned(), "the repository has no HEAD (empty?); set git.branch or git.commit".to_owned()),
    }
}

fn pick(refs: &[(String, String)], g: &GitSource, ctx: &Ctx) -> Result<String> {
    let (name, missing) = wanted_ref(g);
    let peeled = format!("{name}^{{}}");
    refs.iter()
        .find(|(n, _)| *n == peeled)
        .or_else(|| refs.iter().find(|(n, _)| *n == name))
        .map(|(_, oid)| oid.clone())
        .ok_or_else(|| ctx.not_found(missing))
}

/// Resolves the layer's branch, tag or HEAD to a 40-hex commit (a pinned commit is returned as is).
/// A git:// listing gives up after `deadline` on its own (its thread cannot be cancelled).
pub(crate) async fn resolve(
    ctx: &Ctx,
    g: &GitSource,
    auth: Arc<GitAuth>,
    policy: &RetryPolicy,
    deadline: std::time::Duration,
) -> Result<String> {
    if let Some(c) = &g.commit {
        return Ok(c.to_ascii_lowercase());
    }
    let refs = if auth.url.starts_with("http://") || auth.url.starts_with("https://") {
        retry::retry(policy, "git ls-remote", || http_refs(ctx, &auth)).await?
    } else if auth.url.starts_with("git://") {
        let deadline = std::time::Instant::now() + deadline;
        retry::retry(policy, "git ls-remote", || {
            let (ctx, auth) = (ctx.clone(), auth.clone());
            async move {
                tokio::task::spawn_blocking(move || partial::daemon_refs(&ctx, &auth, deadline))
                    .await
                    .map_err(|e| Error::Plan(format!("ls-remote task failed: {e}")))?
            }
        })
        .await?
    } else {
        retry::retry(policy, "git ls-remote", || {
            let (ctx, auth) = (ctx.clone(), auth.clone());
            async move {
                tokio::task::spawn_blocking(move || libgit2_refs(&ctx, &auth))
                    .await
                    .map_err(|e| Error::Plan(format!("ls-remote task failed: {e}")))?
            }
        })
        .await?
    };
    pick(&refs, g, ctx)
}

/// Lists refs over smart HTTP (`info/refs`), which also lets a bearer token through.
async fn http_refs(ctx: &Ctx, auth: &GitAuth) -> Result<Vec<(String, String)>> {
    let url = format!("{}/info/refs?service=git-upload-pack", auth.url.trim_end_matches('/'));
    let client = crate::source::http_client(ctx, &auth.egress)?;
    let req = auth.authorize(client.get(&url).header("User-Agent", USER_AGENT));
    let resp = req.send().await.map_err(|e| crate::source::reqwest_error(ctx, "git.url", &e))?;
    let status = resp.status().as_u16();
    match status {
        200 => {}
        401 | 403 => return Err(ctx.auth(auth.hint())),
        404 => return Err(ctx.not_found("repository not found (HTTP 404); check git.url")),
        s if retry::status_is_transient(s) => {
            return Err(ctx.transient(format!("HTTP {s} listing refs")));
        }
        s => {
            let what = crate::source::status_phrase(s, "git.url");
            return Err(ctx.source(format!("{what} listing refs; is git.url a git repository?")));
        }
    }
    let body = resp.bytes().await.map_err(|e| crate::source::reqwest_error(ctx, "git.url", &e))?;
    parse_advertisement(&body).map_err(|m| ctx.source(format!("{m}; is git.url a smart-HTTP git repository?")))
}

/// Parses a protocol v0/v1 ref advertisement (pkt-lines) into (ref, oid) pairs.
pub(crate) fn parse_advertisement(mut body: &[u8]) -> std::result::Result<Vec<(String, String)>, String> {
    let mut refs = Vec::new();
    while body.len() >= 4 {
        let len = std::str::from_utf8(&body[..4])
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .ok_or("malformed pkt-line")?;
        if len == 0 {
            body = &body[4..];
            continue;
        }
        if len < 4 || len > body.len() {
            return Err("truncated pkt-line".into());
        }
        let line = &body[4..len];
        body = &body[len..];
        if line.starts_with(b"#") {
            continue;
        }
        let line = line.split(|&b| b == 0).next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\n');
        if let Some((oid, name)) = line.split_once(' ')
            && oid.len() == 40
        {
            refs.push((name.to_owned(), oid.to_owned()));
        }
    }
    Ok(refs)
}

/// Checks, before libgit2 connects, that the URL's host resolves only to addresses the egress
/// policy allows. libgit2 resolves the name again itself, so a DNS answer that changes between
/// the two lookups (rebinding) is not caught on this path; the smart-HTTP and git:// paths
/// connect to the addresses they checked.
fn preflight(ctx: &Ctx, auth: &GitAuth) -> Result<()> {
    auth.egress.check_url("git.url", &auth.url).map_err(|m| ctx.invalid(m))?;
    let (host, port) = match url::Url::parse(&auth.url) {
        Ok(u) if u.scheme() == "file" => return Ok(()),
        Ok(u) => {
            let port = u.port().unwrap_or(match u.scheme() {
                "git" => 9418,
                "http" => 80,
                "https" => 443,
                _ => 22,
            });
            match u.host_str() {
                Some(h) => (h.to_owned(), port),
                None => return Ok(()),
            }
        }
        // scp-like `user@host:path`, or a local path (allowed by check_url only when local sources are).
        Err(_) => match auth.url.split_once(':') {
            Some((h, _)) if !h.contains('/') => (h.rsplit_once('@').map_or(h, |(_, h)| h).to_owned(), 22),
            _ => return Ok(()),
        },
    };
    match auth.egress.lookup_blocking(&host, port) {
        Ok(_) => Ok(()),
        Err(r) if r.policy => Err(ctx.invalid(format!("git.url: {r}"))),
        Err(r) => Err(ctx.transient(format!("git.url: {r}"))),
    }
}

fn libgit2_refs(ctx: &Ctx, auth: &GitAuth) -> Result<Vec<(String, String)>> {
    preflight(ctx, auth)?;
    let failed = Cell::new(false);
    let tried = Cell::new(false);
    let mut remote = git2::Remote::create_detached(auth.url.as_str())
        .map_err(|_| ctx.invalid("git.url: libgit2 cannot use this URL; check git.url"))?;
    let cbs = callbacks(auth, &tried, &failed);
    let conn = remote
        .connect_auth(git2::Direction::Fetch, Some(cbs), None)
        .map_err(|e| map_git_error(ctx, auth, &e, failed.get()))?;
    let list = conn.list().map_err(|e| map_git_error(ctx, auth, &e, failed.get()))?;
    Ok(list.iter().map(|h| (h.name().to_owned(), h.oid().to_string())).collect())
}

fn callbacks<'a>(auth: &'a GitAuth, tried: &'a Cell<bool>, failed: &'a Cell<bool>) -> RemoteCallbacks<'a> {
    let mut cbs = RemoteCallbacks::new();
    cbs.credentials(move |_url, user_from_url, allowed| {
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
            && let Some((u, p)) = &auth.userpass
        {
            if tried.replace(true) {
                failed.set(true);
                return Err(git2::Error::from_str("credentials rejected"));
            }
            return Cred::userpass_plaintext(u, p);
        }
        if allowed.contains(CredentialType::SSH_KEY)
            && let Some(key) = &auth.identity
        {
            if tried.replace(true) {
                failed.set(true);
                return Err(git2::Error::from_str("ssh key rejected"));
            }
            return Cred::ssh_key_from_memory(user_from_url.unwrap_or("git"), None, key, None);
        }
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(user_from_url.unwrap_or("git"));
        }
        failed.set(true);
        Err(git2::Error::from_str("the server asks for credentials this layer does not have"))
    });
    cbs.certificate_check(move |cert, host| {
        let Some(hk) = cert.as_hostkey() else {
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        };
        let known = auth.known_hosts.as_deref().unwrap_or("");
        let checked = match hk.hostkey() {
            Some(key) => check_host_key(known, host, &auth.url, key),
            None => Err("the ssh server sent no host key".to_owned()),
        };
        checked.map(|()| CertificateCheckStatus::CertificateOk).map_err(|m| {
            *auth.host_key_refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(m.clone());
            git2::Error::new(ErrorCode::Certificate, ErrorClass::Ssh, m)
        })
    });
    cbs
}

/// Checks an ssh host key against `known_hosts` lines (plain host names; hashed entries are not supported).
pub(crate) fn check_host_key(known_hosts: &str, host: &str, url: &str, key: &[u8]) -> std::result::Result<(), String> {
    let port = url::Url::parse(url).ok().and_then(|u| u.port()).unwrap_or(22);
    let names = if port == 22 { vec![host.to_owned()] } else { vec![format!("[{host}]:{port}")] };
    let mut kinds_listed: Vec<&str> = Vec::new();
    for line in known_hosts.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(hosts), Some(kind), Some(b64)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !hosts.split(',').any(|h| names.iter().any(|n| n == h)) {
            continue;
        }
        kinds_listed.push(kind);
        if base64::engine::general_purpose::STANDARD.decode(b64).is_ok_and(|k| k == key) {
            return Ok(());
        }
    }
    // libssh2 picks the host key kind by its own preference (ed25519 first), not by the Secret's
    // known_hosts, so one listing only other kinds is a setup mistake rather than an attack.
    if let Some(offered) = key_kind(key)
        && !kinds_listed.is_empty()
        && !kinds_listed.contains(&offered)
    {
        return Err(format!(
            "known_hosts lists only {} for {} but the server offered its {offered} host key; add that key (ssh-keyscan lists every kind) to the Secret's `known_hosts`",
            kinds_listed.join(", "),
            names[0]
        ));
    }
    if !kinds_listed.is_empty() {
        Err(format!(
            "host key of {host} does not match known_hosts (possible man-in-the-middle); update the Secret's `known_hosts`"
        ))
    } else {
        Err(format!("{} is not in known_hosts; add its key (ssh-keyscan) to the Secret's `known_hosts`", names[0]))
    }
}

/// The algorithm name that starts an ssh public key blob (an ssh wire-format string).
fn key_kind(key: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(key.get(4..4usize.checked_add(len)?)?).ok()
}

/// libgit2's messages can quote the server (an `ERR` line, an HTTP answer): they are read only
/// to classify, and the error says a fixed phrase with at most libgit2's class and code.
fn map_git_error(ctx: &Ctx, auth: &GitAuth, e: &git2::Error, auth_failed: bool) -> Error {
    if let Some(m) = auth.host_key_refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return ctx.credentials(m);
    }
    let lower = e.message().to_ascii_lowercase();
    if auth_failed
        || e.code() == ErrorCode::Auth
        || lower.contains("authentication")
        || lower.contains("status code: 401")
    {
        return ctx.auth(auth.hint());
    }
    if lower.contains("known_hosts") || lower.contains("host key") {
        return ctx.credentials(
            "the ssh server's host key was refused; add its key (ssh-keyscan HOST) to the Secret's `known_hosts`",
        );
    }
    if lower.contains("status code: 404")
        || lower.contains("not found")
        || lower.contains("not exported")
        || lower.contains("access denied")
    {
        return ctx.not_found("repository not found; check git.url");
    }
    let what = format!("git.url: the git transfer failed (libgit2 {:?}/{:?})", e.class(), e.code());
    if e.code() == ErrorCode::User {
        // A callback stopped the transfer: the fetch deadline passed.
        return ctx.transient(format!("{what}; stopped at the fetch deadline"));
    }
    if retry::text_is_transient(&lower) || matches!(e.class(), ErrorClass::Net | ErrorClass::Os | ErrorClass::Ssh) {
        return ctx.transient(format!("{what}; check that the server is reachable"));
    }
    ctx.source(what)
}

/// Everything `apply` needs for a git layer, owned so it can move to a blocking thread.
pub(crate) struct GitJob {
    pub ctx: Ctx,
    pub source: GitSource,
    pub auth: Arc<GitAuth>,
    pub commit: String,
    pub sub_path: String,
    pub dest: String,
    pub cache: PathBuf,
    pub policy: RetryPolicy,
    pub writer: Arc<TreeWriter>,
    /// When the fetch gives up: blocking work cannot be cancelled, so it watches this itself.
    pub deadline: std::time::Instant,
}

/// Fetches what the layer needs of the pinned commit (unless cached) and writes its `subPath`
/// into the staging tree.
pub(crate) async fn apply(job: GitJob) -> Result<()> {
    // libgit2 re-hashes every object it reads (SHA-1 with collision detection, the costliest
    // step of writing a tree). Every object in the cache was hashed from its content when its
    // pack was indexed, by us, so reading it back need not hash it again.
    static NO_READ_REHASH: std::sync::Once = std::sync::Once::new();
    NO_READ_REHASH.call_once(|| git2::opts::strict_hash_verification(false));
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || apply_blocking(&job, &rt))
        .await
        .map_err(|e| Error::Plan(format!("git task failed: {e}")))?
}

fn cache_dir(cache: &Path, url: &str) -> PathBuf {
    let name = hex::encode(&Sha256::digest(url.as_bytes())[..8]);
    cache.join(format!("{name}.git"))
}

fn open_cache(ctx: &Ctx, cache: &Path, url: &str) -> Result<Repository> {
    let dir = cache_dir(cache, url);
    if let Ok(r) = Repository::open_bare(&dir) {
        return Ok(r);
    }
    init_cache(ctx, cache, &dir)
}

fn init_cache(ctx: &Ctx, cache: &Path, dir: &Path) -> Result<Repository> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(cache).map_err(|e| ctx.io(format!("create git cache {}", cache.display()), e))?;
    Repository::init_bare(dir).map_err(|e| ctx.source(format!("init git cache {}: {}", dir.display(), e.message())))
}

fn fetch(ctx: &Ctx, repo: &Repository, auth: &GitAuth, refspec: &str, deadline: std::time::Instant) -> Result<()> {
    preflight(ctx, auth)?;
    let failed = Cell::new(false);
    let tried = Cell::new(false);
    let mut remote = repo
        .remote_anonymous(&auth.url)
        .map_err(|_| ctx.invalid("git.url: libgit2 cannot use this URL; check git.url"))?;
    let mut fo = FetchOptions::new();
    fo.depth(1);
    fo.download_tags(git2::AutotagOption::None);
    fo.update_fetchhead(false);
    let headers = auth.headers();
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    fo.custom_headers(&header_refs);
    let mut cbs = callbacks(auth, &tried, &failed);
    // libgit2 has no total timeout (and its server timeouts are set only through unsafe code,
    // which this crate forbids): returning false from the progress callback cancels the fetch
    // once the deadline has passed and data still comes.
    cbs.transfer_progress(move |_| std::time::Instant::now() < deadline);
    fo.remote_callbacks(cbs);
    remote.fetch(&[refspec], Some(&mut fo), None).map_err(|e| map_git_error(ctx, auth, &e, failed.get()))
}

fn sub_path_missing(ctx: &Ctx, sub_path: &str, commit: &str) -> Error {
    ctx.not_found(format!("subPath `{sub_path}` not found in commit {commit}; check the layer's subPath"))
}

/// True when the cache holds the commit and everything below `subPath`.
fn cached(job: &GitJob, repo: &Repository, oid: Oid) -> Result<bool> {
    if repo.find_commit(oid).is_err() {
        return Ok(false);
    }
    match partial::locate(repo, oid, &job.sub_path) {
        Ok(Some((root, is_tree))) => Ok(partial::MissingBlobs::new(repo, root, is_tree).is_ok_and(|w| w.complete())),
        // Trees come with every fetch of a commit, so the path is really absent.
        Ok(None) => Err(sub_path_missing(&job.ctx, &job.sub_path, &job.commit)),
        Err(_) => Ok(false),
    }
}

fn apply_blocking(job: &GitJob, rt: &tokio::runtime::Handle) -> Result<()> {
    let ctx = &job.ctx;
    let oid = Oid::from_str(&job.commit)
        .map_err(|_| ctx.invalid(format!("pinned revision `{}` is not a commit id", job.commit)))?;
    let mut repo = open_cache(ctx, &job.cache, &job.auth.url)?;
    if cached(job, &repo, oid)? {
        tracing::debug!(layer = ctx.layer, commit = %job.commit, "commit and subPath already in the git cache");
    } else {
        match partial::fetch(job, &repo, rt, oid)? {
            Ok(f) => tracing::info!(
                layer = ctx.layer,
                via = "protocol v2",
                transport = f.transport,
                commit_fetched = f.commit_fetched,
                filtered = f.filtered,
                blobs = f.blobs,
                pack_bytes = f.pack_bytes,
                "fetched over protocol v2"
            ),
            Err(partial::Fallback(why)) => {
                tracing::info!(
                    layer = ctx.layer,
                    via = "libgit2",
                    reason = %ctx.scrub(why),
                    "partial fetch over protocol v2 not possible; fetching the whole commit with libgit2"
                );
                if repo.find_commit(oid).is_ok() {
                    // A partial copy of the commit: libgit2 would take it as complete and fetch nothing.
                    drop(repo);
                    repo = init_cache(ctx, &job.cache, &cache_dir(&job.cache, &job.auth.url))?;
                }
                libgit2_fetch(job, &repo)?;
            }
        }
    }
    let commit = repo.find_commit(oid).map_err(|_| {
        ctx.not_found(format!(
            "commit {} is not available from the server (not a ref tip and fetching by id is refused); enable uploadpack.allowReachableSHA1InWant on the server or resolve again",
            job.commit
        ))
    })?;
    let tree = commit.tree().map_err(|e| ctx.source(e.message().to_owned()))?;
    let (root, mode) = if job.sub_path.is_empty() {
        (tree.id(), 0o040000)
    } else {
        let entry =
            tree.get_path(Path::new(&job.sub_path)).map_err(|_| sub_path_missing(ctx, &job.sub_path, &job.commit))?;
        (entry.id(), entry.filemode())
    };
    let lfsconfig = tree
        .get_name(".lfsconfig")
        .and_then(|e| repo.find_blob(e.id()).ok())
        .map(|b| String::from_utf8_lossy(b.content()).into_owned());
    drop((tree, commit));
    let wanted = write_layer(ctx, repo, root, mode, &job.dest, &job.writer)?;
    if wanted.is_empty() {
        return Ok(());
    }
    let endpoint =
        lfs::endpoint(&job.auth.url, lfsconfig.as_deref()).map_err(|m| ctx.invalid(format!("git.url: {m}")))?;
    tracing::info!(layer = ctx.layer, objects = wanted.len(), endpoint = %endpoint, "fetching Git LFS objects");
    let fetch = lfs::fetch(ctx, &job.auth, &endpoint, &wanted, &job.cache, &job.writer);
    rt.block_on(async { tokio::time::timeout_at(job.deadline.into(), fetch).await })
        .map_err(|_| ctx.transient("the LFS objects did not arrive before the layer's fetch deadline"))?
}

/// Blob bytes read before the cache repository is opened afresh.
const REOPEN_AFTER: u64 = 32 << 20;

/// Reads objects from the cache. libgit2 keeps every pack window it has read mapped until the
/// repository closes, so it is reopened every [`REOPEN_AFTER`] bytes: memory stays flat however
/// much the layer writes.
struct CacheReader {
    dir: PathBuf,
    repo: Repository,
    read: u64,
}

impl CacheReader {
    /// The entries of one tree as (name, id, mode), names checked to be plain.
    fn entries(&self, ctx: &Ctx, tree: Oid, dest: &str) -> Result<Vec<(String, Oid, i32)>> {
        let tree = self.repo.find_tree(tree).map_err(|e| ctx.source(e.message().to_owned()))?;
        let mut out = Vec::with_capacity(tree.len());
        for entry in tree.iter() {
            let Some(name) = entry.name() else {
                return Err(ctx.hostile(format!("a name below `{dest}` is not UTF-8")));
            };
            if paths::components(name).map_or(true, |c| c.len() != 1 || c[0] != name) {
                return Err(
                    ctx.hostile(format!("tree entry `{}` below `{dest}` is not a plain name", name.escape_debug()))
                );
            }
            out.push((name.to_owned(), entry.id(), entry.filemode()));
        }
        Ok(out)
    }

    fn with_blob<T>(&mut self, ctx: &Ctx, rel: &str, id: Oid, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
        if self.read >= REOPEN_AFTER {
            self.repo = Repository::open_bare(&self.dir)
                .map_err(|e| ctx.source(format!("reopen git cache {}: {}", self.dir.display(), e.message())))?;
            self.read = 0;
        }
        let blob =
            self.repo.find_blob(id).map_err(|e| ctx.source(format!("read blob for `{rel}`: {}", e.message())))?;
        self.read += blob.size() as u64;
        f(blob.content())
    }
}

/// Writes the entry `root` (a tree or a blob) at `dest`, one blob at a time through one reader:
/// libgit2 shares a pack between every open handle, so a second reader would keep the first
/// one's pack mappings alive and memory would grow with the layer. Returns the LFS pointers
/// found, whose objects are written after.
fn write_layer(
    ctx: &Ctx,
    repo: Repository,
    root: Oid,
    mode: i32,
    dest: &str,
    w: &TreeWriter,
) -> Result<Vec<lfs::Wanted>> {
    let mut r = CacheReader { dir: repo.path().to_owned(), repo, read: 0 };
    let mut wanted = Vec::new();
    walk(ctx, &mut r, root, mode, dest, w, &mut wanted)?;
    Ok(wanted)
}

/// Makes the directories below `id` and writes its blobs; LFS pointers go to `lfs`.
fn walk(
    ctx: &Ctx,
    r: &mut CacheReader,
    id: Oid,
    mode: i32,
    rel: &str,
    w: &TreeWriter,
    lfs: &mut Vec<lfs::Wanted>,
) -> Result<()> {
    match mode {
        0o040000 => {
            w.ensure_dir(ctx, rel)?;
            for (name, id, mode) in r.entries(ctx, id, rel)? {
                walk(ctx, r, id, mode, &paths::join2(rel, &name), w, lfs)?;
            }
            Ok(())
        }
        0o160000 => Err(ctx.source(format!(
            "`{rel}` is a git submodule (commit {id}); submodules are not fetched, and an empty folder would be wrong: add the submodule's repository as a layer of its own at this path"
        ))),
        _ => write_blob(ctx, r, rel, id, mode, w, lfs),
    }
}

fn write_blob(
    ctx: &Ctx,
    r: &mut CacheReader,
    rel: &str,
    id: Oid,
    mode: i32,
    w: &TreeWriter,
    lfs: &mut Vec<lfs::Wanted>,
) -> Result<()> {
    if mode == 0o120000 {
        return r.with_blob(ctx, rel, id, |target| {
            let target =
                std::str::from_utf8(target).map_err(|_| ctx.hostile(format!("symlink `{rel}` target is not UTF-8")))?;
            w.symlink(ctx, rel, target)
        });
    }
    let exec = mode & 0o111 != 0;
    r.with_blob(ctx, rel, id, |content| match lfs::pointer(content) {
        // The object is fetched after the walk, in batches.
        Some(pointer) => {
            lfs.push(lfs::Wanted { rel: rel.to_owned(), exec, pointer });
            Ok(())
        }
        None => write_file(ctx, w, rel, exec, content),
    })
}

/// Writes a blob already in memory (no copy through a read buffer).
fn write_file(ctx: &Ctx, w: &TreeWriter, rel: &str, exec: bool, content: &[u8]) -> Result<()> {
    w.add_bytes(ctx, content.len() as u64)?;
    let p = w.prepare(ctx, rel)?;
    let write = || -> std::io::Result<()> {
        let mut f = crate::tree::create_file(&p, exec)?;
        std::io::Write::write_all(&mut f, content)
    };
    write().map_err(|e| ctx.source(format!("cannot write `{rel}` in the staging tree: {e}")))?;
    w.record_file(ctx, rel, exec, content.len() as u64, Sha256::digest(content).into())
}

/// Fetches the whole commit with depth 1 through libgit2 (no partial clone there).
fn libgit2_fetch(job: &GitJob, repo: &Repository) -> Result<()> {
    let ctx = &job.ctx;
    let d = Some(job.deadline);
    let by_id = retry::retry_blocking_until(&job.policy, "git fetch", d, || {
        fetch(ctx, repo, &job.auth, &job.commit, job.deadline)
    });
    match by_id {
        Ok(()) => {}
        Err(e @ (Error::Auth { .. } | Error::Credentials { .. } | Error::Transient { .. })) => {
            return Err(e);
        }
        Err(e) => {
            // The server may refuse wants that are not ref tips (no uploadpack.allowReachableSHA1InWant).
            let (name, _) = wanted_ref(&job.source);
            tracing::info!(layer = ctx.layer, error = %e, reference = %name, "fetch by commit refused; fetching the ref instead");
            let spec = format!("+{name}:refs/gamezone/fetched");
            retry::retry_blocking_until(&job.policy, "git fetch", d, || {
                fetch(ctx, repo, &job.auth, &spec, job.deadline)
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ref_advertisement() {
        let mut body = Vec::new();
        let mut pkt = |s: &str| body.extend(format!("{:04x}{s}", s.len() + 4).into_bytes());
        pkt("# service=git-upload-pack\n");
        body.extend(b"0000");
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let mut pkt = |s: &str| body.extend(format!("{:04x}{s}", s.len() + 4).into_bytes());
        pkt(&format!("{a} HEAD\0multi_ack symref=HEAD:refs/heads/main\n"));
        pkt(&format!("{a} refs/heads/main\n"));
        pkt(&format!("{b} refs/tags/v1^{{}}\n"));
        body.extend(b"0000");
        let refs = parse_advertisement(&body).unwrap();
        assert_eq!(refs.len(), 3);
        let g = GitSource { tag: Some("v1".into()), ..Default::default() };
        assert_eq!(pick(&refs, &g, &Ctx::new(0, "t")).unwrap(), b);
        let g = GitSource::default();
        assert_eq!(pick(&refs, &g, &Ctx::new(0, "t")).unwrap(), a);
        let g = GitSource { branch: Some("nope".into()), ..Default::default() };
        assert!(matches!(pick(&refs, &g, &Ctx::new(0, "t")), Err(Error::NotFound { .. })));
    }

    #[test]
    fn host_keys_are_checked() {
        let key = b"key-bytes";
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let kh = format!("# c\nexample.com,other ssh-ed25519 {b64}\n[h2]:2222 ssh-ed25519 {b64}\n");
        assert!(check_host_key(&kh, "example.com", "ssh://git@example.com/r.git", key).is_ok());
        assert!(check_host_key(&kh, "h2", "ssh://git@h2:2222/r.git", key).is_ok());
        assert!(
            check_host_key(&kh, "example.com", "ssh://git@example.com/r.git", b"other")
                .unwrap_err()
                .contains("does not match")
        );
        assert!(check_host_key(&kh, "nope", "ssh://git@nope/r.git", key).unwrap_err().contains("not in known_hosts"));
    }

    #[test]
    fn decodes_userinfo() {
        assert_eq!(url_decode("p%40ss"), "p@ss");
        assert_eq!(url_decode("plain"), "plain");
    }
}
