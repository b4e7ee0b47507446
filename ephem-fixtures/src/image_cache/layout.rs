//! The cache on disk: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`), written so that concurrent runs never see half a
//! blob or half an index.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The annotation naming the reference a manifest was cached for.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// When a run last used the entry (RFC 3339), for `ls` and `prune`.
pub const LAST_USED: &str = "dev.cargo-ephem.last-used";
/// The digest the tag resolved to at the registry (an index's, for
/// multi-platform images), which `images update` compares against.
pub const TAG_DIGEST: &str = "dev.cargo-ephem.tag-digest";
/// Bytes of the manifest, its config and its layers, for `ls` and `--max-size`.
pub const TOTAL_SIZE: &str = "dev.cargo-ephem.size";

/// The `oci-layout` file's content.
const OCI_LAYOUT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";

/// One manifest descriptor of `index.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The manifest's media type, served as its Content-Type.
    pub media_type: String,
    /// `sha256:<hex>` of the manifest's bytes.
    pub digest: String,
    /// Length of the manifest in bytes.
    pub size: u64,
    /// [`REF_NAME`], [`LAST_USED`], [`TAG_DIGEST`], [`TOTAL_SIZE`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The reference this entry was cached for.
    pub fn reference(&self) -> Option<&str> {
        self.annotations.get(REF_NAME).map(String::as_str)
    }
}

/// `index.json`: one descriptor per cached reference.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// `application/vnd.oci.image.index.v1+json`.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The cached manifests.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index {
            schema_version: 2,
            media_type: Some("application/vnd.oci.image.index.v1+json".to_owned()),
            manifests: Vec::new(),
        }
    }

    /// The entry cached for `reference`.
    pub fn get(&self, reference: &str) -> Option<&Descriptor> {
        self.manifests
            .iter()
            .find(|d| d.reference() == Some(reference))
    }

    /// Adds or replaces the entry for `descriptor`'s reference.
    pub fn put(&mut self, descriptor: Descriptor) {
        let reference = descriptor.reference().map(str::to_owned);
        self.manifests
            .retain(|d| reference.is_none() || d.reference() != reference.as_deref());
        self.manifests.push(descriptor);
        self.manifests
            .sort_by(|a, b| a.reference().cmp(&b.reference()));
    }
}

/// A `sha256:<hex>` digest, checked.
pub fn hex_of(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(hex)
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running sha256 over streamed bytes.
#[derive(Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// `sha256:<hex>` of everything fed.
    pub fn finish(self) -> String {
        format!("sha256:{}", hex(&self.0.finalize()))
    }
}

/// The folder of a cache and the paths inside it.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Creates the layout's files if missing; fails when the folder cannot
    /// be created or written. A folder created here (and any missing
    /// parent) is its owner's alone (0700): images pulled with private
    /// credentials land in it. An existing folder's mode is left alone.
    pub fn create(root: &Path) -> io::Result<Layout> {
        if !root.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)?;
        }
        std::fs::create_dir_all(root.join("blobs/sha256"))?;
        let layout = Layout {
            root: root.to_owned(),
        };
        // A probe, so that an unwritable folder is found before any pull.
        let probe = layout.temp_path("probe");
        File::create(&probe)?;
        let _ = std::fs::remove_file(&probe);
        let marker = root.join("oci-layout");
        if !marker.exists() {
            write_atomic(&layout, &marker, OCI_LAYOUT.as_bytes())?;
        }
        Ok(layout)
    }

    /// The cache's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `cache.lock`: held shared by every run while it fills or restores,
    /// and exclusively by prune while it reads the index and deletes.
    pub fn use_lock_path(&self) -> PathBuf {
        self.root.join("cache.lock")
    }

    /// Where the blob with `digest` lives, `None` for a malformed digest.
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        hex_of(digest).map(|hex| self.root.join("blobs/sha256").join(hex))
    }

    /// A fresh temporary name beside the blobs: `<name>.tmp-<pid>-<rand>`.
    pub fn temp_path(&self, name: &str) -> PathBuf {
        let mut rand = [0u8; 6];
        let _ = getrandom::fill(&mut rand);
        self.root.join("blobs/sha256").join(format!(
            "{name}.tmp-{}-{}",
            std::process::id(),
            hex(&rand)
        ))
    }

    /// Reads `index.json`; a missing file is an empty index, an unparsable
    /// one an error (the caller discards it).
    pub fn read_index(&self) -> Result<Index, String> {
        let path = self.root.join("index.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is not an OCI index ({e})", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::new()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Replaces `index.json` at once (temporary file, then rename).
    pub fn write_index(&self, index: &Index) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(index).map_err(io::Error::other)?;
        write_atomic(self, &self.root.join("index.json"), &bytes)
    }

    /// Runs `change` on the index under an exclusive lock, so that two runs
    /// recording entries at once both keep theirs; an unparsable index is
    /// replaced by an empty one (`warn` is told).
    pub fn update_index<T>(
        &self,
        warn: impl FnOnce(String),
        change: impl FnOnce(&mut Index) -> T,
    ) -> io::Result<T> {
        let lock = self.lock_index()?;
        self.update_index_locked(&lock, warn, change)
    }

    /// The exclusive lock on `index.lock` that [`update_index`](Self::update_index)
    /// takes, for a caller that must keep the index still for longer (prune).
    pub fn lock_index(&self) -> io::Result<FileLock> {
        FileLock::acquire(&self.root.join("index.lock"), Mode::Exclusive)
    }

    /// [`update_index`](Self::update_index) under a lock the caller holds.
    pub fn update_index_locked<T>(
        &self,
        _lock: &FileLock,
        warn: impl FnOnce(String),
        change: impl FnOnce(&mut Index) -> T,
    ) -> io::Result<T> {
        let mut index = match self.read_index() {
            Ok(index) => index,
            Err(reason) => {
                warn(format!(
                    "{reason}; discarding it (the images will be fetched again)"
                ));
                Index::new()
            }
        };
        let out = change(&mut index);
        self.write_index(&index)?;
        Ok(out)
    }

    /// Whether the blob exists and hashes to `digest`; a blob that does not
    /// is removed, so the next fill fetches it again.
    pub fn verify_blob(&self, digest: &str) -> BlobState {
        let Some(path) = self.blob_path(digest) else {
            return BlobState::Missing;
        };
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(_) => return BlobState::Missing,
        };
        let mut hasher = Hasher::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(_) => return BlobState::Missing,
            }
        }
        if hasher.finish() == digest {
            return BlobState::Good;
        }
        // Only the file hashed: another run may have renamed a good copy
        // over it meanwhile, and that one stays.
        use std::os::unix::fs::MetadataExt;
        let same =
            |a: &std::fs::Metadata, b: &std::fs::Metadata| a.ino() == b.ino() && a.dev() == b.dev();
        if let (Ok(hashed), Ok(now)) = (file.metadata(), std::fs::metadata(&path)) {
            if same(&hashed, &now) {
                let _ = std::fs::remove_file(&path);
            }
        }
        BlobState::Corrupt
    }

    /// Stores `bytes` (already verified against `digest`) unless present.
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self
            .blob_path(digest)
            .ok_or_else(|| io::Error::other(format!("malformed digest {digest}")))?;
        if path.exists() {
            return Ok(());
        }
        write_atomic(self, &path, bytes)
    }

    /// When a blob was last modified (touched on use), for `prune`.
    pub fn blob_mtime(&self, digest: &str) -> Option<SystemTime> {
        std::fs::metadata(self.blob_path(digest)?)
            .and_then(|m| m.modified())
            .ok()
    }
}

/// What [`Layout::verify_blob`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobState {
    /// Present and matching its digest.
    Good,
    /// Not there.
    Missing,
    /// There but wrong (truncated, altered): removed.
    Corrupt,
}

/// Writes `bytes` to a temporary file beside `path` and renames it over.
fn write_atomic(layout: &Layout, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = layout.temp_path(&name);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// How a [`FileLock`] is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Many holders at once (runs filling or restoring).
    Shared,
    /// One holder, no shared ones (prune).
    Exclusive,
}

/// A `flock` on a file of the cache (std's `File::lock`), released when
/// the file closes on drop.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Waits for the lock on `path`, creating the file if needed.
    pub fn acquire(path: &Path, mode: Mode) -> io::Result<FileLock> {
        let file = open_lock_file(path)?;
        match mode {
            Mode::Shared => file.lock_shared()?,
            Mode::Exclusive => file.lock()?,
        }
        Ok(FileLock { _file: file })
    }

    /// The lock if it is free now, `None` when another holder has it.
    pub fn try_acquire(path: &Path, mode: Mode) -> io::Result<Option<FileLock>> {
        let file = open_lock_file(path)?;
        let attempt = match mode {
            Mode::Shared => file.try_lock_shared(),
            Mode::Exclusive => file.try_lock(),
        };
        match attempt {
            Ok(()) => Ok(Some(FileLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Whether `path` still names the locked file (not removed, nor
    /// replaced by another since it was opened): a lock on a file its
    /// holder removed guards nothing.
    pub fn is_at(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self._file.metadata(), std::fs::metadata(path)) {
            (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
            _ => false,
        }
    }
}

/// Opens the lock file read-only when it exists (`flock` needs no write
/// access, and in a cache a group shares another member may own it).
fn open_lock_file(path: &Path) -> io::Result<File> {
    match File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path),
        opened => opened,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips_and_keeps_one_entry_per_reference() {
        let mut index = Index::new();
        let entry = |digest: &str| Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: digest.into(),
            size: 3,
            annotations: [(REF_NAME.to_owned(), "redis:7".to_owned())].into(),
        };
        index.put(entry("sha256:aa"));
        index.put(entry("sha256:bb"));
        assert_eq!(index.manifests.len(), 1);
        let text = serde_json::to_string(&index).unwrap();
        assert!(text.contains("\"schemaVersion\":2"), "{text}");
        assert!(text.contains("\"mediaType\""), "{text}");
        let back: Index = serde_json::from_str(&text).unwrap();
        assert_eq!(back, index);
        assert_eq!(back.get("redis:7").unwrap().digest, "sha256:bb");
    }

    #[test]
    fn blobs_are_verified_and_bad_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        let digest = digest_of(b"hello");
        layout.put_blob(&digest, b"hello").unwrap();
        assert_eq!(layout.verify_blob(&digest), BlobState::Good);
        std::fs::write(layout.blob_path(&digest).unwrap(), b"hel").unwrap();
        assert_eq!(layout.verify_blob(&digest), BlobState::Corrupt);
        assert!(!layout.blob_path(&digest).unwrap().exists());
        assert_eq!(layout.verify_blob(&digest), BlobState::Missing);
        assert!(hex_of("sha256:XYZ").is_none());
        assert!(hex_of(&digest).is_some());
        let oci = std::fs::read_to_string(dir.path().join("oci-layout")).unwrap();
        assert_eq!(oci, OCI_LAYOUT);
    }

    #[test]
    fn shared_holders_keep_the_exclusive_one_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.lock");
        let first = FileLock::try_acquire(&path, Mode::Shared).unwrap();
        let second = FileLock::try_acquire(&path, Mode::Shared).unwrap();
        assert!(first.is_some() && second.is_some());
        assert!(FileLock::try_acquire(&path, Mode::Exclusive)
            .unwrap()
            .is_none());
        drop((first, second));
        let exclusive = FileLock::try_acquire(&path, Mode::Exclusive).unwrap();
        assert!(exclusive.is_some());
        assert!(FileLock::try_acquire(&path, Mode::Shared)
            .unwrap()
            .is_none());
    }

    #[test]
    fn an_unparsable_index_is_discarded_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path()).unwrap();
        std::fs::write(dir.path().join("index.json"), b"{not json").unwrap();
        let mut warned = None;
        layout
            .update_index(|w| warned = Some(w), |index| index.manifests.len())
            .unwrap();
        assert!(warned.unwrap().contains("not an OCI index"));
        assert_eq!(layout.read_index().unwrap(), Index::new());
    }
}
