//! The refill of a kept environment's pool: `psql`s started detached in
//! the Postgres container as a `--reuse` run ends, which make the copies
//! the next run will want while nobody waits (the runner exits at once).
//!
//! Crash-safe as the pool is: a copy is `ephem_u_<n>` until its attributes
//! are set and it is renamed `ephem_t_<n>` in one transaction. The next run
//! ends the refill by its application name before it lists the copies
//! ([`PgAdmin::stop_refill`]); the refill dies with its container (`down`,
//! gc, TTL sweeps).

use std::time::Duration;

use bollard::exec::StartExecOptions;
use bollard::models::ExecConfig;
use bollard::Docker;

use super::postgres::{PgAdmin, PgService};

/// Longest the run waits for the refill's `psql`s to connect.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Starts each of `batches` in a detached `psql` of its own in `container`
/// (copies made concurrently: see `REFILL_SESSIONS` in pool.rs) and waits
/// until every `psql` is connected or has ended, so that a run taking over
/// next cannot miss one (it would connect after that run ended the others,
/// and make copies under numbers that run uses). Best effort: without the
/// refill the next run makes its copies itself.
pub(super) async fn start(
    docker: &Docker,
    container: &str,
    pg: &PgService,
    session: &PgAdmin,
    batches: &[Vec<String>],
) {
    let mut execs = Vec::new();
    for statements in batches.iter().filter(|b| !b.is_empty()) {
        let (cmd, env) = pg.psql(statements);
        let config = ExecConfig {
            cmd: Some(cmd),
            env: Some(env),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            ..Default::default()
        };
        let Ok(exec) = docker.create_exec(container, config).await else {
            continue;
        };
        let detached = StartExecOptions {
            detach: true,
            ..Default::default()
        };
        if docker.start_exec(&exec.id, Some(detached)).await.is_ok() {
            execs.push(exec.id);
        }
    }
    let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
    while !execs.is_empty() && tokio::time::Instant::now() < deadline {
        let mut running = 0;
        for id in &execs {
            let ended = docker
                .inspect_exec(id)
                .await
                .map(|i| i.running == Some(false))
                .unwrap_or(true);
            if !ended {
                running += 1;
            }
        }
        // A `psql` that ended is no longer connected: only the running
        // ones must be.
        let connected = session.refill_sessions().await.unwrap_or(0);
        if connected >= running {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
