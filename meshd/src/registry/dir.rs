//! A registry backed by a shared directory: one `<name>.json` file per node.
//!
//! * `publish` writes atomically (temporary dotfile in the same directory, `fsync`, rename,
//!   `fsync` of the directory) and skips the write when the file already holds identical bytes.
//! * `withdraw` removes `<name>.json`.
//! * `watch` registers an inotify watch on the directory *before* listing it, so no change
//!   between listing and watching is lost, then translates events. Dotfiles (including the
//!   temporary files), non-`.json` names and subdirectories are ignored. The watcher remembers
//!   the last content it saw per file and never re-announces unchanged content. If the inotify
//!   queue overflows it rescans the directory. If the directory itself disappears the channel
//!   closes.
//! * Record files are read by [`read_record_file`]: regular files only, never through a
//!   symlink, never blocking on a FIFO or device, at most [`MAX_RECORD_BYTES`]. Anything else
//!   is that node's `Malformed` record, and nothing more.

use std::collections::HashMap;
use std::fs::DirBuilder;
use std::future::Future;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use inotify::{Inotify, WatchMask};
use tokio::sync::mpsc;

use super::{Registry, RegistryError, RegistryEvent};
pub use record_file::{read_record_file, read_untrusted_file, RecordFileError, MAX_RECORD_BYTES};
pub(crate) use write::write_atomically;

/// Bounded, no-follow, regular-files-only reads of record files.
mod record_file;
/// Watching the directory: inotify events become registry events.
mod watcher;
/// Publishing and withdrawing: atomic writes of record files.
mod write;
use keyexchange::record::{is_dns1123_subdomain, NodeRecord};
use watcher::{list_nodes, Watcher};
use write::{publish_blocking, withdraw_blocking};

/// Capacity of the event channel returned by [`DirRegistry::watch`].
const CHANNEL_CAPACITY: usize = 1024;

/// A [`Registry`] storing each node's record as `<dir>/<name>.json`.
#[derive(Clone, Debug)]
pub struct DirRegistry {
    dir: PathBuf,
}

impl DirRegistry {
    /// Uses `dir` as the registry, creating it (mode `0755`) if absent.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, RegistryError> {
        let dir = dir.into();
        if !dir.is_dir() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .map_err(|source| RegistryError::CreateDir {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(Self { dir })
    }

    /// The registry directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding node `name`'s record.
    pub fn path_for(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }
}

impl Registry for DirRegistry {
    fn publish(
        &self,
        record: &NodeRecord,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send {
        let dir = self.dir.clone();
        let record = record.clone();
        async move {
            record.validate().map_err(RegistryError::Validate)?;
            tokio::task::spawn_blocking(move || publish_blocking(&dir, &record))
                .await
                .map_err(RegistryError::Task)?
        }
    }

    fn withdraw(&self, name: &str) -> impl Future<Output = Result<(), RegistryError>> + Send {
        let dir = self.dir.clone();
        let name = name.to_string();
        async move {
            if !is_dns1123_subdomain(&name) {
                return Err(RegistryError::InvalidName { name });
            }
            tokio::task::spawn_blocking(move || withdraw_blocking(&dir, &name))
                .await
                .map_err(RegistryError::Task)?
        }
    }

    fn watch(&self) -> Result<mpsc::Receiver<RegistryEvent>, RegistryError> {
        let handle = tokio::runtime::Handle::try_current().map_err(RegistryError::NoRuntime)?;
        let watch_err = |source: io::Error| RegistryError::Watch {
            path: self.dir.clone(),
            source,
        };
        let inotify = Inotify::init().map_err(watch_err)?;
        inotify
            .watches()
            .add(
                &self.dir,
                WatchMask::CLOSE_WRITE
                    | WatchMask::MOVED_TO
                    | WatchMask::MOVED_FROM
                    | WatchMask::DELETE
                    | WatchMask::CREATE
                    | WatchMask::DELETE_SELF
                    | WatchMask::MOVE_SELF
                    | WatchMask::ONLYDIR,
            )
            .map_err(watch_err)?;
        let stream = {
            let _guard = handle.enter();
            inotify
                .into_event_stream(vec![0u8; 16 * 1024])
                .map_err(watch_err)?
        };
        // Listed only after the watch exists: anything changing from here on is also an event.
        let initial = list_nodes(&self.dir)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let watcher = Watcher {
            dir: self.dir.clone(),
            tx,
            seen: HashMap::new(),
        };
        handle.spawn(watcher.run(stream, initial));
        Ok(rx)
    }

    fn watch_policy_objects(
        &self,
        node: &str,
    ) -> Result<mpsc::Receiver<crate::policy::objects::ObjectEvent>, RegistryError> {
        use crate::policy::pod_identity;
        let objects = super::objects::watch_objects(&self.dir)?;
        let batches = super::objects::batches::watch_batches(&self.dir)?;
        let (lookup_dir, write_dir, writer) = (self.dir.clone(), self.dir.clone(), node.to_owned());
        Ok(pod_identity::spawn(
            node,
            pod_identity::merge_sources(objects, batches),
            Box::new(move |n| super::objects::batches::pod_cidrs_of(&lookup_dir, n)),
            Box::new(move |content| {
                let (dir, node) = (write_dir.clone(), writer.clone());
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || {
                        super::objects::batches::write_batch(&dir, &node, &content)
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{:#}", anyhow::Error::new(e)))
                })
            }),
        ))
    }

    fn policy_source(&self) -> &'static str {
        "directory"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::fs;
    use std::time::Duration;

    use super::*;
    use keyexchange::PublicKey;

    fn rec(name: &str, k: u8) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            public_key: PublicKey::from_bytes([k; 32]),
            listen_port: 51820,
            endpoints: vec![format!("198.18.0.{k}").parse().unwrap()],
            pod_cidrs: vec![format!("10.244.{k}.0/24").parse().unwrap()],
            rotation: Default::default(),
        }
    }

    async fn next_raw(rx: &mut mpsc::Receiver<RegistryEvent>) -> RegistryEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("timed out waiting for a registry event")
            .expect("watch channel closed")
    }

    /// The next event that is not a `Synced` marker.
    async fn next(rx: &mut mpsc::Receiver<RegistryEvent>) -> RegistryEvent {
        loop {
            match next_raw(rx).await {
                RegistryEvent::Synced => continue,
                ev => return ev,
            }
        }
    }

    async fn assert_quiet(rx: &mut mpsc::Receiver<RegistryEvent>) {
        while let Ok(ev) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            if !matches!(ev, Some(RegistryEvent::Synced)) {
                panic!("unexpected registry event: {ev:?}");
            }
        }
    }

    #[tokio::test]
    async fn synced_marks_the_end_of_the_initial_state() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
            fs::write(d.join(format!("{n}.json")), rec(n, i as u8 + 1).to_json()).unwrap();
        }
        let reg = DirRegistry::new(d).unwrap();
        let mut rx = reg.watch().unwrap();
        let mut names = Vec::new();
        loop {
            match next_raw(&mut rx).await {
                RegistryEvent::Upsert(r) => names.push(r.name),
                RegistryEvent::Synced => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(names, vec!["n1", "n2", "n3"]);
        // Later changes come after the marker, and no second marker without a re-list.
        reg.publish(&rec("n4", 4)).await.unwrap();
        assert_eq!(upserted(next_raw(&mut rx).await).name, "n4");
    }

    fn upserted(ev: RegistryEvent) -> NodeRecord {
        match ev {
            RegistryEvent::Upsert(r) => r,
            other => panic!("expected Upsert, got {other:?}"),
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn new_creates_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/registry");
        let reg = DirRegistry::new(&dir).unwrap();
        assert!(dir.is_dir());
        assert_eq!(reg.dir(), dir);
        assert_eq!(reg.path_for("n1"), dir.join("n1.json"));
    }

    #[tokio::test]
    async fn publish_writes_record_file() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = DirRegistry::new(tmp.path()).unwrap();
        let r = rec("n1", 1);
        reg.publish(&r).await.unwrap();
        assert_eq!(listing(tmp.path()), vec!["n1.json"]);
        let text = fs::read_to_string(tmp.path().join("n1.json")).unwrap();
        assert_eq!(text, format!("{}\n", r.to_json()));
        assert_eq!(NodeRecord::from_json("n1", &text).unwrap(), r);
    }

    #[tokio::test]
    async fn initial_state_is_emitted_and_junk_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::write(d.join("n1.json"), rec("n1", 1).to_json()).unwrap();
        fs::write(d.join("bad.json"), "{not json").unwrap();
        fs::write(d.join(".hidden.json"), rec("hidden", 2).to_json()).unwrap();
        fs::write(d.join(".n3.json.tmp-1-0"), rec("n3", 3).to_json()).unwrap();
        fs::write(d.join("notes.txt"), "hello").unwrap();
        fs::create_dir(d.join("sub.json")).unwrap();
        let reg = DirRegistry::new(d).unwrap();
        let mut rx = reg.watch().unwrap();
        match next(&mut rx).await {
            RegistryEvent::Malformed { node, error } => {
                assert_eq!(node, "bad");
                assert_eq!(error.field, "record");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert_eq!(upserted(next(&mut rx).await), rec("n1", 1));
        assert_quiet(&mut rx).await;
    }

    #[tokio::test]
    async fn changes_from_another_instance_are_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let watcher = DirRegistry::new(tmp.path()).unwrap();
        let publisher = DirRegistry::new(tmp.path()).unwrap();
        let mut rx = watcher.watch().unwrap();
        assert_quiet(&mut rx).await;

        publisher.publish(&rec("n1", 1)).await.unwrap();
        assert_eq!(upserted(next(&mut rx).await), rec("n1", 1));

        // Identical re-publish: no write, no event.
        let before = fs::metadata(tmp.path().join("n1.json"))
            .unwrap()
            .modified()
            .unwrap();
        publisher.publish(&rec("n1", 1)).await.unwrap();
        assert_quiet(&mut rx).await;
        let after = fs::metadata(tmp.path().join("n1.json"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);

        // A change is announced.
        let mut changed = rec("n1", 1);
        changed.listen_port = 51999;
        publisher.publish(&changed).await.unwrap();
        assert_eq!(upserted(next(&mut rx).await), changed);

        publisher.withdraw("n1").await.unwrap();
        match next(&mut rx).await {
            RegistryEvent::Delete(name) => assert_eq!(name, "n1"),
            other => panic!("expected Delete, got {other:?}"),
        }
        // Idempotent.
        publisher.withdraw("n1").await.unwrap();
        assert_quiet(&mut rx).await;
        assert!(listing(tmp.path()).is_empty(), "no temp files left behind");
    }

    #[tokio::test]
    async fn rewriting_identical_content_is_not_reannounced() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = DirRegistry::new(tmp.path()).unwrap();
        let mut rx = reg.watch().unwrap();
        let path = tmp.path().join("n1.json");
        // Plain, non-atomic writes (create, write, close): announced once, when complete.
        fs::write(&path, rec("n1", 1).to_json()).unwrap();
        assert_eq!(upserted(next(&mut rx).await), rec("n1", 1));
        fs::write(&path, rec("n1", 1).to_json()).unwrap();
        assert_quiet(&mut rx).await;
    }

    #[tokio::test]
    async fn malformed_file_does_not_stop_the_watcher() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = DirRegistry::new(tmp.path()).unwrap();
        let mut rx = reg.watch().unwrap();
        fs::write(tmp.path().join("broken.json"), "garbage").unwrap();
        match next(&mut rx).await {
            RegistryEvent::Malformed { node, error } => {
                assert_eq!(node, "broken");
                assert_eq!(error.node, "broken");
                assert_eq!(error.field, "record");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        // A record stored under the wrong file name is malformed too.
        fs::write(tmp.path().join("n2.json"), rec("n9", 9).to_json()).unwrap();
        match next(&mut rx).await {
            RegistryEvent::Malformed { node, error } => {
                assert_eq!(node, "n2");
                assert_eq!(error.field, "name");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        DirRegistry::new(tmp.path())
            .unwrap()
            .publish(&rec("n3", 3))
            .await
            .unwrap();
        assert_eq!(upserted(next(&mut rx).await), rec("n3", 3));
        // Deleting a malformed file announces the delete (consumers drop the node).
        fs::remove_file(tmp.path().join("broken.json")).unwrap();
        match next(&mut rx).await {
            RegistryEvent::Delete(name) => assert_eq!(name, "broken"),
            other => panic!("expected Delete, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unreadable_file_is_malformed_record() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("elsewhere");
        fs::create_dir(&target).unwrap();
        let reg_dir = tmp.path().join("reg");
        let reg = DirRegistry::new(&reg_dir).unwrap();
        // A symlink to a directory cannot be read as a file (even by root).
        std::os::unix::fs::symlink(&target, reg_dir.join("odd.json")).unwrap();
        let mut rx = reg.watch().unwrap();
        match next(&mut rx).await {
            RegistryEvent::Malformed { node, error } => {
                assert_eq!(node, "odd");
                assert_eq!(error.field, "record");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert_quiet(&mut rx).await;
    }

    #[tokio::test]
    async fn renames_in_and_out_are_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside.json");
        let reg_dir = tmp.path().join("reg");
        let reg = DirRegistry::new(&reg_dir).unwrap();
        let mut rx = reg.watch().unwrap();
        fs::write(&outside, rec("n4", 4).to_json()).unwrap();
        fs::rename(&outside, reg_dir.join("n4.json")).unwrap();
        assert_eq!(upserted(next(&mut rx).await), rec("n4", 4));
        fs::rename(reg_dir.join("n4.json"), &outside).unwrap();
        match next(&mut rx).await {
            RegistryEvent::Delete(name) => assert_eq!(name, "n4"),
            other => panic!("expected Delete, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn invalid_publish_is_rejected_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = DirRegistry::new(tmp.path()).unwrap();
        let mut bad = rec("n1", 1);
        bad.name = "../x".into();
        match reg.publish(&bad).await {
            Err(RegistryError::Validate(e)) => assert_eq!(e.field, "name"),
            other => panic!("expected Validate error, got {other:?}"),
        }
        let mut bad = rec("n1", 1);
        bad.listen_port = 0;
        assert!(matches!(
            reg.publish(&bad).await,
            Err(RegistryError::Validate(_))
        ));
        assert!(listing(tmp.path()).is_empty());
        assert!(!tmp.path().parent().unwrap().join("x.json").exists());

        assert!(matches!(
            reg.withdraw("../x").await,
            Err(RegistryError::InvalidName { .. })
        ));
    }

    #[test]
    fn watch_outside_runtime_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = DirRegistry::new(tmp.path()).unwrap();
        assert!(matches!(reg.watch(), Err(RegistryError::NoRuntime(_))));
    }

    #[tokio::test]
    async fn watcher_stops_when_receiver_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = DirRegistry::new(tmp.path()).unwrap();
        let metrics = tokio::runtime::Handle::current().metrics();
        let rx = reg.watch().unwrap();
        assert_eq!(metrics.num_alive_tasks(), 1);
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), async {
            while metrics.num_alive_tasks() != 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("watcher task did not stop after the receiver was dropped");
        // Still usable afterwards; a new watch replays the full state.
        reg.publish(&rec("n1", 1)).await.unwrap();
        let mut rx = reg.watch().unwrap();
        assert_eq!(upserted(next(&mut rx).await), rec("n1", 1));
    }
}
