//! Each shard's environment: preparation, provisioning, events, renewal
//! and release.

use super::*;

impl<'a> Dispatcher<'a> {
    /// Every shard, its tests still unknown: waiting for its environment
    /// (or ready at once without a backend).
    pub(super) fn init_shards(&mut self, shards: &[u32]) {
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
                env_running: 0,
                serial_running: 0,
            });
        }
    }

    /// The run-wide preparation, if a shard still waits for an environment.
    pub(super) fn start_preparation(&mut self) {
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

    pub(super) fn provision_all(&mut self) {
        let Some(backend) = self.backend.clone() else {
            return;
        };
        self.prepared = true;
        if !self.planned && self.scopes.as_ref().is_some_and(|s| s.all_scoped()) {
            // Every service is scoped: which shards need their environment
            // is known once the tests are (`plan_arrived` comes back here).
            return;
        }
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

    /// Whether `test` waits for its shard's environment: with a backend,
    /// unless no service's scope matches it.
    pub(super) fn uses_env(&self, test: TestIdx) -> bool {
        self.backend.is_some() && self.test_scopes.get(test).is_none_or(|s| s.needs_env())
    }

    /// Whether `test` runs alone among the serial tests of its shard (whose
    /// environment is ready): it matches a service that resets.
    pub(super) fn is_serial(&self, idx: usize, test: TestIdx) -> bool {
        self.shards[idx].serial
            && self.uses_env(test)
            && self.test_scopes.get(test).is_none_or(|s| s.serial)
    }

    /// Whether `test` of shard `idx` may start as far as the environment
    /// goes: it needs none (whatever its shard's phase), or it is ready and
    /// no other serial test of it runs when `test` is serial.
    pub(super) fn env_allows(&self, idx: usize, test: TestIdx) -> bool {
        if !self.uses_env(test) {
            return true;
        }
        let s = &self.shards[idx];
        s.phase == EnvPhase::Ready && !(self.is_serial(idx, test) && s.serial_running > 0)
    }

    /// Whether shard `idx` has no test left that uses its environment:
    /// it can be released (its other tests run on without it).
    pub(super) fn env_drained(&self, idx: usize) -> bool {
        let s = &self.shards[idx];
        let waiting = self
            .delayed
            .iter()
            .any(|d| d.shard == s.number && self.uses_env(d.pending.test));
        s.env_running == 0 && !waiting && !s.queue.iter().any(|p| self.uses_env(p.test))
    }

    /// Takes the tests of shard `idx` that wait for its environment out of
    /// its queue (it failed), leaving the others to run.
    pub(super) fn drain_env_tests(&mut self, idx: usize) -> Vec<Pending> {
        let queue = std::mem::take(&mut self.shards[idx].queue);
        let (env, free): (VecDeque<Pending>, VecDeque<Pending>) =
            queue.into_iter().partition(|p| self.uses_env(p.test));
        self.shards[idx].queue = free;
        env.into()
    }

    /// Tears the shard's environment down (or keeps it with `--keep-env`).
    pub(super) fn release(&mut self, idx: usize) {
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

    pub(super) fn env_event(&mut self, event: EnvEvent) {
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
    pub(super) fn renew(&mut self, ttl: Duration) {
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
}
