//! The egress policy and what errors may carry, against small servers on loopback written
//! here: layers at refused addresses are refused before any connection, nothing a server sends
//! reaches an error, redirects to another port are not followed, and silent or trickling
//! servers give up at the deadline.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{apply_options, init_cmd, loopback};
use gamezone_init::Error;
use gamezone_init::apply::apply;
use gamezone_init::creds::NoCredentials;
use gamezone_init::plan::{GitSource, Layer, P4ExportSource, S3Source};
use gamezone_init::resolve::{Options, Revision, resolve, resolve_opts};
use gamezone_init::retry::RetryPolicy;

const SECRET: &str = "SECRET-BODY";

/// A server that records each request's head (request line and headers) and answers with
/// `answer(request line)`: raw bytes, or `None` to hold the connection open without a word.
struct Spy {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Spy {
    fn start(answer: impl Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static) -> Spy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, answer) = (seen.clone(), Arc::new(answer));
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (log, answer) = (log.clone(), answer.clone());
                std::thread::spawn(move || serve(conn, &log, &*answer));
            }
        });
        Spy { port, seen }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, log: &Mutex<Vec<String>>, answer: &dyn Fn(&str) -> Option<Vec<u8>>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    log.lock().unwrap().push(head.clone());
    let mut w = conn;
    match answer(head.lines().next().unwrap_or("")) {
        Some(bytes) => {
            let _ = w.write_all(&bytes);
        }
        None => std::thread::sleep(Duration::from_secs(30)),
    }
}

fn http(status: &str, headers: &[(&str, String)], body: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// An accepted connection that never hears a word.
fn silent() -> (u16, Arc<Mutex<u32>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(Mutex::new(0));
    let n = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            *n.lock().unwrap() += 1;
            held.push(c);
        }
    });
    (port, accepted)
}

fn s3(endpoint: String) -> Layer {
    Layer { s3: Some(S3Source { endpoint, bucket: "art".into(), ..Default::default() }), ..Default::default() }
}

fn p4(url: String) -> Layer {
    Layer { p4_export: Some(P4ExportSource { url: Some(url), ..Default::default() }), ..Default::default() }
}

fn git(url: String) -> Layer {
    Layer { git: Some(GitSource { url, ..Default::default() }), ..Default::default() }
}

fn once() -> RetryPolicy {
    RetryPolicy { attempts: 1, ..RetryPolicy::default() }
}

fn allowing(deadline: Duration) -> Options {
    Options { retry: once(), egress: loopback(), deadline }
}

async fn fails(layer: Layer, o: &Options) -> Error {
    resolve_opts(&[layer], &NoCredentials, o).await.expect_err("the resolve fails")
}

#[tokio::test]
async fn strict_policy_refuses_loopback_before_any_connection() {
    let spy = Spy::start(|_| Some(http("200 OK", &[], SECRET)));
    let port = spy.port;
    for (layer, field) in [
        (s3(format!("http://127.0.0.1:{port}")), "s3.endpoint"),
        (s3(format!("http://2130706433:{port}")), "s3.endpoint"),
        (p4(format!("http://127.1:{port}/x.tar")), "p4Export.url"),
        (p4(format!("http://[::ffff:127.0.0.1]:{port}/x.tar")), "p4Export.url"),
        (git(format!("http://0x7f000001:{port}/r.git")), "git.url"),
        (git(format!("git://127.0.0.1:{port}/r.git")), "git.url"),
        (git(format!("ssh://git@127.0.0.1:{port}/r.git")), "git.url"),
    ] {
        let e = resolve(&[layer], &NoCredentials).await.unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, Error::Invalid { .. }), "{m}");
        assert!(
            m.contains(&format!("{field}: 127.0.0.1 is a loopback address")) && m.contains("--allow-egress"),
            "{m}"
        );
    }
    // A name that resolves to loopback is refused when resolved, still before any connection.
    for layer in [p4(format!("http://localhost:{port}/x.tar")), git(format!("http://localhost:{port}/r.git"))] {
        let m = resolve(&[layer], &NoCredentials).await.unwrap_err().to_string();
        assert!(m.contains("is a loopback address"), "{m}");
    }
    let m = resolve(&[s3(format!("http://localhost:{port}"))], &NoCredentials).await.unwrap_err().to_string();
    assert!(m.contains("is a loopback address"), "{m}");
    assert!(spy.requests().is_empty(), "the server saw {:?}", spy.requests());
}

#[tokio::test]
async fn local_sources_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    for layer in [git(url.clone()), p4(format!("{url}/x.tar")), git(dir.path().display().to_string())] {
        let m = resolve(&[layer], &NoCredentials).await.unwrap_err().to_string();
        assert!(m.contains("--allow-local-sources"), "{m}");
    }
    let local = Layer {
        local: Some(gamezone_init::plan::LocalSource { path: dir.path().display().to_string() }),
        ..Default::default()
    };
    let m = resolve(std::slice::from_ref(&local), &NoCredentials).await.unwrap_err().to_string();
    assert!(m.contains("--allow-local-sources"), "{m}");
    let o = Options { egress: gamezone_init::egress::Egress::strict().allow_local_sources(true), ..Options::default() };
    resolve_opts(&[local], &NoCredentials, &o).await.unwrap();
}

#[tokio::test]
async fn error_answers_are_not_reflected_and_are_stable() {
    let spy = Spy::start(|line| {
        let status = if line.contains("/five") { "500 Internal Server Error" } else { "403 Forbidden" };
        Some(http(
            status,
            &[("Content-Type", "application/xml".into())],
            &format!("<Error><Message>{SECRET}</Message></Error>"),
        ))
    });
    let port = spy.port;
    let o = allowing(Duration::from_secs(30));
    for layer in [
        s3(format!("http://127.0.0.1:{port}")),
        s3(format!("http://127.0.0.1:{port}/five")),
        p4(format!("http://127.0.0.1:{port}/x.tar")),
        p4(format!("http://127.0.0.1:{port}/five/x.tar")),
        git(format!("http://127.0.0.1:{port}/r.git")),
        git(format!("http://127.0.0.1:{port}/five/r.git")),
    ] {
        let first = fails(layer.clone(), &o).await.to_string();
        let second = fails(layer, &o).await.to_string();
        assert!(!first.contains(SECRET), "{first}");
        assert_eq!(first, second, "the same error on every try");
    }
    assert!(!spy.requests().is_empty());
}

#[tokio::test]
async fn manifest_values_are_not_reflected() {
    let body = format!(r#"{{"changelist":"{SECRET}","archiveSha256":"x","files":[]}}"#);
    let spy = Spy::start(move |_| Some(http("200 OK", &[], &body)));
    let m = fails(p4(format!("http://127.0.0.1:{}/x.tar", spy.port)), &allowing(Duration::from_secs(30))).await;
    let m = m.to_string();
    assert!(m.contains("not a p4 export manifest") && !m.contains(SECRET), "{m}");
}

#[tokio::test]
async fn redirects_to_another_port_are_not_followed() {
    let target = Spy::start(|_| Some(http("200 OK", &[], SECRET)));
    let to = format!("http://127.0.0.1:{}/elsewhere", target.port);
    let redirector = Spy::start(move |_| Some(http("302 Found", &[("Location", to.clone())], "")));
    let o = allowing(Duration::from_secs(30));
    for layer in [
        p4(format!("http://127.0.0.1:{}/x.tar", redirector.port)),
        git(format!("http://127.0.0.1:{}/r.git", redirector.port)),
    ] {
        let m = fails(layer, &o).await.to_string();
        assert!(m.contains("HTTP 302") && m.contains("not followed"), "{m}");
    }
    assert_eq!(redirector.requests().len(), 2);
    assert!(target.requests().is_empty(), "followed to {:?}", target.requests());
}

#[tokio::test]
async fn silent_and_trickling_servers_give_up_at_the_deadline() {
    let (port, accepted) = silent();
    let trickle = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut line = String::new();
                    while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                        line.clear();
                    }
                    let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
                    while c.write_all(b"x").is_ok() {
                        std::thread::sleep(Duration::from_millis(500));
                    }
                });
            }
        });
        port
    };
    let o = allowing(Duration::from_secs(2));
    for layer in [
        git(format!("git://127.0.0.1:{port}/r.git")),
        git(format!("http://127.0.0.1:{port}/r.git")),
        p4(format!("http://127.0.0.1:{port}/x.tar")),
        s3(format!("http://127.0.0.1:{port}")),
        p4(format!("http://127.0.0.1:{trickle}/x.tar")),
    ] {
        let started = Instant::now();
        let e = fails(layer, &o).await;
        assert!(e.is_transient() && e.to_string().contains("no answer within 2s"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }
    assert!(*accepted.lock().unwrap() >= 4);
}

#[tokio::test]
async fn a_git_daemon_fetch_gives_up_at_the_fetch_deadline() {
    // A git:// server that starts a long pkt-line and sends a byte of it every 500 ms: each read
    // succeeds, the whole never ends.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = c.write_all(b"fff0");
                while c.write_all(b"x").is_ok() {
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
        }
    });
    let root = tempfile::tempdir().unwrap();
    let mut o = apply_options(
        vec![git(format!("git://127.0.0.1:{port}/r.git"))],
        vec!["a".repeat(40)],
        root.path(),
        Arc::new(NoCredentials),
    );
    o.retry = once();
    o.fetch_deadline = Duration::from_secs(2);
    let started = Instant::now();
    let e = apply(o).await.unwrap_err();
    assert!(e.is_transient() && e.to_string().contains("no answer within 2s"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

#[test]
fn an_s3_layer_without_a_secret_is_not_signed_with_the_environments_keys() {
    let spy = Spy::start(|_| {
        let list = r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>art</Name><Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated><Contents><Key>a.txt</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>"e"</ETag><Size>1</Size></Contents></ListBucketResult>"#;
        Some(http("200 OK", &[("Content-Type", "application/xml".into())], list))
    });
    let plan = serde_json::to_string(&[s3(format!("http://127.0.0.1:{}", spy.port))]).unwrap();
    let out = init_cmd()
        .args(["resolve", "--plan-json", &plan])
        .env("AWS_ACCESS_KEY_ID", "AKIAOPERATORKEY")
        .env("AWS_SECRET_ACCESS_KEY", "operator-secret-key")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let revs: Vec<Revision> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(revs[0].revision.starts_with("sha256:"));
    let seen = spy.requests();
    assert!(!seen.is_empty());
    for head in seen {
        let lower = head.to_ascii_lowercase();
        assert!(!lower.contains("authorization") && !lower.contains("akiaoperatorkey"), "{head}");
    }
}

#[test]
fn the_binary_takes_the_policy_from_flags_and_env() {
    let spy = Spy::start(|_| Some(http("404 Not Found", &[], SECRET)));
    let plan = serde_json::to_string(&[p4(format!("http://127.0.0.1:{}/x.tar", spy.port))]).unwrap();
    let strict = std::process::Command::new(common::bin()).args(["resolve", "--plan-json", &plan]).output().unwrap();
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(!strict.status.success() && err.contains("loopback address"), "{err}");
    assert!(spy.requests().is_empty());
    let args = loopback().to_args();
    let allowed =
        std::process::Command::new(common::bin()).args(["resolve", "--plan-json", &plan]).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&allowed.stderr);
    assert!(!allowed.status.success() && err.contains("HTTP 404") && !err.contains(SECRET), "{err}");
    assert_eq!(spy.requests().len(), 1);
}
