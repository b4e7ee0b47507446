//! The contract between the runner and an environment backend.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::cleanup::Cleanup;
use crate::{DockerBackend, EphemConfig};

/// What every shard of one run shares: the run's identity and size.
#[derive(Clone, Debug)]
pub struct RunContext {
    /// Unique id of this run; backends label everything they create with it.
    pub run_id: String,
    /// Number of shards in the whole plan (not only those run here).
    pub shard_count: u32,
    /// Resources are considered abandoned after this instant (pushed forward while alive).
    pub expires_at: SystemTime,
}

/// One shard of one run: the unit that owns one environment.
#[derive(Clone, Debug)]
pub struct ShardContext {
    /// The run this shard belongs to.
    pub run: RunContext,
    /// 1-based shard number, as in `--partition slice:M/N`.
    pub shard: u32,
}

/// One variable handed to every test of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedVar {
    /// Variable name, e.g. `DATABASE_URL`.
    pub name: String,
    /// Fully substituted value.
    pub value: String,
}

/// A ready environment: what the shard's tests need to reach it.
#[derive(Clone, Default)]
pub struct Environment {
    /// Variables set in every test process of the shard.
    pub vars: Vec<ExportedVar>,
    /// Substrings (generated secrets) that must be shown as `***` wherever
    /// output is displayed or written to a report.
    pub secrets: Vec<String>,
    /// Human-readable lines saying how to reach the environment by hand
    /// (printed by `--keep-env` and `cargo ephem up`).
    pub connect_hints: Vec<String>,
    /// What runs around each test attempt (resets, per-test databases).
    pub test_hooks: Option<Arc<dyn TestHooks>>,
    /// The shard's tests must run one at a time: a service is restored to
    /// its baseline before each test, which every test then shares.
    pub serial: bool,
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Environment")
            .field("vars", &self.vars.len())
            .field("connect_hints", &self.connect_hints)
            .field("test_hooks", &self.test_hooks.is_some())
            .field("serial", &self.serial)
            .finish()
    }
}

/// What an environment does around each test attempt of its shard: restore
/// services to their baseline, hand a database of its own to the test.
#[async_trait::async_trait]
pub trait TestHooks: Send + Sync {
    /// Before an attempt starts: returns the variables only this attempt
    /// gets (e.g. `DATABASE_URL` naming its own database). `services`: the
    /// services the test gets (`tests = ...` scopes), `None` for all; the
    /// others are neither reset nor cloned for it.
    async fn before_attempt(&self, services: Option<&[String]>) -> Result<AttemptEnv, EnvError>;

    /// After the attempt ended: gives back what `before_attempt` handed out.
    async fn after_attempt(&self, env: AttemptEnv);

    /// The environment is being kept for a later run (`--reuse`): prepare
    /// what that run will want without keeping this one waiting.
    async fn before_keep(&self) {}
}

/// The variables of one test attempt, and what to give back after it.
#[derive(Clone, Debug, Default)]
pub struct AttemptEnv {
    /// Set in the attempt's process, over the shard's own variables.
    pub vars: Vec<ExportedVar>,
    /// What the hooks handed out (e.g. database names), for `after_attempt`.
    pub handed_out: Vec<String>,
}

/// Why a backend could not prepare, provision or tear down an environment.
///
/// Every message is one line that says what failed, where, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The backend's daemon or API server cannot be reached.
    #[error("cannot reach {backend} at {address}: {reason} ({hint})")]
    Unreachable {
        /// Backend name, e.g. "the Docker daemon".
        backend: String,
        /// Address that was tried.
        address: String,
        /// What went wrong.
        reason: String,
        /// How to fix it.
        hint: String,
    },
    /// An image could not be pulled.
    #[error("cannot pull image {image} from {registry}: {reason}")]
    Pull {
        /// Image reference as written in the configuration.
        image: String,
        /// Registry the pull went to.
        registry: String,
        /// What the registry or daemon said.
        reason: String,
    },
    /// A service did not become ready, or exited while starting.
    #[error("shard {shard}: service {service} not ready ({wait}): {reason}{}", format_logs(.logs))]
    NotReady {
        /// 1-based shard number.
        shard: u32,
        /// Service name from the configuration.
        service: String,
        /// The wait strategy, described, e.g. `log "ready" x2 within 60s`.
        wait: String,
        /// What happened, including the container's exit code when it exited.
        reason: String,
        /// The container's last log lines.
        logs: Vec<String>,
    },
    /// Anything else the backend reports.
    #[error("{0}")]
    Other(String),
}

impl EnvError {
    /// The same error with every generated secret replaced by `***`: a
    /// failing service's logs may print the password it was given.
    pub fn masked(self, secrets: &[String]) -> EnvError {
        let mask = |text: String| {
            secrets
                .iter()
                .filter(|s| !s.is_empty())
                .fold(text, |t, secret| t.replace(secret.as_str(), "***"))
        };
        match self {
            EnvError::NotReady {
                shard,
                service,
                wait,
                reason,
                logs,
            } => EnvError::NotReady {
                shard,
                service,
                wait,
                reason: mask(reason),
                logs: logs.into_iter().map(mask).collect(),
            },
            EnvError::Other(text) => EnvError::Other(mask(text)),
            EnvError::Pull {
                image,
                registry,
                reason,
            } => EnvError::Pull {
                image,
                registry,
                reason: mask(reason),
            },
            unreachable @ EnvError::Unreachable { .. } => unreachable,
        }
    }
}

fn format_logs(logs: &[String]) -> String {
    if logs.is_empty() {
        String::new()
    } else {
        format!(
            "\n  last {} log lines:\n    {}",
            logs.len(),
            logs.join("\n    ")
        )
    }
}

/// An environment backend: Docker containers, or Kubernetes namespaces.
///
/// The runner calls [`prepare`](Backend::prepare) once per run before any
/// shard starts, then [`provision`](Backend::provision) for every shard
/// concurrently, and [`teardown`](Backend::teardown) for every shard it
/// provisioned or tried to provision, on every exit path. The safety nets
/// that work when the runner cannot (reaper, sweeps, expiry) go through
/// [`cleanup`](Backend::cleanup).
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Short name used in messages, e.g. `docker`.
    fn name(&self) -> &str;

    /// Where the backend was reached, for messages (a socket, a server URL).
    fn address(&self) -> &str;

    /// Once-per-run work shared by all shards, such as pulling images.
    async fn prepare(&self, run: &RunContext) -> Result<(), EnvError>;

    /// Starts one shard's environment and returns once it is ready for tests.
    ///
    /// On error the backend may leave partial resources behind; the runner
    /// always follows with [`teardown`](Backend::teardown).
    async fn provision(&self, shard: &ShardContext) -> Result<Environment, EnvError>;

    /// Removes everything this backend created for the shard.
    ///
    /// Must be idempotent and must work on a partially provisioned shard,
    /// which is why it takes the shard's identity rather than an
    /// [`Environment`]: backends find their resources by label.
    async fn teardown(&self, shard: &ShardContext) -> Result<(), EnvError>;

    /// The same backend's safety-net side: listing runs, removing them,
    /// renewing a live run's expiry.
    fn cleanup(&self) -> Arc<dyn Cleanup>;

    /// Keeps the shard's environment for a later run instead of removing it
    /// (`--reuse`): it stays, spared by sweeps, until `until`, for the next
    /// run whose services and images have the same key.
    async fn keep(&self, shard: &ShardContext, until: SystemTime) -> Result<(), EnvError> {
        let _ = (shard, until);
        Err(EnvError::Other(format!(
            "the {} backend cannot keep environments for reuse",
            self.name()
        )))
    }
}

/// The backends this build knows, by the name `backend = "..."` in
/// `ephem.toml` and `--backend NAME` use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Containers on a private network per shard, through the Docker API.
    #[default]
    Docker,
    /// A namespace per shard on a Kubernetes cluster.
    Kubernetes,
}

impl BackendKind {
    /// Every backend, in the order help texts list them.
    pub const ALL: &'static [BackendKind] = &[BackendKind::Docker, BackendKind::Kubernetes];

    /// The name in `ephem.toml` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Docker => "docker",
            BackendKind::Kubernetes => "kubernetes",
        }
    }

    /// `docker, kubernetes`: for messages that list the choices.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Connects the backend that provisions `config`'s services, reporting
    /// progress to `events`.
    pub async fn connect(
        self,
        config: EphemConfig,
        events: EventSink,
    ) -> Result<Arc<dyn Backend>, EnvError> {
        match self {
            BackendKind::Docker => Ok(Arc::new(DockerBackend::connect(config, events).await?)),
            BackendKind::Kubernetes => Ok(Arc::new(
                crate::kubernetes::KubernetesBackend::connect(config, events).await?,
            )),
        }
    }

    /// Connects only the safety-net side, for the reaper and `gc`; `config`,
    /// when there is one, may say where the backend lives.
    pub async fn connect_cleanup(
        self,
        config: Option<&EphemConfig>,
    ) -> Result<Arc<dyn Cleanup>, EnvError> {
        match self {
            BackendKind::Docker => Ok(Arc::new(crate::docker::DockerCleanup::connect().await?)),
            BackendKind::Kubernetes => {
                let context = config.and_then(|c| c.kubernetes.context.as_deref());
                Ok(Arc::new(
                    crate::kubernetes::cleanup::KubernetesCleanup::connect(context).await?,
                ))
            }
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown backend {s:?}; the backends are: {}", Self::names()))
    }
}

/// Something a backend reports while it works, for the runner's display and
/// diagnosis. Backends receive an [`EventSink`] when they are constructed.
#[derive(Clone, Debug)]
pub enum EnvEvent {
    /// An image pull progressed (bytes across all layers known so far).
    PullProgress {
        /// Image reference as written in the configuration.
        image: String,
        /// Bytes downloaded so far.
        current: u64,
        /// Bytes to download, when the registry said.
        total: Option<u64>,
    },
    /// An image is present locally (pulled now, or already there).
    ImageReady {
        /// Image reference as written in the configuration.
        image: String,
        /// Whether it had to be pulled.
        pulled: bool,
    },
    /// A service's container stopped while its shard's tests were running.
    ServiceExited {
        /// 1-based shard number.
        shard: u32,
        /// Service name from the configuration.
        service: String,
        /// The container's exit code, when known.
        exit_code: Option<i64>,
        /// When the backend noticed.
        at: SystemTime,
    },
    /// A service is not ready yet, and the latest word on why (its pod's
    /// latest event: Unschedulable while a node is added, a pull backing
    /// off): for the shard's progress line. Repeats only when it changes.
    Waiting {
        /// 1-based shard number.
        shard: u32,
        /// Service name from the configuration.
        service: String,
        /// One line, e.g. `FailedScheduling: 0/3 nodes are available: ...`.
        message: String,
        /// Whether it says something is wrong (a Warning event: a pod that
        /// does not fit, a pull that failed), rather than mere progress.
        warning: bool,
    },
    /// Something worth a line that is neither progress nor a problem, e.g.
    /// which way an image was restored from the image cache.
    Note {
        /// One line.
        message: String,
    },
    /// Something the user should know that does not stop the run, e.g. a
    /// lost event stream that means service deaths go unreported.
    Warning {
        /// The shard it concerns, if one.
        shard: Option<u32>,
        /// One line: what happened and what it means.
        message: String,
    },
}

/// Where a backend sends its [`EnvEvent`]s; dropped events are fine.
pub type EventSink = tokio::sync::mpsc::UnboundedSender<EnvEvent>;
