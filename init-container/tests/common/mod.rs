//! Real servers on loopback for the integration tests: git daemon, git smart HTTP behind basic
//! auth (git-http-backend as CGI), git over ssh (a private sshd), s3s-fs with signature checking,
//! a forward HTTP proxy, and a static file server.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_port(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "server on port {port} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command, panicking with its output on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t"))
}

/// A non-bare repository served by the test servers.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn init(root: &Path, name: &str) -> Repo {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        git(&dir, &["config", "uploadpack.allowReachableSHA1InWant", "true"]);
        git(&dir, &["config", "http.receivepack", "false"]);
        Repo { dir }
    }

    pub fn write(&self, rel: &str, content: &str) -> &Self {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
        self
    }

    pub fn commit(&self, msg: &str) -> String {
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "--allow-empty", "-m", msg]);
        git(&self.dir, &["rev-parse", "HEAD"])
    }
}

/// A process killed on drop.
pub struct Server {
    pub port: u16,
    pub child: Option<Child>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn git_daemon(base: &Path) -> Server {
    git_daemon_to(base, Stdio::null())
}

/// A git daemon whose verbose log (one `Request upload-pack` line per fetch) goes to `log`.
pub fn logged_git_daemon(base: &Path, log: &Path) -> Server {
    git_daemon_to(base, Stdio::from(std::fs::File::create(log).unwrap()))
}

fn git_daemon_to(base: &Path, stderr: Stdio) -> Server {
    let port = free_port();
    let child = Command::new("git")
        .args(["daemon", "--reuseaddr", "--export-all", "--verbose", "--listen=127.0.0.1"])
        .arg(format!("--base-path={}", base.display()))
        .arg(format!("--port={port}"))
        .arg(base)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("git daemon");
    wait_port(port);
    Server { port, child: Some(child), stop: Arc::new(AtomicBool::new(false)) }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let mut body = Vec::new();
    if let Some(len) = headers.get("content-length").and_then(|l| l.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body).ok()?;
    } else if headers.get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let (path, query) =
        target.split_once('?').map_or((target.clone(), String::new()), |(p, q)| (p.to_owned(), q.to_owned()));
    Some(Request { method, path, query, headers, body })
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = s.write_all(out.as_bytes());
    let _ = s.write_all(body);
}

fn serve(handler: impl Fn(Request, &mut TcpStream) + Send + Sync + 'static) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let handler = Arc::new(handler);
    let st = stop.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            if st.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let h = handler.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                if let Some(req) = read_request(&mut r) {
                    h(req, &mut w);
                }
            });
        }
    });
    Server { port, child: None, stop }
}

/// git smart HTTP behind basic auth (`user`/`password`), via git-http-backend as CGI.
pub fn git_http(project_root: &Path, user: &str, password: &str) -> Server {
    let root = project_root.to_owned();
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
    let backend = PathBuf::from(run(Command::new("git").arg("--exec-path"))).join("git-http-backend");
    serve(move |req, s| {
        if req.headers.get("authorization") != Some(&expected) {
            respond(
                s,
                "401 Unauthorized",
                &[("WWW-Authenticate".into(), "Basic realm=\"git\"".into())],
                b"unauthorized",
            );
            return;
        }
        let mut cmd = Command::new(&backend);
        cmd.env_clear()
            .env("GIT_PROJECT_ROOT", &root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("PATH_INFO", &req.path)
            .env("QUERY_STRING", &req.query)
            .env("REQUEST_METHOD", &req.method)
            .env("CONTENT_TYPE", req.headers.get("content-type").cloned().unwrap_or_default())
            .env("CONTENT_LENGTH", req.body.len().to_string())
            .env("REMOTE_USER", "user")
            .env("REMOTE_ADDR", "127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(p) = req.headers.get("git-protocol") {
            cmd.env("GIT_PROTOCOL", p);
        }
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let body = req.body;
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&body);
        });
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        let split = out
            .stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| (i, 4))
            .or_else(|| out.stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
        let Some((i, n)) = split else {
            respond(s, "500 Internal Server Error", &[], b"bad cgi output");
            return;
        };
        let head = String::from_utf8_lossy(&out.stdout[..i]).into_owned();
        let mut status = "200 OK".to_owned();
        let mut headers = Vec::new();
        for l in head.lines() {
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("status") {
                    status = v.trim().to_owned();
                } else {
                    headers.push((k.trim().to_owned(), v.trim().to_owned()));
                }
            }
        }
        respond(s, &status, &headers, &out.stdout[i + n..]);
    })
}

/// Serves files below `dir` (GET, with Range), optionally cutting the connection after `cut_after`
/// bytes of a body (once) to simulate a server dying mid-transfer.
pub fn file_server(dir: &Path, cut_after: Option<u64>) -> (Server, Arc<AtomicU64>) {
    let dir = dir.to_owned();
    let served = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicBool::new(cut_after.is_some()));
    let count = served.clone();
    let server = serve(move |req, s| {
        let p = dir.join(req.path.trim_start_matches('/'));
        let Ok(data) = std::fs::read(&p) else {
            respond(s, "404 Not Found", &[], b"");
            return;
        };
        count.fetch_add(1, Ordering::SeqCst);
        let start = req
            .headers
            .get("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
        let (status, body) = match start {
            Some(o) => ("206 Partial Content", &data[o.min(data.len())..]),
            None => ("200 OK", &data[..]),
        };
        if let Some(limit) = cut_after
            && cut.swap(false, Ordering::SeqCst)
            && (limit as usize) < body.len()
        {
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body[..limit as usize]);
            let _ = s.shutdown(std::net::Shutdown::Both);
            return;
        }
        respond(s, status, &[], body);
    });
    (server, served)
}

pub const AK: &str = "AKIATESTKEY";
pub const SK: &str = "s3cr3t-Secret-Key-42";

pub fn s3s_fs_binary() -> PathBuf {
    cached_tool("GAMEZONE_S3S_FS", "s3s-fs-0.14.1/bin/s3s-fs")
}

/// A tool `install-test-tools.sh` builds: `env` names it, else it is at `rel` below the tools cache.
fn cached_tool(env: &str, rel: &str) -> PathBuf {
    let p = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("GAMEZONE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/gamezone"));
        cache.join("tools").join(rel)
    });
    assert!(p.is_file(), "{} not found — run init-container/tests/install-test-tools.sh (or set {env})", p.display());
    p
}

/// s3s-fs serving `dir` (buckets are its subdirectories) with signature checking.
pub fn s3_server(dir: &Path) -> Server {
    s3_server_with(dir, free_port(), &[])
}

/// s3s-fs on `port` with extra arguments (e.g. `--domain` for virtual-hosted requests).
pub fn s3_server_with(dir: &Path, port: u16, extra: &[&str]) -> Server {
    let child = Command::new(s3s_fs_binary())
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", AK, "--secret-key", SK])
        .args(extra)
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("s3s-fs");
    wait_port(port);
    Server { port, child: Some(child), stop: Arc::new(AtomicBool::new(false)) }
}

/// A Git LFS server (rudolfs, local storage under `dir`) on loopback; its API for a repository
/// is `http://127.0.0.1:PORT/api/<org>/<repo>`, its log (one line per request) in `dir/lfs.log`.
pub fn lfs_server(dir: &Path) -> Server {
    let bin = cached_tool("GAMEZONE_RUDOLFS", "rudolfs-0.3.8/bin/rudolfs");
    let port = free_port();
    std::fs::create_dir_all(dir).unwrap();
    let log = std::fs::File::create(dir.join("lfs.log")).unwrap();
    let child = Command::new(bin)
        .args(["--host", &format!("127.0.0.1:{port}"), "--key", &"ab".repeat(32), "--log-level", "info"])
        .args(["local", "--path"])
        .arg(dir.join("objects"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("rudolfs");
    wait_port(port);
    Server { port, child: Some(child), stop: Arc::new(AtomicBool::new(false)) }
}

/// CNCF Distribution (Debian's `docker-registry`) on loopback, storing under `dir`; its log (one
/// line per request) goes to `dir/registry.log`.
pub fn docker_registry(dir: &Path) -> Server {
    docker_registry_for(dir, &[])
}

/// [`docker_registry`] that serves only `users` (user, password), with HTTP basic auth
/// (an htpasswd file of bcrypt hashes); anonymous when `users` is empty.
pub fn docker_registry_for(dir: &Path, users: &[(&str, &str)]) -> Server {
    let bin =
        std::env::var_os("GAMEZONE_DOCKER_REGISTRY").map(PathBuf::from).unwrap_or("/usr/bin/docker-registry".into());
    assert!(bin.is_file(), "{} not found: apt-get install docker-registry (scripts/setup.sh does)", bin.display());
    let port = free_port();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("config.yml");
    let mut text = format!(
        "version: 0.1\nlog: {{level: info, accesslog: {{disabled: false}}}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("data").display()
    );
    if !users.is_empty() {
        let htpasswd = dir.join("htpasswd");
        let lines: Vec<String> = users.iter().map(|(u, p)| format!("{u}:{}", bcrypt::hash(p, 5).unwrap())).collect();
        std::fs::write(&htpasswd, lines.join("\n") + "\n").unwrap();
        text += &format!("auth:\n  htpasswd:\n    realm: gamezone-tests\n    path: {}\n", htpasswd.display());
    }
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("docker-registry");
    wait_port(port);
    Server { port, child: Some(child), stop: Arc::new(AtomicBool::new(false)) }
}

/// Writes `<secrets>/<name>/<key>` files.
pub fn secret(secrets: &Path, name: &str, kv: &[(&str, &str)]) {
    let d = secrets.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for (k, v) in kv {
        std::fs::write(d.join(k), v).unwrap();
    }
}

pub fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref()).unwrap_or_else(|e| panic!("read {}: {e}", p.as_ref().display()))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gamezone-init"))
}

/// Serves every request with `f(path?query) -> (status, body)`.
pub fn serve_fn(f: impl Fn(&str) -> (u16, Vec<u8>) + Send + Sync + 'static) -> Server {
    serve(move |req, s| {
        let pq = if req.query.is_empty() { req.path.clone() } else { format!("{}?{}", req.path, req.query) };
        let (status, body) = f(&pq);
        let status = match status {
            200 => "200 OK".to_owned(),
            s => format!("{s} Error"),
        };
        respond(s, &status, &[("Content-Type".into(), "application/xml".into())], &body);
    })
}

/// A server answering `f(method, path?query)` with a status, headers and a body.
pub fn serve_http(f: impl Fn(&str, &str) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + Sync + 'static) -> Server {
    serve(move |req, s| {
        let pq = if req.query.is_empty() { req.path.clone() } else { format!("{}?{}", req.path, req.query) };
        let (status, headers, body) = f(&req.method, &pq);
        let status = if status == 200 { "200 OK".to_owned() } else { format!("{status} Error") };
        respond(s, &status, &headers, &body);
    })
}

/// Decodes `%XX` escapes (query values as object_store sends them).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// One request seen by [`forward_proxy`]: its `Host` header, method and request target.
#[derive(Clone, Debug)]
pub struct Proxied {
    pub host: String,
    pub method: String,
    pub target: String,
}

/// A forward HTTP proxy for plain `http://` URLs that sends every request to `127.0.0.1:upstream`
/// whatever host it names (so test host names need no DNS), unchanged but for the request line
/// (origin-form) and `Connection: close`, and records what it saw.
pub fn forward_proxy(upstream: u16) -> (Server, Arc<Mutex<Vec<Proxied>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let server = serve(move |req, client| {
        let host = req.headers.get("host").cloned().unwrap_or_default();
        let full = if req.query.is_empty() { req.path.clone() } else { format!("{}?{}", req.path, req.query) };
        log.lock().unwrap().push(Proxied { host, method: req.method.clone(), target: full.clone() });
        // Absolute-form `http://authority/path?q` becomes origin-form `/path?q`.
        let origin = match full.strip_prefix("http://") {
            Some(rest) => rest.find('/').map_or("/".to_owned(), |i| rest[i..].to_owned()),
            None => full,
        };
        let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
            respond(client, "502 Bad Gateway", &[], b"upstream down");
            return;
        };
        let mut head = format!("{} {origin} HTTP/1.1\r\n", req.method);
        for (k, v) in &req.headers {
            if !matches!(k.as_str(), "connection" | "proxy-connection" | "keep-alive" | "transfer-encoding") {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        if !req.headers.contains_key("content-length") && !req.body.is_empty() {
            head.push_str(&format!("content-length: {}\r\n", req.body.len()));
        }
        head.push_str("connection: close\r\n\r\n");
        if up.write_all(head.as_bytes()).and_then(|()| up.write_all(&req.body)).is_err() {
            respond(client, "502 Bad Gateway", &[], b"upstream write failed");
            return;
        }
        // Pass the response through, telling the client this connection ends with it.
        let mut r = BufReader::new(up);
        let mut out = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            let name = line.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
            if name != "connection" && name != "keep-alive" {
                out.push_str(&line);
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        let _ = client.write_all(out.as_bytes());
        let _ = std::io::copy(&mut r, client);
        let _ = client.shutdown(std::net::Shutdown::Both);
    });
    (server, seen)
}

/// sshd from `GAMEZONE_SSHD` or Debian's openssh-server.
pub fn sshd_binary() -> PathBuf {
    let p = std::env::var_os("GAMEZONE_SSHD").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/sbin/sshd"));
    assert!(
        p.is_file(),
        "sshd not found at {} — run init-container/tests/install-test-tools.sh (apt-get install openssh-server) or set GAMEZONE_SSHD",
        p.display()
    );
    p
}

/// Makes an unencrypted key pair with ssh-keygen: (private key file text, public key line).
pub fn ssh_keygen(dir: &Path, name: &str, kind: &str, extra: &[&str]) -> (String, String) {
    let path = dir.join(name);
    std::fs::create_dir_all(dir).unwrap();
    let _ = std::fs::remove_file(&path);
    run(Command::new("ssh-keygen").args(["-q", "-t", kind, "-N", "", "-C", name]).args(extra).arg("-f").arg(&path));
    (read(&path), read(path.with_extension("pub")).trim().to_owned())
}

/// A private sshd on 127.0.0.1, run as the current user, that lets the authorized keys run only
/// `git-upload-pack` (through git-shell, as git hosts do).
pub struct Sshd {
    pub server: Server,
    pub port: u16,
    pub user: String,
    /// `known_hosts` lines for every host key the server has.
    pub known_hosts: String,
    pub log: PathBuf,
}

impl Sshd {
    /// `ssh://user@127.0.0.1:port/<abs path>`.
    pub fn url(&self, repo: &Path) -> String {
        format!("ssh://{}@127.0.0.1:{}{}", self.user, self.port, repo.display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub fn sshd(dir: &Path, host_key_kinds: &[&str], authorized_keys: &[&str]) -> Sshd {
    let bin = sshd_binary();
    std::fs::create_dir_all(dir).unwrap();
    let user = run(Command::new("id").arg("-un"));
    let port = free_port();
    let mut config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nPidFile {pid}\nAuthorizedKeysFile {ak}\nAllowUsers {user}\n\
         PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
         PermitRootLogin prohibit-password\nStrictModes no\nAllowTcpForwarding no\nX11Forwarding no\n\
         PrintMotd no\nLogLevel VERBOSE\nForceCommand {shell} -c \"$SSH_ORIGINAL_COMMAND\"\n",
        pid = dir.join("sshd.pid").display(),
        ak = dir.join("authorized_keys").display(),
        shell = git_shell().display(),
    );
    let mut known_hosts = String::new();
    for kind in host_key_kinds {
        let (_, public) = ssh_keygen(dir, &format!("host_{kind}"), kind, &[]);
        config.push_str(&format!("HostKey {}\n", dir.join(format!("host_{kind}")).display()));
        let mut f = public.split_whitespace();
        known_hosts.push_str(&format!("[127.0.0.1]:{port} {} {}\n", f.next().unwrap(), f.next().unwrap()));
    }
    std::fs::write(dir.join("authorized_keys"), authorized_keys.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("sshd_config"), config).unwrap();
    // As root, sshd separates privileges and needs its empty directory (a systemd unit makes it).
    if user == "root" {
        std::fs::create_dir_all("/run/sshd").unwrap();
    }
    let log = dir.join("sshd.log");
    let mut child = Command::new(&bin)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("sshd");
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("sshd exited ({status}): {}", read(&log));
        }
        assert!(start.elapsed() < Duration::from_secs(20), "sshd did not start: {}", read(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
    Sshd {
        server: Server { port, child: Some(child), stop: Arc::new(AtomicBool::new(false)) },
        port,
        user,
        known_hosts,
        log,
    }
}

fn git_shell() -> PathBuf {
    let p = PathBuf::from(run(Command::new("git").arg("--exec-path"))).join("git-shell");
    assert!(p.is_file(), "git-shell not found at {}", p.display());
    p
}

/// Debian's smbd sharing one directory as `edits` on a loopback port, with the configuration
/// `gamezone_init::samba::smb_conf` writes.
pub struct Smbd {
    pub server: Server,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub log: PathBuf,
}

/// Starts smbd (as root: it needs to switch to the share's user) for `share`, its state in `dir`.
pub fn smbd(share: &Path, dir: &Path) -> Smbd {
    let bin = std::env::var_os("GAMEZONE_SMBD").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/sbin/smbd"));
    assert!(
        bin.is_file() && Path::new("/usr/bin/smbclient").is_file(),
        "smbd/smbclient not found — run init-container/tests/install-test-tools.sh (or set GAMEZONE_SMBD)"
    );
    let port = free_port();
    let unix_user = run(Command::new("id").arg("-un"));
    let share_cfg = gamezone_init::samba::SmbShare {
        name: "edits".into(),
        path: share.to_owned(),
        port,
        listen: "127.0.0.1".into(),
        state_dir: dir.to_owned(),
        user: "tester".into(),
        unix_user: unix_user.clone(),
    };
    let (conf, usermap) = gamezone_init::samba::smb_conf(&share_cfg).unwrap();
    for d in gamezone_init::samba::STATE_SUBDIRS {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let conf_path = dir.join("smb.conf");
    std::fs::write(&conf_path, conf).unwrap();
    std::fs::write(dir.join("usermap"), usermap).unwrap();
    let password = format!("pw-{}", free_port());
    let mut set = Command::new("smbpasswd")
        .arg("-c")
        .arg(&conf_path)
        .args(["-a", "-s", &unix_user])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("smbpasswd");
    set.stdin.take().unwrap().write_all(format!("{password}\n{password}\n").as_bytes()).unwrap();
    let out = set.wait_with_output().unwrap();
    assert!(out.status.success(), "smbpasswd: {}", String::from_utf8_lossy(&out.stderr));
    let log = dir.join("smbd.log");
    let mut child = Command::new(&bin)
        .args(["--foreground", "--no-process-group", "-s"])
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smbd");
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("smbd exited ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(start.elapsed() < Duration::from_secs(20), "smbd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Smbd {
        server: Server { port, child: Some(child), stop: Arc::new(AtomicBool::new(false)) },
        port,
        user: "tester".into(),
        password,
        log,
    }
}

impl Smbd {
    /// Runs `smbclient -c CMDS` against the share; panics with its output on failure.
    pub fn client(&self, cmds: &str) -> String {
        run(Command::new("smbclient").arg("//127.0.0.1/edits").args([
            "-p",
            &self.port.to_string(),
            "-U",
            &format!("{}%{}", self.user, self.password),
            "-c",
            cmds,
        ]))
    }
}

/// The egress policy of these tests: their servers listen on loopback, and some layers are local.
pub fn loopback() -> gamezone_init::egress::Egress {
    gamezone_init::egress::Egress::strict()
        .allow(&["127.0.0.0/8".to_owned(), "::1/128".to_owned()])
        .unwrap()
        .allow_local_sources(true)
}

/// Flags of the binary for [`loopback`].
pub const LOOPBACK_ENV: [(&str, &str); 2] =
    [("GAMEZONE_ALLOW_EGRESS", "127.0.0.0/8,::1/128"), ("GAMEZONE_ALLOW_LOCAL_SOURCES", "true")];

/// `gamezone-init`, allowed to reach the loopback test servers and local folders.
pub fn init_cmd() -> Command {
    let mut c = Command::new(bin());
    c.envs(LOOPBACK_ENV);
    c
}

/// `resolve::resolve` with the [`loopback`] policy.
pub async fn resolve(
    layers: &[gamezone_init::plan::Layer],
    creds: &dyn gamezone_init::creds::Credentials,
) -> gamezone_init::Result<Vec<gamezone_init::resolve::Revision>> {
    resolve_with(layers, creds, &gamezone_init::retry::RetryPolicy::default()).await
}

/// `resolve::resolve_with` with the [`loopback`] policy.
pub async fn resolve_with(
    layers: &[gamezone_init::plan::Layer],
    creds: &dyn gamezone_init::creds::Credentials,
    retry: &gamezone_init::retry::RetryPolicy,
) -> gamezone_init::Result<Vec<gamezone_init::resolve::Revision>> {
    let o = gamezone_init::resolve::Options { retry: retry.clone(), egress: loopback(), ..Default::default() };
    gamezone_init::resolve::resolve_opts(layers, creds, &o).await
}

/// `ApplyOptions::new` with the [`loopback`] policy.
pub fn apply_options(
    layers: Vec<gamezone_init::plan::Layer>,
    revisions: Vec<String>,
    root: impl Into<PathBuf>,
    creds: Arc<dyn gamezone_init::creds::Credentials>,
) -> gamezone_init::apply::ApplyOptions {
    let mut o = gamezone_init::apply::ApplyOptions::new(layers, revisions, root, creds);
    o.egress = loopback();
    o
}
