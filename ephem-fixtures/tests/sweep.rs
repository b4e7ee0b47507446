//! Leases push a run's expiry forward; a sweep over the real inventory takes
//! exactly the runs whose runner is gone.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::runs::{guarded, leftovers, make_run, Claim};
use ephem_fixtures::docker::labels;
use ephem_fixtures::sweep::{local_process_state, plan_sweep, SweepPolicy, SweepReason};
use ephem_fixtures::RunContext;
use ephem_fixtures::{Cleanup, RunResource};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

async fn leases(cleanup: &dyn Cleanup, run: &str) -> Vec<RunResource> {
    let mut found: Vec<RunResource> = cleanup
        .list()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|r| r.run == run && r.lease)
        .collect();
    found.sort_by_key(|r| r.expires);
    found
}

#[tokio::test]
async fn renew_replaces_the_older_lease_and_reaping_removes_the_last() {
    guarded(|g| async move {
        let backend = g.cleanup.clone();
        let run = RunContext {
            run_id: g.run("lease"),
            shard_count: 1,
            expires_at: at(now() + 60),
        };
        let first = now() + 600;
        backend
            .renew(&run.run_id, at(first), false)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let found = leases(g.cleanup.as_ref(), &run.run_id).await;
        assert_eq!(found.len(), 1, "{found:?}");
        let lease = &found[0];
        assert_eq!(lease.expires, Some(first));
        assert_eq!(lease.pid, Some(std::process::id()));
        assert_eq!(lease.pid_start, labels::process_start(std::process::id()));
        assert_eq!(lease.host, Some(labels::hostname()));
        assert_eq!(lease.shard, None);
        assert!(lease.name.starts_with("ephem-lease-"), "{}", lease.name);

        // Within the same second (the name is taken) and a second later.
        for later in [first + 600, first + 1200] {
            backend
                .renew(&run.run_id, at(later), false)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let found = leases(g.cleanup.as_ref(), &run.run_id).await;
            let expiries: Vec<_> = found.iter().map(|l| l.expires).collect();
            assert_eq!(expiries, [Some(later)]);
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }

        g.cleanup
            .end_run(&run.run_id)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(leases(g.cleanup.as_ref(), &run.run_id).await.is_empty());

        backend
            .renew(&run.run_id, at(first), false)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let removed = g
            .cleanup
            .remove_run(&run.run_id)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(removed, 1, "reap_run removes lease volumes too");
        assert!(leases(g.cleanup.as_ref(), &run.run_id).await.is_empty());
    })
    .await;
}

/// A pid that no process has: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    child.wait().expect("wait for true");
    child.id()
}

#[tokio::test]
async fn a_sweep_of_the_real_inventory_takes_only_the_dead_runs() {
    guarded(|g| async move {
        let me = std::process::id();
        let my_start = labels::process_start(me);
        let host = labels::hostname();
        let claim = |run: String, pid, pid_start| Claim {
            run,
            shard: 1,
            pid,
            pid_start,
            host: host.clone(),
            expires: now() + 3600,
        };
        let live = claim(g.run("sweep-live"), me, my_start);
        // Expired long ago, but its runner (this process) lives.
        let live_expired = Claim {
            expires: now() - 3600,
            ..claim(g.run("sweep-live-expired"), me, my_start)
        };
        let dead_pid = dead_pid();
        let dead = claim(g.run("sweep-dead"), dead_pid, None);
        for c in [&live, &live_expired, &dead] {
            make_run(&g.docker, c).await;
        }
        let reused = my_start.map(|start| claim(g.run("sweep-reused"), me, Some(start + 1)));
        if let Some(c) = &reused {
            make_run(&g.docker, c).await;
        }

        let policy = SweepPolicy {
            this_host: host.clone(),
            all_hosts: false,
            now: now(),
            keep_runs: Vec::new(),
        };
        let inventory = g.cleanup.list().await.unwrap_or_else(|e| panic!("{e}"));
        let plan = plan_sweep(&inventory, &policy, local_process_state);

        // Other runs on this daemon (the lead's, other tests') may be in the
        // plan; ours are checked exactly, and only ours are removed.
        let live_runs = [&live.run, &live_expired.run];
        assert!(
            !plan.iter().any(|(r, _)| live_runs.contains(&&r.run)),
            "a live run was planned for removal: {plan:?}"
        );
        let ours: Vec<(RunResource, SweepReason)> = plan
            .into_iter()
            .filter(|(r, _)| r.run == dead.run || reused.as_ref().is_some_and(|c| c.run == r.run))
            .collect();
        let dead_reasons: Vec<SweepReason> = ours
            .iter()
            .filter(|(r, _)| r.run == dead.run)
            .map(|(_, why)| *why)
            .collect();
        assert_eq!(
            dead_reasons,
            [SweepReason::RunnerGone { pid: dead_pid }; 3].to_vec()
        );
        if let Some(reused) = &reused {
            let reused_reasons: Vec<SweepReason> = ours
                .iter()
                .filter(|(r, _)| r.run == reused.run)
                .map(|(_, why)| *why)
                .collect();
            assert_eq!(
                reused_reasons,
                [SweepReason::PidReused { pid: me }; 3].to_vec()
            );
        }

        let to_remove: Vec<RunResource> = ours.into_iter().map(|(r, _)| r).collect();
        for (r, result) in g.cleanup.remove(&to_remove).await {
            assert_eq!(result, Ok(()), "{r:?}");
        }
        assert!(leftovers(&g.docker, &dead.run).await.is_empty());
        if let Some(reused) = &reused {
            assert!(leftovers(&g.docker, &reused.run).await.is_empty());
        }
        assert_eq!(leftovers(&g.docker, &live.run).await.len(), 3);
        assert_eq!(leftovers(&g.docker, &live_expired.run).await.len(), 3);
    })
    .await;
}
