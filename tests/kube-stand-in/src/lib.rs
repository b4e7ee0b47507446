//! A loopback stand-in for the Kubernetes API server, for cargo-ephem's
//! tests: real HTTP/1.1 on 127.0.0.1, objects in memory, answers shaped like
//! the API server's (JSON with `apiVersion`/`kind`, server-set metadata,
//! `List`s with a resourceVersion, errors as `Status` objects), so that the
//! real kube client cannot tell it from a cluster for what the backend does.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let api = ephem_kube_stand_in::StandIn::start().await?;
//! api.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"), "stand-in")?;
//! api.forbid("delete", "namespaces");
//! # Ok(()) }
//! ```
//!
//! What it serves: `GET /version`; namespaces (create, get, list with label
//! and field selectors and pagination, watch, merge-patch, delete with
//! DeleteOptions: uid and resourceVersion preconditions, propagationPolicy,
//! dryRun; a deleted namespace goes Terminating and, after
//! [`NamespaceDeletion::After`], the namespace controller's pass deletes its
//! objects and removes it, unless objects with finalizers remain: those are
//! marked deleted and hold it Terminating with the controller's
//! `NamespaceContentRemaining` and `NamespaceFinalizersRemaining` conditions
//! until their finalizers are removed; or it stays stuck with given
//! conditions); the namespaced resources of [`resources::RESOURCES`] (create,
//! get, list, watch, merge-patch, delete; an object with finalizers is only
//! marked deleted); pod logs (`pods/{name}/log`,
//! `follow`, `tailLines`; 400 for a container waiting to start, as the API
//! answers); `pods/{name}/portforward` over WebSocket (`v4.channel.k8s.io`,
//! each stream relayed to a local address set with [`StandIn::forward`]);
//! bearer-token authentication (401), anonymous access to `/version` only,
//! RBAC-style denials (403) on demand, and RBAC itself once manifests are
//! applied ([`StandIn::apply_rbac`]: Roles, ClusterRoles and their bindings,
//! every decision recorded); Secrets' `stringData` stored as base64 `data`.
//!
//! Admission (the `admission` module), in kube-apiserver's order and words, each
//! refusal a 403 `Forbidden` Status: LimitRanger (defaults, then `min` and
//! `max` per container), the ServiceAccount plugin (a namespace's `default`
//! ServiceAccount comes [`StandIn::set_service_account_delay`] after the
//! namespace), Pod Security (the namespace's `enforce` label, else
//! [`StandIn::set_pod_security_default`]), validating webhooks
//! ([`StandIn::deny_with_webhook`]) and the ResourceQuota's `pods` count
//! (with the quota's status kept).
//!
//! Watches replay a history of changes that is short on demand
//! ([`StandIn::set_watch_history`]): a watch from an older resourceVersion
//! ends with a 410 `Expired` ERROR event, as after etcd's compaction; with
//! `allowWatchBookmarks` they get BOOKMARK events every
//! [`StandIn::set_bookmark_interval`] and on [`StandIn::bookmark_watches`].
//!
//! With a [`Lifecycle`] ([`StandIn::set_lifecycle`]) it also plays the
//! scheduler, the kubelet and the DaemonSet controller: pods created through
//! the API are scheduled (or stay Unschedulable, for a while or for good),
//! pull their images (or go ErrImagePull, then ImagePullBackOff, for good or
//! for a few tries; InvalidImageName for a bad reference;
//! CreateContainerConfigError for a missing Secret key or `runAsNonRoot`
//! with an image that runs as root), start, log, become Ready after their
//! readiness probe's delay, or exit (terminated under `restartPolicy: Never`,
//! CrashLoopBackOff otherwise), each step with the events the real
//! components record; DaemonSets get a pod per node and a status that
//! counts the ready ones.
//!
//! What it does not: TLS, PUT (replace), JSON patch and server-side apply
//! (415), `deletecollection`, discovery (`/api`, `/apis`), quotas of
//! anything but the `pods` count, mutating webhooks, Services that route
//! anything (port-forward goes to pods), and SPDY.

mod admission;
mod deletion;
mod kubeconfig;
mod kubelet;
mod portforward;
pub mod rbac;
pub mod resources;
mod selector;
mod server;
mod status;
mod store;
mod stream;
mod validate;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};

pub use admission::{Level as PodSecurityLevel, Webhook};
pub use status::ApiError;
pub use store::merge_patch;

/// The user the stand-in's token authenticates, as RBAC messages name it.
pub const USER: &str = "system:serviceaccount:ephem-ci:cargo-ephem";

/// What happens to a namespace once a DELETE is accepted.
#[derive(Clone, Debug, PartialEq)]
pub enum NamespaceDeletion {
    /// Terminating for this long, then removed with everything inside it.
    After(Duration),
    /// Terminating for good, with these `status.conditions` saying why (as
    /// when a finalizer's controller is gone).
    Stuck(Vec<Condition>),
}

/// A namespace condition, e.g. `NamespaceFinalizersRemaining`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// `type`, e.g. `NamespaceContentRemaining`.
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason, e.g. `SomeFinalizersRemain`.
    pub reason: String,
    /// What is holding the namespace.
    pub message: String,
}

impl Condition {
    /// A condition that holds (`status: True`).
    pub fn new(type_: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: "True".to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
        }
    }

    /// The condition as the API writes it.
    pub fn to_json(&self) -> Value {
        json!({
            "type": self.type_,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": store::now(),
        })
    }
}

/// How pods created through the API run (see [`StandIn::set_lifecycle`]).
#[derive(Clone, Debug)]
pub struct Lifecycle {
    /// From scheduling to the containers running (the "pull" and start).
    pub start_after: Duration,
    /// From running to Ready, for containers with a readiness probe
    /// (without one, a running container is ready at once).
    pub ready_after: Duration,
    /// Nodes, each of which gets a pod of every DaemonSet (default 1).
    pub nodes: u32,
    /// (text an image contains, what happens to its container), first match wins.
    rules: Vec<(String, Fate)>,
    /// (text an image contains, the user id it runs as), first match wins.
    users: Vec<(String, i64)>,
}

impl Lifecycle {
    /// Containers start after `start_after` and pass their readiness probe
    /// `ready_after` later; one node.
    pub fn new(start_after: Duration, ready_after: Duration) -> Lifecycle {
        Lifecycle {
            start_after,
            ready_after,
            nodes: 1,
            rules: Vec::new(),
            users: Vec::new(),
        }
    }

    /// `nodes` nodes, for DaemonSets.
    pub fn nodes(mut self, nodes: u32) -> Lifecycle {
        self.nodes = nodes;
        self
    }

    /// Containers whose image contains `image` meet `fate` (rules are
    /// tried in the order added; unmatched images [`Fate::Run`]).
    pub fn rule(mut self, image: &str, fate: Fate) -> Lifecycle {
        self.rules.push((image.to_owned(), fate));
        self
    }

    /// Images whose reference contains `image` run as `uid` (their USER);
    /// the others as root (0), as most images do. What `runAsNonRoot`
    /// checks.
    pub fn user(mut self, image: &str, uid: i64) -> Lifecycle {
        self.users.push((image.to_owned(), uid));
        self
    }
}

/// What happens to a container, by its image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Starts, logs these lines, becomes ready.
    Run {
        /// Lines written to its log when it starts.
        log: Vec<String>,
    },
    /// Starts and logs, but its readiness probe never passes.
    NeverReady {
        /// Lines written to its log when it starts.
        log: Vec<String>,
    },
    /// The pull fails: ErrImagePull, then ImagePullBackOff, never started.
    PullFails {
        /// What the registry said, e.g. `... not found`.
        message: String,
    },
    /// The pull fails `failures` times (ErrImagePull, ImagePullBackOff),
    /// then succeeds: the container starts, logs and becomes ready, as after
    /// a registry's rate limit (429) or a timeout.
    PullFailsThen {
        /// What the registry said each time, e.g. `... 429 Too Many Requests`.
        message: String,
        /// How many pulls fail before one succeeds.
        failures: u32,
        /// Lines written to its log when it starts.
        log: Vec<String>,
    },
    /// Starts, logs, then exits with `code`: terminated under
    /// `restartPolicy: Never`, CrashLoopBackOff under `Always`.
    Exit {
        /// The exit code.
        code: i32,
        /// Lines written to its log before it exits.
        log: Vec<String>,
    },
    /// No node fits the pod: PodScheduled False, reason Unschedulable.
    Unschedulable {
        /// The scheduler's message, e.g. `0/3 nodes are available: ...`.
        message: String,
    },
    /// Unschedulable for `duration` (until the cluster autoscaler's node
    /// joins), then scheduled: it starts and becomes ready.
    UnschedulableFor {
        /// The scheduler's message meanwhile.
        message: String,
        /// How long no node fits.
        duration: Duration,
    },
}

impl Fate {
    /// [`Fate::Run`] with these log lines.
    pub fn run(log: &[&str]) -> Fate {
        Fate::Run { log: lines(log) }
    }

    /// [`Fate::Exit`] with this code and these log lines.
    pub fn exit(code: i32, log: &[&str]) -> Fate {
        Fate::Exit {
            code,
            log: lines(log),
        }
    }
}

fn lines(log: &[&str]) -> Vec<String> {
    log.iter().map(|l| (*l).to_owned()).collect()
}

/// One request as the stand-in received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, `PATCH`, `DELETE`, ...
    pub method: String,
    /// The path, e.g. `/api/v1/namespaces/ephem-1a2b3c4d-1`.
    pub path: String,
    /// The raw query string, e.g. `labelSelector=...`; empty without one.
    pub query: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body as text; empty without one.
    pub body: String,
}

impl RecordedRequest {
    /// A query parameter, decoded.
    pub fn param(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// `DELETE /api/v1/namespaces/x`: for messages and asserts.
    pub fn line(&self) -> String {
        if self.query.is_empty() {
            format!("{} {}", self.method, self.path)
        } else {
            format!("{} {}?{}", self.method, self.path, self.query)
        }
    }
}

/// What handlers and controls share: the state, and a tick that wakes
/// watches and followed logs after every change.
pub(crate) struct Shared {
    state: Mutex<store::State>,
    tick: tokio::sync::watch::Sender<u64>,
    /// Raised to make every watch that allows bookmarks send one now.
    bookmark: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn new(token: String) -> Shared {
        Shared {
            state: Mutex::new(store::State::new(token)),
            tick: tokio::sync::watch::Sender::new(0),
            bookmark: tokio::sync::watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, store::State> {
        // A panicking test thread must not take the server down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the state.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&store::State) -> R) -> R {
        f(&self.lock())
    }

    /// Changes the state and wakes every watch and followed log.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut store::State) -> R) -> R {
        let result = f(&mut self.lock());
        self.tick.send_modify(|t| *t += 1);
        result
    }
}

/// How the server runs, and so how it stops.
enum Runner {
    /// On the caller's runtime; aborting the accept task drops every connection.
    Task(tokio::task::JoinHandle<()>),
    /// On a thread with its own runtime.
    Thread {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

/// A running stand-in; stops when dropped.
pub struct StandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    runner: Runner,
}

impl StandIn {
    /// Starts on 127.0.0.1 at a free port, on the current tokio runtime.
    pub async fn start() -> io::Result<StandIn> {
        let shared = Arc::new(Shared::new(new_token()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(server::serve(listener, shared.clone()));
        Ok(StandIn {
            shared,
            addr,
            runner: Runner::Task(task),
        })
    }

    /// Starts on a thread of its own with its own runtime: for tests without
    /// a runtime, e.g. those that run the CLI binary against it.
    pub fn start_blocking() -> io::Result<StandIn> {
        let shared = Arc::new(Shared::new(new_token()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kube-stand-in".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = server::serve(listener, served) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(StandIn {
            shared,
            addr,
            runner: Runner::Thread {
                stop: Some(stop),
                thread: Some(thread),
            },
        })
    }

    /// `http://127.0.0.1:PORT`: the cluster's server URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token it accepts (random per stand-in).
    pub fn token(&self) -> String {
        self.shared.read(|s| s.token.clone())
    }

    /// Accepts only `token` from now on: kubeconfigs written before get 401.
    pub fn set_token(&self, token: &str) {
        self.shared.write(|s| s.token = token.to_owned());
    }

    /// A kubeconfig with one cluster (this server), one user (its token) and
    /// one context named `context`, which is also the current context.
    pub fn kubeconfig(&self, context: &str) -> String {
        kubeconfig::yaml(context, &self.url(), &self.token())
    }

    /// Writes [`kubeconfig`](Self::kubeconfig) to `path`.
    pub fn write_kubeconfig(&self, path: &Path, context: &str) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig(context))
    }

    /// Like [`write_kubeconfig`](Self::write_kubeconfig), with the
    /// context's namespace `namespace` instead of `default`.
    pub fn write_kubeconfig_in(
        &self,
        path: &Path,
        context: &str,
        namespace: &str,
    ) -> io::Result<()> {
        let text = kubeconfig::yaml(context, &self.url(), &self.token()).replace(
            "    namespace: default\n",
            &format!("    namespace: {}\n", serde_json::json!(namespace)),
        );
        std::fs::write(path, text)
    }

    /// Applies RBAC manifests (a YAML stream, as `kubectl apply -f` takes
    /// it): from now on [`USER`] may do only what the Roles and
    /// ClusterRoles bound to it grant, where their bindings say.
    pub fn apply_rbac(&self, manifests: &str) -> Result<(), String> {
        let grants = rbac::grants_for(manifests, USER)?;
        self.shared.write(|s| s.rbac = Some(grants));
        Ok(())
    }

    /// Every authorization decision so far, in order: what was asked (verb,
    /// group, resource, namespace, name), and whether it was granted.
    pub fn accesses(&self) -> Vec<(rbac::Access, bool)> {
        self.shared.read(|s| s.accesses.clone())
    }

    /// Answers `verb` on `resource` (e.g. `create`, `namespaces`; `get`,
    /// `pods/log`; `*` for any) with 403 from now on, worded like RBAC.
    pub fn forbid(&self, verb: &str, resource: &str) {
        self.shared
            .write(|s| s.forbidden.push((verb.to_owned(), resource.to_owned())));
    }

    /// Lifts every [`forbid`](Self::forbid).
    pub fn allow_all(&self) {
        self.shared.write(|s| s.forbidden.clear());
    }

    /// What happens to namespaces deleted from now on (default: removed at
    /// once after the DELETE's answer, `After(0)`).
    pub fn set_deletion(&self, deletion: NamespaceDeletion) {
        self.shared.write(|s| s.deletion = deletion);
    }

    /// Delays every answer by `latency`, e.g. to test a client's deadline.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.write(|s| s.latency = latency);
    }

    /// Every namespace, in name order, as stored.
    pub fn namespaces(&self) -> Vec<Value> {
        self.shared.read(|s| s.all(resources::namespaces(), None))
    }

    /// One namespace, as stored.
    pub fn namespace(&self, name: &str) -> Option<Value> {
        self.shared
            .read(|s| s.get(resources::namespaces(), None, name).ok())
    }

    /// The objects of `resource` (plural, e.g. `pods`) in namespace `ns`.
    ///
    /// Panics on a resource the stand-in does not serve.
    pub fn objects(&self, ns: &str, resource: &str) -> Vec<Value> {
        let res = resource_named(resource);
        self.shared.read(|s| s.all(res, Some(ns)))
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.read(|s| s.requests.clone())
    }

    /// Forgets the requests so far.
    pub fn clear_requests(&self) {
        self.shared.write(|s| s.requests.clear());
    }

    /// Plants a namespace as given (labels, annotations, an old
    /// `creationTimestamp`, a `deletionTimestamp` and `status.conditions` for
    /// a stuck one...), filling in only what is missing. Returns it as stored.
    pub fn insert_namespace(&self, namespace: Value) -> Value {
        self.shared
            .write(|s| s.insert(resources::namespaces(), None, namespace))
    }

    /// Plants an object of `resource` in namespace `ns` (which need not exist).
    pub fn insert_object(&self, ns: &str, resource: &str, object: Value) -> Value {
        let res = resource_named(resource);
        self.shared.write(|s| s.insert(res, Some(ns), object))
    }

    /// Changes a stored object as a controller would; watches see MODIFIED.
    /// `ns` is None for namespaces. `None` if there is no such object.
    pub fn update_object(
        &self,
        ns: Option<&str>,
        resource: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let res = resource_named(resource);
        self.shared.write(|s| s.update(res, ns, name, change))
    }

    /// Merges `status` into a pod's status (e.g. `{"phase": "Running",
    /// "conditions": [{"type": "Ready", "status": "True"}]}`), as the kubelet
    /// would; watches see MODIFIED. False if there is no such pod.
    pub fn set_pod_status(&self, ns: &str, pod: &str, status: Value) -> bool {
        self.update_object(Some(ns), "pods", pod, |p| {
            merge_patch(&mut p["status"], &status)
        })
        .is_some()
    }

    /// Appends `text` to a pod's log (what `pods/{name}/log` serves and follows).
    pub fn append_pod_log(&self, ns: &str, pod: &str, text: &str) {
        self.shared.write(|s| s.append_log(ns, pod, text));
    }

    /// Runs pods created through the API from now on by `lifecycle`, as a
    /// cluster's scheduler, kubelet and DaemonSet controller would.
    pub fn set_lifecycle(&self, lifecycle: Lifecycle) {
        self.shared.write(|s| s.lifecycle = Some(lifecycle));
    }

    /// Relays port-forwards to port `port` of pod `pod` (in `namespace`,
    /// or of that name in any namespace when None) to `target`: the local
    /// server that plays the pod's port.
    pub fn forward(&self, namespace: Option<&str>, pod: &str, port: u16, target: SocketAddr) {
        self.shared.write(|s| {
            s.forwards.push(store::Forward {
                namespace: namespace.map(str::to_owned),
                pod: pod.to_owned(),
                port,
                target,
            })
        });
    }

    /// Ends every open watch, as an API server restart would; clients must
    /// resume from their last resourceVersion.
    pub fn end_watches(&self) {
        self.shared.write(|s| s.watch_epoch += 1);
    }

    /// Keeps only the last `changes` changes for watches to resume from (etcd
    /// compacts; the watch cache is bounded): a watch from an older
    /// resourceVersion ends with a 410 `Expired` ERROR event, and its client
    /// must list again.
    pub fn set_watch_history(&self, changes: usize) {
        self.shared.write(|s| s.history_limit = changes.max(1));
    }

    /// Watches that allow bookmarks get one every `interval` (the API server
    /// sends them about once a minute, the default); None: only on
    /// [`bookmark_watches`](Self::bookmark_watches). Applies to watches
    /// started from now on.
    pub fn set_bookmark_interval(&self, interval: Option<Duration>) {
        self.shared.write(|s| s.bookmark_interval = interval);
    }

    /// Makes every open watch that allows bookmarks send one now, carrying
    /// the resourceVersion it has reached.
    pub fn bookmark_watches(&self) {
        self.shared.bookmark.send_modify(|b| *b += 1);
    }

    /// The Pod Security level of namespaces without an `enforce` label, as a
    /// cluster's admission configuration sets it (default: `privileged`).
    pub fn set_pod_security_default(&self, level: PodSecurityLevel) {
        self.shared.write(|s| s.admission.default_level = level);
    }

    /// Plays a validating admission webhook that denies every matching create.
    pub fn deny_with_webhook(&self, webhook: Webhook) {
        self.shared.write(|s| s.admission.webhooks.push(webhook));
    }

    /// Namespaces created through the API from now on get their `default`
    /// ServiceAccount `delay` after their creation (default: at once); pods
    /// created before are refused, as the ServiceAccount plugin refuses them.
    pub fn set_service_account_delay(&self, delay: Duration) {
        self.shared
            .write(|s| s.admission.service_account_delay = delay);
    }

    /// Deletes a namespace as a DELETE through the API followed by the
    /// namespace controller's pass would: Terminating at once, its objects
    /// deleted, and those with finalizers holding it Terminating with the
    /// controller's conditions. False if there is none, or it is already
    /// Terminating.
    pub fn delete_namespace(&self, name: &str) -> bool {
        self.shared.write(|s| {
            let Ok(deleted) = s.delete(resources::namespaces(), None, name, &json!({})) else {
                return false;
            };
            let uid = deleted["metadata"]["uid"].as_str().unwrap_or("").to_owned();
            s.finish_namespace_deletion(name, &uid);
            true
        })
    }

    /// Removes a namespace and everything in it at once, as the end of its
    /// deletion would. False if there is none.
    pub fn remove_namespace(&self, name: &str) -> bool {
        self.shared
            .write(|s| s.remove(resources::namespaces(), None, name))
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        match &mut self.runner {
            Runner::Task(task) => task.abort(),
            Runner::Thread { stop, thread } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
        }
    }
}

fn resource_named(plural: &str) -> &'static resources::Resource {
    resources::by_plural(plural).unwrap_or_else(|| {
        panic!("the stand-in does not serve {plural:?}; add it to resources::RESOURCES")
    })
}

fn new_token() -> String {
    format!("stand-in-{}", uuid::Uuid::new_v4().simple())
}
