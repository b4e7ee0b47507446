//! One shard's Kubernetes objects, rendered from the configuration: its
//! namespace, a ResourceQuota and a LimitRange, a Secret for generated
//! values, and per service a Pod and a Service. Also the run's prepull
//! DaemonSet.
//!
//! Pure: no cluster, no clock and no environment variable is read here (the
//! caller fixes them in a [`RenderContext`]), so `cargo ephem render` prints
//! exactly what provisioning applies.
//!
//! What a service means is what it means for Docker, with these translations:
//!
//! - a bare Pod (`restartPolicy: Never`: a service that dies is noticed, never
//!   silently restarted with its state gone; `Always` only for a service
//!   allowed `restarts` while it starts) and, when it has ports, a ClusterIP
//!   Service of the same name, so services reach each other by name;
//! - `cmd` and `args` become the container's `args` (the image's ENTRYPOINT
//!   stays, as with Docker's cmd); `args` alone replace the image's CMD;
//! - env values holding a generated value (`${random}`, directly or through
//!   `${services.X.env.K}`) go into the Secret and reach the container by
//!   `secretKeyRef`; commands refer to them as `$(VAR)`. No generated value
//!   is ever written into a pod spec;
//! - every literal `$` in env values and commands is doubled, because
//!   Kubernetes expands `$(VAR)` and `$$` there and Docker does not;
//! - `wait` becomes a readiness probe (`tcp`, `http`, `exec`, `healthcheck`),
//!   or a [`LogWait`] that provisioning follows in the pod's log;
//! - `[kubernetes] pod-security` gives every container (init and prepull
//!   ones included) what its Pod Security Standard requires, and labels the
//!   namespace to enforce it ([`security`]).
//!
//! Modules: [`env`] (values, secrets, command words), `pod` (containers and
//! pods), `probe` (waits as probes), `service` (Services and their DNS
//! names), `namespace` (the namespace and its bounds), [`security`].

mod env;
mod namespace;
mod pod;
mod probe;
pub mod security;
mod service;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, PodTemplateSpec, Service};
use k8s_openapi::api::core::v1::{LimitRange, ResourceQuota, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde_json::Value;

use crate::config::{EphemConfig, LogPattern};
use crate::{EnvError, RunContext, ShardContext};

pub use namespace::prepull_namespace_name;
pub use service::service_host;

/// The shard's Secret of generated values.
pub const SECRET_NAME: &str = "ephem-secrets";
/// The shard's ResourceQuota.
pub const QUOTA_NAME: &str = "ephem-quota";
/// The shard's LimitRange.
pub const LIMITS_NAME: &str = "ephem-limits";
/// The run's prepull DaemonSet.
pub const PREPULL_NAME: &str = "ephem-prepull";
/// Label on the prepull DaemonSet's pods, which its selector matches.
pub const PREPULL_LABEL: &str = "cargo-ephem.dev/prepull";
/// The prepull pods' only long-running container: the sandbox image that
/// Kubernetes 1.33 nodes already hold (kubeadm's default for 1.33).
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// What a render takes from outside the configuration, fixed by the caller
/// so that rendering stays pure.
#[derive(Clone, Debug)]
pub struct RenderContext {
    /// The runner's hostname, exactly (the `host` label is derived from it).
    pub hostname: String,
    /// The runner's pid.
    pub pid: u32,
    /// The runner's start time in clock ticks since boot, when known.
    pub pid_start: Option<u64>,
    /// When the objects are created: `janitor/ttl` counts from here.
    pub now: SystemTime,
    /// Registry the cluster pulls Docker Hub images through
    /// (`[kubernetes] registry`); never the Docker daemon's mirror.
    pub registry: Option<String>,
}

impl RenderContext {
    /// This process on this machine, now, with the cluster's effective
    /// registry ([`crate::config::KubernetesConfig::effective_registry`]).
    pub fn current(config: &EphemConfig) -> RenderContext {
        let pid = std::process::id();
        RenderContext {
            hostname: crate::process::hostname(),
            pid,
            pid_start: crate::process::start_time(pid),
            now: SystemTime::now(),
            registry: config.kubernetes.effective_registry(),
        }
    }
}

/// Everything one shard's namespace gets, as typed objects, and what
/// provisioning needs beside them.
#[derive(Clone, Debug)]
pub struct ShardObjects {
    /// `<prefix>-<run8>-<shard>`, labelled for sweeps and Pod Security, and
    /// annotated for kube-janitor.
    pub namespace: Namespace,
    /// [`QUOTA_NAME`]: what the namespace may use in all.
    pub quota: ResourceQuota,
    /// [`LIMITS_NAME`]: per-container defaults, so pods that say nothing
    /// about resources still pass the quota.
    pub limits: LimitRange,
    /// [`SECRET_NAME`]: every env value that holds a generated value, under
    /// `<service>.<VAR>`; `None` when there is none.
    pub secret: Option<Secret>,
    /// One entry per service, in start order (each after its dependencies).
    pub services: Vec<ServiceObjects>,
}

/// One service of a shard: its objects and how to tell it is ready.
#[derive(Clone, Debug)]
pub struct ServiceObjects {
    /// The name in `ephem.toml`: also the pod's, the container's and the Service's.
    pub name: String,
    /// The service's only pod.
    pub pod: Pod,
    /// A ClusterIP Service on the service's ports; `None` without ports.
    pub service: Option<Service>,
    /// How provisioning tells the service is ready, and how long it may take.
    pub wait: WaitPlan,
    /// Services that must be ready before this pod is created.
    pub depends_on: Vec<String>,
    /// The rendered env with real values, generated ones included: what
    /// `${services.NAME.env.KEY}` in exports reads. Never print it.
    pub env: HashMap<String, String>,
}

/// How provisioning tells a service is ready.
#[derive(Clone, Debug)]
pub struct WaitPlan {
    /// What to watch.
    pub ready: ReadyWhen,
    /// Budget from the pod's creation to ready (the image pull included
    /// unless prepulled; the probe never gives up before it).
    pub startup_timeout: Duration,
    /// The wait as messages show it, e.g. `tcp 6379 within 1m`.
    pub description: String,
    /// How often the container may crash before it is ready
    /// (`[services.NAME.kubernetes] restarts`); one more fails the service.
    pub restarts: u32,
}

/// What "ready" means for one service.
#[derive(Clone, Debug)]
pub enum ReadyWhen {
    /// The pod's Ready condition: its readiness probe passed.
    ProbePassed,
    /// Lines of the container's log match `pattern` (there is no probe).
    Log(LogWait),
    /// The container runs (no `wait`).
    Running,
}

/// A `log` wait: provisioning follows the pod's log until `times` lines match.
#[derive(Clone, Debug)]
pub struct LogWait {
    /// What each line is matched against.
    pub pattern: LogPattern,
    /// How many matching lines to see.
    pub times: u32,
}

/// The run's prepull objects: a namespace of its own and a DaemonSet that
/// pulls every image on every node.
#[derive(Clone, Debug)]
pub struct PrepullObjects {
    /// `<prefix>-<run8>-prepull`, labelled and annotated like the shards'.
    pub namespace: Namespace,
    /// [`PREPULL_NAME`]: one init container per image, then a pause container.
    pub daemon_set: DaemonSet,
}

impl ShardObjects {
    /// The namespace's name.
    pub fn namespace_name(&self) -> &str {
        self.namespace.metadata.name.as_deref().unwrap_or_default()
    }

    /// Every object in apply order (namespace, quota, limits, secret, then
    /// each service's Service and Pod in start order), with `apiVersion`
    /// and `kind`.
    pub fn objects(&self) -> Vec<Value> {
        let mut out = vec![
            to_json(&self.namespace),
            to_json(&self.quota),
            to_json(&self.limits),
        ];
        out.extend(self.secret.as_ref().map(to_json));
        for service in &self.services {
            out.extend(service.service.as_ref().map(to_json));
            out.push(to_json(&service.pod));
        }
        out
    }

    /// Every service's rendered env, by service: the bindings of
    /// `${services.NAME.env.KEY}`.
    pub fn services_env(&self) -> HashMap<String, HashMap<String, String>> {
        self.services
            .iter()
            .map(|s| (s.name.clone(), s.env.clone()))
            .collect()
    }
}

impl PrepullObjects {
    /// The namespace, then the DaemonSet.
    pub fn objects(&self) -> Vec<Value> {
        vec![to_json(&self.namespace), to_json(&self.daemon_set)]
    }
}

fn to_json<T: Serialize>(object: &T) -> Value {
    // k8s-openapi's types have string keys only, so this cannot fail.
    serde_json::to_value(object).expect("Kubernetes objects serialize to JSON")
}

/// Renders one shard's objects. Every generated value (`${random}`) is
/// appended to `secrets`, for masking.
///
/// Errors are configuration problems that only Kubernetes has (a service
/// name that is no DNS-1035 label, `${random}` in a command, ...), one line
/// each, naming the key and the fix.
pub fn render_shard(
    config: &EphemConfig,
    shard: &ShardContext,
    ctx: &RenderContext,
    secrets: &mut Vec<String>,
) -> Result<ShardObjects, EnvError> {
    namespace::check_service_names(config)?;
    let name = crate::kubernetes::labels::namespace_name(
        &config.kubernetes.namespace_prefix,
        &shard.run.run_id,
        shard.shard,
    );
    let mut generated = Vec::new();
    let envs = env::render_envs(config, shard, &mut generated)?;
    let scope = pod::Scope {
        config,
        shard,
        ctx,
        namespace: &name,
        envs: &envs,
    };
    let mut secret_data = std::collections::BTreeMap::new();
    let services = envs
        .iter()
        .map(|env| scope.service_objects(env, &mut secret_data))
        .collect::<Result<Vec<_>, _>>()?;
    secrets.extend(generated);
    Ok(ShardObjects {
        namespace: namespace::namespace_object(
            &name,
            namespace::owner_labels(&shard.run.run_id, Some(shard.shard), ctx),
            shard.run.expires_at,
            ctx,
            config.kubernetes.pod_security,
        ),
        quota: scope.quota(),
        limits: scope.limits(),
        secret: (!secret_data.is_empty()).then(|| scope.secret(secret_data)),
        services,
    })
}

/// The run's prepull objects when `[kubernetes] prepull` is on (and there
/// are images), else `None`.
///
/// Each image runs as an init container with `/bin/sh -c true`: the image is
/// pulled before the container starts, so even an image without a shell
/// (distroless) ends up on the node, though its init container then fails
/// and the pod never becomes ready.
pub fn render_prepull(
    config: &EphemConfig,
    run: &RunContext,
    ctx: &RenderContext,
) -> Option<PrepullObjects> {
    if !config.kubernetes.prepull || config.services.is_empty() {
        return None;
    }
    let level = config.kubernetes.pod_security;
    let name = prepull_namespace_name(&config.kubernetes.namespace_prefix, &run.run_id);
    let mut pod_labels = namespace::base_labels(&run.run_id, None);
    pod_labels.insert(PREPULL_LABEL.to_owned(), "true".to_owned());
    let init_containers = config
        .images()
        .into_iter()
        .enumerate()
        .map(|(i, image)| Container {
            name: format!("pull-{}", i + 1),
            command: Some(vec!["/bin/sh".into(), "-c".into(), "true".into()]),
            resources: Some(pod::small_resources()),
            security_context: security::container_context(level),
            ..pod::image_fields(image, ctx.registry.as_deref())
        })
        .collect();
    let pause = Container {
        name: "pause".to_owned(),
        image: Some(PAUSE_IMAGE.to_owned()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        resources: Some(pod::small_resources()),
        security_context: security::container_context(level),
        ..Default::default()
    };
    let daemon_set = DaemonSet {
        metadata: namespace::meta(
            PREPULL_NAME,
            &name,
            namespace::base_labels(&run.run_id, None),
        ),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(pod_labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    init_containers: Some(init_containers),
                    containers: vec![pause],
                    security_context: security::prepull_context(level),
                    ..pod::pod_spec_base(config)
                }),
            },
            // Every node at once: nothing serves traffic from these pods.
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::String("100%".to_owned())),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Some(PrepullObjects {
        namespace: namespace::namespace_object(
            &name,
            namespace::owner_labels(&run.run_id, None, ctx),
            run.expires_at,
            ctx,
            level,
        ),
        daemon_set,
    })
}
