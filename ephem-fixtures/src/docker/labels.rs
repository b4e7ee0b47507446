//! Labels on everything the backend creates: teardown and garbage collection
//! find resources by label, never by name.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::ShardContext;

/// Run id.
pub const RUN: &str = "cargo-ephem.run";
/// 1-based shard number.
pub const SHARD: &str = "cargo-ephem.shard";
/// Pid of the runner that created the resource.
pub const PID: &str = "cargo-ephem.pid";
/// Hostname of the machine that ran the runner.
pub const HOST: &str = "cargo-ephem.host";
/// Unix seconds after which the resource counts as abandoned.
pub const EXPIRES: &str = "cargo-ephem.expires";
/// Service name (containers only).
pub const SERVICE: &str = "cargo-ephem.service";
/// Start time of the runner process (clock ticks since boot, field 22 of
/// `/proc/PID/stat`), so that a recycled pid is not taken for the runner.
/// Absent where there is no procfs.
pub const PID_START: &str = "cargo-ephem.pid-start";
/// Marks a lease volume: it only carries a later `expires` for its run.
pub const LEASE: &str = "cargo-ephem.lease";
/// Marks the lease of a run that ended with `--keep-env`: sweeps leave the
/// run alone, dead runner or not, until the lease expires.
pub const KEEP: &str = "cargo-ephem.keep";
/// `--reuse`: the key of a kept environment (workspace, services, images,
/// shard); a later run with the same key takes it over.
pub const REUSE: &str = "cargo-ephem.reuse";
/// `--reuse`: the workspace whose run kept it (`cargo ephem down` removes
/// that workspace's kept environments).
pub const WORKSPACE: &str = "cargo-ephem.workspace";
/// Marks the claim container of a kept environment (`--reuse`, `down`):
/// its value is the kept run's shard it claims. It stands in for `shard`
/// so that the shard's teardown leaves the claim until the end.
pub const CLAIM: &str = "cargo-ephem.claim";

/// Who created a resource: the runner process and its machine.
#[derive(Clone, Debug)]
pub(crate) struct Owner {
    pub pid: u32,
    pub pid_start: Option<u64>,
    pub hostname: String,
}

impl Owner {
    /// This process on this machine.
    pub(crate) fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            pid_start: process_start(pid),
            hostname: hostname(),
        }
    }

    /// `run`, `pid`, `pid-start` (when known), `host` and `expires` labels.
    pub(crate) fn labels(&self, run_id: &str, expires_at: SystemTime) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (RUN.to_owned(), run_id.to_owned()),
            (PID.to_owned(), self.pid.to_string()),
            (HOST.to_owned(), self.hostname.clone()),
            (EXPIRES.to_owned(), unix_secs(expires_at).to_string()),
        ]);
        if let Some(start) = self.pid_start {
            labels.insert(PID_START.to_owned(), start.to_string());
        }
        labels
    }
}

/// Labels shared by a shard's containers, network and volumes.
pub(crate) fn for_shard(shard: &ShardContext, owner: &Owner) -> HashMap<String, String> {
    let mut labels = owner.labels(&shard.run.run_id, shard.run.expires_at);
    labels.insert(SHARD.to_owned(), shard.shard.to_string());
    labels
}

/// Start time of process `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`); `None` if it does not exist or there is no procfs.
pub fn process_start(pid: u32) -> Option<u64> {
    crate::process::start_time(pid)
}

/// Seconds since the Unix epoch; 0 for instants before it.
pub(crate) fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A list filter matching exactly one shard's resources.
pub(crate) fn shard_filter(shard: &ShardContext) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        vec![
            format!("{RUN}={}", shard.run.run_id),
            format!("{SHARD}={}", shard.shard),
        ],
    )])
}

/// Whether `labels` name this run and shard. Podman 4.3 ORs several label
/// filters on volume lists and events (Docker ANDs them), so what a filtered
/// list or event stream returns is checked again here.
pub(crate) fn of_shard(labels: &HashMap<String, String>, run_id: &str, shard: u32) -> bool {
    labels.get(RUN).is_some_and(|r| r == run_id)
        && labels.get(SHARD).is_some_and(|s| s == &shard.to_string())
}

pub use crate::process::hostname;

/// First 8 name-safe characters of the run id, for readable container names.
pub(crate) fn short_run(run_id: &str) -> String {
    let short: String = run_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    if short.is_empty() {
        "run".to_owned()
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::RunContext;

    fn shard() -> ShardContext {
        ShardContext {
            run: RunContext {
                run_id: "r1".to_owned(),
                shard_count: 2,
                expires_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            },
            shard: 2,
        }
    }

    #[test]
    fn shard_labels_name_the_runner_and_its_start_time() {
        let owner = Owner {
            pid: 4242,
            pid_start: Some(777),
            hostname: "box".to_owned(),
        };
        let labels = for_shard(&shard(), &owner);
        let get = |key: &str| labels.get(key).map(String::as_str);
        assert_eq!(get(RUN), Some("r1"));
        assert_eq!(get(SHARD), Some("2"));
        assert_eq!(get(PID), Some("4242"));
        assert_eq!(get(PID_START), Some("777"));
        assert_eq!(get(HOST), Some("box"));
        assert_eq!(get(EXPIRES), Some("1700000000"));
        assert_eq!(get(LEASE), None);
    }

    #[test]
    fn without_a_start_time_the_label_is_left_out() {
        let owner = Owner {
            pid: 4242,
            pid_start: None,
            hostname: "box".to_owned(),
        };
        assert!(!for_shard(&shard(), &owner).contains_key(PID_START));
    }

    #[test]
    fn of_shard_needs_both_the_run_and_the_shard() {
        let owner = Owner {
            pid: 1,
            pid_start: None,
            hostname: "box".to_owned(),
        };
        let labels = for_shard(&shard(), &owner);
        assert!(of_shard(&labels, "r1", 2));
        assert!(!of_shard(&labels, "r1", 1), "another shard of the run");
        assert!(!of_shard(&labels, "r2", 2), "the same shard of another run");
        let lease = owner.labels("r1", UNIX_EPOCH);
        assert!(!of_shard(&lease, "r1", 2), "a run-wide lease volume");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_runner_knows_its_start_time() {
        let me = Owner::current();
        assert_eq!(me.pid, std::process::id());
        assert!(me.pid_start.is_some_and(|s| s > 0));
        assert_eq!(process_start(me.pid), me.pid_start);
    }
}
