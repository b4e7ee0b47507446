//! The Docker backend: every shard gets its own bridge network and one
//! container per configured service. Works with Podman's Docker-compatible API.

mod baseline;
mod cleanup;
mod connect;
mod images;
pub mod inventory;
pub mod labels;
pub mod lease;
mod readiness;
mod shard;
mod teardown;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use tokio::task::JoinHandle;

pub use self::cleanup::DockerCleanup;
use self::images::ImageStore;
use crate::{
    Backend, Cleanup, EnvError, Environment, EphemConfig, EventSink, RunContext, ShardContext,
};

/// Environments made of Docker containers, one private network per shard.
pub struct DockerBackend {
    shared: Shared,
    cleanup: Arc<DockerCleanup>,
    /// `die`-event followers of provisioned shards, by (run id, shard).
    watchers: Mutex<HashMap<(String, u32), JoinHandle<()>>>,
}

/// What provisioning and teardown share.
pub(crate) struct Shared {
    docker: Docker,
    address: String,
    /// `${host}`: 127.0.0.1, or a tcp:// daemon's host.
    host: String,
    config: EphemConfig,
    events: EventSink,
    images: ImageStore,
    /// This runner, as labelled on everything the backend creates.
    owner: labels::Owner,
    /// Delays before each reconnect of a broken event stream.
    event_retry: Vec<Duration>,
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
        let images = ImageStore::new(
            conn.docker.clone(),
            mirror,
            events.clone(),
            &config.images(),
        );
        let cleanup = Arc::new(DockerCleanup::new(
            conn.docker.clone(),
            conn.address.clone(),
        ));
        DockerBackend {
            cleanup,
            shared: Shared {
                docker: conn.docker,
                address: conn.address,
                host: conn.host,
                config,
                events,
                images,
                owner: labels::Owner::current(),
                event_retry: watch::DEFAULT_RETRY.to_vec(),
            },
            watchers: Mutex::new(HashMap::new()),
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
    async fn prepare(&self, _run: &RunContext) -> Result<(), EnvError> {
        self.shared.images.ensure_all().await
    }

    async fn provision(&self, shard: &ShardContext) -> Result<Environment, EnvError> {
        let env = shard::provision(&self.shared, shard).await?;
        let handle = watch::spawn(
            self.shared.docker.clone(),
            shard,
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
        Ok(env)
    }

    async fn teardown(&self, shard: &ShardContext) -> Result<(), EnvError> {
        // Stop reporting exits first: teardown itself kills the containers.
        self.stop_watcher(shard);
        teardown::teardown(&self.shared.docker, shard).await
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
