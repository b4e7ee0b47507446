//! With `[kubernetes] prepull`: once per run, a DaemonSet in a namespace of
//! its own pulls every image on every node before shards start. An image
//! that can never be pulled fails the run; a pull that can still succeed
//! (throttled, timed out) is waited for; anything else only warns, and the
//! shards pull what is missing themselves.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use kube::api::ListParams;
use kube::Api;
use tokio::time::{sleep, Instant};

use super::backend::{within, Shared};
use super::client::ApiCall;
use super::provision::{copy_pull_secrets, create_in, create_namespace};
use super::readiness::pull::{self, Pull};
use super::readiness::{self, Context, PodState};
use super::render::{render_prepull, PrepullObjects, RenderContext, PREPULL_LABEL, PREPULL_NAME};
use crate::{EnvError, EnvEvent, RunContext};

/// Between looks at the prepull DaemonSet.
const PREPULL_POLL: Duration = Duration::from_millis(250);

/// The prepull namespace and DaemonSet, waited for until every node holds
/// every image (bounded by the largest startup timeout), then deleted,
/// whatever happened.
pub(crate) async fn prepull(shared: &Shared, run: &RunContext) -> Result<(), EnvError> {
    let ctx = RenderContext::current(&shared.config);
    let Some(objects) = render_prepull(&shared.config, run, &ctx) else {
        return Ok(());
    };
    let ns = objects.namespace.metadata.name.clone().unwrap_or_default();
    let uid = create_namespace(shared, &objects.namespace).await?;
    let outcome = pull_everywhere(shared, &ns, &objects).await;
    let removed = shared.delete_namespace(&ns, &uid, None).await;
    outcome.and(removed)
}

async fn pull_everywhere(
    shared: &Shared,
    ns: &str,
    objects: &PrepullObjects,
) -> Result<(), EnvError> {
    let labels = objects
        .daemon_set
        .metadata
        .labels
        .clone()
        .unwrap_or_default();
    copy_pull_secrets(shared, ns, &labels, None).await?;
    create_in(shared, ns, &objects.daemon_set, "daemonsets").await?;
    let budget = shared
        .config
        .services
        .iter()
        .map(|s| s.startup_timeout)
        .max()
        .unwrap_or_default();
    let deadline = Instant::now() + budget;
    let sets: Api<DaemonSet> = Api::namespaced(shared.cluster.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(shared.cluster.client.clone(), ns);
    let selector = ListParams::default().labels(&format!("{PREPULL_LABEL}=true"));
    loop {
        let ds = shared
            .bounded(
                sets.get(PREPULL_NAME),
                ApiCall::namespaced("get", "daemonsets", ns),
            )
            .await?;
        let listed = shared
            .bounded(
                pods.list(&selector),
                ApiCall::namespaced("list", "pods", ns),
            )
            .await?;
        for pod in &listed.items {
            if let Some(failure) = pull_failure(shared, ns, pod).await {
                return Err(failure);
            }
            if let PodState::Failed(why) = readiness::judge(pod, Context::default()) {
                prepull_gave_up(shared, &format!("a prepull pod cannot finish: {why}"));
                return Ok(());
            }
        }
        if prepulled(&ds) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let status = ds.status.unwrap_or_default();
            let why = format!(
                "{} of {} nodes were done after {}",
                status.number_ready,
                status.desired_number_scheduled,
                humantime::format_duration(budget)
            );
            prepull_gave_up(shared, &why);
            return Ok(());
        }
        sleep(PREPULL_POLL).await;
    }
}

/// Every node the DaemonSet is for runs its ready pod (every image pulled).
fn prepulled(ds: &DaemonSet) -> bool {
    let Some(status) = &ds.status else {
        return false;
    };
    let observed = status.observed_generation.unwrap_or(0) >= ds.metadata.generation.unwrap_or(1);
    observed && status.number_ready >= status.desired_number_scheduled
}

/// An image that can never be pulled, as [`EnvError::Pull`]: the run cannot
/// go on. Pulls that can still succeed are left to the kubelet's retries.
async fn pull_failure(shared: &Shared, ns: &str, pod: &Pod) -> Option<EnvError> {
    let status = pod.status.as_ref()?;
    // Owned: the loop awaits, and borrowed iterators across it are not Send.
    let statuses: Vec<ContainerStatus> = status
        .init_container_statuses
        .iter()
        .chain(status.container_statuses.iter())
        .flatten()
        .cloned()
        .collect();
    let mut event: Option<Option<String>> = None;
    for c in statuses {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or("");
        let message = waiting.message.as_deref().unwrap_or("");
        let verdict = match pull::judge(reason, message) {
            None => continue,
            Some(Pull::Unknown) => {
                if event.is_none() {
                    event = Some(pull_event(shared, ns, pod).await);
                }
                pull::classify(event.clone().flatten().as_deref().unwrap_or(""))
            }
            Some(verdict) => verdict,
        };
        let Pull::Hopeless(why) = verdict else {
            continue;
        };
        if event.is_none() {
            event = Some(pull_event(shared, ns, pod).await);
        }
        // Init containers are pull-1, pull-2, ... in the order of the images.
        let configured = c
            .name
            .strip_prefix("pull-")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| shared.config.images().get(n.wrapping_sub(1)).copied());
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("a node");
        let said = match event.clone().flatten() {
            Some(event) => format!("{event}; "),
            None => String::new(),
        };
        return Some(EnvError::Pull {
            image: configured.map_or_else(|| c.image.clone(), |i| i.original().to_owned()),
            registry: configured
                .map_or("its registry", |i| i.registry())
                .to_owned(),
            reason: format!(
                "{why}: {said}{reason} on {node}: {} (prepull, namespace {ns})",
                if message.is_empty() {
                    "no message"
                } else {
                    message
                },
            ),
        });
    }
    None
}

/// The kubelet's latest `Failed to pull image` event about the pod (a
/// back-off's status message may not say why).
async fn pull_event(shared: &Shared, ns: &str, pod: &Pod) -> Option<String> {
    let events: Api<Event> = Api::namespaced(shared.cluster.client.clone(), ns);
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
    within(events.list(&params)).await.ok().and_then(|list| {
        list.items
            .into_iter()
            .filter_map(|e| e.message)
            .rfind(|m| m.starts_with("Failed to pull image"))
    })
}

/// Prepull stops early without failing the run: each shard's pods still
/// pull what they need, within their own startup timeouts.
fn prepull_gave_up(shared: &Shared, why: &str) {
    let _ = shared.events.send(EnvEvent::Warning {
        shard: None,
        message: format!(
            "prepull stopped: {why}; each shard pulls what is missing itself (set [kubernetes] prepull = false to skip it)"
        ),
    });
}
