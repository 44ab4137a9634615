//! Every committed seed of this crate's fuzz targets (`fuzz/seeds/<target>/`) through the
//! same entry points the targets call, so the entry points and their checks cannot rot.
//! Seeds named `valid-*` must be accepted.

use std::path::{Path, PathBuf};

use super::flood::udp_flood;
use super::uapi::uapi_request;

/// The seed files of `target`, sorted by name (at least one).
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading the seeds {}: {e}", dir.display()));
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|e| {
            let path = e.expect("directory entry").path();
            let data =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            (path, data)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
}

fn is_valid_seed(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("valid-"))
}

#[test]
fn uapi_request_seeds() {
    for (path, data) in seeds("uapi_request") {
        let accepted = uapi_request(&data);
        if is_valid_seed(&path) {
            assert!(accepted, "{} was refused", path.display());
        }
    }
}

#[test]
fn udp_flood_seeds() {
    for (_, data) in seeds("udp_flood") {
        udp_flood(&data);
    }
}
