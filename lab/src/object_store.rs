//! The Kubernetes objects of a lab in its directory registry (contract 5): one object per
//! file, as `kubectl get -o json` prints it, under `<registry>/objects/`:
//! `namespaces/<name>.json`, `pods/<namespace>/<name>.json`,
//! `networkpolicies/<namespace>/<name>.json`. Written atomically (a temporary dotfile in the
//! same directory, then rename), deleted by removing the file. meshd's node watcher ignores
//! subdirectories of the registry, so the objects never look like node records.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;

use crate::objects::{Kind, ObjectRef};
use crate::state::Paths;

/// A lab's object files.
pub(crate) struct ObjectStore {
    /// `<registry>/objects`.
    root: PathBuf,
}

fn kind_dir(kind: Kind) -> &'static str {
    match kind {
        Kind::Namespace => "namespaces",
        Kind::Pod => "pods",
        Kind::NetworkPolicy => "networkpolicies",
    }
}

impl ObjectStore {
    pub(crate) fn new(paths: &Paths) -> Self {
        ObjectStore {
            root: paths.registry().join("objects"),
        }
    }

    /// Where `object` lives.
    pub(crate) fn path(&self, object: &ObjectRef) -> PathBuf {
        let dir = self.root.join(kind_dir(object.kind));
        let dir = if object.kind == Kind::Namespace {
            dir
        } else {
            dir.join(&object.namespace)
        };
        dir.join(format!("{}.json", object.name))
    }

    /// The stored object, if any.
    pub(crate) fn read(&self, object: &ObjectRef) -> anyhow::Result<Option<Value>> {
        read_json(&self.path(object))
    }

    /// Store `value` as `object` unless the file already holds exactly it; whether it wrote.
    pub(crate) fn write(&self, object: &ObjectRef, value: &Value) -> anyhow::Result<bool> {
        if self.read(object)?.as_ref() == Some(value) {
            return Ok(false);
        }
        let path = self.path(object);
        let dir = path.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!(".{}.json.tmp", object.name));
        let mut text = serde_json::to_vec_pretty(value)?;
        text.push(b'\n');
        fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(true)
    }

    /// Remove `object`'s file; whether it existed.
    pub(crate) fn remove(&self, object: &ObjectRef) -> anyhow::Result<bool> {
        let path = self.path(object);
        match fs::remove_file(&path) {
            // An emptied namespace directory stays: a watcher of it keeps its watch.
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }

    /// Every stored object of `kind`, sorted by namespace and name.
    pub(crate) fn list(&self, kind: Kind) -> anyhow::Result<Vec<(ObjectRef, Value)>> {
        let dir = self.root.join(kind_dir(kind));
        let mut files = Vec::new();
        if kind == Kind::Namespace {
            files.extend(json_files(&dir)?.into_iter().map(|f| (String::new(), f)));
        } else {
            for ns in subdirs(&dir)? {
                let ns_dir = dir.join(&ns);
                files.extend(json_files(&ns_dir)?.into_iter().map(|f| (ns.clone(), f)));
            }
        }
        let mut out = Vec::new();
        for (namespace, file) in files {
            let Some(name) = file.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            if let Some(value) = read_json(&file)? {
                out.push((
                    ObjectRef {
                        kind,
                        namespace,
                        name,
                    },
                    value,
                ));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn read_json(path: &Path) -> anyhow::Result<Option<Value>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The `*.json` files of `dir` (not dotfiles: those are writes in progress).
fn json_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in read_dir(dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && name.ends_with(".json") {
            out.push(entry.path());
        }
    }
    Ok(out)
}

fn subdirs(dir: &Path) -> anyhow::Result<Vec<String>> {
    Ok(read_dir(dir)?
        .into_iter()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

fn read_dir(dir: &Path) -> anyhow::Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd.flatten().collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}
