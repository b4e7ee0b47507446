//! `ephem.toml`: which services every shard gets, validated at load time.
//!
//! Every key is documented in the README (`ephem.toml` section). Loading never talks to Docker; a
//! configuration that loads is one whose templates, ports, waits and
//! dependencies are consistent.

mod error;
pub(crate) mod kubernetes;
mod raw;
mod snapshot;
mod validate;
mod wait;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::ConfigError;
pub use kubernetes::{
    HelmConfig, KubernetesConfig, LimitsConfig, PodSecurity, QuotaConfig, Reach, ServiceKubernetes,
    DEFAULT_CLUSTER_DOMAIN, DEFAULT_HELM_RELEASE, DEFAULT_HELM_TIMEOUT, DEFAULT_NAMESPACE_PREFIX,
    KUBERNETES_REGISTRY_ENV, MAX_HELM_RELEASE_LEN, MAX_QUOTA_PODS,
};
pub use snapshot::{SnapshotKind, SnapshotSpec};
pub use wait::{LogPattern, WaitKind, WaitStrategy, DEFAULT_WAIT_INTERVAL};

use crate::image_ref::ImageRef;
use crate::template::Template;
use crate::BackendKind;

/// File name the CLI looks for at the workspace root.
pub const DEFAULT_CONFIG_FILE: &str = "ephem.toml";

/// Environment variable that overrides `[images] mirror`.
pub const MIRROR_ENV: &str = "EPHEM_REGISTRY_MIRROR";

/// Environment variable that overrides `[images] cache`.
pub const IMAGE_CACHE_ENV: &str = "EPHEM_IMAGE_CACHE";

/// Default `startup-timeout`: start plus readiness, not the pull.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest duration any setting takes (365 days): beyond it, deadlines
/// and expiry labels would overflow, and no test waits that long on purpose.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a humantime duration (`"500ms"`, `"60s"`, `"1h 30m"`) between zero
/// (only when `allow_zero`) or 1 ms and [`MAX_DURATION`]. The error says what
/// is wrong and the allowed range.
pub fn parse_duration(text: &str, allow_zero: bool) -> Result<Duration, String> {
    let range = "allowed: 1ms to 365days";
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "{text:?} is not a duration ({e}); write e.g. \"60s\", \"500ms\" or \"2m\" ({range})"
        )
    })?;
    if d.is_zero() && !allow_zero {
        return Err(format!("the duration must be greater than zero ({range})"));
    }
    if d > MAX_DURATION {
        return Err(format!("{text:?} is too long ({range})"));
    }
    Ok(d)
}

/// A loaded and validated `ephem.toml`.
#[derive(Clone, Debug)]
pub struct EphemConfig {
    /// Where the configuration came from, for messages.
    pub path: PathBuf,
    /// `backend`: which backend provisions the services (`docker` by default).
    pub backend: BackendKind,
    /// `[shards]`: how each shard runs its tests.
    pub shards: ShardsConfig,
    /// `[reuse]`: environments kept between local runs.
    pub reuse: ReuseConfig,
    /// `[images]`: how images are fetched.
    pub images: ImagesConfig,
    /// `[kubernetes]`: how the Kubernetes backend builds each shard's
    /// namespace (name, quota, limits, image pulls, Helm chart); every key
    /// has a default, and the table is checked whatever the backend.
    pub kubernetes: KubernetesConfig,
    /// `[services.NAME]`, sorted by name.
    pub services: Vec<ServiceSpec>,
    /// Every `${secret.NAME}` and where it is written: read from the
    /// runner's environment by [`check_secrets`](Self::check_secrets)
    /// before anything starts.
    pub secrets: Vec<SecretRef>,
}

/// One `${secret.NAME}` of the file and its place, for a one-line error
/// when the runner's environment lacks it.
#[derive(Clone, Debug)]
pub struct SecretRef {
    /// The environment variable's name.
    pub name: String,
    /// An error at the template's line and key; its message is filled in.
    at: ConfigError,
}

impl SecretRef {
    pub(crate) fn new(name: String, at: ConfigError) -> SecretRef {
        SecretRef { name, at }
    }
}

/// The `[shards]` table.
#[derive(Clone, Debug, Default)]
pub struct ShardsConfig {
    /// `test-threads`: at most this many tests of one shard run at once, for
    /// suites that share fixed state inside their services. `None`: the
    /// divided thread budget.
    pub test_threads: Option<usize>,
}

/// The largest `[shards] test-threads`.
pub const MAX_SHARD_TEST_THREADS: usize = 1024;

/// The `[images]` table.
#[derive(Clone, Debug)]
pub struct ImagesConfig {
    /// Registry that Docker Hub images are pulled through, e.g. `localhost:5000`.
    pub mirror: Option<String>,
    /// `cache`: the warm image cache's folder, relative paths resolved
    /// against the configuration's folder; `EPHEM_IMAGE_CACHE` and
    /// `--image-cache` override it.
    pub cache: Option<PathBuf>,
    /// `idle-timeout`: the longest a registry (or a daemon's pull) may send
    /// nothing before the fetch is given up.
    pub idle_timeout: Duration,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            mirror: None,
            cache: None,
            idle_timeout: crate::image_cache::registry::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// One `[services.NAME]` table: a container every shard gets.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// Table name; also the container's network alias.
    pub name: String,
    /// Image to run.
    pub image: ImageRef,
    /// Container environment, sorted by name.
    pub env: Vec<(String, Template)>,
    /// Container TCP ports to publish on 127.0.0.1.
    pub ports: Vec<u16>,
    /// Replaces the image's CMD.
    pub cmd: Option<Vec<Template>>,
    /// Appended to the image's CMD (or to `cmd`).
    pub args: Vec<Template>,
    /// How to tell the service is ready.
    pub wait: WaitStrategy,
    /// Budget for start plus readiness.
    pub startup_timeout: Duration,
    /// Variables handed to the shard's tests, sorted by name.
    pub export: Vec<(String, Template)>,
    /// Services that must be ready before this one starts.
    pub depends_on: Vec<String>,
    /// A HEALTHCHECK for images that have none (or to replace theirs).
    pub healthcheck: Option<HealthcheckSpec>,
    /// `setup`: run once in the container after it is ready (migrations,
    /// seed data); what it leaves is the service's baseline.
    pub setup: Option<Vec<Template>>,
    /// `reset`: restore the baseline before every test.
    pub reset: Option<Reset>,
    /// `databases = "per-test"`: every test gets its own database, cloned
    /// from the baseline.
    pub per_test_databases: bool,
    /// `[services.NAME.kubernetes]`: user, groups and restarts on Kubernetes.
    pub kubernetes: ServiceKubernetes,
    /// `snapshot`: the state after `setup` kept as an image and started
    /// from on later runs (Docker only).
    pub snapshot: Option<SnapshotSpec>,
    /// `tests`: the nextest filterset of the tests that get this service
    /// (its exports, its waits, its resets); `None`: every test. Parsed by
    /// the runner, which knows the workspace's packages.
    pub tests: Option<String>,
}

/// How a service is restored to its baseline before every test.
#[derive(Clone, Debug)]
pub enum Reset {
    /// The baseline database is re-created from a template taken after setup.
    Postgres,
    /// `FLUSHALL`: a Redis baseline is empty.
    Redis,
    /// This command, run in the container.
    Exec(Vec<Template>),
}

impl ServiceSpec {
    /// Whether tests must run one at a time against this service (a reset
    /// between tests restores state every test sees).
    pub fn needs_serial_tests(&self) -> bool {
        self.reset.is_some()
    }

    /// The Postgres port a reset or per-test databases talk to.
    pub fn postgres_port(&self) -> Option<u16> {
        (matches!(self.reset, Some(Reset::Postgres)) || self.per_test_databases).then_some(5432)
    }
}

/// `[reuse]`: environments kept between local runs (`--reuse`).
#[derive(Clone, Debug)]
pub struct ReuseConfig {
    /// Kept environments expire after this long unused.
    pub ttl: Duration,
    /// Set by `--reuse` (not a key of the file): take over a kept
    /// environment with the same key, and keep this run's for the next.
    pub enabled: bool,
    /// Set with `enabled`: which workspace kept environments belong to
    /// (`cargo ephem down` removes that workspace's).
    pub workspace: String,
}

impl Default for ReuseConfig {
    fn default() -> Self {
        ReuseConfig {
            ttl: Duration::from_secs(30 * 60),
            enabled: false,
            workspace: String::new(),
        }
    }
}

/// The `healthcheck` table: Docker runs `test` in the container.
#[derive(Clone, Debug)]
pub struct HealthcheckSpec {
    /// Command and arguments (exec form, no shell).
    pub test: Vec<Template>,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Consecutive failures before Docker reports unhealthy.
    pub retries: u32,
    /// Time during which failures do not count.
    pub start_period: Duration,
}

impl EphemConfig {
    /// Reads and validates the configuration at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<EphemConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Validates configuration `text`; `path` only names it in messages.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<EphemConfig, ConfigError> {
        validate::parse(text, path.as_ref())
    }

    /// The mirror to pull Docker Hub images through: `EPHEM_REGISTRY_MIRROR`
    /// when set and not empty, else `[images] mirror`.
    pub fn effective_mirror(&self) -> Option<String> {
        match std::env::var(MIRROR_ENV) {
            Ok(value) if !value.trim().is_empty() => {
                Some(value.trim().trim_end_matches('/').to_owned())
            }
            _ => self.images.mirror.clone(),
        }
    }

    /// Reads every `${secret.NAME}` from the runner's environment now,
    /// registering each value so that everything the runner shows or writes
    /// masks it; the first one unset or empty is an error at its line and
    /// key. Commands that start services call it before anything starts
    /// (`gc` and `down` need no secrets, and do not).
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        for secret in &self.secrets {
            if let Err(why) = crate::secret::from_runner_env(&secret.name) {
                let mut error = secret.at.clone();
                if let ConfigError::Invalid { message, .. } = &mut error {
                    *message = why;
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// Looks a service up by name.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Services in an order where each comes after its dependencies.
    pub fn start_order(&self) -> Vec<&ServiceSpec> {
        let mut order: Vec<&ServiceSpec> = Vec::new();
        // The loader rejected cycles, so every pass places at least one service;
        // the pass limit only guards against a bug turning into a hang.
        for _ in 0..=self.services.len() {
            for service in &self.services {
                let placed = order.iter().any(|s| s.name == service.name);
                let deps_placed = service
                    .depends_on
                    .iter()
                    .all(|d| order.iter().any(|s| &s.name == d));
                if !placed && deps_placed {
                    order.push(service);
                }
            }
        }
        order
    }

    /// Every distinct image, in service order.
    pub fn images(&self) -> Vec<&ImageRef> {
        let mut images: Vec<&ImageRef> = Vec::new();
        for service in &self.services {
            if !images
                .iter()
                .any(|i| i.local_name() == service.image.local_name())
            {
                images.push(&service.image);
            }
        }
        images
    }
}
