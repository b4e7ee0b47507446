//! Reading pods: whether a service's pod is ready by its [`WaitPlan`] (from
//! watch events, and its followed log for `log` waits), what it waits for
//! meanwhile (its latest event, shown in the progress line), why it can
//! never be ready ([`state`], [`pull`]), what it said last ([`logs`]), and,
//! once the shard runs, which services die ([`deaths`]).
//!
//! Both watches (the pod's and its events') are kube's watchers: a watch
//! the API server ends is resumed from the last resourceVersion seen (a
//! bookmark's included), and one too old for the server's history (410) is
//! listed again.

mod deaths;
mod logs;
pub(crate) mod pull;
mod state;

use std::pin::Pin;
use std::time::Duration;

use futures_util::io::AsyncBufReadExt;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::LogParams;
use kube::runtime::watcher::{self, watch_object};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::time::{sleep, sleep_until, Instant};

use super::backend::{code, within, Shared};
use super::client::{api_error, ApiCall};
use super::render::{LogWait, ReadyWhen, WaitPlan};
use crate::{EnvError, EnvEvent};

pub(crate) use deaths::watch_deaths;
pub(crate) use logs::last_words;
pub(crate) use state::{judge, Context, PodState};

/// Pause after a watch error before the watcher tries again.
const WATCH_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// A log follow that ended while the container runs is opened again after this.
const REFOLLOW_PAUSE: Duration = Duration::from_secs(1);

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

/// The service a wait is for.
pub(crate) struct Subject<'a> {
    /// The service's pods' namespace.
    pub pods: &'a Api<Pod>,
    /// The service (and its pod's and container's) name.
    pub name: &'a str,
    /// Its shard, for the progress line.
    pub shard: u32,
}

/// Waits until the pod is ready by `plan`, or can never be, or `deadline`
/// passes. Readiness comes from watch events (the watch resumes when it
/// breaks); a `log` wait also follows the container's log once it runs.
/// Meanwhile the pod's latest event goes to the progress line.
pub(crate) async fn wait_ready(
    shared: &Shared,
    subject: Subject<'_>,
    plan: &WaitPlan,
    deadline: Instant,
) -> Result<(), NotReady> {
    let mut waiter = Waiter {
        shared,
        pods: subject.pods,
        name: subject.name,
        shard: subject.shard,
        restarts: plan.restarts,
        last: "the pod has not been seen yet".to_owned(),
        pending: true,
        pod: None,
        latest: None,
        pull_event: None,
        shown: String::new(),
    };
    let outcome = tokio::time::timeout_at(deadline, waiter.run(&plan.ready)).await;
    match outcome {
        Ok(result) => result,
        Err(_) => Err(NotReady::TimedOut {
            last: waiter.last_seen(),
        }),
    }
}

type Lines = Pin<Box<dyn Stream<Item = std::io::Result<String>> + Send>>;

/// The pod's latest event: when, `Reason: message`, and whether it is a
/// Warning.
struct Latest {
    at: Option<k8s_openapi::jiff::Timestamp>,
    text: String,
    warning: bool,
}

struct Waiter<'a> {
    shared: &'a Shared,
    pods: &'a Api<Pod>,
    name: &'a str,
    shard: u32,
    restarts: u32,
    /// What was seen last, for a timeout's message.
    last: String,
    /// Whether the pod was last seen waiting to run (its events say why).
    pending: bool,
    /// The pod as last seen, judged again when an event arrives.
    pod: Option<Pod>,
    /// The pod's latest event.
    latest: Option<Latest>,
    /// The kubelet's latest `Failed to pull image` event.
    pull_event: Option<String>,
    /// What the progress line shows now.
    shown: String,
}

impl Waiter<'_> {
    async fn run(&mut self, ready: &ReadyWhen) -> Result<(), NotReady> {
        let mut watch = watch_object(self.pods.clone(), self.name).boxed();
        let mut events = self.events();
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
            let state = tokio::select! {
                event = watch.next() => self.on_pod(event).await?,
                Some(event) = events.next() => self.on_event(event)?,
                line = next_line(&mut log) => {
                    match line {
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
                    }
                    continue;
                }
                _ = sleep_until(refollow.unwrap_or_else(far_future)), if refollow.is_some() => continue,
            };
            // A watch error says nothing new about the pod.
            let Some(state) = state else { continue };
            running = matches!(state, PodState::Running { .. });
            match (ready, state) {
                (ReadyWhen::ProbePassed, PodState::Running { ready: true }) => return Ok(()),
                (ReadyWhen::ProbePassed, PodState::Running { ready: false }) => {
                    self.last =
                        "the container runs; its readiness probe has not passed yet".to_owned();
                }
                (ReadyWhen::Running, PodState::Running { .. }) => return Ok(()),
                _ => {}
            }
        }
    }

    /// The pod's events, watched; errors (no permission to see events, a
    /// broken watch) only mean less to show, and are retried with back-off.
    fn events(&self) -> Pin<Box<dyn Stream<Item = Event> + Send>> {
        let api: Api<Event> =
            Api::namespaced(self.shared.cluster.client.clone(), namespace_of(self.pods));
        let config =
            watcher::Config::default().fields(&format!("involvedObject.name={}", self.name));
        watcher::watcher(api, config)
            .default_backoff()
            .filter_map(|e| async move {
                match e {
                    Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) => Some(e),
                    _ => None,
                }
            })
            .boxed()
    }

    /// One pod watch event: the pod's state, or why waiting is over.
    async fn on_pod(
        &mut self,
        event: Option<Result<Option<Pod>, watcher::Error>>,
    ) -> Result<Option<PodState>, NotReady> {
        match event {
            Some(Ok(Some(pod))) => {
                self.pod = Some(pod);
                self.assess()
            }
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

    /// One of the pod's events: shown if it is the latest, kept if it is a
    /// failed pull's, and the pod judged again (a back-off may only now be
    /// known to be hopeless).
    fn on_event(&mut self, event: Event) -> Result<Option<PodState>, NotReady> {
        let at = event
            .last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(event.event_time.as_ref().map(|t| t.0))
            .or(event.first_timestamp.as_ref().map(|t| t.0));
        let message = one_line(event.message.as_deref().unwrap_or(""));
        if message.starts_with("Failed to pull image") {
            self.pull_event = Some(message.clone());
        }
        let newer = match (&self.latest, at) {
            (Some(latest), Some(at)) => latest.at.is_none_or(|t| at >= t),
            _ => true,
        };
        if newer {
            let reason = event.reason.as_deref().unwrap_or("Event");
            self.latest = Some(Latest {
                at,
                text: format!("{reason}: {message}"),
                warning: event.type_.as_deref() == Some("Warning"),
            });
        }
        match self.pod.is_some() {
            true => self.assess(),
            false => {
                self.show();
                Ok(None)
            }
        }
    }

    /// Judges the pod as last seen: a failure ends the wait; anything else
    /// is remembered and shown.
    fn assess(&mut self) -> Result<Option<PodState>, NotReady> {
        let Some(pod) = &self.pod else {
            return Ok(None);
        };
        let ctx = Context {
            restarts: self.restarts,
            pull_event: self.pull_event.as_deref(),
            service: self.name,
        };
        match judge(pod, ctx) {
            PodState::Failed(why) => Err(NotReady::Failed(why)),
            state => {
                self.pending = matches!(state, PodState::Pending(_));
                if let PodState::Pending(what) = &state {
                    self.last = what.clone();
                }
                self.show();
                Ok(Some(state))
            }
        }
    }

    /// The progress line: the latest event, else what the pod waits for;
    /// sent when it changes.
    fn show(&mut self) {
        let (text, warning) = match &self.latest {
            Some(latest) => (latest.text.clone(), latest.warning),
            None => (self.last.clone(), false),
        };
        if text == self.shown {
            return;
        }
        self.shown = text.clone();
        let _ = self.shared.events.send(EnvEvent::Waiting {
            shard: self.shard,
            service: self.name.to_owned(),
            message: text,
            warning,
        });
    }

    /// What a timeout reports: what the pod waited for, and its latest event
    /// while it did not run.
    fn last_seen(&self) -> String {
        match &self.latest {
            Some(latest) if self.pending && !self.last.contains(&latest.text) => {
                format!("{}; latest event: {}", self.last, latest.text)
            }
            _ => self.last.clone(),
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

/// Whitespace runs (events may span lines) as single spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The namespace an `Api` was made for, for messages.
fn namespace_of(api: &Api<Pod>) -> &str {
    api.namespace().unwrap_or("")
}
