//! Telling the game that a new tree is in `current`: a command run after each swap and/or a
//! signal sent to a process whose pid is in a file. A failing hook is logged, never fatal: the
//! swap has happened and the tree is served either way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use crate::summary::Summary;

/// What to do after each swap of `current` by `watch`.
#[derive(Clone, Debug, Default)]
pub struct SwapHook {
    /// Run with `sh -c` after each swap; sees `GAMEZONE_TREE`, `GAMEZONE_TREE_DIGEST`,
    /// `GAMEZONE_CURRENT` and `GAMEZONE_EDITS_REVISION` in its environment.
    pub exec: Option<String>,
    /// Signal sent after each swap to the pid in `pid_file`.
    pub signal: Option<Signal>,
    /// File holding the pid to signal (the game writes it; the pod shares its process namespace).
    pub pid_file: Option<PathBuf>,
    /// How long the command may run before it is killed.
    pub timeout: Duration,
}

/// Parses a signal name (`HUP`, `SIGHUP`, `USR1`, ...) as `--on-swap-signal` takes it.
pub fn parse_signal(name: &str) -> Result<Signal, String> {
    let upper = name.trim().to_ascii_uppercase();
    Ok(match upper.strip_prefix("SIG").unwrap_or(&upper) {
        "HUP" => Signal::HUP,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "TERM" => Signal::TERM,
        "WINCH" => Signal::WINCH,
        _ => return Err(format!("unknown signal `{name}`; use HUP, USR1, USR2, INT, QUIT, TERM or WINCH")),
    })
}

impl SwapHook {
    /// True when nothing is configured.
    pub fn is_empty(&self) -> bool {
        self.exec.is_none() && self.signal.is_none()
    }

    /// Runs the configured hooks for a tree just swapped in at `root/current`.
    pub async fn run(&self, root: &Path, s: &Summary) {
        if let (Some(sig), Some(file)) = (self.signal, &self.pid_file) {
            match signal_pid_file(sig, file) {
                Ok(pid) => tracing::info!(pid, signal = ?sig, "signalled the game after the swap"),
                Err(e) => {
                    tracing::warn!(pid_file = %file.display(), error = %e, "cannot signal the game after the swap")
                }
            }
        }
        if let Some(cmd) = &self.exec {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c")
                .arg(cmd)
                .env("GAMEZONE_TREE", &s.tree)
                .env("GAMEZONE_TREE_DIGEST", &s.tree_digest)
                .env("GAMEZONE_CURRENT", root.join(gamezone_api::artifacts::CURRENT))
                .env("GAMEZONE_EDITS_REVISION", s.edits_revision.as_deref().unwrap_or(""))
                .kill_on_drop(true);
            let timeout = if self.timeout.is_zero() { Duration::from_secs(60) } else { self.timeout };
            match tokio::time::timeout(timeout, c.status()).await {
                Ok(Ok(st)) if st.success() => tracing::info!(command = %cmd, "swap hook done"),
                Ok(Ok(st)) => tracing::warn!(command = %cmd, status = %st, "swap hook failed"),
                Ok(Err(e)) => tracing::warn!(command = %cmd, error = %e, "cannot run swap hook"),
                Err(_) => tracing::warn!(command = %cmd, timeout_s = timeout.as_secs(), "swap hook timed out; killed"),
            }
        }
    }
}

fn signal_pid_file(sig: Signal, file: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("read pid file: {e}"))?;
    let pid: i32 = text.trim().parse().map_err(|_| format!("pid file holds `{}`, not a pid", text.trim()))?;
    let p = Pid::from_raw(pid).filter(|_| pid > 1).ok_or_else(|| format!("pid {pid} cannot be signalled"))?;
    kill_process(p, sig).map_err(|e| format!("kill {pid}: {e}"))?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("hup").unwrap(), Signal::HUP);
        assert_eq!(parse_signal("SIGUSR1").unwrap(), Signal::USR1);
        assert!(parse_signal("KILL").unwrap_err().contains("use HUP"));
    }

    #[test]
    fn pid_files_are_checked() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("pid");
        std::fs::write(&f, "not a pid").unwrap();
        assert!(signal_pid_file(Signal::HUP, &f).unwrap_err().contains("not a pid"));
        std::fs::write(&f, "1\n").unwrap();
        assert!(signal_pid_file(Signal::HUP, &f).unwrap_err().contains("cannot be signalled"));
    }
}
