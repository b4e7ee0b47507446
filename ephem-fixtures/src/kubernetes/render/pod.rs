//! A service's pod: its one container (image, args, env, ports, probe,
//! security context) and what every pod of ours shares.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, LocalObjectReference, Pod, PodSpec,
    ResourceRequirements, SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::env::{
    config_error, escape_dollars, is_secret_key, kubernetes_word, RenderedEnv, Site, MARK,
};
use super::{namespace, security, RenderContext, ServiceObjects, WaitPlan, SECRET_NAME};
use crate::config::EphemConfig;
use crate::kubernetes::labels;
use crate::template::{Bindings, Template, Var};
use crate::{EnvError, ImageRef, ShardContext};

/// Seconds a pod gets between SIGTERM and SIGKILL: a disposable service
/// has no state worth a clean shutdown, and namespace deletion waits for it.
const GRACE_SECONDS: i64 = 1;

/// What one shard's services share while their objects are built.
pub(super) struct Scope<'a> {
    pub config: &'a EphemConfig,
    pub shard: &'a ShardContext,
    pub ctx: &'a RenderContext,
    pub namespace: &'a str,
    pub envs: &'a [RenderedEnv<'a>],
}

impl Scope<'_> {
    /// The service's pod, Service and wait plan; its secret values go into
    /// `secret_data`.
    pub(super) fn service_objects(
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
            security_context: security::container_context(self.config.kubernetes.pod_security),
            ..image_fields(&spec.image, self.ctx.registry.as_deref())
        };
        let labels = self.service_labels(&spec.name);
        let pod = Pod {
            metadata: namespace::meta(&spec.name, self.namespace, labels.clone()),
            spec: Some(PodSpec {
                containers: vec![container],
                // A service that dies is noticed like a Docker container's
                // exit, never restarted with its state gone; one allowed to
                // crash while it starts is restarted (readiness counts the
                // restarts, and after ready each is a death).
                restart_policy: Some(
                    if spec.kubernetes.restarts > 0 {
                        "Always"
                    } else {
                        "Never"
                    }
                    .to_owned(),
                ),
                security_context: security::pod_context(
                    self.config.kubernetes.pod_security,
                    &spec.kubernetes,
                ),
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
                restarts: spec.kubernetes.restarts,
            },
            depends_on: spec.depends_on.clone(),
            env: env.values.clone(),
        })
    }

    /// Run, shard and service: the pod's labels, which its Service selects.
    fn service_labels(&self, service: &str) -> BTreeMap<String, String> {
        let mut labels = namespace::base_labels(&self.shard.run.run_id, Some(self.shard.shard));
        labels.insert(labels::SERVICE.to_owned(), service.to_owned());
        labels
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
    pub(super) fn words(
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
}

/// `image` and `imagePullPolicy`: Docker Hub images through the cluster's
/// `registry` (never the Docker daemon's mirror);
/// `IfNotPresent` when pinned (a digest, or a tag other than `latest`),
/// else `Always`.
pub(super) fn image_fields(image: &ImageRef, registry: Option<&str>) -> Container {
    let pinned = image.digest().is_some() || image.tag() != "latest";
    Container {
        image: Some(image.pull_name(registry)),
        image_pull_policy: Some(if pinned { "IfNotPresent" } else { "Always" }.to_owned()),
        ..Default::default()
    }
}

/// What every pod of ours shares: no service links (Docker injects no
/// `<SERVICE>_PORT` variables, and they clash with images' own, like
/// `REDIS_PORT`), no API token (services never call the API), a short
/// grace period, and the image pull secrets.
pub(super) fn pod_spec_base(config: &EphemConfig) -> PodSpec {
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
pub(super) fn small_resources() -> ResourceRequirements {
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
