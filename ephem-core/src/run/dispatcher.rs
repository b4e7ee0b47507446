//! The dispatcher: one `select!` loop over test events, environment events,
//! signals and a ticker. It owns every decision (what runs next, retries,
//! fail-fast, stopping, teardown); executors only run attempts.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ephem_fixtures::{Backend, EnvError, EnvEvent, Environment, RunContext, ShardContext};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::executor::{run_attempt, Attempt, AttemptSpec, AttemptStatus, StopLevel};
use super::{RunEvents, RunOptions, RunResult, RunningTest, TestOutcome, Verdict};
use crate::mask::Masker;
use crate::test_list::{Selection, TestIdx, TestList};

/// What to run: the tests of each shard run here, and the shared context.
pub struct RunInput {
    /// The full test list.
    pub list: Arc<TestList>,
    /// What the filters decided for each test of `list`.
    pub selection: Vec<Selection>,
    /// `(shard number, tests)` for each shard run here; tests are run or skipped per `selection`.
    pub shards: Vec<(u32, Vec<TestIdx>)>,
    /// Knobs.
    pub options: RunOptions,
    /// The environment backend, if shards need environments.
    pub backend: Option<Arc<dyn Backend>>,
    /// Events the backend reports (pull progress, service deaths).
    pub env_events: Option<mpsc::UnboundedReceiver<EnvEvent>>,
    /// How long environments outlive their last sign of life: the expiry on
    /// their labels, pushed forward every third of it while the run is alive.
    pub env_ttl: Duration,
}

/// Messages from the tasks the dispatcher spawns.
enum Msg {
    Prepared(Result<(), EnvError>),
    Provisioned(u32, Result<Environment, EnvError>),
    AttemptDone {
        shard: u32,
        test: TestIdx,
        attempt_no: u32,
        attempt: Attempt,
    },
    TornDown(u32, Result<(), EnvError>),
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
    masker: Masker,
    env: Option<Environment>,
    running: usize,
    provision_task: Option<JoinHandle<()>>,
    /// A service of this shard died: later failures probably come from that.
    diagnosis: Option<String>,
}

struct Running {
    shard: u32,
    attempt_no: u32,
    started: Instant,
}

struct Dispatcher<'a> {
    list: Arc<TestList>,
    opts: RunOptions,
    backend: Option<Arc<dyn Backend>>,
    run_ctx: RunContext,
    shards: Vec<ShardState>,
    next_shard: usize,
    tx: mpsc::UnboundedSender<Msg>,
    stop_tx: watch::Sender<StopLevel>,
    stop_rx: watch::Receiver<StopLevel>,
    prepare_task: Option<JoinHandle<()>>,
    teardowns_pending: usize,
    running: HashMap<TestIdx, Running>,
    attempts: HashMap<TestIdx, Vec<Attempt>>,
    outcomes: Vec<TestOutcome>,
    /// Set once no new test may start; the text is why.
    stopping: Option<String>,
    interrupted: Option<i32>,
    env_errors: Vec<(u32, EnvError)>,
    kept: Vec<(u32, Environment)>,
    service_deaths: Vec<String>,
    events: &'a mut dyn RunEvents,
}

/// Runs the shards' tests to completion, or until stopped, and tears their
/// environments down. Always returns a result, so the report is never lost.
pub async fn run(input: RunInput, events: &mut dyn RunEvents) -> RunResult {
    let started_at = SystemTime::now();
    let start = Instant::now();
    let RunInput {
        list,
        selection,
        shards,
        options,
        backend,
        mut env_events,
        env_ttl,
    } = input;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(StopLevel::Run);
    let run_ctx = RunContext {
        run_id: options.run_id.clone(),
        shard_count: options.shard_count,
        expires_at: SystemTime::now() + env_ttl,
    };
    let mut d = Dispatcher {
        list,
        run_ctx,
        backend,
        shards: Vec::new(),
        next_shard: 0,
        tx,
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
        service_deaths: Vec::new(),
        events,
        opts: options,
    };
    d.init_shards(shards, &selection);

    let mut signals = Signals::new();
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
            Some(msg) = rx.recv() => d.handle(msg),
            Some(ev) = recv_opt(&mut env_events) => d.env_event(ev),
            sig = signals.recv() => d.on_signal(sig),
            _ = tick.tick() => {
                let snapshot = d.running_snapshot();
                d.events.tick(&snapshot);
            }
            _ = renew.tick(), if d.backend.is_some() => d.renew(env_ttl),
        }
    }
    if let Some(backend) = d.backend.clone() {
        let kept = !d.kept.is_empty();
        let mut run = d.run_ctx.clone();
        run.expires_at = SystemTime::now() + env_ttl;
        if let Err(e) = backend.finish(&run, kept, run.expires_at).await {
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
        service_deaths: std::mem::take(&mut d.service_deaths),
        started_at,
        duration: start.elapsed(),
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Dispatcher<'_> {
    fn init_shards(&mut self, shards: Vec<(u32, Vec<TestIdx>)>, selection: &[Selection]) {
        let phase = if self.backend.is_some() {
            EnvPhase::AwaitPrepare
        } else {
            EnvPhase::Ready
        };
        for (number, tests) in shards {
            let mut queue = VecDeque::new();
            for test in tests {
                match selection[test] {
                    Selection::Run => queue.push_back(Pending {
                        test,
                        attempt_no: 1,
                    }),
                    Selection::SkipIgnored => self.outcomes.push(TestOutcome {
                        test,
                        shard: number,
                        attempts: Vec::new(),
                        verdict: Verdict::Skipped("ignored".to_owned()),
                        diagnosis: None,
                    }),
                    Selection::FilteredOut => {}
                }
            }
            // A shard with nothing to run needs no environment.
            let phase = if queue.is_empty() {
                EnvPhase::Released
            } else {
                phase
            };
            self.shards.push(ShardState {
                number,
                queue,
                phase,
                vars: Arc::new(Vec::new()),
                masker: Masker::default(),
                env: None,
                running: 0,
                provision_task: None,
                diagnosis: None,
            });
        }
        if let Some(backend) = self.backend.clone() {
            let tx = self.tx.clone();
            let ctx = self.run_ctx.clone();
            self.prepare_task = Some(tokio::spawn(async move {
                let _ = tx.send(Msg::Prepared(backend.prepare(&ctx).await));
            }));
        }
        for s in &self.shards {
            if s.phase != EnvPhase::AwaitPrepare {
                self.events.shard_ready(s.number, false);
            }
        }
    }

    fn is_done(&self) -> bool {
        self.prepare_task.is_none()
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
    /// when there are at least as many shards as threads).
    fn per_shard_limit(&self) -> usize {
        self.opts
            .test_threads
            .div_ceil(self.shards.len().max(1))
            .max(1)
    }

    fn next_ready_shard(&mut self) -> Option<usize> {
        let n = self.shards.len();
        let limit = self.per_shard_limit();
        for step in 0..n {
            let idx = (self.next_shard + step) % n;
            let s = &self.shards[idx];
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
        let (tx, stop, shard_no, attempt_no) = (
            self.tx.clone(),
            self.stop_rx.clone(),
            shard.number,
            pending.attempt_no,
        );
        tokio::spawn(async move {
            let attempt = run_attempt(spec, stop).await;
            let _ = tx.send(Msg::AttemptDone {
                shard: shard_no,
                test,
                attempt_no,
                attempt,
            });
        });
    }

    fn shard_idx(&self, number: u32) -> usize {
        self.shards
            .iter()
            .position(|s| s.number == number)
            .expect("message for a known shard")
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Prepared(result) => {
                self.prepare_task = None;
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
                match result {
                    Ok(env) => {
                        shard.vars = Arc::new(
                            env.vars
                                .iter()
                                .map(|v| (v.name.clone(), v.value.clone()))
                                .collect(),
                        );
                        shard.masker = Masker::new(env.secrets.clone());
                        shard.env = Some(env);
                        shard.phase = EnvPhase::Ready;
                        self.events.shard_ready(number, true);
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
            let (tx, backend) = (self.tx.clone(), backend.clone());
            let ctx = ShardContext {
                run: self.run_ctx.clone(),
                shard: shard.number,
            };
            shard.provision_task = Some(tokio::spawn(async move {
                let result = backend.provision(&ctx).await;
                let _ = tx.send(Msg::Provisioned(ctx.shard, result));
            }));
        }
    }

    fn attempt_done(&mut self, number: u32, test: TestIdx, attempt_no: u32, mut attempt: Attempt) {
        self.running.remove(&test);
        let idx = self.shard_idx(number);
        let shard = &mut self.shards[idx];
        shard.running -= 1;
        shard.masker.mask_in_place(&mut attempt.stdout);
        shard.masker.mask_in_place(&mut attempt.stderr);
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
                    shard.phase = EnvPhase::Failed;
                }
                _ => {}
            }
        }
    }

    fn on_signal(&mut self, signal: i32) {
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
        let ctx = ShardContext {
            run: self.run_ctx.clone(),
            shard: shard.number,
        };
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = backend.teardown(&ctx).await;
            let _ = tx.send(Msg::TornDown(ctx.shard, result));
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
    /// renewal is not fatal: the next one may succeed, and the runner being
    /// alive already protects the run from sweeps on this host.
    fn renew(&mut self, ttl: Duration) {
        let Some(backend) = self.backend.clone() else {
            return;
        };
        let mut run = self.run_ctx.clone();
        run.expires_at = SystemTime::now() + ttl;
        self.run_ctx.expires_at = run.expires_at;
        tokio::spawn(async move {
            let _ = backend.renew(&run, run.expires_at).await;
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

/// The signals that stop a run: SIGINT (Ctrl-C), SIGTERM (CI cancel), SIGHUP
/// (terminal closed).
struct Signals {
    int: Option<Signal>,
    term: Option<Signal>,
    hup: Option<Signal>,
}

impl Signals {
    fn new() -> Self {
        Signals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    async fn recv(&mut self) -> i32 {
        async fn one(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.int) => libc::SIGINT,
            _ = one(&mut self.term) => libc::SIGTERM,
            _ = one(&mut self.hup) => libc::SIGHUP,
        }
    }
}
