//! Label syntax and `kubectl label` semantics, pure: which keys and values are valid, how
//! `k=v` / `k-` arguments parse, and what a set of changes does to an object's labels
//! (changing an existing key's value needs `--overwrite`; removing an absent key is a no-op).

use std::collections::BTreeMap;

/// Errors in labels and label arguments.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    /// A label key that Kubernetes would refuse.
    #[error("label key {key:?} is invalid: {problem}")]
    InvalidKey {
        /// The key.
        key: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A label value that Kubernetes would refuse.
    #[error("label value {value:?} of {key:?} is invalid: {problem}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// An argument that is neither `k=v` nor `k-`.
    #[error("{arg:?}: expected KEY=VALUE or KEY- (to remove KEY)")]
    BadArgument {
        /// The argument.
        arg: String,
    },
    /// The same key twice in one command.
    #[error("label {key:?} is given more than once")]
    Repeated {
        /// The key.
        key: String,
    },
    /// Changing an existing key's value without `--overwrite`.
    #[error("label {key:?} already has a value ({old:?}), and --overwrite is false")]
    NeedsOverwrite {
        /// The key.
        key: String,
        /// Its current value.
        old: String,
    },
    /// A label the system maintains (`kubernetes.io/metadata.name` on a Namespace).
    #[error(
        "label {key:?} is set by the API server to {value:?} and cannot be changed or removed"
    )]
    Protected {
        /// The key.
        key: String,
        /// The value it must keep.
        value: String,
    },
}

/// One change of `meshctl lab label`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    /// `k=v`.
    Set(String, String),
    /// `k-`.
    Remove(String),
}

impl LabelChange {
    fn key(&self) -> &str {
        match self {
            LabelChange::Set(k, _) | LabelChange::Remove(k) => k,
        }
    }
}

/// Whether `s` is `[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?`, at most 63 characters (the
/// name part of a key, and every non-empty value).
fn is_label_word(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// Whether `s` is a DNS label (RFC 1123): `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63
/// characters. Namespace and object names in the lab must be one.
pub fn is_dns_label(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || c == '-')
}

/// Whether `s` is a DNS subdomain (dot-separated DNS labels, at most 253 characters).
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Check a label key: an optional DNS-subdomain prefix and `/`, then a name.
pub fn check_key(key: &str) -> Result<(), LabelError> {
    let invalid = |problem| {
        Err(LabelError::InvalidKey {
            key: key.to_string(),
            problem,
        })
    };
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if !is_dns_subdomain(prefix) {
                return invalid("its prefix must be a DNS subdomain (lowercase, at most 253)");
            }
            name
        }
        None => key,
    };
    if !is_label_word(name) {
        return invalid(
            "its name must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric",
        );
    }
    Ok(())
}

/// Check a label value: empty, or a label word.
pub fn check_value(key: &str, value: &str) -> Result<(), LabelError> {
    if value.is_empty() || is_label_word(value) {
        Ok(())
    } else {
        Err(LabelError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            problem: "must be empty or 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric",
        })
    }
}

/// Parse `k=v` and `k-` arguments, checking keys and values; a key may appear once.
pub fn parse_changes(args: &[String]) -> Result<Vec<LabelChange>, LabelError> {
    let mut changes: Vec<LabelChange> = Vec::new();
    for arg in args {
        let change = if let Some((k, v)) = arg.split_once('=') {
            check_key(k)?;
            check_value(k, v)?;
            LabelChange::Set(k.to_string(), v.to_string())
        } else if let Some(k) = arg.strip_suffix('-') {
            if k.is_empty() {
                return Err(LabelError::BadArgument { arg: arg.clone() });
            }
            check_key(k)?;
            LabelChange::Remove(k.to_string())
        } else {
            return Err(LabelError::BadArgument { arg: arg.clone() });
        };
        if changes.iter().any(|c| c.key() == change.key()) {
            return Err(LabelError::Repeated {
                key: change.key().to_string(),
            });
        }
        changes.push(change);
    }
    Ok(changes)
}

/// The labels after `changes`, with kubectl's semantics: setting a key to its current value
/// is fine, to another value needs `overwrite`; removing an absent key changes nothing.
/// `protected` is a `(key, value)` the object must keep.
pub fn apply_changes(
    labels: &BTreeMap<String, String>,
    changes: &[LabelChange],
    overwrite: bool,
    protected: Option<(&str, &str)>,
) -> Result<BTreeMap<String, String>, LabelError> {
    let mut out = labels.clone();
    for change in changes {
        if let Some((key, value)) = protected {
            let keeps = matches!(change, LabelChange::Set(k, v) if k == key && v == value);
            if change.key() == key && !keeps {
                return Err(LabelError::Protected {
                    key: key.to_string(),
                    value: value.to_string(),
                });
            }
        }
        match change {
            LabelChange::Set(k, v) => {
                if let Some(old) = out.get(k) {
                    if old != v && !overwrite {
                        return Err(LabelError::NeedsOverwrite {
                            key: k.clone(),
                            old: old.clone(),
                        });
                    }
                }
                out.insert(k.clone(), v.clone());
            }
            LabelChange::Remove(k) => {
                out.remove(k);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn labels(a: &[(&str, &str)]) -> BTreeMap<String, String> {
        a.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keys_and_values_follow_the_api_rules() {
        for good in [
            "pod",
            "a.b_c-d",
            "example.com/x",
            "kubernetes.io/metadata.name",
            "A9",
        ] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Example.com/x",
            "/x",
            "a/",
            "a/b/c",
            &"x".repeat(64),
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_value("k", "").is_ok());
        assert!(check_value("k", "v1.2_x").is_ok());
        assert!(check_value("k", "v 1").is_err());
        assert!(check_value("k", "_v").is_err());
        assert!(is_dns_label("x") && is_dns_label("a-1"));
        for bad in ["", "A", "a_b", "a.b", "-a", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
    }

    #[test]
    fn arguments_parse_into_sets_and_removals() {
        assert_eq!(
            parse_changes(&args(&["pod=a", "x-", "empty="])).unwrap(),
            vec![
                LabelChange::Set("pod".into(), "a".into()),
                LabelChange::Remove("x".into()),
                LabelChange::Set("empty".into(), String::new()),
            ]
        );
        assert!(matches!(
            parse_changes(&args(&["pod"])),
            Err(LabelError::BadArgument { .. })
        ));
        assert!(matches!(
            parse_changes(&args(&["-"])),
            Err(LabelError::BadArgument { .. })
        ));
        assert_eq!(
            parse_changes(&args(&["a=1", "a-"])),
            Err(LabelError::Repeated { key: "a".into() })
        );
        assert!(matches!(
            parse_changes(&args(&["a=b c"])),
            Err(LabelError::InvalidValue { .. })
        ));
    }

    #[test]
    fn changing_a_value_needs_overwrite_naming_the_key() {
        let old = labels(&[("pod", "a"), ("tier", "web")]);
        let change = parse_changes(&args(&["pod=b"])).unwrap();
        let err = apply_changes(&old, &change, false, None).unwrap_err();
        assert_eq!(
            err,
            LabelError::NeedsOverwrite {
                key: "pod".into(),
                old: "a".into()
            }
        );
        assert!(err.to_string().contains("\"pod\""));
        assert_eq!(
            apply_changes(&old, &change, true, None).unwrap(),
            labels(&[("pod", "b"), ("tier", "web")])
        );
        // The same value, a new key and removals need no overwrite.
        let change = parse_changes(&args(&["pod=a", "new=1", "tier-", "absent-"])).unwrap();
        assert_eq!(
            apply_changes(&old, &change, false, None).unwrap(),
            labels(&[("new", "1"), ("pod", "a")])
        );
    }

    #[test]
    fn the_namespace_name_label_is_protected() {
        let key = "kubernetes.io/metadata.name";
        let old = labels(&[(key, "x")]);
        let protected = Some((key, "x"));
        for arg in [
            "kubernetes.io/metadata.name-",
            "kubernetes.io/metadata.name=y",
        ] {
            let change = parse_changes(&args(&[arg])).unwrap();
            assert!(matches!(
                apply_changes(&old, &change, true, protected),
                Err(LabelError::Protected { .. })
            ));
        }
        let same = parse_changes(&args(&["kubernetes.io/metadata.name=x"])).unwrap();
        assert_eq!(apply_changes(&old, &same, false, protected).unwrap(), old);
    }
}
