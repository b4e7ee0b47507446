//! One shard's namespace, from its rendered objects: the namespace (its uid
//! kept for teardown), the ResourceQuota, LimitRange and Secret, the image
//! pull secrets, then each service's Service and pod in dependency order
//! (independent ones concurrently), each waited for within its startup
//! timeout; the Helm chart once they are ready; then how the tests reach
//! them (port-forwards, or Services' full DNS names). The run's prepull
//! DaemonSet is [`super::prepull`]'s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use kube::api::PostParams;
use kube::Api;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{sleep, Instant};

use super::backend::{code, within, Shared};
use super::client::{api_error, status_of, ApiCall};
use super::denial::{self, Denial};
use super::forward;
use super::readiness::{self, NotReady, Subject};
use super::render::{render_shard, service_host, RenderContext, ServiceObjects, ShardObjects};
use crate::config::Reach;
use crate::template::{Bindings, Template, Var};
use crate::{EnvError, EnvEvent, Environment, ExportedVar, ShardContext};

/// Between retries of a pod refused because a new namespace is not quite
/// ready: its quota not yet counted, its `default` ServiceAccount not yet
/// made by the controller.
const NEW_NAMESPACE_PAUSE: Duration = Duration::from_millis(250);

/// `${host}` with port-forwards.
const LOOPBACK: &str = "127.0.0.1";

/// Creates the shard's namespace and services and returns once all are
/// ready, with the variables its tests get.
pub(crate) async fn provision(
    shared: &Shared,
    shard: &ShardContext,
) -> Result<Environment, EnvError> {
    let ctx = RenderContext::current(&shared.config);
    let mut secrets = Vec::new();
    let objects = render_shard(&shared.config, shard, &ctx, &mut secrets)
        .map_err(|e| EnvError::Other(format!("shard {}: {e}", shard.shard)))?;
    let ns = objects.namespace_name().to_owned();
    shared.remember_namespace(shard, &ns, None);
    let uid = create_namespace(shared, &objects.namespace).await?;
    shared.remember_namespace(shard, &ns, Some(&uid));
    create_in(shared, &ns, &objects.quota, "resourcequotas").await?;
    create_in(shared, &ns, &objects.limits, "limitranges").await?;
    if let Some(secret) = &objects.secret {
        create_in(shared, &ns, secret, "secrets").await?;
    }
    let labels = objects.quota.metadata.labels.clone().unwrap_or_default();
    copy_pull_secrets(shared, &ns, &labels, Some(shard.shard)).await?;
    start_all(shared, shard, &ns, &objects.services)
        .await
        .map_err(|e| e.masked(&secrets))?;
    let chart = match &shared.config.kubernetes.helm {
        Some(helm) => Some(
            super::helm::install(shared, shard, &ns, helm)
                .await
                .map_err(|e| e.masked(&secrets))?,
        ),
        None => None,
    };
    environment(shared, shard, &ns, &objects, chart.as_ref(), secrets).await
}

/// Creates a namespace; returns its uid.
pub(super) async fn create_namespace(
    shared: &Shared,
    namespace: &Namespace,
) -> Result<String, EnvError> {
    let name = namespace.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Namespace> = Api::all(shared.cluster.client.clone());
    let created = shared
        .bounded(
            api.create(&PostParams::default(), namespace),
            ApiCall::cluster("create", "namespaces"),
        )
        .await?;
    created.metadata.uid.ok_or_else(|| {
        EnvError::Other(format!(
            "the API server at {} created namespace {name} without a uid; it cannot be deleted safely, delete it with `kubectl delete namespace {name}`",
            shared.address
        ))
    })
}

/// Creates one object in namespace `ns`; `resource` names it in errors.
pub(super) async fn create_in<K>(
    shared: &Shared,
    ns: &str,
    object: &K,
    resource: &str,
) -> Result<K, EnvError>
where
    K: kube::Resource<Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(shared.cluster.client.clone(), ns);
    shared
        .bounded(
            api.create(&PostParams::default(), object),
            ApiCall::namespaced("create", resource, ns),
        )
        .await
}

/// Copies each `[kubernetes] image-pull-secrets` Secret from the context's
/// namespace (the kubeconfig context's, or the runner pod's) into `ns`. One
/// that is not there is left to the cluster's own policy, with a warning.
pub(super) async fn copy_pull_secrets(
    shared: &Shared,
    ns: &str,
    labels: &BTreeMap<String, String>,
    shard: Option<u32>,
) -> Result<(), EnvError> {
    let source = shared.cluster.client.default_namespace().to_owned();
    let from: Api<Secret> = Api::namespaced(shared.cluster.client.clone(), &source);
    for name in &shared.config.kubernetes.image_pull_secrets {
        let found = shared
            .bounded(
                from.get_opt(name),
                ApiCall::namespaced("get", "secrets", &source),
            )
            .await?;
        let Some(original) = found else {
            let _ = shared.events.send(EnvEvent::Warning {
                shard,
                message: format!(
                    "image pull secret {name} is not in namespace {source} (the context's namespace), so it was not copied into {ns}; pulls go without it unless the cluster's policy provides it (create it with `kubectl -n {source} create secret docker-registry {name} ...`)"
                ),
            });
            continue;
        };
        let copy = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.to_owned()),
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            },
            type_: original.type_,
            data: original.data,
            ..Secret::default()
        };
        let api: Api<Secret> = Api::namespaced(shared.cluster.client.clone(), ns);
        match within(api.create(&PostParams::default(), &copy)).await {
            // A policy that copies it into new namespaces was quicker.
            Ok(_) => {}
            Err(e) if code(&e) == Some(409) => {}
            Err(e) => {
                return Err(api_error(
                    &e,
                    ApiCall::namespaced("create", "secrets", ns),
                    &shared.address,
                ))
            }
        }
    }
    Ok(())
}

/// Starts services as soon as their dependencies are ready. On the first
/// failure the others stop waiting; requests already sent finish, and
/// teardown deletes the namespace with whatever they made.
async fn start_all(
    shared: &Shared,
    shard: &ShardContext,
    ns: &str,
    services: &[ServiceObjects],
) -> Result<(), EnvError> {
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let mut ready: HashSet<&str> = HashSet::new();
    let mut started: HashSet<&str> = HashSet::new();
    let mut inflight = FuturesUnordered::new();
    let mut failure = None;
    loop {
        if failure.is_none() {
            for svc in services {
                let name = svc.name.as_str();
                if !started.contains(name)
                    && svc.depends_on.iter().all(|d| ready.contains(d.as_str()))
                {
                    started.insert(name);
                    let cancel = cancel_rx.clone();
                    inflight.push(async move {
                        (name, start_service(shared, shard, ns, svc, cancel).await)
                    });
                }
            }
        }
        match inflight.next().await {
            None => break,
            Some((name, Ok(()))) => {
                ready.insert(name);
            }
            Some((_, Err(e))) => {
                if failure.is_none() {
                    let _ = cancel_tx.send(true);
                    failure = Some(e);
                }
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

/// One service: its Service, its pod, and the wait, within its startup timeout.
async fn start_service(
    shared: &Shared,
    shard: &ShardContext,
    ns: &str,
    svc: &ServiceObjects,
    mut cancel: watch::Receiver<bool>,
) -> Result<(), EnvError> {
    let deadline = Instant::now() + svc.wait.startup_timeout;
    if let Some(service) = &svc.service {
        create_in(shared, ns, service, "services").await?;
    }
    let pods: Api<Pod> = Api::namespaced(shared.cluster.client.clone(), ns);
    create_pod(shared, shard, &pods, svc, deadline).await?;
    let subject = Subject {
        pods: &pods,
        name: &svc.name,
        shard: shard.shard,
    };
    let outcome = tokio::select! {
        outcome = readiness::wait_ready(shared, subject, &svc.wait, deadline) => outcome,
        _ = cancel.wait_for(|cancelled| *cancelled) => {
            return Err(EnvError::Other(format!(
                "shard {}: {} stopped waiting: another service failed",
                shard.shard, svc.name
            )));
        }
    };
    let why = match outcome {
        Ok(()) => return Ok(()),
        Err(NotReady::Api(e)) => return Err(e),
        Err(NotReady::Failed(why)) => why,
        Err(NotReady::TimedOut { last }) => format!(
            "timed out after {} (last seen: {last})",
            humantime::format_duration(svc.wait.startup_timeout)
        ),
    };
    let events: Api<Event> = Api::namespaced(shared.cluster.client.clone(), ns);
    let logs = readiness::last_words(&pods, &events, &svc.name).await;
    Err(not_ready(shard, ns, svc, why, logs))
}

/// Creates the service's pod. What a brand-new namespace lacks for a moment
/// (its `default` ServiceAccount, its quota's first count) is waited for
/// within the startup timeout; a refusal by admission (Pod Security, a
/// LimitRange, the quota, a webhook) fails the service, saying who refused.
async fn create_pod(
    shared: &Shared,
    shard: &ShardContext,
    pods: &Api<Pod>,
    svc: &ServiceObjects,
    deadline: Instant,
) -> Result<(), EnvError> {
    let ns = pods.namespace().unwrap_or_default();
    let call = ApiCall::namespaced("create", "pods", ns);
    loop {
        let err = match within(pods.create(&PostParams::default(), &svc.pod)).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let Some(status) = status_of(&err) else {
            return Err(api_error(&err, call, &shared.address));
        };
        let denial = denial::classify(&status.message);
        let lagging = matches!(
            denial,
            Denial::ServiceAccountMissing | Denial::QuotaUnsynced
        );
        if lagging && Instant::now() + NEW_NAMESPACE_PAUSE < deadline {
            let _ = shared.events.send(EnvEvent::Waiting {
                shard: shard.shard,
                service: svc.name.clone(),
                message: format!(
                    "the new namespace is not ready for pods yet ({})",
                    status.message
                ),
                warning: false,
            });
            sleep(NEW_NAMESPACE_PAUSE).await;
            continue;
        }
        let refused = matches!(
            denial,
            Denial::PodSecurity { .. }
                | Denial::LimitRange(_)
                | Denial::Quota(_)
                | Denial::Webhook { .. }
        );
        let level = shared.config.kubernetes.pod_security.name();
        return match denial::explain(status, call, Some(level)) {
            Some(why) if refused => Err(not_ready(shard, ns, svc, why, Vec::new())),
            _ => Err(api_error(&err, call, &shared.address)),
        };
    }
}

fn not_ready(
    shard: &ShardContext,
    ns: &str,
    svc: &ServiceObjects,
    why: String,
    logs: Vec<String>,
) -> EnvError {
    EnvError::NotReady {
        shard: shard.shard,
        service: svc.name.clone(),
        wait: svc.wait.description.clone(),
        reason: format!("{why} [pod {ns}/{}]", svc.name),
        logs,
    }
}

/// How the tests reach one service.
struct Reached {
    /// `${host}`.
    host: String,
    /// Container port to the port `${port.N}` gives.
    ports: HashMap<u16, u16>,
    /// How to reach it by hand.
    hint: String,
}

/// The shard's variables, connect hints and secrets, once everything is ready.
async fn environment(
    shared: &Shared,
    shard: &ShardContext,
    ns: &str,
    objects: &ShardObjects,
    chart: Option<&super::helm::Installed>,
    mut secrets: Vec<String>,
) -> Result<Environment, EnvError> {
    let services_env = objects.services_env();
    let mut env = Environment::default();
    let chart = match chart {
        Some(installed) => chart_services(shared, shard, installed).await?,
        None => ChartServices::default(),
    };
    for svc in &objects.services {
        let spec = shared
            .config
            .service(&svc.name)
            .expect("rendered services come from the configuration");
        let reached = reach(shared, shard, ns, &svc.name, &spec.ports).await?;
        let bindings = Bindings {
            host: Some(&reached.host),
            ports: Some(&reached.ports),
            env: Some(&svc.env),
            services_env: Some(&services_env),
            shard: shard.shard,
            run: &shard.run.run_id,
            database: Some(default_database(&svc.env)),
        };
        for (name, template) in &spec.export {
            let value = render_export(template, &bindings, &chart, &mut secrets).map_err(|e| {
                EnvError::Other(format!(
                    "shard {}: services.{}.export.{name}: {e}",
                    shard.shard, svc.name
                ))
            })?;
            env.vars.push(ExportedVar {
                name: name.clone(),
                value,
            });
        }
        env.connect_hints.push(reached.hint);
    }
    env.connect_hints.extend(chart.hints);
    env.connect_hints.push(format!(
        "remove with: kubectl {}delete namespace {ns}",
        shared.context_flag()
    ));
    env.secrets = secrets;
    Ok(env)
}

/// An export, with `${service.NAME}` bound to the chart Services reached.
fn render_export(
    template: &Template,
    bindings: &Bindings<'_>,
    chart: &ChartServices,
    secrets: &mut Vec<String>,
) -> Result<String, String> {
    template.render_with(bindings, secrets, &|var| match var {
        Var::ChartService(name) => chart.addresses.get(name).cloned(),
        _ => None,
    })
}

/// `${service.NAME}` values of the chart's Services that exports name.
#[derive(Default)]
struct ChartServices {
    /// Service name to `host:port`.
    addresses: HashMap<String, String>,
    /// How to reach each by hand.
    hints: Vec<String>,
}

/// Reaches every chart Service an export names.
async fn chart_services(
    shared: &Shared,
    shard: &ShardContext,
    installed: &super::helm::Installed,
) -> Result<ChartServices, EnvError> {
    let mut found = ChartServices::default();
    for name in named_chart_services(shared) {
        let (address, hint) = installed.reach(shared, shard, &name).await.map_err(|e| {
            EnvError::Other(format!("shard {}: ${{service.{name}}}: {e}", shard.shard))
        })?;
        found.addresses.insert(name, address);
        found.hints.push(hint);
    }
    Ok(found)
}

/// The chart Services that exports name, each once, in order.
fn named_chart_services(shared: &Shared) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let vars = shared
        .config
        .services
        .iter()
        .flat_map(|s| s.export.iter())
        .flat_map(|(_, template)| template.vars());
    for var in vars {
        if let Var::ChartService(name) = var {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    names
}

/// Where `${host}` and `${port.N}` point for one pod's `ports`: 127.0.0.1
/// and a port-forward per port (outside the cluster), or the Service's DNS
/// name and the container ports (inside it).
async fn reach(
    shared: &Shared,
    shard: &ShardContext,
    ns: &str,
    pod: &str,
    ports: &[u16],
) -> Result<Reached, EnvError> {
    if ports.is_empty() {
        return Ok(Reached {
            host: LOOPBACK.to_owned(),
            ports: HashMap::new(),
            hint: format!("{pod}: no ports (pod {pod} in namespace {ns})"),
        });
    }
    if shared.reach == Reach::ClusterDns {
        let host = service_host(pod, ns, &shared.config.kubernetes.cluster_domain);
        let listed = ports
            .iter()
            .map(|p| format!("{host}:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Ok(Reached {
            ports: ports.iter().map(|p| (*p, *p)).collect(),
            hint: format!("{pod}: {listed} (cluster DNS)"),
            host,
        });
    }
    let pods: Api<Pod> = Api::namespaced(shared.cluster.client.clone(), ns);
    let forwards = forward::forward(&pods, pod, ports).await.map_err(|e| {
        EnvError::Other(format!(
            "shard {}: cannot listen on 127.0.0.1 to port-forward to pod {pod}: {e}",
            shard.shard
        ))
    })?;
    for task in forwards.tasks {
        shared.add_task(shard, task);
    }
    let hint = forward_hint(shared, ns, pod, &forwards.ports);
    Ok(Reached {
        host: LOOPBACK.to_owned(),
        ports: forwards.ports,
        hint,
    })
}

/// `web: 127.0.0.1:41234 -> 8080 (port-forward while cargo-ephem runs; after
/// it: kubectl ... port-forward pod/web 8080)`.
fn forward_hint(shared: &Shared, ns: &str, pod: &str, ports: &HashMap<u16, u16>) -> String {
    let mut pairs: Vec<(&u16, &u16)> = ports.iter().collect();
    pairs.sort();
    let local = pairs
        .iter()
        .map(|(c, l)| format!("{LOOPBACK}:{l} -> {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let remote = pairs
        .iter()
        .map(|(c, _)| c.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{pod}: {local} (port-forward while cargo-ephem runs; afterwards: kubectl {}-n {ns} port-forward pod/{pod} {remote})",
        shared.context_flag()
    )
}

/// `${database}` on Kubernetes: the database the official Postgres image
/// creates (`POSTGRES_DB`, else the user's); per-test databases are the
/// Docker backend's for now.
fn default_database(env: &HashMap<String, String>) -> &str {
    env.get("POSTGRES_DB")
        .or_else(|| env.get("POSTGRES_USER"))
        .map(String::as_str)
        .unwrap_or("postgres")
}
