//! The dispatcher: one `select!` loop over the ends of the tasks it spawned
//! (test attempts, provisioning, teardown), environment events, signals and
//! timers. It owns every decision (what runs next, retries, fail-fast,
//! stopping, teardown); executors only run attempts, backends only build and
//! remove environments.
//!
//! Split by concern: `shards` (each shard's environment, from preparation to
//! release), `schedule` (the plan, what runs next, results of attempts),
//! `ends` (tasks that ended or panicked), `stop` (signals and stopping).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ephem_fixtures::{
    Backend, Cleanup, EnvError, EnvEvent, Environment, RunContext, ShardContext, TestHooks,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use super::executor::{run_attempt, Attempt, AttemptSpec, AttemptStatus, Capture, StopLevel};
use super::slots::{GlobalSlots, GroupSlot, NextestAttempt};
use super::tasks::{Ended, Msg, Task, Tasks};
use super::{
    PanicPoint, PlannedTests, RunEnvironments, RunEvents, RunOptions, RunResult, RunningTest,
    ShardTimeline, Span, TestOutcome, Verdict,
};
use crate::discover::BuildControl;
use crate::mask;
use crate::scopes::{ServiceScopes, TestScope};
use crate::signals::Signals;
use crate::test_list::{Selection, TestIdx, TestList};

/// What to run: the shards run here, their tests (known now or once the
/// build ends), and the shared context.
pub struct RunInput {
    /// The shards run here, 1-based: known before the build, so their
    /// environments can start while cargo still compiles.
    pub shards: Vec<u32>,
    /// The tests of those shards.
    pub tests: TestsSource,
    /// The build still running, to stop on a signal before the plan arrives.
    pub build: Option<BuildControl>,
    /// Knobs.
    pub options: RunOptions,
    /// The environments, if shards need them.
    pub environments: Option<RunEnvironments>,
    /// How long environments outlive their last sign of life: the expiry on
    /// their labels, pushed forward every third of it while the run is alive.
    pub env_ttl: Duration,
}

/// Where the dispatcher gets the shards' tests from.
pub enum TestsSource {
    /// Known already.
    Known(PlannedTests),
    /// Sent once the build and the listing end; `None` when they failed
    /// (the run then only tears down what it started).
    Coming(oneshot::Receiver<Option<PlannedTests>>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EnvPhase {
    /// Waiting for the run-wide preparation (image pulls).
    AwaitPrepare,
    Provisioning,
    Ready,
    /// Its environment failed; its tests are not run.
    Failed,
    /// Teardown requested or nothing to tear down.
    Released,
}

struct Pending {
    test: TestIdx,
    attempt_no: u32,
}

struct ShardState {
    number: u32,
    queue: VecDeque<Pending>,
    phase: EnvPhase,
    vars: Arc<Vec<(String, String)>>,
    env: Option<Environment>,
    running: usize,
    provision_task: Option<AbortHandle>,
    /// A service of this shard died: later failures probably come from that.
    diagnosis: Option<String>,
    /// When its environment phases began and ended.
    timeline: ShardTimeline,
    /// When provisioning or teardown was requested, until it ends.
    phase_started: Option<SystemTime>,
    /// What runs around each attempt (resets, per-test databases).
    hooks: Option<Arc<dyn TestHooks>>,
    /// One test at a time: a service resets to its baseline between tests.
    serial: bool,
    /// Running tests that use the environment, and those of them that
    /// run one at a time (`serial`).
    env_running: usize,
    serial_running: usize,
}

impl ShardState {
    /// Records that the provisioning requested at `phase_started` ended now.
    fn provision_ended(&mut self, failed: bool) {
        if let Some(start) = self.phase_started.take() {
            self.timeline.provision = Some(Span {
                start,
                end: SystemTime::now(),
            });
            self.timeline.provision_failed = failed;
        }
    }

    /// Records that the teardown requested at `phase_started` ended now.
    fn teardown_ended(&mut self) {
        if let Some(start) = self.phase_started.take() {
            self.timeline.teardown = Some(Span {
                start,
                end: SystemTime::now(),
            });
        }
    }
}

struct Running {
    shard: u32,
    attempt_no: u32,
    started: Instant,
    /// Its `NEXTEST_TEST_GLOBAL_SLOT`.
    slot: u32,
    /// Threads of the budget it holds, and its test group's slot.
    threads: usize,
    group: Option<Arc<str>>,
    /// It uses its shard's environment (counted in `env_running`).
    uses_env: bool,
    /// It runs alone among its shard's serial tests (`serial_running`).
    serial: bool,
}

/// A retry waiting out its backoff delay.
struct Delayed {
    due: tokio::time::Instant,
    shard: u32,
    pending: Pending,
}

struct Dispatcher<'a> {
    /// Empty until the plan arrives.
    list: Arc<TestList>,
    /// Where the plan comes from, until it came.
    plan_rx: Option<oneshot::Receiver<Option<PlannedTests>>>,
    /// The plan arrived (or the build failed): shards know their tests.
    planned: bool,
    /// The build, while the plan has not arrived.
    build: Option<BuildControl>,
    opts: RunOptions,
    backend: Option<Arc<dyn Backend>>,
    cleanup: Option<Arc<dyn Cleanup>>,
    run_ctx: RunContext,
    shards: Vec<ShardState>,
    next_shard: usize,
    tasks: Tasks,
    stop_tx: watch::Sender<StopLevel>,
    stop_rx: watch::Receiver<StopLevel>,
    prepare_task: Option<AbortHandle>,
    teardowns_pending: usize,
    running: HashMap<TestIdx, Running>,
    /// The global slots of running tests (`NEXTEST_TEST_GLOBAL_SLOT`).
    slots: GlobalSlots,
    /// The slots within each test group (`NEXTEST_TEST_GROUP_SLOT`).
    group_slots: HashMap<Arc<str>, GlobalSlots>,
    /// Per-test knobs of a profile (see `schedule::knobs`).
    knobs: Option<Arc<Vec<super::TestKnobs>>>,
    /// Threads held by running tests, and tests running per test group.
    threads_used: usize,
    group_running: HashMap<Arc<str>, usize>,
    /// Tests failed so far, for `--max-fail`.
    failures: u32,
    /// Retries waiting for their backoff delay.
    delayed: Vec<Delayed>,
    attempts: HashMap<TestIdx, Vec<Attempt>>,
    outcomes: Vec<TestOutcome>,
    /// Set once no new test may start; the text is why.
    stopping: Option<String>,
    interrupted: Option<i32>,
    env_errors: Vec<(u32, EnvError)>,
    kept: Vec<(u32, Environment)>,
    /// Shards kept for the next `--reuse` run (counted by their tasks).
    kept_for_reuse: Arc<AtomicUsize>,
    /// The last renewal of the run's expiry failed (warned once per streak).
    renewal_failing: bool,
    service_deaths: Vec<String>,
    internal_error: Option<String>,
    /// When the run-wide preparation began, and its span once it ended.
    prepare_started: Option<SystemTime>,
    prepare_span: Option<Span>,
    /// Which tests get which services; `None`: all get all.
    scopes: Option<Arc<ServiceScopes>>,
    /// Each test's scope, by index, once the plan came; empty when no
    /// service is scoped (every test uses the environment).
    test_scopes: Vec<Arc<TestScope>>,
    /// The run-wide preparation ended well: shards may be provisioned.
    prepared: bool,
    events: &'a mut dyn RunEvents,
}

/// Runs the shards' tests to completion, or until stopped, and tears their
/// environments down. Always returns a result, so the report is never lost;
/// a task that panics stops the run with [`RunResult::internal_error`] set,
/// environments still torn down.
pub async fn run(input: RunInput, events: &mut dyn RunEvents) -> RunResult {
    run_with_signals(input, events, Signals::new()).await
}

/// [`run`] with signal handlers installed by the caller earlier (before it
/// started a build the dispatcher must be able to stop).
pub(crate) async fn run_with_signals(
    input: RunInput,
    events: &mut dyn RunEvents,
    mut signals: Signals,
) -> RunResult {
    let started_at = SystemTime::now();
    let start = Instant::now();
    let env_ttl = input.env_ttl;
    let (mut d, mut env_events) = Dispatcher::new(input, events);

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let renew_every = (env_ttl / 3).max(Duration::from_secs(1));
    let mut renew =
        tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        d.schedule();
        if d.is_done() {
            break;
        }
        let retry_due = d.next_retry_due();
        tokio::select! {
            plan = recv_plan(&mut d.plan_rx), if d.plan_rx.is_some() => d.plan_arrived(plan),
            ended = d.tasks.next() => d.task_ended(ended),
            Some(ev) = recv_opt(&mut env_events) => d.env_event(ev),
            sig = signals.recv() => d.on_signal(sig),
            _ = tick.tick() => {
                let snapshot = d.running_snapshot();
                d.events.tick(&snapshot);
            }
            _ = renew.tick(), if d.cleanup.is_some() => d.renew(env_ttl),
            _ = sleep_until_opt(retry_due) => d.release_due_retries(),
        }
    }
    // A renewal in flight must not outlive the run's end below.
    d.tasks.drain().await;
    // Environments kept for reuse carry leases marked keep (see
    // `Backend::keep`), which `end_run` leaves.
    let kept_for_reuse = d.kept_for_reuse.load(Ordering::Relaxed);
    if let Some(cleanup) = d.cleanup.clone() {
        let run_id = d.run_ctx.run_id.clone();
        let ended = if d.kept.is_empty() {
            cleanup.end_run(&run_id).await
        } else {
            cleanup
                .renew(&run_id, SystemTime::now() + env_ttl, true)
                .await
        };
        if let Err(e) = ended {
            d.env_errors.push((0, e));
        }
    }
    // Drain what the backend said last (e.g. the final pull progress).
    if let Some(rx) = env_events.as_mut() {
        while let Ok(ev) = rx.try_recv() {
            d.events.env_event(&ev);
        }
    }
    let mut outcomes = std::mem::take(&mut d.outcomes);
    outcomes.sort_by_key(|o| (o.shard, o.test));
    RunResult {
        outcomes,
        interrupted: d.interrupted,
        env_errors: std::mem::take(&mut d.env_errors),
        kept: std::mem::take(&mut d.kept),
        kept_for_reuse: d
            .opts
            .reuse_ttl
            .filter(|_| kept_for_reuse > 0)
            .map(|ttl| (kept_for_reuse, ttl)),
        service_deaths: std::mem::take(&mut d.service_deaths),
        internal_error: d.internal_error.take(),
        started_at,
        duration: start.elapsed(),
        prepare: d.prepare_span,
        timelines: d.shards.iter().map(|s| s.timeline.clone()).collect(),
    }
}

/// The plan once it comes; `None` when the build failed (or its task died
/// and dropped the sender).
async fn recv_plan(
    rx: &mut Option<oneshot::Receiver<Option<PlannedTests>>>,
) -> Option<PlannedTests> {
    match rx {
        Some(rx) => rx.await.ok().flatten(),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl<'a> Dispatcher<'a> {
    /// A dispatcher for `input`, its shards queued and the run-wide
    /// preparation started; also the backend's event stream.
    fn new(
        input: RunInput,
        events: &'a mut dyn RunEvents,
    ) -> (Self, Option<mpsc::UnboundedReceiver<EnvEvent>>) {
        let RunInput {
            shards,
            tests,
            build,
            mut options,
            environments,
            env_ttl,
        } = input;
        if options.capture == Capture::None {
            // Tests share the terminal: one at a time, across shards too.
            options.test_threads = 1;
        }
        let (stop_tx, stop_rx) = watch::channel(StopLevel::Run);
        let run_ctx = RunContext {
            run_id: options.run_id.clone(),
            shard_count: options.shard_count,
            expires_at: SystemTime::now() + env_ttl,
        };
        let (backend, cleanup, env_events, scopes) = match environments {
            Some(e) => (Some(e.backend), Some(e.cleanup), Some(e.events), e.scopes),
            None => (None, None, None, None),
        };
        let mut d = Dispatcher {
            list: Arc::new(TestList::default()),
            plan_rx: None,
            planned: false,
            build,
            run_ctx,
            backend,
            cleanup,
            shards: Vec::new(),
            next_shard: 0,
            tasks: Tasks::default(),
            stop_tx,
            stop_rx,
            prepare_task: None,
            teardowns_pending: 0,
            running: HashMap::new(),
            slots: GlobalSlots::new(options.test_threads),
            group_slots: HashMap::new(),
            knobs: None,
            threads_used: 0,
            group_running: HashMap::new(),
            failures: 0,
            delayed: Vec::new(),
            attempts: HashMap::new(),
            outcomes: Vec::new(),
            stopping: None,
            interrupted: None,
            env_errors: Vec::new(),
            kept: Vec::new(),
            kept_for_reuse: Arc::default(),
            renewal_failing: false,
            service_deaths: Vec::new(),
            internal_error: None,
            prepare_started: None,
            prepare_span: None,
            scopes,
            test_scopes: Vec::new(),
            prepared: false,
            events,
            opts: options,
        };
        d.init_shards(&shards);
        match tests {
            TestsSource::Known(tests) => d.plan_arrived(Some(tests)),
            TestsSource::Coming(rx) => d.plan_rx = Some(rx),
        }
        d.start_preparation();
        (d, env_events)
    }

    fn is_done(&self) -> bool {
        self.planned
            && self.prepare_task.is_none()
            && self.running.is_empty()
            && self.delayed.is_empty()
            && self.teardowns_pending == 0
            && self.shards.iter().all(|s| {
                s.queue.is_empty()
                    && s.running == 0
                    && matches!(s.phase, EnvPhase::Released | EnvPhase::Ready)
                    && s.provision_task.is_none()
            })
    }

    fn shard_idx(&self, number: u32) -> usize {
        self.shards
            .iter()
            .position(|s| s.number == number)
            .expect("message for a known shard")
    }
}

mod ends;
mod nextest;
mod schedule;
mod shards;
mod stop;
#[cfg(test)]
mod tests;
