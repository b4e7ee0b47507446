//! Container and pod statuses as the kubelet writes them: waiting,
//! running and terminated states, and the conditions it derives.

use serde_json::{json, Value};

use super::Container;
use crate::store::now;

/// `Reason` of an image reference the kubelet cannot parse, as it words it.
pub(super) fn invalid_image(image: &str) -> Option<String> {
    let repository = image.split(['@']).next().unwrap_or(image);
    let repository = match repository.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => repository,
    };
    let bad = image.is_empty()
        || repository
            .chars()
            .any(|c| c.is_ascii_uppercase() || c == ' ');
    bad.then(|| {
        format!(
            "Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": invalid reference format: repository name must be lowercase"
        )
    })
}

fn base_status(c: &Container) -> Value {
    json!({
        "name": c.name,
        "image": c.image,
        "imageID": "",
        "ready": false,
        "restartCount": 0,
        "started": false,
    })
}

pub(super) fn waiting(c: &Container, reason: &str, message: Option<&str>) -> Value {
    let mut status = base_status(c);
    status["restartCount"] = c.status["restartCount"].clone();
    if status["restartCount"].is_null() {
        status["restartCount"] = json!(0);
    }
    let mut waiting = json!({"reason": reason});
    if let Some(message) = message {
        waiting["message"] = json!(message);
    }
    status["state"] = json!({"waiting": waiting});
    status
}

pub(super) fn running(c: &Container, started: &str, ready: bool) -> Value {
    let mut status = base_status(c);
    status["imageID"] = json!(image_id(&c.image));
    status["containerID"] = json!(container_id(&c.name));
    status["ready"] = json!(ready);
    status["started"] = json!(true);
    status["state"] = json!({"running": {"startedAt": started}});
    status
}

pub(super) fn terminated(
    c: &Container,
    code: i32,
    reason: &str,
    started: &str,
    finished: Option<&str>,
) -> Value {
    let mut status = base_status(c);
    status["imageID"] = json!(image_id(&c.image));
    status["containerID"] = json!(container_id(&c.name));
    status["state"] = json!({"terminated": {
        "exitCode": code,
        "reason": reason,
        "startedAt": started,
        "finishedAt": finished.map_or_else(now, str::to_owned),
        "containerID": container_id(&c.name),
    }});
    status
}

fn image_id(image: &str) -> String {
    format!("docker.io/library/{image}@sha256:{:064x}", image.len())
}

fn container_id(name: &str) -> String {
    format!("containerd://{:064x}", name.len() as u64 * 7919)
}

/// The pod's status: phase, the conditions the kubelet derives from its
/// containers, and each container's status.
pub(super) fn pod_status(
    init: &[Container],
    main: &[Container],
    phase: &str,
    start_time: &str,
) -> Value {
    let initialized = init
        .iter()
        .all(|c| !c.status["state"]["terminated"].is_null());
    let not_ready: Vec<&str> = main
        .iter()
        .filter(|c| c.status["ready"] != true)
        .map(|c| c.name.as_str())
        .collect();
    let at = now();
    let condition = |type_: &str, ok: bool, reason: Option<String>, message: Option<String>| {
        let mut c = json!({"type": type_, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": at});
        if let (false, Some(reason)) = (ok, reason) {
            c["reason"] = json!(reason);
        }
        if let (false, Some(message)) = (ok, message) {
            c["message"] = json!(message);
        }
        c
    };
    let unready = format!("containers with unready status: [{}]", not_ready.join(" "));
    let mut conditions = vec![
        condition("PodReadyToStartContainers", true, None, None),
        condition(
            "Initialized",
            initialized,
            Some("ContainersNotInitialized".into()),
            Some("containers with incomplete status: [init]".into()),
        ),
        condition(
            "Ready",
            not_ready.is_empty(),
            Some("ContainersNotReady".into()),
            Some(unready.clone()),
        ),
        condition(
            "ContainersReady",
            not_ready.is_empty(),
            Some("ContainersNotReady".into()),
            Some(unready),
        ),
        condition("PodScheduled", true, None, None),
    ];
    if phase == "Failed" || phase == "Succeeded" {
        conditions[2]["reason"] = json!("PodCompleted");
    }
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": "10.0.0.11",
        "hostIPs": [{"ip": "10.0.0.11"}],
        "podIP": "10.244.0.17",
        "podIPs": [{"ip": "10.244.0.17"}],
        "startTime": start_time,
        "qosClass": "Burstable",
        "containerStatuses": main.iter().map(|c| c.status.clone()).collect::<Vec<_>>(),
    });
    if !init.is_empty() {
        status["initContainerStatuses"] =
            json!(init.iter().map(|c| c.status.clone()).collect::<Vec<_>>());
    }
    status
}
