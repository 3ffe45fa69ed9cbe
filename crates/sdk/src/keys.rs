//! Keys and values the process sets through the SDK, checked against Kubernetes' rules before
//! anything is written, so a bad call fails at once and names what was wrong.

/// Prefix of every label and annotation key set through the SDK (Agones uses `agones.dev/sdk-`).
pub const PREFIX: &str = "gamezone.dev/sdk-";

/// Largest annotation value accepted (the API server caps all annotations at 256 KiB).
const MAX_ANNOTATION_VALUE: usize = 64 * 1024;

/// A key or value the SDK refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key cannot become a label or annotation name.
    #[error(
        "key {key:?}: {why}; use 1-{max} characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit (it is stored as {PREFIX}<key>)",
        max = 63 - "sdk-".len()
    )]
    Key {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The value cannot be a label value.
    #[error(
        "label {key:?}: value {value:?} {why}; use at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit, or nothing"
    )]
    LabelValue {
        /// The key the value was for.
        key: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An annotation value too large.
    #[error("annotation {key:?}: value of {len} bytes is over the {MAX_ANNOTATION_VALUE} accepted")]
    AnnotationValue {
        /// The key the value was for.
        key: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A condition type that cannot be a Kubernetes condition type.
    #[error(
        "condition {key:?}: {why}; use a name like `carrier.ocgi.dev/has-no-player` (an optional DNS prefix and '/', then up to 63 letters, digits, '-', '_', '.')"
    )]
    ConditionType {
        /// The type as given.
        key: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A condition type that is none of the server's gates: the API server would refuse it.
    #[error(
        "condition {key:?} is none of this server's gates ({gates}); the SDK sets only the conditions named in its service type's readinessGates and deletableGates"
    )]
    NotAGate {
        /// The type as given.
        key: String,
        /// The server's gates, comma-separated, or "none".
        gates: String,
    },
    /// A condition status other than True, False, Unknown.
    #[error("condition {key:?}: status {value:?} must be True, False or Unknown")]
    ConditionStatus {
        /// The condition type.
        key: String,
        /// The status as given.
        value: String,
    },
}

/// Checks `name` against the rule for the name part of a label key (and label values):
/// alphanumeric at both ends, `-_.` inside, at most `max` characters.
fn name_problem(name: &str, max: usize) -> Option<&'static str> {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Some("is empty");
    }
    if bytes.len() > max {
        return Some("is too long");
    }
    if !bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Some("has a character other than letters, digits, '-', '_' and '.'");
    }
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Some("does not start and end with a letter or digit");
    }
    None
}

/// The stored key for `key`: `gamezone.dev/sdk-<key>`, or why it cannot be one.
pub fn prefixed(key: &str) -> Result<String, KeyError> {
    if key.contains('/') {
        return Err(KeyError::Key { key: key.into(), why: "has a '/' (the prefix is added for you)" });
    }
    match name_problem(key, 63 - "sdk-".len()) {
        Some(why) => Err(KeyError::Key { key: key.into(), why }),
        None => Ok(format!("{PREFIX}{key}")),
    }
}

/// Checks a label value.
pub fn label_value(key: &str, value: &str) -> Result<(), KeyError> {
    if value.is_empty() {
        return Ok(());
    }
    match name_problem(value, 63) {
        Some(why) => Err(KeyError::LabelValue { key: key.into(), value: value.into(), why }),
        None => Ok(()),
    }
}

/// Checks an annotation value.
pub fn annotation_value(key: &str, value: &str) -> Result<(), KeyError> {
    if value.len() > MAX_ANNOTATION_VALUE {
        return Err(KeyError::AnnotationValue { key: key.into(), len: value.len() });
    }
    Ok(())
}

/// Checks a condition type (a qualified name, as label keys are) and its status.
pub fn condition(type_: &str, status: &str) -> Result<(), KeyError> {
    let err = |why| KeyError::ConditionType { key: type_.into(), why };
    let name = match type_.split_once('/') {
        Some((prefix, name)) => {
            let dns_ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|part| {
                    !part.is_empty()
                        && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && !part.starts_with('-')
                        && !part.ends_with('-')
                });
            if !dns_ok {
                return Err(err("has a prefix that is not a lowercase DNS name"));
            }
            name
        }
        None => type_,
    };
    if let Some(why) = name_problem(name, 63) {
        return Err(err(why));
    }
    if !matches!(status, "True" | "False" | "Unknown") {
        return Err(KeyError::ConditionStatus { key: type_.into(), value: status.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_get_the_prefix_and_bad_ones_are_refused_by_name() {
        assert_eq!(prefixed("players").unwrap(), "gamezone.dev/sdk-players");
        assert_eq!(prefixed("a.b_c-9").unwrap(), "gamezone.dev/sdk-a.b_c-9");
        assert_eq!(prefixed(&"k".repeat(59)).unwrap().len(), PREFIX.len() + 59);
        for bad in ["", "-x", "x-", "a b", "ünï", "a/b", &"k".repeat(60)] {
            let e = prefixed(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("key {bad:?}: ")), "{e}");
        }
    }

    #[test]
    fn label_values_follow_kubernetes_rules_and_annotations_take_anything_reasonable() {
        assert!(label_value("k", "").is_ok());
        assert!(label_value("k", "v1.2_3").is_ok());
        let e = label_value("mode", "two words").unwrap_err().to_string();
        assert!(e.contains("label \"mode\"") && e.contains("\"two words\""), "{e}");
        assert!(label_value("k", &"v".repeat(64)).is_err());
        assert!(annotation_value("k", "any text: {\"json\": true}\n").is_ok());
        assert!(annotation_value("k", &"x".repeat(MAX_ANNOTATION_VALUE + 1)).is_err());
    }

    #[test]
    fn conditions_take_qualified_types_and_kubernetes_statuses() {
        assert!(condition("carrier.ocgi.dev/has-no-player", "True").is_ok());
        assert!(condition("server-ready", "False").is_ok());
        assert!(condition("Bad.Prefix/x", "True").is_err());
        assert!(condition("/x", "True").is_err());
        let e = condition("ready", "yes").unwrap_err().to_string();
        assert!(e.contains("True, False or Unknown"), "{e}");
    }
}
