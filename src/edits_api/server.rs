//! `gamezone edits serve`: the process of a zone's Samba pod. It writes the share's `smb.conf`
//! (`gamezone_init::samba`), sets the login from the Secret, runs Debian's `smbd` as its child,
//! and serves the edits API on a port only the API server's service proxy is meant to reach:
//! `GET /status`, `POST /reset`, `GET /tar` (the share as a tar), each with the share's
//! password in the `x-gamezone-edits-token` header.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gamezone_init::samba::{STATE_SUBDIRS, SmbShare, smb_conf};

use super::{ServerReport, ShareReport};
use crate::zone::{REPORT_DIR, SHARE_DIR, SHARE_NAME, TOKEN_HEADER};

/// The Unix account smbd writes edits as (the images' non-root user, which the sidecars run as).
const UNIX_USER: &str = "nonroot";
const UNIX_UID: u32 = 65532;

/// How the Samba pod's process runs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The claim's root: the share is `<root>/share`, the servers' reports `<root>/.status`.
    pub root: PathBuf,
    /// The share's Secret, mounted: files `username` and `password`.
    pub secret_dir: PathBuf,
    /// smbd's own state (passdb, locks, logs).
    pub state_dir: PathBuf,
    /// SMB port.
    pub smb_port: u16,
    /// Edits API port.
    pub api_port: u16,
    /// smbd and smbpasswd (Debian's paths by default).
    pub smbd: PathBuf,
    /// `smbpasswd`.
    pub smbpasswd: PathBuf,
}

struct Shared {
    root: PathBuf,
    token: String,
    /// Held for [`WRONG_TOKEN_DELAY`] by each refused request, so guesses come one at a time.
    wrong: tokio::sync::Mutex<()>,
}

/// How long a request with a wrong password waits, one at a time: the API listens on the pod's
/// address, and guessing the share's password is at most one try per this delay.
const WRONG_TOKEN_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

fn secret(dir: &Path, key: &str) -> anyhow::Result<String> {
    let path = dir.join(key);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("read {}: the edits Secret (spec.edits.secretRef) needs the key {key:?}", path.display())
    })?;
    let value = text.strip_suffix('\n').unwrap_or(&text).to_string();
    anyhow::ensure!(!value.is_empty(), "the edits Secret's key {key:?} is empty; set a {key}");
    Ok(value)
}

/// Runs smbd and the edits API until smbd exits or SIGTERM.
pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let user = secret(&cfg.secret_dir, "username")?;
    let password = secret(&cfg.secret_dir, "password")?;
    let share = cfg.root.join(SHARE_DIR);
    for dir in [share.clone(), cfg.root.join(REPORT_DIR)] {
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // smbd writes as the non-root user, and the servers' sidecars (the same user) report here.
        std::os::unix::fs::chown(&dir, Some(UNIX_UID), Some(UNIX_UID))
            .with_context(|| format!("chown {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    for sub in STATE_SUBDIRS {
        std::fs::create_dir_all(cfg.state_dir.join(sub))?;
    }
    // smbd logs here before it has read its configuration.
    let _ = std::fs::create_dir_all("/var/log/samba");
    let (conf, usermap) = smb_conf(&SmbShare {
        name: SHARE_NAME.into(),
        path: share,
        port: cfg.smb_port,
        listen: String::new(),
        state_dir: cfg.state_dir.clone(),
        user: user.clone(),
        unix_user: UNIX_USER.into(),
    })?;
    let conf_path = cfg.state_dir.join("smb.conf");
    std::fs::write(&conf_path, conf)?;
    std::fs::write(cfg.state_dir.join("usermap"), usermap)?;
    set_password(&cfg.smbpasswd, &conf_path, &password).await?;

    let mut smbd = tokio::process::Command::new(&cfg.smbd)
        .args(["--foreground", "--no-process-group", "-s"])
        .arg(&conf_path)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", cfg.smbd.display()))?;
    tracing::info!(port = cfg.smb_port, share = SHARE_NAME, "smbd started");

    let shared = Arc::new(Shared { root: cfg.root.clone(), token: password, wrong: Default::default() });
    let app = axum::Router::new()
        .route("/status", get(status))
        .route("/reset", post(reset))
        .route("/tar", get(tar))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", cfg.api_port))
        .await
        .with_context(|| format!("listen on port {}", cfg.api_port))?;
    tracing::info!(port = cfg.api_port, "edits API listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = axum::serve(listener, app) => r.context("edits API")?,
        st = smbd.wait() => anyhow::bail!("smbd exited ({}); see {}/smbd.log", st?, cfg.state_dir.display()),
        _ = term.recv() => tracing::info!("SIGTERM; stopping smbd"),
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = smbd.start_kill();
    let _ = smbd.wait().await;
    Ok(())
}

async fn set_password(smbpasswd: &Path, conf: &Path, password: &str) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(smbpasswd)
        .args(["-c"])
        .arg(conf)
        .args(["-a", "-s", UNIX_USER])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("run {}", smbpasswd.display()))?;
    let mut stdin = child.stdin.take().context("smbpasswd stdin")?;
    stdin.write_all(format!("{password}\n{password}\n").as_bytes()).await?;
    drop(stdin);
    let st = child.wait().await?;
    anyhow::ensure!(st.success(), "smbpasswd failed ({st}): cannot set the share's password");
    Ok(())
}

/// `None` when the token is right, else the refusal to send, after the wrong-token delay.
async fn refused(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let given = headers.get(TOKEN_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    let want = shared.token.as_bytes();
    // Same time whatever the first differing byte.
    let same = given.len() == want.len() && given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same {
        return None;
    }
    let _one_at_a_time = shared.wrong.lock().await;
    tokio::time::sleep(WRONG_TOKEN_DELAY).await;
    Some(
        (StatusCode::UNAUTHORIZED, format!("send the share's password in the {TOKEN_HEADER} header\n")).into_response(),
    )
}

fn internal(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

async fn status(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&shared, &headers).await {
        return r;
    }
    let root = shared.root.clone();
    match tokio::task::spawn_blocking(move || report(&root)).await {
        Ok(Ok(r)) => axum::Json(r).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// The share and the servers' reports, read from the claim.
pub fn report(root: &Path) -> std::io::Result<ShareReport> {
    let share = root.join(SHARE_DIR);
    let snap = gamezone_init::edits_layer::scan(&share)?;
    let (mut files, mut bytes, mut newest) = (0u64, 0u64, None::<i64>);
    let mut stack = vec![share];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let m = entry.metadata()?;
            newest = newest.max(Some(m.mtime()));
            if m.is_dir() {
                stack.push(entry.path());
            } else if m.is_file() {
                files += 1;
                bytes += m.len();
            }
        }
    }
    let mut servers = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root.join(REPORT_DIR)) {
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(pod) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            // A report being replaced or half-written is read again next time.
            if let Ok(status) =
                std::fs::read(&path).map_err(|_| ()).and_then(|b| serde_json::from_slice(&b).map_err(|_| ()))
            {
                servers.push(ServerReport { pod: pod.to_string(), status });
            }
        }
    }
    servers.sort_by(|a, b| a.pod.cmp(&b.pod));
    let last_change = newest.and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok()).map(|t| t.to_string());
    Ok(ShareReport { files, bytes, revision: snap.digest, last_change, refused: snap.refusal, servers })
}

async fn reset(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&shared, &headers).await {
        return r;
    }
    let share = shared.root.join(SHARE_DIR);
    let removed = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let mut n = 0;
        for entry in std::fs::read_dir(&share)? {
            let entry = entry?;
            // Never followed: a link is removed as a link.
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
            n += 1;
        }
        Ok(n)
    })
    .await;
    match removed {
        Ok(Ok(n)) => {
            tracing::info!(removed = n, "edits reset");
            axum::Json(serde_json::json!({"removed": n})).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn tar(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&shared, &headers).await {
        return r;
    }
    let share = shared.root.join(SHARE_DIR);
    match tokio::task::spawn_blocking(move || tar_of(&share)).await {
        Ok(Ok(bytes)) => ([(axum::http::header::CONTENT_TYPE, "application/x-tar")], bytes).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// The share's plain files and directories as a tar (sorted, mode 0644/0755, mtime kept);
/// anything else (links, devices) is left out, as the servers refuse it.
pub fn tar_of(share: &Path) -> std::io::Result<Vec<u8>> {
    let mut b = ::tar::Builder::new(Vec::new());
    let mut stack = vec![(share.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let Ok(name) = entry.file_name().into_string() else { continue };
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let m = std::fs::symlink_metadata(entry.path())?;
            let mut h = ::tar::Header::new_gnu();
            h.set_mtime(m.mtime().max(0) as u64);
            if m.is_dir() {
                h.set_entry_type(::tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, &path, std::io::empty())?;
                stack.push((entry.path(), path));
            } else if m.is_file() {
                h.set_entry_type(::tar::EntryType::Regular);
                h.set_mode(if m.mode() & 0o111 != 0 { 0o755 } else { 0o644 });
                h.set_size(m.len());
                b.append_data(&mut h, &path, std::fs::File::open(entry.path())?)?;
            }
        }
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wrong_passwords_are_answered_one_a_second_and_the_right_one_at_once() {
        let shared = Shared { root: PathBuf::new(), token: "s3cret".into(), wrong: Default::default() };
        let with = |token: &str| {
            let mut h = HeaderMap::new();
            h.insert(TOKEN_HEADER, token.parse().unwrap());
            h
        };
        let start = tokio::time::Instant::now();
        let guesses = [with("guess1"), with("guess2"), with("guess3")];
        let (a, b, c) =
            tokio::join!(refused(&shared, &guesses[0]), refused(&shared, &guesses[1]), refused(&shared, &guesses[2]));
        assert!(a.is_some() && b.is_some() && c.is_some());
        assert!(start.elapsed() >= WRONG_TOKEN_DELAY * 3, "three guesses took {:?}", start.elapsed());
        let start = tokio::time::Instant::now();
        assert!(refused(&shared, &with("s3cret")).await.is_none());
        assert!(start.elapsed() < WRONG_TOKEN_DELAY);
    }

    #[test]
    fn the_report_counts_the_share_and_reads_each_servers_status() {
        let t = tempfile::tempdir().unwrap();
        let share = t.path().join(SHARE_DIR);
        std::fs::create_dir_all(share.join("config")).unwrap();
        std::fs::write(share.join("config/server.json"), "{}").unwrap();
        std::fs::create_dir_all(t.path().join(REPORT_DIR)).unwrap();
        let st = gamezone_init::edits_layer::EditsStatus { state: "applied".into(), ..Default::default() };
        std::fs::write(t.path().join(REPORT_DIR).join("z-game-1.json"), serde_json::to_vec(&st).unwrap()).unwrap();
        std::fs::write(t.path().join(REPORT_DIR).join("z-game-2.json.tmp"), "half").unwrap();
        let r = report(t.path()).unwrap();
        assert_eq!((r.files, r.bytes), (1, 2));
        assert_eq!(r.revision, gamezone_init::edits_layer::scan(&share).unwrap().digest);
        assert_eq!(r.servers.len(), 1);
        assert_eq!(r.servers[0].pod, "z-game-1");
    }

    #[test]
    fn the_tar_holds_exactly_the_plain_files_and_folders() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("config")).unwrap();
        std::fs::write(t.path().join("config/server.json"), "{\"motd\":\"x\"}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("evil")).unwrap();
        let bytes = tar_of(t.path()).unwrap();
        let mut a = ::tar::Archive::new(&bytes[..]);
        let names: Vec<String> =
            a.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["config", "config/server.json"]);
    }
}
