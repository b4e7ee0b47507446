//! The refill of a kept environment's pool: a `psql` started detached in
//! the Postgres container as a `--reuse` run ends, which makes the copies
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

/// Longest the run waits for the refill's `psql` to connect.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Starts `statements` in a detached `psql` in `container` and waits until
/// it is connected or has ended, so that a run taking the environment over
/// next cannot miss it (it connects after that run ended it otherwise, and
/// makes copies under numbers that run uses). Best effort: without the
/// refill the next run makes its copies itself.
pub(super) async fn start(
    docker: &Docker,
    container: &str,
    pg: &PgService,
    session: &PgAdmin,
    statements: &[String],
) {
    let (cmd, env) = pg.psql(statements);
    let config = ExecConfig {
        cmd: Some(cmd),
        env: Some(env),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        ..Default::default()
    };
    let Ok(exec) = docker.create_exec(container, config).await else {
        return;
    };
    let detached = StartExecOptions {
        detach: true,
        ..Default::default()
    };
    if docker.start_exec(&exec.id, Some(detached)).await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
    while tokio::time::Instant::now() < deadline {
        if session.refill_connected().await.unwrap_or(false) {
            return;
        }
        let ended = docker
            .inspect_exec(&exec.id)
            .await
            .map(|i| i.running == Some(false))
            .unwrap_or(true);
        if ended {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
