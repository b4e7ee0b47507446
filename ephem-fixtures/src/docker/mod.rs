//! The Docker backend: every shard gets its own bridge network and one
//! container per configured service. Works with Podman's Docker-compatible API.

mod baseline;
mod claim;
mod cleanup;
pub(crate) mod connect;
mod images;
pub mod inventory;
pub mod labels;
pub mod lease;
pub(crate) mod readiness;
pub mod reuse;
mod shard;
pub mod snapshot;
mod teardown;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bollard::Docker;
use tokio::task::JoinHandle;

pub use self::cleanup::DockerCleanup;
use self::images::ImageStore;
pub use self::images::{Origin, RestorePath};
use crate::image_cache::registry::{PlatformSource, RegistrySettings};
use crate::{
    Backend, Cleanup, EnvError, Environment, EphemConfig, EventSink, RunContext, ShardContext,
};

/// Environments made of Docker containers, one private network per shard.
pub struct DockerBackend {
    shared: Shared,
    cleanup: Arc<DockerCleanup>,
    /// `--reuse`: each shard's key, once the images are known (`prepare`).
    reuse_keys: Mutex<HashMap<u32, String>>,
    /// Shards of this run that took over a kept environment: its claim,
    /// naming the run that made it (its resources carry that run's labels).
    reused: Mutex<HashMap<(String, u32), claim::Held>>,
    /// `die`-event followers of provisioned shards, by (run id, shard).
    watchers: Mutex<HashMap<(String, u32), JoinHandle<()>>>,
    /// `--reuse`: each shard's hooks, told when its environment is kept
    /// (they leave ready copies for the next run), by (run id, shard).
    kept_hooks: Mutex<HashMap<(String, u32), Arc<dyn crate::TestHooks>>>,
}

/// What provisioning and teardown share.
pub(crate) struct Shared {
    docker: Docker,
    address: String,
    /// `${host}`: 127.0.0.1, or a tcp:// daemon's host.
    host: String,
    /// The daemon is Podman, which runs healthchecks only from systemd timers.
    podman: bool,
    config: EphemConfig,
    events: EventSink,
    images: ImageStore,
    /// This runner, as labelled on everything the backend creates.
    owner: labels::Owner,
    /// Delays before each reconnect of a broken event stream.
    event_retry: Vec<Duration>,
    /// This run's snapshot lookups and builds.
    snapshots: snapshot::State,
}

impl DockerBackend {
    /// Connects to the daemon (`DOCKER_HOST`, the default socket, then Podman's
    /// sockets) within 5 s, negotiating the API version down to the daemon's.
    ///
    /// The mirror is `EPHEM_REGISTRY_MIRROR` if set, else `[images] mirror`.
    pub async fn connect(
        config: EphemConfig,
        events: EventSink,
    ) -> Result<DockerBackend, EnvError> {
        let conn = connect::connect().await?;
        Ok(Self::with_connection(conn, config, events))
    }

    /// Like [`connect`](Self::connect), but to `host` (written as `DOCKER_HOST`
    /// would be: `unix:///path`, `/path`, `tcp://HOST:PORT`), ignoring `DOCKER_HOST`.
    pub async fn connect_with_host(
        config: EphemConfig,
        events: EventSink,
        host: &str,
    ) -> Result<DockerBackend, EnvError> {
        let conn = connect::connect_to(host).await?;
        Ok(Self::with_connection(conn, config, events))
    }

    fn with_connection(
        conn: connect::Connection,
        config: EphemConfig,
        events: EventSink,
    ) -> DockerBackend {
        let mirror = config.effective_mirror();
        let mut images = ImageStore::new(
            conn.docker.clone(),
            mirror,
            events.clone(),
            &config.images(),
        );
        images.set_idle_timeout(config.images.idle_timeout);
        if let Some(dir) = &config.images.cache {
            // The runner checked the folder before connecting (exit 2); a
            // library caller's unusable folder costs only the cache.
            match crate::image_cache::ImageCache::open(dir, events.clone()) {
                Ok(cache) => {
                    let cache = cache.with_registry(RegistrySettings {
                        platform: PlatformSource::Daemon(conn.docker.clone()),
                        ..RegistrySettings::from_env(config.images.idle_timeout)
                    });
                    images = images.with_cache(Arc::new(cache), RestorePath::for_daemon(&conn.host))
                }
                Err(message) => {
                    let _ = events.send(crate::EnvEvent::Warning {
                        shard: None,
                        message,
                    });
                }
            }
        }
        let cleanup = Arc::new(DockerCleanup::new(
            conn.docker.clone(),
            conn.address.clone(),
        ));
        DockerBackend {
            cleanup,
            reuse_keys: Mutex::new(HashMap::new()),
            reused: Mutex::new(HashMap::new()),
            shared: Shared {
                docker: conn.docker,
                address: conn.address,
                host: conn.host,
                podman: conn.podman,
                config,
                events,
                images,
                owner: labels::Owner::current(),
                event_retry: watch::DEFAULT_RETRY.to_vec(),
                snapshots: snapshot::State::default(),
            },
            watchers: Mutex::new(HashMap::new()),
            kept_hooks: Mutex::new(HashMap::new()),
        }
    }

    /// How the follower of die events retries a broken Docker event stream:
    /// one try after each delay (counted afresh once a stream stayed up 10 s),
    /// then an [`EnvEvent::Warning`](crate::EnvEvent::Warning). The default,
    /// 1, 2, 4, 8 and 15 s, gives up after 30 s; tests shorten it.
    pub fn with_event_retry(mut self, delays: Vec<Duration>) -> Self {
        self.shared.event_retry = delays;
        self
    }

    /// Makes every image of the configuration present in the daemon
    /// (through the image cache when one is configured) and says where
    /// each came from, for `cargo ephem images pull`.
    pub async fn ensure_images(&self) -> Result<Vec<(String, Origin)>, EnvError> {
        self.shared.images.ensure_all().await?;
        self.shared.images.origins().await
    }

    /// Restores images from the cache this way whatever the daemon's
    /// address says (the benchmark and tests measure both).
    pub fn with_image_restore(mut self, path: RestorePath) -> Self {
        self.shared.images.set_restore(path);
        self
    }

    /// Serves gzip layers to the daemon decompressed (`true`) or as stored,
    /// whatever `EPHEM_IMAGE_SERVE` says.
    pub fn with_decompressed_layers(mut self, decompressed: bool) -> Self {
        self.shared.images.set_decompressed(decompressed);
        self
    }

    /// The value of `${host}`: where published ports are reached.
    pub fn host(&self) -> &str {
        &self.shared.host
    }

    /// The configuration this backend provisions.
    pub fn config(&self) -> &EphemConfig {
        &self.shared.config
    }

    /// The underlying client, for diagnostics and tests.
    pub fn client(&self) -> &Docker {
        &self.shared.docker
    }

    fn stop_watcher(&self, shard: &ShardContext) {
        let key = (shard.run.run_id.clone(), shard.shard);
        let handle = self
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        if let Some(handle) = handle {
            handle.abort();
        }
    }
}

impl DockerBackend {
    /// The claim of the kept environment the shard took over, if it did
    /// (its resources carry the labels of the run that made it).
    fn held(&self, shard: &ShardContext) -> Option<claim::Held> {
        self.reused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(shard.run.run_id.clone(), shard.shard))
            .cloned()
    }

    fn remember_hooks(&self, shard: &ShardContext, env: &Environment) {
        if let Some(hooks) = &env.test_hooks {
            self.kept_hooks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((shard.run.run_id.clone(), shard.shard), hooks.clone());
        }
    }

    fn take_hooks(&self, shard: &ShardContext) -> Option<Arc<dyn crate::TestHooks>> {
        self.kept_hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(shard.run.run_id.clone(), shard.shard))
    }

    fn reuse_key(&self, shard: &ShardContext) -> Option<String> {
        self.reuse_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard.shard)
            .cloned()
    }

    /// Follows the `die` events of `owned`'s containers, reported as `shard`'s.
    fn watch(&self, shard: &ShardContext, owned: &ShardContext) {
        let handle = watch::spawn(
            self.shared.docker.clone(),
            owned,
            self.shared.events.clone(),
            self.shared.event_retry.clone(),
        );
        let previous = self
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((shard.run.run_id.clone(), shard.shard), handle);
        if let Some(previous) = previous {
            previous.abort();
        }
    }

    /// The daemon's id of every service's image, in service order: a new
    /// image under the same tag gives a new reuse key.
    async fn image_ids(&self) -> Result<Vec<String>, EnvError> {
        let mut ids = Vec::new();
        for spec in &self.shared.config.services {
            let facts = self.shared.images.ensure(&spec.image).await?;
            let id = self
                .shared
                .docker
                .inspect_image(&facts.run_name)
                .await
                .map_err(|e| {
                    EnvError::Other(format!(
                        "cannot inspect image {}: {}",
                        facts.run_name,
                        daemon_message(&e)
                    ))
                })?
                .id
                .unwrap_or_default();
            ids.push(id);
        }
        Ok(ids)
    }
}

impl Drop for DockerBackend {
    fn drop(&mut self) {
        let watchers = self.watchers.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, handle) in watchers.drain() {
            handle.abort();
        }
    }
}

#[async_trait::async_trait]
impl Backend for DockerBackend {
    fn name(&self) -> &str {
        "docker"
    }

    fn address(&self) -> &str {
        &self.shared.address
    }

    /// Inspects every distinct image and pulls the missing ones, concurrently.
    /// With `--reuse`, also works out each shard's key and removes this
    /// workspace's kept environments whose key is no longer any shard's.
    async fn prepare(&self, run: &RunContext) -> Result<(), EnvError> {
        self.shared.images.ensure_all().await?;
        if self.shared.config.reuse.enabled {
            self.prepare_reuse(run).await?;
        }
        Ok(())
    }

    async fn provision(&self, shard: &ShardContext) -> Result<Environment, EnvError> {
        let key = self.reuse_key(shard);
        if let Some(key) = &key {
            if let Some(env) = self.take_over(shard, key).await? {
                self.remember_hooks(shard, &env);
                return Ok(env);
            }
        }
        let extra = key
            .map(|key| {
                HashMap::from([
                    (labels::REUSE.to_owned(), key),
                    (
                        labels::WORKSPACE.to_owned(),
                        self.shared.config.reuse.workspace.clone(),
                    ),
                ])
            })
            .unwrap_or_default();
        let reusable = !extra.is_empty();
        let env = shard::provision(&self.shared, shard, &extra).await?;
        self.watch(shard, shard);
        if reusable {
            self.remember_hooks(shard, &env);
        }
        Ok(env)
    }

    async fn teardown(&self, shard: &ShardContext) -> Result<(), EnvError> {
        // Stop reporting exits first: teardown itself kills the containers.
        self.stop_watcher(shard);
        self.take_hooks(shard);
        // A taken-over environment carries the labels of the run that made it.
        let removed = match self.held(shard) {
            Some(held) => reuse::remove_held(&self.shared.docker, &held).await,
            None => teardown::teardown(&self.shared.docker, shard).await,
        };
        // The snapshot was copied out before the tests: its storing needs
        // no container, so they go first and the run ends once it is stored.
        self.shared.snapshots.stored(shard).await;
        removed
    }

    /// Leaves the environment for the next `--reuse` run: a lease marked
    /// `keep` until `until` (the idle TTL), the claim released.
    async fn keep(&self, shard: &ShardContext, until: SystemTime) -> Result<(), EnvError> {
        self.shared.snapshots.stored(shard).await;
        self.stop_watcher(shard);
        // While this run still holds the environment: a run that takes it
        // over then finds the refill running, and ends it.
        if let Some(hooks) = self.take_hooks(shard) {
            hooks.before_keep().await;
        }
        let held = self.held(shard);
        let owner = held.as_ref().map_or(&shard.run.run_id, |h| &h.run);
        self.cleanup.renew(owner, until, true).await?;
        match held {
            Some(held) => claim::release(&self.shared.docker, &held).await,
            None => Ok(()),
        }
    }

    fn cleanup(&self) -> Arc<dyn Cleanup> {
        self.cleanup.clone()
    }
}

/// Whether the daemon answered 404.
pub(crate) fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Whether a removal failed only because the resource is gone or going.
pub(crate) fn is_gone(err: &bollard::errors::Error) -> bool {
    match err {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        } => true,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message,
        } => message.contains("already in progress"),
        _ => false,
    }
}

/// The daemon's own words, without bollard's wrapping.
pub(crate) fn daemon_message(err: &bollard::errors::Error) -> String {
    match err {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
