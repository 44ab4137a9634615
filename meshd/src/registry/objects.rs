//! The directory registry's Kubernetes objects: what policy needs (Namespaces, Pods,
//! NetworkPolicies) for a lab without an API server, one object per file, JSON exactly as
//! `kubectl get -o json` prints it, under the registry directory:
//!
//! ```text
//! objects/namespaces/<name>.json
//! objects/pods/<namespace>/<name>.json
//! objects/networkpolicies/<namespace>/<name>.json
//! objects/endpoints/<node>.json          (each node's endpoint batch: [`batches`])
//! ```
//!
//! A directory has no field selector: each meshd reads the pod files and keeps only its own
//! node's ([`crate::policy::pod_identity`]); every other node's pods reach it through that
//! node's endpoint batch, vetted against the node's pod CIDRs.
//!
//! Writers write atomically (a temporary dotfile in the same directory, then `rename`) and
//! delete by removing the file. [`watch_objects`] follows the tree with inotify like the node
//! watcher ([`super::dir`]): every directory is watched *before* it is listed, dotfiles and
//! non-`.json` names are ignored, a queue overflow or a vanished namespace directory starts a
//! relist of the kind (the consumer diffs it). A file that does not parse, whose name is not
//! its object's, or that [`meshd_policy::k8s`] refuses is reported as
//! [`ObjectEvent::Malformed`] naming the file and the error, and the watch goes on.

use crate::registry::dir::{read_untrusted_file, RecordFileError};

/// Largest object file read: the size etcd accepts for one object by default (1.5 MiB).
pub const MAX_OBJECT_BYTES: u64 = 1536 * 1024;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use meshd_policy::k8s;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::RegistryError;
use crate::policy::objects::{Kind, Object, ObjectEvent, ObjectRef};

/// The subdirectory of the registry directory holding the objects.
pub const OBJECTS_DIR: &str = "objects";

/// Capacity of the event channel [`watch_objects`] returns.
const CHANNEL_CAPACITY: usize = 4096;

/// The directory of `kind` under the objects directory.
pub fn kind_dir(kind: Kind) -> &'static str {
    match kind {
        Kind::Namespace => "namespaces",
        Kind::Pod => "pods",
        Kind::NetworkPolicy => "networkpolicies",
    }
}

/// Where a watch points.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    /// A directory of object files: `namespaces/`, or `pods/<ns>/` and
    /// `networkpolicies/<ns>/` (`namespace` set).
    Files {
        kind: Kind,
        namespace: Option<String>,
    },
    /// `pods/` or `networkpolicies/`: one directory per namespace.
    NamespaceDirs(Kind),
}

/// Follows the objects under `registry_dir/objects` (creating its three directories when
/// absent): each kind is listed, then every change follows. Must be called in a Tokio runtime.
pub fn watch_objects(registry_dir: &Path) -> Result<mpsc::Receiver<ObjectEvent>, RegistryError> {
    let root = registry_dir.join(OBJECTS_DIR);
    for kind in Kind::ALL {
        let dir = root.join(kind_dir(kind));
        fs::create_dir_all(&dir)
            .map_err(|source| RegistryError::CreateDir { path: dir, source })?;
    }
    let watch_err = |source: io::Error| RegistryError::Watch {
        path: root.clone(),
        source,
    };
    let handle = tokio::runtime::Handle::try_current().map_err(RegistryError::NoRuntime)?;
    let inotify = Inotify::init().map_err(watch_err)?;
    let stream = {
        let _guard = handle.enter();
        inotify
            .into_event_stream(vec![0u8; 64 * 1024])
            .map_err(watch_err)?
    };
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let mut watcher = ObjectWatcher {
        root,
        watches: stream.watches(),
        places: HashMap::new(),
        tx,
    };
    handle.spawn(async move {
        if watcher.relist_all().await.is_ok() {
            watcher.run(stream).await;
        }
    });
    Ok(rx)
}

/// The receiver was dropped.
struct Closed;

struct ObjectWatcher {
    root: PathBuf,
    watches: Watches,
    places: HashMap<WatchDescriptor, Place>,
    tx: mpsc::Sender<ObjectEvent>,
}

impl ObjectWatcher {
    async fn run(mut self, mut stream: EventStream<Vec<u8>>) {
        loop {
            let event = tokio::select! {
                () = self.tx.closed() => break,
                event = stream.next() => event,
            };
            let event = match event {
                Some(Ok(event)) => event,
                Some(Err(error)) => {
                    tracing::error!(dir = %self.root.display(), %error, "reading inotify events failed; stopping the object watch");
                    return;
                }
                None => return,
            };
            let result = if event.mask.contains(EventMask::Q_OVERFLOW) {
                tracing::warn!(dir = %self.root.display(), "inotify queue overflowed; listing the objects again");
                self.relist_all().await
            } else if event.mask.contains(EventMask::IGNORED) {
                self.places.remove(&event.wd);
                Ok(())
            } else {
                match self.places.get(&event.wd).cloned() {
                    Some(place) => self.handle(place, event.mask, event.name.as_deref()).await,
                    None => Ok(()),
                }
            };
            if result.is_err() {
                break;
            }
        }
        tracing::debug!("object watch receiver dropped; stopping");
    }

    async fn handle(
        &mut self,
        place: Place,
        mask: EventMask,
        name: Option<&OsStr>,
    ) -> Result<(), Closed> {
        let Some(name) = name.and_then(OsStr::to_str) else {
            return Ok(());
        };
        if name.starts_with('.') {
            return Ok(());
        }
        let appeared = mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
        let vanished = mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM);
        match place {
            Place::NamespaceDirs(kind) if mask.contains(EventMask::ISDIR) => {
                if appeared {
                    // Watched before listed: files written meanwhile are events too.
                    let files = Place::Files {
                        kind,
                        namespace: Some(name.to_owned()),
                    };
                    let dir = self.dir_of(&files);
                    self.watch(&dir, files.clone());
                    self.announce_dir(&files).await
                } else if vanished {
                    // Moved away with its files (no per-file events): list the kind again.
                    self.relist(kind).await
                } else {
                    Ok(())
                }
            }
            Place::Files { kind, namespace } if !mask.contains(EventMask::ISDIR) => {
                let Some(object_name) = name.strip_suffix(".json").filter(|n| !n.is_empty()) else {
                    return Ok(());
                };
                let reference = reference(kind, namespace.as_deref(), object_name);
                let path = self.dir_of(&Place::Files { kind, namespace }).join(name);
                if vanished {
                    self.send(ObjectEvent::Remove(reference)).await
                } else if mask.intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO) {
                    match read_object(&path, reference) {
                        Some(event) => self.send(event).await,
                        None => Ok(()),
                    }
                } else if mask.contains(EventMask::CREATE) {
                    // A hard link or symlink (no close-after-write follows); a plain create
                    // is still being written: only a complete object counts.
                    match read_object(&path, reference) {
                        Some(event @ ObjectEvent::Upsert(_)) => self.send(event).await,
                        _ => Ok(()),
                    }
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn dir_of(&self, place: &Place) -> PathBuf {
        match place {
            Place::NamespaceDirs(kind) => self.root.join(kind_dir(*kind)),
            Place::Files { kind, namespace } => {
                let dir = self.root.join(kind_dir(*kind));
                match namespace {
                    Some(ns) => dir.join(ns),
                    None => dir,
                }
            }
        }
    }

    fn watch(&mut self, dir: &Path, place: Place) {
        let mask = match place {
            Place::NamespaceDirs(_) => {
                WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::MOVED_FROM | WatchMask::DELETE
            }
            Place::Files { .. } => {
                WatchMask::CLOSE_WRITE
                    | WatchMask::MOVED_TO
                    | WatchMask::MOVED_FROM
                    | WatchMask::DELETE
                    | WatchMask::CREATE
            }
        } | WatchMask::ONLYDIR;
        match self.watches.add(dir, mask) {
            Ok(wd) => {
                self.places.insert(wd, place);
            }
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot watch an object directory; its objects are read only at the next relist");
            }
        }
    }

    async fn relist_all(&mut self) -> Result<(), Closed> {
        for kind in Kind::ALL {
            self.relist(kind).await?;
        }
        Ok(())
    }

    /// Lists every object of `kind` (watching each directory first).
    async fn relist(&mut self, kind: Kind) -> Result<(), Closed> {
        self.send(ObjectEvent::ListStart(kind)).await?;
        if kind == Kind::Namespace {
            let files = Place::Files {
                kind,
                namespace: None,
            };
            self.watch(&self.dir_of(&files), files.clone());
            self.announce_dir(&files).await?;
        } else {
            let top = Place::NamespaceDirs(kind);
            let dir = self.dir_of(&top);
            self.watch(&dir, top);
            for namespace in names(&dir, true) {
                let files = Place::Files {
                    kind,
                    namespace: Some(namespace),
                };
                self.watch(&self.dir_of(&files), files.clone());
                self.announce_dir(&files).await?;
            }
        }
        self.send(ObjectEvent::ListDone(kind)).await
    }

    /// Announces every object file in a directory.
    async fn announce_dir(&mut self, place: &Place) -> Result<(), Closed> {
        let Place::Files { kind, namespace } = place else {
            return Ok(());
        };
        let dir = self.dir_of(place);
        for file in names(&dir, false) {
            let Some(object_name) = file.strip_suffix(".json").filter(|n| !n.is_empty()) else {
                continue;
            };
            let reference = reference(*kind, namespace.as_deref(), object_name);
            match read_object(&dir.join(&file), reference) {
                // Removed since it was listed, or empty (being written): its events follow.
                None | Some(ObjectEvent::Remove(_)) => {}
                Some(event) => self.send(event).await?,
            }
        }
        Ok(())
    }

    async fn send(&self, event: ObjectEvent) -> Result<(), Closed> {
        self.tx.send(event).await.map_err(|_| Closed)
    }
}

/// The names in `dir` that are directories (`dirs`) or not, dotfiles left out, sorted.
fn names(dir: &Path, dirs: bool) -> Vec<String> {
    let mut out: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) == dirs)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect(),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "listing an object directory failed");
            Vec::new()
        }
    };
    out.sort();
    out
}

fn reference(kind: Kind, namespace: Option<&str>, name: &str) -> ObjectRef {
    match namespace {
        Some(ns) => ObjectRef::namespaced(kind, ns, name),
        None => ObjectRef::namespace(name),
    }
}

/// The event a file's content makes: the object, its removal (the file is gone, or a
/// host-network pod) or why it is refused; `None` for an empty file (a writer that is not
/// atomic, between truncating and writing: its close-after-write follows, and the last good
/// version stands meanwhile).
pub fn read_object(path: &Path, reference: ObjectRef) -> Option<ObjectEvent> {
    let malformed = |error: String| {
        tracing::warn!(file = %path.display(), %error, "refusing a malformed object file");
        ObjectEvent::Malformed {
            object: reference.clone(),
            error: format!("{}: {error}", path.display()),
        }
    };
    // Untrusted: a regular file only (no symlink, FIFO or device), at most MAX_OBJECT_BYTES.
    let content = match read_untrusted_file(path, MAX_OBJECT_BYTES) {
        Ok(content) if content.is_empty() => return None,
        Ok(content) => content,
        Err(RecordFileError::NotFound) => return Some(ObjectEvent::Remove(reference)),
        Err(e) => return Some(malformed(format!("{:#}", anyhow::Error::new(e)))),
    };
    Some(match parse_object(&content, &reference) {
        Ok(Some(object)) => ObjectEvent::Upsert(object),
        Ok(None) => ObjectEvent::Remove(reference),
        Err(error) => malformed(error),
    })
}

/// Parses one object file's content as the object `reference` names (its file name and
/// directory). `Ok(None)`: a host-network pod, not an object of policy.
pub fn parse_object(content: &[u8], reference: &ObjectRef) -> Result<Option<Object>, String> {
    match reference.kind {
        Kind::Namespace => {
            let ns: core::Namespace = decode(content, reference)?;
            check_identity(&ns.metadata, reference)?;
            k8s::namespace_from_k8s(&ns)
                .map(|ns| Some(Object::Namespace(ns)))
                .map_err(|e| e.to_string())
        }
        Kind::Pod => {
            let mut pod: core::Pod = decode(content, reference)?;
            check_identity(&pod.metadata, reference)?;
            pod.metadata.namespace = Some(reference.namespace.clone());
            k8s::pod_from_k8s(&pod)
                .map(|pod| pod.map(Object::Pod))
                .map_err(|e| e.to_string())
        }
        Kind::NetworkPolicy => {
            let mut policy: networking::NetworkPolicy = decode(content, reference)?;
            check_identity(&policy.metadata, reference)?;
            policy.metadata.namespace = Some(reference.namespace.clone());
            k8s::policy_from_k8s(&policy)
                .map(|p| Some(Object::Policy(p)))
                .map_err(|e| e.to_string())
        }
    }
}

fn decode<T: DeserializeOwned>(content: &[u8], reference: &ObjectRef) -> Result<T, String> {
    serde_json::from_slice(content)
        .map_err(|e| format!("not a valid {} object: {e}", reference.kind))
}

/// The object's `metadata.name` (and `metadata.namespace`, when set) are its file's.
fn check_identity(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    reference: &ObjectRef,
) -> Result<(), String> {
    if meta.name.as_deref() != Some(reference.name.as_str()) {
        return Err(format!(
            "metadata.name is {:?}, but the file is named for {:?}",
            meta.name, reference.name
        ));
    }
    match (&meta.namespace, reference.kind) {
        (Some(ns), Kind::Pod | Kind::NetworkPolicy) if *ns != reference.namespace => Err(format!(
            "metadata.namespace is {ns:?}, but the file is in the directory of namespace {:?}",
            reference.namespace
        )),
        _ => Ok(()),
    }
}

pub mod batches;

#[cfg(test)]
pub(crate) mod tests;
