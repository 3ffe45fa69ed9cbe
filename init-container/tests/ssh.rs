//! git layers over ssh against a real, private sshd on loopback (git-upload-pack through git-shell),
//! with the key and known_hosts from the layer's Secret.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use gamezone_init::Error;
use gamezone_init::apply::apply;
use gamezone_init::creds::DirCredentials;
use gamezone_init::plan::{GitSource, Layer, SecretRef};

use gamezone_init::retry::RetryPolicy;

fn ssh_layer(url: &str, secret: &str, sub: Option<&str>) -> Layer {
    Layer {
        path: "game".into(),
        sub_path: sub.map(Into::into),
        git: Some(GitSource {
            url: url.into(),
            branch: Some("main".into()),
            secret_ref: Some(SecretRef { name: secret.into() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn quick() -> RetryPolicy {
    RetryPolicy { attempts: 2, base: Duration::from_millis(50), max: Duration::from_millis(100) }
}

/// The URL as errors and revisions show it: without userinfo.
fn shown(url: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_username("").unwrap();
    u.to_string()
}

/// The base64 body of a private key file: what must never leak.
fn key_body(private: &str) -> Vec<String> {
    private.lines().filter(|l| !l.starts_with("-----") && l.len() > 20).map(str::to_owned).collect()
}

fn assert_no_key(text: &str, private: &str) {
    for l in key_body(private) {
        assert!(!text.contains(&l), "private key material in: {text}");
    }
}

async fn apply_one(layer: &Layer, commit: &str, root: &Path, creds: &Arc<DirCredentials>) -> Result<(), Error> {
    let mut o = apply_options(vec![layer.clone()], vec![commit.to_owned()], root, creds.clone());
    o.retry = quick();
    apply(o).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_key_kinds_subpath_and_pinned_commit() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(t.path(), "game");
    repo.write("config/a.ini", "v1").write("config/sub/b.ini", "b").write("assets/big.bin", "x");
    let first = repo.commit("one");
    repo.write("config/a.ini", "v2");
    let second = repo.commit("two");

    // One client key per kind libssh2 may be handed, in the formats ssh-keygen writes today
    // (OpenSSH) and the older PEM one.
    let keys = t.path().join("keys");
    let kinds: [(&str, &str, &[&str]); 5] = [
        ("ed25519", "ed25519", &[]),
        ("ecdsa", "ecdsa", &[]),
        ("rsa", "rsa", &["-b", "3072"]),
        ("rsa-pem", "rsa", &["-b", "3072", "-m", "PEM"]),
        ("ecdsa-pem", "ecdsa", &["-m", "PEM"]),
    ];
    let pairs: Vec<(&str, String, String)> = kinds
        .iter()
        .map(|(name, kind, extra)| {
            let (private, public) = ssh_keygen(&keys, name, kind, extra);
            (*name, private, public)
        })
        .collect();
    let authorized: Vec<&str> = pairs.iter().map(|(_, _, p)| p.as_str()).collect();
    let server = sshd(&t.path().join("sshd"), &["ed25519"], &authorized);
    let url = server.url(&repo.dir);
    let secrets = t.path().join("secrets");

    for (name, private, _) in &pairs {
        secret(&secrets, name, &[("identity", private.as_str()), ("known_hosts", server.known_hosts.as_str())]);
        let creds = Arc::new(DirCredentials::new(&secrets));
        let layer = ssh_layer(&url, name, Some("config"));
        let revs = resolve_with(std::slice::from_ref(&layer), creds.as_ref(), &quick())
            .await
            .unwrap_or_else(|e| panic!("{name} key: resolve: {e}\nsshd: {}", server.log()));
        assert_eq!(revs[0].revision, second, "{name}");
        assert_eq!(revs[0].source, format!("git {}", shown(&url)), "the user name is not shown");

        let root = t.path().join(format!("root-{name}"));
        apply_one(&layer, &second, &root, &creds)
            .await
            .unwrap_or_else(|e| panic!("{name} key: apply: {e}\nsshd: {}", server.log()));
        assert_eq!(read(root.join("current/game/a.ini")), "v2");
        assert_eq!(read(root.join("current/game/sub/b.ini")), "b");
        assert!(!root.join("current/game/assets").exists() && !root.join("current/assets").exists());

        // An older commit, pinned: fetched by id over ssh.
        let mut pinned = layer.clone();
        pinned.git.as_mut().unwrap().branch = None;
        pinned.git.as_mut().unwrap().commit = Some(first.clone());
        apply_one(&pinned, &first, &root, &creds).await.unwrap_or_else(|e| panic!("{name} key: pinned: {e}"));
        assert_eq!(read(root.join("current/game/a.ini")), "v1");
        assert_no_key(&read(root.join(".gamezone-state.json")), private);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_wrong_key_is_an_auth_error_naming_the_layer() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(t.path(), "game");
    repo.write("a.txt", "a");
    let commit = repo.commit("one");
    let keys = t.path().join("keys");
    let (_, good_public) = ssh_keygen(&keys, "good", "ed25519", &[]);
    let (wrong, _) = ssh_keygen(&keys, "wrong", "ed25519", &[]);
    let server = sshd(&t.path().join("sshd"), &["ed25519"], &[&good_public]);
    let secrets = t.path().join("secrets");
    secret(&secrets, "deploy-key", &[("identity", wrong.as_str()), ("known_hosts", server.known_hosts.as_str())]);
    let creds = Arc::new(DirCredentials::new(&secrets));
    let url = server.url(&repo.dir);
    let layer = ssh_layer(&url, "deploy-key", None);

    let e = resolve_with(std::slice::from_ref(&layer), creds.as_ref(), &quick()).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Auth { layer: 0, .. }), "{msg}");
    assert!(msg.starts_with(&format!("layer 0 (git {}): authentication failed", shown(&url))), "{msg}");
    assert!(msg.contains("Secret `deploy-key`") && msg.contains("`identity`"), "{msg}");
    assert_no_key(&msg, &wrong);

    // Apply with a pinned commit fails the same way, and leaves no tree behind.
    let root = t.path().join("root");
    let e = apply_one(&layer, &commit, &root, &creds).await.unwrap_err();
    assert!(matches!(e, Error::Auth { layer: 0, .. }), "{e}");
    assert_no_key(&e.to_string(), &wrong);
    assert!(!root.join("current").exists() && !root.join(".gamezone-state.json").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_unknown_or_changed_host_key_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(t.path(), "game");
    repo.write("a.txt", "a");
    let commit = repo.commit("one");
    let keys = t.path().join("keys");
    let (private, public) = ssh_keygen(&keys, "client", "ed25519", &[]);
    let server = sshd(&t.path().join("sshd"), &["ed25519"], &[&public]);
    let url = server.url(&repo.dir);
    let name = format!("[127.0.0.1]:{}", server.port);
    // Another server's key under this server's name: what a man in the middle would present.
    let (_, impostor) = ssh_keygen(&keys, "impostor", "ed25519", &[]);
    let impostor_b64 = impostor.split_whitespace().nth(1).unwrap();
    let changed = format!("{name} ssh-ed25519 {impostor_b64}\n");
    let elsewhere = server.known_hosts.replace(&name, "[git.example.com]:22");
    let secrets = t.path().join("secrets");
    secret(&secrets, "changed", &[("identity", private.as_str()), ("known_hosts", changed.as_str())]);
    secret(&secrets, "unknown", &[("identity", private.as_str()), ("known_hosts", elsewhere.as_str())]);
    let creds = Arc::new(DirCredentials::new(&secrets));

    for (secret_name, expect) in [
        ("changed", "does not match known_hosts (possible man-in-the-middle); update the Secret's `known_hosts`"),
        ("unknown", "is not in known_hosts; add its key (ssh-keyscan) to the Secret's `known_hosts`"),
    ] {
        let layer = ssh_layer(&url, secret_name, None);
        let e = resolve_with(std::slice::from_ref(&layer), creds.as_ref(), &quick()).await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Credentials { layer: 0, .. }), "{secret_name}: {msg}");
        assert!(
            msg.starts_with(&format!("layer 0 (git {}): ", shown(&url))) && msg.contains(expect),
            "{secret_name}: {msg}"
        );
        assert_no_key(&msg, &private);

        let root = t.path().join(format!("root-{secret_name}"));
        let e = apply_one(&layer, &commit, &root, &creds).await.unwrap_err();
        assert!(matches!(e, Error::Credentials { layer: 0, .. }) && e.to_string().contains(expect), "{e}");
        assert!(!root.join("current").exists());
    }
    // The refusal happened before authentication: the server never saw the client's key.
    assert!(!server.log().contains("Accepted publickey"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_host_key_kinds_and_partial_known_hosts() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init(t.path(), "game");
    repo.write("a.txt", "a");
    let commit = repo.commit("one");
    let keys = t.path().join("keys");
    let (private, public) = ssh_keygen(&keys, "client", "ed25519", &[]);
    let secrets = t.path().join("secrets");
    let creds = Arc::new(DirCredentials::new(&secrets));
    // (server host key kinds, the only kind known_hosts lists (None: all), the error expected).
    let cases: [(&[&str], Option<&str>, Option<&str>); 6] = [
        (&["ed25519"], None, None),
        (&["ecdsa"], None, None),
        (&["rsa"], None, None),
        // A server with every kind: libssh2 takes its ed25519 key whatever known_hosts lists.
        (&["rsa", "ecdsa", "ed25519"], Some("ssh-ed25519"), None),
        (
            &["rsa", "ecdsa", "ed25519"],
            Some("ecdsa-sha2-nistp256"),
            Some(
                "known_hosts lists only ecdsa-sha2-nistp256 for [127.0.0.1]:PORT but the server offered its ssh-ed25519 host key; add that key (ssh-keyscan lists every kind) to the Secret's `known_hosts`",
            ),
        ),
        (&["rsa", "ecdsa", "ed25519"], Some("ssh-rsa"), Some("known_hosts lists only ssh-rsa for")),
    ];
    for (i, (kinds, only, expect)) in cases.into_iter().enumerate() {
        let server = sshd(&t.path().join(format!("sshd{i}")), kinds, &[&public]);
        let known: String = server
            .known_hosts
            .lines()
            .filter(|l| only.is_none_or(|o| l.split_whitespace().nth(1) == Some(o)))
            .map(|l| format!("{l}\n"))
            .collect();
        let name = format!("s{i}");
        secret(&secrets, &name, &[("identity", private.as_str()), ("known_hosts", known.as_str())]);
        let layer = ssh_layer(&server.url(&repo.dir), &name, None);
        let got = resolve_with(std::slice::from_ref(&layer), creds.as_ref(), &quick()).await;
        match expect {
            None => assert_eq!(got.unwrap_or_else(|e| panic!("{kinds:?} {only:?}: {e}"))[0].revision, commit),
            Some(m) => {
                let e = got.unwrap_err();
                let m = m.replace("PORT", &server.port.to_string());
                assert!(
                    matches!(e, Error::Credentials { .. }) && e.to_string().contains(&m),
                    "{kinds:?} {only:?}: {e}"
                );
            }
        }
    }
}
