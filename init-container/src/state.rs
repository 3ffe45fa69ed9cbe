//! The state file beside the trees: what `current` holds, written atomically. Its shape is the
//! API's ([`gamezone_api::artifacts`]): the SDK sidecar reads it.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

pub use gamezone_api::artifacts::{EditsState, LayerSummary, STATE_FILE, State, read};

use crate::{Error, Result};

/// Writes the state file: temp file, fsync, rename, fsync the directory.
pub(crate) fn write(root: &Path, state: &State) -> Result<()> {
    write_json(root, STATE_FILE, state)
}

/// Writes `root/name` as JSON atomically: temp file, fsync, rename, fsync the directory.
pub(crate) fn write_json(root: &Path, name: &str, value: &impl Serialize) -> Result<()> {
    let path = root.join(name);
    let tmp = root.join(format!("{name}.tmp-{}", fastrand::u32(..)));
    let body = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::destination(&path, format!("encode {name}"), std::io::Error::other(e)))?;
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(root)?.sync_all()
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(Error::destination(&path, format!("write {name}"), e));
    }
    Ok(())
}
