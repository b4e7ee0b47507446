//! `cargo ephem images prune`: index entries by the user's rules, then the
//! blobs no remaining entry reaches, without ever taking a blob from a run
//! that is filling or restoring.
//!
//! Prune holds `cache.lock` exclusively (every fill and restore holds it
//! shared, so prune waits for them, saying so) and `index.lock` from the
//! read of the index to the last deletion. Blobs and temporary files that
//! no entry reached before this prune either (a fill under way, of a run
//! that does not take `cache.lock`, or one that died) are deleted only once
//! older than a grace period, as `git gc` treats loose objects.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::layout::{Descriptor, FileLock, Index, Mode, TAG_DIGEST, TOTAL_SIZE};
use super::{last_used, CacheError, ImageCache};

/// How long a blob no entry names, or a temporary file, is kept: an hour.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// What `images prune` removes.
#[derive(Clone, Debug, Default)]
pub struct PruneRules {
    /// References kept (the configuration's images), unless `all`.
    pub keep: Vec<String>,
    /// Remove the kept references too.
    pub all: bool,
    /// Only entries unused for this long.
    pub older_than: Option<Duration>,
    /// Then least recently used entries until the cache fits.
    pub max_size: Option<u64>,
    /// Age below which unindexed blobs and temporary files are kept
    /// ([`DEFAULT_GRACE`] when `None`).
    pub grace: Option<Duration>,
}

impl ImageCache {
    /// Removes index entries by `rules`, then every blob no remaining entry
    /// references (unindexed ones past the grace period). Returns the
    /// references removed and the bytes freed.
    pub async fn prune(&self, rules: &PruneRules) -> Result<(Vec<String>, u64), CacheError> {
        let _exclusive = self.exclusive().await?;
        let lock = self
            .layout
            .lock_index()
            .map_err(|e| self.io_error("cannot lock index.lock", e))?;
        // An unparsable index reaches nothing (update_index_locked warns).
        let before = self.layout.read_index().unwrap_or_else(|_| Index::new());
        let indexed = self.reachable(&before);
        let removed = self
            .layout
            .update_index_locked(&lock, |w| self.warn(w), |index| select(index, rules))
            .map_err(|e| self.io_error("cannot write index.json", e))?;
        let after = self.layout.read_index().map_err(CacheError::Failed)?;
        let keep = self.reachable(&after);
        let grace = rules.grace.unwrap_or(DEFAULT_GRACE);
        let freed = self.sweep(&indexed, &keep, grace)?;
        drop(lock);
        Ok((removed, freed))
    }

    /// `cache.lock`, exclusively: at once when free, else after a note.
    async fn exclusive(&self) -> Result<FileLock, CacheError> {
        let path = self.layout.use_lock_path();
        let locked = |e| self.io_error("cannot lock cache.lock", e);
        if let Some(lock) = FileLock::try_acquire(&path, Mode::Exclusive).map_err(locked)? {
            return Ok(lock);
        }
        self.note(format!(
            "image cache {}: waiting for another cargo-ephem process using it (filling or restoring images) to finish",
            self.root().display()
        ));
        tokio::task::spawn_blocking(move || FileLock::acquire(&path, Mode::Exclusive))
            .await
            .map_err(|e| CacheError::Failed(format!("waiting for cache.lock stopped: {e}")))?
            .map_err(locked)
    }

    /// Every blob the index's entries reach: manifests, the indexes their
    /// tags resolved to, configs and layers.
    fn reachable(&self, index: &Index) -> HashSet<String> {
        let mut out = HashSet::new();
        for d in &index.manifests {
            out.insert(d.digest.clone());
            if let Some(tag) = d.annotations.get(TAG_DIGEST) {
                out.insert(tag.clone());
            }
            if let Ok(blobs) = self.manifest_blobs(&d.digest) {
                out.extend(blobs.into_iter().map(|(b, _)| b));
            }
        }
        out
    }

    /// Deletes blobs `keep` lacks: at once when an entry reached them before
    /// this prune (`indexed`), else once older than `grace`; temporary
    /// files once older than `grace`. Returns the bytes freed.
    fn sweep(
        &self,
        indexed: &HashSet<String>,
        keep: &HashSet<String>,
        grace: Duration,
    ) -> Result<u64, CacheError> {
        let dir = self.root().join("blobs/sha256");
        let listing = std::fs::read_dir(&dir)
            .map_err(|e| CacheError::Failed(format!("cannot list {}: {e}", dir.display())))?;
        let mut freed = 0;
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            let old = meta
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= grace);
            let delete = if name.contains(".tmp-") {
                old
            } else {
                let digest = format!("sha256:{name}");
                !keep.contains(&digest) && (indexed.contains(&digest) || old)
            };
            if delete && std::fs::remove_file(entry.path()).is_ok() {
                freed += meta.len();
            }
        }
        Ok(freed)
    }
}

/// Takes the entries `rules` remove out of `index`; returns their references.
fn select(index: &mut Index, rules: &PruneRules) -> Vec<String> {
    let now = SystemTime::now();
    let mut removed = Vec::new();
    let mut entries: Vec<Descriptor> = std::mem::take(&mut index.manifests);
    // Oldest first, so a size limit drops the least recently used.
    entries.sort_by_key(last_used);
    let kept_by_config = |d: &Descriptor| {
        !rules.all
            && d.reference()
                .is_some_and(|r| rules.keep.iter().any(|k| k == r))
    };
    let old = |d: &Descriptor| match rules.older_than {
        Some(age) => last_used(d).is_none_or(|t| now.duration_since(t).unwrap_or_default() >= age),
        None => rules.max_size.is_none(),
    };
    let mut remaining = Vec::new();
    for d in entries {
        if !kept_by_config(&d) && old(&d) {
            removed.push(d.reference().unwrap_or(&d.digest).to_owned());
        } else {
            remaining.push(d);
        }
    }
    if let Some(limit) = rules.max_size {
        let size = |d: &Descriptor| {
            d.annotations
                .get(TOTAL_SIZE)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(d.size)
        };
        let mut total: u64 = remaining.iter().map(size).sum();
        let mut i = 0;
        while total > limit && i < remaining.len() {
            if kept_by_config(&remaining[i]) {
                i += 1;
                continue;
            }
            let d = remaining.remove(i);
            total = total.saturating_sub(size(&d));
            removed.push(d.reference().unwrap_or(&d.digest).to_owned());
        }
    }
    index.manifests = remaining;
    removed
}
