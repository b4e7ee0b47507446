//! Removing a shard's containers, network and volumes, found by label.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, ListVolumesOptions, RemoveContainerOptions,
    RemoveVolumeOptions,
};
use bollard::Docker;
use futures_util::future::join_all;

use super::{daemon_message, is_gone, labels};
use crate::{EnvError, ShardContext};

/// Removes everything labelled with the shard's run and number.
///
/// Idempotent, and safe on a half-provisioned shard: containers that were
/// created but never started are listed (`all`) and removed like the others.
pub(crate) async fn teardown(docker: &Docker, shard: &ShardContext) -> Result<(), EnvError> {
    let mut problems = Vec::new();
    // A second pass catches a container whose create call was still in flight
    // when the first listing ran (a provision future dropped mid-request).
    for pass in 0..2 {
        let removed = remove_containers(docker, shard, &mut problems).await;
        if removed == 0 || pass == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    remove_networks(docker, shard, &mut problems).await;
    remove_volumes(docker, shard, &mut problems).await;
    if problems.is_empty() {
        return Ok(());
    }
    Err(EnvError::Other(format!(
        "shard {} teardown: {}; remove by hand with: docker rm -f -v $(docker ps -aq --filter label={}={}) and docker network rm",
        shard.shard,
        problems.join("; "),
        labels::RUN,
        shard.run.run_id
    )))
}

/// Force-removes the shard's containers concurrently; returns how many were found.
async fn remove_containers(
    docker: &Docker,
    shard: &ShardContext,
    problems: &mut Vec<String>,
) -> usize {
    let options = ListContainersOptions {
        all: true,
        filters: Some(labels::shard_filter(shard)),
        ..Default::default()
    };
    let containers = match docker.list_containers(Some(options)).await {
        Ok(list) => list,
        Err(e) => {
            problems.push(format!("cannot list containers: {}", daemon_message(&e)));
            return 0;
        }
    };
    let ids: Vec<String> = containers
        .into_iter()
        .filter(|c| of_shard(c.labels.as_ref(), shard))
        .filter_map(|c| c.id)
        .collect();
    let removals = ids.iter().map(|id| async move {
        // v: anonymous volumes (e.g. Postgres' VOLUME) go with the container.
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        (id, docker.remove_container(id, Some(options)).await)
    });
    for (id, result) in join_all(removals).await {
        match result {
            Ok(()) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => problems.push(format!(
                "cannot remove container {}: {}",
                short(id),
                daemon_message(&e)
            )),
        }
    }
    ids.len()
}

async fn remove_networks(docker: &Docker, shard: &ShardContext, problems: &mut Vec<String>) {
    let options = ListNetworksOptions {
        filters: Some(labels::shard_filter(shard)),
    };
    let networks = match docker.list_networks(Some(options)).await {
        Ok(list) => list,
        Err(e) => return problems.push(format!("cannot list networks: {}", daemon_message(&e))),
    };
    for network in networks {
        let Some(id) = network
            .id
            .filter(|_| of_shard(network.labels.as_ref(), shard))
        else {
            continue;
        };
        match docker.remove_network(&id).await {
            Ok(()) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => problems.push(format!(
                "cannot remove network {}: {}",
                network.name.as_deref().unwrap_or(&id),
                daemon_message(&e)
            )),
        }
    }
}

async fn remove_volumes(docker: &Docker, shard: &ShardContext, problems: &mut Vec<String>) {
    let options = ListVolumesOptions {
        filters: Some(labels::shard_filter(shard)),
    };
    let volumes = match docker.list_volumes(Some(options)).await {
        Ok(list) => list.volumes.unwrap_or_default(),
        Err(e) => return problems.push(format!("cannot list volumes: {}", daemon_message(&e))),
    };
    for volume in volumes {
        if !of_shard(Some(&volume.labels), shard) {
            continue;
        }
        match docker
            .remove_volume(&volume.name, Some(RemoveVolumeOptions { force: true }))
            .await
        {
            Ok(()) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => problems.push(format!(
                "cannot remove volume {}: {}",
                volume.name,
                daemon_message(&e)
            )),
        }
    }
}

/// The daemon's label filter is checked again: Podman 4.3 ORs the run and
/// shard filters on volumes, which would list other runs' shard volumes.
fn of_shard(found: Option<&HashMap<String, String>>, shard: &ShardContext) -> bool {
    found.is_some_and(|l| labels::of_shard(l, &shard.run.run_id, shard.shard))
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
