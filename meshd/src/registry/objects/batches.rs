//! The directory registry's endpoint batches: one file per node,
//! `objects/endpoints/<node>.json`, written atomically by that node's meshd
//! ([`write_batch`]) and followed by every node ([`watch_batches`]) with inotify, watched before
//! listed; a queue overflow lists again. The content is untrusted and read like a record file
//! (regular file, bounded); it is decoded and vetted by [`crate::policy::pod_identity`].
//!
//! Source validation needs the publishing node's pod CIDRs: [`pod_cidrs_of`] reads them from
//! its record file, `<registry>/<node>.json`.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use ipnet::IpNet;
use keyexchange::NodeRecord;
use tokio::sync::mpsc;

use super::super::dir::{read_record_file, read_untrusted_file, RecordFileError};
use super::super::RegistryError;
use super::OBJECTS_DIR;
use crate::policy::endpoint_batch::MAX_BATCH_BYTES;
use crate::policy::pod_identity::BatchEvent;

/// The directory of the batches under the objects directory.
pub const BATCHES_DIR: &str = "endpoints";

/// Capacity of the channel [`watch_batches`] returns.
const CHANNEL_CAPACITY: usize = 1024;

/// The directory holding the batches of the registry in `registry_dir`.
pub fn batches_dir(registry_dir: &Path) -> PathBuf {
    registry_dir.join(OBJECTS_DIR).join(BATCHES_DIR)
}

/// Node `node`'s pod CIDRs from its record file in `registry_dir`; `None` if it has no valid
/// record.
pub fn pod_cidrs_of(registry_dir: &Path, node: &str) -> Option<Vec<IpNet>> {
    let content = read_record_file(&registry_dir.join(format!("{node}.json"))).ok()?;
    let text = String::from_utf8(content).ok()?;
    NodeRecord::from_json(node, &text)
        .ok()
        .map(|record| record.pod_cidrs)
}

/// Writes node `node`'s batch atomically (a dotfile renamed over it).
pub fn write_batch(registry_dir: &Path, node: &str, content: &str) -> Result<(), RegistryError> {
    let dir = batches_dir(registry_dir);
    let path = dir.join(format!("{node}.json"));
    let tmp = dir.join(format!(".{node}.json.tmp-{}", std::process::id()));
    crate::registry::dir::write_atomically(&tmp, &path, content.as_bytes())
}

/// Follows the batches under `registry_dir` (creating their directory): listed, then every
/// change. Must be called in a Tokio runtime.
pub fn watch_batches(registry_dir: &Path) -> Result<mpsc::Receiver<BatchEvent>, RegistryError> {
    let dir = batches_dir(registry_dir);
    fs::create_dir_all(&dir).map_err(|source| RegistryError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let watch_err = |source: io::Error| RegistryError::Watch {
        path: dir.clone(),
        source,
    };
    let handle = tokio::runtime::Handle::try_current().map_err(RegistryError::NoRuntime)?;
    let inotify = Inotify::init().map_err(watch_err)?;
    inotify
        .watches()
        .add(
            &dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::DELETE
                | WatchMask::ONLYDIR,
        )
        .map_err(watch_err)?;
    let mut stream = {
        let _guard = handle.enter();
        inotify
            .into_event_stream(vec![0u8; 64 * 1024])
            .map_err(watch_err)?
    };
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    handle.spawn(async move {
        if list(&dir, &tx).await.is_err() {
            return;
        }
        loop {
            let event = tokio::select! {
                () = tx.closed() => break,
                event = stream.next() => event,
            };
            let event = match event {
                Some(Ok(event)) => event,
                Some(Err(error)) => {
                    tracing::error!(dir = %dir.display(), %error, "reading inotify events failed; stopping the endpoint batch watch");
                    return;
                }
                None => return,
            };
            let sent = if event.mask.contains(EventMask::Q_OVERFLOW) {
                list(&dir, &tx).await
            } else {
                match event.name.as_deref().and_then(node_of) {
                    Some(node) if event.mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) => {
                        tx.send(BatchEvent::Remove(node)).await.map_err(drop)
                    }
                    Some(node) => match read(&dir, node) {
                        Some(event) => tx.send(event).await.map_err(drop),
                        None => Ok(()),
                    },
                    None => Ok(()),
                }
            };
            if sent.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Lists every batch.
async fn list(dir: &Path, tx: &mpsc::Sender<BatchEvent>) -> Result<(), ()> {
    tx.send(BatchEvent::ListStart).await.map_err(drop)?;
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| node_of(&e.file_name()))
            .collect(),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "listing the endpoint batches failed");
            Vec::new()
        }
    };
    names.sort();
    for node in names {
        if let Some(event) = read(dir, node) {
            tx.send(event).await.map_err(drop)?;
        }
    }
    tx.send(BatchEvent::ListDone).await.map_err(drop)
}

/// The node a batch file belongs to: `<node>.json`, dotfiles left out.
fn node_of(name: &OsStr) -> Option<String> {
    let name = name.to_str()?;
    if name.starts_with('.') {
        return None;
    }
    name.strip_suffix(".json")
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

/// The event node `node`'s batch file makes now (`None`: empty, being written).
fn read(dir: &Path, node: String) -> Option<BatchEvent> {
    let path = dir.join(format!("{node}.json"));
    match read_untrusted_file(&path, MAX_BATCH_BYTES as u64) {
        Ok(content) if content.is_empty() => None,
        Ok(content) => Some(BatchEvent::Upsert { node, content }),
        Err(RecordFileError::NotFound) => Some(BatchEvent::Remove(node)),
        Err(e) => Some(BatchEvent::Unreadable {
            error: format!("{}: {:#}", path.display(), anyhow::Error::new(e)),
            node,
        }),
    }
}
