//! `cargo ephem gc` and the sweep every run does before it starts: remove
//! the resources of earlier runs whose runner is gone or whose expiry passed.

use std::time::{Duration, SystemTime};

use ephem_fixtures::sweep::{self, SweepOutcome, SweepPolicy};
use ephem_fixtures::Cleanup;

use crate::discover::{CargoOptions, Workspace};
use crate::environments::cleanup_backend;
use crate::error::{exit_codes, Result};
use crate::options::GcOptions;

/// The sweep at the start of a run: removes abandoned runs of this host
/// (never `run_id`, the run starting) and says so in one line when it did.
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
        let policy = SweepPolicy::here(options.all_hosts, Vec::new());
        let outcome = sweep::sweep(cleanup.as_ref(), &policy, options.dry_run).await?;
        Ok(print_outcome(&outcome, cleanup.as_ref(), options.dry_run))
    })
}

/// The table of what a gc found, and its summary line; the exit code.
fn print_outcome(outcome: &SweepOutcome, cleanup: &dyn Cleanup, dry_run: bool) -> i32 {
    if outcome.planned.is_empty() {
        eprintln!(
            "nothing to remove: no cargo-ephem resources of abandoned runs on {} ({})",
            cleanup.address(),
            cleanup.backend()
        );
        return exit_codes::OK;
    }
    println!(
        "{:<10} {:<40} {:<38} {:>5} {:>6}  WHY",
        "KIND", "NAME", "RUN", "SHARD", "AGE"
    );
    for (r, reason) in &outcome.planned {
        let shard = r.shard.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<10} {:<40} {:<38} {:>5} {:>6}  {reason}",
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
    let verb = if dry_run { "would remove" } else { "removed" };
    eprintln!("{}", outcome.summary(verb));
    if outcome.failed.is_empty() {
        exit_codes::OK
    } else {
        exit_codes::ENVIRONMENT_FAILED
    }
}

fn age(created: Option<SystemTime>) -> String {
    created
        .and_then(|c| SystemTime::now().duration_since(c).ok())
        .map(|d: Duration| sweep::approximate(d.as_secs()))
        .unwrap_or_else(|| "?".to_owned())
}
