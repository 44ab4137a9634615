//! The committed seeds of a fuzz target (`fuzz/seeds/<target>/`), replayed by the owning
//! crate's `cargo test` through the same entry point the fuzzer drives, so neither rots.

use std::path::Path;

/// Feeds every seed of `target` to `check` (which returns whether the input was accepted);
/// `valid-*` seeds must be accepted. `manifest_dir` is the calling crate's
/// `env!("CARGO_MANIFEST_DIR")` (the seeds sit beside it, in `../fuzz/seeds`). Panics when the
/// directory holds no seed: a replay of nothing never passes.
pub fn replay(manifest_dir: &str, target: &str, check: impl Fn(&[u8]) -> bool) {
    let dir = Path::new(manifest_dir).join("../fuzz/seeds").join(target);
    let mut seen = 0;
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading the seeds {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let data = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("reading the seed {}: {e}", path.display()));
        let accepted = check(&data);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("valid-") {
            assert!(accepted, "{target}/{name} was refused");
        }
        seen += 1;
    }
    assert!(seen > 0, "no seeds in {}", dir.display());
}
