//! Real servers on the host's loopback for zones on a real node: git daemon, s3s-fs, MariaDB, and
//! a client for the example game server.
//!
//! Servers bind `127.0.0.1`. Pods reach them at `10.245.0.1` (`hostAddress`), which `cp.sh`
//! DNATs to `127.0.0.1` for the node's traffic and for the host's own, so the operator on the host
//! pins revisions from the very URLs the pods fetch: `http://10.245.0.1:<port>` works for both.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "{what} on 127.0.0.1:{port} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command, panicking with its output on failure; its trimmed stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A child process killed on drop.
pub struct Proc(Option<Child>);

impl Proc {
    /// Kills the process and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs git in `dir` with a fixed identity.
pub fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "e2e")
        .env("GIT_AUTHOR_EMAIL", "e2e@example.com")
        .env("GIT_COMMITTER_NAME", "e2e")
        .env("GIT_COMMITTER_EMAIL", "e2e@example.com"))
}

/// A repository served by [`GitDaemon`].
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn write(&self, rel: &str, content: &str) -> &Self {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
        self
    }

    pub fn remove(&self, rel: &str) -> &Self {
        std::fs::remove_file(self.dir.join(rel)).unwrap();
        self
    }

    /// Commits everything; the new commit.
    pub fn commit(&self, msg: &str) -> String {
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "--allow-empty", "-m", msg]);
        git(&self.dir, &["rev-parse", "HEAD"])
    }
}

/// `git daemon` on loopback serving the repositories below its root.
pub struct GitDaemon {
    pub root: PathBuf,
    pub port: u16,
    host_address: String,
    _proc: Proc,
}

impl GitDaemon {
    pub fn start(root: &Path, host_address: &str) -> GitDaemon {
        std::fs::create_dir_all(root).unwrap();
        let port = free_port();
        // Its log, beside the repositories, has a line per fetch (`Request upload-pack`).
        let log = std::fs::File::create(root.with_extension("log")).unwrap();
        let child = Command::new("git")
            .args(["daemon", "--reuseaddr", "--export-all", "--verbose", "--listen=127.0.0.1"])
            .arg(format!("--base-path={}", root.display()))
            .arg(format!("--port={port}"))
            .arg(root)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("git daemon");
        let proc = Proc(Some(child));
        wait_port(port, "git daemon");
        GitDaemon { root: root.to_path_buf(), port, host_address: host_address.to_string(), _proc: proc }
    }

    /// Fetches (upload-pack requests, ref listings included) the daemon has served.
    pub fn fetches(&self) -> usize {
        let log = std::fs::read_to_string(self.root.with_extension("log")).unwrap_or_default();
        log.lines().filter(|l| l.contains("Request upload-pack")).count()
    }

    /// Stops the daemon: the origin is gone.
    pub fn stop(&mut self) {
        self._proc.stop();
    }

    /// A new repository on branch `main` that serves exact commits.
    pub fn repo(&self, name: &str) -> Repo {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        git(&dir, &["config", "uploadpack.allowReachableSHA1InWant", "true"]);
        Repo { dir }
    }

    /// The URL pods and the operator use for repository `name`.
    pub fn url(&self, name: &str) -> String {
        format!("git://{}:{}/{name}", self.host_address, self.port)
    }
}

/// CNCF Distribution (Debian's `docker-registry`) on loopback; pods reach it at the host address.
pub struct Registry {
    pub port: u16,
    root: PathBuf,
    host_address: String,
    /// The one user it serves (HTTP basic), when not anonymous.
    user: Option<(String, String)>,
    _proc: Proc,
}

impl Registry {
    /// Anonymous.
    pub fn start(root: &Path, host_address: &str) -> Registry {
        Registry::start_for(root, host_address, None)
    }

    /// Serving only `user` (user, password) when given: an htpasswd file of its bcrypt hash.
    pub fn start_for(root: &Path, host_address: &str, user: Option<(&str, &str)>) -> Registry {
        std::fs::create_dir_all(root.join("data")).unwrap();
        let port = free_port();
        let config = root.join("config.yml");
        let mut text = format!(
            "version: 0.1\nlog: {{level: info}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            root.join("data").display()
        );
        if let Some((u, p)) = user {
            let htpasswd = root.join("htpasswd");
            std::fs::write(&htpasswd, format!("{u}:{}\n", bcrypt::hash(p, 5).unwrap())).unwrap();
            text += &format!("auth:\n  htpasswd:\n    realm: gamezone-e2e\n    path: {}\n", htpasswd.display());
        }
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(root.join("registry.log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect(
                "docker-registry (apt-get install docker-registry; init-container/tests/install-test-tools.sh does)",
            );
        let proc = Proc(Some(child));
        wait_port(port, "docker-registry");
        let user = user.map(|(u, p)| (u.to_owned(), p.to_owned()));
        Registry { port, root: root.to_path_buf(), host_address: host_address.to_string(), user, _proc: proc }
    }

    /// A `.dockerconfigjson` with its user's credentials for its address as pods reach it.
    pub fn docker_config(&self) -> String {
        use base64::Engine as _;
        let (u, p) = self.user.clone().unwrap_or_default();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        serde_json::json!({"auths": {format!("{}:{}", self.host_address, self.port): {"auth": auth}}}).to_string()
    }

    /// curl with the registry's credentials.
    fn curl(&self) -> Command {
        let mut c = Command::new("curl");
        c.arg("-sf");
        if let Some((u, p)) = &self.user {
            c.args(["-u", &format!("{u}:{p}")]);
        }
        c
    }

    /// The repository the operator packs into, as pods reach it.
    pub fn repository(&self) -> String {
        format!("{}:{}/gamezone/layers", self.host_address, self.port)
    }

    /// Lets the nodes' containerd pull from it over plain HTTP: `hosts.toml` in each node's
    /// `certs.d` (containerd reads it on every pull).
    pub fn trusted_by(&self, nodes: &[crate::cluster::RealNode]) {
        let host = format!("{}:{}", self.host_address, self.port);
        for node in nodes {
            let nd = Path::new(&node.containerd_socket).parent().unwrap();
            let dir = nd.join("certs.d").join(&host);
            std::fs::create_dir_all(&dir).unwrap();
            let toml = format!(
                "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            );
            std::fs::write(dir.join("hosts.toml"), toml).unwrap();
        }
    }

    /// Downloads of the blob `digest` by a node's container runtime (containerd's user agent)
    /// its access log shows: `GET`s it answered.
    pub fn node_downloads(&self, digest: &str) -> usize {
        self.downloads(digest, |l| l.contains("containerd/"))
    }

    /// Downloads of the blob `digest` by anyone: nodes, pack Jobs, copying pods.
    pub fn all_downloads(&self, digest: &str) -> usize {
        self.downloads(digest, |_| true)
    }

    fn downloads(&self, digest: &str, by: impl Fn(&str) -> bool) -> usize {
        let log = std::fs::read_to_string(self.root.join("registry.log")).unwrap_or_default();
        let blob = format!("/blobs/{digest} ");
        log.lines().filter(|l| l.contains("\"GET /v2/") && l.contains(&blob) && l.contains("\" 200 ") && by(l)).count()
    }

    fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/v2/gamezone/layers/{path}", self.port)
    }

    /// The repository's tags.
    pub fn tags(&self) -> Vec<String> {
        let out = run(self.curl().arg(self.api("tags/list")));
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        list["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect()
    }

    /// Pushes the manifest of `tag` again with the annotation `key` set to `value`.
    pub fn annotate(&self, tag: &str, key: &str, value: &str) {
        const MEDIA: &str = "application/vnd.oci.image.manifest.v1+json";
        let url = self.api(&format!("manifests/{tag}"));
        let out = run(self.curl().args(["-H", &format!("Accept: {MEDIA}"), &url]));
        let mut manifest: serde_json::Value = serde_json::from_str(&out).unwrap();
        manifest["annotations"][key] = serde_json::Value::String(value.to_owned());
        let body = serde_json::to_string(&manifest).unwrap();
        let ct = format!("Content-Type: {MEDIA}");
        run(self.curl().args(["-X", "PUT", "-H", &ct, "--data-binary", &body, &url]));
    }

    /// Stops the registry.
    pub fn stop(&mut self) {
        self._proc.stop();
    }
}

/// A tool `init-container/tests/install-test-tools.sh` builds: `env` names it, else it is at
/// `rel` below the tools cache.
fn cached_tool(env: &str, rel: &str) -> PathBuf {
    let p = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("GAMEZONE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/gamezone"));
        cache.join("tools").join(rel)
    });
    assert!(p.is_file(), "{} not found: run init-container/tests/install-test-tools.sh (or set {env})", p.display());
    p
}

/// Access key of [`S3`].
pub const S3_ACCESS_KEY: &str = "AKIAE2ETESTKEY";
/// Secret key of [`S3`].
pub const S3_SECRET_KEY: &str = "e2e-s3cr3t/Key+42";

/// s3s-fs (signatures checked) serving the buckets below its root.
pub struct S3 {
    pub root: PathBuf,
    pub port: u16,
    host_address: String,
    _proc: Proc,
}

impl S3 {
    pub fn start(root: &Path, host_address: &str) -> S3 {
        let bin = cached_tool("GAMEZONE_S3S_FS", "s3s-fs-0.14.1/bin/s3s-fs");
        std::fs::create_dir_all(root).unwrap();
        let port = free_port();
        // Its log has a line per request naming the S3 operation (`resolved route, op: …`).
        let log = std::fs::File::create(root.with_extension("log")).unwrap();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(root)
            .env("RUST_LOG", "s3s::ops=debug")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("s3s-fs");
        let proc = Proc(Some(child));
        wait_port(port, "s3s-fs");
        S3 { root: root.to_path_buf(), port, host_address: host_address.to_string(), _proc: proc }
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.root.with_extension("log")).unwrap_or_default();
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    }

    /// Objects it has served (GetObject requests).
    pub fn gets(&self) -> usize {
        let log = std::fs::read_to_string(self.root.with_extension("log")).unwrap_or_default();
        log.lines().filter(|l| l.contains("resolved route, op: GetObject")).count()
    }

    /// Writes `bucket/key` with `content`.
    pub fn put_bytes(&self, bucket: &str, key: &str, content: &[u8]) {
        let p = self.root.join(bucket).join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// Writes `bucket/key`.
    pub fn put(&self, bucket: &str, key: &str, content: &str) {
        let p = self.root.join(bucket).join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// The endpoint pods and the operator use.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host_address, self.port)
    }
}

/// A Git LFS server (rudolfs, built by init-container/tests/install-test-tools.sh) on loopback,
/// storing under `root`; its API for a repository is `http://HOST:PORT/api/<org>/<repo>`, its
/// log (a line per request) beside `root`.
pub struct Lfs {
    pub port: u16,
    root: PathBuf,
    host_address: String,
    _proc: Proc,
}

impl Lfs {
    pub fn start(root: &Path, host_address: &str) -> Lfs {
        let bin = cached_tool("GAMEZONE_RUDOLFS", "rudolfs-0.3.8/bin/rudolfs");
        std::fs::create_dir_all(root).unwrap();
        let port = free_port();
        let log = std::fs::File::create(root.with_extension("log")).unwrap();
        let child = Command::new(bin)
            .args(["--host", &format!("127.0.0.1:{port}"), "--key", &"ab".repeat(32), "--log-level", "info"])
            .args(["local", "--path"])
            .arg(root)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rudolfs");
        wait_port(port, "rudolfs");
        Lfs { port, root: root.to_path_buf(), host_address: host_address.to_string(), _proc: Proc(Some(child)) }
    }

    /// The LFS URL of `org/repo`, as `.lfsconfig` names it (pods reach the host address).
    pub fn url(&self, repo: &str) -> String {
        format!("http://{}:{}/api/{repo}", self.host_address, self.port)
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.with_extension("log")).unwrap_or_default()
    }
}

/// Debian's MariaDB on a temp datadir, bound to 127.0.0.1 (pods reach it through the DNAT), with
/// a database and a user with a password, as examples/migrater/test.sh runs it.
pub struct Mariadb {
    pub port: u16,
    dir: tempfile::TempDir,
    _proc: Proc,
}

impl Mariadb {
    pub fn start(database: &str, user: &str, password: &str) -> Mariadb {
        let dir = tempfile::tempdir().unwrap();
        let sbin = |name: &str| {
            ["/usr/sbin", "/usr/bin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
                .unwrap_or_else(|| panic!("{name} not found: apt-get install mariadb-server mariadb-client"))
        };
        let me = run(Command::new("id").arg("-un"));
        run(Command::new(sbin("mariadb-install-db"))
            .args(["--no-defaults", &format!("--user={me}"), "--auth-root-authentication-method=normal"])
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg("--skip-test-db"));
        let port = free_port();
        let child = Command::new(sbin("mariadbd"))
            .args(["--no-defaults", &format!("--user={me}"), &format!("--port={port}")])
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--log-error={}", dir.path().join("error.log").display()))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--skip-log-bin",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd");
        let db = Mariadb { port, dir, _proc: Proc(Some(child)) };
        let start = Instant::now();
        while db.root_sql("SELECT 1").is_none() {
            assert!(start.elapsed() < Duration::from_secs(30), "mariadbd did not answer within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        db.root_sql(&format!(
            "CREATE DATABASE {database}; CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'; \
             GRANT ALL PRIVILEGES ON {database}.* TO '{user}'@'%';"
        ))
        .expect("create the database and its user");
        db
    }

    /// Runs SQL as root over the socket; tab-separated rows, or `None` on failure.
    pub fn root_sql(&self, sql: &str) -> Option<String> {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-u", "root", "-N", "-B"])
            .arg("-S")
            .arg(self.dir.path().join("sock"))
            .args(["-e", sql])
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// One request to the example game server over TCP: its JSON answer.
pub fn tcp_request(addr: &str, port: u16, request: &str) -> Result<serde_json::Value, String> {
    let target = format!("{addr}:{port}");
    let sock: std::net::SocketAddr = target.parse().map_err(|e| format!("{target}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(3)).map_err(|e| format!("{target}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    writeln!(s, "{request}").map_err(|e| format!("{target}: {e}"))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(|e| format!("{target}: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("{target} answered {line:?}: {e}"))
}

/// One request to the example game server over UDP: its JSON answer.
pub fn udp_request(addr: &str, port: u16, request: &str) -> Result<serde_json::Value, String> {
    let target = format!("{addr}:{port}");
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(request.as_bytes(), &target).map_err(|e| format!("{target}: {e}"))?;
    let mut buf = vec![0; 65536];
    let n = s.recv(&mut buf).map_err(|e| format!("{target}/udp: {e}"))?;
    serde_json::from_slice(&buf[..n]).map_err(|e| format!("{target}/udp: {e}"))
}

/// A player's open session with the example game server: one TCP connection it keeps, and a UDP
/// socket whose datagrams all come from one port (one conntrack flow through the node's DNAT).
pub struct Session {
    target: String,
    tcp: BufReader<TcpStream>,
    udp: UdpSocket,
}

impl Session {
    /// Connects to `addr:port` (TCP and UDP).
    pub fn open(addr: &str, port: u16) -> Result<Session, String> {
        let target = format!("{addr}:{port}");
        let sock: std::net::SocketAddr = target.parse().map_err(|e| format!("{target}: {e}"))?;
        let tcp = TcpStream::connect_timeout(&sock, Duration::from_secs(3)).map_err(|e| format!("{target}: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        udp.connect(sock).map_err(|e| format!("{target}/udp: {e}"))?;
        Ok(Session { target, tcp: BufReader::new(tcp), udp })
    }

    /// `hello` over the open TCP connection and over UDP; the TCP answer. An error when either
    /// is gone: the connection closed or reset, or no datagram came back.
    pub fn hello(&mut self) -> Result<serde_json::Value, String> {
        let target = &self.target;
        writeln!(self.tcp.get_mut(), "hello").map_err(|e| format!("{target}: the session's connection: {e}"))?;
        let mut line = String::new();
        match self.tcp.read_line(&mut line) {
            Ok(0) => return Err(format!("{target}: the server closed the session's connection")),
            Ok(_) => {}
            Err(e) => return Err(format!("{target}: the session's connection: {e}")),
        }
        let answer = serde_json::from_str(&line).map_err(|e| format!("{target} answered {line:?}: {e}"))?;
        self.udp.send(b"hello").map_err(|e| format!("{target}/udp: {e}"))?;
        let mut buf = vec![0; 65536];
        let n = self.udp.recv(&mut buf).map_err(|e| format!("{target}/udp: no answer: {e}"))?;
        serde_json::from_slice::<serde_json::Value>(&buf[..n]).map_err(|e| format!("{target}/udp: {e}"))?;
        Ok(answer)
    }
}
