//! The dispatcher: one `select!` loop over the ends of the tasks it spawned
//! (test attempts, provisioning, teardown), environment events, signals and
//! timers. It owns every decision (what runs next, retries, fail-fast,
//! stopping, teardown); executors only run attempts, backends only build and
//! remove environments.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ephem_fixtures::{
    Backend, Cleanup, EnvError, EnvEvent, Environment, RunContext, ShardContext, TestHooks,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use super::executor::{run_attempt, Attempt, AttemptSpec, AttemptStatus, StopLevel};
use super::tasks::{Ended, Msg, Task, Tasks};
use super::{
    PanicPoint, PlannedTests, RunEnvironments, RunEvents, RunOptions, RunResult, RunningTest,
    ShardTimeline, Span, TestOutcome, Verdict,
};
use crate::discover::BuildControl;
use crate::mask;
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

/// One attempt with the environment's hooks around it: a reset or a
/// database of its own first (a failure there fails the attempt, with why),
/// handed back after.
async fn attempt_with_hooks(
    mut spec: AttemptSpec,
    stop: watch::Receiver<StopLevel>,
    hooks: Option<Arc<dyn TestHooks>>,
) -> Attempt {
    let Some(hooks) = hooks else {
        return run_attempt(spec, stop).await;
    };
    let started_at = SystemTime::now();
    let prepared = hooks.before_attempt().await;
    let extra = match prepared {
        Ok(extra) => extra,
        Err(e) => {
            return Attempt {
                status: AttemptStatus::Failed(format!(
                    "the environment could not be prepared for this test: {e}"
                )),
                started_at,
                duration: Duration::ZERO,
                stdout: String::new(),
                stderr: String::new(),
            }
        }
    };
    spec.env
        .extend(extra.vars.iter().map(|v| (v.name.clone(), v.value.clone())));
    let attempt = run_attempt(spec, stop).await;
    hooks.after_attempt(extra).await;
    attempt
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
            options,
            environments,
            env_ttl,
        } = input;
        let (stop_tx, stop_rx) = watch::channel(StopLevel::Run);
        let run_ctx = RunContext {
            run_id: options.run_id.clone(),
            shard_count: options.shard_count,
            expires_at: SystemTime::now() + env_ttl,
        };
        let (backend, cleanup, env_events) = match environments {
            Some(e) => (Some(e.backend), Some(e.cleanup), Some(e.events)),
            None => (None, None, None),
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

    /// Every shard, its tests still unknown: waiting for its environment
    /// (or ready at once without a backend).
    fn init_shards(&mut self, shards: &[u32]) {
        let phase = if self.backend.is_some() {
            EnvPhase::AwaitPrepare
        } else {
            EnvPhase::Ready
        };
        for &number in shards {
            self.shards.push(ShardState {
                number,
                queue: VecDeque::new(),
                phase,
                vars: Arc::new(Vec::new()),
                env: None,
                running: 0,
                provision_task: None,
                diagnosis: None,
                timeline: ShardTimeline {
                    shard: number,
                    ..Default::default()
                },
                phase_started: None,
                hooks: None,
                serial: false,
            });
        }
    }

    /// The run-wide preparation, if a shard still waits for an environment.
    fn start_preparation(&mut self) {
        let needs_env = self
            .shards
            .iter()
            .any(|s| s.phase == EnvPhase::AwaitPrepare);
        if let Some(backend) = self.backend.clone().filter(|_| needs_env) {
            let ctx = self.run_ctx.clone();
            self.prepare_started = Some(SystemTime::now());
            self.prepare_task = Some(self.tasks.spawn(Task::Prepare, async move {
                Msg::Prepared(backend.prepare(&ctx).await)
            }));
        }
        for s in &self.shards {
            if s.phase == EnvPhase::Ready {
                self.events.shard_ready(s.number, false);
            }
        }
    }

    /// The tests are known: queue them (ignored ones reported as skipped);
    /// a shard with nothing to run needs no environment, and one already
    /// provisioned is torn down as soon as `schedule` sees it drained.
    /// `None`: the build or the listing failed, so the run only stops.
    fn plan_arrived(&mut self, tests: Option<PlannedTests>) {
        self.planned = true;
        self.plan_rx = None;
        self.build = None;
        let Some(tests) = tests else {
            self.stop("not run: the build failed");
            return;
        };
        self.list = tests.list.clone();
        for (number, shard_tests) in &tests.shards {
            let Some(idx) = self.shards.iter().position(|s| s.number == *number) else {
                continue;
            };
            for &test in shard_tests {
                match tests.selection[test] {
                    Selection::Run => self.shards[idx].queue.push_back(Pending {
                        test,
                        attempt_no: 1,
                    }),
                    Selection::SkipIgnored => self.outcomes.push(TestOutcome {
                        test,
                        shard: *number,
                        attempts: Vec::new(),
                        verdict: Verdict::Skipped("ignored".to_owned()),
                        diagnosis: None,
                    }),
                    Selection::FilteredOut => {}
                }
            }
        }
        self.events.planned(&tests);
        // Stopped before the plan came (a signal, a panicked task), or a
        // shard's environment failed before it (its error is recorded; with
        // --no-fail-fast nothing stops): those tests are reported as not run,
        // with the reason, instead of waiting in a queue nothing drains.
        for idx in 0..self.shards.len() {
            let number = self.shards[idx].number;
            let reason = match &self.stopping {
                Some(reason) => reason.clone(),
                None if self.shards[idx].phase == EnvPhase::Failed => {
                    format!("not run: environment of shard {number} failed")
                }
                None => continue,
            };
            let drained: Vec<_> = self.shards[idx].queue.drain(..).collect();
            for p in drained {
                self.finalize_unrun(p.test, number, &reason);
            }
        }
        for s in &mut self.shards {
            if s.queue.is_empty() && s.phase == EnvPhase::AwaitPrepare {
                s.phase = EnvPhase::Released;
            }
        }
        if self
            .shards
            .iter()
            .all(|s| s.phase != EnvPhase::AwaitPrepare)
        {
            if let Some(task) = self.prepare_task.take() {
                task.abort();
            }
        }
    }

    fn is_done(&self) -> bool {
        self.planned
            && self.prepare_task.is_none()
            && self.running.is_empty()
            && self.teardowns_pending == 0
            && self.shards.iter().all(|s| {
                s.queue.is_empty()
                    && s.running == 0
                    && matches!(s.phase, EnvPhase::Released | EnvPhase::Ready)
                    && s.provision_task.is_none()
            })
    }

    /// Starts whatever can start: tests into free slots, round-robin over
    /// ready shards; teardown of shards with nothing left to run.
    fn schedule(&mut self) {
        while self.stopping.is_none() && self.running.len() < self.opts.test_threads {
            let Some(idx) = self.next_ready_shard() else {
                break;
            };
            let pending = self.shards[idx].queue.pop_front().expect("shard has work");
            self.start_attempt(idx, pending);
        }
        if !self.planned {
            // Queues are empty because the tests are not known yet.
            return;
        }
        for idx in 0..self.shards.len() {
            let s = &self.shards[idx];
            let drained = s.queue.is_empty() && s.running == 0;
            if drained && matches!(s.phase, EnvPhase::Ready | EnvPhase::Failed) {
                self.release(idx);
            }
        }
    }

    /// Each shard may run at most its share of the thread budget, so that
    /// tests sharing one environment see bounded concurrency (one at a time
    /// when there are at least as many shards as threads), or what
    /// `[shards] test-threads` says; `-j` caps it either way.
    fn per_shard_limit(&self) -> usize {
        let divided = self.opts.test_threads.div_ceil(self.shards.len().max(1));
        self.opts
            .shard_test_threads
            .unwrap_or(divided)
            .clamp(1, self.opts.test_threads.max(1))
    }

    fn next_ready_shard(&mut self) -> Option<usize> {
        let n = self.shards.len();
        let limit = self.per_shard_limit();
        for step in 0..n {
            let idx = (self.next_shard + step) % n;
            let s = &self.shards[idx];
            let limit = if s.serial { 1 } else { limit };
            if s.phase == EnvPhase::Ready && !s.queue.is_empty() && s.running < limit {
                self.next_shard = (idx + 1) % n;
                return Some(idx);
            }
        }
        None
    }

    fn start_attempt(&mut self, idx: usize, pending: Pending) {
        let shard = &mut self.shards[idx];
        shard.running += 1;
        let test = pending.test;
        let case = &self.list.tests[test];
        let binary = Arc::new(self.list.binaries[case.binary].clone());
        let mut env = vec![
            ("EPHEM_RUN_ID".to_owned(), self.opts.run_id.clone()),
            ("EPHEM_SHARD".to_owned(), shard.number.to_string()),
            (
                "EPHEM_SHARD_COUNT".to_owned(),
                self.opts.shard_count.to_string(),
            ),
            ("EPHEM_BINARY_ID".to_owned(), binary.binary_id.clone()),
            ("EPHEM_TEST_NAME".to_owned(), case.name.clone()),
            ("EPHEM_ATTEMPT".to_owned(), pending.attempt_no.to_string()),
        ];
        env.extend(shard.vars.iter().cloned());
        let spec = AttemptSpec {
            binary,
            name: Arc::from(case.name.as_str()),
            ignored: case.ignored,
            env,
            timeout: self.opts.test_timeout,
            grace: self.opts.grace,
        };
        self.running.insert(
            test,
            Running {
                shard: shard.number,
                attempt_no: pending.attempt_no,
                started: Instant::now(),
            },
        );
        let (stop, shard_no, attempt_no) = (self.stop_rx.clone(), shard.number, pending.attempt_no);
        let panic_hook = self.opts.panic_at == Some(PanicPoint::Attempt);
        let task = Task::Attempt {
            shard: shard_no,
            test,
        };
        let hooks = shard.hooks.clone();
        self.tasks.spawn(task, async move {
            let attempt = tokio::select! {
                attempt = attempt_with_hooks(spec, stop, hooks) => attempt,
                _ = tokio::time::sleep(Duration::from_millis(300)), if panic_hook => {
                    panic!("{} is set: panicking on purpose while a test runs", PanicPoint::VAR)
                }
            };
            Msg::AttemptDone {
                shard: shard_no,
                test,
                attempt_no,
                attempt,
            }
        });
    }

    fn shard_idx(&self, number: u32) -> usize {
        self.shards
            .iter()
            .position(|s| s.number == number)
            .expect("message for a known shard")
    }

    fn task_ended(&mut self, ended: Ended) {
        match ended {
            Ended::Done(msg) => self.handle(msg),
            // Its state was settled when it was aborted.
            Ended::Aborted => {}
            Ended::Panicked(task, message) => self.task_panicked(task, message),
        }
    }

    /// A task panicked: a bug. Its part of the state is settled as if it had
    /// failed, and the run stops (exit 1), environments torn down as usual.
    fn task_panicked(&mut self, task: Task, message: String) {
        match task {
            Task::Prepare => self.prepare_task = None,
            Task::Provision { shard } => {
                let idx = self.shard_idx(shard);
                let s = &mut self.shards[idx];
                s.provision_task = None;
                s.provision_ended(true);
                if s.phase == EnvPhase::Provisioning {
                    s.phase = EnvPhase::Failed;
                }
            }
            Task::Attempt { shard, test } => {
                // Recorded as a failed attempt: its verdict must not read as a
                // pass, and its process (if any) is left to the reaper.
                let attempt = Attempt {
                    status: AttemptStatus::Failed(format!(
                        "cargo-ephem failed while running this test (internal error: {message})"
                    )),
                    started_at: SystemTime::now(),
                    duration: self
                        .running
                        .get(&test)
                        .map(|r| r.started.elapsed())
                        .unwrap_or_default(),
                    stdout: String::new(),
                    stderr: String::new(),
                };
                let attempt_no = self.running.get(&test).map_or(1, |r| r.attempt_no);
                self.stop("not run: stopped after an internal error");
                self.attempt_done(shard, test, attempt_no, attempt);
            }
            Task::Teardown { shard } => {
                self.teardowns_pending -= 1;
                let idx = self.shard_idx(shard);
                self.shards[idx].teardown_ended();
                self.env_errors.push((
                    shard,
                    EnvError::Other(format!(
                        "shard {shard}: teardown failed (internal error: {message}); \
                         the reaper removes what is left"
                    )),
                ));
            }
            Task::Renew => {}
        }
        self.internal_error
            .get_or_insert_with(|| format!("{task} panicked: {message}"));
        self.stop("not run: stopped after an internal error");
        let _ = self.stop_tx.send(StopLevel::Terminate);
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Renewed(None) => self.renewal_failing = false,
            Msg::Renewed(Some(error)) => {
                if !std::mem::replace(&mut self.renewal_failing, true) {
                    self.events.env_event(&EnvEvent::Warning {
                        shard: None,
                        message: format!(
                            "could not push the run's expiry forward ({error}); while renewals fail, its environments count as abandoned once --env-ttl has passed since the last one, and another run's sweep or `cargo ephem gc` may remove them"
                        ),
                    });
                }
            }
            Msg::Prepared(result) => {
                self.prepare_task = None;
                self.prepare_span = self.prepare_started.map(|start| Span {
                    start,
                    end: SystemTime::now(),
                });
                match result {
                    Ok(()) if self.stopping.is_none() => self.provision_all(),
                    Ok(()) => {}
                    Err(e) => {
                        self.env_errors.push((0, e));
                        self.stop("not run: environment preparation failed");
                    }
                }
            }
            Msg::Provisioned(number, result) => {
                let idx = self.shard_idx(number);
                let shard = &mut self.shards[idx];
                shard.provision_task = None;
                shard.provision_ended(result.is_err());
                if shard.phase != EnvPhase::Provisioning {
                    // The run stopped while this shard was provisioning: its
                    // teardown is under way or follows; a late success must
                    // not make it ready again (nor be torn down twice).
                    return;
                }
                match result {
                    Ok(env) => {
                        shard.vars = Arc::new(
                            env.vars
                                .iter()
                                .map(|v| (v.name.clone(), v.value.clone()))
                                .collect(),
                        );
                        // Secrets a backend read rather than generated
                        // (a kept environment's): every sink masks them.
                        for secret in &env.secrets {
                            ephem_fixtures::secret::register(secret);
                        }
                        shard.hooks = env.test_hooks.clone();
                        shard.serial = env.serial;
                        shard.env = Some(env);
                        shard.phase = EnvPhase::Ready;
                        self.events.shard_ready(number, true);
                        if self.opts.panic_at == Some(PanicPoint::Ready) {
                            panic!("{} is set: panicking on purpose", PanicPoint::VAR);
                        }
                    }
                    Err(e) => {
                        shard.phase = EnvPhase::Failed;
                        let reason = format!("not run: environment of shard {number} failed");
                        let drained: Vec<_> = shard.queue.drain(..).collect();
                        for p in drained {
                            self.finalize_unrun(p.test, number, &reason);
                        }
                        self.env_errors.push((number, e));
                        if self.opts.fail_fast {
                            self.stop("not run: stopped after an environment failure");
                        }
                    }
                }
            }
            Msg::AttemptDone {
                shard,
                test,
                attempt_no,
                attempt,
            } => self.attempt_done(shard, test, attempt_no, attempt),
            Msg::TornDown(number, result) => {
                self.teardowns_pending -= 1;
                let idx = self.shard_idx(number);
                self.shards[idx].teardown_ended();
                if let Err(e) = result {
                    self.env_errors.push((number, e));
                }
            }
        }
    }

    fn provision_all(&mut self) {
        let Some(backend) = self.backend.clone() else {
            return;
        };
        for shard in self
            .shards
            .iter_mut()
            .filter(|s| s.phase == EnvPhase::AwaitPrepare)
        {
            shard.phase = EnvPhase::Provisioning;
            shard.phase_started = Some(SystemTime::now());
            let backend = backend.clone();
            let ctx = ShardContext {
                run: self.run_ctx.clone(),
                shard: shard.number,
            };
            let panic_hook = self.opts.panic_at == Some(PanicPoint::Provision);
            let task = Task::Provision {
                shard: shard.number,
            };
            shard.provision_task = Some(self.tasks.spawn(task, async move {
                if panic_hook {
                    panic!("{} is set: panicking on purpose", PanicPoint::VAR);
                }
                let result = backend.provision(&ctx).await;
                Msg::Provisioned(ctx.shard, result)
            }));
        }
    }

    fn attempt_done(&mut self, number: u32, test: TestIdx, attempt_no: u32, mut attempt: Attempt) {
        self.running.remove(&test);
        let idx = self.shard_idx(number);
        let shard = &mut self.shards[idx];
        shard.running -= 1;
        // Masked before anything cuts the output to a tail, which could
        // leave half a secret.
        mask::mask_in_place(&mut attempt.stdout);
        mask::mask_in_place(&mut attempt.stderr);
        let diagnosis = shard.diagnosis.clone();
        let status = attempt.status.clone();
        if status.is_pass() {
            // Output of passing attempts is not reported; dropping it keeps
            // memory flat on large suites.
            attempt.stdout = String::new();
            attempt.stderr = String::new();
        }
        let attempts = self.attempts.entry(test).or_default();
        attempts.push(attempt);
        let verdict = match status {
            AttemptStatus::Passed if attempt_no == 1 => Verdict::Passed,
            AttemptStatus::Passed => Verdict::Flaky,
            AttemptStatus::Cancelled => {
                let why = self
                    .stopping
                    .clone()
                    .unwrap_or_else(|| "cancelled".to_owned());
                Verdict::Skipped(why.replace("not run", "cancelled"))
            }
            failed => {
                if attempt_no <= self.opts.retries && self.stopping.is_none() {
                    let last = attempts.last().expect("just pushed");
                    self.events.retrying(test, number, last);
                    shard.queue.push_front(Pending {
                        test,
                        attempt_no: attempt_no + 1,
                    });
                    return;
                }
                if matches!(failed, AttemptStatus::TimedOut) {
                    Verdict::TimedOut
                } else {
                    Verdict::Failed
                }
            }
        };
        let failed = matches!(verdict, Verdict::Failed | Verdict::TimedOut);
        let outcome = TestOutcome {
            test,
            shard: number,
            attempts: self.attempts.remove(&test).unwrap_or_default(),
            verdict,
            diagnosis: if failed { diagnosis } else { None },
        };
        self.events.finished(&outcome);
        self.outcomes.push(outcome);
        if failed && self.opts.fail_fast {
            self.stop("not run: stopped after the first failure (use --no-fail-fast to run all)");
        }
    }

    /// Records a test that will not run (again); one with failed attempts
    /// keeps its failure.
    fn finalize_unrun(&mut self, test: TestIdx, shard: u32, reason: &str) {
        let attempts = self.attempts.remove(&test).unwrap_or_default();
        let verdict = match attempts.last().map(|a| &a.status) {
            Some(AttemptStatus::TimedOut) => Verdict::TimedOut,
            Some(_) => Verdict::Failed,
            None => Verdict::Skipped(reason.to_owned()),
        };
        let outcome = TestOutcome {
            test,
            shard,
            attempts,
            verdict,
            diagnosis: None,
        };
        self.events.finished(&outcome);
        self.outcomes.push(outcome);
    }

    /// No new test starts; queued tests are reported as not run.
    fn stop(&mut self, reason: &str) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(reason.to_owned());
        if let Some(task) = self.prepare_task.take() {
            task.abort();
        }
        for idx in 0..self.shards.len() {
            let number = self.shards[idx].number;
            let drained: Vec<_> = self.shards[idx].queue.drain(..).collect();
            for p in drained {
                self.finalize_unrun(p.test, number, reason);
            }
            let shard = &mut self.shards[idx];
            match shard.phase {
                // Nothing was created yet.
                EnvPhase::AwaitPrepare => shard.phase = EnvPhase::Released,
                // Stop waiting for readiness; teardown finds what was created by label.
                EnvPhase::Provisioning => {
                    if let Some(task) = shard.provision_task.take() {
                        task.abort();
                    }
                    shard.provision_ended(true);
                    shard.phase = EnvPhase::Failed;
                }
                _ => {}
            }
        }
    }

    fn on_signal(&mut self, signal: i32) {
        // Still building: cargo (ours, and only ours) stops too.
        if let Some(build) = &self.build {
            build.stop(signal);
        }
        let second = self.interrupted.is_some();
        self.interrupted.get_or_insert(signal);
        self.events.interrupted(signal, second);
        let name = super::executor::signal_name(signal);
        self.stop(&format!("not run: run interrupted by {name}"));
        let level = if second {
            StopLevel::Kill
        } else {
            StopLevel::Terminate
        };
        let _ = self.stop_tx.send(level);
    }

    /// Tears the shard's environment down (or keeps it with `--keep-env`).
    fn release(&mut self, idx: usize) {
        let shard = &mut self.shards[idx];
        let phase = std::mem::replace(&mut shard.phase, EnvPhase::Released);
        let Some(backend) = self.backend.clone() else {
            return;
        };
        if phase == EnvPhase::Ready && self.opts.keep_env {
            if let Some(env) = shard.env.take() {
                self.kept.push((shard.number, env));
            }
            return;
        }
        self.teardowns_pending += 1;
        shard.phase_started = Some(SystemTime::now());
        let ctx = ShardContext {
            run: self.run_ctx.clone(),
            shard: shard.number,
        };
        if let Some(ttl) = self.opts.reuse_ttl.filter(|_| phase == EnvPhase::Ready) {
            // Kept for the next `--reuse` run instead of removed; a keep
            // that fails falls back to removal.
            let kept = self.kept_for_reuse.clone();
            let task = Task::Teardown { shard: ctx.shard };
            self.tasks.spawn(task, async move {
                let until = SystemTime::now() + ttl;
                let result = match backend.keep(&ctx, until).await {
                    Ok(()) => {
                        kept.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Ok(())
                    }
                    Err(_) => backend.teardown(&ctx).await,
                };
                Msg::TornDown(ctx.shard, result)
            });
            return;
        }
        let panic_hook = self.opts.panic_at == Some(PanicPoint::Teardown);
        let task = Task::Teardown { shard: ctx.shard };
        self.tasks.spawn(task, async move {
            if panic_hook {
                panic!("{} is set: panicking on purpose", PanicPoint::VAR);
            }
            let result = backend.teardown(&ctx).await;
            Msg::TornDown(ctx.shard, result)
        });
    }

    fn env_event(&mut self, event: EnvEvent) {
        if let EnvEvent::ServiceExited {
            shard,
            service,
            exit_code,
            at,
        } = &event
        {
            let code = exit_code
                .map(|c| format!("code {c}"))
                .unwrap_or("code unknown".into());
            let at = humantime::format_rfc3339_seconds(*at);
            let text = format!("service {service} of shard {shard} exited ({code}) at {at}");
            if let Some(s) = self.shards.iter_mut().find(|s| s.number == *shard) {
                s.diagnosis.get_or_insert(text.clone());
            }
            self.service_deaths.push(text);
        }
        self.events.env_event(&event);
    }

    /// Pushes the expiry of this run's environments forward. A failed
    /// renewal is not fatal (the next one may succeed) but warned about: on
    /// a backend whose liveness is the expiry (Kubernetes), nothing else
    /// keeps other hosts' sweeps off the run.
    fn renew(&mut self, ttl: Duration) {
        let Some(cleanup) = self.cleanup.clone() else {
            return;
        };
        if self.tasks.any(|t| *t == Task::Renew) {
            return;
        }
        let expires_at = SystemTime::now() + ttl;
        self.run_ctx.expires_at = expires_at;
        let run_id = self.run_ctx.run_id.clone();
        self.tasks.spawn(Task::Renew, async move {
            let renewed = cleanup.renew(&run_id, expires_at, false).await;
            Msg::Renewed(renewed.err().map(|e| e.to_string()))
        });
    }

    fn running_snapshot(&self) -> Vec<RunningTest> {
        self.running
            .iter()
            .map(|(&test, r)| RunningTest {
                test,
                shard: r.shard,
                attempt: r.attempt_no,
                elapsed: r.started.elapsed(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ephem_fixtures::{RunResource, ShardContext};

    use super::*;
    use crate::test_list::TestBinary;

    /// A backend whose shards are ready at once; it counts teardowns and
    /// can panic where a test asks it to. Not a stand-in for Docker: these
    /// tests are about the dispatcher's bookkeeping, whatever the backend.
    #[derive(Default)]
    struct CountingBackend {
        provisions: AtomicUsize,
        teardowns: AtomicUsize,
        panic_in_provision: bool,
        panic_in_teardown: bool,
        /// This shard's provisioning fails (an environment error).
        fail_shard: Option<u32>,
    }

    #[async_trait::async_trait]
    impl Backend for CountingBackend {
        fn name(&self) -> &str {
            "counting"
        }
        fn address(&self) -> &str {
            "memory"
        }
        async fn prepare(&self, _: &RunContext) -> Result<(), EnvError> {
            Ok(())
        }
        async fn provision(&self, shard: &ShardContext) -> Result<Environment, EnvError> {
            assert!(!self.panic_in_provision, "provision panics on purpose");
            self.provisions.fetch_add(1, Ordering::SeqCst);
            if self.fail_shard == Some(shard.shard) {
                return Err(EnvError::Other("not ready on purpose".into()));
            }
            Ok(Environment::default())
        }
        async fn teardown(&self, _: &ShardContext) -> Result<(), EnvError> {
            self.teardowns.fetch_add(1, Ordering::SeqCst);
            assert!(!self.panic_in_teardown, "teardown panics on purpose");
            Ok(())
        }
        fn cleanup(&self) -> Arc<dyn Cleanup> {
            Arc::new(NoCleanup)
        }
    }

    struct NoCleanup;

    #[async_trait::async_trait]
    impl Cleanup for NoCleanup {
        fn backend(&self) -> &str {
            "counting"
        }
        fn address(&self) -> &str {
            "memory"
        }
        async fn list(&self) -> Result<Vec<RunResource>, EnvError> {
            Ok(Vec::new())
        }
        async fn remove(&self, _: &[RunResource]) -> Vec<ephem_fixtures::cleanup::Removal> {
            Vec::new()
        }
        async fn remove_run(&self, _: &str) -> Result<usize, EnvError> {
            Ok(0)
        }
        async fn renew(&self, _: &str, _: SystemTime, _: bool) -> Result<(), EnvError> {
            Ok(())
        }
        async fn end_run(&self, _: &str) -> Result<(), EnvError> {
            Ok(())
        }
    }

    struct Silent;

    impl RunEvents for Silent {
        fn env_event(&mut self, _: &EnvEvent) {}
        fn shard_ready(&mut self, _: u32, _: bool) {}
        fn retrying(&mut self, _: TestIdx, _: u32, _: &Attempt) {}
        fn finished(&mut self, _: &TestOutcome) {}
        fn tick(&mut self, _: &[RunningTest]) {}
        fn interrupted(&mut self, _: i32, _: bool) {}
    }

    /// Keeps the warnings the run reports.
    #[derive(Default)]
    struct Warnings(Vec<String>);

    impl RunEvents for Warnings {
        fn env_event(&mut self, event: &EnvEvent) {
            if let EnvEvent::Warning { message, .. } = event {
                self.0.push(message.clone());
            }
        }
        fn shard_ready(&mut self, _: u32, _: bool) {}
        fn retrying(&mut self, _: TestIdx, _: u32, _: &Attempt) {}
        fn finished(&mut self, _: &TestOutcome) {}
        fn tick(&mut self, _: &[RunningTest]) {}
        fn interrupted(&mut self, _: i32, _: bool) {}
    }

    #[tokio::test]
    async fn a_failing_renewal_is_warned_about_once_per_streak() {
        let backend = Arc::new(CountingBackend::default());
        let mut warnings = Warnings::default();
        {
            let (mut d, _events) = Dispatcher::new(input(backend, 1), &mut warnings);
            d.handle(Msg::Renewed(Some("forbids patch on namespaces".into())));
            d.handle(Msg::Renewed(Some("forbids patch on namespaces".into())));
            d.handle(Msg::Renewed(None));
            d.handle(Msg::Renewed(Some("no answer within 30s".into())));
        }
        assert_eq!(warnings.0.len(), 2, "{:?}", warnings.0);
        assert!(
            warnings.0[0].starts_with(
                "could not push the run's expiry forward (forbids patch on namespaces)"
            ) && warnings.0[0].contains("--env-ttl"),
            "{}",
            warnings.0[0]
        );
        assert!(warnings.0[1].contains("no answer within 30s"));
    }

    /// Two tests of a "binary" that is `/bin/true`: every attempt passes.
    fn input(backend: Arc<CountingBackend>, shards: u32) -> RunInput {
        let binary = TestBinary {
            binary_id: "pkg".into(),
            binary_name: "true".into(),
            package_id: "pkg".into(),
            package_name: "pkg".into(),
            kind: "lib".into(),
            path: "/bin/true".into(),
            cwd: "/".into(),
            env: Arc::new(Vec::new()),
        };
        let list = TestList::new(
            vec![(binary, vec![("a".into(), false), ("b".into(), false)])],
            "/".into(),
        );
        let (_tx, events) = mpsc::unbounded_channel();
        RunInput {
            shards: (1..=shards).collect(),
            tests: TestsSource::Known(PlannedTests {
                list: Arc::new(list),
                selection: Arc::new(vec![Selection::Run, Selection::Run]),
                shards: (1..=shards)
                    .map(|m| (m, vec![(m as usize - 1) % 2]))
                    .collect(),
                headline: String::new(),
            }),
            build: None,
            options: RunOptions {
                run_id: "unit".into(),
                test_threads: 2,
                retries: 0,
                test_timeout: None,
                grace: Duration::from_secs(1),
                slow_after: Duration::from_secs(60),
                fail_fast: true,
                shard_count: shards,
                keep_env: false,
                reuse_ttl: None,
                shard_test_threads: None,
                panic_at: None,
            },
            environments: Some(RunEnvironments {
                cleanup: backend.cleanup(),
                backend,
                events,
            }),
            env_ttl: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_provisioning_result_after_a_stop_does_not_revive_the_shard() {
        let backend = Arc::new(CountingBackend::default());
        let mut silent = Silent;
        let (mut d, _events) = Dispatcher::new(input(backend.clone(), 1), &mut silent);
        // The run was stopped while shard 1 provisioned, and its teardown
        // was requested; then the provisioning's success arrives.
        d.prepare_task = None;
        d.shards[0].phase = EnvPhase::Provisioning;
        d.stop("not run: stopped");
        d.schedule();
        assert_eq!(d.shards[0].phase, EnvPhase::Released);
        assert_eq!(d.teardowns_pending, 1);
        d.handle(Msg::Provisioned(1, Ok(Environment::default())));
        d.schedule();
        assert_eq!(d.shards[0].phase, EnvPhase::Released, "revived");
        assert_eq!(d.teardowns_pending, 1, "a second teardown was requested");
        assert!(d.kept.is_empty());
    }

    /// Runs two shards on `backend`, failing the test if the run does not
    /// end on its own (the bug: waiting forever for a panicked task).
    async fn run_two_shards(backend: &Arc<CountingBackend>) -> RunResult {
        tokio::time::timeout(
            Duration::from_secs(30),
            run(input(backend.clone(), 2), &mut Silent),
        )
        .await
        .expect("the run ends instead of waiting for the panicked task")
    }

    #[tokio::test]
    async fn a_panicking_provision_ends_the_run_as_an_internal_error() {
        let backend = Arc::new(CountingBackend {
            panic_in_provision: true,
            ..Default::default()
        });
        let result = run_two_shards(&backend).await;
        let error = result.internal_error.expect("an internal error");
        assert!(error.contains("provisioning of shard"), "{error}");
        assert!(error.contains("provision panics on purpose"), "{error}");
        assert!(result
            .outcomes
            .iter()
            .all(|o| matches!(o.verdict, Verdict::Skipped(_))));
        // Both shards were torn down, whichever of them panicked first.
        assert_eq!(backend.teardowns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panicking_teardown_ends_the_run_as_an_internal_error() {
        let backend = Arc::new(CountingBackend {
            panic_in_teardown: true,
            ..Default::default()
        });
        let result = run_two_shards(&backend).await;
        assert!(result
            .internal_error
            .is_some_and(|e| e.contains("teardown of shard")));
        assert_eq!(backend.teardowns.load(Ordering::SeqCst), 2);
        // A test that had not ended when the first teardown panicked is
        // cancelled, never failed.
        for o in &result.outcomes {
            match &o.verdict {
                Verdict::Passed => {}
                Verdict::Skipped(why) => assert!(why.contains("internal error"), "{why}"),
                other => panic!("test {} ended {other:?}", o.test),
            }
        }
    }

    #[tokio::test]
    async fn a_shard_runs_at_most_its_configured_tests_at_once() {
        let backend = Arc::new(CountingBackend::default());
        let mut silent = Silent;
        let mut inp = input(backend, 1);
        if let TestsSource::Known(tests) = &mut inp.tests {
            tests.shards = vec![(1, vec![0, 1])];
        }
        inp.options.test_threads = 8;
        let (d, _) = Dispatcher::new(inp, &mut silent);
        assert_eq!(d.per_shard_limit(), 8);
        let mut inp = input(Arc::new(CountingBackend::default()), 1);
        inp.options.test_threads = 8;
        inp.options.shard_test_threads = Some(1);
        let mut silent = Silent;
        let (d, _) = Dispatcher::new(inp, &mut silent);
        assert_eq!(d.per_shard_limit(), 1);
        // -j still caps it.
        let mut inp = input(Arc::new(CountingBackend::default()), 1);
        inp.options.test_threads = 2;
        inp.options.shard_test_threads = Some(16);
        let mut silent = Silent;
        let (d, _) = Dispatcher::new(inp, &mut silent);
        assert_eq!(d.per_shard_limit(), 2);
    }

    #[tokio::test]
    async fn every_shard_records_when_its_environment_was_provisioned_and_removed() {
        let backend = Arc::new(CountingBackend::default());
        let result = run_two_shards(&backend).await;
        assert!(result.prepare.is_some_and(|p| p.start <= p.end));
        assert_eq!(result.timelines.len(), 2);
        for t in &result.timelines {
            let provision = t.provision.expect("provisioned");
            let teardown = t.teardown.expect("torn down");
            assert!(!t.provision_failed);
            assert!(provision.start <= provision.end, "{t:?}");
            assert!(provision.end <= teardown.start, "{t:?}");
            assert!(teardown.start <= teardown.end, "{t:?}");
        }
    }

    /// Two shards whose tests come later through the returned sender.
    fn input_coming(
        backend: Arc<CountingBackend>,
    ) -> (RunInput, oneshot::Sender<Option<PlannedTests>>) {
        let mut inp = input(backend, 2);
        let (tx, rx) = oneshot::channel();
        inp.tests = TestsSource::Coming(rx);
        (inp, tx)
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..500 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting");
    }

    #[tokio::test]
    async fn environments_start_during_the_build_and_an_empty_shard_goes_at_once() {
        let backend = Arc::new(CountingBackend::default());
        let (inp, tx) = input_coming(backend.clone());
        let plan = match input(backend.clone(), 2).tests {
            TestsSource::Known(mut tests) => {
                // Shard 2 turns out to have nothing to run.
                tests.shards = vec![(1, vec![0, 1]), (2, vec![])];
                tests
            }
            TestsSource::Coming(_) => unreachable!(),
        };
        let b = backend.clone();
        let mut silent = Silent;
        let (result, ()) = tokio::join!(run(inp, &mut silent), async move {
            // Both shards are provisioned before the plan exists.
            until(|| b.provisions.load(Ordering::SeqCst) == 2).await;
            tx.send(Some(plan)).unwrap();
        });
        assert_eq!(backend.teardowns.load(Ordering::SeqCst), 2);
        assert_eq!(result.outcomes.len(), 2);
        assert!(result.outcomes.iter().all(|o| o.shard == 1));
        assert!(result.timelines.iter().all(|t| t.teardown.is_some()));
    }

    #[tokio::test]
    async fn a_failed_build_tears_down_the_environments_it_started() {
        let backend = Arc::new(CountingBackend::default());
        let (inp, tx) = input_coming(backend.clone());
        let b = backend.clone();
        let mut silent = Silent;
        let (result, ()) = tokio::join!(run(inp, &mut silent), async move {
            until(|| b.provisions.load(Ordering::SeqCst) == 2).await;
            tx.send(None).unwrap();
        });
        assert!(result.outcomes.is_empty());
        assert_eq!(backend.teardowns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_plan_that_arrives_after_a_stop_is_reported_as_not_run() {
        let backend = Arc::new(CountingBackend {
            panic_in_provision: true,
            ..Default::default()
        });
        let (inp, tx) = input_coming(backend.clone());
        let plan = match input(backend.clone(), 2).tests {
            TestsSource::Known(tests) => tests,
            TestsSource::Coming(_) => unreachable!(),
        };
        let mut silent = Silent;
        let (result, ()) = tokio::join!(
            async {
                tokio::time::timeout(Duration::from_secs(30), run(inp, &mut silent))
                    .await
                    .expect("the run ends")
            },
            async move {
                // The provisioning panics first; the build ends later.
                tokio::time::sleep(Duration::from_millis(200)).await;
                tx.send(Some(plan)).unwrap();
            }
        );
        assert!(result.internal_error.is_some());
        assert_eq!(result.outcomes.len(), 2);
        for o in &result.outcomes {
            assert!(
                matches!(&o.verdict, Verdict::Skipped(why) if why.contains("internal error")),
                "{o:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_shard_that_failed_before_the_plan_came_does_not_hold_the_run() {
        let backend = Arc::new(CountingBackend {
            fail_shard: Some(1),
            ..Default::default()
        });
        let (mut inp, tx) = input_coming(backend.clone());
        inp.options.fail_fast = false;
        let plan = match input(backend.clone(), 2).tests {
            TestsSource::Known(tests) => tests,
            TestsSource::Coming(_) => unreachable!(),
        };
        let b = backend.clone();
        let mut silent = Silent;
        let (result, ()) = tokio::join!(
            async {
                // It used to wait for shard 1's queue forever.
                tokio::time::timeout(Duration::from_secs(30), run(inp, &mut silent))
                    .await
                    .expect("the run ends")
            },
            async move {
                // Shard 1 fails and shard 2 is ready before the build ends.
                until(|| b.provisions.load(Ordering::SeqCst) == 2).await;
                tx.send(Some(plan)).unwrap();
            }
        );
        assert_eq!(result.env_errors.len(), 1);
        assert_eq!(result.outcomes.len(), 2);
        let by_shard = |n: u32| result.outcomes.iter().find(|o| o.shard == n).unwrap();
        assert!(
            matches!(&by_shard(1).verdict, Verdict::Skipped(why) if why == "not run: environment of shard 1 failed"),
            "{:?}",
            by_shard(1)
        );
        assert!(
            matches!(by_shard(2).verdict, Verdict::Passed),
            "{:?}",
            by_shard(2)
        );
        assert_eq!(backend.teardowns.load(Ordering::SeqCst), 2);
    }
}
