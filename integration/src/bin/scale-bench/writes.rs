//! Counting registry writes: an inotify watch on the registry directory (and on the pod
//! directory of the pod phase) counting every completed write — a file renamed into place or
//! closed after writing, dotfiles ignored, as meshd's own watcher does — per file name. Every
//! write there is one watch event to every agent that watches the directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use inotify::{Inotify, WatchMask};

/// Completed writes per file name, since the counter started.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counts(pub(crate) BTreeMap<String, u64>);

impl Counts {
    /// Writes since `earlier`, split into (files of `own` names, all others).
    pub(crate) fn since(&self, earlier: &Counts, own: &[String]) -> (u64, u64) {
        let mut split = (0, 0);
        for (file, n) in &self.0 {
            let d = n - earlier.0.get(file).copied().unwrap_or(0);
            let stem = file.trim_end_matches(".json");
            if own.iter().any(|o| o == stem) {
                split.0 += d;
            } else {
                split.1 += d;
            }
        }
        split
    }

    /// All writes since `earlier`.
    pub(crate) fn total_since(&self, earlier: &Counts) -> u64 {
        let (a, b) = self.since(earlier, &[]);
        a + b
    }
}

/// The counter's thread and its tally.
pub(crate) struct WriteCounter {
    counts: Arc<Mutex<Counts>>,
}

impl WriteCounter {
    /// Starts counting writes into each of `dirs` (files directly inside; keyed
    /// `<dir index>/<name>` beyond the first directory).
    pub(crate) fn start(dirs: &[PathBuf]) -> anyhow::Result<WriteCounter> {
        let mut inotify = Inotify::init().context("inotify")?;
        let mut wds = Vec::new();
        for d in dirs {
            let wd = inotify
                .watches()
                .add(d, WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE)
                .with_context(|| format!("watching {}", d.display()))?;
            wds.push(wd);
        }
        let counts = Arc::new(Mutex::new(Counts::default()));
        let tally = counts.clone();
        std::thread::Builder::new()
            .name("write-counter".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(events) = inotify.read_events_blocking(&mut buf) {
                    let mut c = tally.lock().unwrap_or_else(|e| e.into_inner());
                    for ev in events {
                        let Some(name) = ev.name.and_then(|n| n.to_str()) else {
                            continue;
                        };
                        if name.starts_with('.') || !name.ends_with(".json") {
                            continue;
                        }
                        let key = match wds.iter().position(|w| *w == ev.wd) {
                            Some(0) | None => name.to_string(),
                            Some(k) => format!("{k}/{name}"),
                        };
                        *c.0.entry(key).or_default() += 1;
                    }
                }
            })
            .context("starting the write counter")?;
        Ok(WriteCounter { counts })
    }

    /// The tally so far.
    pub(crate) fn snapshot(&self) -> Counts {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// `dir` made absolute for the watch (it must exist).
pub(crate) fn existing(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_split_own_from_others() {
        let before = Counts(BTreeMap::from([("n1.json".into(), 2)]));
        let after = Counts(BTreeMap::from([
            ("n1.json".into(), 5),
            ("s00001.json".into(), 4),
        ]));
        assert_eq!(after.since(&before, &["n1".into()]), (3, 4));
        assert_eq!(after.total_since(&before), 7);
    }
}
