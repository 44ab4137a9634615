//! The writer's side of the directory registry: a record is published by an atomic write
//! (temporary dotfile in the same directory, `fsync`, rename, `fsync` of the directory),
//! skipped when the file already holds identical bytes; withdrawn by removing its file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use keyexchange::record::NodeRecord;

use super::{read_record_file, RecordFileError, RegistryError};

/// Per-process counter so concurrent publishes in one process never share a temp file.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(super) fn publish_blocking(dir: &Path, record: &NodeRecord) -> Result<(), RegistryError> {
    let path = dir.join(format!("{}.json", record.name));
    let mut content = record.to_json();
    content.push('\n');
    match read_record_file(&path) {
        Ok(existing) if existing == content.as_bytes() => {
            tracing::debug!(path = %path.display(), "record unchanged; not rewriting");
            return Ok(());
        }
        Ok(_) | Err(RecordFileError::NotFound) => {}
        // Whatever else sits at our name (a symlink, a FIFO, a huge file) is replaced by
        // the rename below.
        Err(RecordFileError::Io(source)) => return Err(RegistryError::Read { path, source }),
        Err(other) => {
            tracing::warn!(path = %path.display(), error = %other, "replacing our record file")
        }
    }
    let tmp = dir.join(format!(
        ".{}.json.tmp-{}-{}",
        record.name,
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    write_atomically(&tmp, &path, content.as_bytes())?;
    sync_dir(dir)?;
    tracing::info!(path = %path.display(), node = %record.name, "published node record");
    Ok(())
}

/// Writes `content` to `tmp` (a stale `tmp` removed first), syncs it and renames it over
/// `path`; `tmp` is removed again when any step fails. The directory itself is not synced.
pub(crate) fn write_atomically(
    tmp: &Path,
    path: &Path,
    content: &[u8],
) -> Result<(), RegistryError> {
    let write_err = |source: io::Error| RegistryError::Write {
        path: tmp.to_path_buf(),
        source,
    };
    let result = (|| {
        match fs::remove_file(tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(e)),
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(tmp)
            .map_err(write_err)?;
        file.write_all(content).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        drop(file);
        fs::rename(tmp, path).map_err(|source| RegistryError::Write {
            path: path.to_path_buf(),
            source,
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

pub(super) fn withdraw_blocking(dir: &Path, name: &str) -> Result<(), RegistryError> {
    let path = dir.join(format!("{name}.json"));
    match fs::remove_file(&path) {
        Ok(()) => {
            sync_dir(dir)?;
            tracing::info!(path = %path.display(), node = name, "withdrew node record");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RegistryError::Write { path, source }),
    }
}

fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| RegistryError::Write {
            path: dir.to_path_buf(),
            source,
        })
}
