//! Sessions on a Postgres service, and the database-level statements resets
//! and per-test databases are made of.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use super::attributes::Attributes;
use super::ReadyService;
use crate::EnvError;

/// The template every reset restores and every per-test database clones.
pub(super) const BASELINE: &str = "ephem_baseline";

/// How the runner's sessions show in `pg_stat_activity`.
const APPLICATION_NAME: &str = "cargo-ephem";

/// How the `psql` that tops a kept pool up shows in `pg_stat_activity`: the
/// run taking the environment over ends it by this name.
pub(super) const REFILL_APPLICATION: &str = "cargo-ephem-refill";

/// Longest a run taking a kept environment over waits for a refill it
/// ended to be gone.
const REFILL_STOP: Duration = Duration::from_secs(10);

/// Connection details of a Postgres service, from its `env` as the
/// official image reads it.
#[derive(Clone)]
pub(super) struct PgService {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    /// `POSTGRES_DB` (default: the user's name, as the image does).
    pub database: String,
}

impl PgService {
    pub fn of(service: &ReadyService<'_>, host: &str) -> Option<PgService> {
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

    /// A session on `template1` (never a database that is dropped, cloned
    /// or restored).
    pub async fn session(&self) -> Result<PgAdmin, tokio_postgres::Error> {
        let client = self.connect("template1", None).await?;
        let row = client
            .query_one(
                "SELECT current_setting('server_version_num')::int, pg_backend_pid()",
                &[],
            )
            .await?;
        let version: i32 = row.get(0);
        Ok(PgAdmin {
            client,
            pid: row.get(1),
            // Measured on Postgres 15 with a small baseline (the
            // baseline_latency example): WAL_LOG copies in ~240 ms, FILE_COPY
            // ~290 ms (it forces a checkpoint). Again with `fsync=off` (the
            // benchmarks' setting), 8 of each interleaved in one session at
            // load 9: WAL_LOG median ~260 ms, FILE_COPY ~500 ms. WAL_LOG is
            // 15's default; say it so a server configured otherwise still
            // gets the faster one.
            strategy: if version >= 150_000 {
                " STRATEGY WAL_LOG"
            } else {
                ""
            },
            force: version >= 130_000,
        })
    }

    /// A client on `database`, with `options` (`-c name=value ...`) over
    /// whatever the database's own settings say.
    pub async fn connect(
        &self,
        database: &str,
        options: Option<&str>,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(database)
            .application_name(APPLICATION_NAME)
            .connect_timeout(Duration::from_secs(5));
        if let Some(password) = &self.password {
            config.password(password);
        }
        if let Some(options) = options {
            config.options(options);
        }
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// A `psql` run in the service's container that runs `statements`
    /// (one transaction each) on `template1`, stopping at the first error,
    /// and the variables it needs: the command and `NAME=value` pairs.
    pub fn psql(&self, statements: &[String]) -> (Vec<String>, Vec<String>) {
        let mut cmd: Vec<String> = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U"]
            .map(str::to_owned)
            .into();
        cmd.extend([self.user.clone(), "-d".to_owned(), "template1".to_owned()]);
        for statement in statements {
            cmd.extend(["-c".to_owned(), statement.clone()]);
        }
        let mut env = vec![format!("PGAPPNAME={REFILL_APPLICATION}")];
        // The image trusts local sockets; a server that does not gets the
        // password.
        env.extend(self.password.as_ref().map(|p| format!("PGPASSWORD={p}")));
        (cmd, env)
    }

    /// [`session`](Self::session) at provisioning: a failure is the shard's.
    pub async fn admin(&self, service: &str, shard: u32, what: &str) -> Result<PgAdmin, EnvError> {
        self.session().await.map_err(|e| {
            not_postgres(
                shard,
                service,
                what,
                &format!(
                    "cannot connect to {}:{} as {} ({})",
                    self.host,
                    self.port,
                    self.user,
                    pg_message(&e)
                ),
            )
        })
    }
}

pub(super) fn not_postgres(shard: u32, service: &str, what: &str, detail: &str) -> EnvError {
    EnvError::NotReady {
        shard,
        service: service.to_owned(),
        wait: what.to_owned(),
        reason: format!("{what} needs a Postgres-compatible server on port 5432: {detail}"),
        logs: Vec::new(),
    }
}

/// A Postgres error on one line: the server's message and detail, not
/// tokio-postgres's bare "db error".
pub(super) fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        };
    }
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

/// Whether `e` says another session uses the database (a lost race with a
/// client that connected after ours were ended).
pub(super) fn in_use(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::OBJECT_IN_USE)
}

/// Whether `e` ended the session: the connection closed, or the server
/// ended it (`pg_terminate_backend`, a shutdown: class 57) or lost it
/// (class 08).
pub(super) fn session_lost(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => code.code().starts_with("57") || code.code().starts_with("08"),
        None => true,
    }
}

/// A session that creates, drops and renames databases.
pub(super) struct PgAdmin {
    pub client: tokio_postgres::Client,
    /// The session's backend, spared when others are ended.
    pub pid: i32,
    strategy: &'static str,
    /// `DROP DATABASE ... WITH (FORCE)` (Postgres 13+).
    force: bool,
}

/// `name` as a quoted identifier.
pub(super) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a string literal, as Postgres's `quote_literal` writes it
/// (right whatever `standard_conforming_strings` says).
pub(super) fn literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// How long ending the sessions on a database waits for them to be gone
/// before it gives up (clients that keep reconnecting: a swap wins against
/// them its own way). A test's own sessions go in a few ms.
pub(super) const SESSIONS_GONE_WITHIN: Duration = Duration::from_millis(300);

impl PgAdmin {
    /// Ends every other session on `database` and waits until they are
    /// gone: false if they would not go within `within`, or a prepared
    /// transaction holds the database (no session to end).
    pub async fn end_sessions(
        &self,
        database: &str,
        within: Duration,
    ) -> Result<bool, tokio_postgres::Error> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // One round trip: the prepared transactions and the sessions
            // still there (ended by this very query).
            let row = self
                .client
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_catalog.pg_prepared_xacts \
                             WHERE database = $1), \
                            (SELECT count(pg_catalog.pg_terminate_backend(pid)) \
                             FROM pg_catalog.pg_stat_activity \
                             WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid())",
                    &[&database],
                )
                .await?;
            let (prepared, left): (i64, i64) = (row.get(0), row.get(1));
            if prepared > 0 {
                return Ok(false);
            }
            if left == 0 {
                return Ok(true);
            }
            if tokio::time::Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Ends every other session on `database` (a rename or a template copy
    /// needs it alone).
    pub async fn terminate_sessions(&self, database: &str) -> Result<(), tokio_postgres::Error> {
        self.client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&database],
            )
            .await
            .map(|_| ())
    }

    /// Those of `names` that exist.
    pub async fn existing(&self, names: &[&str]) -> Result<Vec<String>, tokio_postgres::Error> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let rows = self
            .client
            .query(
                "SELECT datname::text FROM pg_database WHERE datname = ANY($1)",
                &[&names],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn drop_database(&self, name: &str) -> Result<(), tokio_postgres::Error> {
        if !self.force {
            self.terminate_sessions(name).await?;
        }
        self.client.batch_execute(&self.drop_statement(name)).await
    }

    /// `DROP DATABASE IF EXISTS`, ending the sessions in it where the
    /// server can (13+).
    pub fn drop_statement(&self, name: &str) -> String {
        let force = if self.force { " WITH (FORCE)" } else { "" };
        format!("DROP DATABASE IF EXISTS {}{force}", ident(name))
    }

    /// `CREATE DATABASE to TEMPLATE from`; with `connections` false nobody
    /// can connect to the copy until it is allowed again.
    pub async fn clone_database(
        &self,
        from: &str,
        to: &str,
        connections: bool,
    ) -> Result<(), tokio_postgres::Error> {
        self.client
            .batch_execute(&self.clone_statement(from, to, connections))
            .await
    }

    /// The statement [`clone_database`](Self::clone_database) runs.
    pub fn clone_statement(&self, from: &str, to: &str, connections: bool) -> String {
        let closed = if connections {
            ""
        } else {
            " ALLOW_CONNECTIONS false"
        };
        format!(
            "CREATE DATABASE {} TEMPLATE {}{}{closed}",
            ident(to),
            ident(from),
            self.strategy
        )
    }

    /// How many sessions of a refill ([`REFILL_APPLICATION`]) are connected.
    pub async fn refill_sessions(&self) -> Result<i64, tokio_postgres::Error> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&REFILL_APPLICATION],
            )
            .await?;
        Ok(row.get::<_, i64>(0))
    }

    /// Ends a refill the last run left running and waits until it is gone:
    /// then no copy changes name behind the caller's back (the one it was
    /// making stays `ephem_u_<n>`, dropped), and its numbers are free.
    pub async fn stop_refill(&self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + REFILL_STOP;
        loop {
            self.client
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1",
                    &[&REFILL_APPLICATION],
                )
                .await
                .map_err(|e| pg_message(&e))?;
            if self.refill_sessions().await.map_err(|e| pg_message(&e))? == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the refill of the kept copies (application_name {REFILL_APPLICATION}) \
                     did not stop within {} s; remove the environment with `cargo ephem down`",
                    REFILL_STOP.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every copy of the baseline on the server (`ephem_u_<n>`: being made
    /// or handed out; `ephem_t_<n>`: ready), as a run that kept the
    /// environment left them.
    pub async fn copies(&self) -> Result<Vec<String>, tokio_postgres::Error> {
        let rows = self
            .client
            .query(
                "SELECT datname::text FROM pg_database WHERE datname ~ '^ephem_[tu]_[0-9]+$'",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Takes the baseline: `database` as it is now becomes the template,
    /// with what `CREATE DATABASE` does not copy (owner, privileges,
    /// settings...) applied to it so that copies (and a later run taking the
    /// environment over) find it there. Nobody can connect to the template.
    /// `ender` ends the sessions that would keep the copy from starting.
    pub async fn take_baseline(
        &self,
        ender: &PgAdmin,
        database: &str,
    ) -> Result<Attributes, String> {
        let attributes = Attributes::read(&self.client, database).await?;
        let copied = async {
            self.drop_database(BASELINE).await?;
            // Setup's own sessions may linger, and a client may reconnect: a
            // template must have none.
            ender
                .ending_sessions(
                    &[database],
                    self.pid,
                    self.clone_database(database, BASELINE, true),
                )
                .await?;
            self.client
                .batch_execute(&format!(
                    "{}ALTER DATABASE {} ALLOW_CONNECTIONS false",
                    attributes.statements(BASELINE),
                    ident(BASELINE)
                ))
                .await
        };
        copied.await.map_err(|e| pg_message(&e))?;
        Ok(attributes)
    }

    /// Runs `work` (a statement that needs the databases `names` to
    /// itself: renames, a template copy) while this session ends every
    /// session on them but `spare`'s, again and again until `work` is done.
    ///
    /// A client may connect between a `pg_terminate_backend` and the
    /// statement; once the statement holds its lock on the database, new
    /// sessions wait for it, and the statement itself waits up to 5 s for
    /// the ones already in: ending them meanwhile lets it through. This
    /// session sees the names as they were until `work` commits.
    pub async fn ending_sessions<T>(
        &self,
        names: &[&str],
        spare: i32,
        work: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, tokio_postgres::Error> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let ending = async {
            loop {
                // A failure here shows as `work`'s own (it cannot get in).
                let _ = self
                    .client
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = ANY($1) AND pid <> $2 AND pid <> pg_backend_pid()",
                        &[&names, &spare],
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        };
        tokio::select! {
            done = work => done,
            _ = ending => unreachable!("ending sessions loops until work is done"),
        }
    }
}
