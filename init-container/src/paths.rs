//! Path rules shared by every source: only plain relative paths, never `..`, links that stay inside.

/// Splits a relative path into its plain components. Empty and `.` components are dropped
/// (tar entries often start with `./`); absolute paths, `..` and NUL are rejected.
pub(crate) fn components(path: &str) -> Result<Vec<&str>, String> {
    if path.starts_with('/') {
        return Err(format!("`{path}` is absolute; use a path relative to the root"));
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("`{path}` contains `..`; paths must stay inside")),
            c if c.contains('\0') => return Err(format!("`{}` contains NUL", path.escape_debug())),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Like [`components`], but also rejects empty and `.` segments: an S3 key `a//b` or `a/./b` is
/// ambiguous on a file system, so it is refused rather than guessed.
pub(crate) fn strict_components(key: &str) -> Result<Vec<&str>, String> {
    if key.starts_with('/') {
        return Err(format!("key `{key}` is absolute"));
    }
    let trimmed = key.strip_suffix('/').unwrap_or(key);
    let mut out = Vec::new();
    for c in trimmed.split('/') {
        match c {
            "" | "." | ".." => {
                return Err(format!("key `{key}` has an empty, `.` or `..` segment"));
            }
            c if c.contains('\0') => {
                return Err(format!("key `{}` contains NUL", key.escape_debug()));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Joins components with `/`.
pub(crate) fn join(parts: &[&str]) -> String {
    parts.join("/")
}

/// Joins two relative paths given as strings (either may be empty).
pub(crate) fn join2(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}/{b}"),
    }
}

/// Checks that a symlink at `link` (path inside the tree) pointing to `target` stays inside the
/// tree. Only relative targets of the form `../../a/b` are accepted: leading `..`s that do not climb
/// above the root, then plain names. A `..` after a name is refused because the name may itself be a
/// link, which makes the lexical answer wrong.
pub(crate) fn check_link_target(link: &str, target: &str) -> Result<(), String> {
    if target.is_empty() {
        return Err(format!("symlink `{link}` has an empty target"));
    }
    if target.starts_with('/') {
        return Err(format!("symlink `{link}` -> `{target}` is absolute"));
    }
    let depth = link.split('/').filter(|c| !c.is_empty()).count().saturating_sub(1);
    let mut ups = 0usize;
    let mut seen_name = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if seen_name => {
                return Err(format!("symlink `{link}` -> `{target}` has `..` after a name"));
            }
            ".." => ups += 1,
            c if c.contains('\0') => return Err(format!("symlink `{link}` target contains NUL")),
            _ => seen_name = true,
        }
    }
    if ups > depth {
        return Err(format!("symlink `{link}` -> `{target}` points outside the tree"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_accept_plain_and_dot_paths() {
        assert_eq!(components("a/b/c").unwrap(), ["a", "b", "c"]);
        assert_eq!(components("./a//b/").unwrap(), ["a", "b"]);
        assert!(components("").unwrap().is_empty());
    }

    #[test]
    fn components_reject_escapes() {
        assert!(components("/etc/passwd").unwrap_err().contains("absolute"));
        assert!(components("a/../../b").unwrap_err().contains(".."));
        assert!(components("..").is_err());
        assert!(components("a/\0b").is_err());
    }

    #[test]
    fn strict_components_reject_ambiguous_keys() {
        assert_eq!(strict_components("a/b").unwrap(), ["a", "b"]);
        assert_eq!(strict_components("a/b/").unwrap(), ["a", "b"]);
        for bad in ["/a", "a//b", "a/./b", "a/../b", "../a", ""] {
            assert!(strict_components(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn link_targets_must_stay_inside() {
        assert!(check_link_target("a/b/link", "../x").is_ok());
        assert!(check_link_target("a/b/link", "../../x").is_ok());
        assert!(check_link_target("link", "x/y").is_ok());
        assert!(check_link_target("a/link", "../../x").is_err());
        assert!(check_link_target("link", "../x").is_err());
        assert!(check_link_target("link", "/etc/passwd").is_err());
        assert!(check_link_target("a/link", "b/../../x").is_err());
        assert!(check_link_target("link", "").is_err());
    }

    #[test]
    fn join2_handles_empty_sides() {
        assert_eq!(join2("", "b"), "b");
        assert_eq!(join2("a", ""), "a");
        assert_eq!(join2("a", "b"), "a/b");
    }
}
