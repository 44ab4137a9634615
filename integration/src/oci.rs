//! Reading an OCI image layout (what `scripts/build-image.sh` writes) the way a container
//! runtime does, for the image tests: the index, the manifest of a tag and its config, every
//! blob checked against its digest and size, and the layers unpacked in order into a root
//! directory with their whiteouts applied. Which entries are whiteouts is decided purely
//! ([`whiteout`]); unpacking runs the host's `tar` and `gzip` (test infrastructure).

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context as _};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// The media type of an image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The media type of a gzip-compressed layer.
pub const GZIP_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The annotation naming a manifest's tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor (media type, digest, size).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Length in bytes.
    pub size: u64,
    /// Annotations (the tag of an index entry).
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// `index.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// One manifest per tag.
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The image configuration.
    pub config: Descriptor,
    /// The layers, lowest first.
    pub layers: Vec<Descriptor>,
}

/// The part of an image configuration a runtime starts the container with.
#[derive(Debug, Deserialize)]
pub struct ImageConfig {
    /// `amd64`, `arm64`…
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// Entrypoint, environment, user…
    pub config: RuntimeConfig,
    /// The uncompressed layers' digests.
    pub rootfs: RootFs,
}

/// `config` of an image configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    /// The command a container runs unless its pod says otherwise.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `NAME=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// User the container runs as.
    #[serde(default)]
    pub user: String,
}

/// `rootfs` of an image configuration.
#[derive(Debug, Deserialize)]
pub struct RootFs {
    /// `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// sha256 of every layer's uncompressed tar, lowest first.
    pub diff_ids: Vec<String>,
}

/// An OCI image layout on disk.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout in `dir`; checks its `oci-layout` marker.
    pub fn open(dir: &Path) -> anyhow::Result<Layout> {
        let marker: serde_json::Value = serde_json::from_slice(
            &fs::read(dir.join("oci-layout"))
                .with_context(|| format!("{}: no oci-layout file", dir.display()))?,
        )
        .context("parsing oci-layout")?;
        ensure!(
            marker["imageLayoutVersion"] == "1.0.0",
            "unknown imageLayoutVersion: {marker}"
        );
        Ok(Layout {
            dir: dir.to_path_buf(),
        })
    }

    /// `index.json`.
    pub fn index(&self) -> anyhow::Result<Index> {
        let text = fs::read(self.dir.join("index.json")).context("reading index.json")?;
        serde_json::from_slice(&text).context("parsing index.json")
    }

    /// A blob's path, from its digest.
    pub fn blob_path(&self, digest: &str) -> anyhow::Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("digest {digest}: only sha256 is expected"))?;
        ensure!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "digest {digest} is not a sha256"
        );
        Ok(self.dir.join("blobs/sha256").join(hex))
    }

    /// Check a blob against its descriptor: its size and sha256.
    pub fn verify_blob(&self, desc: &Descriptor) -> anyhow::Result<()> {
        let path = self.blob_path(&desc.digest)?;
        let mut file =
            fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let (digest, size) = sha256_of(&mut file)?;
        ensure!(
            size == desc.size,
            "blob {}: {size} bytes, the descriptor says {}",
            desc.digest,
            desc.size
        );
        ensure!(
            digest == desc.digest,
            "blob {} hashes to {digest}",
            desc.digest
        );
        Ok(())
    }

    /// A small JSON blob, verified, parsed.
    pub fn json_blob<T: serde::de::DeserializeOwned>(
        &self,
        desc: &Descriptor,
    ) -> anyhow::Result<T> {
        self.verify_blob(desc)?;
        let bytes = fs::read(self.blob_path(&desc.digest)?)?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing blob {}", desc.digest))
    }

    /// The manifest tagged `tag` in the index, verified.
    pub fn manifest(&self, tag: &str) -> anyhow::Result<Manifest> {
        let index = self.index()?;
        ensure!(
            index.schema_version == 2,
            "index schemaVersion {}",
            index.schema_version
        );
        let desc = index
            .manifests
            .iter()
            .find(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(tag))
            .with_context(|| format!("no manifest tagged {tag} in index.json"))?;
        ensure!(
            desc.media_type == MANIFEST_MEDIA_TYPE,
            "{tag} is a {}, not an image manifest",
            desc.media_type
        );
        let manifest: Manifest = self.json_blob(desc)?;
        ensure!(
            manifest.schema_version == 2,
            "manifest schemaVersion {}",
            manifest.schema_version
        );
        Ok(manifest)
    }

    /// Unpack `manifest`'s layers in order into `root` as a runtime does: every blob and every
    /// uncompressed layer checked against the manifest and the config's `diff_ids`, each
    /// layer's whiteouts applied to the layers below it.
    pub fn unpack(&self, manifest: &Manifest, root: &Path) -> anyhow::Result<ImageConfig> {
        let config: ImageConfig = self.json_blob(&manifest.config)?;
        ensure!(
            config.rootfs.kind == "layers" && config.rootfs.diff_ids.len() == manifest.layers.len(),
            "the config's rootfs has {} diff_ids for {} layers",
            config.rootfs.diff_ids.len(),
            manifest.layers.len()
        );
        fs::create_dir_all(root)?;
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            ensure!(
                layer.media_type == GZIP_LAYER_MEDIA_TYPE,
                "layer {}: media type {}",
                layer.digest,
                layer.media_type
            );
            self.verify_blob(layer)?;
            let blob = self.blob_path(&layer.digest)?;
            let uncompressed = gunzip_sha256(&blob)?;
            ensure!(
                &uncompressed == diff_id,
                "layer {} uncompresses to {uncompressed}, the config says {diff_id}",
                layer.digest
            );
            for entry in tar_entries(&blob)? {
                match whiteout(&entry)? {
                    Some(Whiteout::Remove(path)) => remove_any(&root.join(path))?,
                    Some(Whiteout::Opaque(dir)) => clear_dir(&root.join(dir))?,
                    None => {}
                }
            }
            let out = Command::new("tar")
                .arg("-xzf")
                .arg(&blob)
                .arg("-C")
                .arg(root)
                .args(["--numeric-owner", "--same-permissions", "--exclude=.wh.*"])
                .output()
                .context("running tar")?;
            if !out.status.success() {
                bail!(
                    "unpacking layer {}: {}",
                    layer.digest,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(config)
    }
}

/// What a whiteout entry of a layer removes from the layers below.
#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout {
    /// `DIR/.wh.NAME`: `DIR/NAME` is removed.
    Remove(PathBuf),
    /// `DIR/.wh..wh..opq`: everything in `DIR` from lower layers is removed.
    Opaque(PathBuf),
}

/// The whiteout a layer entry (a path as `tar -t` lists it) stands for, if it is one; entries
/// that would escape the root are refused.
pub fn whiteout(entry: &str) -> anyhow::Result<Option<Whiteout>> {
    let path = Path::new(entry.trim_end_matches('/'));
    let relative: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        bail!("layer entry {entry:?} leaves the root");
    }
    let Some(name) = relative.file_name().and_then(|n| n.to_str()) else {
        return Ok(None);
    };
    let parent = relative.parent().unwrap_or(Path::new("")).to_path_buf();
    Ok(if name == ".wh..wh..opq" {
        Some(Whiteout::Opaque(parent))
    } else if let Some(hidden) = name.strip_prefix(".wh.") {
        ensure!(
            !hidden.is_empty(),
            "layer entry {entry:?}: whiteout of nothing"
        );
        Some(Whiteout::Remove(parent.join(hidden)))
    } else {
        None
    })
}

fn remove_any(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path)?,
        Ok(_) => fs::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("whiteout of {}", path.display())),
    }
    Ok(())
}

fn clear_dir(dir: &Path) -> anyhow::Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        remove_any(&entry?.path())?;
    }
    Ok(())
}

/// `sha256:<hex>` and the length of everything `reader` yields.
fn sha256_of(reader: &mut impl std::io::Read) -> anyhow::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((format!("sha256:{hex}"), total))
}

/// The sha256 of a gzip file's uncompressed content (`gzip -dc`).
fn gunzip_sha256(path: &Path) -> anyhow::Result<String> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .context("running gzip")?;
    let mut stdout = child.stdout.take().context("gzip stdout")?;
    let (digest, _) = sha256_of(&mut stdout)?;
    ensure!(
        child.wait()?.success(),
        "gzip -dc {} failed",
        path.display()
    );
    Ok(digest)
}

/// The entries of a gzip tar, as `tar -tzf` lists them.
fn tar_entries(path: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("tar")
        .arg("-tzf")
        .arg(path)
        .output()
        .context("running tar")?;
    ensure!(
        out.status.success(),
        "listing {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// Write `layers` (tar files, lowest first) as a one-tag OCI layout in `dir`, for tests of
/// [`Layout::unpack`] itself.
pub fn write_layout(dir: &Path, tag: &str, layers: &[PathBuf]) -> anyhow::Result<()> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> anyhow::Result<(String, u64)> {
        let (digest, size) = sha256_of(&mut &bytes[..])?;
        fs::File::create(blobs.join(&digest["sha256:".len()..]))?.write_all(bytes)?;
        Ok((digest, size))
    };
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        let raw = fs::read(tar)?;
        diff_ids.push(sha256_of(&mut &raw[..])?.0);
        let mut child = Command::new("gzip")
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().context("gzip stdin")?;
        let writer = std::thread::spawn(move || stdin.write_all(&raw));
        let mut gz = Vec::new();
        child
            .stdout
            .take()
            .context("gzip stdout")?
            .read_to_end(&mut gz)?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("gzip writer panicked"))??;
        ensure!(child.wait()?.success(), "gzip failed");
        let (digest, size) = put(&gz)?;
        layer_descs.push(serde_json::json!({
            "mediaType": GZIP_LAYER_MEDIA_TYPE, "digest": digest, "size": size}));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (cdigest, csize) = put(config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cdigest, "size": csize},
        "layers": layer_descs});
    let (mdigest, msize) = put(manifest.to_string().as_bytes())?;
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": MANIFEST_MEDIA_TYPE, "digest": mdigest, "size": msize,
        "annotations": {REF_NAME: tag}}]});
    fs::write(dir.join("index.json"), index.to_string())?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_name_what_they_hide_and_paths_stay_in_the_root() {
        assert_eq!(
            whiteout("./etc/.wh.motd").unwrap(),
            Some(Whiteout::Remove("etc/motd".into()))
        );
        assert_eq!(
            whiteout("usr/share/doc/.wh..wh..opq").unwrap(),
            Some(Whiteout::Opaque("usr/share/doc".into()))
        );
        assert_eq!(
            whiteout(".wh.top").unwrap(),
            Some(Whiteout::Remove("top".into()))
        );
        assert_eq!(whiteout("usr/local/bin/meshd").unwrap(), None);
        assert_eq!(whiteout("./").unwrap(), None);
        assert!(whiteout("../etc/.wh.passwd").is_err());
        assert!(whiteout("a/../../.wh.x").is_err());
    }
}
