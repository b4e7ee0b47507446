//! Environment snapshots: a service's state after `setup`, kept as an image
//! of its own in the image cache (its base image plus one layer) and in the
//! daemon, tagged with a key covering everything the state depends on.
//! Later shards whose key matches start from it: no init, no `setup`.
//!
//! Per run and key, the first lookup is shared by every shard; on a miss one
//! shard (and, across processes, the one holding `snapshot-<key>.lock` in
//! the cache folder) builds while the others provision normally.

mod build;
mod fallback;
pub(crate) mod key;
mod layer;
mod restore;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

pub(crate) use self::build::{copy, Built};
pub(crate) use self::fallback::ready_within;
use self::key::Key;
pub(crate) use self::restore::rekey;
use crate::image_cache::layout::{FileLock, Mode};

/// The repository snapshot images are tagged in (`<repo>/<service>:<key>`).
pub const REPOSITORY: &str = "cargo-ephem-snapshot";
/// Index annotations of a snapshot entry: its service, base image and the
/// digest of each key input (JSON), for `images ls` and miss messages.
pub const SERVICE_ANNOTATION: &str = "dev.cargo-ephem.snapshot.service";
pub const BASE_ANNOTATION: &str = "dev.cargo-ephem.snapshot.base";
pub const INPUTS_ANNOTATION: &str = "dev.cargo-ephem.snapshot.inputs";
/// The label the snapshot image's config carries: its key.
pub(crate) const KEY_LABEL: &str = "dev.cargo-ephem.snapshot.key";

/// `EPHEM_SNAPSHOT=0` (or `false`, `no`, `off`) turns snapshots off.
pub fn disabled_by_env() -> bool {
    std::env::var("EPHEM_SNAPSHOT").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "no" | "off"
        )
    })
}

/// The readiness wait of a service started from a snapshot: a log line
/// counted several times (Postgres logs its ready line once for the init
/// server, once for the real one) is seen once, as init is skipped.
pub(crate) fn wait_once(wait: &crate::config::WaitStrategy) -> crate::config::WaitStrategy {
    let mut wait = wait.clone();
    if let crate::config::WaitKind::Log { times, .. } = &mut wait.kind {
        *times = 1;
    }
    wait
}

/// Now, as the cache's annotations and image configs write it.
fn now() -> String {
    chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The tag of a service's snapshot with `key`.
pub(crate) fn tag(service: &str, key: &Key) -> String {
    format!("{REPOSITORY}/{service}:{}", key.hex)
}

/// What a shard does with a snapshotted service.
pub(crate) enum Decision {
    /// Start from this image (in the daemon): no init, no `setup`; if it
    /// does not become ready, the snapshot of `key` is discarded.
    Start { image: String, key: Key },
    /// Provision normally, then build the snapshot (this shard holds the
    /// build for the key, in this run and across processes).
    Build { key: Key, lock: Arc<BuildLock> },
    /// Provision normally.
    Fresh,
}

/// `snapshot-<key>.lock` in the cache folder, held by the one process
/// building that snapshot until it is stored (or given up); the file is
/// removed before the lock is released. A process that opened the file
/// before then and gets the lock after sees that the path no longer names
/// its file and builds nothing (see [`State::claim`]).
pub(crate) struct BuildLock {
    path: std::path::PathBuf,
    lock: FileLock,
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        // Only while the path is still ours: never another holder's file.
        if self.lock.is_at(&self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The outcome of one key's lookup, shared by the run's shards.
#[derive(Clone)]
enum Found {
    Image(String),
    Missing,
}

/// The run's snapshot lookups and builds.
#[derive(Default)]
pub(crate) struct State {
    lookups: Mutex<HashMap<String, Arc<OnceCell<Found>>>>,
    building: Mutex<HashSet<String>>,
    /// Snapshots being written while their shard's tests run, by (run, shard).
    storing: Mutex<HashMap<(String, u32), tokio::task::JoinHandle<()>>>,
}

/// One snapshotted service's rendered inputs, for [`State::plan`].
pub(crate) struct Planned<'a> {
    pub spec: &'a crate::config::ServiceSpec,
    /// The name the base image runs as.
    pub run_name: &'a str,
    pub env: &'a HashMap<String, String>,
    pub cmd: Option<&'a [String]>,
    pub setup: Option<&'a [String]>,
    pub quiesce: Option<&'a [String]>,
    pub secrets: &'a [String],
}

impl State {
    /// Stores `copied` on a blocking thread while the shard's tests run,
    /// then tells how it went (a note, or a warning: the run goes on).
    pub(crate) fn store_later(
        &self,
        events: crate::EventSink,
        shard: &crate::ShardContext,
        copied: build::Copied,
    ) {
        let number = shard.shard;
        let handle = tokio::task::spawn_blocking(move || {
            let event = match copied.store() {
                Ok(name) => crate::EnvEvent::Note {
                    message: format!(
                        "snapshot {name} built by shard {number} and stored in the image cache"
                    ),
                },
                Err(reason) => crate::EnvEvent::Warning {
                    shard: Some(number),
                    message: format!(
                        "no snapshot built: {reason}; later runs provision the service normally"
                    ),
                },
            };
            let _ = events.send(event);
        });
        self.storing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((shard.run.run_id.clone(), shard.shard), handle);
    }

    /// Waits for the shard's snapshot to be stored, if one is being
    /// (before its environment goes: the run does not end half-way).
    pub(crate) async fn stored(&self, shard: &crate::ShardContext) {
        let handle = self
            .storing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(shard.run.run_id.clone(), shard.shard));
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    /// Works out the service's key and what the shard does with it: start
    /// from the snapshot, build it, or provision normally (snapshots off,
    /// no `snapshot` key, or a key that cannot be worked out: warned).
    /// With [`Decision::Build`] comes the base image's id.
    pub(crate) async fn plan(
        &self,
        shared: &super::Shared,
        planned: Planned<'_>,
    ) -> (Decision, String) {
        let spec = planned.spec;
        let Some(snapshot) = &spec.snapshot else {
            return (Decision::Fresh, String::new());
        };
        if disabled_by_env() {
            return (Decision::Fresh, String::new());
        }
        if shared.images.cache().is_none() {
            // Snapshots live in the image cache: without one there is
            // nowhere to keep them, which the user should hear once.
            self.warn_once(
                shared,
                &spec.name,
                format!(
                    "services.{}: no snapshot: snapshots are kept in the image cache, which is off; set [images] cache (or --image-cache DIR) to use them",
                    spec.name
                ),
            );
            return (Decision::Fresh, String::new());
        }
        let image_id = match shared.docker.inspect_image(planned.run_name).await {
            Ok(inspect) => inspect.id.unwrap_or_default(),
            Err(e) => {
                self.warn_once(
                    shared,
                    &spec.name,
                    format!(
                        "services.{}: no snapshot: cannot inspect {} ({})",
                        spec.name,
                        planned.run_name,
                        super::daemon_message(&e)
                    ),
                );
                return (Decision::Fresh, String::new());
            }
        };
        let root = shared
            .config
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let kind = match &snapshot.kind {
            crate::config::SnapshotKind::Postgres => "postgres".to_owned(),
            crate::config::SnapshotKind::Redis => "redis".to_owned(),
            crate::config::SnapshotKind::Paths(paths) => paths.join(":"),
        };
        let source = key::KeySource {
            image_id: &image_id,
            env: planned.env,
            cmd: planned.cmd,
            setup: planned.setup,
            quiesce: planned.quiesce,
            kind,
            secrets: planned.secrets,
            root,
            inputs: &snapshot.inputs,
        };
        match Key::compute(&source) {
            Ok(key) => (self.decide(shared, spec, key).await, image_id),
            Err(reason) => {
                self.warn_once(
                    shared,
                    &spec.name,
                    format!("services.{}: no snapshot this run: {reason}", spec.name),
                );
                (Decision::Fresh, String::new())
            }
        }
    }

    fn warn_once(&self, shared: &super::Shared, service: &str, message: String) {
        let first = self
            .building
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(format!("warned:{service}"));
        if first {
            let _ = shared.events.send(crate::EnvEvent::Warning {
                shard: None,
                message,
            });
        }
    }

    /// Looks `key` up (once per run), and on a miss lets one shard build.
    pub(crate) async fn decide(
        &self,
        shared: &super::Shared,
        spec: &crate::config::ServiceSpec,
        key: Key,
    ) -> Decision {
        let Some(cache) = shared.images.cache() else {
            return Decision::Fresh;
        };
        let cell = self
            .lookups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.hex.clone())
            .or_default()
            .clone();
        let found = cell
            .get_or_init(|| restore::lookup(shared, cache, spec, &key))
            .await
            .clone();
        if let Found::Image(image) = found {
            return Decision::Start { image, key };
        }
        self.claim(cache, spec, key)
    }

    /// Lets this shard build the snapshot of `key` if no other shard of the
    /// run, nor another process, builds it.
    fn claim(
        &self,
        cache: &crate::image_cache::ImageCache,
        spec: &crate::config::ServiceSpec,
        key: Key,
    ) -> Decision {
        let first = self
            .building
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.hex.clone());
        if !first {
            return Decision::Fresh;
        }
        let path = cache
            .root()
            .join(format!("snapshot-{}.lock", &key.hex[..16]));
        match FileLock::try_acquire(&path, Mode::Exclusive) {
            // Removed by its last holder after we opened it: that holder
            // stored the snapshot, or gave up; either way this run does not
            // build on a lock no longer anyone's.
            Ok(Some(lock)) if !lock.is_at(&path) => Decision::Fresh,
            Ok(Some(lock)) => {
                let lock = Arc::new(BuildLock { path, lock });
                // Another process may have finished it meanwhile.
                let done = cache
                    .entries()
                    .iter()
                    .any(|d| d.reference() == Some(tag(&spec.name, &key).as_str()));
                if done {
                    Decision::Fresh
                } else {
                    Decision::Build { key, lock }
                }
            }
            // Another run builds it; this one provisions normally.
            _ => Decision::Fresh,
        }
    }
}
