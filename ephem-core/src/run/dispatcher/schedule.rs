//! What runs next: the plan's arrival, picking a ready shard, starting
//! attempts and deciding on their results (retries, fail-fast).

use super::*;

impl<'a> Dispatcher<'a> {
    /// The tests are known: queue them (ignored ones reported as skipped);
    /// a shard with nothing to run needs no environment, and one already
    /// provisioned is torn down as soon as `schedule` sees it drained.
    /// `None`: the build or the listing failed, so the run only stops.
    pub(super) fn plan_arrived(&mut self, tests: Option<PlannedTests>) {
        self.planned = true;
        self.plan_rx = None;
        self.build = None;
        let Some(tests) = tests else {
            self.stop("not run: the build failed");
            return;
        };
        self.list = tests.list.clone();
        self.knobs = tests.knobs.clone();
        if let Some(scopes) = self.scopes.as_ref().filter(|s| s.any_scoped()) {
            self.test_scopes = scopes.of_tests(&self.list);
        }
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
        // Higher priority first; equal priorities keep the plan's order.
        if self.knobs.is_some() {
            for idx in 0..self.shards.len() {
                let mut queue: Vec<_> = self.shards[idx].queue.drain(..).collect();
                queue.sort_by_cached_key(|p| std::cmp::Reverse(self.knobs(p.test).priority));
                self.shards[idx].queue = queue.into();
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
                    let reason = format!("not run: environment of shard {number} failed");
                    // Tests that need no environment still run.
                    for p in self.drain_env_tests(idx) {
                        self.finalize_unrun(p.test, number, &reason);
                    }
                    continue;
                }
                None => continue,
            };
            let drained: Vec<_> = self.shards[idx].queue.drain(..).collect();
            for p in drained {
                self.finalize_unrun(p.test, number, &reason);
            }
        }
        for idx in 0..self.shards.len() {
            if self.shards[idx].phase == EnvPhase::AwaitPrepare && self.env_drained(idx) {
                // No test of it uses the environment: none is started.
                self.shards[idx].phase = EnvPhase::Released;
                if !self.shards[idx].queue.is_empty() {
                    self.events.shard_ready(self.shards[idx].number, false);
                }
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
        if self.prepared && self.stopping.is_none() {
            // Held until the tests were known (every service is scoped).
            self.provision_all();
        }
    }

    /// Starts whatever can start: tests into free slots, round-robin over
    /// ready shards; teardown of shards with nothing left to run.
    pub(super) fn schedule(&mut self) {
        while self.stopping.is_none() {
            let Some((idx, pos)) = self.next_startable() else {
                break;
            };
            let pending = self.shards[idx].queue.remove(pos).expect("a queued test");
            self.start_attempt(idx, pending);
        }
        if !self.planned {
            // Queues are empty because the tests are not known yet.
            return;
        }
        for idx in 0..self.shards.len() {
            let drained = self.env_drained(idx);
            if drained && matches!(self.shards[idx].phase, EnvPhase::Ready | EnvPhase::Failed) {
                self.release(idx);
            }
        }
    }

    /// What a profile says for `test`, or the run's own knobs without one.
    pub(super) fn knobs(&self, test: TestIdx) -> super::super::TestKnobs {
        if let Some(k) = self.knobs.as_ref().and_then(|k| k.get(test)) {
            return k.clone();
        }
        super::super::TestKnobs {
            retries: crate::profile::RetryPolicy::immediate(self.opts.retries),
            timeout: self.opts.test_timeout,
            grace: self.opts.grace,
            threads: 1,
            group: None,
            priority: 0,
        }
    }

    /// The next test that may start, as (shard, position in its queue):
    /// round-robin over shards. Within a shard, tests wait aside while the
    /// environment they use is not ready (or a serial test of it runs) or
    /// their test group is full; the first other test starts once the
    /// threads it requires are free (it holds its place: a test that needs
    /// many threads is not starved by smaller ones behind it, as in nextest).
    fn next_startable(&mut self) -> Option<(usize, usize)> {
        let n = self.shards.len();
        let limit = self.per_shard_limit();
        let budget = self.opts.test_threads.max(1);
        if self.threads_used >= budget {
            return None;
        }
        for step in 0..n {
            let idx = (self.next_shard + step) % n;
            let s = &self.shards[idx];
            if s.queue.is_empty() {
                continue;
            }
            let in_shard: usize = self
                .running
                .values()
                .filter(|r| r.shard == s.number)
                .map(|r| r.threads)
                .sum();
            for (pos, p) in s.queue.iter().enumerate() {
                if !self.env_allows(idx, p.test) {
                    continue;
                }
                let knobs = self.knobs(p.test);
                if let Some(group) = &knobs.group {
                    let max = self.opts.test_groups.get(&**group).copied();
                    let now = self.group_running.get(group).copied().unwrap_or(0);
                    if max.is_some_and(|max| now >= max) {
                        continue;
                    }
                }
                let need = if self.is_serial(idx, p.test) {
                    1
                } else {
                    knobs.threads.clamp(1, limit.min(budget))
                };
                if in_shard + need <= limit && self.threads_used + need <= budget {
                    self.next_shard = (idx + 1) % n;
                    return Some((idx, pos));
                }
                break;
            }
        }
        None
    }

    /// When the next delayed retry is due.
    pub(super) fn next_retry_due(&self) -> Option<tokio::time::Instant> {
        self.delayed.iter().map(|d| d.due).min()
    }

    /// Queues the retries whose backoff delay has passed.
    pub(super) fn release_due_retries(&mut self) {
        let now = tokio::time::Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed)
            .into_iter()
            .partition(|d| d.due <= now);
        self.delayed = waiting;
        for d in due {
            let idx = self.shard_idx(d.shard);
            self.shards[idx].queue.push_front(d.pending);
        }
    }

    /// Each shard may run at most its share of the thread budget, so that
    /// tests sharing one environment see bounded concurrency (one at a time
    /// when there are at least as many shards as threads), or what
    /// `[shards] test-threads` says; `-j` caps it either way.
    pub(super) fn per_shard_limit(&self) -> usize {
        let divided = self.opts.test_threads.div_ceil(self.shards.len().max(1));
        self.opts
            .shard_test_threads
            .unwrap_or(divided)
            .clamp(1, self.opts.test_threads.max(1))
    }

    pub(super) fn start_attempt(&mut self, idx: usize, pending: Pending) {
        let test = pending.test;
        let knobs = self.knobs(test);
        let (slot, nextest_vars) = self.nextest_attempt(test, pending.attempt_no, &knobs);
        let (uses_env, serial) = (self.uses_env(test), self.is_serial(idx, test));
        let scope = self.test_scopes.get(test).filter(|s| !s.all).cloned();
        let threads = knobs
            .threads
            .clamp(1, self.per_shard_limit().min(self.opts.test_threads.max(1)));
        let threads = if serial { 1 } else { threads };
        self.threads_used += threads;
        if let Some(group) = &knobs.group {
            *self.group_running.entry(group.clone()).or_default() += 1;
        }
        let shard = &mut self.shards[idx];
        shard.running += 1;
        shard.env_running += usize::from(uses_env);
        shard.serial_running += usize::from(serial);
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
        env.extend(nextest_vars);
        // Only the exports of the services whose scope matches the test.
        env.extend(
            shard
                .vars
                .iter()
                .filter(|(name, _)| scope.as_ref().is_none_or(|s| s.exports.contains(name)))
                .cloned(),
        );
        let spec = AttemptSpec {
            binary,
            name: Arc::from(case.name.as_str()),
            ignored: case.ignored,
            env,
            timeout: knobs.timeout,
            grace: knobs.grace,
            capture: self.opts.capture,
        };
        self.running.insert(
            test,
            Running {
                shard: shard.number,
                attempt_no: pending.attempt_no,
                started: Instant::now(),
                slot,
                threads,
                group: knobs.group.clone(),
                uses_env,
                serial,
            },
        );
        let (stop, shard_no, attempt_no) = (self.stop_rx.clone(), shard.number, pending.attempt_no);
        let panic_hook = self.opts.panic_at == Some(PanicPoint::Attempt);
        let task = Task::Attempt {
            shard: shard_no,
            test,
        };
        let hooks = shard.hooks.clone().filter(|_| uses_env);
        let services = scope.map(|s| s.services.clone());
        self.tasks.spawn(task, async move {
            let attempt = tokio::select! {
                attempt = attempt_with_hooks(spec, stop, hooks, services) => attempt,
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

    pub(super) fn attempt_done(
        &mut self,
        number: u32,
        test: TestIdx,
        attempt_no: u32,
        mut attempt: Attempt,
    ) {
        let ran = self.running.remove(&test);
        if let Some(r) = &ran {
            self.release_slots(test, r.slot, r.group.as_ref());
            self.threads_used -= r.threads;
            if let Some(group) = &r.group {
                if let Some(n) = self.group_running.get_mut(group) {
                    *n -= 1;
                }
            }
        }
        let retries = self.knobs(test).retries;
        let idx = self.shard_idx(number);
        let shard = &mut self.shards[idx];
        shard.running -= 1;
        if let Some(ran) = ran {
            shard.env_running -= usize::from(ran.uses_env);
            shard.serial_running -= usize::from(ran.serial);
        }
        // Masked before anything cuts the output to a tail, which could
        // leave half a secret.
        mask::mask_in_place(&mut attempt.stdout);
        mask::mask_in_place(&mut attempt.stderr);
        let diagnosis = shard.diagnosis.clone();
        let status = attempt.status.clone();
        if status.is_pass() && self.opts.capture != Capture::All {
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
                if attempt_no <= retries.count && self.stopping.is_none() {
                    let last = attempts.last().expect("just pushed");
                    self.events.retrying(test, number, last);
                    let pending = Pending {
                        test,
                        attempt_no: attempt_no + 1,
                    };
                    let delay = backoff_delay(&retries, attempt_no);
                    if delay.is_zero() {
                        shard.queue.push_front(pending);
                    } else {
                        self.delayed.push(Delayed {
                            due: tokio::time::Instant::now() + delay,
                            shard: number,
                            pending,
                        });
                    }
                    return;
                }
                if matches!(failed, AttemptStatus::TimedOut) {
                    Verdict::TimedOut
                } else {
                    Verdict::Failed
                }
            }
        };
        self.forget_slots(test);
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
        if failed {
            self.failures += 1;
        }
        let max_fail = self.opts.max_fail.max(1);
        if failed && self.opts.fail_fast && self.failures >= max_fail {
            if max_fail == 1 {
                self.stop(
                    "not run: stopped after the first failure (use --no-fail-fast to run all)",
                );
            } else {
                self.stop(&format!(
                    "not run: stopped after {max_fail} failures (--max-fail {max_fail}; use --no-fail-fast to run all)"
                ));
            }
        }
    }

    /// Records a test that will not run (again); one with failed attempts
    /// keeps its failure.
    pub(super) fn finalize_unrun(&mut self, test: TestIdx, shard: u32, reason: &str) {
        self.forget_slots(test);
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

    pub(super) fn running_snapshot(&self) -> Vec<RunningTest> {
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

/// One attempt with the environment's hooks around it: a reset or a
/// database of its own first (a failure there fails the attempt, with why),
/// handed back after.
async fn attempt_with_hooks(
    mut spec: AttemptSpec,
    stop: watch::Receiver<StopLevel>,
    hooks: Option<Arc<dyn TestHooks>>,
    services: Option<Vec<String>>,
) -> Attempt {
    let Some(hooks) = hooks else {
        return run_attempt(spec, stop).await;
    };
    let started_at = SystemTime::now();
    let prepared = hooks.before_attempt(services.as_deref()).await;
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

/// The wait before retry `retry` (1: the second attempt), jittered to a
/// random 50% to 100% of it when the policy says so.
fn backoff_delay(policy: &crate::profile::RetryPolicy, retry: u32) -> Duration {
    let delay = policy.delay_before(retry);
    if !policy.jitter() || delay.is_zero() {
        return delay;
    }
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    let fraction = 0.5 + (random % 1_000_000) as f64 / 2_000_000.0;
    delay.mul_f64(fraction)
}
