//! The zone's artifacts as gamezone-init leaves them, and the config file read from them.
//!
//! gamezone-init builds each tree under `<root>/.trees/<id>`, points the symlink `<root>/current`
//! at it (a new link renamed over the old one) and then writes `<root>/.gamezone-state.json` with
//! the pinned revisions and the tree digest. The artifacts directory given to this server is
//! either that root (then the tree is `current`, and a later swap is seen) or the tree itself
//! (how the operator mounts it today: `subPath: current`, which pins the tree the pod started
//! with and hides the state file unless its path is given).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The symlink gamezone-init swaps.
pub const CURRENT: &str = "current";
/// gamezone-init's state file in the volume root.
pub const STATE_FILE: &str = ".gamezone-state.json";
/// Config files larger than this are refused rather than read into memory.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A layer as gamezone-init records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    /// Destination path inside the tree.
    #[serde(default)]
    pub path: String,
    /// Source kind and location.
    #[serde(default)]
    pub source: String,
}

/// What gamezone-init recorded about the live tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The layers, in order.
    #[serde(default)]
    pub layers: Vec<Layer>,
    /// The pinned revision of each layer.
    pub revisions: Vec<String>,
    /// Directory name of the tree under `.trees/`.
    pub tree: String,
    /// sha256 over the tree's sorted `path mode size sha256` lines.
    pub tree_digest: String,
    /// When the tree was swapped in.
    #[serde(default)]
    pub applied_at: String,
}

/// Where to find the tree, the state and the config file.
#[derive(Clone, Debug)]
pub struct Artifacts {
    dir: PathBuf,
    state: Option<PathBuf>,
    config: String,
}

/// One reading of the artifacts: compared with the last to notice a swap or an edit.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The artifacts directory as given.
    pub dir: PathBuf,
    /// Target of `current` (`.trees/<id>`), when the directory is gamezone-init's root.
    pub current: Option<String>,
    /// The recorded state, or why there is none.
    pub state: Result<State, String>,
    /// The config file as shown to clients.
    pub config_path: String,
    /// Its parsed content, or why it could not be read.
    pub config: Result<Value, String>,
}

impl Artifacts {
    /// `dir`: the volume root or the tree; `state`: the state file when not `<dir>/.gamezone-state.json`;
    /// `config`: the config file, relative to the tree or absolute.
    pub fn new(dir: PathBuf, state: Option<PathBuf>, config: String) -> Self {
        Artifacts { dir, state, config }
    }

    /// Reads everything afresh (small files only; the tree is not walked).
    pub fn read(&self) -> Snapshot {
        let link = self.dir.join(CURRENT);
        let current = std::fs::symlink_metadata(&link)
            .is_ok_and(|m| m.file_type().is_symlink())
            .then(|| std::fs::read_link(&link).ok().map(|t| t.to_string_lossy().into_owned()))
            .flatten();
        let tree = if current.is_some() { link } else { self.dir.clone() };
        let state = match (&self.state, &current) {
            (Some(path), _) => read_state(path),
            (None, Some(_)) => read_state(&self.dir.join(STATE_FILE)),
            (None, None) => Err(format!(
                "{} has no `{CURRENT}`, so it is the tree itself (mounted with subPath) and gamezone-init's \
                 state file is not visible; set GAMEZONE_ARTIFACTS_STATE to the state file, or point \
                 GAMEZONE_ARTIFACTS_DIR at the volume root",
                self.dir.display()
            )),
        };
        // gamezone-init writes the state just after the swap: between the two it still describes
        // the old tree.
        let state = match (state, &current) {
            (Ok(s), Some(c)) if Path::new(c) != Path::new(".trees").join(&s.tree) => Err(format!(
                "gamezone-init state describes tree {} but `{CURRENT}` points at {c}; a swap is in progress",
                s.tree
            )),
            (state, _) => state,
        };
        let config_file =
            if Path::new(&self.config).is_absolute() { PathBuf::from(&self.config) } else { tree.join(&self.config) };
        Snapshot {
            dir: self.dir.clone(),
            current,
            state,
            config_path: self.config.clone(),
            config: read_config(&config_file),
        }
    }
}

fn read_state(path: &Path) -> Result<State, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read gamezone-init state {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("gamezone-init state {} is not valid: {e}", path.display()))
}

fn read_config(path: &Path) -> Result<Value, String> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{} not found in the artifacts", path.display()),
        _ => format!("cannot open {}: {e}", path.display()),
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!("{} is larger than {MAX_CONFIG_BYTES} bytes", path.display()));
    }
    parse_config(&path.to_string_lossy(), &bytes)
}

/// Parses a config file by its extension: `.ini`, `.cfg`, `.conf` as INI, anything else as JSON.
pub fn parse_config(name: &str, bytes: &[u8]) -> Result<Value, String> {
    let ini = [".ini", ".cfg", ".conf"].iter().any(|ext| name.ends_with(ext));
    if ini {
        let text = std::str::from_utf8(bytes).map_err(|_| format!("{name} is not UTF-8"))?;
        parse_ini(text).map_err(|e| format!("{name}: {e}"))
    } else {
        serde_json::from_slice(bytes).map_err(|e| format!("{name} is not valid JSON: {e}"))
    }
}

/// INI as a JSON object: keys before any section at the top, `[section]` keys in a nested object.
/// `;` and `#` start comment lines; values may be wrapped in double quotes.
pub fn parse_ini(text: &str) -> Result<Value, String> {
    let mut root = Map::new();
    let mut section: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name.strip_suffix(']').ok_or_else(|| format!("line {}: `{line}` lacks its `]`", n + 1))?;
            let name = name.trim().to_owned();
            if !root.entry(name.clone()).or_insert_with(|| Value::Object(Map::new())).is_object() {
                return Err(format!("line {}: section [{name}] is also a key above it", n + 1));
            }
            section = Some(name);
            continue;
        }
        let (key, value) =
            line.split_once('=').ok_or_else(|| format!("line {}: `{line}` is not `key = value`", n + 1))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("line {}: empty key", n + 1));
        }
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        let target = match &section {
            // The header made it an object.
            Some(s) => root.get_mut(s).and_then(Value::as_object_mut).expect("section is an object"),
            None => &mut root,
        };
        target.insert(key.to_owned(), Value::String(value.to_owned()));
    }
    Ok(Value::Object(root))
}

impl Snapshot {
    /// The `artifacts` object of a hello answer.
    pub fn artifacts_json(&self) -> Value {
        let mut out = json!({"dir": self.dir.display().to_string()});
        if let Some(c) = &self.current {
            out["current"] = json!(c);
        }
        match &self.state {
            Ok(s) => {
                out["revisions"] = json!(s.revisions);
                out["treeDigest"] = json!(s.tree_digest);
                out["tree"] = json!(s.tree);
                out["appliedAt"] = json!(s.applied_at);
                out["layers"] = json!(s.layers);
            }
            Err(e) => out["stateError"] = json!(e),
        }
        out
    }

    /// The `config` object of a hello answer.
    pub fn config_json(&self) -> Value {
        match &self.config {
            Ok(v) => json!({"path": self.config_path, "value": v}),
            Err(e) => json!({"path": self.config_path, "error": e}),
        }
    }

    /// A short description of the tree, for logs.
    pub fn tree_label(&self) -> String {
        match (&self.current, &self.state) {
            (Some(c), Ok(s)) => format!("{c} ({})", s.tree_digest),
            (Some(c), Err(_)) => c.clone(),
            (None, Ok(s)) => s.tree_digest.clone(),
            (None, Err(_)) => self.dir.display().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_comments_and_quotes() {
        let v = parse_ini("motd = hi\n; comment\n# also\n[match]\nsize = 8\nname = \"a b\"\n\n[empty]\n").unwrap();
        assert_eq!(v, json!({"motd": "hi", "match": {"size": "8", "name": "a b"}, "empty": {}}));
    }

    #[test]
    fn ini_errors_name_the_line() {
        assert_eq!(parse_ini("a = 1\nnot a pair").unwrap_err(), "line 2: `not a pair` is not `key = value`");
        assert_eq!(parse_ini("[open").unwrap_err(), "line 1: `[open` lacks its `]`");
        assert_eq!(parse_ini(" = 1").unwrap_err(), "line 1: empty key");
        assert_eq!(parse_ini("s = 1\n[s]\n").unwrap_err(), "line 2: section [s] is also a key above it");
    }

    #[test]
    fn config_format_follows_the_extension() {
        assert_eq!(parse_config("config/game.ini", b"x = 1").unwrap(), json!({"x": "1"}));
        assert_eq!(parse_config("config/server.json", br#"{"x": 1}"#).unwrap(), json!({"x": 1}));
        assert!(parse_config("config/server.json", b"x = 1").unwrap_err().contains("is not valid JSON"));
    }

    #[test]
    fn state_file_as_gamezone_init_writes_it() {
        let text = r#"{"layers":[{"path":"","source":"local /src"},{"path":"config","subPath":"config",
          "source":"git https://h/r.git","reference":"main"}],"revisions":["sha256:aa","0123"],
          "tree":"aaaaaaaaaaaa-0000abcd","treeDigest":"sha256:bb","files":3,"bytes":10,
          "appliedAt":"2026-12-01T00:00:00Z"}"#;
        let s: State = serde_json::from_str(text).unwrap();
        assert_eq!(s.revisions, ["sha256:aa", "0123"]);
        assert_eq!(s.tree_digest, "sha256:bb");
        assert_eq!(s.layers[1], Layer { path: "config".into(), source: "git https://h/r.git".into() });
    }
}
