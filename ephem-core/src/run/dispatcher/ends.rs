//! The ends of the tasks the dispatcher spawned, including panics.

use super::*;

impl<'a> Dispatcher<'a> {
    pub(super) fn task_ended(&mut self, ended: Ended) {
        match ended {
            Ended::Done(msg) => self.handle(msg),
            // Its state was settled when it was aborted.
            Ended::Aborted => {}
            Ended::Panicked(task, message) => self.task_panicked(task, message),
        }
    }

    /// A task panicked: a bug. Its part of the state is settled as if it had
    /// failed, and the run stops (exit 1), environments torn down as usual.
    pub(super) fn task_panicked(&mut self, task: Task, message: String) {
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

    pub(super) fn handle(&mut self, msg: Msg) {
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
                        // Tests that need no environment still run.
                        for p in self.drain_env_tests(idx) {
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
}
