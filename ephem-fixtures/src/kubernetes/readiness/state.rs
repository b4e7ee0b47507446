//! What a pod's status says about its service: it runs (and is ready or
//! not), it waits for something that can still come (a node, a pull that
//! was throttled, a kubelet that lags), or it can never become ready (an
//! image that does not exist, a configuration error, an exit, more crashes
//! than `restarts` allows). A pure reading of the status, tested on the
//! kubelet's real words.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodCondition};

use super::pull::{self, Pull};

/// What a pod's status says about its service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PodState {
    /// It can never become ready: why, in one line.
    Failed(String),
    /// Not running yet: what it waits for.
    Pending(String),
    /// The container runs; `ready` when the pod's Ready condition holds.
    Running { ready: bool },
}

/// What [`judge`] needs beside the pod.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Context<'a> {
    /// How often the container may crash before it is ready.
    pub restarts: u32,
    /// The kubelet's latest `Failed to pull image` event, for a back-off
    /// whose status does not say why (before Kubernetes 1.32).
    pub pull_event: Option<&'a str>,
    /// The service's name, for hints that name its keys.
    pub service: &'a str,
}

/// The pod's state for readiness: failures first, then whether it runs.
pub(crate) fn judge(pod: &Pod, ctx: Context<'_>) -> PodState {
    let Some(status) = &pod.status else {
        return PodState::Pending("the pod is not scheduled yet".to_owned());
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let inits = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    let mains = status.container_statuses.as_deref().unwrap_or_default();
    let mut waiting = None;
    for (kind, c) in inits
        .iter()
        .map(|c| ("init container", c))
        .chain(mains.iter().map(|c| ("container", c)))
    {
        match container(kind, c, ctx) {
            Some(PodState::Failed(why)) => return PodState::Failed(why),
            Some(pending) => waiting = waiting.or(Some(pending)),
            None => {}
        }
    }
    if matches!(phase, "Failed" | "Succeeded") {
        let why = [status.reason.as_deref(), status.message.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        return PodState::Failed(if why.is_empty() {
            format!("the pod is {phase}")
        } else {
            format!("the pod is {phase} ({why})")
        });
    }
    if let Some(why) = unschedulable(pod) {
        // A cluster autoscaler adds a node within minutes: wait.
        return PodState::Pending(why);
    }
    if mains.iter().any(is_running) {
        return PodState::Running {
            ready: condition(pod, "Ready"),
        };
    }
    waiting.unwrap_or_else(|| PodState::Pending(format!("the pod is {phase}")))
}

/// One container: why it can never run, or what it waits for (None:
/// nothing worth saying).
fn container(kind: &str, c: &ContainerStatus, ctx: Context<'_>) -> Option<PodState> {
    let state = c.state.as_ref()?;
    if let Some(waiting) = &state.waiting {
        let reason = waiting.reason.as_deref().unwrap_or("");
        let message = waiting.message.as_deref().unwrap_or("");
        if let Some(verdict) = pull::judge(reason, message) {
            return Some(pulling(kind, c, reason, message, verdict, ctx));
        }
        return Some(waiting_for(kind, c, reason, message, ctx));
    }
    let terminated = state.terminated.as_ref()?;
    if kind == "init container" && terminated.exit_code == 0 {
        return None;
    }
    // Under `restartPolicy: Always` an exit within `restarts` is restarted.
    if c.restart_count < allowed(ctx) {
        return Some(PodState::Pending(format!(
            "{kind} {} exited with code {} and restarts ({} of {} restarts allowed)",
            c.name, terminated.exit_code, c.restart_count, ctx.restarts
        )));
    }
    let mut why = format!(
        "{kind} {} exited with code {}",
        c.name, terminated.exit_code
    );
    if let Some(reason) = terminated.reason.as_deref().filter(|r| *r != "Error") {
        why.push_str(&format!(" ({reason})"));
    }
    if let Some(message) = terminated.message.as_deref().filter(|m| !m.is_empty()) {
        why.push_str(&format!(": {message}"));
    }
    Some(PodState::Failed(why))
}

fn allowed(ctx: Context<'_>) -> i32 {
    i32::try_from(ctx.restarts).unwrap_or(i32::MAX)
}

/// A failed pull: hopeless, or waited for with what the kubelet said.
fn pulling(
    kind: &str,
    c: &ContainerStatus,
    reason: &str,
    message: &str,
    verdict: Pull,
    ctx: Context<'_>,
) -> PodState {
    let (verdict, said) = match (verdict, ctx.pull_event) {
        (Pull::Unknown, Some(event)) => (pull::classify(event), event),
        (Pull::Unknown, None) => (Pull::Unknown, ""),
        _ => (verdict, message),
    };
    match verdict {
        Pull::Hopeless(_) if reason == "InvalidImageName" => {
            PodState::Failed(format!("{kind} {} is in {reason}: {said}", c.name))
        }
        Pull::Hopeless(why) => PodState::Failed(format!(
            "{kind} {} cannot pull image \"{}\": {why} ({reason}: {said}); check the image's name and tag in ephem.toml, and [kubernetes] registry if the cluster pulls through a mirror",
            c.name, c.image
        )),
        Pull::Transient | Pull::Unknown if said.is_empty() => {
            PodState::Pending(format!("{kind} {} is in {reason}", c.name))
        }
        Pull::Transient | Pull::Unknown => PodState::Pending(format!(
            "{kind} {} is in {reason}, retried: {said}",
            c.name
        )),
    }
}

/// A waiting reason other than a pull's: hopeless ones fail, the rest wait.
fn waiting_for(
    kind: &str,
    c: &ContainerStatus,
    reason: &str,
    message: &str,
    ctx: Context<'_>,
) -> PodState {
    let mut why = format!("{kind} {} is in {reason}", c.name);
    let hopeless = match reason {
        "CrashLoopBackOff" => c.restart_count >= allowed(ctx),
        // The kubelet's caches lag behind a Secret just created: it retries.
        "CreateContainerConfigError" => {
            !(message.contains("failed to sync") || message.contains("timed out waiting"))
        }
        _ => false,
    };
    if reason == "CrashLoopBackOff" {
        if let Some(code) = last_exit(c) {
            why.push_str(&format!(" (it exited with code {code})"));
        }
        if ctx.restarts > 0 {
            why.push_str(&format!(
                " after {} restarts (restarts = {} allowed)",
                c.restart_count, ctx.restarts
            ));
        }
    }
    if !message.is_empty() {
        why.push_str(&format!(": {message}"));
    }
    if !hopeless {
        return PodState::Pending(why);
    }
    if message.contains("runAsNonRoot") {
        why.push_str(&format!(
            "; set [services.{}.kubernetes] run-as-user to the image's non-root user (999 for the official postgres and redis images), or choose [kubernetes] pod-security = \"baseline\"",
            ctx.service
        ));
    }
    PodState::Failed(why)
}

pub(super) fn last_exit(c: &ContainerStatus) -> Option<i32> {
    Some(c.last_state.as_ref()?.terminated.as_ref()?.exit_code)
}

fn is_running(c: &ContainerStatus) -> bool {
    c.state.as_ref().is_some_and(|s| s.running.is_some())
}

fn condition(pod: &Pod, type_: &str) -> bool {
    conditions(pod).any(|c| c.type_ == type_ && c.status == "True")
}

fn conditions(pod: &Pod) -> impl Iterator<Item = &PodCondition> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
}

/// `the pod is Unschedulable: 0/3 nodes are available: ...` while no node fits.
fn unschedulable(pod: &Pod) -> Option<String> {
    let c = conditions(pod).find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    })?;
    Some(format!(
        "the pod is Unschedulable: {}",
        c.message.as_deref().unwrap_or("no node fits it")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "db"}, "status": status})).unwrap()
    }

    fn waiting(reason: &str, message: &str, restarts: i32) -> Pod {
        pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "db", "image": "postgres:99", "imageID": "", "ready": false, "restartCount": restarts,
            "lastState": {"terminated": {"exitCode": 3}},
            "state": {"waiting": {"reason": reason, "message": message}}}]}))
    }

    fn ctx() -> Context<'static> {
        Context {
            service: "db",
            ..Context::default()
        }
    }

    fn failed(state: PodState) -> String {
        match state {
            PodState::Failed(why) => why,
            other => panic!("not failed: {other:?}"),
        }
    }

    #[test]
    fn pulls_that_cannot_succeed_fail_and_name_the_image() {
        let why = failed(judge(
            &waiting("ErrImagePull", "rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/postgres:99\": docker.io/library/postgres:99: not found", 0),
            ctx(),
        ));
        assert!(
            why.starts_with("container db cannot pull image \"postgres:99\": it does not exist (ErrImagePull: rpc error: code = NotFound"),
            "{why}"
        );
        // A back-off that does not say why: the kubelet's event does.
        let backoff = waiting(
            "ImagePullBackOff",
            "Back-off pulling image \"postgres:99\"",
            0,
        );
        assert_eq!(
            judge(&backoff, ctx()),
            PodState::Pending("container db is in ImagePullBackOff".into())
        );
        let event = "Failed to pull image \"postgres:99\": rpc error: code = NotFound desc = manifest unknown";
        let why = failed(judge(
            &backoff,
            Context {
                pull_event: Some(event),
                ..ctx()
            },
        ));
        assert!(
            why.contains(&format!("(ImagePullBackOff: {event})")),
            "{why}"
        );
    }

    #[test]
    fn throttled_pulls_and_unschedulable_pods_wait() {
        let message = "rpc error: code = Unknown desc = failed to pull and unpack image \"docker.io/library/postgres:15\": 429 Too Many Requests - Server message: toomanyrequests: You have reached your pull rate limit.";
        assert_eq!(
            judge(&waiting("ErrImagePull", message, 0), ctx()),
            PodState::Pending(format!(
                "container db is in ErrImagePull, retried: {message}"
            ))
        );
        let state = judge(
            &pod(json!({"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient memory."}]})),
            ctx(),
        );
        assert_eq!(
            state,
            PodState::Pending(
                "the pod is Unschedulable: 0/3 nodes are available: 3 Insufficient memory.".into()
            )
        );
    }

    #[test]
    fn crash_loops_fail_after_the_allowed_restarts() {
        let loop_ = |restarts| {
            waiting(
                "CrashLoopBackOff",
                "back-off 20s restarting failed container=db",
                restarts,
            )
        };
        let why = failed(judge(&loop_(1), ctx()));
        assert_eq!(why, "container db is in CrashLoopBackOff (it exited with code 3): back-off 20s restarting failed container=db");
        let allowing = Context {
            restarts: 2,
            ..ctx()
        };
        assert!(matches!(judge(&loop_(1), allowing), PodState::Pending(_)));
        let why = failed(judge(&loop_(2), allowing));
        assert!(
            why.contains("after 2 restarts (restarts = 2 allowed)"),
            "{why}"
        );
        // Between restarts the container shows terminated.
        let exited = pod(json!({"phase": "Running", "containerStatuses": [{
            "name": "db", "image": "x", "imageID": "", "ready": false, "restartCount": 1,
            "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}));
        assert!(matches!(judge(&exited, allowing), PodState::Pending(_)));
        assert_eq!(
            failed(judge(&exited, ctx())),
            "container db exited with code 1"
        );
    }

    #[test]
    fn config_errors_fail_unless_the_kubelet_lags() {
        let lag = waiting(
            "CreateContainerConfigError",
            "failed to sync secret cache: timed out waiting for the condition",
            0,
        );
        assert!(matches!(judge(&lag, ctx()), PodState::Pending(_)));
        let missing = waiting(
            "CreateContainerConfigError",
            "couldn't find key PW in Secret ns/ephem-secrets",
            0,
        );
        assert_eq!(
            failed(judge(&missing, ctx())),
            "container db is in CreateContainerConfigError: couldn't find key PW in Secret ns/ephem-secrets"
        );
        let root = waiting("CreateContainerConfigError", "container has runAsNonRoot and image will run as root (pod: \"db_ns(1)\", container: db)", 0);
        assert!(failed(judge(&root, ctx())).ends_with("set [services.db.kubernetes] run-as-user to the image's non-root user (999 for the official postgres and redis images), or choose [kubernetes] pod-security = \"baseline\""));
    }

    #[test]
    fn exits_evictions_and_running_pods() {
        let state = judge(
            &pod(json!({"phase": "Failed", "containerStatuses": [{
                "name": "db", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]})),
            ctx(),
        );
        assert_eq!(
            failed(state),
            "container db exited with code 137 (OOMKilled)"
        );
        let state = judge(
            &pod(
                json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}),
            ),
            ctx(),
        );
        assert_eq!(
            failed(state),
            "the pod is Failed (Evicted: The node was low on resource: memory.)"
        );
        let state = judge(&waiting("ContainerCreating", "", 0), ctx());
        assert_eq!(
            state,
            PodState::Pending("container db is in ContainerCreating".into())
        );
        let state = judge(
            &pod(
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "db", "image": "x", "imageID": "", "ready": true,
            "restartCount": 0, "state": {"running": {}}}]}),
            ),
            ctx(),
        );
        assert_eq!(state, PodState::Running { ready: true });
    }
}
