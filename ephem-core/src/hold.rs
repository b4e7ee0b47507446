//! Environments held outside the test dispatcher, by `up` and `exec`:
//! provision shards, keep the run's expiry ahead while they are held,
//! remove them, and say how to reach the ones kept on purpose.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ephem_fixtures::{Backend, Cleanup, EnvError, Environment, RunContext, ShardContext};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::mask::Masker;

/// Prepares the run once, then provisions `shards` at once. Every shard's
/// environment, or every error (shard 0: the run-wide preparation). Either
/// way the caller removes all `shards` afterwards ([`remove`]): a failed
/// provisioning may leave resources.
pub(crate) async fn provision(
    backend: &Arc<dyn Backend>,
    run: &RunContext,
    shards: &[u32],
) -> Result<Vec<(u32, Environment)>, Vec<(u32, EnvError)>> {
    backend.prepare(run).await.map_err(|e| vec![(0, e)])?;
    let mut tasks = tokio::task::JoinSet::new();
    for &shard in shards {
        let (backend, run) = (backend.clone(), run.clone());
        tasks.spawn(async move {
            let ctx = ShardContext { run, shard };
            (shard, backend.provision(&ctx).await)
        });
    }
    let (mut ready, mut failed) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((shard, Ok(env))) => ready.push((shard, env)),
            Ok((shard, Err(e))) => failed.push((shard, e)),
            Err(e) => failed.push((
                0,
                EnvError::Other(format!("a provisioning task failed: {e}")),
            )),
        }
    }
    if failed.is_empty() {
        ready.sort_by_key(|(shard, _)| *shard);
        Ok(ready)
    } else {
        failed.sort_by_key(|(shard, _)| *shard);
        Err(failed)
    }
}

/// Tears `shards` down at once, then ends the run (its lease goes). The
/// first error, once everything was tried.
pub(crate) async fn remove(
    backend: &Arc<dyn Backend>,
    cleanup: &dyn Cleanup,
    run: &RunContext,
    shards: &[u32],
) -> Result<(), EnvError> {
    let mut tasks = tokio::task::JoinSet::new();
    for &shard in shards {
        let (backend, run) = (backend.clone(), run.clone());
        tasks.spawn(async move { backend.teardown(&ShardContext { run, shard }).await });
    }
    let mut first = None;
    while let Some(joined) = tasks.join_next().await {
        let result =
            joined.unwrap_or_else(|e| Err(EnvError::Other(format!("a teardown task failed: {e}"))));
        if let Err(e) = result {
            first.get_or_insert(e);
        }
    }
    let ended = cleanup.end_run(&run.run_id).await;
    match first {
        Some(e) => Err(e),
        None => ended,
    }
}

/// Pushes a live run's expiry forward every third of its TTL, so that no
/// sweep takes it for abandoned, while an orphaned one still expires.
pub(crate) struct Renewal {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Renewal {
    /// Starts renewing `run_id` to now + `ttl`, first in a third of it.
    pub(crate) fn start(cleanup: Arc<dyn Cleanup>, run_id: String, ttl: Duration) -> Renewal {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let every = (ttl / 3).max(Duration::from_secs(1));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        // Outside the select: a renewal in flight finishes
                        // before `stop` returns, so none outlives the run.
                        let until = SystemTime::now() + ttl;
                        if let Err(e) = cleanup.renew(&run_id, until, false).await {
                            eprintln!("warning: {}", crate::mask::error_text(&e.to_string()));
                        }
                    }
                }
            }
        });
        Renewal { stop, task }
    }

    /// Stops renewing, once a renewal in flight has finished.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Prints how to reach kept environments (generated secrets masked: whoever
/// needs them can read them from the backend), the command that removes
/// them (`gc` with `gc_flags`, then `--run`), and how long they are spared.
pub(crate) fn print_kept(
    kept: &[(u32, Environment)],
    run_id: &str,
    gc_flags: &[String],
    ttl: Duration,
) {
    if kept.is_empty() {
        return;
    }
    eprintln!("Kept {} environment(s) of run {run_id}:", kept.len());
    for (shard, env) in kept {
        let masker = Masker::new(env.secrets.clone());
        eprintln!("  shard {shard}:");
        for var in &env.vars {
            eprintln!("    {}={}", var.name, masker.mask(&var.value));
        }
        for hint in &env.connect_hints {
            eprintln!("    {}", masker.mask(hint));
        }
    }
    let mut remove = vec!["cargo".to_owned(), "ephem".to_owned(), "gc".to_owned()];
    remove.extend(gc_flags.iter().cloned());
    remove.extend([
        "--run".to_owned(),
        crate::report::summary::shell_quote(run_id),
    ]);
    eprintln!("Remove them with:");
    eprintln!("  {}", remove.join(" "));
    eprintln!(
        "(until then, sweeps and `cargo ephem gc` leave them alone for {} after the run: --env-ttl)",
        humantime::format_duration(ttl)
    );
}
