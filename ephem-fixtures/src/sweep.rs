//! Which resources of which runs a sweep may remove, and why: the policy
//! behind the start-of-run sweep and `cargo ephem gc` ([`plan_sweep`], pure:
//! the caller lists the resources and says whether a runner process is
//! alive), and the sweep itself over any backend's [`Cleanup`] ([`sweep`]).
//!
//! Decisions are made per run, never per resource or per kind of object, so
//! that a live run keeps all of its resources, and a dead one loses all of
//! them, whatever the backend.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::process;
use crate::{Cleanup, EnvError, RunResource};

/// What a sweep may touch.
#[derive(Clone, Debug)]
pub struct SweepPolicy {
    /// This machine's hostname: only runners labelled with it can be checked.
    pub this_host: String,
    /// Also remove other hosts' runs, once expired (`gc --all`).
    pub all_hosts: bool,
    /// Now, in unix seconds.
    pub now: u64,
    /// Runs never removed whatever their labels say, e.g. the current run.
    pub keep_runs: Vec<String>,
}

/// Whether the process that created a run still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessState {
    /// The pid runs, and (where checkable) is the same process.
    Alive,
    /// No such process, or only a zombie.
    Gone,
    /// The pid runs, but started at another time: a different process.
    Reused,
}

/// Why a resource is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepReason {
    /// Its runner on this host has exited.
    RunnerGone {
        /// The runner's pid.
        pid: u32,
    },
    /// Its runner's pid now belongs to another process.
    PidReused {
        /// The runner's pid.
        pid: u32,
    },
    /// Its run's latest expiry (leases included) has passed.
    Expired {
        /// How long ago.
        expired_secs_ago: u64,
    },
}

impl fmt::Display for SweepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SweepReason::RunnerGone { pid } => write!(f, "runner pid {pid} is gone"),
            SweepReason::PidReused { pid } => {
                write!(f, "pid {pid} now belongs to another process")
            }
            SweepReason::Expired { expired_secs_ago } => {
                write!(f, "expired {} ago", approximate(*expired_secs_ago))
            }
        }
    }
}

/// `45s`, `35m`, `5h`, `3days`: precise enough to judge at a glance.
pub fn approximate(secs: u64) -> String {
    let unit = match secs {
        0..120 => 1,
        120..7_200 => 60,
        7_200..172_800 => 3_600,
        _ => 86_400,
    };
    humantime::format_duration(Duration::from_secs(secs / unit * unit)).to_string()
}

/// The resources to remove, with why, by run, shard, kind, name and id (the
/// backend's [`Cleanup::remove`] orders the removal itself).
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
        if let Some(reasons) = judge_run(&members, policy, &process_alive) {
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
    /// Expired, runner unknown or elsewhere.
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
    // A kept run's deadline is the one its keeper set (`--keep-env`'s lease,
    // `--reuse`'s idle TTL), not the containers' own, set at their start.
    let any_kept = members.iter().any(|r| r.kept);
    let expired = members
        .iter()
        .filter(|r| r.kept || !any_kept)
        .filter_map(|r| r.expires)
        .max()
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

/// Whether `pid` on this machine is still the runner that started at
/// `pid_start`: `kill(pid, 0)`, then `/proc/PID/stat` for zombies and the
/// start time. Where the start time cannot be read, an existing pid is Alive.
pub fn local_process_state(pid: u32, pid_start: Option<u64>) -> ProcessState {
    if !process::exists(pid) {
        return ProcessState::Gone;
    }
    match process::stat(pid) {
        Some(stat) if matches!(stat.state, 'Z' | 'X' | 'x') => ProcessState::Gone,
        Some(stat) if pid_start.is_some_and(|start| start != stat.start) => ProcessState::Reused,
        _ => ProcessState::Alive,
    }
}

/// What a sweep found and did.
#[derive(Debug, Default)]
pub struct SweepOutcome {
    /// Resources judged abandoned, with why.
    pub planned: Vec<(RunResource, SweepReason)>,
    /// Those that could not be removed, with the backend's answer.
    pub failed: Vec<(RunResource, String)>,
}

impl SweepOutcome {
    /// One line: what was (or would be, per `verb`) removed, of how many runs.
    pub fn summary(&self, verb: &str) -> String {
        let mut kinds: Vec<(crate::ResourceKind, usize)> = Vec::new();
        for (r, _) in &self.planned {
            match kinds.iter_mut().find(|(k, _)| *k == r.kind) {
                Some((_, n)) => *n += 1,
                None => kinds.push((r.kind, 1)),
            }
        }
        kinds.sort_unstable();
        let counts: Vec<String> = kinds
            .iter()
            .map(|(kind, n)| format!("{n} {kind}{}", if *n == 1 { "" } else { "s" }))
            .collect();
        let mut runs: Vec<&str> = self.planned.iter().map(|(r, _)| r.run.as_str()).collect();
        runs.sort_unstable();
        runs.dedup();
        let mut line = format!(
            "{verb} {} of {} abandoned run(s)",
            counts.join(", "),
            runs.len()
        );
        if let Some((_, reason)) = self.planned.first() {
            let more = if runs.len() > 1 { ", ..." } else { "" };
            line.push_str(&format!(" ({reason}{more})"));
        }
        if !self.failed.is_empty() {
            line.push_str(&format!("; {} could not be removed", self.failed.len()));
        }
        line
    }
}

/// Lists the backend's runs, judges them by `policy` against this machine's
/// processes, and removes the abandoned ones unless `dry_run`.
pub async fn sweep(
    cleanup: &dyn Cleanup,
    policy: &SweepPolicy,
    dry_run: bool,
) -> Result<SweepOutcome, EnvError> {
    let resources = cleanup.list().await?;
    let planned = plan_sweep(&resources, policy, local_process_state);
    let mut failed = Vec::new();
    if !dry_run && !planned.is_empty() {
        let targets: Vec<RunResource> = planned.iter().map(|(r, _)| r.clone()).collect();
        for (resource, result) in cleanup.remove(&targets).await {
            if let Err(e) = result {
                failed.push((resource, e));
            }
        }
    }
    Ok(SweepOutcome { planned, failed })
}

impl SweepPolicy {
    /// The policy of this machine, now: only this host's runs, unless
    /// `all_hosts`; never the runs in `keep_runs`.
    pub fn here(all_hosts: bool, keep_runs: Vec<String>) -> SweepPolicy {
        SweepPolicy {
            this_host: process::hostname(),
            all_hosts,
            now: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            keep_runs,
        }
    }
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
    fn reasons_read_as_short_sentences() {
        assert_eq!(
            SweepReason::RunnerGone { pid: 4242 }.to_string(),
            "runner pid 4242 is gone"
        );
        assert_eq!(
            SweepReason::PidReused { pid: 4242 }.to_string(),
            "pid 4242 now belongs to another process"
        );
        let ago = |secs| {
            SweepReason::Expired {
                expired_secs_ago: secs,
            }
            .to_string()
        };
        assert_eq!(ago(35 * 60 + 12), "expired 35m ago");
        assert_eq!(ago(42), "expired 42s ago");
        assert_eq!(ago(5 * 3600 + 10), "expired 5h ago");
        assert_eq!(ago(3 * 86_400 + 7), "expired 3days ago");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn local_process_states() {
        let me = std::process::id();
        let start = process::stat(me).map(|s| s.start);
        assert_eq!(local_process_state(me, start), ProcessState::Alive);
        assert_eq!(local_process_state(me, None), ProcessState::Alive);
        assert_eq!(
            local_process_state(me, start.map(|s| s + 1)),
            ProcessState::Reused
        );
        assert_eq!(local_process_state(0, None), ProcessState::Gone);

        // An exited, unreaped child is a zombie: gone. Reaped, it does not exist.
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while process::stat(pid).is_some_and(|s| s.state != 'Z')
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(local_process_state(pid, None), ProcessState::Gone);
        child.wait().expect("reap child");
        assert_eq!(local_process_state(pid, None), ProcessState::Gone);
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
}
