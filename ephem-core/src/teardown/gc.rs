//! `cargo ephem gc` and the sweep every run does before it starts: remove
//! the resources of earlier runs whose runner is gone or whose expiry passed.

use std::time::{Duration, SystemTime};

use ephem_fixtures::sweep::{self, ProcessState, SweepOutcome, SweepPolicy};
use ephem_fixtures::{Cleanup, RunResource};

use crate::discover::{CargoOptions, Workspace};
use crate::environments::cleanup_backend;
use crate::error::{exit_codes, EphemError, Result};
use crate::options::GcOptions;

/// The sweep at the start of a run: removes abandoned runs (of this host,
/// or on a backend whose liveness is the expiry, expired runs of any host;
/// never `run_id`, the run starting) and says so in one line when it did.
pub async fn sweep_at_start(cleanup: &dyn Cleanup, run_id: &str) -> Result<()> {
    let policy = SweepPolicy::here(false, vec![run_id.to_owned()]);
    let outcome = sweep::sweep(cleanup, &policy, false).await?;
    if !outcome.planned.is_empty() {
        eprintln!("     SWEEP {}", outcome.summary("removed"));
    }
    Ok(())
}

/// `cargo ephem gc [--dry-run] [--all]` over the backend the workspace's
/// configuration names (or `--backend`).
pub fn gc(options: &GcOptions) -> Result<i32> {
    // Outside a workspace gc still works, on the default backend; a
    // workspace named with --manifest-path must load.
    let workspace = match Workspace::load(&CargoOptions {
        manifest_path: options.manifest_path.clone(),
        ..Default::default()
    }) {
        Ok(ws) => Some(ws),
        Err(e) if options.manifest_path.is_some() => return Err(e),
        Err(_) => None,
    };
    let root = workspace.as_ref().map(|ws| ws.root.as_path());
    let (backend, config) = cleanup_backend(root, &options.env)?;
    let runtime = crate::runtime()?;
    runtime.block_on(async {
        let cleanup = backend.connect_cleanup(config.as_ref()).await?;
        if let Some(run_id) = &options.run {
            return remove_one_run(cleanup.as_ref(), run_id, options.dry_run).await;
        }
        let policy = SweepPolicy::here(options.all_hosts, Vec::new());
        let outcome = sweep::sweep(cleanup.as_ref(), &policy, options.dry_run).await?;
        Ok(print_outcome(&outcome, cleanup.as_ref(), options.dry_run))
    })
}

/// `gc --run ID`: removes one run at once (kept environments included), but
/// never one whose runner still runs on this host. What the backend is
/// already removing is reported, not removed again.
async fn remove_one_run(cleanup: &dyn Cleanup, run_id: &str, dry_run: bool) -> Result<i32> {
    let (terminating, resources): (Vec<_>, Vec<_>) = cleanup
        .list()
        .await?
        .into_iter()
        .filter(|r| r.run == run_id)
        .partition(|r| r.terminating.is_some());
    let here = ephem_fixtures::process::hostname();
    let live = resources.iter().find(|r| {
        r.host.as_deref() == Some(here.as_str())
            && r.pid.is_some_and(|pid| {
                sweep::local_process_state(pid, r.pid_start) == ProcessState::Alive
            })
    });
    if let Some(r) = live {
        return Err(EphemError::Usage(format!(
            "run {run_id} is alive (its runner, pid {}, still runs); stop it first (Ctrl-C): it removes its own environments",
            r.pid.unwrap_or_default()
        )));
    }
    let now = SystemTime::now();
    for r in &terminating {
        eprintln!("{}", terminating_line(r, now));
    }
    let stuck = terminating
        .iter()
        .any(|r| r.terminating.as_ref().is_some_and(|t| t.is_stuck(now)));
    let code = if stuck {
        exit_codes::ENVIRONMENT_FAILED
    } else {
        exit_codes::OK
    };
    if resources.is_empty() {
        if terminating.is_empty() {
            eprintln!(
                "nothing to remove: run {run_id} has no resources on {}",
                cleanup.address()
            );
        }
        return Ok(code);
    }
    if dry_run {
        eprintln!("would remove {} resources of run {run_id}", resources.len());
        return Ok(code);
    }
    let removed = cleanup.remove_run(run_id).await?;
    eprintln!("removed {removed} resources of run {run_id}");
    Ok(code)
}

/// The table of what a gc found (what it removes, and what the backend is
/// already removing), its summary line and warnings; the exit code: 102
/// when something could not be removed or has been stuck removing for
/// [`STUCK_AFTER`](ephem_fixtures::cleanup::STUCK_AFTER).
fn print_outcome(outcome: &SweepOutcome, cleanup: &dyn Cleanup, dry_run: bool) -> i32 {
    if outcome.planned.is_empty() && outcome.terminating.is_empty() {
        eprintln!(
            "nothing to remove: no cargo-ephem resources of abandoned runs on {} ({})",
            cleanup.address(),
            cleanup.backend()
        );
        return exit_codes::OK;
    }
    let now = SystemTime::now();
    println!(
        "{:<10} {:<40} {:<38} {:>5} {:>6}  WHY",
        "KIND", "NAME", "RUN", "SHARD", "AGE"
    );
    let rows = outcome
        .planned
        .iter()
        .map(|(r, reason)| (r, reason.to_string()))
        .chain(outcome.terminating.iter().map(|r| {
            let t = r.terminating.as_ref().expect("only terminating ones");
            (r, format!("{}; not deleted again", t.describe(now)))
        }));
    for (r, why) in rows {
        let shard = r.shard.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<10} {:<40} {:<38} {:>5} {:>6}  {why}",
            r.kind.to_string(),
            r.name,
            r.run,
            shard,
            age(r.created)
        );
    }
    for (r, e) in &outcome.failed {
        eprintln!("warning: could not remove {} {}: {e}", r.kind, r.name);
    }
    for r in &outcome.terminating {
        if r.terminating.as_ref().is_some_and(|t| t.is_stuck(now)) {
            eprintln!("warning: {}", terminating_line(r, now));
        }
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    eprintln!("{}", outcome.summary(verb));
    if outcome.failed.is_empty() && !outcome.any_stuck(now) {
        exit_codes::OK
    } else {
        exit_codes::ENVIRONMENT_FAILED
    }
}

/// `namespace X has been Terminating for 12m: ...; not deleted again ...`.
fn terminating_line(r: &RunResource, now: SystemTime) -> String {
    let Some(t) = &r.terminating else {
        return String::new();
    };
    format!(
        "{} {} of run {} is already being deleted ({}); not deleted again and never force-finalized: remove what holds it (`kubectl get {} {} -o yaml`)",
        r.kind,
        r.name,
        r.run,
        t.describe(now),
        r.kind,
        r.name
    )
}

fn age(created: Option<SystemTime>) -> String {
    created
        .and_then(|c| SystemTime::now().duration_since(c).ok())
        .map(|d: Duration| sweep::approximate(d.as_secs()))
        .unwrap_or_else(|| "?".to_owned())
}
