//! The Samba configuration of an edits share: one directory shared read-write to one user, with
//! links neither followed nor creatable, so testers can only put plain files and directories.
//! The tests start Debian's smbd with it; a zone's Samba pod can use the same text.

use std::path::PathBuf;

use crate::{Error, Result};

/// One edits share served by one smbd.
#[derive(Clone, Debug)]
pub struct SmbShare {
    /// Share name (`//host/<name>`).
    pub name: String,
    /// The directory shared (the edits directory).
    pub path: PathBuf,
    /// TCP port smbd listens on (445 in a pod).
    pub port: u16,
    /// Address or interface to bind (`127.0.0.1` in tests; empty: all).
    pub listen: String,
    /// Directory for smbd's own state: passdb, locks, caches, pid, log. Not inside `path`.
    pub state_dir: PathBuf,
    /// Name testers log in with.
    pub user: String,
    /// The Unix account that name maps to (it must exist; files are created as it).
    pub unix_user: String,
}

fn checked<'a>(what: &str, v: &'a str) -> Result<&'a str> {
    if v.is_empty() || v.chars().any(|c| c.is_control() || c == '=' || c == '[' || c == ']') {
        return Err(Error::Plan(format!(
            "smb.conf: {what} `{}` is empty or has control characters, `=`, `[` or `]`; use a plain name or path",
            v.escape_debug()
        )));
    }
    Ok(v)
}

/// The `smb.conf` text for `share` and the content of its username map file
/// (`<state_dir>/usermap`), which maps [`SmbShare::user`] to [`SmbShare::unix_user`].
/// The password is set apart: `printf 'PW\nPW\n' | smbpasswd -c smb.conf -a -s <unix_user>`.
pub fn smb_conf(share: &SmbShare) -> Result<(String, String)> {
    let name = checked("share name", &share.name)?;
    let path = share.path.to_str().ok_or_else(|| Error::Plan("smb.conf: the share path is not UTF-8".into()))?;
    let path = checked("share path", path)?;
    let state = share.state_dir.to_str().ok_or_else(|| Error::Plan("smb.conf: the state dir is not UTF-8".into()))?;
    let state = checked("state dir", state)?;
    let user = checked("user", &share.user)?;
    let unix_user = checked("unix user", &share.unix_user)?;
    let listen = if share.listen.is_empty() {
        String::new()
    } else {
        format!("  interfaces = {}\n  bind interfaces only = yes\n", checked("listen address", &share.listen)?)
    };
    let conf = format!(
        "# Edits share: plain files and directories only, one user.\n\
         [global]\n\
         \x20 server role = standalone server\n\
         \x20 smb ports = {port}\n\
         {listen}\
         \x20 disable netbios = yes\n\
         \x20 server min protocol = SMB2_10\n\
         \x20 # No symlinks, devices or Unix modes from clients.\n\
         \x20 unix extensions = no\n\
         \x20 map to guest = never\n\
         \x20 # smbd wants a guest account at start even when guests are refused; an image may have no `nobody`.\n\
         \x20 guest account = {unix_user}\n\
         \x20 restrict anonymous = 2\n\
         \x20 username map = {state}/usermap\n\
         \x20 passdb backend = tdbsam:{state}/private/passdb.tdb\n\
         \x20 private dir = {state}/private\n\
         \x20 lock directory = {state}/lock\n\
         \x20 state directory = {state}/state\n\
         \x20 cache directory = {state}/cache\n\
         \x20 pid directory = {state}/run\n\
         \x20 ncalrpc dir = {state}/run/ncalrpc\n\
         \x20 log file = {state}/smbd.log\n\
         \x20 logging = file\n\
         \x20 max log size = 1000\n\
         \x20 load printers = no\n\
         \x20 printing = bsd\n\
         \x20 printcap name = /dev/null\n\
         \x20 disable spoolss = yes\n\
         [{name}]\n\
         \x20 path = {path}\n\
         \x20 read only = no\n\
         \x20 valid users = {unix_user}\n\
         \x20 # Links on the server side are neither followed nor shown.\n\
         \x20 follow symlinks = no\n\
         \x20 wide links = no\n\
         \x20 # Plain files: no xattrs needed on the volume.\n\
         \x20 store dos attributes = no\n\
         \x20 ea support = no\n\
         \x20 create mask = 0644\n\
         \x20 force create mode = 0644\n\
         \x20 directory mask = 0755\n\
         \x20 force directory mode = 0755\n\
         \x20 # Desktop litter is not game content.\n\
         \x20 veto files = /.DS_Store/._*/Thumbs.db/desktop.ini/\n\
         \x20 delete veto files = yes\n",
        port = share.port,
    );
    Ok((conf, format!("{unix_user} = {user}\n")))
}

/// Directories [`smb_conf`] names below the state dir; they must exist before smbd starts.
pub const STATE_SUBDIRS: [&str; 5] = ["private", "lock", "state", "cache", "run"];

#[cfg(test)]
mod tests {
    use super::*;

    fn share() -> SmbShare {
        SmbShare {
            name: "edits".into(),
            path: "/srv/edits".into(),
            port: 4455,
            listen: "127.0.0.1".into(),
            state_dir: "/var/lib/gz-smb".into(),
            user: "tester".into(),
            unix_user: "root".into(),
        }
    }

    #[test]
    fn conf_shares_one_dir_without_links() {
        let (conf, map) = smb_conf(&share()).unwrap();
        for line in [
            "smb ports = 4455",
            "interfaces = 127.0.0.1",
            "unix extensions = no",
            "[edits]",
            "path = /srv/edits",
            "follow symlinks = no",
            "wide links = no",
            "valid users = root",
            "passdb backend = tdbsam:/var/lib/gz-smb/private/passdb.tdb",
        ] {
            assert!(conf.lines().any(|l| l.trim() == line), "missing `{line}` in\n{conf}");
        }
        assert_eq!(map, "root = tester\n");
    }

    #[test]
    fn values_cannot_inject_lines() {
        let mut s = share();
        s.path = "/srv/x\n[root]\npath = /".into();
        assert!(smb_conf(&s).unwrap_err().to_string().contains("share path"));
        let mut s = share();
        s.user = "a = b".into();
        assert!(smb_conf(&s).is_err());
    }
}
