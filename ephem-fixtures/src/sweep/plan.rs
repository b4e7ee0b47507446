//! The sweep's policy, per backend [`Liveness`](super::Liveness): which runs are abandoned,
//! and why. Pure: the caller lists the resources and says whether a runner
//! process is alive.

use std::collections::{BTreeMap, HashMap};

use super::{ProcessState, SweepPolicy, SweepReason};
use crate::RunResource;

/// The resources to remove, with why, by run, shard, kind, name and id (the
/// backend's [`Cleanup::remove`](crate::Cleanup::remove) orders the removal itself), for
/// [`Liveness::RunnerProcess`](super::Liveness::RunnerProcess).
///
/// Per run (a run's expiry is the latest `expires` of all its resources,
/// lease volumes included):
/// - a run in `keep_runs` is kept;
/// - a run whose runner on this host is [`ProcessState::Alive`] is kept, even
///   past its expiry;
/// - a run made on another host is removed only with `all_hosts`, and only
///   once expired: its pid means nothing here;
/// - a run whose runners on this host are all gone or reused is removed,
///   including its resources that lack pid or host labels;
/// - a run with no pid and host labels at all is removed only once expired.
///
/// `process_alive(pid, pid_start)` is asked once per distinct runner.
pub fn plan_sweep(
    resources: &[RunResource],
    policy: &SweepPolicy,
    process_alive: impl Fn(u32, Option<u64>) -> ProcessState,
) -> Vec<(RunResource, SweepReason)> {
    plan_by_run(resources, policy, |members| {
        judge_run(members, policy, &process_alive)
    })
}

/// Like [`plan_sweep`], for [`Liveness::Expiry`](super::Liveness::Expiry): the expiry decides,
/// whatever the host.
///
/// Per run:
/// - a run in `keep_runs` is kept;
/// - a run whose runner on this host is [`ProcessState::Alive`] is kept, even
///   past its expiry (a pid can prove a runner alive, never dead: another
///   pod may share this hostname, not its pids);
/// - an expired run is removed, whichever host made it;
/// - a run that has not expired (or has no expiry) is kept, whatever its
///   pid says; with `all_hosts` it is removed too, unless it was kept on
///   purpose (`--keep-env`, `--reuse`), which lasts until it expires.
///
/// `process_alive` is asked only about runs that would otherwise go.
pub fn plan_expiry_sweep(
    resources: &[RunResource],
    policy: &SweepPolicy,
    process_alive: impl Fn(u32, Option<u64>) -> ProcessState,
) -> Vec<(RunResource, SweepReason)> {
    plan_by_run(resources, policy, |members| {
        judge_by_expiry(members, policy, &process_alive)
    })
}

/// Groups `resources` by run, asks `judge` about each run not in
/// `keep_runs`, and lists the members of the runs it condemns.
fn plan_by_run(
    resources: &[RunResource],
    policy: &SweepPolicy,
    judge: impl Fn(&[&RunResource]) -> Option<RunVerdict>,
) -> Vec<(RunResource, SweepReason)> {
    let mut runs: BTreeMap<&str, Vec<&RunResource>> = BTreeMap::new();
    for resource in resources {
        runs.entry(resource.run.as_str())
            .or_default()
            .push(resource);
    }
    let mut plan = Vec::new();
    for (run, members) in runs {
        if policy.keep_runs.iter().any(|kept| kept == run) {
            continue;
        }
        if let Some(reasons) = judge(&members) {
            plan.extend(
                members
                    .into_iter()
                    .map(|r| (r.clone(), reasons.for_resource(r))),
            );
        }
    }
    plan.sort_by(|(a, _), (b, _)| {
        (&a.run, a.shard, a.kind, &a.name, &a.id).cmp(&(&b.run, b.shard, b.kind, &b.name, &b.id))
    });
    plan
}

/// Why a run's resources go.
enum RunVerdict {
    /// Every local runner is gone or reused; by runner.
    RunnerDead(HashMap<(u32, Option<u64>), SweepReason>, SweepReason),
    /// Expired (runner unknown or elsewhere), or unexpired and taken by
    /// `all_hosts`: one reason for all.
    Expired(SweepReason),
}

impl RunVerdict {
    fn for_resource(&self, resource: &RunResource) -> SweepReason {
        match self {
            RunVerdict::RunnerDead(by_runner, first) => resource
                .pid
                .and_then(|pid| by_runner.get(&(pid, resource.pid_start)))
                .copied()
                .unwrap_or(*first),
            RunVerdict::Expired(reason) => *reason,
        }
    }
}

/// `None` keeps the run.
fn judge_run(
    members: &[&RunResource],
    policy: &SweepPolicy,
    process_alive: &impl Fn(u32, Option<u64>) -> ProcessState,
) -> Option<RunVerdict> {
    let any_kept = members.iter().any(|r| r.kept);
    let expired = run_expiry(members)
        .filter(|expiry| policy.now > *expiry)
        .map(|expiry| SweepReason::Expired {
            expired_secs_ago: policy.now - expiry,
        });
    // Environments kept with --keep-env outlive their runner until their
    // lease expires.
    if expired.is_none() && any_kept {
        return None;
    }
    let made_elsewhere = members
        .iter()
        .any(|r| r.host.as_deref().is_some_and(|h| h != policy.this_host));

    let mut runners: Vec<(u32, Option<u64>)> = members
        .iter()
        .filter(|r| r.host.as_deref() == Some(policy.this_host.as_str()))
        .filter_map(|r| Some((r.pid?, r.pid_start)))
        .collect();
    runners.sort_unstable();
    runners.dedup();
    let mut by_runner = HashMap::new();
    for (pid, start) in &runners {
        let reason = match process_alive(*pid, *start) {
            ProcessState::Alive => return None,
            ProcessState::Gone => SweepReason::RunnerGone { pid: *pid },
            ProcessState::Reused => SweepReason::PidReused { pid: *pid },
        };
        by_runner.insert((*pid, *start), reason);
    }

    if made_elsewhere {
        return expired
            .filter(|_| policy.all_hosts)
            .map(RunVerdict::Expired);
    }
    match runners.first() {
        Some(first) => {
            let first = by_runner[first];
            Some(RunVerdict::RunnerDead(by_runner, first))
        }
        None => expired.map(RunVerdict::Expired),
    }
}

/// The run's expiry in unix seconds: the latest `expires` of its members,
/// of its kept ones only when it has any (a kept run's deadline is the one
/// its keeper set: `--keep-env`'s lease, `--reuse`'s idle TTL, not the one
/// its resources got when they started).
fn run_expiry(members: &[&RunResource]) -> Option<u64> {
    let any_kept = members.iter().any(|r| r.kept);
    members
        .iter()
        .filter(|r| r.kept || !any_kept)
        .filter_map(|r| r.expires)
        .max()
}

/// `None` keeps the run ([`plan_expiry_sweep`]).
fn judge_by_expiry(
    members: &[&RunResource],
    policy: &SweepPolicy,
    process_alive: &impl Fn(u32, Option<u64>) -> ProcessState,
) -> Option<RunVerdict> {
    let expiry = run_expiry(members);
    let reason = match expiry {
        Some(at) if policy.now > at => SweepReason::Expired {
            expired_secs_ago: policy.now - at,
        },
        _ if !policy.all_hosts || members.iter().any(|r| r.kept) => return None,
        _ => SweepReason::Unexpired {
            expires_in_secs: expiry.map(|at| at - policy.now),
        },
    };
    let mut runners: Vec<(u32, Option<u64>)> = members
        .iter()
        .filter(|r| r.host.as_deref() == Some(policy.this_host.as_str()))
        .filter_map(|r| Some((r.pid?, r.pid_start)))
        .collect();
    runners.sort_unstable();
    runners.dedup();
    if runners
        .into_iter()
        .any(|(pid, start)| process_alive(pid, start) == ProcessState::Alive)
    {
        return None;
    }
    Some(RunVerdict::Expired(reason))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::ResourceKind;

    const HOST: &str = "here";
    const NOW: u64 = 1_700_000_000;

    fn resource(kind: ResourceKind, run: &str, name: &str) -> RunResource {
        RunResource {
            kind,
            id: format!("id-{name}"),
            name: name.to_owned(),
            run: run.to_owned(),
            shard: Some(1),
            pid: Some(100),
            pid_start: Some(5),
            host: Some(HOST.to_owned()),
            expires: Some(NOW + 3600),
            created: None,
            lease: false,
            kept: false,
            workspace: None,
            terminating: None,
        }
    }

    /// A shard's container, network and volume, made by `pid` on `host`.
    fn run(run: &str, host: &str, pid: u32, expires: u64) -> Vec<RunResource> {
        [
            (ResourceKind::Volume, "vol"),
            (ResourceKind::Container, "db"),
            (ResourceKind::Network, "net"),
        ]
        .into_iter()
        .map(|(kind, name)| RunResource {
            host: Some(host.to_owned()),
            pid: Some(pid),
            expires: Some(expires),
            ..resource(kind, run, &format!("{run}-{name}"))
        })
        .collect()
    }

    fn policy() -> SweepPolicy {
        SweepPolicy {
            this_host: HOST.to_owned(),
            all_hosts: false,
            now: NOW,
            keep_runs: Vec::new(),
        }
    }

    fn names(plan: &[(RunResource, SweepReason)]) -> Vec<&str> {
        plan.iter().map(|(r, _)| r.name.as_str()).collect()
    }

    fn reasons(plan: &[(RunResource, SweepReason)]) -> Vec<SweepReason> {
        plan.iter().map(|(_, why)| *why).collect()
    }

    fn all(state: ProcessState) -> impl Fn(u32, Option<u64>) -> ProcessState {
        move |_, _| state
    }

    #[test]
    fn a_live_run_past_its_expiry_is_kept() {
        let resources = run("a", HOST, 100, NOW - 86_400);
        let plan = plan_sweep(&resources, &policy(), all(ProcessState::Alive));
        assert!(plan.is_empty(), "{plan:?}");
        let everywhere = SweepPolicy {
            all_hosts: true,
            ..policy()
        };
        assert!(plan_sweep(&resources, &everywhere, all(ProcessState::Alive)).is_empty());
    }

    #[test]
    fn a_gone_runner_loses_its_run_in_removal_order() {
        let resources = run("a", HOST, 100, NOW + 3600);
        let plan = plan_sweep(&resources, &policy(), all(ProcessState::Gone));
        assert_eq!(names(&plan), ["a-db", "a-net", "a-vol"]);
        assert_eq!(
            reasons(&plan),
            [SweepReason::RunnerGone { pid: 100 }; 3].to_vec()
        );
    }

    #[test]
    fn a_reused_pid_counts_as_a_dead_runner() {
        let resources = run("a", HOST, 100, NOW + 3600);
        let plan = plan_sweep(&resources, &policy(), all(ProcessState::Reused));
        assert_eq!(
            reasons(&plan),
            [SweepReason::PidReused { pid: 100 }; 3].to_vec()
        );
    }

    #[test]
    fn of_two_concurrent_runs_only_the_dead_ones_resources_go() {
        let mut resources = run("live", HOST, 100, NOW + 3600);
        resources.extend(run("dead", HOST, 200, NOW + 3600));
        let plan = plan_sweep(&resources, &policy(), |pid, _| match pid {
            100 => ProcessState::Alive,
            _ => ProcessState::Gone,
        });
        assert_eq!(names(&plan), ["dead-db", "dead-net", "dead-vol"]);
    }

    #[test]
    fn kept_runs_are_never_swept() {
        let resources = run("current", HOST, 100, NOW - 60);
        let keep = SweepPolicy {
            keep_runs: vec!["current".to_owned()],
            all_hosts: true,
            ..policy()
        };
        assert!(plan_sweep(&resources, &keep, all(ProcessState::Gone)).is_empty());
    }

    #[test]
    fn another_hosts_runs_need_all_hosts_and_expiry() {
        let expired = run("far", "elsewhere", 100, NOW - 35 * 60);
        let asked = RefCell::new(0);
        let count = |_, _| {
            *asked.borrow_mut() += 1;
            ProcessState::Gone
        };
        assert!(plan_sweep(&expired, &policy(), count).is_empty());

        let everywhere = SweepPolicy {
            all_hosts: true,
            ..policy()
        };
        let plan = plan_sweep(&expired, &everywhere, count);
        assert_eq!(
            reasons(&plan),
            [SweepReason::Expired {
                expired_secs_ago: 35 * 60
            }; 3]
                .to_vec()
        );
        assert_eq!(*asked.borrow(), 0, "another host's pid is never checked");

        let unexpired = run("far", "elsewhere", 100, NOW + 60);
        assert!(plan_sweep(&unexpired, &everywhere, count).is_empty());
    }

    #[test]
    fn a_lease_volume_extends_the_runs_expiry() {
        let everywhere = SweepPolicy {
            all_hosts: true,
            ..policy()
        };
        let mut resources = run("far", "elsewhere", 100, NOW - 600);
        assert_eq!(
            plan_sweep(&resources, &everywhere, all(ProcessState::Gone)).len(),
            3
        );

        resources.push(RunResource {
            shard: None,
            lease: true,
            host: Some("elsewhere".to_owned()),
            expires: Some(NOW + 600),
            ..resource(ResourceKind::Volume, "far", "ephem-lease-far-1")
        });
        assert!(plan_sweep(&resources, &everywhere, all(ProcessState::Gone)).is_empty());

        // Once the lease expires too, it goes with the rest.
        resources.last_mut().unwrap().expires = Some(NOW - 5);
        let plan = plan_sweep(&resources, &everywhere, all(ProcessState::Gone));
        assert_eq!(plan.len(), 4);
        assert!(reasons(&plan).contains(&SweepReason::Expired {
            expired_secs_ago: 5
        }));
    }

    #[test]
    fn resources_without_runner_labels_go_only_once_expired() {
        let bare = |expires| RunResource {
            pid: None,
            pid_start: None,
            host: None,
            expires,
            ..resource(ResourceKind::Container, "bare", "bare-db")
        };
        let asked = |_, _| -> ProcessState { panic!("no pid to check") };
        assert!(plan_sweep(&[bare(Some(NOW + 1))], &policy(), asked).is_empty());
        assert!(plan_sweep(&[bare(None)], &policy(), asked).is_empty());
        let plan = plan_sweep(&[bare(Some(NOW - 1))], &policy(), asked);
        assert_eq!(
            reasons(&plan),
            [SweepReason::Expired {
                expired_secs_ago: 1
            }]
        );
    }

    #[test]
    fn a_dead_runs_unlabelled_leftovers_go_with_it() {
        let mut resources = run("a", HOST, 100, NOW + 3600);
        resources.push(RunResource {
            pid: None,
            host: None,
            ..resource(ResourceKind::Container, "a", "a-stray")
        });
        let plan = plan_sweep(&resources, &policy(), all(ProcessState::Gone));
        assert_eq!(names(&plan), ["a-db", "a-stray", "a-net", "a-vol"]);
    }

    #[test]
    fn every_runner_is_asked_once_and_the_start_time_is_passed_on() {
        let mut resources = run("a", HOST, 100, NOW + 3600);
        resources.extend(run("b", HOST, 200, NOW + 3600));
        let asked = RefCell::new(Vec::new());
        plan_sweep(&resources, &policy(), |pid, start| {
            asked.borrow_mut().push((pid, start));
            ProcessState::Alive
        });
        assert_eq!(*asked.borrow(), [(100, Some(5)), (200, Some(5))]);
    }

    #[test]
    fn kept_runs_survive_a_dead_runner_until_their_lease_expires() {
        let mut resources = run("kept", HOST, 100, NOW - 10);
        resources.push(RunResource {
            shard: None,
            lease: true,
            kept: true,
            expires: Some(NOW + 600),
            ..resource(ResourceKind::Volume, "kept", "ephem-lease-kept-1")
        });
        let here = policy();
        assert!(plan_sweep(&resources, &here, all(ProcessState::Gone)).is_empty());
        resources.last_mut().unwrap().expires = Some(NOW - 1);
        assert_eq!(
            plan_sweep(&resources, &here, all(ProcessState::Gone)).len(),
            4
        );
    }

    #[test]
    fn a_kept_run_expires_when_its_keeper_said_not_when_its_containers_did() {
        // Containers started with a 30-minute expiry; the run was then kept
        // for a 1-minute idle TTL that has passed.
        let mut resources = run("kept", HOST, 100, NOW + 1800);
        resources.push(RunResource {
            shard: None,
            lease: true,
            kept: true,
            expires: Some(NOW - 5),
            ..resource(ResourceKind::Volume, "kept", "ephem-lease-kept-1")
        });
        let plan = plan_sweep(&resources, &policy(), all(ProcessState::Gone));
        assert_eq!(plan.len(), 4);
        assert!(matches!(plan[0].1, SweepReason::RunnerGone { pid: 100 }));
    }

    fn everywhere() -> SweepPolicy {
        SweepPolicy {
            all_hosts: true,
            ..policy()
        }
    }

    #[test]
    fn by_expiry_expired_runs_of_any_host_go_and_unexpired_ones_stay_whatever_their_pid() {
        let mut resources = run("far-old", "ci-runner-gone", 7, NOW - 600);
        resources.extend(run("far-new", "ci-runner-live", 7, NOW + 600));
        resources.extend(run("here-dead", HOST, 100, NOW + 600));
        resources.extend(run("here-old", HOST, 100, NOW - 5));
        let plan = plan_expiry_sweep(&resources, &policy(), all(ProcessState::Gone));
        assert_eq!(
            names(&plan),
            [
                "far-old-db",
                "far-old-net",
                "far-old-vol",
                "here-old-db",
                "here-old-net",
                "here-old-vol"
            ]
        );
        assert_eq!(
            reasons(&plan)[0],
            SweepReason::Expired {
                expired_secs_ago: 600
            }
        );
        assert_eq!(
            reasons(&plan)[3],
            SweepReason::Expired {
                expired_secs_ago: 5
            }
        );
        // The Docker policy on the same resources: this host's dead runner
        // goes at once, other hosts' runs never without all_hosts.
        let docker = plan_sweep(&resources, &policy(), all(ProcessState::Gone));
        let runs: Vec<&str> = docker.iter().map(|(r, _)| r.run.as_str()).collect();
        assert!(
            runs.iter().all(|r| r.starts_with("here-")) && runs.contains(&"here-dead"),
            "{runs:?}"
        );
    }

    #[test]
    fn by_expiry_a_runner_seen_alive_here_keeps_its_expired_run_and_only_its() {
        let mut resources = run("mine", HOST, 100, NOW - 60);
        // The same pid on another host proves nothing here.
        resources.extend(run("theirs", "elsewhere", 100, NOW - 60));
        let asked = RefCell::new(Vec::new());
        let plan = plan_expiry_sweep(&resources, &policy(), |pid, start| {
            asked.borrow_mut().push((pid, start));
            ProcessState::Alive
        });
        let runs: Vec<&str> = plan.iter().map(|(r, _)| r.run.as_str()).collect();
        assert_eq!(runs, ["theirs"; 3]);
        assert_eq!(*asked.borrow(), [(100, Some(5))]);
        for state in [ProcessState::Gone, ProcessState::Reused] {
            assert_eq!(
                plan_expiry_sweep(&resources, &policy(), all(state)).len(),
                6
            );
        }
    }

    #[test]
    fn by_expiry_an_unexpired_run_is_never_asked_about_without_all_hosts() {
        let resources = run("fresh", HOST, 100, NOW + 60);
        let asked = |_, _| -> ProcessState { panic!("an unexpired run needs no pid check") };
        assert!(plan_expiry_sweep(&resources, &policy(), asked).is_empty());
        let bare = RunResource {
            pid: None,
            host: None,
            expires: None,
            ..resource(ResourceKind::Namespace, "bare", "bare-ns")
        };
        assert!(plan_expiry_sweep(&[bare], &policy(), asked).is_empty());
    }

    #[test]
    fn by_expiry_all_hosts_also_takes_unexpired_runs_but_not_kept_live_or_current_ones() {
        let mut resources = run("far", "elsewhere", 7, NOW + 600);
        resources.extend(run("live", HOST, 100, NOW + 600));
        resources.extend(run("dead", HOST, 200, NOW + 600));
        resources.extend(run("current", HOST, 300, NOW + 600));
        resources.push(RunResource {
            kept: true,
            ..resource(ResourceKind::Namespace, "kept", "kept-ns")
        });
        resources.push(RunResource {
            expires: None,
            pid: None,
            host: None,
            ..resource(ResourceKind::Namespace, "bare", "bare-ns")
        });
        let policy = SweepPolicy {
            keep_runs: vec!["current".to_owned()],
            ..everywhere()
        };
        let plan = plan_expiry_sweep(&resources, &policy, |pid, _| match pid {
            100 => ProcessState::Alive,
            _ => ProcessState::Gone,
        });
        let mut runs: Vec<&str> = plan.iter().map(|(r, _)| r.run.as_str()).collect();
        runs.dedup();
        assert_eq!(runs, ["bare", "dead", "far"]);
        assert_eq!(
            plan[0].1,
            SweepReason::Unexpired {
                expires_in_secs: None
            }
        );
        assert_eq!(
            plan.last().unwrap().1,
            SweepReason::Unexpired {
                expires_in_secs: Some(600)
            }
        );
        assert_eq!(plan[0].1.to_string(), "no expiry, taken by --all");
        assert_eq!(
            plan.last().unwrap().1.to_string(),
            "expires in 10m, taken by --all"
        );
    }

    #[test]
    fn by_expiry_a_kept_run_goes_when_its_keeper_said() {
        let mut resources = run("kept", "elsewhere", 7, NOW + 1800);
        resources.push(RunResource {
            kept: true,
            host: Some("elsewhere".to_owned()),
            expires: Some(NOW - 5),
            ..resource(ResourceKind::Namespace, "kept", "kept-ns")
        });
        let plan = plan_expiry_sweep(&resources, &policy(), all(ProcessState::Gone));
        assert_eq!(plan.len(), 4);
        assert_eq!(
            plan[0].1,
            SweepReason::Expired {
                expired_secs_ago: 5
            }
        );
    }
}
