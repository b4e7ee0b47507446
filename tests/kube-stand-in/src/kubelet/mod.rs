//! What a cluster's scheduler, kubelet and DaemonSet controller would do to
//! the pods the API creates, when a [`Lifecycle`] is set: scheduling (or
//! not yet, or never), image pulls that fail (for good, or a few times
//! before they succeed), containers that start, log, pass their readiness
//! probe, exit or crash-loop, and the events each step records, all in the
//! shapes the real components write. Without a lifecycle, pods stay as
//! created (Pending) and tests drive them by hand.

mod daemonset;
mod status;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::resources::{self, Resource};
use crate::store::now;
use crate::{Fate, Lifecycle, Shared};

pub use daemonset::{daemon_set_created, refresh_daemon_set};
use status::{invalid_image, pod_status, running, terminated, waiting};

/// The node every pod is scheduled onto (DaemonSet pods: `node-1`, `node-2`...).
const NODE: &str = "node-1";

/// How long `ErrImagePull` shows before `ImagePullBackOff`, as the kubelet's
/// first back-off would.
const PULL_BACKOFF: Duration = Duration::from_millis(50);

fn pods() -> &'static Resource {
    resources::by_plural("pods").expect("pods are served")
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
        if !self.schedule(&init, &main).await {
            return;
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
        if let Some((i, problem)) = self.config_problem(&pod, &main) {
            main[i].status = waiting(&main[i], "CreateContainerConfigError", Some(&problem));
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
            if let Fate::Run { log }
            | Fate::NeverReady { log }
            | Fate::Exit { log, .. }
            | Fate::PullFailsThen { log, .. } = &c.fate
            {
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
        if !main.iter().any(|c| c.probe && c.fate.becomes_ready()) {
            return;
        }
        tokio::time::sleep(self.lifecycle.ready_after).await;
        for c in main.iter_mut() {
            if c.fate.becomes_ready() {
                c.status["ready"] = json!(true);
            }
        }
        self.write(node, init, main, "Running");
    }

    /// Pulls container `i`'s image; false when the pull failed for good
    /// (the pod then stays Pending in ImagePullBackOff) or the pod is gone.
    /// A pull that fails a few times backs off between tries, as the
    /// kubelet does, and then succeeds.
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
        let (message, failures) = match &c.fate {
            Fate::PullFails { message } => (message.clone(), u32::MAX),
            Fate::PullFailsThen {
                message, failures, ..
            } => (message.clone(), *failures),
            _ => {
                self.event(
                    "Normal",
                    "Pulled",
                    &format!("Container image \"{}\" already present on machine", c.image),
                    "kubelet",
                );
                return true;
            }
        };
        let mut failed = 0;
        loop {
            self.event(
                "Normal",
                "Pulling",
                &format!("Pulling image \"{}\"", c.image),
                "kubelet",
            );
            if failed == failures {
                self.event(
                    "Normal",
                    "Pulled",
                    &format!(
                        "Successfully pulled image \"{}\" in 812ms (812ms including waiting). Image size: 45127783 bytes.",
                        c.image
                    ),
                    "kubelet",
                );
                return true;
            }
            failed += 1;
            // The kubelet's words: the event names the image, the status
            // carries the runtime's error, the back-off repeats it (1.32+).
            let event = format!("Failed to pull image \"{}\": {message}", c.image);
            self.event("Warning", "Failed", &event, "kubelet");
            self.event("Warning", "Failed", "Error: ErrImagePull", "kubelet");
            let list = if is_init { &mut init } else { &mut main };
            list[i].status = waiting(&c, "ErrImagePull", Some(&message));
            if !self.write(node, &init, &main, "Pending") {
                return false;
            }
            tokio::time::sleep(PULL_BACKOFF).await;
            let backoff = format!("Back-off pulling image \"{}\"", c.image);
            let list = if is_init { &mut init } else { &mut main };
            list[i].status = waiting(
                &c,
                "ImagePullBackOff",
                Some(&format!("{backoff}: ErrImagePull: {message}")),
            );
            self.event("Normal", "BackOff", &backoff, "kubelet");
            self.event("Warning", "Failed", "Error: ImagePullBackOff", "kubelet");
            if !self.write(node, &init, &main, "Pending") || failures == u32::MAX {
                return false;
            }
            tokio::time::sleep(PULL_BACKOFF).await;
        }
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

    /// Schedules the pod: at once, after an Unschedulable spell (as when a
    /// cluster autoscaler adds a node), or never; false when it stays
    /// unscheduled or is gone.
    async fn schedule(&self, init: &[Container], main: &[Container]) -> bool {
        let spell = init.iter().chain(main).find_map(|c| match &c.fate {
            Fate::Unschedulable { message } => Some((message.clone(), None)),
            Fate::UnschedulableFor { message, duration } => {
                Some((message.clone(), Some(*duration)))
            }
            _ => None,
        });
        let Some((message, duration)) = spell else {
            return true;
        };
        self.event("Warning", "FailedScheduling", &message, "default-scheduler");
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
        if !self.update(|p| p["status"] = status) {
            return false;
        }
        let Some(duration) = duration else {
            return false;
        };
        tokio::time::sleep(duration).await;
        self.event(
            "Normal",
            "TriggeredScaleUp",
            "pod triggered scale-up: [{node-group-1 1->2 (max: 5)}]",
            "cluster-autoscaler",
        );
        self.current().is_some()
    }

    /// The first main container the kubelet cannot create, and its
    /// `CreateContainerConfigError` message: an env var naming a Secret or
    /// key that does not exist, or `runAsNonRoot` with an image that would
    /// run as root.
    fn config_problem(&self, pod: &Value, main: &[Container]) -> Option<(usize, String)> {
        let secrets = resources::by_plural("secrets").expect("secrets are served");
        let specs = pod["spec"]["containers"].as_array()?;
        for (i, c) in specs.iter().enumerate() {
            let refs = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["valueFrom"]["secretKeyRef"].as_object());
            for r in refs {
                let name = r.get("name").and_then(Value::as_str).unwrap_or("");
                let key = r.get("key").and_then(Value::as_str).unwrap_or("");
                let found = self
                    .shared
                    .read(|s| s.get(secrets, Some(&self.ns), name).ok());
                match found {
                    None => return Some((i, format!("secret \"{name}\" not found"))),
                    Some(secret) if secret["data"][key].is_null() => {
                        return Some((
                            i,
                            format!("couldn't find key {key} in Secret {}/{name}", self.ns),
                        ))
                    }
                    Some(_) => {}
                }
            }
            let context = |field: &str| {
                let own = &c["securityContext"][field];
                if own.is_null() {
                    pod["spec"]["securityContext"][field].clone()
                } else {
                    own.clone()
                }
            };
            let image_user = main.get(i).map_or(0, |m| self.lifecycle.user_of(&m.image));
            let user = context("runAsUser").as_i64().unwrap_or(image_user);
            if context("runAsNonRoot") == true && user == 0 {
                return Some((
                    i,
                    format!(
                        "container has runAsNonRoot and image will run as root (pod: \"{}_{}({})\", container: {})",
                        self.name,
                        self.ns,
                        self.uid,
                        c["name"].as_str().unwrap_or("")
                    ),
                ));
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

impl Fate {
    /// Whether a running container of this fate passes its readiness probe.
    fn becomes_ready(&self) -> bool {
        matches!(
            self,
            Fate::Run { .. } | Fate::PullFailsThen { .. } | Fate::UnschedulableFor { .. }
        )
    }
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

    /// The user id `image` runs as (its USER): the first [`Lifecycle::user`]
    /// rule whose text the image contains, else 0 (root, like most images).
    pub fn user_of(&self, image: &str) -> i64 {
        self.users
            .iter()
            .find(|(text, _)| image.contains(text.as_str()))
            .map_or(0, |(_, uid)| *uid)
    }
}
