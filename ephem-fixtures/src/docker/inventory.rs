//! Everything on the daemon that carries cargo-ephem's run label, whichever
//! run or host made it; and removing such resources, whole runs at a time.
//!
//! Nothing here ever lists or removes a resource without the run label.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, ListVolumesOptions, RemoveContainerOptions,
    RemoveVolumeOptions,
};
use bollard::Docker;
use futures_util::future::join_all;
use tokio::time::Instant;

use super::{daemon_message, is_gone, labels};
use crate::{EnvError, ResourceKind, RunResource};

/// Passes of [`reap_run`], as offsets from its start: a create request in
/// flight when the runner died can complete after the first pass.
const REAP_PASSES: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// All of [`reap_run`] finishes within this, however slow the daemon.
const REAP_BUDGET: Duration = Duration::from_secs(8);

/// Every container (all states), network and volume labelled `cargo-ephem.run`.
pub async fn list_resources(docker: &Docker) -> Result<Vec<RunResource>, EnvError> {
    list_matching(docker, vec![labels::RUN.to_owned()]).await
}

/// Removes `resources`: containers first (forced, with their anonymous
/// volumes, concurrently), then networks, then volumes. A resource that is
/// already gone counts as removed. Results come in removal order.
pub async fn remove_resources(
    docker: &Docker,
    resources: &[RunResource],
) -> Vec<(RunResource, Result<(), String>)> {
    let mut results = Vec::with_capacity(resources.len());
    // Containers first: a network in use cannot go. Kinds that are not
    // Docker's come last and fail in `remove_one`.
    let mut kinds: Vec<ResourceKind> = resources.iter().map(|r| r.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for kind in kinds {
        let of_kind = resources.iter().filter(|r| r.kind == kind);
        let removals = of_kind.map(|r| async move { (r.clone(), remove_one(docker, r).await) });
        results.extend(join_all(removals).await);
    }
    results
}

/// Removes everything labelled with `run_id`, lease volumes included, and
/// returns how many resources were removed.
///
/// Passes run at 0 s, ~1 s and ~3 s (stopping after two empty ones), so that
/// a container whose create request was in flight when the runner died is
/// caught too; all within 8 s.
pub async fn reap_run(docker: &Docker, run_id: &str) -> Result<usize, EnvError> {
    let start = Instant::now();
    let deadline = start + REAP_BUDGET;
    let mut removed = 0;
    // Failures by id; a later pass that removes the resource clears its entry.
    let mut failures: HashMap<String, (RunResource, String)> = HashMap::new();
    let mut empty_passes = 0;
    for offset in REAP_PASSES {
        if empty_passes == 2 {
            break;
        }
        tokio::time::sleep_until(start + offset).await;
        let pass = tokio::time::timeout_at(deadline, reap_pass(docker, run_id)).await;
        let results = match pass {
            Ok(Ok(results)) => results,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(EnvError::Other(format!(
                    "reaping run {run_id}: the daemon did not finish within {}s (removed {removed}); run `cargo ephem gc` later to finish",
                    REAP_BUDGET.as_secs()
                )))
            }
        };
        empty_passes = if results.is_empty() {
            empty_passes + 1
        } else {
            0
        };
        for (resource, result) in results {
            match result {
                Ok(()) => {
                    failures.remove(&resource.id);
                    removed += 1;
                }
                Err(reason) => {
                    failures.insert(resource.id.clone(), (resource, reason));
                }
            }
        }
    }
    if failures.is_empty() {
        return Ok(removed);
    }
    let mut problems: Vec<String> = failures
        .into_values()
        .map(|(r, reason)| format!("{} {}: {reason}", r.kind, r.name))
        .collect();
    problems.sort();
    Err(EnvError::Other(format!(
        "reaping run {run_id}: removed {removed}, but cannot remove {}; remove by hand with: docker rm -f -v $(docker ps -aq --filter label={}={run_id})",
        problems.join("; "),
        labels::RUN,
    )))
}

/// Lists and removes what is labelled with the run right now.
async fn reap_pass(
    docker: &Docker,
    run_id: &str,
) -> Result<Vec<(RunResource, Result<(), String>)>, EnvError> {
    let found = list_matching(docker, vec![format!("{}={run_id}", labels::RUN)]).await?;
    Ok(remove_resources(docker, &found).await)
}

/// Resources matching every `label` filter (`key` or `key=value`); the run
/// label is always required on top, so nothing unlabelled slips through.
pub(crate) async fn list_matching(
    docker: &Docker,
    label_filters: Vec<String>,
) -> Result<Vec<RunResource>, EnvError> {
    let filters = HashMap::from([("label".to_owned(), label_filters)]);
    let listing_error = |what: &str, e: bollard::errors::Error| {
        EnvError::Other(format!(
            "cannot list {what} labelled {}: {}; check that the daemon answers `docker info`",
            labels::RUN,
            daemon_message(&e),
        ))
    };
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .map_err(|e| listing_error("containers", e))?;
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters.clone()),
        }))
        .await
        .map_err(|e| listing_error("networks", e))?;
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filters),
        }))
        .await
        .map_err(|e| listing_error("volumes", e))?
        .volumes
        .unwrap_or_default();

    let mut found = Vec::new();
    for c in containers {
        let (Some(id), Some(labels)) = (c.id, c.labels) else {
            continue;
        };
        let name = c
            .names
            .unwrap_or_default()
            .first()
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_else(|| short_id(&id).to_owned());
        let created = c
            .created
            .and_then(|secs| u64::try_from(secs).ok())
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
        found.extend(labelled(
            ResourceKind::Container,
            id,
            name,
            &labels,
            created,
        ));
    }
    for n in networks {
        let (Some(id), Some(labels)) = (n.id, n.labels) else {
            continue;
        };
        let name = n.name.unwrap_or_else(|| short_id(&id).to_owned());
        let created = n.created.as_deref().and_then(parse_timestamp);
        found.extend(labelled(ResourceKind::Network, id, name, &labels, created));
    }
    for v in volumes {
        let created = v.created_at.as_deref().and_then(parse_timestamp);
        found.extend(labelled(
            ResourceKind::Volume,
            v.name.clone(),
            v.name,
            &v.labels,
            created,
        ));
    }
    Ok(found)
}

/// The resource, if it carries the run label (the server-side filter
/// already said so; this makes sure of it).
fn labelled(
    kind: ResourceKind,
    id: String,
    name: String,
    labels: &HashMap<String, String>,
    created: Option<SystemTime>,
) -> Option<RunResource> {
    let run = labels.get(labels::RUN)?.clone();
    let number = |key: &str| labels.get(key).and_then(|v| v.trim().parse::<u64>().ok());
    Some(RunResource {
        kind,
        id,
        name,
        run,
        shard: number(labels::SHARD).and_then(|n| u32::try_from(n).ok()),
        pid: number(labels::PID).and_then(|n| u32::try_from(n).ok()),
        pid_start: number(labels::PID_START),
        host: labels.get(labels::HOST).cloned(),
        expires: number(labels::EXPIRES),
        created,
        lease: labels.contains_key(labels::LEASE),
        kept: labels.contains_key(labels::KEEP),
        workspace: labels.get(labels::WORKSPACE).cloned(),
        terminating: None,
    })
}

async fn remove_one(docker: &Docker, resource: &RunResource) -> Result<(), String> {
    let result = match resource.kind {
        ResourceKind::Container => {
            // v: anonymous volumes (e.g. Postgres' VOLUME) go with the container.
            let options = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            docker.remove_container(&resource.id, Some(options)).await
        }
        ResourceKind::Network => docker.remove_network(&resource.id).await,
        ResourceKind::Volume => {
            docker
                .remove_volume(&resource.id, Some(RemoveVolumeOptions { force: true }))
                .await
        }
        other => return Err(format!("a {other} is not a Docker resource")),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(daemon_message(&e)),
    }
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// An RFC 3339 timestamp as the daemon writes it (`2024-05-01T10:00:00Z`,
/// with optional fraction and a `Z` or `±hh:mm` offset).
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn timestamps_in_the_forms_the_daemon_writes() {
        // 2024-05-01T10:00:00Z = 1714557600
        assert_eq!(parse_timestamp("2024-05-01T10:00:00Z"), at(1714557600));
        assert_eq!(parse_timestamp("2024-05-01T12:00:00+02:00"), at(1714557600));
        assert_eq!(parse_timestamp("2024-05-01T05:30:00-04:30"), at(1714557600));
        let fractional = parse_timestamp("2024-05-01T10:00:00.123456789Z").unwrap();
        assert_eq!(
            fractional.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1714557600
        );
        assert_eq!(parse_timestamp(""), None);
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("2024-05-01T10:00:00+zz:00"), None);
    }

    #[test]
    fn labels_are_read_leniently_but_the_run_label_is_required() {
        let full = HashMap::from([
            (labels::RUN.to_owned(), "r1".to_owned()),
            (labels::SHARD.to_owned(), "3".to_owned()),
            (labels::PID.to_owned(), "4242".to_owned()),
            (labels::PID_START.to_owned(), "99".to_owned()),
            (labels::HOST.to_owned(), "box".to_owned()),
            (labels::EXPIRES.to_owned(), "1700000000".to_owned()),
        ]);
        let r = labelled(ResourceKind::Network, "id".into(), "n".into(), &full, None).unwrap();
        assert_eq!(
            (
                r.shard,
                r.pid,
                r.pid_start,
                r.host.as_deref(),
                r.expires,
                r.lease
            ),
            (
                Some(3),
                Some(4242),
                Some(99),
                Some("box"),
                Some(1700000000),
                false
            )
        );

        let odd = HashMap::from([
            (labels::RUN.to_owned(), "r1".to_owned()),
            (labels::PID.to_owned(), "-1".to_owned()),
            (labels::EXPIRES.to_owned(), "soon".to_owned()),
            (labels::LEASE.to_owned(), "1".to_owned()),
        ]);
        let r = labelled(ResourceKind::Volume, "v".into(), "v".into(), &odd, None).unwrap();
        assert_eq!((r.pid, r.expires, r.lease), (None, None, true));

        let foreign = HashMap::from([("other".to_owned(), "x".to_owned())]);
        assert_eq!(
            labelled(ResourceKind::Volume, "v".into(), "v".into(), &foreign, None),
            None
        );
    }
}
