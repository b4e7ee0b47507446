//! `cargo ephem gc` and the sweep every run does before it starts: remove
//! the resources of earlier runs whose runner is gone or whose lease expired.

use std::time::{Duration, SystemTime};

use bollard::Docker;
use ephem_core::{exit_codes, Result};
use ephem_fixtures::docker::inventory::{list_resources, remove_resources, LabelledResource};
use ephem_fixtures::sweep::{local_process_state, plan_sweep, SweepPolicy, SweepReason};

use crate::cli::GcArgs;

/// What a sweep found and did.
pub struct SweepOutcome {
    /// Resources judged abandoned, with why.
    pub planned: Vec<(LabelledResource, SweepReason)>,
    /// Those that could not be removed, with the daemon's answer.
    pub failed: Vec<(LabelledResource, String)>,
}

impl SweepOutcome {
    /// One line: what was removed, of how many runs.
    pub fn summary(&self, verb: &str) -> String {
        let count = |kind: &str| {
            self.planned
                .iter()
                .filter(|(r, _)| r.kind.to_string() == kind)
                .count()
        };
        let mut runs: Vec<&str> = self.planned.iter().map(|(r, _)| r.run.as_str()).collect();
        runs.sort_unstable();
        runs.dedup();
        let mut line = format!(
            "{verb} {} containers, {} networks, {} volumes of {} abandoned run(s)",
            count("container"),
            count("network"),
            count("volume"),
            runs.len()
        );
        if let Some((_, reason)) = self.planned.first() {
            line.push_str(&format!(
                " ({reason}{})",
                if runs.len() > 1 { ", ..." } else { "" }
            ));
        }
        if !self.failed.is_empty() {
            line.push_str(&format!("; {} could not be removed", self.failed.len()));
        }
        line
    }
}

/// Finds abandoned resources and removes them unless `dry_run`. Never
/// touches a resource without cargo-ephem labels, one of a live run on this
/// host, or one of `keep_runs`.
pub async fn sweep(
    docker: &Docker,
    all_hosts: bool,
    dry_run: bool,
    keep_runs: Vec<String>,
) -> Result<SweepOutcome> {
    let resources = list_resources(docker).await?;
    let policy = SweepPolicy {
        this_host: ephem_fixtures::docker::labels::hostname(),
        all_hosts,
        now: unix_now(),
        keep_runs,
    };
    let planned = plan_sweep(&resources, &policy, local_process_state);
    let mut failed = Vec::new();
    if !dry_run && !planned.is_empty() {
        let targets: Vec<LabelledResource> = planned.iter().map(|(r, _)| r.clone()).collect();
        for (resource, result) in remove_resources(docker, &targets).await {
            if let Err(e) = result {
                failed.push((resource, e));
            }
        }
    }
    Ok(SweepOutcome { planned, failed })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn age(created: Option<SystemTime>) -> String {
    match created.and_then(|c| SystemTime::now().duration_since(c).ok()) {
        Some(d) if d < Duration::from_secs(120) => format!("{}s", d.as_secs()),
        Some(d) if d < Duration::from_secs(7200) => format!("{}m", d.as_secs() / 60),
        Some(d) => format!("{}h", d.as_secs() / 3600),
        None => "?".to_owned(),
    }
}

pub fn gc(args: GcArgs) -> Result<i32> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let conn = ephem_fixtures::docker::connect_daemon().await?;
        let outcome = sweep(&conn.docker, args.all, args.dry_run, Vec::new()).await?;
        if outcome.planned.is_empty() {
            eprintln!(
                "nothing to remove: no cargo-ephem resources of abandoned runs on {}",
                conn.address
            );
            return Ok(exit_codes::OK);
        }
        println!(
            "{:<10} {:<40} {:<38} {:>5} {:>5}  WHY",
            "KIND", "NAME", "RUN", "SHARD", "AGE"
        );
        for (r, reason) in &outcome.planned {
            let shard = r.shard.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
            println!(
                "{:<10} {:<40} {:<38} {:>5} {:>5}  {reason}",
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
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        eprintln!("{}", outcome.summary(verb));
        Ok(if outcome.failed.is_empty() {
            exit_codes::OK
        } else {
            exit_codes::ENVIRONMENT_FAILED
        })
    })
}
