//! Streaming answers: watches (newline-delimited WatchEvents, BOOKMARKs for
//! clients that allow them, a 410 `Expired` ERROR for a resourceVersion
//! older than the kept history) and followed pod logs. Each runs as a task
//! that writes into a channel the response body reads; a client that hangs
//! up closes the channel and ends the task.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::resources::{self, Resource};
use crate::status::ApiError;
use crate::store::{Selection, State};
use crate::Shared;

/// A response body fed by a channel, one chunk per message.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// What a watch request asked for.
pub struct WatchRequest {
    /// The resource watched.
    pub res: &'static Resource,
    /// Its namespace, or None for all (or cluster-scoped).
    pub namespace: Option<String>,
    /// Label and field selectors.
    pub selection: Selection,
    /// `resourceVersion`: events after it; None or 0 starts with the current
    /// objects as ADDED.
    pub resource_version: Option<u64>,
    /// `timeoutSeconds`: the stream ends after it.
    pub timeout: Duration,
    /// `sendInitialEvents=true`: a BOOKMARK marks the end of the initial ADDEDs.
    pub send_initial_events: bool,
    /// `allowWatchBookmarks=true`: BOOKMARK events now and then.
    pub allow_bookmarks: bool,
}

/// Starts a watch; the body streams its events.
pub fn watch(shared: Arc<Shared>, request: WatchRequest) -> ChannelBody {
    let (tx, rx) = mpsc::channel(64);
    // Subscribe before reading the state, so no change falls in between.
    let mut ticks = shared.tick.subscribe();
    let mut asked = shared.bookmark.subscribe();
    let (initial, mut position, epoch, interval) = shared.read(|s| {
        let (events, position) = initial_events(s, &request);
        (events, position, s.watch_epoch, s.bookmark_interval)
    });
    let interval = interval.filter(|_| request.allow_bookmarks);
    tokio::spawn(async move {
        if !send_all(&tx, initial).await {
            return;
        }
        let deadline = Instant::now() + request.timeout;
        let mut next_bookmark = interval.map(|i| Instant::now() + i);
        loop {
            let mut bookmark = false;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                changed = ticks.changed() => if changed.is_err() { return },
                changed = asked.changed() => {
                    if changed.is_err() { return }
                    bookmark = request.allow_bookmarks;
                }
                _ = tokio::time::sleep_until(next_bookmark.unwrap_or(deadline)), if next_bookmark.is_some() => {
                    bookmark = true;
                    next_bookmark = interval.map(|i| Instant::now() + i);
                }
            }
            if shared.read(|s| s.watch_epoch) != epoch {
                return;
            }
            // Changes first: a bookmark promises everything before it was sent.
            let (mut events, next) = shared.read(|s| events_since(s, &request, position));
            position = next;
            if bookmark && position != u64::MAX {
                events.push(bookmark_event(request.res, position));
            }
            if !send_all(&tx, events).await {
                return;
            }
        }
    });
    ChannelBody { rx }
}

/// A BOOKMARK: only the kind and the resourceVersion the watch has reached.
fn bookmark_event(res: &Resource, rv: u64) -> Value {
    json!({"type": "BOOKMARK", "object": {
        "apiVersion": res.api_version(),
        "kind": res.kind,
        "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null},
    }})
}

/// The events a watch starts with, and the resourceVersion it continues from.
fn initial_events(state: &State, request: &WatchRequest) -> (Vec<Value>, u64) {
    match request.resource_version.filter(|rv| *rv > 0) {
        Some(rv) => events_since(state, request, rv),
        None => {
            let ns = request.namespace.as_deref();
            let mut events: Vec<Value> = state
                .select(request.res, ns, &request.selection)
                .map(|(_, object)| event("ADDED", object))
                .collect();
            if request.send_initial_events {
                events.push(initial_events_end(request.res, state.resource_version()));
            }
            (events, state.resource_version())
        }
    }
}

/// Matching changes after `rv`, and the resourceVersion reached; an ERROR
/// event (410) when `rv` is older than the history.
fn events_since(state: &State, request: &WatchRequest, rv: u64) -> (Vec<Value>, u64) {
    match state.changes_since(rv) {
        Ok(changes) => {
            let reached = changes.last().map_or(rv, |c| c.rv);
            let ns = request.namespace.as_deref();
            let events = changes
                .iter()
                .filter(|c| {
                    request
                        .selection
                        .matches(&c.key, &c.object, request.res, ns)
                })
                .map(|c| event(c.kind, &c.object))
                .collect();
            (events, reached)
        }
        Err(oldest) => (
            vec![json!({"type": "ERROR", "object": ApiError::expired(rv, oldest).to_json()})],
            u64::MAX,
        ),
    }
}

fn event(kind: &str, object: &Value) -> Value {
    json!({"type": kind, "object": object})
}

fn initial_events_end(res: &Resource, rv: u64) -> Value {
    json!({"type": "BOOKMARK", "object": {
        "apiVersion": res.api_version(),
        "kind": res.kind,
        "metadata": {
            "resourceVersion": rv.to_string(),
            "annotations": {"k8s.io/initial-events-end": "true"},
        },
    }})
}

/// Sends each event as one line; false once the client has gone. An ERROR
/// event ends the stream, as the API server does.
async fn send_all(tx: &mpsc::Sender<Bytes>, events: Vec<Value>) -> bool {
    for e in events {
        let mut line = e.to_string();
        line.push('\n');
        if tx.send(Bytes::from(line)).await.is_err() || e["type"] == "ERROR" {
            return false;
        }
    }
    true
}

/// The log of a pod: all of it, or its last `tail` lines.
pub fn log_text(state: &State, ns: &str, pod: &str, tail: Option<usize>) -> String {
    let text = state.log(ns, pod);
    match tail {
        None => text,
        Some(n) => {
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            lines[lines.len().saturating_sub(n)..].concat()
        }
    }
}

/// A followed log: what is there, then what is appended, until the pod is
/// gone or has finished (Succeeded or Failed).
pub fn follow_log(
    shared: Arc<Shared>,
    ns: String,
    pod: String,
    tail: Option<usize>,
) -> ChannelBody {
    let (tx, rx) = mpsc::channel(64);
    let mut ticks = shared.tick.subscribe();
    let (first, mut sent) = shared.read(|s| (log_text(s, &ns, &pod, tail), s.log(&ns, &pod).len()));
    tokio::spawn(async move {
        if !first.is_empty() && tx.send(Bytes::from(first)).await.is_err() {
            return;
        }
        loop {
            let (more, finished) = shared.read(|s| {
                let text = s.log(&ns, &pod);
                let more = text.get(sent..).unwrap_or("").to_owned();
                (more, pod_finished(s, &ns, &pod))
            });
            sent += more.len();
            if !more.is_empty() && tx.send(Bytes::from(more)).await.is_err() {
                return;
            }
            if finished {
                return;
            }
            tokio::select! {
                _ = tx.closed() => return,
                changed = ticks.changed() => if changed.is_err() { return },
            }
        }
    });
    ChannelBody { rx }
}

fn pod_finished(state: &State, ns: &str, pod: &str) -> bool {
    let pods = resources::by_plural("pods").expect("pods are served");
    match state.get(pods, Some(ns), pod) {
        Ok(p) => matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")),
        Err(_) => true,
    }
}
