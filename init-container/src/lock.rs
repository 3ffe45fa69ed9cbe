//! One run at a time per destination: an exclusive `flock` on `<root>/.gamezone.lock`.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use fs4::fs_std::FileExt;

use crate::{Error, Result};

/// Name of the lock file in the destination root.
pub const LOCK_FILE: &str = ".gamezone.lock";

/// Held while a run works on a destination; released when dropped (the file is closed).
#[derive(Debug)]
pub(crate) struct RootLock {
    _file: File,
}

/// Waits for the exclusive lock on `root`.
pub(crate) async fn acquire(root: &Path) -> Result<RootLock> {
    let path = root.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::destination(&path, "open lock file", e))?;
    let mut logged = false;
    loop {
        match FileExt::try_lock_exclusive(&file) {
            Ok(true) => return Ok(RootLock { _file: file }),
            Ok(false) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Error::destination(&path, "lock", e)),
        }
        if !logged {
            tracing::info!(lock = %path.display(), "another run holds the destination; waiting");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
