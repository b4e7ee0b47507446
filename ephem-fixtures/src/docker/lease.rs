//! Lease volumes: labels cannot change once set, so a live run pushes its
//! expiry forward by creating a small volume with a later `expires` label
//! (and removing its earlier ones). A sweep takes a run's expiry as the
//! latest over all its resources, leases included.

use std::time::SystemTime;

use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::RemoveVolumeOptions;
use bollard::Docker;

use super::inventory::list_matching;
use super::labels::{self, Owner};
use super::{daemon_message, is_gone};
use crate::{EnvError, ResourceKind, RunResource};

/// How many names `renew` tries when one is taken (two renewals in one second).
const NAME_ATTEMPTS: u32 = 5;

/// Creates a lease volume for `run_id` expiring at `expires_at`, then removes
/// the run's leases that expire no later (so the latest always survives).
pub(crate) async fn renew(
    docker: &Docker,
    owner: &Owner,
    run_id: &str,
    expires_at: SystemTime,
    keep: bool,
) -> Result<(), EnvError> {
    let mut lease_labels = owner.labels(run_id, expires_at);
    lease_labels.insert(labels::LEASE.to_owned(), "1".to_owned());
    if keep {
        lease_labels.insert(labels::KEEP.to_owned(), "1".to_owned());
    }
    let expires = labels::unix_secs(expires_at);
    let now = labels::unix_secs(SystemTime::now());
    let base = format!("ephem-lease-{}-{now}", labels::short_run(run_id));

    let mut created = None;
    for attempt in 0..NAME_ATTEMPTS {
        let name = match attempt {
            0 => base.clone(),
            n => format!("{base}-{n}"),
        };
        let volume = docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(lease_labels.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                EnvError::Other(format!(
                    "run {run_id}: cannot create lease volume {name}: {}; without it a sweep may take the run for abandoned after its expiry",
                    daemon_message(&e)
                ))
            })?;
        // Creating a volume whose name exists returns the existing one, labels
        // unchanged: only a volume carrying our run and expiry is our lease.
        let ours = volume.labels.get(labels::RUN).map(String::as_str) == Some(run_id)
            && volume.labels.get(labels::EXPIRES) == lease_labels.get(labels::EXPIRES)
            && volume.labels.contains_key(labels::LEASE);
        if ours {
            created = Some(name);
            break;
        }
    }
    let Some(created) = created else {
        return Err(EnvError::Other(format!(
            "run {run_id}: cannot create lease volume {base}: {NAME_ATTEMPTS} names were taken by other volumes; remove stale ones with `docker volume rm`"
        )));
    };

    let older: Vec<RunResource> = leases(docker, run_id)
        .await?
        .into_iter()
        .filter(|l| l.name != created && !matches!(l.expires, Some(e) if e > expires))
        .collect();
    remove_all(docker, run_id, &older).await
}

/// Removes the lease volumes of `run_id` that are not marked keep: call it
/// once the whole run is torn down or kept (a shard's teardown cannot know it
/// is the last).
pub async fn remove_leases(docker: &Docker, run_id: &str) -> Result<(), EnvError> {
    let live: Vec<RunResource> = leases(docker, run_id)
        .await?
        .into_iter()
        .filter(|l| !l.kept)
        .collect();
    remove_all(docker, run_id, &live).await
}

/// The run's lease volumes.
async fn leases(docker: &Docker, run_id: &str) -> Result<Vec<RunResource>, EnvError> {
    let filters = vec![
        format!("{}={run_id}", labels::RUN),
        labels::LEASE.to_owned(),
    ];
    // The filters say volumes carry both labels; `lease` makes sure.
    Ok(list_matching(docker, filters)
        .await?
        .into_iter()
        .filter(|r| r.kind == ResourceKind::Volume && r.lease && r.run == run_id)
        .collect())
}

async fn remove_all(docker: &Docker, run_id: &str, leases: &[RunResource]) -> Result<(), EnvError> {
    let mut problems = Vec::new();
    for lease in leases {
        match docker
            .remove_volume(&lease.id, Some(RemoveVolumeOptions { force: true }))
            .await
        {
            Ok(()) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => problems.push(format!("{}: {}", lease.name, daemon_message(&e))),
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(EnvError::Other(format!(
        "run {run_id}: cannot remove lease volumes {}; remove by hand with: docker volume rm $(docker volume ls -q --filter label={}={run_id} --filter label={})",
        problems.join("; "),
        labels::RUN,
        labels::LEASE
    )))
}
