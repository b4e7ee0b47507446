//! The DaemonSet controller: a pod per node of every DaemonSet created
//! through the API (each through admission, a refusal recorded as the
//! controller's `FailedCreate` event), and a status that counts the ready ones.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{pod_created, pods};
use crate::resources::{self, Resource};
use crate::store::State;
use crate::Shared;

fn daemonsets() -> &'static Resource {
    resources::by_plural("daemonsets").expect("daemonsets are served")
}

/// A DaemonSet was created through the API: one pod per node, as the
/// controller makes them, when a lifecycle is set.
pub fn daemon_set_created(shared: &Arc<Shared>, ns: &str, ds: &Value) {
    let Some(lifecycle) = shared.read(|s| s.lifecycle.clone()) else {
        return;
    };
    let name = ds["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let created: Vec<Value> = shared.write(|s| {
        (1..=lifecycle.nodes)
            .filter_map(
                |node| match s.create(pods(), Some(ns), daemon_pod(ds, node)) {
                    Ok(pod) => Some(pod),
                    Err(refused) => {
                        // The controller records admission's refusal on the DaemonSet.
                        s.record_event(
                            ns,
                            json!({"kind": "DaemonSet", "namespace": ns, "name": name,
                            "uid": ds["metadata"]["uid"], "apiVersion": "apps/v1"}),
                            "Warning",
                            "FailedCreate",
                            &format!("Error creating: {}", refused.message),
                            "daemonset-controller",
                        );
                        None
                    }
                },
            )
            .collect()
    });
    shared.write(|s| refresh_daemon_set(s, ns, &name));
    for pod in created {
        pod_created(shared, ns, &pod);
    }
}

/// A pod of the DaemonSet's template, bound to `node-<n>`.
fn daemon_pod(ds: &Value, node: u32) -> Value {
    let name = ds["metadata"]["name"].as_str().unwrap_or("ds");
    let template = &ds["spec"]["template"];
    let mut spec = template["spec"].clone();
    spec["nodeName"] = json!(format!("node-{node}"));
    json!({
        "metadata": {
            "generateName": format!("{name}-"),
            "labels": template["metadata"]["labels"].clone(),
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "name": name,
                "uid": ds["metadata"]["uid"].clone(),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
    })
}

/// The DaemonSet's status from its pods, as its controller counts them.
pub fn refresh_daemon_set(state: &mut State, ns: &str, name: &str) {
    let Ok(ds) = state.get(daemonsets(), Some(ns), name) else {
        return;
    };
    let uid = ds["metadata"]["uid"].clone();
    let owned: Vec<Value> = state
        .all(pods(), Some(ns))
        .into_iter()
        .filter(|p| p["metadata"]["ownerReferences"][0]["uid"] == uid)
        .collect();
    let desired = owned.len();
    let ready = owned.iter().filter(|p| is_ready(p)).count();
    let status = json!({
        "currentNumberScheduled": desired,
        "desiredNumberScheduled": desired,
        "numberMisscheduled": 0,
        "numberReady": ready,
        "numberAvailable": ready,
        "numberUnavailable": desired - ready,
        "updatedNumberScheduled": desired,
        "observedGeneration": ds["metadata"]["generation"].clone(),
    });
    if ds["status"] != status {
        state.update(daemonsets(), Some(ns), name, |d| d["status"] = status);
    }
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}
