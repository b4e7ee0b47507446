//! Once a shard runs: which of its services die (a container that stops or
//! restarts, a pod deleted), each reported once, across broken watches.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::Api;
use tokio::task::AbortHandle;
use tokio::time::{sleep, Instant};

use super::super::backend::Shared;
use super::super::labels;
use super::state::last_exit;
use crate::{EnvEvent, EventSink};

/// After this long without an error, a watch counts as having worked: its
/// next failure starts the retries afresh.
const STABLE: Duration = Duration::from_secs(10);

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
        baseline: true,
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
    /// Until the first listing is done: restarts seen then happened while
    /// the service started (within its `restarts`), before it was ready.
    baseline: bool,
}

impl Deaths {
    async fn run(mut self) {
        let config = watcher::Config::default().labels(labels::SERVICE);
        let mut stream = watcher::watcher(self.pods.clone(), config).boxed();
        let mut tries = 0;
        let mut last_error: Option<Instant> = None;
        while let Some(event) = stream.next().await {
            let outcome = match event {
                Ok(watcher::Event::InitApply(pod)) if self.baseline => {
                    self.started_with(&pod);
                    self.report(&pod)
                }
                Ok(watcher::Event::InitDone) => {
                    self.baseline = false;
                    Ok(())
                }
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

    /// Restarts of containers that run now, at the start: crashes while the
    /// service started, which readiness allowed.
    fn started_with(&mut self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        for c in statuses.into_iter().flatten() {
            let running = c.state.as_ref().is_some_and(|s| s.running.is_some());
            if running && c.restart_count > 0 {
                self.seen
                    .insert((uid.clone(), c.name.clone(), c.restart_count));
            }
        }
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
