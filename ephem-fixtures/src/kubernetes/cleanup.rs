//! The Kubernetes backend's safety-net side: the namespaces of cargo-ephem
//! runs (found by the managed-by label alone, so every version's are), their
//! deletion, and a live run's expiry in kube-janitor's annotations.
//!
//! Every DELETE carries the namespace's uid as a precondition, so a
//! namespace re-created under the same name between a list and a delete is
//! never deleted by mistake; a failed precondition is reported, never
//! retried without it. A namespace already Terminating is never deleted
//! again: it is reported with how long it has been at it and the conditions
//! that hold it, never force-finalized (`/finalize` would leak whatever is
//! still inside).
//!
//! On a cluster the expiry is what tells a live run from an abandoned one
//! ([`Liveness::Expiry`]): runners come and go (a CI job's pod has a new
//! hostname every job, and its reaper dies with it), so a run that stopped
//! pushing its `janitor/expires` forward is abandoned, whichever host made it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::wait::{await_condition, conditions, Condition};
use kube::runtime::watcher;
use kube::Api;
use serde_json::json;
use tokio::time::Instant;

use super::backend::{code, within};
use super::client::{self, api_error, ApiCall, Cluster};
use super::labels;
use crate::cleanup::{describe_holding, Removal, Terminating};
use crate::sweep::Liveness;
use crate::{Cleanup, EnvError, ResourceKind, RunResource};

pub use crate::cleanup::{HoldingCondition, STUCK_AFTER};

/// Passes of [`Cleanup::remove_run`], as offsets from its start: a namespace
/// whose create request was in flight when the runner died appears later.
const REAP_PASSES: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// All of [`Cleanup::remove_run`] finishes within this, however slow the API.
const REAP_BUDGET: Duration = Duration::from_secs(8);

/// Namespaces deleted or patched at once.
const CONCURRENCY: usize = 8;

/// Page size when listing namespaces.
const PAGE: u32 = 500;

/// Lists, deletes and renews the namespaces of cargo-ephem runs on one cluster.
#[derive(Clone, Debug)]
pub struct KubernetesCleanup {
    cluster: Cluster,
    address: String,
}

impl KubernetesCleanup {
    /// Connects like [`client::connect`] (kubeconfig with `context` or its
    /// current one, else the pod's service account; within 5 s).
    pub async fn connect(context: Option<&str>) -> Result<KubernetesCleanup, EnvError> {
        Ok(KubernetesCleanup::new(client::connect(context).await?))
    }

    /// The safety nets of a cluster already reached.
    pub fn new(cluster: Cluster) -> KubernetesCleanup {
        let address = cluster.address();
        KubernetesCleanup { cluster, address }
    }

    /// The cluster, for diagnostics and tests.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    fn namespaces(&self) -> Api<Namespace> {
        Api::all(self.cluster.client.clone())
    }

    /// Every namespace matching `selector` (always within the managed-by
    /// label), all pages.
    async fn list_selected(&self, selector: &str) -> Result<Vec<Namespace>, EnvError> {
        let api = self.namespaces();
        let mut found = Vec::new();
        let mut params = ListParams::default().labels(selector).limit(PAGE);
        loop {
            let page = within(api.list(&params)).await.map_err(|e| {
                api_error(&e, ApiCall::cluster("list", "namespaces"), &self.address)
            })?;
            found.extend(page.items);
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(found),
            }
        }
    }

    /// Deletes one listed namespace by uid; `Err` holds a one-line reason.
    async fn remove_one(&self, resource: &RunResource) -> Result<(), String> {
        if resource.kind != ResourceKind::Namespace {
            return Err(format!("a {} is not a Kubernetes resource", resource.kind));
        }
        let api = self.namespaces();
        let name = resource.name.as_str();
        match within(api.delete(name, &delete_params(&resource.id))).await {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some(404) => Ok(()),
            Err(e) if code(&e) == Some(409) => self.explain_conflict(name, &resource.id, &e).await,
            Err(e) => Err(self.delete_error(&e, name).to_string()),
        }
    }

    /// A 409 on delete: gone meanwhile (fine), re-created under the same
    /// name (left alone), already being deleted (fine, unless stuck), or
    /// something else (the API's words).
    async fn explain_conflict(
        &self,
        name: &str,
        uid: &str,
        conflict: &kube::Error,
    ) -> Result<(), String> {
        let now = match within(self.namespaces().get_opt(name)).await {
            Ok(None) => return Ok(()),
            Ok(Some(ns)) => ns,
            Err(e) => return Err(self.get_error(&e, name).to_string()),
        };
        let now_uid = now.metadata.uid.as_deref().unwrap_or("");
        if now_uid != uid {
            return Err(format!(
                "namespace {name} was re-created after it was listed (uid {now_uid}, listed as {uid}); left alone: it is not the one that was judged abandoned"
            ));
        }
        match terminating_for(&now) {
            Some(age) if age >= STUCK_AFTER => {
                Err(stuck_message(name, age, &holding_conditions(&now)))
            }
            Some(_) => Ok(()),
            None => Err(self.delete_error(conflict, name).to_string()),
        }
    }

    /// One pass of [`Cleanup::remove_run`]: the run's namespaces not yet
    /// handled and not already Terminating (never deleted twice).
    async fn reap_pass(
        &self,
        run_id: &str,
        handled: &HashSet<String>,
    ) -> Result<Vec<Removal>, EnvError> {
        let found: Vec<RunResource> = self
            .list_selected(&labels::run_selector(run_id))
            .await?
            .iter()
            .filter_map(run_resource)
            .filter(|r| r.terminating.is_none() && !handled.contains(&r.id))
            .collect();
        Ok(self.remove(&found).await)
    }

    /// Sets the run's expiry on one namespace: `janitor/expires`, a
    /// `janitor/ttl` that ends at the same instant, and the keep mark.
    async fn renew_one(
        &self,
        ns: &Namespace,
        expires_at: SystemTime,
        keep: bool,
    ) -> Result<(), EnvError> {
        let name = ns.metadata.name.as_deref().unwrap_or("");
        let created = ns
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(system_time)
            .unwrap_or_else(SystemTime::now);
        let patch = json!({"metadata": {
            // A uid in a patch is a precondition: a namespace re-created
            // under this name is not renewed.
            "uid": ns.metadata.uid,
            "annotations": {
                labels::JANITOR_EXPIRES: labels::janitor_expires(expires_at),
                labels::JANITOR_TTL: labels::janitor_ttl(created, expires_at),
                labels::KEEP: if keep { Some("true") } else { None },
            },
        }});
        match within(
            self.namespaces()
                .patch(name, &PatchParams::default(), &Patch::Merge(patch)),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some(404) => Ok(()),
            Err(e) => Err(api_error(
                &e,
                ApiCall::namespaced("patch", "namespaces", name),
                &self.address,
            )),
        }
    }

    fn delete_error(&self, e: &kube::Error, name: &str) -> EnvError {
        api_error(
            e,
            ApiCall::namespaced("delete", "namespaces", name),
            &self.address,
        )
    }

    fn get_error(&self, e: &kube::Error, name: &str) -> EnvError {
        api_error(
            e,
            ApiCall::namespaced("get", "namespaces", name),
            &self.address,
        )
    }
}

#[async_trait::async_trait]
impl Cleanup for KubernetesCleanup {
    fn backend(&self) -> &str {
        "kubernetes"
    }

    fn address(&self) -> &str {
        &self.address
    }

    /// The expiry, whatever the host: see the module's documentation.
    fn liveness(&self) -> Liveness {
        Liveness::Expiry
    }

    /// Namespaces labelled managed-by cargo-ephem that carry a run label.
    async fn list(&self) -> Result<Vec<RunResource>, EnvError> {
        let found = self.list_selected(&labels::managed_selector()).await?;
        Ok(found.iter().filter_map(run_resource).collect())
    }

    /// Deletes each namespace by uid with Background propagation, several at
    /// once; one result per resource, in the order given.
    async fn remove(&self, resources: &[RunResource]) -> Vec<Removal> {
        // Owned items: a closure over borrowed ones is not Send enough for
        // async_trait's boxed future.
        stream::iter(resources.to_vec())
            .map(|r| async move {
                let result = self.remove_one(&r).await;
                (r, result)
            })
            .buffered(CONCURRENCY)
            .collect()
            .await
    }

    /// Deletes the run's namespaces in passes at 0 s, ~1 s and ~3 s (stopping
    /// after two empty ones), so that one whose create request was in flight
    /// is caught too; all within 8 s. Deletion is begun, not waited for;
    /// namespaces already Terminating are left to finish (not counted).
    async fn remove_run(&self, run_id: &str) -> Result<usize, EnvError> {
        let start = Instant::now();
        let deadline = start + REAP_BUDGET;
        let mut handled = HashSet::new();
        let mut failures: BTreeMap<String, String> = BTreeMap::new();
        let mut empty_passes = 0;
        for offset in REAP_PASSES {
            if empty_passes == 2 {
                break;
            }
            tokio::time::sleep_until(start + offset).await;
            let results = match tokio::time::timeout_at(deadline, self.reap_pass(run_id, &handled)).await {
                Ok(results) => results?,
                Err(_) => {
                    return Err(EnvError::Other(format!(
                        "reaping run {run_id}: {} did not answer within {}s (began deleting {}); run `cargo ephem gc --backend kubernetes` later to finish",
                        self.address,
                        REAP_BUDGET.as_secs(),
                        handled.len()
                    )))
                }
            };
            empty_passes = if results.is_empty() {
                empty_passes + 1
            } else {
                0
            };
            for (resource, result) in results {
                match result {
                    Ok(()) => {
                        failures.remove(&resource.name);
                        handled.insert(resource.id);
                    }
                    Err(reason) => {
                        failures.insert(resource.name, reason);
                    }
                }
            }
        }
        if failures.is_empty() {
            return Ok(handled.len());
        }
        Err(EnvError::Other(format!(
            "reaping run {run_id}: began deleting {} namespace(s), but {}",
            handled.len(),
            failures.into_values().collect::<Vec<_>>().join("; ")
        )))
    }

    /// Merge-patches every namespace of the run (annotations can change, so
    /// no lease objects are needed).
    async fn renew(
        &self,
        run_id: &str,
        expires_at: SystemTime,
        keep: bool,
    ) -> Result<(), EnvError> {
        let found = self.list_selected(&labels::run_selector(run_id)).await?;
        let live: Vec<Namespace> = found
            .into_iter()
            .filter(|ns| ns.metadata.deletion_timestamp.is_none())
            .collect();
        let results: Vec<Result<(), EnvError>> = stream::iter(live)
            .map(|ns| async move { self.renew_one(&ns, expires_at, keep).await })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Nothing to drop: the expiry lives on the namespaces themselves.
    async fn end_run(&self, _run_id: &str) -> Result<(), EnvError> {
        Ok(())
    }
}

/// How a namespace's deletion stood when [`delete_namespace`] stopped waiting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeletionOutcome {
    /// Gone (or replaced by another namespace of the same name).
    Gone,
    /// Still Terminating; the conditions that hold it, if any say so.
    StillTerminating(Vec<HoldingCondition>),
}

/// Deletes namespace `name` if it still has `uid` (Background propagation)
/// and waits up to `wait` for it to be gone (kube's `await_condition` with
/// `is_deleted`: one watch, no polling). A namespace still Terminating then
/// is an outcome, not an error: the run goes on and reports it.
pub async fn delete_namespace(
    cluster: &Cluster,
    name: &str,
    uid: &str,
    wait: Duration,
) -> Result<DeletionOutcome, EnvError> {
    let deadline = Instant::now() + wait;
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    let address = cluster.address();
    let refused = match within(api.delete(name, &delete_params(uid))).await {
        Ok(_) => false,
        Err(e) if code(&e) == Some(404) => return Ok(DeletionOutcome::Gone),
        // Already Terminating, or re-created: the wait below tells which.
        Err(e) if code(&e) == Some(409) => true,
        Err(e) => {
            return Err(api_error(
                &e,
                ApiCall::namespaced("delete", "namespaces", name),
                &address,
            ))
        }
    };
    let seen = wait_for_deletion(&api, name, uid, refused, deadline)
        .await
        .map_err(|(verb, e)| api_error(&e, ApiCall::cluster(verb, "namespaces"), &address))?;
    let ns = match seen {
        Some(seen) => seen,
        // Nothing heard before the deadline: ask once.
        None => within(api.get_opt(name))
            .await
            .map_err(|e| api_error(&e, ApiCall::namespaced("get", "namespaces", name), &address))?,
    };
    match ns {
        Some(ns) if ns.metadata.uid.as_deref() == Some(uid) => {
            if ns.metadata.deletion_timestamp.is_none() {
                return Err(EnvError::Other(format!(
                    "namespace {name} at {address} refused deletion and is still Active; delete it with `kubectl delete namespace {name}`"
                )));
            }
            Ok(DeletionOutcome::StillTerminating(holding_conditions(&ns)))
        }
        // Gone, or another namespace under the name: ours is gone.
        _ => Ok(DeletionOutcome::Gone),
    }
}

/// Watches namespace `name` until it no longer has `uid` (or, after a
/// refused delete, is seen Active with it) or `deadline` passes. Returns
/// what was last seen: `Some(None)` gone, `None` nothing heard. A broken
/// watch is resumed; a refusal (403) is the error, with the verb refused.
async fn wait_for_deletion(
    api: &Api<Namespace>,
    name: &str,
    uid: &str,
    refused: bool,
    deadline: Instant,
) -> Result<Option<Option<Namespace>>, (&'static str, kube::Error)> {
    let last: Mutex<Option<Option<Namespace>>> = Mutex::new(None);
    let gone = conditions::is_deleted::<Namespace>(uid);
    let settled = |ns: Option<&Namespace>| {
        *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(ns.cloned());
        // After a refused delete, an Active namespace with our uid will not go.
        gone.matches_object(ns)
            || (refused && ns.is_some_and(|n| n.metadata.deletion_timestamp.is_none()))
    };
    loop {
        let waited =
            tokio::time::timeout_at(deadline, await_condition(api.clone(), name, &settled)).await;
        match waited {
            Ok(Err(kube::runtime::wait::Error::ProbeFailed(e))) => {
                if let Some(denied) = forbidden(e) {
                    return Err(denied);
                }
                if Instant::now() + Duration::from_millis(500) >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Ok(_)) | Err(_) => break,
        }
    }
    Ok(last.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// A watch failure that is a refusal, with the verb refused.
fn forbidden(e: watcher::Error) -> Option<(&'static str, kube::Error)> {
    let (verb, err) = match e {
        watcher::Error::InitialListFailed(err) => ("list", err),
        watcher::Error::WatchStartFailed(err) | watcher::Error::WatchFailed(err) => ("watch", err),
        _ => return None,
    };
    matches!(code(&err), Some(401 | 403)).then_some((verb, err))
}

/// DeleteOptions of every delete: this uid only, dependents in the background.
fn delete_params(uid: &str) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    }
}

/// The namespace as a resource of its run; None without the managed-by and
/// run labels or a uid (such a namespace is never touched). Unparsable
/// labels and annotations read as missing: the sweep judges what it can.
pub fn run_resource(ns: &Namespace) -> Option<RunResource> {
    let meta = &ns.metadata;
    let labels = meta.labels.as_ref()?;
    if labels.get(labels::MANAGED_BY).map(String::as_str) != Some(labels::MANAGED_BY_VALUE) {
        return None;
    }
    let empty = BTreeMap::new();
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    let number = |map: &BTreeMap<String, String>, key: &str| {
        map.get(key).and_then(|v| v.trim().parse::<u64>().ok())
    };
    let created = meta.creation_timestamp.as_ref().and_then(system_time);
    Some(RunResource {
        kind: ResourceKind::Namespace,
        id: meta.uid.clone()?,
        name: meta.name.clone()?,
        run: labels.get(labels::RUN)?.clone(),
        shard: number(labels, labels::SHARD).and_then(|n| u32::try_from(n).ok()),
        pid: number(annotations, labels::PID).and_then(|n| u32::try_from(n).ok()),
        pid_start: number(annotations, labels::PID_START),
        host: annotations
            .get(labels::HOSTNAME)
            .or_else(|| labels.get(labels::HOST))
            .cloned(),
        expires: expiry(annotations, created),
        created,
        lease: false,
        kept: annotations.get(labels::KEEP).is_some_and(|v| v != "false"),
        workspace: None,
        terminating: meta
            .deletion_timestamp
            .as_ref()
            .and_then(system_time)
            .map(|since| Terminating {
                since,
                holding: holding_conditions(ns),
            }),
    })
}

/// `janitor/expires`, else creation + `janitor/ttl` (what kube-janitor
/// would go by), in unix seconds.
fn expiry(annotations: &BTreeMap<String, String>, created: Option<SystemTime>) -> Option<u64> {
    if let Some(at) = annotations.get(labels::JANITOR_EXPIRES) {
        return labels::parse_janitor_expires(at);
    }
    let ttl = parse_janitor_ttl(annotations.get(labels::JANITOR_TTL)?)?;
    Some(labels::unix_secs(created?) + ttl.as_secs())
}

/// `<int><s|m|h|d|w>`, as kube-janitor reads `janitor/ttl`; `forever` and
/// anything else are None.
fn parse_janitor_ttl(text: &str) -> Option<Duration> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let n: u64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return None,
    };
    n.checked_mul(secs).map(Duration::from_secs)
}

/// The conditions that hold (status True) a Terminating namespace.
pub fn holding_conditions(ns: &Namespace) -> Vec<HoldingCondition> {
    ns.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.status == "True")
        .map(|c| HoldingCondition {
            type_: c.type_.clone(),
            message: c
                .message
                .clone()
                .unwrap_or_else(|| c.reason.clone().unwrap_or_default()),
        })
        .collect()
}

/// How long the namespace has been Terminating; None if it is not.
fn terminating_for(ns: &Namespace) -> Option<Duration> {
    let since = system_time(ns.metadata.deletion_timestamp.as_ref()?)?;
    Some(
        SystemTime::now()
            .duration_since(since)
            .unwrap_or(Duration::ZERO),
    )
}

fn stuck_message(name: &str, age: Duration, holding: &[HoldingCondition]) -> String {
    let why = describe_holding(holding, "no condition says why");
    format!(
        "namespace {name} has been Terminating for {}: {why}; not force-finalized (that would leak what is inside): remove what holds it (`kubectl get namespace {name} -o yaml`)",
        crate::sweep::approximate(age.as_secs())
    )
}

fn system_time(time: &Time) -> Option<SystemTime> {
    let secs = u64::try_from(time.0.as_second()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(value: serde_json::Value) -> Namespace {
        serde_json::from_value(value).expect("a namespace")
    }

    #[test]
    fn every_label_and_annotation_is_read() {
        let ns = namespace(json!({"metadata": {
            "name": "ephem-1a2b3c4d-2", "uid": "u-1",
            "creationTimestamp": "2024-05-01T10:00:00Z",
            "labels": {
                labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
                labels::RUN: "1a2b3c4d-run", labels::SHARD: "2", labels::HOST: "build-1",
            },
            "annotations": {
                labels::PID: "4242", labels::PID_START: "777", labels::HOSTNAME: "build-1.example",
                labels::JANITOR_EXPIRES: "2024-05-01T10:30:00Z", labels::KEEP: "true",
            },
        }}));
        let r = run_resource(&ns).expect("a run's namespace");
        assert_eq!(
            r,
            RunResource {
                kind: ResourceKind::Namespace,
                id: "u-1".into(),
                name: "ephem-1a2b3c4d-2".into(),
                run: "1a2b3c4d-run".into(),
                shard: Some(2),
                pid: Some(4242),
                pid_start: Some(777),
                host: Some("build-1.example".into()),
                expires: Some(1_714_559_400),
                created: Some(UNIX_EPOCH + Duration::from_secs(1_714_557_600)),
                lease: false,
                kept: true,
                workspace: None,
                terminating: None,
            }
        );
    }

    #[test]
    fn without_the_managed_by_label_or_a_run_it_is_not_ours() {
        let foreign = namespace(
            json!({"metadata": {"name": "prod", "uid": "u", "labels": {labels::RUN: "r"}}}),
        );
        assert_eq!(run_resource(&foreign), None);
        let runless = namespace(json!({"metadata": {"name": "x", "uid": "u",
            "labels": {labels::MANAGED_BY: labels::MANAGED_BY_VALUE}}}));
        assert_eq!(run_resource(&runless), None);
    }

    #[test]
    fn a_ttl_counts_from_creation_when_there_is_no_expires() {
        let ns = namespace(json!({"metadata": {"name": "x", "uid": "u",
            "creationTimestamp": "2024-05-01T10:00:00Z",
            "labels": {labels::MANAGED_BY: labels::MANAGED_BY_VALUE, labels::RUN: "r"},
            "annotations": {labels::JANITOR_TTL: "30m", labels::PID: "not a pid"}}}));
        let r = run_resource(&ns).unwrap();
        assert_eq!(r.expires, Some(1_714_557_600 + 1800));
        assert_eq!((r.pid, r.host, r.kept), (None, None, false));
        assert_eq!(
            parse_janitor_ttl("2w"),
            Some(Duration::from_secs(1_209_600))
        );
        assert_eq!(parse_janitor_ttl("forever"), None);
        assert_eq!(parse_janitor_ttl("10x"), None);
        assert_eq!(parse_janitor_ttl(""), None);
    }

    #[test]
    fn only_conditions_that_hold_are_reported() {
        let ns = namespace(
            json!({"metadata": {"name": "x"}, "status": {"phase": "Terminating", "conditions": [
                {"type": "NamespaceDeletionDiscoveryFailure", "status": "False", "reason": "ResourcesDiscovered", "message": "All resources successfully discovered"},
                {"type": "NamespaceFinalizersRemaining", "status": "True", "reason": "SomeFinalizersRemain", "message": "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"},
            ]}}),
        );
        let holding = holding_conditions(&ns);
        assert_eq!(holding.len(), 1);
        assert_eq!(
            holding[0].to_string(),
            "NamespaceFinalizersRemaining: Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
        );
    }

    #[test]
    fn every_delete_carries_the_uid_and_background_propagation() {
        let body = serde_json::to_value(delete_params("u-1")).unwrap();
        assert_eq!(
            body,
            json!({"propagationPolicy": "Background", "preconditions": {"uid": "u-1"}})
        );
    }
}
