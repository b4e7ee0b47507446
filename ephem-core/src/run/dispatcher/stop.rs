//! Stopping: no new test starts; on a second signal running tests are killed.

use super::*;

impl<'a> Dispatcher<'a> {
    /// No new test starts; queued tests are reported as not run.
    pub(super) fn stop(&mut self, reason: &str) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(reason.to_owned());
        if let Some(task) = self.prepare_task.take() {
            task.abort();
        }
        for d in std::mem::take(&mut self.delayed) {
            self.finalize_unrun(d.pending.test, d.shard, reason);
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

    pub(super) fn on_signal(&mut self, signal: i32) {
        // Still building: cargo (ours, and only ours) stops too.
        if let Some(build) = &self.build {
            build.stop(signal);
        }
        let second = self.interrupted.is_some();
        self.interrupted.get_or_insert(signal);
        self.events.interrupted(signal, second);
        let name = crate::run::executor::signal_name(signal);
        self.stop(&format!("not run: run interrupted by {name}"));
        let level = if second {
            StopLevel::Kill
        } else {
            StopLevel::Terminate
        };
        let _ = self.stop_tx.send(level);
    }
}
