//! Partial fetch over git protocol v2 (git:// and smart HTTP): the commit and its trees with
//! `filter blob:none`, then exactly the blobs below `subPath` the cache lacks. Each pack streams
//! into the cache repository through libgit2's pack indexer, so memory stays flat.

use std::collections::{BTreeSet, HashSet};
use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use git2::{Odb, OdbLookupFlags, Oid, Repository};
use tokio::runtime::Handle;

use super::protocol::{Advertisement, Capabilities, Fault, FetchRequest, FetchResponse, PktReader, pkt_line};
use super::{GitAuth, GitJob, USER_AGENT};
use crate::error::Ctx;
use crate::retry;
use crate::{Result, source};

/// Blob ids per `fetch` command: bounds the request (about 50 bytes per want) and the memory
/// the walk holds, whatever the size of the subtree.
const BATCH: usize = 50_000;

/// Why the partial fetch cannot be used; the caller fetches the whole commit with libgit2.
#[derive(Debug)]
pub(crate) struct Fallback(pub String);

/// `Err` for failures that end the layer (auth, missing repository, transient after retries),
/// `Ok(Err(Fallback))` when the server or URL cannot do a partial fetch.
pub(crate) type OrFallback<T> = Result<std::result::Result<T, Fallback>>;

/// What a partial fetch brought.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    pub transport: &'static str,
    /// The commit came in this run (else only blobs of a cached commit did).
    pub commit_fetched: bool,
    /// The commit came with `filter blob:none`.
    pub filtered: bool,
    /// Blobs fetched by id.
    pub blobs: u64,
    pub pack_bytes: u64,
}

/// Connections that fetch blobs at once: the server packs, and this side indexes, each part on
/// its own core.
const PARALLEL: usize = 2;

/// Fewest blobs worth a connection of their own.
const MIN_PART: usize = 500;

/// Where upload-pack is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Endpoint {
    /// git:// on TCP.
    Daemon { host: String, port: u16, path: String, host_param: String },
    /// Smart HTTP(S); `base` without a trailing slash.
    Http { base: String },
}

fn endpoint(url: &str) -> std::result::Result<Endpoint, Fallback> {
    let u = url::Url::parse(url).map_err(|_| Fallback("not a URL this client speaks (scp-like ssh?)".into()))?;
    match u.scheme() {
        "git" => {
            let host = match u.host() {
                Some(url::Host::Domain(d)) => d.to_owned(),
                Some(url::Host::Ipv4(a)) => a.to_string(),
                Some(url::Host::Ipv6(a)) => a.to_string(),
                None => return Err(Fallback("git:// URL without a host".into())),
            };
            let host_str = u.host_str().unwrap_or_default();
            let host_param = match u.port() {
                Some(p) => format!("{host_str}:{p}"),
                None => host_str.to_owned(),
            };
            let path = super::url_decode(u.path());
            Ok(Endpoint::Daemon { host, port: u.port().unwrap_or(9418), path, host_param })
        }
        "http" | "https" => Ok(Endpoint::Http { base: url.trim_end_matches('/').to_owned() }),
        other => Err(Fallback(format!("the protocol v2 client does not speak {other}://"))),
    }
}

/// One connection's worth of state: a git:// stream, or the smart-HTTP base URL.
struct Session {
    conn: Conn,
    caps: Capabilities,
}

enum Conn {
    Daemon { stream: Timed, reader: PktReader<BufReader<Timed>> },
    Http { client: reqwest::Client, base: String },
}

/// A git:// socket that gives up at the fetch deadline: each read and write may wait at most
/// 60 s and never past the deadline, so a server sending a byte every 20 s cannot keep it alive.
struct Timed {
    stream: TcpStream,
    deadline: Instant,
}

impl Timed {
    /// How long the next read or write may wait; `TimedOut` once the deadline has passed.
    fn budget(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "fetch deadline passed"));
        }
        Ok(left.min(Duration::from_secs(60)))
    }

    fn try_clone(&self) -> io::Result<Timed> {
        Ok(Timed { stream: self.stream.try_clone()?, deadline: self.deadline })
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.budget()?))?;
        self.stream.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.budget()?))?;
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Maps a protocol fault to a layer error (transient network trouble, a full disk) or a
/// fallback. Fixed phrases only: the server's own lines (an `ERR` line, a malformed answer)
/// are never quoted.
fn fault<T>(ctx: &Ctx, what: &str, f: Fault) -> OrFallback<T> {
    match f {
        Fault::Io(e) if retry::io_is_transient(&e) => Err(ctx.transient(format!("{what}: {}", e.kind()))),
        Fault::Io(e) => Ok(Err(Fallback(format!("{what}: {}", e.kind())))),
        Fault::Protocol(_) => Ok(Err(Fallback(format!("{what}: the answer does not follow git protocol v2")))),
        Fault::Remote(_) => Ok(Err(Fallback(format!("{what}: the server answered with an error line")))),
        Fault::Store(_) => Err(ctx.source(format!(
            "{what}: cannot store the pack in the git cache (disk full, or a corrupt pack); check the volume"
        ))),
    }
}

impl Session {
    fn open(ctx: &Ctx, auth: &GitAuth, endpoint: &Endpoint, rt: &Handle, deadline: Instant) -> OrFallback<Session> {
        match endpoint {
            Endpoint::Daemon { host, port, path, host_param } => {
                Self::open_daemon(ctx, auth, (host, *port), path, host_param, deadline)
            }
            Endpoint::Http { base } => Self::open_http(ctx, auth, base, rt, deadline),
        }
    }

    fn open_daemon(
        ctx: &Ctx,
        auth: &GitAuth,
        (host, port): (&str, u16),
        path: &str,
        host_param: &str,
        deadline: Instant,
    ) -> OrFallback<Session> {
        let net = |e: io::Error| ctx.transient(format!("git.url: cannot connect to the server ({})", e.kind()));
        let stream = connect_daemon(ctx, auth, (host, port), deadline)?;
        let setup =
            || -> io::Result<BufReader<Timed>> { Ok(BufReader::with_capacity(128 * 1024, stream.try_clone()?)) };
        let reader = setup().map_err(net)?;
        let mut req = Vec::new();
        pkt_line(&mut req, format!("git-upload-pack {path}\0host={host_param}\0\0version=2\0").as_bytes());
        let mut session =
            Session { conn: Conn::Daemon { stream, reader: PktReader::new(reader) }, caps: Default::default() };
        let Conn::Daemon { stream, reader } = &mut session.conn else { unreachable!() };
        if let Err(e) = stream.write_all(&req) {
            return fault(ctx, "git daemon request", Fault::Io(e));
        }
        match super::protocol::read_advertisement(reader) {
            Ok(Advertisement::V2(caps)) => session.caps = caps,
            Ok(Advertisement::Older) => {
                // Tell a v0 server we want nothing, so it ends cleanly.
                let _ = stream.write_all(b"0000");
                return Ok(Err(Fallback("the server does not speak protocol v2".into())));
            }
            Err(Fault::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // git daemon hangs up on repositories it does not export; libgit2 reports that.
                return Ok(Err(Fallback("the server closed the connection before advertising capabilities".into())));
            }
            Err(f) => return fault(ctx, "capability advertisement", f),
        }
        Ok(Ok(session))
    }

    fn open_http(ctx: &Ctx, auth: &GitAuth, base: &str, rt: &Handle, deadline: Instant) -> OrFallback<Session> {
        let client = source::http_client(ctx, &auth.egress)?;
        let url = format!("{base}/info/refs?service=git-upload-pack");
        let req = auth.authorize(client.get(&url)).header("Git-Protocol", "version=2").header("User-Agent", USER_AGENT);
        let resp = until(rt, deadline, req.send())
            .ok_or_else(|| ctx.transient("git.url: the fetch deadline passed"))?
            .map_err(|e| source::reqwest_error(ctx, "git.url", &e))?;
        if let Err(step) = http_status(ctx, auth, resp.status().as_u16(), "listing capabilities") {
            return step;
        }
        let smart = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/x-git-upload-pack-advertisement"));
        if !smart {
            return Ok(Err(Fallback("not a smart-HTTP server (no upload-pack advertisement)".into())));
        }
        // Follow a redirect the way git does: later requests go to the new base (the client
        // follows redirects only on the same host, each checked by the egress policy).
        let base = resp
            .url()
            .as_str()
            .strip_suffix("/info/refs?service=git-upload-pack")
            .map_or_else(|| base.to_owned(), str::to_owned);
        let mut reader = PktReader::new(HttpBody::new(resp, rt.clone(), deadline));
        let caps = match super::protocol::read_advertisement(&mut reader) {
            Ok(Advertisement::V2(caps)) => caps,
            Ok(Advertisement::Older) => return Ok(Err(Fallback("the server does not speak protocol v2".into()))),
            Err(f) => return fault(ctx, "capability advertisement", f),
        };
        Ok(Ok(Session { conn: Conn::Http { client, base }, caps }))
    }

    /// Sends one `fetch` command and streams the pack into `pack`.
    fn fetch(
        &mut self,
        ctx: &Ctx,
        auth: &GitAuth,
        (rt, deadline): (&Handle, Instant),
        body: Vec<u8>,
        pack: &mut dyn Write,
    ) -> OrFallback<FetchResponse> {
        let r = match &mut self.conn {
            Conn::Daemon { stream, reader } => {
                if let Err(e) = stream.write_all(&body) {
                    return fault(ctx, "fetch", Fault::Io(e));
                }
                super::protocol::read_fetch_response(reader, pack)
            }
            Conn::Http { client, base } => {
                let req = auth
                    .authorize(client.post(format!("{base}/git-upload-pack")))
                    .header("Git-Protocol", "version=2")
                    .header("User-Agent", USER_AGENT)
                    .header("Content-Type", "application/x-git-upload-pack-request")
                    .header("Accept", "application/x-git-upload-pack-result")
                    .body(body);
                let resp = until(rt, deadline, req.send())
                    .ok_or_else(|| ctx.transient("git.url: the fetch deadline passed"))?
                    .map_err(|e| source::reqwest_error(ctx, "git.url", &e))?;
                if let Err(step) = http_status(ctx, auth, resp.status().as_u16(), "fetching") {
                    return step;
                }
                let body = HttpBody::new(resp, rt.clone(), deadline);
                super::protocol::read_fetch_response(&mut PktReader::new(body), pack)
            }
        };
        match r {
            Ok(resp) => Ok(Ok(resp)),
            Err(f) => fault(ctx, "fetch", f),
        }
    }
}

/// Largest ref advertisement read from a git daemon.
const MAX_ADVERTISEMENT: usize = 64 << 20;

/// Lists the refs of a git:// repository (a protocol v0 advertisement) over a socket that gives
/// up at `deadline`: libgit2 has no timeout there, and a blocking thread it holds cannot be
/// stopped.
pub(crate) fn daemon_refs(ctx: &Ctx, auth: &GitAuth, deadline: Instant) -> Result<Vec<(String, String)>> {
    let Ok(Endpoint::Daemon { host, port, path, host_param }) = endpoint(&auth.url) else {
        return Err(ctx.invalid("git.url: not a git:// URL with a host; check git.url"));
    };
    let mut stream = connect_daemon(ctx, auth, (&host, port), deadline)?;
    let net = |e: io::Error| match e.kind() {
        // git daemon hangs up on repositories it does not export.
        io::ErrorKind::UnexpectedEof => ctx.not_found("repository not found (the server hung up); check git.url"),
        k => ctx.transient(format!("git.url: listing refs failed ({k})")),
    };
    let mut req = Vec::new();
    pkt_line(&mut req, format!("git-upload-pack {path}\0host={host_param}\0").as_bytes());
    stream.write_all(&req).map_err(net)?;
    let mut r = BufReader::new(stream.try_clone().map_err(net)?);
    let mut raw = Vec::new();
    loop {
        let mut head = [0u8; 4];
        r.read_exact(&mut head).map_err(net)?;
        let len = std::str::from_utf8(&head)
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .filter(|&l| l == 0 || (4..=super::protocol::MAX_PKT).contains(&l))
            .ok_or_else(|| {
                ctx.source("git.url: the server's ref advertisement is malformed; is git.url a git repository?")
            })?;
        raw.extend_from_slice(&head);
        if len == 0 {
            break;
        }
        let at = raw.len();
        raw.resize(at + len - 4, 0);
        r.read_exact(&mut raw[at..]).map_err(net)?;
        if raw.len() > MAX_ADVERTISEMENT {
            return Err(ctx.limit("git.url: the server advertises more than 64 MiB of refs"));
        }
    }
    // Nothing wanted: a v0 server ends cleanly on a flush.
    let _ = stream.write_all(b"0000");
    super::parse_advertisement(&raw)
        .map_err(|_| ctx.source("git.url: the server's ref advertisement is malformed; is git.url a git repository?"))
}

/// Connects to a git daemon at an address the egress policy allows, as checked (no second lookup).
fn connect_daemon(ctx: &Ctx, auth: &GitAuth, (host, port): (&str, u16), deadline: Instant) -> Result<Timed> {
    let addrs = match auth.egress.lookup_blocking(host, port) {
        Ok(a) => a,
        Err(r) if r.policy => return Err(ctx.invalid(format!("git.url: {r}"))),
        Err(r) => return Err(ctx.transient(format!("git.url: {r}"))),
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(15));
        if wait.is_zero() {
            last = io::Error::from(io::ErrorKind::TimedOut);
            break;
        }
        match TcpStream::connect_timeout(&addr, wait) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(Timed { stream, deadline });
            }
            Err(e) => last = e,
        }
    }
    Err(ctx.transient(format!("git.url: cannot connect to the server ({})", last.kind())))
}

/// Classifies a smart-HTTP status; `Err` holds what the caller returns.
fn http_status<T>(ctx: &Ctx, auth: &GitAuth, status: u16, what: &str) -> std::result::Result<(), OrFallback<T>> {
    match status {
        200 => Ok(()),
        401 | 403 => Err(Err(ctx.auth(auth.hint()))),
        404 => Err(Err(ctx.not_found("repository not found (HTTP 404); check git.url"))),
        s if retry::status_is_transient(s) => Err(Err(ctx.transient(format!("HTTP {s} {what}")))),
        s => Err(Ok(Err(Fallback(format!("{} {what}", source::status_phrase(s, "git.url")))))),
    }
}

/// Runs `f` on the runtime until `deadline`; `None` when the deadline came first.
fn until<F: std::future::Future>(rt: &Handle, deadline: Instant, f: F) -> Option<F::Output> {
    rt.block_on(tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), f)).ok()
}

/// A response body read from a blocking thread, one chunk at a time.
struct HttpBody {
    resp: reqwest::Response,
    rt: Handle,
    chunk: bytes::Bytes,
    deadline: Instant,
}

impl HttpBody {
    fn new(resp: reqwest::Response, rt: Handle, deadline: Instant) -> Self {
        HttpBody { resp, rt, chunk: bytes::Bytes::new(), deadline }
    }
}

impl Read for HttpBody {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match until(&self.rt, self.deadline, self.resp.chunk()) {
                Some(Ok(Some(c))) => self.chunk = c,
                Some(Ok(None)) => return Ok(0),
                // A body cut off mid-way: transient, like reqwest_error says.
                Some(Err(_)) => return Err(io::Error::from(io::ErrorKind::ConnectionAborted)),
                None => return Err(io::Error::from(io::ErrorKind::TimedOut)),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Streams a pack into the cache's object database (libgit2 indexes it as it arrives).
struct PackSink<'o> {
    writer: git2::OdbPackwriter<'o>,
}

impl Write for PackSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf).map_err(|_| io::Error::other(git2::Error::last_error(-1).message().to_owned()))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The blob ids below a tree that the cache lacks, a batch at a time.
pub(crate) struct MissingBlobs<'r> {
    repo: &'r Repository,
    odb: Odb<'r>,
    trees: Vec<Oid>,
    blob: Option<Oid>,
    /// A tree below the root was not in the cache (only a broken cache lacks one).
    pub tree_missing: bool,
}

impl<'r> MissingBlobs<'r> {
    /// Walks below `root`: a tree, or a single blob when `is_tree` is false.
    pub fn new(repo: &'r Repository, root: Oid, is_tree: bool) -> std::result::Result<Self, git2::Error> {
        let odb = repo.odb()?;
        let (trees, blob) = if is_tree { (vec![root], None) } else { (Vec::new(), Some(root)) };
        Ok(MissingBlobs { repo, odb, trees, blob, tree_missing: false })
    }

    /// Up to about `max` further missing blob ids (a whole tree is read at once); empty at the end.
    pub fn next_batch(&mut self, max: usize) -> Vec<Oid> {
        let lacks = |odb: &Odb<'_>, id| !odb.exists_ext(id, OdbLookupFlags::NO_REFRESH);
        let mut seen = HashSet::new();
        let mut batch = Vec::new();
        if let Some(b) = self.blob.take()
            && lacks(&self.odb, b)
        {
            batch.push(b);
        }
        while batch.len() < max
            && let Some(t) = self.trees.pop()
        {
            let Ok(tree) = self.repo.find_tree(t) else {
                self.tree_missing = true;
                continue;
            };
            for e in tree.iter() {
                match e.filemode() {
                    0o040000 => self.trees.push(e.id()),
                    0o160000 => {}
                    _ => {
                        if lacks(&self.odb, e.id()) && seen.insert(e.id()) {
                            batch.push(e.id());
                        }
                    }
                }
            }
        }
        batch
    }

    /// True when nothing below the root is missing.
    pub fn complete(mut self) -> bool {
        self.next_batch(1).is_empty() && !self.tree_missing
    }
}

/// The object at `sub_path` of `commit` in the cache: its id and whether it is a tree.
/// `Ok(None)` when the path is absent.
pub(crate) fn locate(
    repo: &Repository,
    commit: Oid,
    sub_path: &str,
) -> std::result::Result<Option<(Oid, bool)>, git2::Error> {
    let tree = repo.find_commit(commit)?.tree()?;
    if sub_path.is_empty() {
        return Ok(Some((tree.id(), true)));
    }
    match tree.get_path(Path::new(sub_path)) {
        Ok(e) => Ok(Some((e.id(), e.filemode() == 0o040000))),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs fetch commands against one server, reconnecting after failures.
struct Fetcher<'j> {
    job: &'j GitJob,
    rt: &'j Handle,
    endpoint: Endpoint,
    session: Option<Session>,
    fetched: Fetched,
}

impl Fetcher<'_> {
    /// One `fetch` (retried when transient) whose pack goes into `repo`.
    fn fetch(&mut self, repo: &Repository, req: &FetchRequest) -> OrFallback<FetchResponse> {
        let ctx = &self.job.ctx;
        let needs_filter = req.filter.is_some();
        let started = std::time::Instant::now();
        let deadline = self.job.deadline;
        retry::retry_blocking_until(&self.job.policy, "git fetch (protocol v2)", Some(deadline), || {
            if Instant::now() >= deadline {
                return Err(ctx.transient("git.url: the fetch deadline passed"));
            }
            if self.session.is_none() {
                match Session::open(ctx, &self.job.auth, &self.endpoint, self.rt, deadline)? {
                    Ok(s) => self.session = Some(s),
                    Err(f) => return Ok(Err(f)),
                }
            }
            let Some(session) = self.session.as_mut() else { unreachable!() };
            if let Some(why) = session.caps.partial_fetch_refused(needs_filter) {
                return Ok(Err(Fallback(why)));
            }
            let body = req.encode(&session.caps);
            let odb = repo.odb().map_err(|e| ctx.source(format!("open the git cache: {}", e.message())))?;
            let writer =
                odb.packwriter().map_err(|e| ctx.source(format!("write to the git cache: {}", e.message())))?;
            let mut sink = PackSink { writer };
            let r = session.fetch(ctx, &self.job.auth, (self.rt, deadline), body, &mut sink);
            match r {
                Ok(Ok(resp)) => {
                    sink.writer
                        .commit()
                        .map_err(|e| ctx.source(format!("index the fetched pack in the git cache: {}", e.message())))?;
                    let _ = odb.refresh();
                    tracing::debug!(
                        layer = ctx.layer,
                        wants = req.wants.len(),
                        filter = needs_filter,
                        pack_bytes = resp.pack_bytes,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "protocol v2 fetch done"
                    );
                    Ok(Ok(resp))
                }
                other => {
                    self.session = None;
                    other
                }
            }
        })
    }
}

/// Fetches what `job` needs for `commit` into `repo` over protocol v2: with a `subPath`, the
/// commit and its trees (`filter blob:none`), then the blobs below `subPath` the cache lacks;
/// without one, the whole commit in one pack.
pub(crate) fn fetch(job: &GitJob, repo: &Repository, rt: &Handle, commit: Oid) -> OrFallback<Fetched> {
    let ctx = &job.ctx;
    let endpoint = match endpoint(&job.auth.url) {
        Ok(e) => e,
        Err(f) => return Ok(Err(f)),
    };
    let transport = if matches!(endpoint, Endpoint::Daemon { .. }) { "git" } else { "http" };
    let mut f = Fetcher { job, rt, endpoint, session: None, fetched: Fetched { transport, ..Default::default() } };
    let filtered = !job.sub_path.is_empty();
    if repo.find_commit(commit).is_err() {
        let req = FetchRequest {
            wants: vec![commit.to_string()],
            deepen: Some(1),
            filter: filtered.then(|| "blob:none".to_owned()),
        };
        let resp = match f.fetch(repo, &req)? {
            Ok(r) => r,
            Err(fb) => return Ok(Err(fb)),
        };
        record_shallow(repo.path(), &resp)
            .map_err(|e| ctx.io(format!("record shallow commits in {}", repo.path().display()), e))?;
        f.fetched.pack_bytes += resp.pack_bytes;
        f.fetched.filtered = filtered;
        f.fetched.commit_fetched = true;
        if repo.find_commit(commit).is_err() {
            return Ok(Err(Fallback(format!("the server did not send commit {commit}"))));
        }
    }
    let git_err = |e: git2::Error| ctx.source(format!("read the git cache: {}", e.message()));
    let Some((root, is_tree)) = locate(repo, commit, &job.sub_path).map_err(git_err)? else {
        return Err(super::sub_path_missing(ctx, &job.sub_path, &job.commit));
    };
    let mut walk = MissingBlobs::new(repo, root, is_tree).map_err(git_err)?;
    loop {
        let batch = walk.next_batch(BATCH);
        if batch.is_empty() {
            break;
        }
        match fetch_parts(&mut f, repo, &batch)? {
            Ok(bytes) => {
                f.fetched.blobs += batch.len() as u64;
                f.fetched.pack_bytes += bytes;
            }
            Err(fb) => return Ok(Err(fb)),
        }
    }
    if walk.tree_missing {
        return Ok(Err(Fallback("trees below subPath are missing from the cache".into())));
    }
    if !MissingBlobs::new(repo, root, is_tree).map_err(git_err)?.complete() {
        return Ok(Err(Fallback("the server did not send every requested blob".into())));
    }
    Ok(Ok(f.fetched))
}

/// Fetches `blobs` in up to [`PARALLEL`] parts at once, each over its own connection into its
/// own pack. Returns the pack bytes.
fn fetch_parts(f: &mut Fetcher<'_>, repo: &Repository, blobs: &[Oid]) -> OrFallback<u64> {
    let parts = PARALLEL.min(blobs.len().div_ceil(MIN_PART)).max(1);
    let chunks: Vec<&[Oid]> = blobs.chunks(blobs.len().div_ceil(parts)).collect();
    let request = |c: &[Oid]| FetchRequest { wants: c.iter().map(Oid::to_string).collect(), ..Default::default() };
    let (job, rt, endpoint, dir) = (f.job, f.rt, f.endpoint.clone(), repo.path().to_owned());
    let results: Vec<OrFallback<FetchResponse>> = std::thread::scope(|s| {
        let others: Vec<_> = chunks[1..]
            .iter()
            .map(|c| {
                let (endpoint, dir) = (endpoint.clone(), &dir);
                s.spawn(move || {
                    // HTTP clients need the runtime's context on this thread too.
                    let _rt = rt.enter();
                    let repo = Repository::open_bare(dir)
                        .map_err(|e| job.ctx.source(format!("open the git cache: {}", e.message())))?;
                    let mut other = Fetcher { job, rt, endpoint, session: None, fetched: Fetched::default() };
                    other.fetch(&repo, &request(c))
                })
            })
            .collect();
        let mut results = vec![f.fetch(repo, &request(chunks[0]))];
        for h in others {
            results.push(h.join().unwrap_or_else(|_| Err(job.ctx.source("a git fetch thread panicked"))));
        }
        results
    });
    // Packs written through the other handles: make this one see them.
    if let Ok(odb) = repo.odb() {
        let _ = odb.refresh();
    }
    let mut bytes = 0;
    let mut fallback = None;
    for r in results {
        match r? {
            Ok(resp) => bytes += resp.pack_bytes,
            Err(fb) => fallback = fallback.or(Some(fb)),
        }
    }
    Ok(fallback.map_or(Ok(bytes), Err))
}

/// Adds the commits a depth-limited fetch cut off to the repository's `shallow` file (what
/// libgit2 and git read to stop walking history there).
fn record_shallow(git_dir: &Path, resp: &FetchResponse) -> io::Result<()> {
    if resp.shallow.is_empty() && resp.unshallow.is_empty() {
        return Ok(());
    }
    let path = git_dir.join("shallow");
    let mut set: BTreeSet<String> = match std::fs::read_to_string(&path) {
        Ok(s) => s.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => return Err(e),
    };
    set.extend(resp.shallow.iter().cloned());
    for u in &resp.unshallow {
        set.remove(u);
    }
    let tmp = git_dir.join("shallow.gamezone-tmp");
    let text: String = set.into_iter().map(|l| l + "\n").collect();
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_by_scheme() {
        assert_eq!(
            endpoint("git://example.com/game.git").unwrap(),
            Endpoint::Daemon {
                host: "example.com".into(),
                port: 9418,
                path: "/game.git".into(),
                host_param: "example.com".into()
            }
        );
        assert_eq!(
            endpoint("git://[::1]:9000/a%20b").unwrap(),
            Endpoint::Daemon { host: "::1".into(), port: 9000, path: "/a b".into(), host_param: "[::1]:9000".into() }
        );
        assert_eq!(endpoint("https://h/r.git/").unwrap(), Endpoint::Http { base: "https://h/r.git".into() });
        assert!(endpoint("ssh://git@h/r.git").unwrap_err().0.contains("ssh://"));
        assert!(endpoint("git@h:org/r.git").is_err());
    }

    #[test]
    fn shallow_file_is_merged() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, c) = ("a".repeat(40), "b".repeat(40), "c".repeat(40));
        std::fs::write(d.path().join("shallow"), format!("{a}\n{b}\n")).unwrap();
        let resp = FetchResponse { shallow: vec![c.clone()], unshallow: vec![a.clone()], pack_bytes: 0 };
        record_shallow(d.path(), &resp).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("shallow")).unwrap(), format!("{b}\n{c}\n"));
    }
}
