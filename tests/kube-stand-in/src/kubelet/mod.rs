//! What a cluster's scheduler, kubelet and DaemonSet controller would do to
//! the pods the API creates, when a [`Lifecycle`] is set: scheduling (or
//! not), image pulls that fail, containers that start, log, pass their
//! readiness probe, exit or crash-loop, and the events each step records,
//! all in the shapes the real components write. Without a lifecycle, pods
//! stay as created (Pending) and tests drive them by hand.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::resources::{self, Resource};
use crate::store::{now, State};
use crate::{Fate, Lifecycle, Shared};

/// The node every pod is scheduled onto (DaemonSet pods: `node-1`, `node-2`...).
const NODE: &str = "node-1";

/// How long `ErrImagePull` shows before `ImagePullBackOff`, as the kubelet's
/// first back-off would.
const PULL_BACKOFF: Duration = Duration::from_millis(50);

fn pods() -> &'static Resource {
    resources::by_plural("pods").expect("pods are served")
}

fn daemonsets() -> &'static Resource {
    resources::by_plural("daemonsets").expect("daemonsets are served")
}

/// A pod was created through the API: run it by the lifecycle, if any.
pub fn pod_created(shared: &Arc<Shared>, ns: &str, pod: &Value) {
    let Some(lifecycle) = shared.read(|s| s.lifecycle.clone()) else {
        return;
    };
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    let kubelet = Kubelet {
        shared: shared.clone(),
        ns: ns.to_owned(),
        name,
        uid,
        lifecycle,
    };
    tokio::spawn(kubelet.run());
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
            .filter_map(|node| {
                let pod = daemon_pod(ds, node);
                s.create(pods(), Some(ns), pod).ok()
            })
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

/// One container as the kubelet reports it.
#[derive(Clone)]
struct Container {
    name: String,
    image: String,
    probe: bool,
    fate: Fate,
    status: Value,
}

/// Runs one pod through its lifecycle, writing each step into its status.
struct Kubelet {
    shared: Arc<Shared>,
    ns: String,
    name: String,
    uid: String,
    lifecycle: Lifecycle,
}

impl Kubelet {
    async fn run(self) {
        let Some(pod) = self.current() else { return };
        let restart_always = pod["spec"]["restartPolicy"].as_str() != Some("Never");
        let mut init = self.containers(&pod["spec"]["initContainers"]);
        let mut main = self.containers(&pod["spec"]["containers"]);
        if let Some(message) = init.iter().chain(&main).find_map(|c| match &c.fate {
            Fate::Unschedulable { message } => Some(message.clone()),
            _ => None,
        }) {
            return self.unschedulable(&message);
        }
        let node = pod["spec"]["nodeName"].as_str().unwrap_or(NODE).to_owned();
        for c in init.iter_mut().chain(main.iter_mut()) {
            c.status = waiting(c, "ContainerCreating", None);
        }
        if !init.is_empty() {
            for c in &mut main {
                c.status = waiting(c, "PodInitializing", None);
            }
        }
        self.event(
            "Normal",
            "Scheduled",
            &format!("Successfully assigned {}/{} to {node}", self.ns, self.name),
            "default-scheduler",
        );
        if !self.write(&node, &init, &main, "Pending") {
            return;
        }
        if let Some(problem) = self.config_problem(&pod) {
            let target = main.first_mut().expect("a pod has a container");
            target.status = waiting(target, "CreateContainerConfigError", Some(&problem));
            self.event("Warning", "Failed", &format!("Error: {problem}"), "kubelet");
            self.write(&node, &init, &main, "Pending");
            return;
        }
        tokio::time::sleep(self.lifecycle.start_after).await;
        for i in 0..init.len() {
            if !self.pull(&node, &init, &main, i, true).await {
                return;
            }
            match init[i].fate.clone() {
                Fate::Exit { code, log } if code != 0 => {
                    self.append_log(&log);
                    self.exited(&node, &mut init, &mut main, i, code, restart_always, true);
                    return;
                }
                _ => {
                    let started = now();
                    init[i].status = terminated(&init[i], 0, "Completed", &started, None);
                    if !self.write(&node, &init, &main, "Pending") {
                        return;
                    }
                }
            }
        }
        for i in 0..main.len() {
            if !self.pull(&node, &init, &main, i, false).await {
                return;
            }
        }
        let started = now();
        for c in &mut main {
            // Without a readiness probe a running container is ready.
            c.status = running(c, &started, !c.probe);
            self.event(
                "Normal",
                "Created",
                &format!("Created container: {}", c.name),
                "kubelet",
            );
            self.event(
                "Normal",
                "Started",
                &format!("Started container {}", c.name),
                "kubelet",
            );
        }
        for c in &main {
            if let Fate::Run { log } | Fate::NeverReady { log } | Fate::Exit { log, .. } = &c.fate {
                self.append_log(log);
            }
        }
        if !self.write(&node, &init, &main, "Running") {
            return;
        }
        self.settle(&node, &mut init, &mut main, restart_always)
            .await;
    }

    /// After the start: readiness after `ready_after`, or the exit.
    async fn settle(
        &self,
        node: &str,
        init: &mut [Container],
        main: &mut [Container],
        restart_always: bool,
    ) {
        let exit = main
            .iter()
            .position(|c| matches!(c.fate, Fate::Exit { .. }));
        if let Some(i) = exit {
            tokio::time::sleep(self.lifecycle.start_after.max(Duration::from_millis(10))).await;
            let Fate::Exit { code, .. } = main[i].fate else {
                unreachable!("matched above")
            };
            self.exited(node, init, main, i, code, restart_always, false);
            return;
        }
        if !main
            .iter()
            .any(|c| c.probe && matches!(c.fate, Fate::Run { .. }))
        {
            return;
        }
        tokio::time::sleep(self.lifecycle.ready_after).await;
        for c in main.iter_mut() {
            if matches!(c.fate, Fate::Run { .. }) {
                c.status["ready"] = json!(true);
            }
        }
        self.write(node, init, main, "Running");
    }

    /// Pulls container `i`'s image; false when the pull failed (the pod
    /// then stays Pending in ImagePullBackOff) or the pod is gone.
    async fn pull(
        &self,
        node: &str,
        init: &[Container],
        main: &[Container],
        i: usize,
        is_init: bool,
    ) -> bool {
        let mut init = init.to_vec();
        let mut main = main.to_vec();
        let list = if is_init { &mut init } else { &mut main };
        let c = list[i].clone();
        if let Some(reason) = invalid_image(&c.image) {
            list[i].status = waiting(&c, "InvalidImageName", Some(&reason));
            self.event("Warning", "InspectFailed", &reason, "kubelet");
            self.event("Warning", "Failed", "Error: InvalidImageName", "kubelet");
            self.write(node, &init, &main, "Pending");
            return false;
        }
        let Fate::PullFails { message } = &c.fate else {
            self.event(
                "Normal",
                "Pulled",
                &format!("Container image \"{}\" already present on machine", c.image),
                "kubelet",
            );
            return true;
        };
        let failed = format!("Failed to pull image \"{}\": {message}", c.image);
        self.event(
            "Normal",
            "Pulling",
            &format!("Pulling image \"{}\"", c.image),
            "kubelet",
        );
        self.event("Warning", "Failed", &failed, "kubelet");
        self.event("Warning", "Failed", "Error: ErrImagePull", "kubelet");
        list[i].status = waiting(&c, "ErrImagePull", Some(&failed));
        if !self.write(node, &init, &main, "Pending") {
            return false;
        }
        tokio::time::sleep(PULL_BACKOFF).await;
        let list = if is_init { &mut init } else { &mut main };
        let backoff = format!("Back-off pulling image \"{}\"", c.image);
        list[i].status = waiting(&c, "ImagePullBackOff", Some(&backoff));
        self.event("Normal", "BackOff", &backoff, "kubelet");
        self.event("Warning", "Failed", "Error: ImagePullBackOff", "kubelet");
        self.write(node, &init, &main, "Pending");
        false
    }

    /// Container `i` exited with `code`: terminated for `restartPolicy:
    /// Never`, else CrashLoopBackOff with the exit as its last state.
    #[allow(clippy::too_many_arguments)]
    fn exited(
        &self,
        node: &str,
        init: &mut [Container],
        main: &mut [Container],
        i: usize,
        code: i32,
        restart_always: bool,
        is_init: bool,
    ) {
        let list: &mut [Container] = if is_init { &mut *init } else { &mut *main };
        let c = list[i].clone();
        let started = c.status["state"]["running"]["startedAt"]
            .as_str()
            .map_or_else(now, str::to_owned);
        let reason = if code == 0 { "Completed" } else { "Error" };
        let last = terminated(&c, code, reason, &started, None);
        let phase = if restart_always {
            let message = format!(
                "back-off 10s restarting failed container={} pod={}_{}({})",
                c.name, self.name, self.ns, self.uid
            );
            let mut status = waiting(&c, "CrashLoopBackOff", Some(&message));
            status["lastState"] = last["state"].clone();
            status["restartCount"] = json!(1);
            list[i].status = status;
            self.event(
                "Warning",
                "BackOff",
                &format!(
                    "Back-off restarting failed container {} in pod {}_{}({})",
                    c.name, self.name, self.ns, self.uid
                ),
                "kubelet",
            );
            if is_init {
                "Pending"
            } else {
                "Running"
            }
        } else {
            list[i].status = last;
            if code == 0 && !is_init {
                "Succeeded"
            } else {
                "Failed"
            }
        };
        self.write(node, init, main, phase);
    }

    fn unschedulable(&self, message: &str) {
        self.event("Warning", "FailedScheduling", message, "default-scheduler");
        let status = json!({
            "phase": "Pending",
            "conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastProbeTime": null,
                "lastTransitionTime": now(),
            }],
            "qosClass": "Burstable",
        });
        self.update(|p| p["status"] = status);
    }

    /// `CreateContainerConfigError`'s message when an env var names a
    /// Secret or key that does not exist.
    fn config_problem(&self, pod: &Value) -> Option<String> {
        let secrets = resources::by_plural("secrets").expect("secrets are served");
        let refs = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["env"].as_array().into_iter().flatten())
            .filter_map(|e| e["valueFrom"]["secretKeyRef"].as_object());
        for r in refs {
            let name = r.get("name").and_then(Value::as_str).unwrap_or("");
            let key = r.get("key").and_then(Value::as_str).unwrap_or("");
            let found = self
                .shared
                .read(|s| s.get(secrets, Some(&self.ns), name).ok());
            match found {
                None => return Some(format!("secret \"{name}\" not found")),
                Some(secret) if secret["data"][key].is_null() => {
                    return Some(format!(
                        "couldn't find key {key} in Secret {}/{name}",
                        self.ns
                    ))
                }
                Some(_) => {}
            }
        }
        None
    }

    fn containers(&self, list: &Value) -> Vec<Container> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let image = c["image"].as_str().unwrap_or("").to_owned();
                Container {
                    name: c["name"].as_str().unwrap_or("").to_owned(),
                    fate: self.lifecycle.fate_of(&image),
                    image,
                    probe: !c["readinessProbe"].is_null(),
                    status: Value::Null,
                }
            })
            .collect()
    }

    /// The pod, if it is still the one this kubelet runs.
    fn current(&self) -> Option<Value> {
        let pod = self
            .shared
            .read(|s| s.get(pods(), Some(&self.ns), &self.name).ok())?;
        (pod["metadata"]["uid"] == self.uid.as_str()).then_some(pod)
    }

    /// Writes the whole status; false when the pod is gone.
    fn write(&self, node: &str, init: &[Container], main: &[Container], phase: &str) -> bool {
        let status = pod_status(init, main, phase, &self.start_time());
        let node = node.to_owned();
        self.update(move |p| {
            p["spec"]["nodeName"] = json!(node);
            p["status"] = status;
        })
    }

    fn start_time(&self) -> String {
        self.current()
            .and_then(|p| p["status"]["startTime"].as_str().map(str::to_owned))
            .unwrap_or_else(now)
    }

    fn update(&self, change: impl FnOnce(&mut Value)) -> bool {
        let (ns, name, uid) = (&self.ns, &self.name, &self.uid);
        self.shared.write(|s| {
            let same = s
                .get(pods(), Some(ns), name)
                .is_ok_and(|p| p["metadata"]["uid"] == uid.as_str());
            if !same {
                return false;
            }
            let updated = s.update(pods(), Some(ns), name, change);
            let owner = updated
                .as_ref()
                .and_then(|p| p["metadata"]["ownerReferences"][0]["name"].as_str())
                .map(str::to_owned);
            if let Some(owner) = owner {
                refresh_daemon_set(s, ns, &owner);
            }
            s.recount_quota(ns);
            updated.is_some()
        })
    }

    fn append_log(&self, lines: &[String]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        if !text.is_empty() {
            self.shared
                .write(|s| s.append_log(&self.ns, &self.name, &text));
        }
    }

    /// Records an event about the pod, as its component would.
    fn event(&self, type_: &str, reason: &str, message: &str, component: &str) {
        let (ns, name, uid) = (&self.ns, &self.name, &self.uid);
        self.shared.write(|s| {
            s.record_event(
                ns,
                json!({"kind": "Pod", "namespace": ns, "name": name, "uid": uid, "apiVersion": "v1"}),
                type_,
                reason,
                message,
                component,
            )
        });
    }
}

/// `Reason` of an image reference the kubelet cannot parse, as it words it.
fn invalid_image(image: &str) -> Option<String> {
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

fn waiting(c: &Container, reason: &str, message: Option<&str>) -> Value {
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

fn running(c: &Container, started: &str, ready: bool) -> Value {
    let mut status = base_status(c);
    status["imageID"] = json!(image_id(&c.image));
    status["containerID"] = json!(container_id(&c.name));
    status["ready"] = json!(ready);
    status["started"] = json!(true);
    status["state"] = json!({"running": {"startedAt": started}});
    status
}

fn terminated(
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
fn pod_status(init: &[Container], main: &[Container], phase: &str, start_time: &str) -> Value {
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

impl Lifecycle {
    /// The fate of a container running `image`: the first rule whose text
    /// the image contains, else [`Fate::Run`] without log lines.
    pub fn fate_of(&self, image: &str) -> Fate {
        self.rules
            .iter()
            .find(|(text, _)| image.contains(text.as_str()))
            .map_or(Fate::Run { log: Vec::new() }, |(_, fate)| fate.clone())
    }
}
