//! `--reuse`: environments kept between local runs, each found by a key (the
//! services as configured, the images' ids, the shard) and taken over by one
//! run at a time.
//!
//! A kept environment is the containers, network and volumes of the run that
//! made it, plus a lease volume marked `keep` that spares it from sweeps
//! until its idle TTL passes. A run that takes it over first creates a claim
//! volume of fixed name carrying its own pid and start time: creating a
//! volume that exists returns the existing one, so two runs cannot both
//! win, and a claim whose runner is gone is taken over. While claimed, the
//! sweep sees a live runner in the kept run and leaves it alone.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use bollard::models::{ContainerSummary, VolumeCreateRequest};
use bollard::query_parameters::{ListContainersOptions, RemoveVolumeOptions};
use bollard::Docker;
use sha2::{Digest, Sha256};

use super::labels::{self, Owner};
use super::{daemon_message, is_gone};
use crate::config::EphemConfig;
use crate::sweep::{local_process_state, ProcessState};
use crate::EnvError;

/// The key of a shard's environment: what it is made of, so a changed
/// `ephem.toml` or image gives a new key. `image_ids` are the daemon's ids
/// of the images the services run, in service order.
pub(crate) fn key(config: &EphemConfig, image_ids: &[String], shard: u32) -> String {
    let mut hasher = Sha256::new();
    hasher.update(env!("CARGO_PKG_VERSION"));
    for service in &config.services {
        // Everything that shapes the container; not `export`, which is
        // rendered anew by every run.
        let shape = (
            &service.name,
            &service.image,
            &service.env,
            &service.ports,
            &service.cmd,
            &service.args,
            &service.wait,
            &service.healthcheck,
            &service.depends_on,
            &service.setup,
            &service.reset,
            service.per_test_databases,
        );
        hasher.update(format!("{shape:?}"));
    }
    for id in image_ids {
        hasher.update(id);
    }
    hasher.update(shard.to_le_bytes());
    hex(&hasher.finalize()[..12])
}

/// A workspace's id for the `workspace` label: its root's hash.
pub fn workspace_id(root: &str) -> String {
    hex(&Sha256::digest(root.as_bytes())[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A kept environment whose key matches: its run and the containers'
/// services.
pub(crate) struct Kept {
    pub run: String,
    pub services: BTreeMap<String, bool>,
}

/// Kept environments with `key` (runs whose runner is gone), oldest first.
pub(crate) async fn find(docker: &Docker, key: &str) -> Result<Vec<Kept>, EnvError> {
    let containers = labelled(docker, &format!("{}={key}", labels::REUSE)).await?;
    let mut runs: BTreeMap<(i64, String), Kept> = BTreeMap::new();
    let mut live = Vec::new();
    for c in containers {
        let labels = c.labels.unwrap_or_default();
        let (Some(run), Some(service)) = (labels.get(labels::RUN), labels.get(labels::SERVICE))
        else {
            continue;
        };
        // The run that made it is still running it: not kept yet.
        if runner_alive(&labels) {
            live.push(run.clone());
            continue;
        }
        let running = c.state.is_some_and(|s| s.to_string() == "running");
        runs.entry((c.created.unwrap_or(0), run.clone()))
            .or_insert_with(|| Kept {
                run: run.clone(),
                services: BTreeMap::new(),
            })
            .services
            .insert(service.clone(), running);
    }
    Ok(runs
        .into_values()
        .filter(|k| !live.contains(&k.run))
        .collect())
}

/// Test-only: the file whose existence releases runs waiting to take kept
/// environments over, so that a race test's runs claim at the same moment
/// (process start-up alone spreads them over ~100 ms).
pub const CLAIM_BARRIER_VAR: &str = "CARGO_EPHEM_TEST_CLAIM_BARRIER";

/// With [`CLAIM_BARRIER_VAR`] set: says it arrived (`FILE.PID`), then waits
/// at most 60 s for FILE. Without it, returns at once.
pub(crate) async fn claim_barrier() {
    let Some(path) = std::env::var_os(CLAIM_BARRIER_VAR) else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let mut arrived = path.clone().into_os_string();
    arrived.push(format!(".{}", std::process::id()));
    let _ = std::fs::write(&arrived, "");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !path.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// The claim volume of a kept environment (one per run and shard).
fn claim_name(run: &str, shard: u32) -> String {
    format!("ephem-claim-{}-s{shard}", labels::short_run(run))
}

/// Claims the kept environment of `run`'s shard for this runner: true when
/// it is ours now, false when a live run holds it.
pub(crate) async fn claim(
    docker: &Docker,
    owner: &Owner,
    run: &str,
    shard: u32,
    expires_at: SystemTime,
) -> Result<bool, EnvError> {
    let name = claim_name(run, shard);
    let mut claim_labels = owner.labels(run, expires_at);
    claim_labels.insert(labels::CLAIM.to_owned(), "1".to_owned());
    claim_labels.insert(labels::SHARD.to_owned(), shard.to_string());
    for _ in 0..2 {
        let volume = docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(claim_labels.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| EnvError::Other(format!("claiming {name}: {}", daemon_message(&e))))?;
        let holder = |key: &str| volume.labels.get(key).cloned();
        if holder(labels::PID) == claim_labels.get(labels::PID).cloned()
            && holder(labels::PID_START) == claim_labels.get(labels::PID_START).cloned()
        {
            return Ok(true);
        }
        let pid = holder(labels::PID).and_then(|p| p.parse().ok());
        let start = holder(labels::PID_START).and_then(|p| p.parse().ok());
        if pid.is_some_and(|pid| local_process_state(pid, start) == ProcessState::Alive) {
            return Ok(false);
        }
        // Its claimer is gone: the claim is free again.
        release(docker, run, shard).await?;
    }
    Ok(false)
}

/// Gives a claimed environment back (at the end of the run).
pub(crate) async fn release(docker: &Docker, run: &str, shard: u32) -> Result<(), EnvError> {
    let name = claim_name(run, shard);
    match docker
        .remove_volume(&name, Some(RemoveVolumeOptions { force: true }))
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(EnvError::Other(format!(
            "releasing {name}: {}",
            daemon_message(&e)
        ))),
    }
}

/// Shards kept for `workspace` whose key is none of `keys` (the
/// configuration or an image changed), with no live runner: to remove, by
/// (run, shard).
pub(crate) async fn stale(
    docker: &Docker,
    workspace: &str,
    keys: &[String],
) -> Result<Vec<(String, u32)>, EnvError> {
    let containers = labelled(docker, &format!("{}={workspace}", labels::WORKSPACE)).await?;
    let mut stale = Vec::new();
    for c in containers {
        let labels = c.labels.unwrap_or_default();
        let (Some(run), Some(key), Some(shard)) = (
            labels.get(labels::RUN),
            labels.get(labels::REUSE),
            labels
                .get(labels::SHARD)
                .and_then(|s| s.parse::<u32>().ok()),
        ) else {
            continue;
        };
        let entry = (run.clone(), shard);
        if !runner_alive(&labels) && !keys.contains(key) && !stale.contains(&entry) {
            stale.push(entry);
        }
    }
    Ok(stale)
}

/// Whether any container of `run` remains (else its leases can go).
pub(crate) async fn has_containers(docker: &Docker, run: &str) -> Result<bool, EnvError> {
    Ok(!labelled(docker, &format!("{}={run}", labels::RUN))
        .await?
        .is_empty())
}

/// Every container, running or not, with `label` (`key=value`).
async fn labelled(docker: &Docker, label: &str) -> Result<Vec<ContainerSummary>, EnvError> {
    let filters = HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| {
            EnvError::Other(format!(
                "listing containers with {label}: {}",
                daemon_message(&e)
            ))
        })
}

/// Whether the runner a container's labels name is alive (pid and start time).
fn runner_alive(labels: &HashMap<String, String>) -> bool {
    let pid = labels.get(labels::PID).and_then(|p| p.parse().ok());
    let start = labels.get(labels::PID_START).and_then(|p| p.parse().ok());
    pid.is_some_and(|pid| local_process_state(pid, start) == ProcessState::Alive)
}
