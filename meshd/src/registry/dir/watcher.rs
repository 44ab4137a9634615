//! The watcher's side of the directory registry: inotify events on the directory become
//! registry events. Dotfiles (including the writers' temporary files), non-`.json` names and
//! subdirectories are ignored; the last content seen per file is remembered (as a digest) and
//! unchanged content is never re-announced; an overflowed inotify queue rescans the
//! directory; the channel closes when the directory itself disappears.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use inotify::{EventMask, EventStream};
use keyexchange::record::{NodeRecord, RecordError};
use tokio::sync::mpsc;

use super::{read_record_file, RecordFileError, RegistryError, RegistryEvent};

/// The node a directory entry belongs to, or `None` if the entry is not a record file.
pub(super) fn node_of(file_name: &OsStr) -> Option<String> {
    let name = file_name.to_str()?;
    if name.starts_with('.') {
        return None;
    }
    let stem = name.strip_suffix(".json")?;
    (!stem.is_empty()).then(|| stem.to_string())
}

/// The nodes with a record file in `dir`, sorted.
pub(super) fn list_nodes(dir: &Path) -> Result<BTreeSet<String>, RegistryError> {
    let read_err = |source: io::Error| RegistryError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut nodes = BTreeSet::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let Some(node) = node_of(&entry.file_name()) else {
            continue;
        };
        // `file_type` does not follow symlinks: a symlink is listed, and refused when read.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        nodes.insert(node);
    }
    Ok(nodes)
}

/// An error and its causes on one line (`RecordError` carries text, not a source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// How strictly to treat invalid content when reading a record file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The writer is done (close-after-write, rename, listing): invalid content is Malformed.
    Complete,
    /// The file was just created and may still be being written: ignore invalid content, a
    /// close-after-write event follows.
    MaybePartial,
}

/// The receiver was dropped.
struct Closed;

/// The SHA-256 digest of the last content seen for a file (`None`: the file could not be
/// read). A digest, not the bytes: at 5,000 nodes the raw records were megabytes of heap held
/// only to recognise a rewrite with the same content.
type Seen = Option<[u8; 32]>;

/// The digest [`Seen`] keeps of a record file's content.
fn content_digest(content: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(content).into()
}

/// The task behind [`super::DirRegistry::watch`]: inotify events in, registry events out.
pub(super) struct Watcher {
    pub(super) dir: PathBuf,
    pub(super) tx: mpsc::Sender<RegistryEvent>,
    pub(super) seen: HashMap<String, Seen>,
}

impl Watcher {
    pub(super) async fn run(mut self, mut stream: EventStream<Vec<u8>>, initial: BTreeSet<String>) {
        tracing::debug!(dir = %self.dir.display(), records = initial.len(), "registry watch started");
        if self.announce_all(initial).await.is_err() {
            return;
        }
        loop {
            let event = tokio::select! {
                () = self.tx.closed() => break,
                event = stream.next() => event,
            };
            let event = match event {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    tracing::error!(dir = %self.dir.display(), error = %e, "reading inotify events failed; stopping registry watch");
                    return;
                }
                None => {
                    tracing::error!(dir = %self.dir.display(), "inotify stream ended; stopping registry watch");
                    return;
                }
            };
            if self
                .handle(event.mask, event.name.as_deref())
                .await
                .is_err()
            {
                break;
            }
        }
        tracing::debug!(dir = %self.dir.display(), "registry watch receiver dropped; stopping");
    }

    /// Emits the state of every listed node (the initial listing, or a rescan), and deletes
    /// for nodes that were known but are no longer listed.
    async fn announce_all(&mut self, nodes: BTreeSet<String>) -> Result<(), Closed> {
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|n| !nodes.contains(*n))
            .cloned()
            .collect();
        for node in gone {
            self.forget(&node).await?;
        }
        for node in nodes {
            self.load(&node, Read::Complete).await?;
        }
        self.send(RegistryEvent::Synced).await
    }

    async fn handle(&mut self, mask: EventMask, name: Option<&OsStr>) -> Result<(), Closed> {
        if mask.contains(EventMask::Q_OVERFLOW) {
            tracing::warn!(dir = %self.dir.display(), "inotify queue overflowed; rescanning registry directory");
            return match list_nodes(&self.dir) {
                Ok(nodes) => self.announce_all(nodes).await,
                Err(e) => {
                    tracing::error!(error = %e, "rescanning registry directory failed");
                    Ok(())
                }
            };
        }
        if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED) {
            tracing::error!(dir = %self.dir.display(), "registry directory was removed or moved; stopping registry watch");
            return Err(Closed);
        }
        if mask.contains(EventMask::ISDIR) {
            return Ok(());
        }
        let Some(node) = name.and_then(node_of) else {
            return Ok(());
        };
        if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
            self.forget(&node).await
        } else if mask.intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO) {
            self.load(&node, Read::Complete).await
        } else if mask.contains(EventMask::CREATE) {
            // Catches hard links and symlinks, which produce no close-after-write.
            self.load(&node, Read::MaybePartial).await
        } else {
            Ok(())
        }
    }

    async fn send(&self, event: RegistryEvent) -> Result<(), Closed> {
        self.tx.send(event).await.map_err(|_| Closed)
    }

    async fn forget(&mut self, node: &str) -> Result<(), Closed> {
        if self.seen.remove(node).is_some() {
            tracing::debug!(node, "node record removed from registry");
            self.send(RegistryEvent::Delete(node.to_string())).await?;
        }
        Ok(())
    }

    async fn load(&mut self, node: &str, mode: Read) -> Result<(), Closed> {
        let path = self.dir.join(format!("{node}.json"));
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read_record_file(&path))
                .await
                .unwrap_or_else(|e| Err(RecordFileError::Io(io::Error::other(e))))
        };
        let content = match read {
            Ok(content) => content,
            Err(RecordFileError::NotFound) => return self.forget(node).await,
            Err(e) => {
                // A plain read error may be a file still being created; a symlink, a FIFO, a
                // device or an oversized file is refused as it is.
                let transient = matches!(e, RecordFileError::Io(_));
                if (transient && mode == Read::MaybePartial) || self.seen.get(node) == Some(&None) {
                    return Ok(());
                }
                self.seen.insert(node.to_string(), None);
                let error = RecordError {
                    node: node.to_string(),
                    field: "record",
                    reason: format!("{} {}", path.display(), error_chain(&e)),
                };
                tracing::warn!(%error, "unreadable node record");
                return self
                    .send(RegistryEvent::Malformed {
                        node: node.to_string(),
                        error,
                    })
                    .await;
            }
        };
        let digest = content_digest(&content);
        if self.seen.get(node) == Some(&Some(digest)) {
            return Ok(());
        }
        let parsed = match std::str::from_utf8(&content) {
            Ok(text) => NodeRecord::from_json(node, text),
            Err(e) => Err(RecordError {
                node: node.to_string(),
                field: "record",
                reason: format!("not UTF-8: {e}"),
            }),
        };
        let event = match parsed {
            Ok(record) => {
                tracing::debug!(node, "node record upserted");
                RegistryEvent::Upsert(record)
            }
            Err(_) if mode == Read::MaybePartial => return Ok(()),
            // An empty file is a non-atomic writer between truncate and write (its own
            // close-after-write follows); registries always write atomically, so a file that
            // stays empty is never a record anyone published.
            Err(_) if content.is_empty() => {
                tracing::debug!(node, "empty record file: a write is in progress");
                return Ok(());
            }
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "malformed node record");
                RegistryEvent::Malformed {
                    node: node.to_string(),
                    error,
                }
            }
        };
        self.seen.insert(node.to_string(), Some(digest));
        self.send(event).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_from_file_names() {
        assert_eq!(node_of(OsStr::new("n1.json")).as_deref(), Some("n1"));
        assert_eq!(node_of(OsStr::new("a.b.json")).as_deref(), Some("a.b"));
        assert_eq!(node_of(OsStr::new(".n1.json")), None);
        assert_eq!(node_of(OsStr::new(".n1.json.tmp-5-0")), None);
        assert_eq!(node_of(OsStr::new("n1.json.bak")), None);
        assert_eq!(node_of(OsStr::new(".json")), None);
        assert_eq!(node_of(OsStr::new("n1")), None);
    }
}
