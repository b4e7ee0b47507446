//! A service's baseline: `setup` runs once after the service is ready; then
//! before every test the service is either restored to that baseline
//! (`reset`) or the test gets a database of its own cloned from it
//! (`databases = "per-test"`).
//!
//! Postgres is driven from the runner with tokio-postgres on the published
//! port (no `docker exec` per test): a template database taken right after
//! setup, `CREATE DATABASE ... TEMPLATE` to restore or clone it. Clones are
//! prepared ahead in a small pool refilled in the background, so a test's
//! database exists before its process starts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::readiness::exec_in;
use crate::config::{Reset, ServiceSpec};
use crate::template::{Bindings, Template};
use crate::{AttemptEnv, EnvError, ExportedVar, TestHooks};

/// The template every reset restores and every per-test database clones.
const BASELINE: &str = "ephem_baseline";

/// How many copies of the baseline wait ready for the next tests (per-test
/// databases, or the next reset).
const POOL_SIZE: usize = 4;

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

/// Connection details of a Postgres service, from its `env` as the
/// official image reads it.
struct PgService {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    /// `POSTGRES_DB` (default: the user's name, as the image does).
    database: String,
}

impl PgService {
    fn of(service: &ReadyService<'_>, host: &str) -> Option<PgService> {
        let port = *service.ports.get(&5432)?;
        let user = service
            .env
            .get("POSTGRES_USER")
            .cloned()
            .unwrap_or_else(|| "postgres".to_owned());
        Some(PgService {
            host: host.to_owned(),
            port,
            database: service
                .env
                .get("POSTGRES_DB")
                .cloned()
                .unwrap_or_else(|| user.clone()),
            password: service.env.get("POSTGRES_PASSWORD").cloned(),
            user,
        })
    }

    /// An administrative session on `template1` (never a database that is
    /// dropped, cloned or restored).
    async fn admin(&self, service: &str, shard: u32, what: &str) -> Result<PgAdmin, EnvError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname("template1")
            .connect_timeout(Duration::from_secs(5));
        if let Some(password) = &self.password {
            config.password(password);
        }
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
            not_postgres(
                shard,
                service,
                what,
                &format!(
                    "cannot connect to {}:{} as {} ({e})",
                    self.host, self.port, self.user
                ),
            )
        })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(|e| not_postgres(shard, service, what, &e.to_string()))?
            .get(0);
        Ok(PgAdmin {
            client,
            // Measured on Postgres 15 with a small baseline (the
            // baseline_latency example): WAL_LOG copies in ~240 ms, FILE_COPY
            // ~290 ms (it forces a checkpoint). WAL_LOG is 15's default; say
            // it so a server configured otherwise still gets the faster one.
            strategy: if version >= 150_000 {
                " STRATEGY WAL_LOG"
            } else {
                ""
            },
            force: version >= 130_000,
        })
    }
}

fn not_postgres(shard: u32, service: &str, what: &str, detail: &str) -> EnvError {
    EnvError::NotReady {
        shard,
        service: service.to_owned(),
        wait: what.to_owned(),
        reason: format!("{what} needs a Postgres-compatible server on port 5432: {detail}"),
        logs: Vec::new(),
    }
}

/// A session that creates and drops databases.
struct PgAdmin {
    client: tokio_postgres::Client,
    strategy: &'static str,
    /// `DROP DATABASE ... WITH (FORCE)` (Postgres 13+).
    force: bool,
}

impl PgAdmin {
    /// Ends every other session on `database` (a rename or a template copy
    /// needs it alone).
    async fn terminate_sessions(&self, database: &str) -> Result<(), tokio_postgres::Error> {
        self.client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&database],
            )
            .await
            .map(|_| ())
    }

    /// `name` as a quoted identifier.
    fn ident(name: &str) -> String {
        format!("\"{}\"", name.replace('"', "\"\""))
    }

    async fn drop_database(&self, name: &str) -> Result<(), tokio_postgres::Error> {
        if !self.force {
            self.terminate_sessions(name).await?;
        }
        let force = if self.force { " WITH (FORCE)" } else { "" };
        self.client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {}{force}",
                Self::ident(name)
            ))
            .await
    }

    async fn clone_database(&self, from: &str, to: &str) -> Result<(), tokio_postgres::Error> {
        self.client
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE {}{}",
                Self::ident(to),
                Self::ident(from),
                self.strategy
            ))
            .await
    }

    /// Drops every copy of the baseline (`ephem_t_*`), in use or not: what a
    /// run that kept the environment left.
    async fn drop_copies(&self) -> Result<(), tokio_postgres::Error> {
        let rows = self
            .client
            .query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'ephem\\_t\\_%'",
                &[],
            )
            .await?;
        for row in rows {
            let name: String = row.get(0);
            self.drop_database(&name).await?;
        }
        Ok(())
    }

    /// Takes the baseline: `database` as it is now becomes the template.
    async fn take_baseline(&self, database: &str) -> Result<(), tokio_postgres::Error> {
        // Setup's own sessions may linger; a template must have none.
        self.terminate_sessions(database).await?;
        self.drop_database(BASELINE).await?;
        self.clone_database(database, BASELINE).await
    }
}

/// Restores one service before each test.
enum ResetTarget {
    /// Copies of the baseline wait in `pool`; a reset renames one into the
    /// database's place (a catalog update, milliseconds) and drops the used
    /// one in the background.
    Postgres {
        pool: Arc<DatabasePool>,
        database: String,
    },
    Redis {
        address: String,
    },
    Exec {
        container: String,
        cmd: Vec<String>,
    },
}

/// Per-test databases of one Postgres service.
struct DatabasePool {
    service: String,
    /// Copies and drops, in the background.
    admin: PgAdmin,
    /// A session of its own for the test's critical path (renames): one
    /// connection runs one statement at a time, and a copy takes a while.
    swapper: PgAdmin,
    /// Ready clones, oldest first.
    ready: Mutex<VecDeque<String>>,
    /// Names are `ephem_t_<n>`, unique within the shard.
    next: AtomicU64,
    /// Serializes refills (one `CREATE DATABASE` stream at a time).
    refill: tokio::sync::Mutex<()>,
}

impl DatabasePool {
    fn new(service: &str, admin: PgAdmin, swapper: PgAdmin) -> Arc<DatabasePool> {
        Arc::new(DatabasePool {
            service: service.to_owned(),
            admin,
            swapper,
            ready: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(1),
            refill: tokio::sync::Mutex::new(()),
        })
    }

    fn name(&self) -> String {
        format!("ephem_t_{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    async fn create(&self) -> Result<String, tokio_postgres::Error> {
        let name = self.name();
        self.admin.clone_database(BASELINE, &name).await?;
        Ok(name)
    }

    /// A database of the test's own: a ready one, else made now.
    async fn take(self: &Arc<Self>) -> Result<String, tokio_postgres::Error> {
        let ready = self
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        let name = match ready {
            Some(name) => name,
            None => self.create().await?,
        };
        let pool = self.clone();
        tokio::spawn(async move { pool.fill().await });
        Ok(name)
    }

    /// Drops a database in the background: the next test need not wait.
    fn drop_later(self: &Arc<Self>, name: String) {
        let pool = self.clone();
        tokio::spawn(async move {
            let _ = pool.admin.drop_database(&name).await;
        });
    }

    /// Puts a ready copy of the baseline in `database`'s place: the used
    /// database is renamed away (dropped later), the copy renamed in.
    async fn swap_into(self: &Arc<Self>, database: &str) -> Result<(), tokio_postgres::Error> {
        let fresh = self.take().await?;
        let used = self.name();
        self.swapper.terminate_sessions(database).await?;
        let rename = |from: &str, to: &str| {
            format!(
                "ALTER DATABASE {} RENAME TO {}",
                PgAdmin::ident(from),
                PgAdmin::ident(to)
            )
        };
        self.swapper
            .client
            .batch_execute(&rename(database, &used))
            .await?;
        self.swapper
            .client
            .batch_execute(&rename(&fresh, database))
            .await?;
        self.drop_later(used);
        Ok(())
    }

    /// Tops the ready clones up to [`POOL_SIZE`].
    async fn fill(&self) {
        let _one_at_a_time = self.refill.lock().await;
        loop {
            if self.ready.lock().unwrap_or_else(|p| p.into_inner()).len() >= POOL_SIZE {
                return;
            }
            match self.create().await {
                Ok(name) => self
                    .ready
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(name),
                Err(_) => return,
            }
        }
    }
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

/// The shard's resets, database pools and per-test exports.
pub(crate) struct DockerTestHooks {
    shard: u32,
    docker: Docker,
    resets: Vec<(String, ResetTarget)>,
    pools: Vec<Arc<DatabasePool>>,
    exports: Vec<PerTestExport>,
}

/// Builds the hooks a shard needs, or none when no service resets or
/// clones; takes Postgres baselines and fills the first pools.
pub(crate) struct HooksBuilder {
    hooks: DockerTestHooks,
}

/// `host:port` of a service's published Redis port, for `reset = "redis"`.
fn redis_address(service: &ReadyService<'_>, host: &str) -> Result<String, EnvError> {
    let port = service.ports.get(&6379).copied().ok_or_else(|| {
        EnvError::Other(format!(
            "services.{}: reset = \"redis\" needs port 6379 published",
            service.spec.name
        ))
    })?;
    Ok(format!("{}:{port}", bracket(host)))
}

impl HooksBuilder {
    pub(crate) fn new(docker: Docker, shard: u32) -> HooksBuilder {
        HooksBuilder {
            hooks: DockerTestHooks {
                shard,
                docker,
                resets: Vec::new(),
                pools: Vec::new(),
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
                    .baseline_pool(service, host, "reset = \"postgres\"", "baseline")
                    .await?;
                let target = ResetTarget::Postgres { pool, database };
                self.hooks.resets.push((spec.name.clone(), target));
            }
            Some(Reset::Redis) => {
                let address = redis_address(service, host)?;
                // Checked now, so a service that is not Redis fails provisioning.
                flushall(&address).await.map_err(|e| EnvError::NotReady {
                    shard,
                    service: spec.name.clone(),
                    wait: "reset = \"redis\"".to_owned(),
                    reason: format!(
                        "reset = \"redis\" needs a Redis-compatible server on port 6379: {e}"
                    ),
                    logs: Vec::new(),
                })?;
                self.add_reset_only(service, host)?;
            }
            Some(Reset::Exec(_)) => self.add_reset_only(service, host)?,
        }
        if spec.per_test_databases {
            let (pool, _) = self
                .baseline_pool(service, host, "databases = \"per-test\"", "template")
                .await?;
            self.hooks.pools.push(pool);
        }
        Ok(())
    }

    /// Takes the service's database as the baseline (`what` names the key
    /// in errors, `role` what the copy is for) and fills a pool of copies;
    /// returns the pool and the database's name.
    async fn baseline_pool(
        &self,
        service: &ReadyService<'_>,
        host: &str,
        what: &str,
        role: &str,
    ) -> Result<(Arc<DatabasePool>, String), EnvError> {
        let (shard, name) = (self.hooks.shard, &service.spec.name);
        let pg = PgService::of(service, host)
            .ok_or_else(|| not_postgres(shard, name, what, "port 5432 is not published"))?;
        let admin = pg.admin(name, shard, what).await?;
        admin.take_baseline(&pg.database).await.map_err(|e| {
            not_postgres(
                shard,
                name,
                what,
                &format!("cannot copy {} as the {role}: {e}", pg.database),
            )
        })?;
        let swapper = pg.admin(name, shard, what).await?;
        let pool = DatabasePool::new(name, admin, swapper);
        pool.fill().await;
        Ok((pool, pg.database))
    }

    /// A kept service taken over by a new run (`--reuse`): the baseline taken
    /// after its setup is there already; copies left from the run that kept
    /// it are dropped (who knows which were handed out), the pool refills in
    /// the background so the first test need not wait for all of it.
    pub(crate) async fn reattach(
        &mut self,
        service: &ReadyService<'_>,
        host: &str,
    ) -> Result<(), EnvError> {
        let spec = service.spec;
        let shard = self.hooks.shard;
        let what = if spec.per_test_databases {
            "databases = \"per-test\""
        } else {
            "reset = \"postgres\""
        };
        let postgres = spec.per_test_databases || matches!(spec.reset, Some(Reset::Postgres));
        if !postgres {
            // Redis and exec resets hold no state of their own.
            return self.add_reset_only(service, host);
        }
        let pg = PgService::of(service, host)
            .ok_or_else(|| not_postgres(shard, &spec.name, what, "port 5432 is not published"))?;
        let admin = pg.admin(&spec.name, shard, what).await?;
        let swapper = pg.admin(&spec.name, shard, what).await?;
        admin.drop_copies().await.map_err(|e| {
            not_postgres(
                shard,
                &spec.name,
                what,
                &format!("cannot drop the kept copies: {e}"),
            )
        })?;
        let pool = DatabasePool::new(&spec.name, admin, swapper);
        let filling = pool.clone();
        tokio::spawn(async move { filling.fill().await });
        if spec.per_test_databases {
            self.hooks.pools.push(pool);
        } else {
            let target = ResetTarget::Postgres {
                pool,
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
                let address = redis_address(service, host)?;
                self.hooks
                    .resets
                    .push((spec.name.clone(), ResetTarget::Redis { address }));
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

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `FLUSHALL` over RESP: a Redis baseline is empty.
async fn flushall(address: &str) -> Result<(), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"*1\r\n$8\r\nFLUSHALL\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut reply = [0u8; 256];
        let n = stream.read(&mut reply).await.map_err(|e| e.to_string())?;
        let reply = String::from_utf8_lossy(&reply[..n]);
        if reply.starts_with("+OK") {
            Ok(())
        } else {
            Err(format!("FLUSHALL answered {:?}", reply.trim()))
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("no answer from {address} within 10 s"))?
}

impl DockerTestHooks {
    async fn reset_all(&self) -> Result<(), String> {
        for (service, target) in &self.resets {
            let result = match target {
                ResetTarget::Postgres { pool, database } => {
                    pool.swap_into(database).await.map_err(|e| e.to_string())
                }
                ResetTarget::Redis { address } => flushall(address).await,
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
    ) -> Result<Vec<ExportedVar>, String> {
        let mut vars = Vec::new();
        for export in &self.exports {
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

#[async_trait::async_trait]
impl TestHooks for DockerTestHooks {
    async fn before_attempt(&self) -> Result<AttemptEnv, EnvError> {
        let work = async {
            self.reset_all().await?;
            let mut databases = HashMap::new();
            let mut handed_out = Vec::new();
            for pool in &self.pools {
                let name = pool
                    .take()
                    .await
                    .map_err(|e| format!("a database of service {}: {e}", pool.service))?;
                handed_out.push(format!("{}\u{1f}{name}", pool.service));
                databases.insert(pool.service.as_str(), name);
            }
            let vars = self.render_exports(&databases)?;
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
