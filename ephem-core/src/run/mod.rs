//! Scheduling and execution: the dispatcher decides what runs when; the
//! executor runs one attempt of one test.

mod dispatcher;
pub mod executor;
mod slots;
mod tasks;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use ephem_fixtures::{Backend, Cleanup, EnvError, EnvEvent, Environment};
use tokio::sync::mpsc;

pub(crate) use dispatcher::run_with_signals;
pub use dispatcher::{run, RunInput, TestsSource};
pub use executor::{Attempt, AttemptStatus, Capture};

use crate::profile::RetryPolicy;
use crate::test_list::{Selection, TestIdx, TestList};

/// The tests of the shards run here, once built, listed and split.
#[derive(Clone, Debug)]
pub struct PlannedTests {
    /// Every listed test.
    pub list: Arc<TestList>,
    /// What the filters decided for each test of `list`.
    pub selection: Arc<Vec<Selection>>,
    /// `(shard number, tests)` for each shard run here; tests are run or
    /// skipped per `selection`.
    pub shards: Vec<(u32, Vec<TestIdx>)>,
    /// The line announcing what runs, shown once the plan is known.
    pub headline: String,
    /// Per test (by [`TestIdx`]), what a nextest profile and its overrides
    /// say; `None`: every test runs under [`RunOptions`]' retries and timeout.
    pub knobs: Option<Arc<Vec<TestKnobs>>>,
}

/// How one test runs: a profile's settings for it, command-line flags
/// applied on top.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestKnobs {
    /// Retries, and the wait before each.
    pub retries: RetryPolicy,
    /// Kill it after this long.
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL when it is killed.
    pub grace: Duration,
    /// Threads of the run's budget it takes (1 to `test_threads`).
    pub threads: usize,
    /// Its test group, limited by [`RunOptions::test_groups`]; `None`: `@global`.
    pub group: Option<Arc<str>>,
    /// Higher starts first.
    pub priority: i8,
}

/// Knobs of one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Unique id of this run (`EPHEM_RUN_ID`).
    pub run_id: String,
    /// Tests running at once, across all shards; each shard gets at most
    /// `ceil(test_threads / shards)` of them.
    pub test_threads: usize,
    /// Extra attempts for a failing test.
    pub retries: u32,
    /// Kill a test after this long.
    pub test_timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL when a test times out or the run stops.
    pub grace: Duration,
    /// A test running longer than this is reported as slow.
    pub slow_after: Duration,
    /// Stop scheduling new tests after failures (`max_fail` of them).
    pub fail_fast: bool,
    /// With `fail_fast`, the failures after which no new test starts
    /// (`--max-fail`; 1: the first).
    pub max_fail: u32,
    /// Most tests of each test group at once (`[test-groups]`).
    pub test_groups: BTreeMap<String, usize>,
    /// Number of shards in the whole plan (`EPHEM_SHARD_COUNT`).
    pub shard_count: u32,
    /// Leave environments running after the run.
    pub keep_env: bool,
    /// `--reuse`: keep every ready environment for the next run, this long
    /// idle before it expires.
    pub reuse_ttl: Option<Duration>,
    /// At most this many tests of one shard at once (`[shards]
    /// test-threads`); `None`: `ceil(test_threads / shards)`.
    pub shard_test_threads: Option<usize>,
    /// Where tests' output goes; [`Capture::None`] runs one test at a time.
    pub capture: Capture,
    /// Test hook: make a task panic on purpose (see [`PanicPoint`]).
    #[doc(hidden)]
    pub panic_at: Option<PanicPoint>,
}

/// Where the test hook `CARGO_EPHEM_TEST_PANIC` makes the runner panic, so
/// the end-to-end tests can prove that a panic anywhere ends the run with
/// exit 1 and leaves nothing behind. There is no other way to make a
/// correct runner panic on demand.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanicPoint {
    /// In the dispatcher itself, once a shard's environment is ready.
    Ready,
    /// Inside a shard's provisioning task.
    Provision,
    /// Inside a test attempt's task, once the test process runs.
    Attempt,
    /// Inside a shard's teardown task.
    Teardown,
}

impl PanicPoint {
    /// The environment variable that sets the hook.
    pub const VAR: &'static str = "CARGO_EPHEM_TEST_PANIC";

    /// The hook set in the environment, if any.
    pub fn from_env() -> Option<PanicPoint> {
        match std::env::var(Self::VAR).ok()?.as_str() {
            "ready" => Some(PanicPoint::Ready),
            "provision" => Some(PanicPoint::Provision),
            "attempt" => Some(PanicPoint::Attempt),
            "teardown" => Some(PanicPoint::Teardown),
            _ => None,
        }
    }
}

/// The environments of a run: the backend, its safety-net side, and what
/// it reports.
pub struct RunEnvironments {
    /// Provisions and tears down shards.
    pub backend: Arc<dyn Backend>,
    /// Renews the run's expiry while it is alive.
    pub cleanup: Arc<dyn Cleanup>,
    /// Pull progress, service deaths, warnings.
    pub events: mpsc::UnboundedReceiver<EnvEvent>,
    /// Which tests get which services (`[services.NAME] tests`); `None`:
    /// every test gets every service.
    pub scopes: Option<Arc<crate::scopes::ServiceScopes>>,
}

/// The final word on one test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed on its first attempt.
    Passed,
    /// Failed, then passed on a retry.
    Flaky,
    /// Failed on every attempt (the last one is not a timeout).
    Failed,
    /// Its last attempt was killed after `--test-timeout`.
    TimedOut,
    /// Not run; the text says why (ignored, fail-fast, interrupted, environment failed).
    Skipped(String),
}

/// Everything known about one test at the end of the run.
#[derive(Clone, Debug)]
pub struct TestOutcome {
    /// The test.
    pub test: TestIdx,
    /// 1-based shard it ran in.
    pub shard: u32,
    /// Every attempt, in order; empty for skipped tests.
    pub attempts: Vec<Attempt>,
    /// The verdict.
    pub verdict: Verdict,
    /// Why the environment may be to blame (a service that died mid-run).
    pub diagnosis: Option<String>,
}

impl TestOutcome {
    /// Time of the last attempt (zero when not run).
    pub fn duration(&self) -> Duration {
        self.attempts.last().map(|a| a.duration).unwrap_or_default()
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct RunResult {
    /// Every selected test of the shards run here, in shard then test order.
    pub outcomes: Vec<TestOutcome>,
    /// The signal that stopped the run, if any.
    pub interrupted: Option<i32>,
    /// Environment failures, by shard (0 = run-wide preparation).
    pub env_errors: Vec<(u32, EnvError)>,
    /// Environments still running (`--keep-env`), by shard.
    pub kept: Vec<(u32, Environment)>,
    /// Environments kept for the next `--reuse` run, and for how long idle.
    pub kept_for_reuse: Option<(usize, Duration)>,
    /// Services that died while their shard's tests ran, described.
    pub service_deaths: Vec<String>,
    /// A task of the runner panicked (a bug): the run was stopped.
    pub internal_error: Option<String>,
    /// When the run started.
    pub started_at: SystemTime,
    /// How long it took, preparation and teardown included.
    pub duration: Duration,
    /// The run-wide environment preparation (image pulls), if there was one.
    pub prepare: Option<Span>,
    /// When each shard run here went through its environment's phases.
    pub timelines: Vec<ShardTimeline>,
}

/// A stretch of wall-clock time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// When it began.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
}

/// The environment phases of one shard, as far as they got: provisioning
/// (create, start, wait until ready) and teardown. A shard without an
/// environment has neither.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardTimeline {
    /// 1-based shard number.
    pub shard: u32,
    /// From the provisioning request to ready (or failed).
    pub provision: Option<Span>,
    /// Whether provisioning ended in an error.
    pub provision_failed: bool,
    /// From the teardown request to its end.
    pub teardown: Option<Span>,
}

/// A running test as the display sees it.
#[derive(Clone, Debug)]
pub struct RunningTest {
    /// The test.
    pub test: TestIdx,
    /// Its shard.
    pub shard: u32,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// How long it has been running.
    pub elapsed: Duration,
}

/// What the dispatcher tells the display as the run goes.
pub trait RunEvents: Send {
    /// The tests are known (the build ended); environments may have been
    /// starting for a while.
    fn planned(&mut self, tests: &PlannedTests) {
        let _ = tests;
    }
    /// The environment backend reported progress (pulls, service deaths).
    fn env_event(&mut self, event: &EnvEvent);
    /// A shard can run tests: its environment is ready (`with_env`), or it
    /// needs none (no backend, or nothing to run).
    fn shard_ready(&mut self, shard: u32, with_env: bool);
    /// A test attempt failed and will be retried.
    fn retrying(&mut self, test: TestIdx, shard: u32, failed: &Attempt);
    /// A test has its verdict.
    fn finished(&mut self, outcome: &TestOutcome);
    /// Called a few times a second with the tests still running.
    fn tick(&mut self, running: &[RunningTest]);
    /// The run is being stopped by a signal.
    fn interrupted(&mut self, signal: i32, second: bool);
}
