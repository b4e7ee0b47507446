//! One shard's environment: a private bridge network and one container per
//! service, started in dependency order, independent services concurrently.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, NetworkCreateRequest,
    NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{CreateContainerOptions, LogsOptions};
use futures_util::future::try_join_all;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::baseline;
use super::images::ImageFacts;
use super::readiness::{self, NotReady, Target};
use super::{labels, snapshot, Shared};
use crate::config::{ServiceSpec, WaitKind};
use crate::template::{Bindings, Template};
use crate::{EnvError, Environment, ExportedVar, ShardContext};

/// How many log lines a readiness failure shows.
const FAILURE_LOG_LINES: usize = 50;

/// A service with every template that is known before start rendered.
struct ServicePlan<'a> {
    spec: &'a ServiceSpec,
    facts: Arc<ImageFacts>,
    env: HashMap<String, String>,
    cmd: Option<Vec<String>>,
    exec: Vec<String>,
    health_test: Option<Vec<String>>,
    /// The rendered `setup` and `reset = { exec }` commands.
    setup: Option<Vec<String>>,
    reset_exec: Option<Vec<String>>,
    /// The rendered `snapshot.quiesce` command.
    quiesce: Option<Vec<String>>,
    /// Start from a snapshot, build one, or neither; and the base image's
    /// id a build checks against.
    snapshot: (snapshot::Decision, String),
}

/// A ready service: what exports and connect hints need.
struct RunningService {
    container: String,
    ports: HashMap<u16, u16>,
    /// Started from a snapshot: no `setup`, the password re-keyed.
    from_snapshot: bool,
    /// What the shard does about the snapshot after its start from one
    /// failed (build it again, or nothing), in place of the plan's.
    fallback: Option<snapshot::Decision>,
}

/// Names of one shard's resources.
struct ShardNames {
    prefix: String,
}

impl ShardNames {
    fn new(shard: &ShardContext) -> Self {
        ShardNames {
            prefix: format!(
                "ephem-{}-s{}",
                labels::short_run(&shard.run.run_id),
                shard.shard
            ),
        }
    }
    fn network(&self) -> String {
        self.prefix.clone()
    }
    fn container(&self, service: &str) -> String {
        format!("{}-{service}", self.prefix)
    }
}

/// Starts every service of the shard and returns once all are ready.
pub(crate) async fn provision(
    shared: &Shared,
    shard: &ShardContext,
    extra_labels: &HashMap<String, String>,
) -> Result<Environment, EnvError> {
    let names = ShardNames::new(shard);
    let mut base_labels = labels::for_shard(shard, &shared.owner);
    base_labels.extend(extra_labels.clone());
    let mut secrets = Vec::new();
    let mut plans = plan(shared, shard, &mut secrets).await?;
    for plan in &mut plans {
        let planned = snapshot::Planned {
            spec: plan.spec,
            run_name: &plan.facts.run_name,
            env: &plan.env,
            cmd: plan.cmd.as_deref(),
            setup: plan.setup.as_deref(),
            quiesce: plan.quiesce.as_deref(),
            secrets: &secrets,
        };
        plan.snapshot = shared.snapshots.plan(shared, planned).await;
    }

    let network = names.network();
    shared
        .docker
        .create_network(NetworkCreateRequest {
            name: network.clone(),
            driver: Some("bridge".to_owned()),
            labels: Some(base_labels.clone()),
            ..Default::default()
        })
        .await
        .map_err(|e| {
            EnvError::Other(format!(
                "shard {}: cannot create network {network}: {e}",
                shard.shard
            ))
        })?;

    let running = start_all(shared, shard, &names, &base_labels, &plans, &secrets)
        .await
        .map_err(|e| e.masked(&secrets))?;
    let hooks = baselines(shared, shard, &plans, &running)
        .await
        .map_err(|e| e.masked(&secrets))?;

    let services: Vec<(&ServiceSpec, &HashMap<String, String>)> =
        plans.iter().map(|p| (p.spec, &p.env)).collect();
    environment(shared, shard, &services, &running, secrets, hooks)
}

/// The environment of a kept shard (`--reuse`): its containers as they run,
/// the variables rendered anew from their environment and ports, the
/// baselines found again (`setup` does not run again).
pub(crate) async fn reattach(
    shared: &Shared,
    shard: &ShardContext,
) -> Result<Environment, EnvError> {
    let names = ShardNames::new(shard);
    let mut running = HashMap::new();
    let mut envs: Vec<(&ServiceSpec, HashMap<String, String>)> = Vec::new();
    // Each container's command, where `reset = "redis"` finds its password.
    let mut commands: HashMap<String, Option<Vec<String>>> = HashMap::new();
    let mut secrets = Vec::new();
    for spec in shared.config.start_order() {
        let container = names.container(&spec.name);
        let inspect = shared
            .docker
            .inspect_container(&container, None)
            .await
            .map_err(|e| {
                EnvError::Other(format!(
                    "container {container}: {}",
                    super::daemon_message(&e)
                ))
            })?;
        if !inspect
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false)
        {
            return Err(EnvError::Other(format!(
                "container {container} is not running"
            )));
        }
        let (env, command) = match inspect.config {
            Some(c) => (c.env.unwrap_or_default(), c.cmd),
            None => (Vec::new(), None),
        };
        let env = container_env(spec, env);
        for (key, template) in &spec.env {
            // Generated or the runner's: mask what the container holds.
            if template.vars().any(|v| {
                matches!(
                    v,
                    crate::template::Var::Random | crate::template::Var::Secret(_)
                )
            }) {
                secrets.extend(env.get(key).cloned());
            }
        }
        let ports = published_ports(shared, &container).await?;
        running.insert(
            spec.name.clone(),
            RunningService {
                container,
                ports,
                from_snapshot: false,
                fallback: None,
            },
        );
        commands.insert(spec.name.clone(), command);
        envs.push((spec, env));
    }
    let mut hooks = baseline::HooksBuilder::new(shared.docker.clone(), shard.shard);
    for (spec, env) in &envs {
        let service = &running[&spec.name];
        let reset_exec = match &spec.reset {
            Some(crate::config::Reset::Exec(cmd)) => {
                let bindings = Bindings {
                    env: Some(env),
                    shard: shard.shard,
                    run: &shard.run.run_id,
                    ..Default::default()
                };
                let rendered: Result<Vec<String>, EnvError> = cmd
                    .iter()
                    .map(|t| render(t, &bindings, &mut Vec::new(), shard, spec, "reset.exec"))
                    .collect();
                Some(rendered?)
            }
            _ => None,
        };
        let ready = baseline::ReadyService {
            spec,
            container: &service.container,
            env,
            ports: &service.ports,
            command: commands.remove(&spec.name).flatten(),
            setup: None,
            reset_exec,
        };
        hooks.reattach(&ready, &shared.host).await?;
    }
    let services: Vec<(&ServiceSpec, &HashMap<String, String>)> =
        envs.iter().map(|(spec, env)| (*spec, env)).collect();
    environment(shared, shard, &services, &running, secrets, hooks)
}

/// A container's configured variables (its `env` keys, as the container
/// holds them; not the image's own `ENV`).
fn container_env(spec: &ServiceSpec, list: Vec<String>) -> HashMap<String, String> {
    list.into_iter()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            spec.env
                .iter()
                .any(|(key, _)| key == k)
                .then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Exports, connect hints and the hooks around tests, once every service
/// runs: the end of provisioning a shard, and of taking one over.
fn environment(
    shared: &Shared,
    shard: &ShardContext,
    services: &[(&ServiceSpec, &HashMap<String, String>)],
    running: &HashMap<String, RunningService>,
    mut secrets: Vec<String>,
    mut hooks: baseline::HooksBuilder,
) -> Result<Environment, EnvError> {
    let network = ShardNames::new(shard).network();
    let mut env = Environment {
        serial: services.iter().any(|(spec, _)| spec.needs_serial_tests()),
        ..Environment::default()
    };
    let services_env: HashMap<String, HashMap<String, String>> = services
        .iter()
        .map(|(spec, env)| (spec.name.clone(), (*env).clone()))
        .collect();
    for (spec, service_env) in services {
        let service = &running[&spec.name];
        let database = default_database(service_env);
        let bindings = Bindings {
            host: Some(&shared.host),
            ports: Some(&service.ports),
            env: Some(service_env),
            services_env: Some(&services_env),
            shard: shard.shard,
            run: &shard.run.run_id,
            database: Some(&database),
        };
        for (name, template) in &spec.export {
            let per_test = spec.per_test_databases
                && template
                    .vars()
                    .any(|v| *v == crate::template::Var::Database);
            if per_test {
                // Names the test's own database: rendered again before each
                // test, over the value below (the baseline database, which
                // `up` and `--keep-env` show).
                hooks.per_test_export(
                    name,
                    template,
                    &spec.name,
                    baseline::OwnedBindings {
                        host: shared.host.clone(),
                        ports: service.ports.clone(),
                        env: (*service_env).clone(),
                        services_env: services_env.clone(),
                        shard: shard.shard,
                        run: shard.run.run_id.clone(),
                    },
                );
            }
            env.vars.push(ExportedVar {
                name: name.clone(),
                value: render(
                    template,
                    &bindings,
                    &mut secrets,
                    shard,
                    spec,
                    &format!("export.{name}"),
                )?,
            });
        }
        env.connect_hints
            .push(hint(&spec.name, service, &shared.host, &network));
    }
    env.test_hooks = hooks.build();
    env.connect_hints.push(removal_hint(shard));
    env.secrets = secrets;
    Ok(env)
}

/// The database `${database}` names without per-test databases: the one
/// the official Postgres image creates (`POSTGRES_DB`, else the user's).
fn default_database(env: &HashMap<String, String>) -> String {
    env.get("POSTGRES_DB")
        .or_else(|| env.get("POSTGRES_USER"))
        .cloned()
        .unwrap_or_else(|| "postgres".to_owned())
}

/// `setup` of every service, in start order, then the baselines that
/// resets and per-test databases need.
async fn baselines(
    shared: &Shared,
    shard: &ShardContext,
    plans: &[ServicePlan<'_>],
    running: &HashMap<String, RunningService>,
) -> Result<baseline::HooksBuilder, EnvError> {
    let mut hooks = baseline::HooksBuilder::new(shared.docker.clone(), shard.shard);
    for plan in plans {
        let service = &running[&plan.spec.name];
        let from_snapshot = service.from_snapshot;
        let ready = baseline::ReadyService {
            spec: plan.spec,
            container: &service.container,
            env: &plan.env,
            ports: &service.ports,
            command: plan.cmd.clone(),
            // The snapshot holds what `setup` left.
            setup: plan.setup.clone().filter(|_| !from_snapshot),
            reset_exec: plan.reset_exec.clone(),
        };
        if from_snapshot {
            snapshot::rekey(
                shared,
                shard.shard,
                plan.spec,
                &service.container,
                &plan.env,
            )
            .await?;
        }
        baseline::run_setup(
            &shared.docker,
            shard.shard,
            &ready,
            plan.spec.startup_timeout,
        )
        .await?;
        let decision = service.fallback.as_ref().unwrap_or(&plan.snapshot.0);
        if let snapshot::Decision::Build { key, lock } = decision {
            let image_id = &plan.snapshot.1;
            let built = snapshot::Built {
                spec: plan.spec,
                container: &service.container,
                image_id,
                quiesce: plan.quiesce.as_deref(),
                key,
                lock: lock.clone(),
            };
            build_snapshot(shared, shard, built).await;
        }
        hooks.add(&ready, &shared.host).await?;
    }
    Ok(hooks)
}

/// Copies the service's state out after its `setup` and has it stored as a
/// snapshot while the tests run; a failure costs only the snapshot (a
/// warning), never the shard.
async fn build_snapshot(shared: &Shared, shard: &ShardContext, built: snapshot::Built<'_>) {
    let service = built.spec.name.clone();
    match snapshot::copy(shared, built).await {
        Ok(copied) => shared
            .snapshots
            .store_later(shared.events.clone(), shard, copied),
        Err(reason) => {
            let _ = shared.events.send(crate::EnvEvent::Warning {
                shard: Some(shard.shard),
                message: format!(
                    "services.{service}: no snapshot built: {reason}; later runs provision it normally",
                ),
            });
        }
    }
}

/// Renders env, commands and healthchecks in start order, so that
/// `${services.NAME.env.KEY}` sees the dependency's values.
async fn plan<'a>(
    shared: &'a Shared,
    shard: &ShardContext,
    secrets: &mut Vec<String>,
) -> Result<Vec<ServicePlan<'a>>, EnvError> {
    // Normally a cache hit after `prepare`; without it, images pull concurrently.
    let order = shared.config.start_order();
    let all_facts =
        try_join_all(order.iter().map(|spec| shared.images.ensure(&spec.image))).await?;
    let mut rendered_env: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut plans = Vec::new();
    for (spec, facts) in order.into_iter().zip(all_facts) {
        let base = Bindings {
            services_env: Some(&rendered_env),
            shard: shard.shard,
            run: &shard.run.run_id,
            ..Default::default()
        };
        let mut env = HashMap::new();
        for (name, template) in &spec.env {
            env.insert(
                name.clone(),
                render(
                    template,
                    &base,
                    secrets,
                    shard,
                    spec,
                    &format!("env.{name}"),
                )?,
            );
        }
        let with_env = Bindings {
            env: Some(&env),
            ..base
        };
        let mut render_all = |templates: &[Template], key: &str| -> Result<Vec<String>, EnvError> {
            templates
                .iter()
                .map(|t| render(t, &with_env, secrets, shard, spec, key))
                .collect()
        };
        let args = render_all(&spec.args, "args")?;
        // `args` extend `cmd` when given, else the image's own CMD.
        let cmd = match &spec.cmd {
            Some(cmd) => Some([render_all(cmd, "cmd")?, args].concat()),
            None if !args.is_empty() => Some([facts.cmd.clone(), args].concat()),
            None => None,
        };
        let exec = match &spec.wait.kind {
            WaitKind::Exec { command } => render_all(command, "wait.exec")?,
            _ => Vec::new(),
        };
        let health_test = match &spec.healthcheck {
            Some(hc) => Some(render_all(&hc.test, "healthcheck.test")?),
            None => None,
        };
        let setup = match &spec.setup {
            Some(cmd) => Some(render_all(cmd, "setup.exec")?),
            None => None,
        };
        let reset_exec = match &spec.reset {
            Some(crate::config::Reset::Exec(cmd)) => Some(render_all(cmd, "reset.exec")?),
            _ => None,
        };
        let quiesce = match spec.snapshot.as_ref().and_then(|s| s.quiesce.as_ref()) {
            Some(cmd) => Some(render_all(cmd, "snapshot.quiesce.exec")?),
            None => None,
        };
        rendered_env.insert(spec.name.clone(), env.clone());
        plans.push(ServicePlan {
            spec,
            facts,
            env,
            cmd,
            exec,
            health_test,
            setup,
            reset_exec,
            quiesce,
            snapshot: (snapshot::Decision::Fresh, String::new()),
        });
    }
    Ok(plans)
}

fn render(
    template: &Template,
    bindings: &Bindings<'_>,
    secrets: &mut Vec<String>,
    shard: &ShardContext,
    spec: &ServiceSpec,
    key: &str,
) -> Result<String, EnvError> {
    template.render(bindings, secrets).map_err(|e| {
        EnvError::Other(format!(
            "shard {}: services.{}.{key}: {e}",
            shard.shard, spec.name
        ))
    })
}

/// Starts services as soon as their dependencies are ready. On the first
/// failure the others stop waiting, but calls already sent to the daemon
/// finish, so that teardown sees every container that will ever exist.
async fn start_all(
    shared: &Shared,
    shard: &ShardContext,
    names: &ShardNames,
    base_labels: &HashMap<String, String>,
    plans: &[ServicePlan<'_>],
    secrets: &[String],
) -> Result<HashMap<String, RunningService>, EnvError> {
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let mut running = HashMap::new();
    let mut started: HashSet<&str> = HashSet::new();
    let mut inflight = FuturesUnordered::new();
    let mut failure = None;
    loop {
        if failure.is_none() {
            for plan in plans {
                let name = plan.spec.name.as_str();
                if !started.contains(name)
                    && plan.spec.depends_on.iter().all(|d| running.contains_key(d))
                {
                    started.insert(name);
                    let cancel = cancel_rx.clone();
                    inflight.push(async move {
                        let result =
                            start_service(shared, shard, names, base_labels, plan, secrets, cancel)
                                .await;
                        (name, result)
                    });
                }
            }
        }
        match inflight.next().await {
            None => break,
            Some((name, Ok(service))) => {
                running.insert(name.to_owned(), service);
            }
            Some((_, Err(e))) => {
                if failure.is_none() {
                    let _ = cancel_tx.send(true);
                    failure = Some(e);
                }
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(running),
    }
}

/// Starts the service, from its snapshot if the plan says so; a snapshot
/// start that fails (within [`snapshot::ready_within`]) is discarded and
/// the service started afresh, with `setup` to follow.
async fn start_service(
    shared: &Shared,
    shard: &ShardContext,
    names: &ShardNames,
    base_labels: &HashMap<String, String>,
    plan: &ServicePlan<'_>,
    secrets: &[String],
    mut cancel: watch::Receiver<bool>,
) -> Result<RunningService, EnvError> {
    let spec = plan.spec;
    let snapshot::Decision::Start { image, key } = &plan.snapshot.0 else {
        let fresh = Attempt {
            image: &plan.facts.run_name,
            wait: spec.wait.clone(),
            limit: spec.startup_timeout,
        };
        return start_container(shared, shard, names, base_labels, plan, fresh, &mut cancel).await;
    };
    let from_snapshot = Attempt {
        image,
        wait: snapshot::wait_once(&spec.wait),
        limit: snapshot::ready_within(spec.startup_timeout),
    };
    let failed = match start_container(
        shared,
        shard,
        names,
        base_labels,
        plan,
        from_snapshot,
        &mut cancel,
    )
    .await
    {
        Ok(service) => {
            return Ok(RunningService {
                from_snapshot: true,
                ..service
            })
        }
        Err(e) if *cancel.borrow() => return Err(e),
        Err(e) => e.masked(secrets),
    };
    let reason = match &failed {
        EnvError::NotReady { reason, logs, .. } => {
            match logs.iter().rev().find(|l| !l.is_empty()) {
                Some(last) => format!("{reason}; last log line: {}", last.trim()),
                None => reason.clone(),
            }
        }
        other => other.to_string(),
    };
    let fallback = shared
        .snapshots
        .discard(
            shared,
            shard.shard,
            spec,
            key,
            &names.container(&spec.name),
            &reason,
        )
        .await;
    let fresh = Attempt {
        image: &plan.facts.run_name,
        wait: spec.wait.clone(),
        limit: spec.startup_timeout,
    };
    let service =
        start_container(shared, shard, names, base_labels, plan, fresh, &mut cancel).await?;
    Ok(RunningService {
        fallback: Some(fallback),
        ..service
    })
}

/// One start of a service: its image, readiness wait and time limit.
struct Attempt<'a> {
    image: &'a str,
    wait: crate::config::WaitStrategy,
    limit: std::time::Duration,
}

/// Creates and starts the service's container and waits until it is ready.
async fn start_container(
    shared: &Shared,
    shard: &ShardContext,
    names: &ShardNames,
    base_labels: &HashMap<String, String>,
    plan: &ServicePlan<'_>,
    attempt: Attempt<'_>,
    cancel: &mut watch::Receiver<bool>,
) -> Result<RunningService, EnvError> {
    let spec = plan.spec;
    let container = names.container(&spec.name);
    // startup-timeout covers create, start and readiness; images are already pulled.
    let deadline = Instant::now() + attempt.limit;
    let network = names.network();
    let mut labels = base_labels.clone();
    labels.insert(labels::SERVICE.to_owned(), spec.name.clone());

    let port_keys: Vec<String> = spec.ports.iter().map(|p| format!("{p}/tcp")).collect();
    let port_bindings = port_keys
        .iter()
        .map(|key| {
            // Loopback only, and an empty host port for a random free one.
            let binding = PortBinding {
                host_ip: Some("127.0.0.1".to_owned()),
                host_port: Some(String::new()),
            };
            (key.clone(), Some(vec![binding]))
        })
        .collect();
    let healthcheck = plan
        .health_test
        .as_ref()
        .zip(spec.healthcheck.as_ref())
        .map(|(test, hc)| HealthConfig {
            test: Some([vec!["CMD".to_owned()], test.clone()].concat()),
            interval: Some(nanos(hc.interval)),
            timeout: Some(nanos(hc.timeout)),
            retries: Some(i64::from(hc.retries)),
            start_period: Some(nanos(hc.start_period)),
            ..Default::default()
        });
    let mut env: Vec<String> = plan.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    let (image, wait) = (attempt.image.to_owned(), attempt.wait);
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        env: Some(env),
        cmd: plan.cmd.clone(),
        labels: Some(labels),
        exposed_ports: Some(port_keys),
        healthcheck,
        host_config: Some(HostConfig {
            port_bindings: Some(port_bindings),
            network_mode: Some(network.clone()),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.clone(),
                EndpointSettings {
                    aliases: Some(vec![spec.name.clone()]),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some(container.clone()),
        ..Default::default()
    };
    shared
        .docker
        .create_container(Some(options), body)
        .await
        .map_err(|e| {
            EnvError::Other(format!(
                "shard {}: cannot create container {container} for service {} from {image}: {e}",
                shard.shard, spec.name
            ))
        })?;

    let wait_text = format!(
        "{} within {}",
        spec.wait.kind,
        humantime::format_duration(attempt.limit)
    );
    let not_ready = |reason: String, logs: Vec<String>| EnvError::NotReady {
        shard: shard.shard,
        service: spec.name.clone(),
        wait: wait_text.clone(),
        reason,
        logs,
    };
    if let Err(e) = shared.docker.start_container(&container, None).await {
        let logs = last_logs(shared, &container).await;
        return Err(not_ready(
            format!(
                "container {container} did not start: {}",
                super::daemon_message(&e)
            ),
            logs,
        ));
    }
    if spec.wait.kind.is_healthcheck() && !plan.facts.has_healthcheck && spec.healthcheck.is_none()
    {
        return Err(not_ready(
            format!(
                "image {} has no HEALTHCHECK; add a `healthcheck` table to services.{}",
                spec.image, spec.name
            ),
            Vec::new(),
        ));
    }

    let ports = published_ports(shared, &container).await?;
    let target = Target {
        docker: &shared.docker,
        container: &container,
        host: &shared.host,
        ports: &ports,
        exec: &plan.exec,
        run_healthcheck: shared.podman,
    };
    let outcome = tokio::select! {
        outcome = readiness::wait_ready(&target, &wait, deadline) => outcome,
        _ = cancel.wait_for(|cancelled| *cancelled) => {
            return Err(EnvError::Other(format!("shard {}: {} stopped waiting: another service failed", shard.shard, spec.name)));
        }
    };
    match outcome {
        Ok(()) => Ok(RunningService {
            container,
            ports,
            from_snapshot: false,
            fallback: None,
        }),
        Err(why) => {
            let state = shared
                .docker
                .inspect_container(&container, None)
                .await
                .ok()
                .and_then(|i| i.state)
                .unwrap_or_default();
            let reason = match why {
                NotReady::TimedOut { last } => format!(
                    "timed out after {} (last probe: {last}); {}",
                    humantime::format_duration(attempt.limit),
                    readiness::exit_detail(&state)
                ),
                NotReady::Exited { detail } => detail,
                NotReady::Impossible(why) => why,
            };
            Err(not_ready(
                format!("{reason} [container {container}]"),
                last_logs(shared, &container).await,
            ))
        }
    }
}

/// Host ports the daemon picked, by container port.
async fn published_ports(shared: &Shared, container: &str) -> Result<HashMap<u16, u16>, EnvError> {
    let inspect = shared
        .docker
        .inspect_container(container, None)
        .await
        .map_err(|e| EnvError::Other(format!("cannot inspect container {container}: {e}")))?;
    let mut ports = HashMap::new();
    let map = inspect
        .network_settings
        .and_then(|n| n.ports)
        .unwrap_or_default();
    for (key, bindings) in map {
        let Some(container_port) = key.split('/').next().and_then(|p| p.parse::<u16>().ok()) else {
            continue;
        };
        let host_port = bindings
            .unwrap_or_default()
            .iter()
            .filter_map(|b| b.host_port.as_deref()?.parse::<u16>().ok())
            .next();
        if let Some(host_port) = host_port {
            ports.insert(container_port, host_port);
        }
    }
    Ok(ports)
}

/// The container's last log lines, stdout and stderr interleaved.
async fn last_logs(shared: &Shared, container: &str) -> Vec<String> {
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        tail: FAILURE_LOG_LINES.to_string(),
        ..Default::default()
    };
    let mut stream = shared.docker.logs(container, Some(options));
    let mut text = String::new();
    while let Some(Ok(frame)) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(frame.as_ref()));
    }
    let lines: Vec<String> = text.lines().map(|l| l.trim_end().to_owned()).collect();
    let skip = lines.len().saturating_sub(FAILURE_LOG_LINES);
    lines.into_iter().skip(skip).collect()
}

fn hint(service: &str, running: &RunningService, host: &str, network: &str) -> String {
    let mut ports: Vec<(&u16, &u16)> = running.ports.iter().collect();
    ports.sort();
    let reach = match ports.as_slice() {
        [] => format!("no published ports, alias {service} on network {network}"),
        [(_, host_port)] => format!("{host}:{host_port}"),
        many => many
            .iter()
            .map(|(c, h)| format!("{c} -> {host}:{h}"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    format!("{service}: {reach} (container {})", running.container)
}

fn removal_hint(shard: &ShardContext) -> String {
    let filters = format!(
        "--filter label={}={} --filter label={}={}",
        labels::RUN,
        shard.run.run_id,
        labels::SHARD,
        shard.shard
    );
    format!("remove with: docker rm -f -v $(docker ps -aq {filters}) && docker network rm $(docker network ls -q {filters})")
}

fn nanos(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}
