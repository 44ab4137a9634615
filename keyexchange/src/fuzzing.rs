//! Entry point of the `record_json` cargo-fuzz target (`fuzz/`, see `docs/fuzzing.md`): a
//! node record's JSON as the directory registry reads it. This crate's tests feed every
//! committed seed through it.

use crate::record::NodeRecord;

/// Parses `data` as a record (UTF-8 JSON), asserting (panicking otherwise):
///
/// - an accepted record validates, and its JSON ([`NodeRecord::to_json`]) reads back as the
///   same record, with or without the registry's expected name;
/// - a record accepted without an expected name is refused under any other name, on the
///   `name` field;
/// - a refusal names the record (or the expected name), the field at fault and why.
///
/// Returns whether the record was accepted.
pub fn record_json(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    match NodeRecord::from_json("", text) {
        Ok(record) => {
            record
                .validate()
                .unwrap_or_else(|e| panic!("an accepted record does not validate: {e}"));
            let json = record.to_json();
            for hint in ["", record.name.as_str()] {
                assert_eq!(
                    NodeRecord::from_json(hint, &json).as_ref(),
                    Ok(&record),
                    "the record does not round-trip through {json}"
                );
            }
            assert_eq!(
                NodeRecord::from_json(&record.name, text).as_ref(),
                Ok(&record)
            );
            let other = format!("{}x", record.name);
            let err = NodeRecord::from_json(&other, text).expect_err("accepted under another name");
            assert_eq!(err.field, "name", "{err}");
            true
        }
        Err(err) => {
            assert!(!err.field.is_empty() && !err.reason.is_empty(), "{err:?}");
            assert!(err.to_string().contains(err.field), "{err}");
            // With an expected name the same document is refused too.
            assert!(NodeRecord::from_json("n1", text).is_err());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every committed seed of `fuzz/seeds/record_json` through the fuzz target's entry point;
    /// `valid-*` seeds must be accepted.
    #[test]
    fn record_json_seeds() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/record_json");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("the seed directory") {
            let path = entry.expect("a directory entry").path();
            let data = std::fs::read(&path).expect("a seed");
            let accepted = record_json(&data);
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with("valid-") {
                assert!(accepted, "{name} was refused");
            }
            seen += 1;
        }
        assert!(seen > 0, "no seeds in {}", dir.display());
    }
}
