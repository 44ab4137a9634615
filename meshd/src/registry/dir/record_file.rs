//! Reading one file of the directory registry as untrusted input: a regular file only (never
//! through a symlink, never a FIFO or device, which could block or never end), and at most
//! [`MAX_RECORD_BYTES`]. Anything else is refused with a reason, which the watcher reports as
//! that node's `Malformed` record.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Largest record file read; a record is a few hundred bytes.
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// Why a record file was not read.
#[derive(Debug, thiserror::Error)]
pub enum RecordFileError {
    /// The file does not exist (any more).
    #[error("no such file")]
    NotFound,
    /// A symbolic link: records are never read through one.
    #[error("is a symbolic link; records are read from regular files only")]
    Symlink,
    /// A FIFO, socket, device or directory.
    #[error("is not a regular file ({0}); records are read from regular files only")]
    NotRegular(&'static str),
    /// Larger than the limit (bytes).
    #[error("is larger than {0} bytes; not read")]
    TooLarge(u64),
    /// Opening or reading failed.
    #[error("cannot be read")]
    Io(#[source] io::Error),
}

/// Reads a record file without following a symlink, without blocking on a FIFO or device
/// (opened non-blocking, then refused by type) and without reading more than
/// [`MAX_RECORD_BYTES`] (checked on the open file, and again while reading, in case it grows).
pub fn read_record_file(path: &Path) -> Result<Vec<u8>, RecordFileError> {
    read_untrusted_file(path, MAX_RECORD_BYTES)
}

/// Reads a file of the shared directory as [`read_record_file`] does, with `max_bytes` as the
/// limit (the registry's Kubernetes object files are larger than node records).
pub fn read_untrusted_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, RecordFileError> {
    use std::io::Read as _;
    use std::os::unix::fs::FileTypeExt as _;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            _ if e.kind() == io::ErrorKind::NotFound => RecordFileError::NotFound,
            Some(nix::libc::ELOOP) => RecordFileError::Symlink,
            _ => RecordFileError::Io(e),
        })?;
    let meta = file.metadata().map_err(RecordFileError::Io)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(RecordFileError::NotRegular(if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a file"
        }));
    }
    if meta.len() > max_bytes {
        return Err(RecordFileError::TooLarge(max_bytes));
    }
    let mut content = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max_bytes + 1)
        .read_to_end(&mut content)
        .map_err(RecordFileError::Io)?;
    if content.len() as u64 > max_bytes {
        return Err(RecordFileError::TooLarge(max_bytes));
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn regular_files_are_read_and_everything_else_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.json");
        std::fs::write(&ok, b"{}").unwrap();
        assert_eq!(read_record_file(&ok).unwrap(), b"{}");

        let fifo = dir.path().join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let started = std::time::Instant::now();
        let err = read_record_file(&fifo).unwrap_err();
        assert!(
            matches!(err, RecordFileError::NotRegular("a FIFO")),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));

        let zero = dir.path().join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(
            read_record_file(&zero),
            Err(RecordFileError::Symlink)
        ));
        // Not even a symlink to a good record.
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        assert!(matches!(
            read_record_file(&link),
            Err(RecordFileError::Symlink)
        ));

        let big = dir.path().join("big.json");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(100 << 20).unwrap();
        let err = read_record_file(&big).unwrap_err();
        assert!(matches!(err, RecordFileError::TooLarge(_)), "{err}");
        assert!(err.to_string().contains("larger than 65536 bytes"), "{err}");

        assert!(matches!(
            read_record_file(dir.path()),
            Err(RecordFileError::NotRegular("a directory"))
        ));
        assert!(matches!(
            read_record_file(&dir.path().join("absent.json")),
            Err(RecordFileError::NotFound)
        ));
    }

    async fn next(
        rx: &mut tokio::sync::mpsc::Receiver<crate::registry::RegistryEvent>,
    ) -> crate::registry::RegistryEvent {
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("an event in time")
            .expect("channel open")
    }

    /// Hostile files appearing in a watched registry directory: each is that node's
    /// Malformed record, and a good record published afterwards still arrives.
    #[tokio::test]
    async fn the_watcher_refuses_each_hostile_file_and_goes_on() {
        use crate::registry::{DirRegistry, Registry as _, RegistryEvent};
        let tmp = tempfile::tempdir().unwrap();
        let reg = DirRegistry::new(tmp.path()).unwrap();
        let mut rx = reg.watch().unwrap();
        assert!(matches!(next(&mut rx).await, RegistryEvent::Synced));
        let dir = tmp.path();
        nix::unistd::mkfifo(
            &dir.join("fifo.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero.json")).unwrap();
        let tmpfile = dir.join(".big.tmp");
        std::fs::write(&tmpfile, vec![b' '; 100 << 20]).unwrap();
        std::fs::rename(&tmpfile, dir.join("big.json")).unwrap();
        let mut refused = std::collections::BTreeMap::new();
        while refused.len() < 3 {
            match next(&mut rx).await {
                RegistryEvent::Malformed { node, error } => {
                    refused.insert(node, error.reason);
                }
                other => panic!("expected Malformed, got {other:?}"),
            }
        }
        assert!(refused["fifo"].contains("a FIFO"), "{refused:?}");
        assert!(refused["zero"].contains("symbolic link"), "{refused:?}");
        assert!(refused["big"].contains("larger than"), "{refused:?}");
        // The watcher still works.
        let key = keyexchange::PublicKey::from_bytes([7; 32]);
        let record = keyexchange::record::NodeRecord {
            name: "good".into(),
            public_key: key,
            listen_port: 51820,
            endpoints: vec!["198.18.0.7".parse().unwrap()],
            pod_cidrs: vec!["10.244.7.0/24".parse().unwrap()],
            rotation: Default::default(),
        };
        reg.publish(&record).await.unwrap();
        match next(&mut rx).await {
            RegistryEvent::Upsert(r) => assert_eq!(r.name, "good"),
            other => panic!("expected Upsert, got {other:?}"),
        }
    }
}
