//! The warm image cache: images kept as an OCI image layout on disk (what CI
//! caches between runs), filled by fetching from the registry ourselves, and
//! put back into the daemon by serving the registry API on loopback.
//!
//! Blobs are stored byte for byte as the registry served them, so image ids
//! do not change; shared layers are stored once. Tags are resolved on the
//! first fill and the digest recorded in `index.json`, so later runs make no
//! registry request at all (`cargo ephem images update` re-resolves).

pub mod archive;
pub mod decompress;
pub mod layout;
mod prune;
pub mod registry;
pub mod serve;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::io::AsyncWriteExt;

use self::layout::{
    BlobState, Descriptor, FileLock, Hasher, Layout, Mode, LAST_USED, REF_NAME, TAG_DIGEST,
    TOTAL_SIZE,
};
pub use self::prune::{PruneRules, DEFAULT_GRACE};
use self::registry::{Endpoint, RegistryClient, RegistryError, RegistrySettings};
use crate::image_ref::ImageRef;
use crate::{EnvEvent, EventSink};

/// Layers of one image downloaded at once (as the daemon does).
const CONCURRENT_BLOBS: usize = 3;

/// Why a fill failed.
#[derive(Debug, Clone)]
pub enum CacheError {
    /// The registry could not be reached at all.
    Unreachable(String),
    /// The disk is full: the caller pulls directly instead.
    NoSpace(String),
    /// Anything else, in one line.
    Failed(String),
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheError::Unreachable(m) | CacheError::NoSpace(m) | CacheError::Failed(m) => {
                f.write_str(m)
            }
        }
    }
}

/// Whether a fill may use the digest recorded for a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolve {
    /// Use the recorded digest; ask the registry only for what is missing.
    Recorded,
    /// Ask the registry what the tag points at now (`images update`).
    Fresh,
}

/// Where a filled image's bytes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillSource {
    /// Everything was in the cache already.
    Cache,
    /// Some blobs (or the tag) came from the registry.
    Registry,
}

/// An image in the cache, ready to be served.
#[derive(Clone, Debug)]
pub struct Filled {
    /// Its `index.json` entry.
    pub descriptor: Descriptor,
    /// Where its bytes came from this time.
    pub source: FillSource,
    /// Bytes downloaded this time.
    pub downloaded: u64,
}

/// A run's shared hold on the cache (see [`ImageCache::in_use`]); released
/// on drop.
#[derive(Debug)]
pub struct InUse {
    _lock: FileLock,
}

/// One cache folder, shared by every image of a run.
pub struct ImageCache {
    layout: Layout,
    client: tokio::sync::OnceCell<Arc<RegistryClient>>,
    registry: RegistrySettings,
    events: EventSink,
    /// ENOSPC is told once per run, not per blob.
    warned_full: AtomicBool,
}

impl ImageCache {
    /// Opens (creating it if needed) the cache at `root`; the error names
    /// the folder and says why it cannot be written.
    pub fn open(root: &Path, events: EventSink) -> Result<ImageCache, String> {
        let layout = Layout::create(root).map_err(|e| {
            format!(
                "image cache {}: cannot write there ({e}); make the folder writable or point --image-cache / EPHEM_IMAGE_CACHE / [images] cache elsewhere",
                root.display()
            )
        })?;
        Ok(ImageCache {
            layout,
            client: tokio::sync::OnceCell::new(),
            registry: RegistrySettings::from_env(registry::DEFAULT_IDLE_TIMEOUT),
            events,
            warned_full: AtomicBool::new(false),
        })
    }

    /// Reaches registries this way (idle timeout, platform, credentials).
    pub fn with_registry(mut self, settings: RegistrySettings) -> Self {
        self.registry = settings;
        self
    }

    /// The cache's folder.
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// The on-disk layout, for the server and the archive writer.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Registry requests made so far by this cache.
    pub fn registry_requests(&self) -> u64 {
        self.client.get().map_or(0, |c| c.requests())
    }

    /// Holds the cache shared while a fill or restore reads and writes
    /// blobs (`cache.lock`): prune waits for every holder, so no blob a
    /// run is writing or serving vanishes under it. Waits while a prune
    /// runs.
    pub async fn in_use(&self) -> Result<InUse, CacheError> {
        let path = self.layout.use_lock_path();
        let locked = |e| self.io_error("cannot lock cache.lock", e);
        if let Some(lock) = FileLock::try_acquire(&path, Mode::Shared).map_err(locked)? {
            return Ok(InUse { _lock: lock });
        }
        self.note(format!(
            "image cache {}: waiting for `cargo ephem images prune` to finish with it",
            self.root().display()
        ));
        tokio::task::spawn_blocking(move || FileLock::acquire(&path, Mode::Shared))
            .await
            .map_err(|e| CacheError::Failed(format!("waiting for cache.lock stopped: {e}")))?
            .map(|lock| InUse { _lock: lock })
            .map_err(locked)
    }

    fn warn(&self, message: String) {
        let _ = self.events.send(EnvEvent::Warning {
            shard: None,
            message,
        });
    }

    fn note(&self, message: String) {
        let _ = self.events.send(EnvEvent::Note { message });
    }

    /// Tells once that the disk is full.
    pub fn warn_full(&self, reason: &str) {
        if !self.warned_full.swap(true, Ordering::Relaxed) {
            self.warn(format!(
                "image cache {}: disk full ({reason}); pulling from the registry directly for this run",
                self.root().display()
            ));
        }
    }

    async fn client(&self) -> Result<Arc<RegistryClient>, CacheError> {
        self.client
            .get_or_try_init(|| async {
                RegistryClient::new(self.registry.clone(), self.events.clone()).map(Arc::new)
            })
            .await
            .cloned()
            .map_err(CacheError::Failed)
    }

    /// Every entry of `index.json` (an unparsable one reads as empty, with a
    /// warning).
    pub fn entries(&self) -> Vec<Descriptor> {
        match self.layout.read_index() {
            Ok(index) => index.manifests,
            Err(reason) => {
                self.warn(format!("{reason}; it will be replaced on the next fill"));
                Vec::new()
            }
        }
    }

    /// Makes `image` complete in the cache, verified blob by blob (a corrupt
    /// one is discarded with a warning and fetched again), and records it.
    pub async fn fill(
        &self,
        image: &ImageRef,
        mirror: Option<&str>,
        resolve: Resolve,
    ) -> Result<Filled, CacheError> {
        let _in_use = self.in_use().await?;
        let reference = image.local_name();
        let recorded = self
            .layout
            .read_index()
            .ok()
            .and_then(|index| index.get(&reference).cloned());
        let at = Endpoint::of(image, mirror);
        let mut downloaded = 0;
        let mut source = FillSource::Cache;
        let (mut descriptor, fresh) = match (&recorded, resolve) {
            (Some(found), Resolve::Recorded) => (found.clone(), false),
            _ => match self.resolve(image, &at).await {
                Ok(descriptor) => {
                    source = FillSource::Registry;
                    (descriptor, true)
                }
                Err(CacheError::Unreachable(reason)) => match &recorded {
                    Some(found) => {
                        self.note(format!(
                            "{reference}: registry unreachable ({reason}); using the cached {}",
                            found.digest
                        ));
                        (found.clone(), false)
                    }
                    None => return Err(CacheError::Unreachable(reason)),
                },
                Err(e) => return Err(e),
            },
        };
        if !fresh {
            // The manifest may be missing or corrupt: fetch it by digest.
            if self.check(&reference, &descriptor.digest) != BlobState::Good {
                let manifest = self
                    .client()
                    .await?
                    .manifest(&at, &descriptor.digest)
                    .await
                    .map_err(classify)?;
                self.store(&manifest.digest, &manifest.bytes)?;
                source = FillSource::Registry;
            }
        }
        let blobs = self.manifest_blobs(&descriptor.digest)?;
        let mut missing = Vec::new();
        for (digest, size) in &blobs {
            if self.check(&reference, digest) != BlobState::Good {
                missing.push((digest.clone(), *size));
            }
        }
        if !missing.is_empty() {
            source = FillSource::Registry;
            let client = self.client().await?;
            let total: u64 = missing.iter().map(|(_, s)| s).sum();
            let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_BLOBS));
            let mut tasks = Vec::new();
            for (digest, size) in &missing {
                let job = Download {
                    size: *size,
                    layout: self.layout.clone(),
                    client: client.clone(),
                    at: at.clone(),
                    digest: digest.clone(),
                    events: self.events.clone(),
                    image: image.original().to_owned(),
                    progress: progress.clone(),
                    total,
                };
                let slots = slots.clone();
                tasks.push(tokio::spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    job.run().await
                }));
            }
            let mut first_error = None;
            for task in tasks {
                let result = task.await.unwrap_or_else(|e| {
                    Err(CacheError::Failed(format!("a download stopped: {e}")))
                });
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            downloaded = total;
        }
        let size: u64 = descriptor.size + blobs.iter().map(|(_, s)| s).sum::<u64>();
        descriptor
            .annotations
            .insert(REF_NAME.to_owned(), reference.clone());
        descriptor
            .annotations
            .insert(TOTAL_SIZE.to_owned(), size.to_string());
        descriptor
            .annotations
            .insert(LAST_USED.to_owned(), now_rfc3339());
        let entry = descriptor.clone();
        self.layout
            .update_index(|w| self.warn(w), move |index| index.put(entry))
            .map_err(|e| self.io_error("cannot write index.json", e))?;
        Ok(Filled {
            descriptor,
            source,
            downloaded,
        })
    }

    /// Asks the registry what `image`'s tag (or digest) is now, and stores
    /// the manifest (and, for a multi-platform index, the index and this
    /// platform's manifest).
    async fn resolve(&self, image: &ImageRef, at: &Endpoint) -> Result<Descriptor, CacheError> {
        let client = self.client().await?;
        let reference = image.digest().unwrap_or(image.tag());
        let top = client.manifest(at, reference).await.map_err(classify)?;
        let tag_digest = top.digest.clone();
        let manifest = if registry::manifest::is_index(&top.media_type) {
            self.store(&top.digest, &top.bytes)?;
            let platform = client.platform().await;
            let chosen = registry::platform::choose(&top.bytes, &platform)
                .map_err(|e| CacheError::Failed(format!("{image}: {e}")))?;
            client
                .manifest(at, &chosen.digest)
                .await
                .map_err(classify)?
        } else {
            top
        };
        self.store(&manifest.digest, &manifest.bytes)?;
        Ok(Descriptor {
            media_type: manifest.media_type,
            digest: manifest.digest,
            size: manifest.bytes.len() as u64,
            annotations: [(TAG_DIGEST.to_owned(), tag_digest)].into(),
        })
    }

    /// Verifies a blob, warning when a corrupt one was discarded.
    fn check(&self, reference: &str, digest: &str) -> BlobState {
        let state = self.layout.verify_blob(digest);
        if state == BlobState::Corrupt {
            self.warn(format!(
                "image cache {}: blob {digest} of {reference} does not match its digest (truncated or altered); discarded, fetching it again",
                self.root().display()
            ));
        }
        state
    }

    /// Config and layers a stored manifest names, with their sizes.
    pub fn manifest_blobs(&self, digest: &str) -> Result<Vec<(String, u64)>, CacheError> {
        let bytes = self.read_blob(digest)?;
        manifest_blobs(&bytes).ok_or_else(|| {
            CacheError::Failed(format!("manifest {digest} names no config and layers"))
        })
    }

    /// A stored blob's bytes.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, CacheError> {
        let path = self
            .layout
            .blob_path(digest)
            .ok_or_else(|| CacheError::Failed(format!("malformed digest {digest}")))?;
        std::fs::read(&path)
            .map_err(|e| CacheError::Failed(format!("cannot read {}: {e}", path.display())))
    }

    fn store(&self, digest: &str, bytes: &[u8]) -> Result<(), CacheError> {
        self.layout
            .put_blob(digest, bytes)
            .map_err(|e| self.io_error("cannot store a manifest", e))
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> CacheError {
        io_error(self.root(), what, e)
    }
}

fn io_error(root: &Path, what: &str, e: std::io::Error) -> CacheError {
    let text = format!("image cache {}: {what}: {e}", root.display());
    if e.raw_os_error() == Some(libc::ENOSPC) {
        CacheError::NoSpace(text)
    } else {
        CacheError::Failed(text)
    }
}

/// One blob to fetch, owned so it can run on its own task.
struct Download {
    layout: Layout,
    client: Arc<RegistryClient>,
    at: Endpoint,
    digest: String,
    /// What the manifest's descriptor says; the download stops past it.
    size: u64,
    events: EventSink,
    image: String,
    progress: Arc<std::sync::atomic::AtomicU64>,
    total: u64,
}

impl Download {
    /// Streams the blob into a temporary file while hashing it, checks the
    /// digest, then renames it into place: a concurrent run never sees half
    /// a blob, and a blob another run stored meanwhile is simply replaced by
    /// identical bytes.
    async fn run(self) -> Result<(), CacheError> {
        let digest = self.digest.as_str();
        let root = self.layout.root().to_owned();
        let Some(path) = self.layout.blob_path(digest) else {
            return Err(CacheError::Failed(format!("malformed digest {digest}")));
        };
        let tmp = self
            .layout
            .temp_path(layout::hex_of(digest).unwrap_or("blob"));
        let result = async {
            let mut blob = self
                .client
                .blob(&self.at, digest, self.size)
                .await
                .map_err(classify)?;
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| io_error(&root, "cannot create a blob", e))?;
            let mut hasher = Hasher::default();
            while let Some(data) = blob.next_chunk().await.map_err(classify)? {
                hasher.update(&data);
                file.write_all(&data)
                    .await
                    .map_err(|e| io_error(&root, "cannot write a blob", e))?;
                let n = data.len() as u64;
                let current = self.progress.fetch_add(n, Ordering::Relaxed) + n;
                let _ = self.events.send(EnvEvent::PullProgress {
                    image: self.image.clone(),
                    current,
                    total: Some(self.total),
                });
            }
            file.sync_all()
                .await
                .map_err(|e| io_error(&root, "cannot write a blob", e))?;
            let got = hasher.finish();
            if got != digest {
                return Err(CacheError::Failed(format!(
                    "blob {digest} from {}: the bytes hash to {got}; not stored",
                    self.at.host
                )));
            }
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(|e| io_error(&root, "cannot store a blob", e))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

fn classify(error: RegistryError) -> CacheError {
    match error {
        RegistryError::Unreachable(reason) => CacheError::Unreachable(reason),
        // A stall is told and the daemon pulls instead.
        RegistryError::Stalled(reason) | RegistryError::Failed(reason) => {
            CacheError::Failed(reason)
        }
    }
}

/// When an entry was last used.
pub fn last_used(d: &Descriptor) -> Option<SystemTime> {
    let text = d.annotations.get(LAST_USED)?;
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(SystemTime::from)
}

fn now_rfc3339() -> String {
    chrono::DateTime::<chrono::Utc>::from(SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Config, then layers, of an image manifest, with sizes.
pub fn manifest_blobs(bytes: &[u8]) -> Option<Vec<(String, u64)>> {
    registry::manifest::blobs(bytes)
}

/// Parses a size such as `500MB`, `2GiB`, `1024` (bytes) for `--max-size`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; write e.g. \"500MB\" or \"2GiB\""))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000u64.pow(4),
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?}; use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB"
            ))
        }
    };
    let bytes = number * factor as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// A size for people: `12.3 MB`.
pub fn format_size(bytes: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// The cache folder in effect: `flag`, else `EPHEM_IMAGE_CACHE`, else the
/// configuration's `[images] cache`.
pub fn effective_dir(flag: Option<&Path>, configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = flag {
        return Some(dir.to_owned());
    }
    match std::env::var(crate::config::IMAGE_CACHE_ENV) {
        Ok(v) if !v.trim().is_empty() => Some(PathBuf::from(v.trim())),
        _ => configured.map(Path::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5 kb").unwrap(), 1500);
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size("MB").is_err());
        assert_eq!(format_size(12_345_678), "12.3 MB");
        assert_eq!(format_size(999), "999 B");
    }

    #[test]
    fn manifests_name_config_then_layers() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d('a'), "size": 10},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d('b'), "size": 20},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d('c'), "size": 30},
            ],
        });
        let blobs = manifest_blobs(manifest.to_string().as_bytes()).unwrap();
        assert_eq!(blobs, vec![(d('a'), 10), (d('b'), 20), (d('c'), 30)]);
    }
}
