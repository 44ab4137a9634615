//! WireGuard (x25519) key material and its on-disk persistence.
//!
//! * [`PublicKey`] is a plain 32-byte value: it prints and parses as standard base64 (the
//!   format of `wg` and of node records) and can render lowercase hex for the WireGuard UAPI.
//! * [`PrivateKey`] wraps an [`x25519_dalek::StaticSecret`]; its `Debug` output is redacted.
//! * [`load_or_generate`] gives a node a stable identity: the key lives in
//!   `<state_dir>/`[`KEY_FILE`] as base64 plus a newline, mode `0600`. An existing file is
//!   never regenerated or overwritten, even when it is corrupt (that is an error the operator
//!   has to look at: silently replacing the key would cut the node off from every peer).
//!   New keys are written atomically by [`write_key_atomic`].

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand_core::OsRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Name of the private key file inside the state directory.
pub const KEY_FILE: &str = "private.key";
/// The key file of the node's second key slot (key rotation), next to [`KEY_FILE`].
pub const SECOND_KEY_FILE: &str = "private-2.key";

/// Errors from parsing, loading or storing keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not valid standard base64.
    #[error("key is not valid base64")]
    InvalidBase64(#[source] base64::DecodeError),
    /// The decoded key does not have exactly 32 bytes.
    #[error("key has {len} bytes, expected 32")]
    InvalidLength {
        /// Number of decoded bytes.
        len: usize,
    },
    /// Creating the state directory failed.
    #[error("creating key directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading an existing key file failed.
    #[error("reading key file {path}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// An existing key file does not contain a valid key. It is left untouched.
    #[error(
        "key file {path} is corrupt: {reason} (refusing to replace it; fix or remove it by hand)"
    )]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its content.
        reason: String,
    },
    /// Creating, writing or syncing the temporary key file failed.
    #[error("writing key file {path}")]
    Write {
        /// The file being written (the temporary file).
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// Renaming the temporary file over the key file failed.
    #[error("renaming {from} to key file {path}")]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The key file.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// Syncing the directory after the rename failed.
    #[error("syncing directory {path} after writing the key file")]
    SyncDir {
        /// The directory.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
}

/// Decodes standard base64 into exactly 32 bytes.
fn decode_32(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD.decode(text).map_err(KeyError::InvalidBase64)?;
    let len = bytes.len();
    <[u8; 32]>::try_from(bytes).map_err(|_| KeyError::InvalidLength { len })
}

/// A WireGuard public key (32 bytes, printed as standard base64).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex (64 characters), the encoding of the WireGuard UAPI.
    pub fn to_hex(&self) -> String {
        use fmt::Write as _;
        let mut out = String::with_capacity(64);
        for b in self.0 {
            // Writing into a String cannot fail.
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// Whether every byte is zero (never a usable key; WireGuard treats it as "no key").
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_32(s).map(Self)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A WireGuard private key. `Debug` never prints the secret.
#[derive(Clone)]
pub struct PrivateKey(x25519_dalek::StaticSecret);

impl PrivateKey {
    /// Generates a fresh key from the operating system's RNG.
    pub fn generate() -> Self {
        Self(x25519_dalek::StaticSecret::random_from_rng(OsRng))
    }

    /// Derives the matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// The raw secret bytes (as stored; clamping happens at use).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Wraps raw secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(x25519_dalek::StaticSecret::from(bytes))
    }

    /// Standard base64 of the secret (the format of `wg genkey`).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.to_bytes())
    }

    /// Parses standard base64 of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_32(text).map(Self::from_bytes)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// Where the key returned by [`load_or_generate`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Read from an existing key file.
    Loaded,
    /// Freshly generated and written to the key file.
    Generated,
}

/// Loads `<state_dir>/private.key`, or generates and stores a new key if the file is missing.
///
/// The state directory is created with mode `0700` when absent. An existing file is never
/// replaced: unreadable → [`KeyError::Read`], invalid content → [`KeyError::Corrupt`]. A key
/// file with permissions looser than `0600` is tightened to `0600` (with a warning).
pub fn load_or_generate(state_dir: &Path) -> Result<(PrivateKey, KeyOrigin), KeyError> {
    load_or_generate_file(state_dir, KEY_FILE)
}

/// [`load_or_generate`] for the key file `file_name` in `state_dir` (e.g. [`SECOND_KEY_FILE`]).
pub fn load_or_generate_file(
    state_dir: &Path,
    file_name: &str,
) -> Result<(PrivateKey, KeyOrigin), KeyError> {
    if !state_dir.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| KeyError::CreateDir {
                path: state_dir.to_path_buf(),
                source,
            })?;
    }
    let path = state_dir.join(file_name);
    match fs::read(&path) {
        Ok(content) => {
            let key = parse_key_file(&path, &content)?;
            tighten_mode(&path);
            tracing::debug!(path = %path.display(), public_key = %key.public_key(), "loaded private key");
            Ok((key, KeyOrigin::Loaded))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = PrivateKey::generate();
            write_key_atomic(&path, &key)?;
            tracing::info!(path = %path.display(), public_key = %key.public_key(), "generated new private key");
            Ok((key, KeyOrigin::Generated))
        }
        Err(source) => Err(KeyError::Read { path, source }),
    }
}

/// Validates key file content: base64 of 32 bytes (surrounding whitespace allowed), not all zero.
fn parse_key_file(path: &Path, content: &[u8]) -> Result<PrivateKey, KeyError> {
    let corrupt = |reason: String| KeyError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::str::from_utf8(content).map_err(|_| corrupt("not UTF-8 text".into()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(corrupt("file is empty".into()));
    }
    let bytes = decode_32(text).map_err(|e| match e {
        KeyError::InvalidLength { len } => corrupt(format!("decodes to {len} bytes, expected 32")),
        _ => corrupt("not valid base64".into()),
    })?;
    if bytes == [0; 32] {
        return Err(corrupt("key is all zeros".into()));
    }
    Ok(PrivateKey::from_bytes(bytes))
}

/// Sets the key file's mode to 0600 if group/other have any access. Never fails.
fn tighten_mode(path: &Path) {
    let mode = match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o777,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot stat key file to check its mode");
            return;
        }
    };
    if mode & 0o077 == 0 {
        return;
    }
    match fs::set_permissions(path, fs::Permissions::from_mode(0o600)) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            old_mode = format_args!("{mode:04o}"),
            "key file permissions were too open; changed to 0600"
        ),
        Err(e) => tracing::warn!(
            path = %path.display(),
            old_mode = format_args!("{mode:04o}"),
            error = %e,
            "key file permissions are too open and could not be changed to 0600"
        ),
    }
}

/// Per-process counter so concurrent writers in one process never share a temp file.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `key` to `path` atomically and durably, with mode 0600 from the start.
///
/// A temporary file `.<file name>.tmp-<pid>-<n>` in the same directory is created with mode
/// `0600`, written, `fsync`ed and renamed over `path`; then the directory is `fsync`ed. This
/// overwrites an existing `path` (key rotation uses it deliberately).
pub fn write_key_atomic(path: &Path, key: &PrivateKey) -> Result<(), KeyError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| KEY_FILE.to_string());
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let write_err = |source: io::Error| KeyError::Write {
        path: tmp.clone(),
        source,
    };
    // A stale temp file (e.g. same pid in a restarted container) may have any mode: remove it
    // so that `create_new` guarantees a fresh 0600 file.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err(e)),
    }
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        let mut content = key.to_base64();
        content.push('\n');
        file.write_all(content.as_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        drop(file);
        fs::rename(&tmp, path).map_err(|source| KeyError::Rename {
            from: tmp.clone(),
            path: path.to_path_buf(),
            source,
        })
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| KeyError::SyncDir { path: dir, source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generate_then_reload_gives_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (k1, o1) = load_or_generate(&state).unwrap();
        assert_eq!(o1, KeyOrigin::Generated);
        let (k2, o2) = load_or_generate(&state).unwrap();
        assert_eq!(o2, KeyOrigin::Loaded);
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        assert_eq!(k1.public_key(), k2.public_key());
        let content = fs::read_to_string(state.join(KEY_FILE)).unwrap();
        assert_eq!(content, format!("{}\n", k1.to_base64()));
    }

    #[test]
    fn file_and_dir_modes() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b");
        load_or_generate(&state).unwrap();
        assert_eq!(mode_of(&state.join(KEY_FILE)), 0o600);
        assert_eq!(mode_of(&state), 0o700);
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE)]);
    }

    #[test]
    fn loose_mode_is_tightened_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, _) = load_or_generate(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let (k2, origin) = load_or_generate(dir.path()).unwrap();
        assert_eq!(origin, KeyOrigin::Loaded);
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        assert_eq!(mode_of(&path), 0o600);
    }

    #[test]
    fn whitespace_around_key_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate();
        let path = dir.path().join(KEY_FILE);
        fs::write(&path, format!("  {}\r\n\n", key.to_base64())).unwrap();
        let (loaded, origin) = load_or_generate(dir.path()).unwrap();
        assert_eq!(origin, KeyOrigin::Loaded);
        assert_eq!(loaded.to_bytes(), key.to_bytes());
    }

    #[test]
    fn corrupt_files_are_rejected_and_untouched() {
        let short = STANDARD.encode([7u8; 31]);
        let zeros = STANDARD.encode([0u8; 32]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", b"this is not a key!!\n".to_vec()),
            ("wrong length", format!("{short}\n").into_bytes()),
            ("empty", Vec::new()),
            ("whitespace only", b"  \n".to_vec()),
            ("binary", vec![0xff, 0xfe, 0x00, 0x01]),
            ("all zero", format!("{zeros}\n").into_bytes()),
        ];
        for (what, content) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(KEY_FILE);
            fs::write(&path, &content).unwrap();
            let err = load_or_generate(dir.path()).unwrap_err();
            assert!(
                matches!(&err, KeyError::Corrupt { path: p, .. } if p == &path),
                "{what}: {err:?}"
            );
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{what}: message must name the path: {err}"
            );
            assert_eq!(fs::read(&path).unwrap(), content, "{what}: file modified");
        }
    }

    #[test]
    fn unreadable_key_file_is_read_error() {
        // A directory in place of the key file cannot be read as a file, even as root.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::create_dir(&path).unwrap();
        let err = load_or_generate(dir.path()).unwrap_err();
        assert!(
            matches!(&err, KeyError::Read { path: p, .. } if p == &path),
            "{err:?}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(path.is_dir());
    }

    #[test]
    fn write_key_atomic_replaces_and_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        write_key_atomic(&path, &a).unwrap();
        write_key_atomic(&path, &b).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap().trim(), b.to_base64());
        assert_eq!(mode_of(&path), 0o600);
    }

    #[test]
    fn write_key_atomic_error_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("k");
        let err = write_key_atomic(&path, &PrivateKey::generate()).unwrap_err();
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }

    #[test]
    fn base64_round_trips() {
        let key = PrivateKey::generate();
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        let back = PrivateKey::from_base64(&text).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());

        let public = key.public_key();
        let text = public.to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(format!("{public:?}"), text);
        assert_eq!(text.parse::<PublicKey>().unwrap(), public);
    }

    #[test]
    fn public_key_parse_errors() {
        assert!(matches!(
            "not base64!".parse::<PublicKey>(),
            Err(KeyError::InvalidBase64(_))
        ));
        assert!(matches!(
            STANDARD.encode([1u8; 16]).parse::<PublicKey>(),
            Err(KeyError::InvalidLength { len: 16 })
        ));
        assert!(matches!(
            STANDARD.encode([1u8; 33]).parse::<PublicKey>(),
            Err(KeyError::InvalidLength { len: 33 })
        ));
        assert!(matches!(
            PrivateKey::from_base64(&STANDARD.encode([1u8; 31])),
            Err(KeyError::InvalidLength { len: 31 })
        ));
    }

    #[test]
    fn public_key_serde_is_base64_string() {
        let key = PublicKey::from_bytes([0xab; 32]);
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{}\"", STANDARD.encode([0xab; 32])));
        let back: PublicKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, key);
        assert!(serde_json::from_str::<PublicKey>("\"AAAA\"").is_err());
        assert!(serde_json::from_str::<PublicKey>("42").is_err());
    }

    #[test]
    fn hex_is_lowercase_64_chars() {
        let mut bytes = [0u8; 32];
        bytes[0] = 0xAB;
        bytes[31] = 0x0f;
        let hex = PublicKey::from_bytes(bytes).to_hex();
        assert_eq!(hex.len(), 64);
        assert!(hex.starts_with("ab00"));
        assert!(hex.ends_with("000f"));
        assert_eq!(hex, hex.to_lowercase());
    }

    #[test]
    fn public_key_derivation_matches_x25519() {
        // RFC 7748 section 6.1 test vector (Alice): the scalar is clamped on use, so the
        // derived public key must match the RFC value exactly.
        let secret: [u8; 32] = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let expected_hex = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
        let key = PrivateKey::from_bytes(secret);
        assert_eq!(key.public_key().to_hex(), expected_hex);
        assert_eq!(
            key.public_key().as_bytes(),
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret)).as_bytes()
        );
        // Random keys agree with x25519-dalek too.
        let random = PrivateKey::generate();
        let dalek = x25519_dalek::StaticSecret::from(random.to_bytes());
        assert_eq!(
            random.public_key().as_bytes(),
            x25519_dalek::PublicKey::from(&dalek).as_bytes()
        );
    }

    #[test]
    fn private_key_debug_is_redacted() {
        let key = PrivateKey::generate();
        let dbg = format!("{key:?}");
        assert_eq!(dbg, "PrivateKey(<redacted>)");
        assert!(!dbg.contains(&key.to_base64()));
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            PrivateKey::generate().to_bytes(),
            PrivateKey::generate().to_bytes()
        );
    }
}
