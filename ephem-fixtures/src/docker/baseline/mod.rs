//! A service's baseline: `setup` runs once after the service is ready; then
//! before every test the service is either restored to that baseline
//! (`reset`) or the test gets a database of its own cloned from it
//! (`databases = "per-test"`).
//!
//! Postgres is driven from the runner with tokio-postgres on the published
//! port (no `docker exec` per test): a template database taken right after
//! setup, `CREATE DATABASE ... TEMPLATE` to restore or clone it, with what
//! that does not copy (owner, privileges, settings) replayed on each copy.
//! Clones are prepared ahead in a small pool refilled in the background, so
//! a test's database exists before its process starts.

mod attributes;
mod pool;
mod postgres;
mod redis;
mod refill;
mod restore;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;

use super::readiness::exec_in;
use crate::config::{Reset, ServiceSpec};
use crate::template::{Bindings, Template};
use crate::{AttemptEnv, EnvError, ExportedVar, TestHooks};
use attributes::Attributes;
use pool::{DatabasePool, Use};
use postgres::{not_postgres, pg_message, PgService, BASELINE};
use redis::{FlushError, RedisTarget};
use restore::InPlace;

/// Longest a reset or a database hand-out may take before the test fails.
const HOOK_BUDGET: Duration = Duration::from_secs(60);

/// What a service needs to be set up, reset and cloned, as provisioning
/// knows it once the container is ready.
pub(crate) struct ReadyService<'a> {
    pub spec: &'a ServiceSpec,
    pub container: &'a str,
    /// The service's rendered environment.
    pub env: &'a HashMap<String, String>,
    /// Container port to published host port.
    pub ports: &'a HashMap<u16, u16>,
    /// The container's command when `cmd` or `args` set it (rendered): where
    /// `reset = "redis"` finds `--requirepass`.
    pub command: Option<Vec<String>>,
    /// The rendered `setup` command and `reset` exec command.
    pub setup: Option<Vec<String>>,
    pub reset_exec: Option<Vec<String>>,
}

/// Runs the service's `setup` (within `budget`); its output is the error's
/// logs when it fails.
pub(crate) async fn run_setup(
    docker: &Docker,
    shard: u32,
    service: &ReadyService<'_>,
    budget: Duration,
) -> Result<(), EnvError> {
    let Some(cmd) = &service.setup else {
        return Ok(());
    };
    let failed = |reason: String, logs: Vec<String>| EnvError::NotReady {
        shard,
        service: service.spec.name.clone(),
        wait: format!("setup {:?}", cmd.join(" ")),
        reason,
        logs,
    };
    let done = exec_in(docker, service.container, cmd, budget)
        .await
        .map_err(|e| failed(e, Vec::new()))?;
    if done.exit_code == Some(0) {
        return Ok(());
    }
    let code = done
        .exit_code
        .map_or("an unknown code".to_owned(), |c| c.to_string());
    let lines: Vec<String> = done.output.lines().map(str::to_owned).collect();
    let logs = lines[lines.len().saturating_sub(50)..].to_vec();
    Err(failed(format!("setup exited with code {code}"), logs))
}

/// An export rendered per test because it names `${database}`.
struct PerTestExport {
    name: String,
    template: Template,
    /// The service whose database it names.
    service: String,
    bindings: OwnedBindings,
}

/// What [`Bindings`] borrows, owned, for rendering after provisioning.
pub(crate) struct OwnedBindings {
    pub host: String,
    pub ports: HashMap<u16, u16>,
    pub env: HashMap<String, String>,
    pub services_env: HashMap<String, HashMap<String, String>>,
    pub shard: u32,
    pub run: String,
}

/// Restores one service before each test.
enum ResetTarget {
    /// A copy of the baseline waiting in `pool` is renamed into the
    /// database's place (a catalog update, milliseconds); the used one is
    /// restored in place in the background (`in_place`: a small baseline
    /// whose test changed only rows) to wait as a copy again, or dropped.
    Postgres {
        pool: Arc<DatabasePool>,
        database: String,
        in_place: Arc<InPlace>,
    },
    Redis(RedisTarget),
    Exec {
        container: String,
        cmd: Vec<String>,
    },
}

/// The shard's resets, database pools and per-test exports.
pub(crate) struct DockerTestHooks {
    shard: u32,
    docker: Docker,
    resets: Vec<(String, ResetTarget)>,
    pools: Vec<Arc<DatabasePool>>,
    /// Every Postgres pool (per-test and reset) with its service's
    /// container, where the refill runs when the environment is kept.
    refills: Vec<(Arc<DatabasePool>, String)>,
    exports: Vec<PerTestExport>,
}

/// Builds the hooks a shard needs, or none when no service resets or
/// clones; takes Postgres baselines and fills the first pools.
pub(crate) struct HooksBuilder {
    hooks: DockerTestHooks,
}

impl HooksBuilder {
    pub(crate) fn new(docker: Docker, shard: u32) -> HooksBuilder {
        HooksBuilder {
            hooks: DockerTestHooks {
                shard,
                docker,
                resets: Vec::new(),
                pools: Vec::new(),
                refills: Vec::new(),
                exports: Vec::new(),
            },
        }
    }

    /// Takes the service's baseline if it resets or clones.
    pub(crate) async fn add(
        &mut self,
        service: &ReadyService<'_>,
        host: &str,
    ) -> Result<(), EnvError> {
        let spec = service.spec;
        let shard = self.hooks.shard;
        match &spec.reset {
            None => {}
            Some(Reset::Postgres) => {
                let (pool, database) = self
                    .baseline_pool(service, host, "reset = \"postgres\"", Use::Reset)
                    .await?;
                let pg = PgService::of(service, host).ok_or_else(|| {
                    not_postgres(shard, &spec.name, "reset", "port 5432 is not published")
                })?;
                // The database is the baseline right now.
                let in_place = Arc::new(InPlace::new(&pg, &database));
                in_place.rebase().await;
                let target = ResetTarget::Postgres {
                    pool,
                    database,
                    in_place,
                };
                self.hooks.resets.push((spec.name.clone(), target));
            }
            Some(Reset::Redis) => {
                let target = RedisTarget::of(service, host)?;
                // Checked now, so a service that is not Redis (or whose
                // password we lack) fails provisioning.
                target.flushall().await.map_err(|e| EnvError::NotReady {
                    shard,
                    service: spec.name.clone(),
                    wait: "reset = \"redis\"".to_owned(),
                    reason: match e {
                        FlushError::Auth(e) => format!("reset = \"redis\" cannot log in: {e}"),
                        FlushError::Other(e) => format!(
                            "reset = \"redis\" needs a Redis-compatible server on port 6379: {e}"
                        ),
                    },
                    logs: Vec::new(),
                })?;
                self.hooks
                    .resets
                    .push((spec.name.clone(), ResetTarget::Redis(target)));
            }
            Some(Reset::Exec(_)) => self.add_reset_only(service, host)?,
        }
        if spec.per_test_databases {
            let (pool, _) = self
                .baseline_pool(service, host, "databases = \"per-test\"", Use::PerTest)
                .await?;
            self.hooks.pools.push(pool);
        }
        Ok(())
    }

    /// Takes the service's database as the baseline (`what` names the key
    /// in errors) and fills a pool of copies; returns the pool and the
    /// database's name.
    async fn baseline_pool(
        &mut self,
        service: &ReadyService<'_>,
        host: &str,
        what: &str,
        uses: Use,
    ) -> Result<(Arc<DatabasePool>, String), EnvError> {
        let (shard, name) = (self.hooks.shard, &service.spec.name);
        let role = match uses {
            Use::Reset => "baseline",
            Use::PerTest => "template",
        };
        let pg = PgService::of(service, host)
            .ok_or_else(|| not_postgres(shard, name, what, "port 5432 is not published"))?;
        let admin = pg.admin(name, shard, what).await?;
        let ender = pg.admin(name, shard, what).await?;
        let attributes = admin
            .take_baseline(&ender, &pg.database)
            .await
            .map_err(|e| {
                not_postgres(
                    shard,
                    name,
                    what,
                    &format!("cannot copy {} as the {role}: {e}", pg.database),
                )
            })?;
        let swapper = match uses {
            Use::Reset => Some(pg.admin(name, shard, what).await?),
            Use::PerTest => None,
        };
        let pool = DatabasePool::new(name, uses, &pg, attributes, admin, Some(ender), swapper);
        pool.fill().await;
        self.hooks
            .refills
            .push((pool.clone(), service.container.to_owned()));
        Ok((pool, pg.database))
    }

    /// A kept service taken over by a new run (`--reuse`): the baseline taken
    /// after its setup is there already, with its attributes. The ready
    /// copies the run that kept it left are handed out first; the copies it
    /// handed out (or was making) are dropped in the background, and the
    /// pool refills in the background, so the first tests need not wait.
    pub(crate) async fn reattach(
        &mut self,
        service: &ReadyService<'_>,
        host: &str,
    ) -> Result<(), EnvError> {
        let spec = service.spec;
        let shard = self.hooks.shard;
        let (what, uses) = if spec.per_test_databases {
            ("databases = \"per-test\"", Use::PerTest)
        } else {
            ("reset = \"postgres\"", Use::Reset)
        };
        let postgres = spec.per_test_databases || matches!(spec.reset, Some(Reset::Postgres));
        if !postgres {
            // Redis and exec resets hold no state of their own.
            return self.add_reset_only(service, host);
        }
        let pg = PgService::of(service, host)
            .ok_or_else(|| not_postgres(shard, &spec.name, what, "port 5432 is not published"))?;
        let admin = pg.admin(&spec.name, shard, what).await?;
        let fail = |e: String| not_postgres(shard, &spec.name, what, &e);
        // The last run's refill first: it must not rename a copy while
        // they are listed, nor make one under a number this run uses.
        admin.stop_refill().await.map_err(fail)?;
        let copies = admin
            .copies()
            .await
            .map_err(|e| fail(format!("cannot list the kept copies: {}", pg_message(&e))))?;
        let attributes = Attributes::read(&admin.client, BASELINE)
            .await
            .map_err(fail)?;
        let pool = DatabasePool::new(&spec.name, uses, &pg, attributes, admin, None, None);
        pool.adopt(copies);
        self.hooks
            .refills
            .push((pool.clone(), service.container.to_owned()));
        let filling = pool.clone();
        tokio::spawn(async move { filling.fill().await });
        if spec.per_test_databases {
            self.hooks.pools.push(pool);
        } else {
            // What the last run's last test left: the first reset swaps,
            // and reads the baseline from the fresh copy.
            let target = ResetTarget::Postgres {
                pool,
                in_place: Arc::new(InPlace::new(&pg, &pg.database)),
                database: pg.database,
            };
            self.hooks.resets.push((spec.name.clone(), target));
        }
        Ok(())
    }

    /// A Redis or exec reset, which needs no baseline taken (a new run's
    /// Redis is checked by `add` first).
    fn add_reset_only(&mut self, service: &ReadyService<'_>, host: &str) -> Result<(), EnvError> {
        let spec = service.spec;
        match &spec.reset {
            Some(Reset::Redis) => {
                let target = RedisTarget::of(service, host)?;
                self.hooks
                    .resets
                    .push((spec.name.clone(), ResetTarget::Redis(target)));
            }
            Some(Reset::Exec(_)) => {
                let target = ResetTarget::Exec {
                    container: service.container.to_owned(),
                    cmd: service.reset_exec.clone().unwrap_or_default(),
                };
                self.hooks.resets.push((spec.name.clone(), target));
            }
            _ => {}
        }
        Ok(())
    }

    /// An export of `service` that names `${database}`: rendered per test.
    pub(crate) fn per_test_export(
        &mut self,
        name: &str,
        template: &Template,
        service: &str,
        bindings: OwnedBindings,
    ) {
        self.hooks.exports.push(PerTestExport {
            name: name.to_owned(),
            template: template.clone(),
            service: service.to_owned(),
            bindings,
        });
    }

    /// The hooks, when the shard has anything to do around its tests.
    pub(crate) fn build(self) -> Option<Arc<dyn TestHooks>> {
        let h = self.hooks;
        if h.resets.is_empty() && h.pools.is_empty() && h.exports.is_empty() {
            None
        } else {
            Some(Arc::new(h))
        }
    }
}

impl DockerTestHooks {
    async fn reset_all(&self, services: Option<&[String]>) -> Result<(), String> {
        for (service, target) in self.resets.iter().filter(|(s, _)| wanted(services, s)) {
            let result = match target {
                ResetTarget::Postgres {
                    pool,
                    database,
                    in_place,
                } => match pool.swap_into(database).await {
                    Ok(swapped) => {
                        in_place.swapped(pool, swapped).await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                ResetTarget::Redis(redis) => redis.flushall().await.map_err(|e| e.to_string()),
                ResetTarget::Exec { container, cmd } => {
                    match exec_in(&self.docker, container, cmd, HOOK_BUDGET).await {
                        Ok(done) if done.exit_code == Some(0) => Ok(()),
                        Ok(done) => Err(format!(
                            "{:?} exited with code {}: {}",
                            cmd.join(" "),
                            done.exit_code.map_or("?".to_owned(), |c| c.to_string()),
                            done.output.lines().last().unwrap_or("")
                        )),
                        Err(e) => Err(e),
                    }
                }
            };
            result.map_err(|e| format!("reset of service {service}: {e}"))?;
        }
        Ok(())
    }

    fn render_exports(
        &self,
        databases: &HashMap<&str, String>,
        services: Option<&[String]>,
    ) -> Result<Vec<ExportedVar>, String> {
        let mut vars = Vec::new();
        for export in self.exports.iter().filter(|e| wanted(services, &e.service)) {
            let b = &export.bindings;
            let bindings = Bindings {
                host: Some(&b.host),
                ports: Some(&b.ports),
                env: Some(&b.env),
                services_env: Some(&b.services_env),
                shard: b.shard,
                run: &b.run,
                database: databases.get(export.service.as_str()).map(String::as_str),
            };
            let value = export.template.render(&bindings, &mut Vec::new())?;
            vars.push(ExportedVar {
                name: export.name.clone(),
                value,
            });
        }
        Ok(vars)
    }
}

/// Whether the test's services (`None`: all) include `service`.
fn wanted(services: Option<&[String]>, service: &str) -> bool {
    services.is_none_or(|s| s.iter().any(|s| s == service))
}

#[async_trait::async_trait]
impl TestHooks for DockerTestHooks {
    async fn before_attempt(&self, services: Option<&[String]>) -> Result<AttemptEnv, EnvError> {
        let work = async {
            self.reset_all(services).await?;
            let mut databases = HashMap::new();
            let mut handed_out = Vec::new();
            for pool in self.pools.iter().filter(|p| wanted(services, &p.service)) {
                let name = pool
                    .take()
                    .await
                    .map_err(|e| format!("a database of service {}: {e}", pool.service))?;
                handed_out.push(format!("{}\u{1f}{name}", pool.service));
                databases.insert(pool.service.as_str(), name);
            }
            let vars = self.render_exports(&databases, services)?;
            Ok::<_, String>(AttemptEnv { vars, handed_out })
        };
        match tokio::time::timeout(HOOK_BUDGET, work).await {
            Ok(Ok(env)) => Ok(env),
            Ok(Err(e)) => Err(EnvError::Other(format!("shard {}: {e}", self.shard))),
            Err(_) => Err(EnvError::Other(format!(
                "shard {}: preparing the test's environment took over {}",
                self.shard,
                humantime::format_duration(HOOK_BUDGET)
            ))),
        }
    }

    async fn before_keep(&self) {
        for (pool, container) in &self.refills {
            pool.refill_for_next_run(&self.docker, container).await;
        }
    }

    async fn after_attempt(&self, env: AttemptEnv) {
        for handed in env.handed_out {
            let Some((service, name)) = handed.split_once('\u{1f}') else {
                continue;
            };
            if let Some(pool) = self.pools.iter().find(|p| p.service == service) {
                pool.drop_later(name.to_owned());
            }
        }
    }
}
