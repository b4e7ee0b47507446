//! Which resources of which runs a sweep may remove, and why: the policy
//! behind the start-of-run sweep and `cargo ephem gc` ([`plan_sweep`] and
//! [`plan_expiry_sweep`], pure: the caller lists the resources and says
//! whether a runner process is alive), and the sweep itself over any
//! backend's [`Cleanup`] ([`sweep`]).
//!
//! Decisions are made per run, never per resource or per kind of object, so
//! that a live run keeps all of its resources, and a dead one loses all of
//! them, whatever the backend. What tells a live run from a dead one is the
//! backend's [`Liveness`].

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::process;
use crate::{Cleanup, EnvError, RunResource};

mod plan;

pub use plan::{plan_expiry_sweep, plan_sweep};

/// What tells a live run from an abandoned one, per backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Liveness {
    /// The runner's process on this host ([`plan_sweep`]): a machine's
    /// daemon is used from that machine, whose pids can be checked. Other
    /// hosts' runs go by their expiry, and only with `all_hosts`.
    #[default]
    RunnerProcess,
    /// The expiry, whatever the host ([`plan_expiry_sweep`]): a cluster is
    /// shared by runners that come and go (a CI job's runner has a new
    /// hostname every job and takes its reaper with it when killed), and a
    /// hostname does not say which pid namespace a pid was in.
    Expiry,
}

/// What a sweep may touch.
#[derive(Clone, Debug)]
pub struct SweepPolicy {
    /// This machine's hostname: only runners labelled with it can be checked.
    pub this_host: String,
    /// `gc --all`: with [`Liveness::RunnerProcess`], also other hosts'
    /// runs once expired; with [`Liveness::Expiry`], also runs that have not
    /// expired (unless kept on purpose, or their runner runs here).
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
    /// Its run has not expired (or carries no expiry), and `all_hosts`
    /// asked for such runs too ([`Liveness::Expiry`] only).
    Unexpired {
        /// In how long it would have expired; None without an expiry.
        expires_in_secs: Option<u64>,
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
            SweepReason::Unexpired {
                expires_in_secs: Some(secs),
            } => write!(f, "expires in {}, taken by --all", approximate(*secs)),
            SweepReason::Unexpired {
                expires_in_secs: None,
            } => f.write_str("no expiry, taken by --all"),
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
    /// Resources judged abandoned, with why (never one already
    /// [`terminating`](RunResource::terminating)).
    pub planned: Vec<(RunResource, SweepReason)>,
    /// Those that could not be removed, with the backend's answer.
    pub failed: Vec<(RunResource, String)>,
    /// Resources the backend is already removing (namespaces Terminating),
    /// whatever their run's verdict: never removed again, reported.
    pub terminating: Vec<RunResource>,
}

impl SweepOutcome {
    /// One line: what was (or would be, per `verb`) removed, of how many
    /// runs, what could not be, and what the backend is still removing.
    pub fn summary(&self, verb: &str) -> String {
        let mut parts = Vec::new();
        if !self.planned.is_empty() {
            let mut runs: Vec<&str> = self.planned.iter().map(|(r, _)| r.run.as_str()).collect();
            runs.sort_unstable();
            runs.dedup();
            let more = if runs.len() > 1 { ", ..." } else { "" };
            parts.push(format!(
                "{verb} {} of {} abandoned run(s) ({}{more})",
                count_kinds(self.planned.iter().map(|(r, _)| r)),
                runs.len(),
                self.planned[0].1
            ));
        }
        if !self.failed.is_empty() {
            parts.push(format!("{} could not be removed", self.failed.len()));
        }
        if !self.terminating.is_empty() {
            let now = SystemTime::now();
            let stuck = self
                .terminating
                .iter()
                .filter(|r| r.terminating.as_ref().is_some_and(|t| t.is_stuck(now)))
                .count();
            let stuck = match stuck {
                0 => String::new(),
                n => format!(
                    ", {n} of them for over {}",
                    approximate(crate::cleanup::STUCK_AFTER.as_secs())
                ),
            };
            parts.push(format!(
                "{} already being deleted, not deleted again{stuck}",
                count_kinds(self.terminating.iter())
            ));
        }
        if parts.is_empty() {
            return "nothing to remove".to_owned();
        }
        parts.join("; ")
    }

    /// Whether a resource the backend began removing has been at it for
    /// [`crate::cleanup::STUCK_AFTER`] or longer.
    pub fn any_stuck(&self, now: SystemTime) -> bool {
        self.terminating
            .iter()
            .any(|r| r.terminating.as_ref().is_some_and(|t| t.is_stuck(now)))
    }
}

/// `2 namespaces`, `1 container, 1 network`: how many of each kind.
fn count_kinds<'a>(resources: impl Iterator<Item = &'a RunResource>) -> String {
    let mut kinds: Vec<(crate::ResourceKind, usize)> = Vec::new();
    for r in resources {
        match kinds.iter_mut().find(|(k, _)| *k == r.kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((r.kind, 1)),
        }
    }
    kinds.sort_unstable();
    kinds
        .iter()
        .map(|(kind, n)| format!("{n} {kind}{}", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lists the backend's runs, judges them by `policy` and the backend's
/// [`Liveness`] against this machine's processes, and removes the abandoned
/// ones unless `dry_run`. What the backend is already removing is reported,
/// never removed again.
pub async fn sweep(
    cleanup: &dyn Cleanup,
    policy: &SweepPolicy,
    dry_run: bool,
) -> Result<SweepOutcome, EnvError> {
    let resources = cleanup.list().await?;
    let plan = match cleanup.liveness() {
        Liveness::RunnerProcess => plan_sweep(&resources, policy, local_process_state),
        Liveness::Expiry => plan_expiry_sweep(&resources, policy, local_process_state),
    };
    let planned: Vec<(RunResource, SweepReason)> = plan
        .into_iter()
        .filter(|(r, _)| r.terminating.is_none())
        .collect();
    let mut terminating: Vec<RunResource> = resources
        .into_iter()
        .filter(|r| r.terminating.is_some() && !policy.keep_runs.contains(&r.run))
        .collect();
    terminating.sort_by(|a, b| (&a.run, a.shard, &a.name).cmp(&(&b.run, b.shard, &b.name)));
    let mut failed = Vec::new();
    if !dry_run && !planned.is_empty() {
        let targets: Vec<RunResource> = planned.iter().map(|(r, _)| r.clone()).collect();
        for (resource, result) in cleanup.remove(&targets).await {
            if let Err(e) = result {
                failed.push((resource, e));
            }
        }
    }
    Ok(SweepOutcome {
        planned,
        failed,
        terminating,
    })
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
    use std::time::Duration;

    use super::*;
    use crate::ResourceKind;

    fn resource(name: &str) -> RunResource {
        RunResource {
            kind: ResourceKind::Namespace,
            id: format!("id-{name}"),
            name: name.to_owned(),
            run: name.to_owned(),
            shard: Some(1),
            pid: None,
            pid_start: None,
            host: None,
            expires: None,
            created: None,
            lease: false,
            kept: false,
            workspace: None,
            terminating: None,
        }
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
    fn the_summary_names_what_is_still_being_deleted() {
        let now = SystemTime::now();
        let terminating = |name: &str, secs: u64| RunResource {
            terminating: Some(crate::Terminating {
                since: now - Duration::from_secs(secs),
                holding: Vec::new(),
            }),
            run: "t".to_owned(),
            ..resource(name)
        };
        let outcome = SweepOutcome {
            planned: vec![(
                resource("a-1"),
                SweepReason::Expired {
                    expired_secs_ago: 60,
                },
            )],
            failed: Vec::new(),
            terminating: vec![terminating("t-1", 10), terminating("t-2", 900)],
        };
        assert_eq!(
            outcome.summary("removed"),
            "removed 1 namespace of 1 abandoned run(s) (expired 1m ago); 2 namespaces already being deleted, not deleted again, 1 of them for over 5m"
        );
        assert!(outcome.any_stuck(now));
        let only = SweepOutcome {
            terminating: vec![terminating("t-1", 10)],
            ..SweepOutcome::default()
        };
        assert_eq!(
            only.summary("would remove"),
            "1 namespace already being deleted, not deleted again"
        );
        assert!(!only.any_stuck(now));
        assert_eq!(
            SweepOutcome::default().summary("removed"),
            "nothing to remove"
        );
    }
}
