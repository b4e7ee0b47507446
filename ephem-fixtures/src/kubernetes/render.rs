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
//!   silently restarted with its state gone) and, when it has ports, a
//!   ClusterIP Service of the same name, so services reach each other by name;
//! - `cmd` and `args` become the container's `args` (the image's ENTRYPOINT
//!   stays, as with Docker's cmd); `args` alone replace the image's CMD;
//! - env values holding a generated value (`${random}`, directly or through
//!   `${services.X.env.K}`) go into the Secret and reach the container by
//!   `secretKeyRef`; commands refer to them as `$(VAR)`. No generated value
//!   is ever written into a pod spec;
//! - every literal `$` in env values and commands is doubled, because
//!   Kubernetes expands `$(VAR)` and `$$` there and Docker does not;
//! - `wait` becomes a readiness probe (`tcp`, `http`, `exec`, `healthcheck`),
//!   or a [`LogWait`] that provisioning follows in the pod's log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, LimitRange,
    LimitRangeItem, LimitRangeSpec, LocalObjectReference, Namespace, Pod, PodSpec, PodTemplateSpec,
    Probe, ResourceQuota, ResourceQuotaSpec, ResourceRequirements, Secret, SecretKeySelector,
    Service, ServicePort, ServiceSpec as ServiceObjectSpec, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde_json::Value;

use super::labels;
use super::quantity::Quantity as CheckedQuantity;
use crate::config::kubernetes::is_dns1035_label;
use crate::config::{EphemConfig, LogPattern, ServiceSpec, WaitKind};
use crate::template::{Bindings, Template, Var};
use crate::{EnvError, ImageRef, RunContext, ShardContext};

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

/// Seconds a pod gets between SIGTERM and SIGKILL: a disposable service
/// has no state worth a clean shutdown, and namespace deletion waits for it.
const GRACE_SECONDS: i64 = 1;
/// Per-probe timeouts, as the Docker backend's waits use them.
const TCP_PROBE_TIMEOUT: i32 = 2;
const HTTP_PROBE_TIMEOUT: i32 = 3;
const EXEC_PROBE_TIMEOUT: i32 = 5;
/// Kubernetes' own default failure threshold, the least a probe gets.
const MIN_FAILURE_THRESHOLD: i32 = 3;
/// Marks a reference to a secret env var inside a rendered command word.
const MARK: char = '\0';

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
    /// Registry that Docker Hub images are pulled through.
    pub mirror: Option<String>,
}

impl RenderContext {
    /// This process on this machine, now, with the configuration's
    /// effective mirror ([`EphemConfig::effective_mirror`]).
    pub fn current(config: &EphemConfig) -> RenderContext {
        let pid = std::process::id();
        RenderContext {
            hostname: crate::process::hostname(),
            pid,
            pid_start: crate::process::start_time(pid),
            now: SystemTime::now(),
            mirror: config.effective_mirror(),
        }
    }
}

/// Everything one shard's namespace gets, as typed objects, and what
/// provisioning needs beside them.
#[derive(Clone, Debug)]
pub struct ShardObjects {
    /// `<prefix>-<run8>-<shard>`, labelled for sweeps and annotated for
    /// kube-janitor.
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
    /// The service's only pod (`restartPolicy: Never`).
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
    check_service_names(config)?;
    let namespace = labels::namespace_name(
        &config.kubernetes.namespace_prefix,
        &shard.run.run_id,
        shard.shard,
    );
    let mut generated = Vec::new();
    let envs = render_envs(config, shard, &mut generated)?;
    let scope = Scope {
        config,
        shard,
        ctx,
        namespace: &namespace,
        envs: &envs,
    };
    let mut secret_data = BTreeMap::new();
    let services = envs
        .iter()
        .map(|env| scope.service_objects(env, &mut secret_data))
        .collect::<Result<Vec<_>, _>>()?;
    secrets.extend(generated);
    Ok(ShardObjects {
        namespace: namespace_object(
            &namespace,
            owner_labels(&shard.run.run_id, Some(shard.shard), ctx),
            shard.run.expires_at,
            ctx,
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
    let namespace = prepull_namespace_name(&config.kubernetes.namespace_prefix, &run.run_id);
    let mut pod_labels = base_labels(&run.run_id, None);
    pod_labels.insert(PREPULL_LABEL.to_owned(), "true".to_owned());
    let init_containers = config
        .images()
        .into_iter()
        .enumerate()
        .map(|(i, image)| Container {
            name: format!("pull-{}", i + 1),
            command: Some(vec!["/bin/sh".into(), "-c".into(), "true".into()]),
            resources: Some(small_resources()),
            ..image_fields(image, ctx.mirror.as_deref())
        })
        .collect();
    let pause = Container {
        name: "pause".to_owned(),
        image: Some(PAUSE_IMAGE.to_owned()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        resources: Some(small_resources()),
        ..Default::default()
    };
    let daemon_set = DaemonSet {
        metadata: meta(PREPULL_NAME, &namespace, base_labels(&run.run_id, None)),
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
                    ..pod_spec_base(config)
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
        namespace: namespace_object(
            &namespace,
            owner_labels(&run.run_id, None, ctx),
            run.expires_at,
            ctx,
        ),
        daemon_set,
    })
}

/// `<prefix>-<run8>-prepull`, cut like [`labels::namespace_name`] cuts
/// shard namespaces, so it is a DNS-1123 label whatever the prefix.
pub fn prepull_namespace_name(prefix: &str, run_id: &str) -> String {
    let run8: String = labels::slug(run_id, 63)
        .replace('-', "")
        .chars()
        .take(8)
        .collect();
    let tail = format!("-{run8}-prepull");
    let prefix = labels::slug(prefix, 63 - tail.len());
    let prefix = if prefix.is_empty() {
        crate::config::DEFAULT_NAMESPACE_PREFIX.to_owned()
    } else {
        prefix
    };
    format!("{prefix}{tail}")
}

/// Services whose name cannot be a Service's are refused before anything
/// is generated.
fn check_service_names(config: &EphemConfig) -> Result<(), EnvError> {
    match config.services.iter().find(|s| !is_dns1035_label(&s.name)) {
        None => Ok(()),
        Some(spec) => Err(EnvError::Other(format!(
            "services.{name}: on Kubernetes a service's name is its Service's and pod's, a DNS-1035 label (a lowercase letter first, then lowercase letters, digits and -, no - at the end), which {name:?} is not; rename the table, e.g. [services.{suggestion}], and its uses in depends-on and ${{services.{name}...}}",
            name = spec.name,
            suggestion = dns1035_suggestion(&spec.name),
        ))),
    }
}

/// A DNS-1035 label close to a service name the loader accepted
/// (lowercase letters, digits, `-` and `_`).
fn dns1035_suggestion(name: &str) -> String {
    let dashed = name.replace('_', "-");
    let trimmed = dashed.trim_end_matches('-');
    if trimmed.starts_with(|c: char| c.is_ascii_lowercase()) {
        trimmed.to_owned()
    } else {
        format!("svc-{trimmed}")
    }
}

/// A service's env, rendered with real values.
struct RenderedEnv<'a> {
    spec: &'a ServiceSpec,
    values: HashMap<String, String>,
    /// Names whose value holds a generated value.
    secret: BTreeSet<String>,
}

/// Renders every service's env in start order, so that
/// `${services.NAME.env.KEY}` sees the dependency's values.
fn render_envs<'a>(
    config: &'a EphemConfig,
    shard: &ShardContext,
    generated: &mut Vec<String>,
) -> Result<Vec<RenderedEnv<'a>>, EnvError> {
    let mut done: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut out = Vec::new();
    for spec in config.start_order() {
        let bindings = Bindings {
            services_env: Some(&done),
            shard: shard.shard,
            run: &shard.run.run_id,
            ..Default::default()
        };
        let mut values = HashMap::new();
        let mut secret = BTreeSet::new();
        for (name, template) in &spec.env {
            check_env_name(spec, name)?;
            let value = template.render(&bindings, generated).map_err(|e| {
                EnvError::Other(format!(
                    "shard {}: services.{}.env.{name}: {e}",
                    shard.shard, spec.name
                ))
            })?;
            if value.contains(MARK) {
                return Err(config_error(
                    spec,
                    &format!("env.{name}"),
                    "contains a NUL character, which no environment can carry; remove it",
                ));
            }
            // Directly or through another service's env: a generated value
            // anywhere in the text makes the whole value secret.
            if generated.iter().any(|g| value.contains(g.as_str())) {
                secret.insert(name.clone());
            }
            values.insert(name.clone(), value);
        }
        done.insert(spec.name.clone(), values.clone());
        out.push(RenderedEnv {
            spec,
            values,
            secret,
        });
    }
    Ok(out)
}

/// Kubernetes (1.33) takes printable ASCII env names except `=`; a secret
/// one also names a Secret key, which takes only `[-._a-zA-Z0-9]`.
fn check_env_name(spec: &ServiceSpec, name: &str) -> Result<(), EnvError> {
    if name.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Ok(());
    }
    Err(config_error(
        spec,
        &format!("env.{name}"),
        "Kubernetes takes environment variable names of printable ASCII characters only; rename it",
    ))
}

fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn config_error(spec: &ServiceSpec, key: &str, message: impl AsRef<str>) -> EnvError {
    EnvError::Other(format!(
        "services.{}.{key}: {}",
        spec.name,
        message.as_ref()
    ))
}

/// Where a command word goes: Kubernetes expands `$(VAR)` in container args
/// from the whole env, but in probe commands only from literal values
/// (kubelet's `ExpandContainerCommandOnlyStatic`): a Secret's value would
/// become an empty string there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Site {
    Args,
    Probe,
}

/// What one shard's services share while their objects are built.
struct Scope<'a> {
    config: &'a EphemConfig,
    shard: &'a ShardContext,
    ctx: &'a RenderContext,
    namespace: &'a str,
    envs: &'a [RenderedEnv<'a>],
}

impl Scope<'_> {
    fn service_objects(
        &self,
        env: &RenderedEnv<'_>,
        secret_data: &mut BTreeMap<String, String>,
    ) -> Result<ServiceObjects, EnvError> {
        let spec = env.spec;
        let (probe, ready) = self.readiness(env)?;
        let container = Container {
            name: spec.name.clone(),
            args: self.args(env)?,
            env: Some(self.env_vars(env, secret_data)?).filter(|v| !v.is_empty()),
            ports: Some(
                spec.ports
                    .iter()
                    .map(|port| ContainerPort {
                        container_port: i32::from(*port),
                        protocol: Some("TCP".to_owned()),
                        ..Default::default()
                    })
                    .collect(),
            )
            .filter(|p: &Vec<_>| !p.is_empty()),
            readiness_probe: probe,
            ..image_fields(&spec.image, self.ctx.mirror.as_deref())
        };
        let labels = self.service_labels(&spec.name);
        let pod = Pod {
            metadata: meta(&spec.name, self.namespace, labels.clone()),
            spec: Some(PodSpec {
                containers: vec![container],
                // A service that dies is noticed like a Docker container's
                // exit, never restarted with its state gone.
                restart_policy: Some("Never".to_owned()),
                ..pod_spec_base(self.config)
            }),
            ..Default::default()
        };
        Ok(ServiceObjects {
            name: spec.name.clone(),
            pod,
            service: (!spec.ports.is_empty()).then(|| self.service(spec, labels)),
            wait: WaitPlan {
                ready,
                startup_timeout: spec.startup_timeout,
                description: format!(
                    "{} within {}",
                    spec.wait.kind,
                    humantime::format_duration(spec.startup_timeout)
                ),
            },
            depends_on: spec.depends_on.clone(),
            env: env.values.clone(),
        })
    }

    /// Run, shard and service: the pod's labels, which its Service selects.
    fn service_labels(&self, service: &str) -> BTreeMap<String, String> {
        let mut labels = base_labels(&self.shard.run.run_id, Some(self.shard.shard));
        labels.insert(labels::SERVICE.to_owned(), service.to_owned());
        labels
    }

    fn service(&self, spec: &ServiceSpec, labels: BTreeMap<String, String>) -> Service {
        let mut selector = labels.clone();
        selector.remove(labels::MANAGED_BY);
        Service {
            metadata: meta(&spec.name, self.namespace, labels),
            spec: Some(ServiceObjectSpec {
                type_: Some("ClusterIP".to_owned()),
                selector: Some(selector),
                ports: Some(
                    spec.ports
                        .iter()
                        .map(|port| ServicePort {
                            name: Some(format!("tcp-{port}")),
                            port: i32::from(*port),
                            target_port: Some(IntOrString::Int(i32::from(*port))),
                            protocol: Some("TCP".to_owned()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Literal values as they are (`$` doubled), generated ones through the
    /// Secret.
    fn env_vars(
        &self,
        env: &RenderedEnv<'_>,
        secret_data: &mut BTreeMap<String, String>,
    ) -> Result<Vec<EnvVar>, EnvError> {
        let spec = env.spec;
        let mut vars = Vec::new();
        for (name, _) in &spec.env {
            let value = &env.values[name];
            if !env.secret.contains(name) {
                vars.push(EnvVar {
                    name: name.clone(),
                    value: Some(escape_dollars(value)),
                    ..Default::default()
                });
                continue;
            }
            let key = format!("{}.{name}", spec.name);
            if !is_secret_key(&key) {
                return Err(config_error(
                    spec,
                    &format!("env.{name}"),
                    "holds a generated value, so its name is also a Secret key, which takes only letters, digits, -, _ and .; rename it",
                ));
            }
            secret_data.insert(key.clone(), value.clone());
            vars.push(EnvVar {
                name: name.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: SECRET_NAME.to_owned(),
                        key,
                        optional: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        Ok(vars)
    }

    /// `cmd ++ args` (the image's ENTRYPOINT stays); `args` alone replace
    /// the image's CMD, which Kubernetes cannot append to.
    fn args(&self, env: &RenderedEnv<'_>) -> Result<Option<Vec<String>>, EnvError> {
        let spec = env.spec;
        let mut words = match &spec.cmd {
            Some(cmd) => self.words(env, cmd, "cmd", Site::Args)?,
            None => Vec::new(),
        };
        words.extend(self.words(env, &spec.args, "args", Site::Args)?);
        Ok((!words.is_empty()).then_some(words))
    }

    /// Renders command words; `${env.VAR}` of a secret value becomes
    /// `$(VAR)` in args and is refused in probes, and generated values that
    /// would land in the pod spec as text are refused.
    fn words(
        &self,
        env: &RenderedEnv<'_>,
        templates: &[Template],
        key: &str,
        site: Site,
    ) -> Result<Vec<String>, EnvError> {
        let spec = env.spec;
        // Secret values become marked references; the rest render as they are.
        let marked: HashMap<String, String> = env
            .values
            .iter()
            .map(|(name, value)| {
                let bound = if env.secret.contains(name) {
                    format!("{MARK}{name}{MARK}")
                } else {
                    value.clone()
                };
                (name.clone(), bound)
            })
            .collect();
        let services_env: HashMap<String, HashMap<String, String>> = self
            .envs
            .iter()
            .map(|e| (e.spec.name.clone(), e.values.clone()))
            .collect();
        let bindings = Bindings {
            env: Some(&marked),
            services_env: Some(&services_env),
            shard: self.shard.shard,
            run: &self.shard.run.run_id,
            ..Default::default()
        };
        let mut words = Vec::new();
        for (i, template) in templates.iter().enumerate() {
            let key = format!("{key}[{i}]");
            self.check_word(env, template, &key, site)?;
            // No `${random}` got this far, so nothing new is generated.
            let rendered = template
                .render(&bindings, &mut Vec::new())
                .map_err(|e| config_error(spec, &key, e))?;
            words.push(kubernetes_word(&rendered));
        }
        Ok(words)
    }

    fn check_word(
        &self,
        env: &RenderedEnv<'_>,
        template: &Template,
        key: &str,
        site: Site,
    ) -> Result<(), EnvError> {
        let spec = env.spec;
        if template.source().contains(MARK) {
            return Err(config_error(
                spec,
                key,
                "contains a NUL character, which no command can carry; remove it",
            ));
        }
        for var in template.vars() {
            let problem = match var {
                Var::Random | Var::Secret(_) => Some(format!(
                    "{var} in a command would be written into the pod spec, readable by anyone who can read pods; put it in env (e.g. TOKEN = \"{var}\") and use ${{env.TOKEN}}"
                )),
                Var::ServiceEnv { service, key: name } if self.is_secret(service, name) => Some(format!(
                    "{var} holds a generated value, which would be written into the pod spec; copy it into env (e.g. {name} = \"{var}\") and use ${{env.{name}}}"
                )),
                Var::Env(name) if site == Site::Probe && env.secret.contains(name) => Some(format!(
                    "{var} holds a generated value, and Kubernetes does not expand Secrets in probe commands; read it from the container's environment in a shell instead, e.g. [\"sh\", \"-c\", \"... ${name}\"]"
                )),
                _ => None,
            };
            if let Some(problem) = problem {
                return Err(config_error(spec, key, problem));
            }
        }
        Ok(())
    }

    fn is_secret(&self, service: &str, name: &str) -> bool {
        self.envs
            .iter()
            .any(|e| e.spec.name == service && e.secret.contains(name))
    }

    /// The readiness probe for `wait`, and what provisioning watches.
    fn readiness(&self, env: &RenderedEnv<'_>) -> Result<(Option<Probe>, ReadyWhen), EnvError> {
        let spec = env.spec;
        let timeout = spec.startup_timeout;
        let probe = |period: Duration, probe_timeout: i32, probe: Probe| Probe {
            period_seconds: Some(whole_seconds(period)),
            timeout_seconds: Some(probe_timeout),
            failure_threshold: Some(failure_threshold(timeout, period)),
            ..probe
        };
        let interval = spec.wait.interval;
        let built = match &spec.wait.kind {
            WaitKind::Running => return Ok((None, ReadyWhen::Running)),
            WaitKind::Log { pattern, times } => {
                let wait = LogWait {
                    pattern: pattern.clone(),
                    times: *times,
                };
                return Ok((None, ReadyWhen::Log(wait)));
            }
            WaitKind::Tcp { port } => probe(
                interval,
                TCP_PROBE_TIMEOUT,
                Probe {
                    tcp_socket: Some(TCPSocketAction {
                        port: IntOrString::Int(i32::from(*port)),
                        host: None,
                    }),
                    ..Default::default()
                },
            ),
            WaitKind::Http { path, port, status } => {
                if let Some(code) = status.filter(|c| !(200..400).contains(c)) {
                    return Err(config_error(
                        spec,
                        "wait.status",
                        format!("Kubernetes httpGet probes pass on 200 to 399 only, so status = {code} cannot be waited for; use an exec wait instead"),
                    ));
                }
                probe(
                    interval,
                    HTTP_PROBE_TIMEOUT,
                    Probe {
                        http_get: Some(HTTPGetAction {
                            path: Some(path.clone()),
                            port: IntOrString::Int(i32::from(*port)),
                            scheme: Some("HTTP".to_owned()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )
            }
            WaitKind::Exec { command } => probe(
                interval,
                EXEC_PROBE_TIMEOUT,
                exec_probe(self.words(env, command, "wait.exec", Site::Probe)?),
            ),
            WaitKind::Healthcheck => {
                let Some(hc) = &spec.healthcheck else {
                    return Err(config_error(
                        spec,
                        "wait.healthcheck",
                        format!("waits for the image's HEALTHCHECK, which only Docker runs; add a healthcheck table to services.{} (e.g. healthcheck = {{ test = [\"pg_isready\"] }}) or use another wait", spec.name),
                    ));
                };
                let test = self.words(env, &hc.test, "healthcheck.test", Site::Probe)?;
                probe(hc.interval, whole_seconds(hc.timeout), exec_probe(test))
            }
        };
        Ok((Some(built), ReadyWhen::ProbePassed))
    }

    fn quota(&self) -> ResourceQuota {
        let q = &self.config.kubernetes.quota;
        let hard = BTreeMap::from([
            ("requests.cpu".to_owned(), q.requests_cpu.to_k8s()),
            ("requests.memory".to_owned(), q.requests_memory.to_k8s()),
            ("limits.cpu".to_owned(), q.limits_cpu.to_k8s()),
            ("limits.memory".to_owned(), q.limits_memory.to_k8s()),
            ("pods".to_owned(), Quantity(q.pods.to_string())),
        ]);
        ResourceQuota {
            metadata: meta(QUOTA_NAME, self.namespace, self.shard_labels()),
            spec: Some(ResourceQuotaSpec {
                hard: Some(hard),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn limits(&self) -> LimitRange {
        let l = &self.config.kubernetes.limits;
        let pair = |cpu: &CheckedQuantity, memory: &CheckedQuantity| {
            BTreeMap::from([
                ("cpu".to_owned(), cpu.to_k8s()),
                ("memory".to_owned(), memory.to_k8s()),
            ])
        };
        LimitRange {
            metadata: meta(LIMITS_NAME, self.namespace, self.shard_labels()),
            spec: Some(LimitRangeSpec {
                limits: vec![LimitRangeItem {
                    type_: "Container".to_owned(),
                    default: Some(pair(&l.default_cpu, &l.default_memory)),
                    default_request: Some(pair(&l.default_request_cpu, &l.default_request_memory)),
                    ..Default::default()
                }],
            }),
        }
    }

    fn secret(&self, data: BTreeMap<String, String>) -> Secret {
        Secret {
            metadata: meta(SECRET_NAME, self.namespace, self.shard_labels()),
            type_: Some("Opaque".to_owned()),
            // stringData, not data: the API server encodes it, and a render
            // can mask the values as text.
            string_data: Some(data),
            ..Default::default()
        }
    }

    fn shard_labels(&self) -> BTreeMap<String, String> {
        base_labels(&self.shard.run.run_id, Some(self.shard.shard))
    }
}

/// `image` and `imagePullPolicy`: Docker Hub images through the mirror;
/// `IfNotPresent` when pinned (a digest, or a tag other than `latest`),
/// else `Always`.
fn image_fields(image: &ImageRef, mirror: Option<&str>) -> Container {
    let pinned = image.digest().is_some() || image.tag() != "latest";
    Container {
        image: Some(image.pull_name(mirror)),
        image_pull_policy: Some(if pinned { "IfNotPresent" } else { "Always" }.to_owned()),
        ..Default::default()
    }
}

/// What every pod of ours shares: no service links (Docker injects no
/// `<SERVICE>_PORT` variables, and they clash with images' own, like
/// `REDIS_PORT`), no API token (services never call the API), a short
/// grace period, and the image pull secrets.
fn pod_spec_base(config: &EphemConfig) -> PodSpec {
    let pull_secrets = &config.kubernetes.image_pull_secrets;
    PodSpec {
        enable_service_links: Some(false),
        automount_service_account_token: Some(false),
        termination_grace_period_seconds: Some(GRACE_SECONDS),
        image_pull_secrets: (!pull_secrets.is_empty()).then(|| {
            pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect()
        }),
        ..Default::default()
    }
}

/// Requests and limits of the prepull containers, which run `true` or pause.
fn small_resources() -> ResourceRequirements {
    let pair = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    ResourceRequirements {
        requests: Some(pair("10m", "16Mi")),
        limits: Some(pair("100m", "64Mi")),
        ..Default::default()
    }
}

fn exec_probe(command: Vec<String>) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command),
        }),
        ..Default::default()
    }
}

/// Whole seconds, rounded up, at least 1 (probes count in seconds).
fn whole_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// Enough failures that the startup timeout, which provisioning enforces,
/// decides, never the probe.
fn failure_threshold(startup_timeout: Duration, period: Duration) -> i32 {
    let period = u64::try_from(whole_seconds(period)).unwrap_or(1);
    let probes = whole_seconds(startup_timeout) as u64 / period + 1;
    i32::try_from(probes)
        .unwrap_or(i32::MAX)
        .max(MIN_FAILURE_THRESHOLD)
}

/// A rendered word as Kubernetes must read it: literal `$` doubled, marked
/// references as `$(VAR)`.
fn kubernetes_word(rendered: &str) -> String {
    rendered
        .split(MARK)
        .enumerate()
        .map(|(i, part)| match i % 2 {
            0 => escape_dollars(part),
            _ => format!("$({part})"),
        })
        .collect()
}

/// Kubernetes reads `$$` as `$` and `$(VAR)` as a variable in env values,
/// commands and args; doubling every `$` keeps the text as written.
fn escape_dollars(text: &str) -> String {
    text.replace('$', "$$")
}

/// `app.kubernetes.io/managed-by`, run and (for shards) shard.
fn base_labels(run_id: &str, shard: Option<u32>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
        (labels::RUN.to_owned(), labels::label_value(run_id)),
    ]);
    if let Some(shard) = shard {
        labels.insert(labels::SHARD.to_owned(), shard.to_string());
    }
    labels
}

/// A namespace's labels: the base ones and the runner's host.
fn owner_labels(run_id: &str, shard: Option<u32>, ctx: &RenderContext) -> BTreeMap<String, String> {
    let mut labels = base_labels(run_id, shard);
    labels.insert(labels::HOST.to_owned(), labels::label_value(&ctx.hostname));
    labels
}

fn namespace_object(
    name: &str,
    labels: BTreeMap<String, String>,
    expires_at: SystemTime,
    ctx: &RenderContext,
) -> Namespace {
    let mut annotations = BTreeMap::from([
        (labels::HOSTNAME.to_owned(), ctx.hostname.clone()),
        (labels::PID.to_owned(), ctx.pid.to_string()),
        (
            labels::JANITOR_EXPIRES.to_owned(),
            labels::janitor_expires(expires_at),
        ),
        (
            labels::JANITOR_TTL.to_owned(),
            labels::janitor_ttl(ctx.now, expires_at),
        ),
    ]);
    if let Some(start) = ctx.pid_start {
        annotations.insert(labels::PID_START.to_owned(), start.to_string());
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn meta(name: &str, namespace: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_double_dollars_and_reference_marked_variables() {
        assert_eq!(kubernetes_word("plain"), "plain");
        assert_eq!(
            kubernetes_word("$(date) costs $5 $$"),
            "$$(date) costs $$5 $$$$"
        );
        assert_eq!(
            kubernetes_word("--password=\0PW\0&x=$1"),
            "--password=$(PW)&x=$$1"
        );
        assert_eq!(kubernetes_word("\0A\0\0B\0"), "$(A)$(B)");
    }

    #[test]
    fn probe_timings_leave_the_decision_to_the_startup_timeout() {
        assert_eq!(whole_seconds(Duration::from_millis(250)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(
            failure_threshold(Duration::from_secs(60), Duration::from_millis(250)),
            61
        );
        assert_eq!(
            failure_threshold(Duration::from_secs(60), Duration::from_secs(2)),
            31
        );
        assert_eq!(
            failure_threshold(Duration::from_secs(1), Duration::from_secs(10)),
            3
        );
        assert_eq!(
            failure_threshold(
                Duration::from_secs(365 * 24 * 3600),
                Duration::from_millis(1)
            ),
            365 * 24 * 3600 + 1
        );
    }

    #[test]
    fn dns1035_suggestions_are_dns1035_labels() {
        for (name, suggestion) in [("my_db", "my-db"), ("2db", "svc-2db"), ("db_", "db")] {
            assert_eq!(dns1035_suggestion(name), suggestion);
            assert!(is_dns1035_label(suggestion));
        }
    }

    #[test]
    fn prepull_namespaces_are_dns_labels_whatever_the_prefix() {
        let run = "3f2a9c1e-77b0-4d0e-9f1a-0123456789ab";
        assert_eq!(
            prepull_namespace_name("ephem", run),
            "ephem-3f2a9c1e-prepull"
        );
        for prefix in ["", "---", &"x".repeat(200), "My Team"] {
            let name = prepull_namespace_name(prefix, run);
            assert!(
                crate::config::kubernetes::is_dns1123_label(&name),
                "{prefix:?} gave {name:?}"
            );
            assert!(name.ends_with("-3f2a9c1e-prepull"), "{name}");
        }
    }
}
