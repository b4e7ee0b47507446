//! [`KubernetesBackend`]: the [`Backend`] that gives every shard a namespace
//! of its own. Provisioning is in [`super::provision`], readiness and
//! service deaths in [`super::readiness`], reaching the services in
//! [`super::forward`], the optional chart in [`super::helm`]; this module
//! holds what they share and the per-shard state teardown needs.

use std::collections::HashMap;
use std::ffi::OsString;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use tokio::task::AbortHandle;

use super::cleanup::{delete_namespace, DeletionOutcome, KubernetesCleanup};
use super::client::{self, api_error, ApiCall, Cluster};
use super::labels;
use crate::config::Reach;
use crate::{
    Backend, Cleanup, EnvError, EnvEvent, Environment, EphemConfig, EventSink, RunContext,
    ShardContext,
};

/// Each API request of provisioning and teardown; the client itself has no
/// read timeout (followed logs, watches and port-forwards share it).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long teardown waits for a namespace to be gone before it goes on
/// and reports it as still Terminating.
pub const DEFAULT_TEARDOWN_WAIT: Duration = Duration::from_secs(30);

/// Delays before each resumption of a broken pod watch (service deaths):
/// 5 tries over 30 s, as the Docker backend's event stream.
pub const DEFAULT_WATCH_RETRY: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(15),
];

/// Environments made of Kubernetes namespaces, one per shard.
pub struct KubernetesBackend {
    shared: Arc<Shared>,
    cleanup: Arc<KubernetesCleanup>,
}

/// What provisioning, readiness, port-forwards and teardown share.
pub(crate) struct Shared {
    pub cluster: Cluster,
    /// `server (context C)`, for messages.
    pub address: String,
    pub config: EphemConfig,
    pub events: EventSink,
    /// How the tests reach the services: never `Auto` here.
    pub reach: Reach,
    pub teardown_wait: Duration,
    pub watch_retry: Vec<Duration>,
    /// Where `helm` is looked for (a PATH value); None: `PATH`.
    pub helm_path: Option<OsString>,
    shards: Mutex<HashMap<(String, u32), ShardState>>,
}

/// What teardown needs of one shard: its namespace, and the tasks (port-
/// forward listeners, the pod watch) to stop first.
#[derive(Default)]
struct ShardState {
    namespace: Option<String>,
    /// None until the create answered; then teardown deletes by this uid.
    uid: Option<String>,
    tasks: Vec<AbortHandle>,
}

impl KubernetesBackend {
    /// Connects like kubectl (`[kubernetes] context`, else the current one;
    /// the pod's service account in a cluster) within 5 s.
    pub async fn connect(
        config: EphemConfig,
        events: EventSink,
    ) -> Result<KubernetesBackend, EnvError> {
        let cluster = client::connect(config.kubernetes.context.as_deref()).await?;
        Ok(Self::with_cluster(cluster, config, events))
    }

    /// Like [`connect`](Self::connect), through these kubeconfig files
    /// (merged in order) instead of `KUBECONFIG`.
    pub async fn connect_with(
        kubeconfigs: &[std::path::PathBuf],
        config: EphemConfig,
        events: EventSink,
    ) -> Result<KubernetesBackend, EnvError> {
        let cluster =
            client::connect_with(kubeconfigs, config.kubernetes.context.as_deref()).await?;
        Ok(Self::with_cluster(cluster, config, events))
    }

    /// The backend on a cluster already reached (tests, other callers).
    pub fn with_cluster(
        cluster: Cluster,
        config: EphemConfig,
        events: EventSink,
    ) -> KubernetesBackend {
        let reach = match config.kubernetes.reach {
            Reach::Auto if cluster.in_cluster => Reach::ClusterDns,
            Reach::Auto => Reach::PortForward,
            other => other,
        };
        KubernetesBackend {
            cleanup: Arc::new(KubernetesCleanup::new(cluster.clone())),
            shared: Arc::new(Shared {
                address: cluster.address(),
                cluster,
                config,
                events,
                reach,
                teardown_wait: DEFAULT_TEARDOWN_WAIT,
                watch_retry: DEFAULT_WATCH_RETRY.to_vec(),
                helm_path: None,
                shards: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// How long teardown waits for a namespace to go (default 30 s).
    pub fn with_teardown_wait(mut self, wait: Duration) -> Self {
        self.shared_mut().teardown_wait = wait;
        self
    }

    /// Delays before each resumption of a broken pod watch, after which
    /// service deaths are no longer reported (a warning says so).
    pub fn with_watch_retry(mut self, delays: Vec<Duration>) -> Self {
        self.shared_mut().watch_retry = delays;
        self
    }

    /// Looks for `helm` in this PATH value instead of `PATH`.
    pub fn with_helm_path(mut self, path: impl Into<OsString>) -> Self {
        self.shared_mut().helm_path = Some(path.into());
        self
    }

    /// How the tests reach the services (`Auto` resolved).
    pub fn reach(&self) -> Reach {
        self.shared.reach
    }

    /// The cluster, for diagnostics and tests.
    pub fn cluster(&self) -> &Cluster {
        &self.shared.cluster
    }

    /// The configuration this backend provisions.
    pub fn config(&self) -> &EphemConfig {
        &self.shared.config
    }

    fn shared_mut(&mut self) -> &mut Shared {
        Arc::get_mut(&mut self.shared).expect("configured before first use")
    }
}

impl Drop for KubernetesBackend {
    fn drop(&mut self) {
        let shards = std::mem::take(&mut *self.shared.lock());
        for state in shards.into_values() {
            state.tasks.iter().for_each(AbortHandle::abort);
        }
    }
}

#[async_trait::async_trait]
impl Backend for KubernetesBackend {
    fn name(&self) -> &str {
        "kubernetes"
    }

    fn address(&self) -> &str {
        &self.shared.address
    }

    /// With `[kubernetes] prepull`, pulls every image on every node once.
    async fn prepare(&self, run: &RunContext) -> Result<(), EnvError> {
        super::prepull::prepull(&self.shared, run).await
    }

    async fn provision(&self, shard: &ShardContext) -> Result<Environment, EnvError> {
        let env = super::provision::provision(&self.shared, shard).await?;
        if let Some(namespace) = self.shared.namespace_of(shard) {
            let watch = super::readiness::watch_deaths(&self.shared, &namespace, shard.shard);
            self.shared.add_task(shard, watch);
        }
        Ok(env)
    }

    /// Stops the shard's port-forwards and pod watch, then deletes its
    /// namespace (by uid, Background) and waits a bounded time; a namespace
    /// still Terminating then is a warning, not a failure.
    async fn teardown(&self, shard: &ShardContext) -> Result<(), EnvError> {
        let state = self.shared.forget(shard);
        state.tasks.iter().for_each(AbortHandle::abort);
        let name = state.namespace.unwrap_or_else(|| {
            labels::namespace_name(
                &self.shared.config.kubernetes.namespace_prefix,
                &shard.run.run_id,
                shard.shard,
            )
        });
        let uid = match state.uid {
            Some(uid) => uid,
            None => match self.shared.find_own_namespace(&name, shard).await? {
                Some(uid) => uid,
                None => return Ok(()),
            },
        };
        self.shared
            .delete_namespace(&name, &uid, Some(shard.shard))
            .await
    }

    fn cleanup(&self) -> Arc<dyn Cleanup> {
        self.cleanup.clone()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), ShardState>> {
        self.shards.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(shard: &ShardContext) -> (String, u32) {
        (shard.run.run_id.clone(), shard.shard)
    }

    /// Remembers the shard's namespace, and its uid once known.
    pub fn remember_namespace(&self, shard: &ShardContext, name: &str, uid: Option<&str>) {
        let mut shards = self.lock();
        let state = shards.entry(Self::key(shard)).or_default();
        state.namespace = Some(name.to_owned());
        if let Some(uid) = uid {
            state.uid = Some(uid.to_owned());
        }
    }

    /// A task that teardown stops (a port-forward listener, a watch).
    pub fn add_task(&self, shard: &ShardContext, task: AbortHandle) {
        self.lock()
            .entry(Self::key(shard))
            .or_default()
            .tasks
            .push(task);
    }

    fn namespace_of(&self, shard: &ShardContext) -> Option<String> {
        self.lock()
            .get(&Self::key(shard))
            .and_then(|s| s.namespace.clone())
    }

    fn forget(&self, shard: &ShardContext) -> ShardState {
        self.lock().remove(&Self::key(shard)).unwrap_or_default()
    }

    /// The uid of namespace `name` if it carries this run's and shard's
    /// labels: a namespace whose create answer was lost is still ours to
    /// delete, anything else is left alone.
    async fn find_own_namespace(
        &self,
        name: &str,
        shard: &ShardContext,
    ) -> Result<Option<String>, EnvError> {
        let api: Api<Namespace> = Api::all(self.cluster.client.clone());
        let found = self
            .bounded(
                api.get_opt(name),
                ApiCall::namespaced("get", "namespaces", name),
            )
            .await?;
        let Some(ns) = found else {
            return Ok(None);
        };
        let labels = ns.metadata.labels.unwrap_or_default();
        let ours = labels.get(labels::RUN) == Some(&labels::label_value(&shard.run.run_id))
            && labels.get(labels::SHARD) == Some(&shard.shard.to_string())
            && labels.get(labels::MANAGED_BY).map(String::as_str) == Some(labels::MANAGED_BY_VALUE);
        if !ours {
            let _ = self.events.send(EnvEvent::Warning {
                shard: Some(shard.shard),
                message: format!(
                    "namespace {name} does not carry run {}'s labels, so teardown left it alone",
                    shard.run.run_id
                ),
            });
            return Ok(None);
        }
        Ok(ns.metadata.uid)
    }

    /// Deletes a namespace of ours and waits up to the teardown wait; still
    /// Terminating then is reported as a warning with what holds it.
    pub async fn delete_namespace(
        &self,
        name: &str,
        uid: &str,
        shard: Option<u32>,
    ) -> Result<(), EnvError> {
        match delete_namespace(&self.cluster, name, uid, self.teardown_wait).await? {
            DeletionOutcome::Gone => Ok(()),
            DeletionOutcome::StillTerminating(holding) => {
                let why = crate::cleanup::describe_holding(&holding, "no condition says why yet");
                let _ = self.events.send(EnvEvent::Warning {
                    shard,
                    message: format!(
                        "namespace {name} is still Terminating after {} ({why}); the cluster finishes deleting it on its own (`kubectl {}get namespace {name} -o yaml` shows what holds it)",
                        humantime::format_duration(self.teardown_wait),
                        self.context_flag()
                    ),
                });
                Ok(())
            }
        }
    }

    /// `--context C ` for kubectl commands in messages; nothing in a pod.
    pub fn context_flag(&self) -> String {
        if self.cluster.in_cluster {
            String::new()
        } else {
            format!("--context {} ", self.cluster.context)
        }
    }

    /// One API request within [`REQUEST_TIMEOUT`], its error as one line
    /// naming `call`.
    pub async fn bounded<T>(
        &self,
        request: impl Future<Output = Result<T, kube::Error>>,
        call: ApiCall<'_>,
    ) -> Result<T, EnvError> {
        within(request)
            .await
            .map_err(|e| api_error(&e, call, &self.address))
    }
}

/// Runs one API request within [`REQUEST_TIMEOUT`]; running out reads as a
/// transport failure.
pub(crate) async fn within<T>(
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result,
        Err(_) => Err(kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
        )))),
    }
}

/// The HTTP status of a failed request, if the API answered.
pub(crate) fn code(err: &kube::Error) -> Option<u16> {
    client::status_of(err).map(|s| s.code)
}
