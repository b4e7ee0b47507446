//! Reading pods: whether a service's pod is ready by its [`WaitPlan`] (from
//! watch events, and its followed log for `log` waits), why it can never be
//! (image pulls, crashes, exits, scheduling), what it said last (its log,
//! else its events), and, once the shard runs, which services die.

use std::collections::HashSet;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use futures_util::io::AsyncBufReadExt;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use kube::api::{ListParams, LogParams};
use kube::runtime::watcher::{self, watch_object};
use kube::Api;
use tokio::task::AbortHandle;
use tokio::time::{sleep, sleep_until, Instant};

use super::backend::{code, within, Shared};
use super::client::{api_error, ApiCall};
use super::labels;
use super::render::{LogWait, ReadyWhen, WaitPlan};
use crate::{EnvError, EnvEvent, EventSink};

/// How many log lines (or events) a readiness failure shows.
pub(crate) const FAILURE_LINES: usize = 50;

/// Waiting reasons after which a container never starts by itself.
const HOPELESS: [&str; 6] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CrashLoopBackOff",
];

/// After this long without an error, a watch counts as having worked: its
/// next failure starts the retries afresh.
const STABLE: Duration = Duration::from_secs(10);

/// Pause after a watch error before the watcher tries again.
const WATCH_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// A log follow that ended while the container runs is opened again after this.
const REFOLLOW_PAUSE: Duration = Duration::from_secs(1);

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

/// Why a pod did not become ready.
#[derive(Debug)]
pub(crate) enum NotReady {
    /// It cannot: why.
    Failed(String),
    /// The deadline passed; what was seen last.
    TimedOut { last: String },
    /// The API refused to show it (RBAC, say).
    Api(EnvError),
}

/// The pod's state for readiness: failures first, then whether it runs.
pub(crate) fn judge(pod: &Pod) -> PodState {
    let Some(status) = &pod.status else {
        return PodState::Pending("not scheduled yet".to_owned());
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let inits = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    let mains = status.container_statuses.as_deref().unwrap_or_default();
    for (kind, c) in inits
        .iter()
        .map(|c| ("init container", c))
        .chain(mains.iter().map(|c| ("container", c)))
    {
        if let Some(why) = hopeless(kind, c) {
            return PodState::Failed(why);
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
        return PodState::Failed(why);
    }
    if mains.iter().any(is_running) {
        return PodState::Running {
            ready: condition(pod, "Ready"),
        };
    }
    PodState::Pending(waiting_for(phase, inits, mains))
}

/// Why this container can never run: a hopeless waiting reason, or an exit
/// (pods never restart their service; an init container that failed).
fn hopeless(kind: &str, c: &ContainerStatus) -> Option<String> {
    let state = c.state.as_ref()?;
    if let Some(waiting) = &state.waiting {
        let reason = waiting.reason.as_deref().unwrap_or("");
        if HOPELESS.contains(&reason) {
            let mut why = format!("{kind} {} is in {reason}", c.name);
            if let Some(code) = last_exit(c) {
                why.push_str(&format!(" (it exited with code {code})"));
            }
            if let Some(message) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
                why.push_str(&format!(": {message}"));
            }
            return Some(why);
        }
    }
    let terminated = state.terminated.as_ref()?;
    if kind == "init container" && terminated.exit_code == 0 {
        return None;
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
    Some(why)
}

fn last_exit(c: &ContainerStatus) -> Option<i32> {
    Some(c.last_state.as_ref()?.terminated.as_ref()?.exit_code)
}

fn is_running(c: &ContainerStatus) -> bool {
    c.state.as_ref().is_some_and(|s| s.running.is_some())
}

fn condition(pod: &Pod, type_: &str) -> bool {
    conditions(pod).any(|c| c.type_ == type_ && c.status == "True")
}

fn conditions(pod: &Pod) -> impl Iterator<Item = &k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
}

/// `unschedulable: 0/3 nodes are available: ...` when the scheduler gave up.
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

/// `Pending: ContainerCreating`, for a timeout's "last seen".
fn waiting_for(phase: &str, inits: &[ContainerStatus], mains: &[ContainerStatus]) -> String {
    let reason = inits
        .iter()
        .chain(mains)
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .next();
    match reason {
        Some(reason) => format!("the pod is {phase}: {reason}"),
        None => format!("the pod is {phase}"),
    }
}

/// Waits until the pod is ready by `plan`, or can never be, or `deadline`
/// passes. Readiness comes from watch events (the watch resumes when it
/// breaks); a `log` wait also follows the container's log once it runs.
pub(crate) async fn wait_ready(
    shared: &Shared,
    pods: &Api<Pod>,
    name: &str,
    plan: &WaitPlan,
    deadline: Instant,
) -> Result<(), NotReady> {
    let mut waiter = Waiter {
        shared,
        pods,
        name,
        last: "the pod has not been seen yet".to_owned(),
    };
    let outcome = tokio::time::timeout_at(deadline, waiter.run(&plan.ready)).await;
    match outcome {
        Ok(result) => result,
        Err(_) => Err(NotReady::TimedOut { last: waiter.last }),
    }
}

type Lines = Pin<Box<dyn Stream<Item = std::io::Result<String>> + Send>>;

struct Waiter<'a> {
    shared: &'a Shared,
    pods: &'a Api<Pod>,
    name: &'a str,
    /// What was seen last, for a timeout's message.
    last: String,
}

impl Waiter<'_> {
    async fn run(&mut self, ready: &ReadyWhen) -> Result<(), NotReady> {
        let mut watch = watch_object(self.pods.clone(), self.name).boxed();
        let mut log: Option<Lines> = None;
        let mut running = false;
        let mut seen = 0u32;
        let mut refollow = None;
        loop {
            let follow_now = refollow.is_some_and(|at| Instant::now() >= at);
            if let (ReadyWhen::Log(_), true, None) = (ready, running, &log) {
                if refollow.is_none() || follow_now {
                    refollow = None;
                    seen = 0;
                    log = Some(self.follow().await?);
                }
            }
            tokio::select! {
                event = watch.next() => {
                    let state = self.on_event(event).await?;
                    // A watch error says nothing new about the pod.
                    if let Some(state) = &state {
                        running = matches!(state, PodState::Running { .. });
                    }
                    let done = match (ready, state) {
                        (ReadyWhen::ProbePassed, Some(PodState::Running { ready: true })) => true,
                        (ReadyWhen::ProbePassed, Some(PodState::Running { ready: false })) => {
                            self.last = "the container runs; its readiness probe has not passed yet".to_owned();
                            false
                        }
                        (ReadyWhen::Running, Some(PodState::Running { .. })) => true,
                        _ => false,
                    };
                    if done {
                        return Ok(());
                    }
                }
                line = next_line(&mut log) => match line {
                    Some(line) => {
                        let ReadyWhen::Log(wait) = ready else { continue };
                        if matches(wait, &line) {
                            seen += 1;
                            self.last = format!("saw {seen} of {} matching log lines", wait.times);
                            if seen >= wait.times {
                                return Ok(());
                            }
                        }
                    }
                    None => {
                        // Ended or broke while the pod runs: read it again
                        // from the start a moment later (the watch says
                        // when the container is gone).
                        log = None;
                        refollow = Some(Instant::now() + REFOLLOW_PAUSE);
                    }
                },
                _ = sleep_until(refollow.unwrap_or_else(far_future)), if refollow.is_some() => {}
            }
        }
    }

    /// One watch event: the pod's state, or why waiting is over.
    async fn on_event(
        &mut self,
        event: Option<Result<Option<Pod>, watcher::Error>>,
    ) -> Result<Option<PodState>, NotReady> {
        match event {
            Some(Ok(Some(pod))) => match judge(&pod) {
                PodState::Failed(why) => Err(NotReady::Failed(why)),
                state => {
                    if let PodState::Pending(what) = &state {
                        self.last = what.clone();
                    }
                    Ok(Some(state))
                }
            },
            Some(Ok(None)) => Err(NotReady::Failed(
                "the pod was deleted while it was waited for".to_owned(),
            )),
            Some(Err(e)) => {
                if let Some(denied) = self.denied(&e) {
                    return Err(NotReady::Api(denied));
                }
                self.last = format!("the pod watch failed ({e}); resuming");
                sleep(WATCH_ERROR_PAUSE).await;
                Ok(None)
            }
            None => Err(NotReady::Failed("the pod watch ended".to_owned())),
        }
    }

    /// A 403 on the watch is final (RBAC); anything else is retried.
    fn denied(&self, e: &watcher::Error) -> Option<EnvError> {
        let (err, verb) = match e {
            watcher::Error::InitialListFailed(err) => (err, "list"),
            watcher::Error::WatchStartFailed(err) | watcher::Error::WatchFailed(err) => {
                (err, "watch")
            }
            _ => return None,
        };
        let ns = namespace_of(self.pods);
        (code(err) == Some(403)).then(|| {
            api_error(
                err,
                ApiCall::namespaced(verb, "pods", ns),
                &self.shared.address,
            )
        })
    }

    /// Opens the container's log from its start, following it.
    async fn follow(&mut self) -> Result<Lines, NotReady> {
        let params = LogParams {
            follow: true,
            container: Some(self.name.to_owned()),
            ..LogParams::default()
        };
        match within(self.pods.log_stream(self.name, &params)).await {
            Ok(reader) => Ok(Box::pin(reader.lines())),
            Err(e) if code(&e) == Some(403) => Err(NotReady::Api(api_error(
                &e,
                ApiCall::namespaced("get", "pods/log", namespace_of(self.pods)),
                &self.shared.address,
            ))),
            Err(e) => {
                self.last = format!("cannot follow the log yet ({e})");
                Ok(Box::pin(futures_util::stream::empty()))
            }
        }
    }
}

/// The next line of the followed log; None when it ended or broke.
async fn next_line(log: &mut Option<Lines>) -> Option<String> {
    match log {
        Some(lines) => match lines.next().await {
            Some(Ok(line)) => Some(line),
            _ => None,
        },
        None => std::future::pending().await,
    }
}

fn matches(wait: &LogWait, line: &str) -> bool {
    wait.pattern.matches(line.trim_end_matches('\r'))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// What a failed pod said last: its last [`FAILURE_LINES`] log lines (of
/// the current container, else the previous one), else its events.
pub(crate) async fn last_words(pods: &Api<Pod>, events: &Api<Event>, name: &str) -> Vec<String> {
    for previous in [false, true] {
        let params = LogParams {
            container: Some(name.to_owned()),
            tail_lines: Some(FAILURE_LINES as i64),
            previous,
            ..LogParams::default()
        };
        if let Ok(text) = within(pods.logs(name, &params)).await {
            let lines = tail(&text, FAILURE_LINES);
            if !lines.is_empty() {
                return lines;
            }
        }
    }
    pod_events(events, name).await
}

/// The last `n` lines of `text`, without line ends.
fn tail(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<String> = text.lines().map(|l| l.trim_end().to_owned()).collect();
    let skip = lines.len().saturating_sub(n);
    lines.into_iter().skip(skip).collect()
}

/// `event Warning Failed: Failed to pull image ...`, oldest first.
async fn pod_events(events: &Api<Event>, pod: &str) -> Vec<String> {
    let params = ListParams::default().fields(&format!("involvedObject.name={pod}"));
    let Ok(list) = within(events.list(&params)).await else {
        return Vec::new();
    };
    let mut items = list.items;
    items.sort_by_key(|e| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(e.event_time.as_ref().map(|t| t.0))
    });
    let lines: Vec<String> = items
        .iter()
        .map(|e| {
            format!(
                "event {} {}: {}",
                e.type_.as_deref().unwrap_or("Normal"),
                e.reason.as_deref().unwrap_or(""),
                e.message.as_deref().unwrap_or("")
            )
        })
        .collect();
    let skip = lines.len().saturating_sub(FAILURE_LINES);
    lines.into_iter().skip(skip).collect()
}

/// Follows the shard's service pods and reports each container that stops
/// or restarts as [`EnvEvent::ServiceExited`], until aborted by teardown.
/// A broken watch is resumed after each of the retry delays; when none is
/// left, an [`EnvEvent::Warning`] says deaths are no longer reported.
pub(crate) fn watch_deaths(shared: &Shared, namespace: &str, shard: u32) -> AbortHandle {
    let deaths = Deaths {
        pods: Api::namespaced(shared.cluster.client.clone(), namespace),
        events: shared.events.clone(),
        retry: shared.watch_retry.clone(),
        shard,
        seen: HashSet::new(),
    };
    tokio::spawn(deaths.run()).abort_handle()
}

/// Nobody receives events any more: the follower can stop.
struct Unheard;

struct Deaths {
    pods: Api<Pod>,
    events: EventSink,
    retry: Vec<Duration>,
    shard: u32,
    /// Deaths already reported: (pod uid, container, restart count).
    seen: HashSet<(String, String, i32)>,
}

impl Deaths {
    async fn run(mut self) {
        let config = watcher::Config::default().labels(labels::SERVICE);
        let mut stream = watcher::watcher(self.pods.clone(), config).boxed();
        let mut tries = 0;
        let mut last_error: Option<Instant> = None;
        while let Some(event) = stream.next().await {
            let outcome = match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    self.report(&pod)
                }
                Ok(watcher::Event::Delete(pod)) => self.report_deleted(&pod),
                Ok(_) => Ok(()),
                Err(e) => {
                    if last_error.is_some_and(|at| at.elapsed() >= STABLE) {
                        tries = 0;
                    }
                    last_error = Some(Instant::now());
                    let Some(delay) = self.retry.get(tries) else {
                        self.give_up(&e);
                        return;
                    };
                    tries += 1;
                    sleep(*delay).await;
                    Ok(())
                }
            };
            if outcome.is_err() {
                return;
            }
        }
    }

    /// Reports each container of the pod that stopped, or restarted, once.
    fn report(&mut self, pod: &Pod) -> Result<(), Unheard> {
        let Some(service) = service_of(pod) else {
            return Ok(());
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        for c in statuses {
            let terminated = c.state.as_ref().and_then(|s| s.terminated.as_ref());
            let exit = match (terminated, c.restart_count) {
                (Some(t), _) => Some(t.exit_code),
                (None, 0) => continue,
                (None, _) => last_exit(&c),
            };
            // A restart count names each death; a stopped container's
            // current death is one more than its restarts.
            let death = c.restart_count + i32::from(terminated.is_some());
            if self.seen.insert((uid.clone(), c.name.clone(), death)) {
                self.send(&service, exit.map(i64::from))?;
            }
        }
        Ok(())
    }

    /// A service pod deleted by someone else is a death too.
    fn report_deleted(&mut self, pod: &Pod) -> Result<(), Unheard> {
        let Some(service) = service_of(pod) else {
            return Ok(());
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if self.seen.insert((uid, String::new(), -1)) {
            self.send(&service, None)?;
        }
        Ok(())
    }

    fn send(&self, service: &str, exit_code: Option<i64>) -> Result<(), Unheard> {
        self.events
            .send(EnvEvent::ServiceExited {
                shard: self.shard,
                service: service.to_owned(),
                exit_code,
                at: SystemTime::now(),
            })
            .map_err(|_| Unheard)
    }

    fn give_up(&self, why: &watcher::Error) {
        let waited: Duration = self.retry.iter().sum();
        let message = format!(
            "service deaths are no longer reported: the pod watch broke and {} resumptions over {} failed (last: {why})",
            self.retry.len(),
            humantime::format_duration(waited)
        );
        let _ = self.events.send(EnvEvent::Warning {
            shard: Some(self.shard),
            message,
        });
    }
}

fn service_of(pod: &Pod) -> Option<String> {
    pod.metadata.labels.as_ref()?.get(labels::SERVICE).cloned()
}

/// The namespace an `Api` was made for, for messages.
fn namespace_of(api: &Api<Pod>) -> &str {
    api.namespace().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "db"}, "status": status})).unwrap()
    }

    #[test]
    fn hopeless_reasons_fail_with_the_kubelets_words() {
        let state = judge(&pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "db", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]})));
        assert_eq!(
            state,
            PodState::Failed(
                "container db is in ImagePullBackOff: Back-off pulling image \"x\"".into()
            )
        );
        let state = judge(&pod(json!({"phase": "Running", "containerStatuses": [{
            "name": "db", "image": "x", "imageID": "", "ready": false, "restartCount": 2,
            "lastState": {"terminated": {"exitCode": 3}},
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]})));
        assert_eq!(
            state,
            PodState::Failed("container db is in CrashLoopBackOff (it exited with code 3)".into())
        );
        let state = judge(&pod(json!({"phase": "Failed", "containerStatuses": [{
            "name": "db", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]})));
        assert_eq!(
            state,
            PodState::Failed("container db exited with code 137 (OOMKilled)".into())
        );
    }

    #[test]
    fn unschedulable_evicted_and_waiting_pods() {
        let state = judge(&pod(json!({"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient memory."}]})));
        assert_eq!(
            state,
            PodState::Failed(
                "the pod is Unschedulable: 0/3 nodes are available: 3 Insufficient memory.".into()
            )
        );
        let state = judge(&pod(json!({"phase": "Failed", "reason": "Evicted",
            "message": "The node was low on resource: memory."})));
        assert_eq!(
            state,
            PodState::Failed(
                "the pod is Failed (Evicted: The node was low on resource: memory.)".into()
            )
        );
        let state = judge(&pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "db", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}}]})));
        assert_eq!(
            state,
            PodState::Pending("the pod is Pending: ContainerCreating".into())
        );
        let state = judge(&pod(
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "db", "image": "x", "imageID": "", "ready": true,
            "restartCount": 0, "state": {"running": {}}}]}),
        ));
        assert_eq!(state, PodState::Running { ready: true });
    }

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail("a\nb\r\nc\n", 2), ["b", "c"]);
        assert!(tail("", 5).is_empty());
    }
}
