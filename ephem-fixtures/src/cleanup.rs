//! What the safety nets need of a backend: the resources of cargo-ephem runs,
//! their removal, and a live run's expiry.
//!
//! Teardown removes one shard at the end of its tests; everything else that
//! keeps a machine or a cluster clean goes through [`Cleanup`]: the reaper
//! (remove one run once its runner is dead), the start-of-run sweep and
//! `cargo ephem gc` (list runs, judge them with [`crate::sweep`], remove the
//! abandoned ones), and lease renewal (push a live run's expiry forward). A
//! backend that implements this trait gets all four safety nets.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::sweep::Liveness;
use crate::EnvError;

/// A removal the backend began this long ago and has not finished is stuck:
/// pods with long grace periods make a healthy namespace deletion take a
/// minute or two, a finalizer whose controller is gone holds it for ever.
pub const STUCK_AFTER: Duration = Duration::from_secs(300);

/// What kind of object a resource is, for messages and removal order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    /// A Docker container, in any state.
    Container,
    /// A Docker network.
    Network,
    /// A Docker volume (lease volumes included).
    Volume,
    /// A Kubernetes namespace (with everything inside it).
    Namespace,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Container => "container",
            ResourceKind::Network => "network",
            ResourceKind::Volume => "volume",
            ResourceKind::Namespace => "namespace",
        })
    }
}

/// One resource of a cargo-ephem run, with its labels as they read. Labels
/// that are missing or unparsable are `None`: a sweep judges what it can.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResource {
    /// What kind of object it is.
    pub kind: ResourceKind,
    /// What the backend removes it by (a Docker id or volume name, a
    /// namespace's uid).
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// The run it belongs to.
    pub run: String,
    /// Its shard (leases have none).
    pub shard: Option<u32>,
    /// The runner's pid.
    pub pid: Option<u32>,
    /// The runner's start time in clock ticks since boot, so that a recycled
    /// pid is not taken for the runner.
    pub pid_start: Option<u64>,
    /// The runner's hostname.
    pub host: Option<String>,
    /// Unix seconds after which the run counts as abandoned.
    pub expires: Option<u64>,
    /// When the backend created it, if it said.
    pub created: Option<SystemTime>,
    /// Whether it only carries a later expiry for its run (a lease).
    pub lease: bool,
    /// Whether its run's environments were kept on purpose (`--keep-env`,
    /// `--reuse`): sweeps spare the run until it expires.
    pub kept: bool,
    /// The workspace whose `--reuse` run kept it, if one did.
    pub workspace: Option<String>,
    /// Set when the backend is already removing it (a namespace
    /// Terminating): sweeps never remove it again, they report it.
    pub terminating: Option<Terminating>,
}

/// A resource whose removal the backend began and has not finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminating {
    /// When its removal began (a namespace's `deletionTimestamp`).
    pub since: SystemTime,
    /// What holds it, as the backend says (empty: nothing reported yet).
    pub holding: Vec<HoldingCondition>,
}

impl Terminating {
    /// How long its removal has been going on at `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.since).unwrap_or(Duration::ZERO)
    }

    /// Whether it has been going on for [`STUCK_AFTER`] or longer.
    pub fn is_stuck(&self, now: SystemTime) -> bool {
        self.age(now) >= STUCK_AFTER
    }

    /// `Terminating for 12m: NamespaceFinalizersRemaining: ...`, one line.
    pub fn describe(&self, now: SystemTime) -> String {
        format!(
            "Terminating for {}: {}",
            crate::sweep::approximate(self.age(now).as_secs()),
            describe_holding(&self.holding, "nothing reported holding it yet")
        )
    }
}

/// A condition that holds a resource being removed, e.g. a namespace's
/// `NamespaceFinalizersRemaining: Some content in the namespace has finalizers remaining: ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldingCondition {
    /// The condition's type.
    pub type_: String,
    /// What it says holds the resource.
    pub message: String,
}

impl fmt::Display for HoldingCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.type_, self.message)
    }
}

/// What holds a resource, for a message: its conditions joined by `; `, or
/// `none` when there are none.
pub fn describe_holding(holding: &[HoldingCondition], none: &str) -> String {
    if holding.is_empty() {
        return none.to_owned();
    }
    holding
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The outcome of removing one resource: `Err` holds the backend's words.
pub type Removal = (RunResource, Result<(), String>);

/// The safety nets' side of a backend. Needs no configuration beyond where the
/// backend lives, so the reaper and `gc` can use it without `ephem.toml`.
///
/// Implementations never list or remove anything that lacks cargo-ephem's
/// run label.
#[async_trait::async_trait]
pub trait Cleanup: Send + Sync {
    /// The backend's name, e.g. `docker`.
    fn backend(&self) -> &str;

    /// Where the backend was reached, for messages (a socket, a server URL).
    fn address(&self) -> &str;

    /// What tells a live run from an abandoned one on this backend (see
    /// [`crate::sweep::plan_sweep`]): by default the runner's process on this
    /// host, else the expiry.
    fn liveness(&self) -> Liveness {
        Liveness::RunnerProcess
    }

    /// Every resource of every cargo-ephem run the backend can see, whichever
    /// run or host made it.
    async fn list(&self) -> Result<Vec<RunResource>, EnvError>;

    /// Removes `resources` in an order the backend can honour (e.g.
    /// containers before their network). A resource already gone counts as
    /// removed. One result per resource.
    async fn remove(&self, resources: &[RunResource]) -> Vec<Removal>;

    /// Removes everything of one run, including what a request in flight when
    /// its runner died creates a moment later; returns how many resources
    /// went. What the reaper calls once the runner is dead. Bounded in time.
    async fn remove_run(&self, run_id: &str) -> Result<usize, EnvError>;

    /// Pushes a live run's expiry forward to `expires_at`, so that a sweep by
    /// another process never takes it for abandoned. `keep` marks it as kept
    /// on purpose (`--keep-env`): spared until it expires, runner or not.
    async fn renew(&self, run_id: &str, expires_at: SystemTime, keep: bool)
        -> Result<(), EnvError>;

    /// The run is over and its environments are gone or kept: drop whatever
    /// only carried its live expiry (what marks a kept environment stays).
    async fn end_run(&self, run_id: &str) -> Result<(), EnvError>;
}
