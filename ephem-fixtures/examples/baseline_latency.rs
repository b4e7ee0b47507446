//! How long a test waits for its baseline: a per-test database handed out
//! from the pool, a `reset = "postgres"` restore, and the two ways
//! Postgres 15 can copy a template (FILE_COPY, WAL_LOG).
//!
//! ```sh
//! EPHEM_REGISTRY_MIRROR=localhost:5000 cargo run --release -p ephem-fixtures --example baseline_latency -- [--tests 200]
//! ```
//!
//! Provisions one shard of `tests/fixtures/env-baseline-per-test.toml` (and of
//! `env-baseline-reset.toml`), then plays tests against the hooks the runner
//! calls around every attempt: four at once, each holding its database for
//! 50 ms (a short test), as a shard with `-j 4` does. The hand-out time is
//! `before_attempt`: what a test process waits for before it starts. The
//! last row resets while 8 sessions keep reconnecting to the database (a
//! client a test left behind): the reset ends them and waits for them.

use std::time::{Duration, Instant, SystemTime};

use ephem_fixtures::{Backend, DockerBackend, EphemConfig, RunContext, ShardContext};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{what}: n={} p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        times.len(),
        percentile(&times, 0.50).as_secs_f64() * 1000.0,
        percentile(&times, 0.95).as_secs_f64() * 1000.0,
        times.last().unwrap().as_secs_f64() * 1000.0
    );
}

async fn provisioned(config: &str) -> (DockerBackend, ShardContext, ephem_fixtures::Environment) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/").to_owned() + config;
    let config = EphemConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let backend = DockerBackend::connect(config, tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let run = RunContext {
        run_id: format!("latency-{}", std::process::id()),
        shard_count: 1,
        expires_at: SystemTime::now() + Duration::from_secs(600),
    };
    let shard = ShardContext { run, shard: 1 };
    backend
        .prepare(&shard.run)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let env = backend
        .provision(&shard)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (backend, shard, env)
}

/// `tests` tests, `parallel` at once, each holding its database `hold`.
async fn hand_outs(
    env: &ephem_fixtures::Environment,
    tests: usize,
    parallel: usize,
    hold: Duration,
) -> Vec<Duration> {
    let hooks = env
        .test_hooks
        .clone()
        .expect("per-test databases give hooks");
    let mut workers = Vec::new();
    for w in 0..parallel {
        let hooks = hooks.clone();
        workers.push(tokio::spawn(async move {
            let mut times = Vec::new();
            for _ in (w..tests).step_by(parallel) {
                let start = Instant::now();
                let handed = hooks
                    .before_attempt(None)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                times.push(start.elapsed());
                tokio::time::sleep(hold).await;
                hooks.after_attempt(handed).await;
            }
            times
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all
}

/// `n` sessions on `database_url` that reconnect as soon as they are ended,
/// until the returned handles are aborted.
fn reconnecting_clients(database_url: &str, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let url = database_url.to_owned();
            tokio::spawn(async move {
                loop {
                    if let Ok((client, connection)) =
                        tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(connection);
                        while client.simple_query("SELECT 1").await.is_ok() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect()
}

/// Copies `app`'s template `n` times with `strategy`, dropping each copy.
async fn copies(database_url: &str, strategy: &str, n: usize) -> Vec<Duration> {
    let url = database_url.replace("/app", "/template1");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(connection);
    let mut times = Vec::new();
    for i in 0..n {
        let name = format!("latency_{}_{i}", strategy.to_lowercase());
        let start = Instant::now();
        client
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE ephem_baseline STRATEGY {strategy}"
            ))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        times.push(start.elapsed());
        client
            .batch_execute(&format!("DROP DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    times
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tests = args
        .iter()
        .position(|a| a == "--tests")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);

    let (backend, shard, env) = provisioned("env-baseline-per-test.toml").await;
    let second = Duration::from_secs(1);
    report(
        "per-test database hand-out, warm pool (1 s tests, one at a time)",
        hand_outs(&env, tests / 4, 1, second).await,
    );
    report(
        "per-test database hand-out, sustained (200 ms tests, 4 at once)",
        hand_outs(&env, tests, 4, Duration::from_millis(200)).await,
    );
    let url = env
        .vars
        .iter()
        .find(|v| v.name == "DATABASE_URL")
        .map(|v| v.value.clone())
        .expect("DATABASE_URL is exported");
    report(
        "CREATE DATABASE ... STRATEGY FILE_COPY",
        copies(&url, "FILE_COPY", 50).await,
    );
    report(
        "CREATE DATABASE ... STRATEGY WAL_LOG",
        copies(&url, "WAL_LOG", 50).await,
    );
    backend
        .teardown(&shard)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let (backend, shard, env) = provisioned("env-baseline-reset.toml").await;
    report(
        "reset = \"postgres\" + \"redis\" before a test (1 s tests)",
        hand_outs(&env, tests / 4, 1, second).await,
    );
    report(
        "reset = \"postgres\" + \"redis\" before a test (200 ms tests)",
        hand_outs(&env, tests / 2, 1, Duration::from_millis(200)).await,
    );
    let url = env
        .vars
        .iter()
        .find(|v| v.name == "DATABASE_URL")
        .map(|v| v.value.clone())
        .expect("DATABASE_URL is exported");
    let clients = reconnecting_clients(&url, 8);
    report(
        "reset with 8 sessions reconnecting to the database (1 s tests)",
        hand_outs(&env, tests / 4, 1, second).await,
    );
    for client in clients {
        client.abort();
    }
    backend
        .teardown(&shard)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    backend.cleanup().end_run(&shard.run.run_id).await.ok();
}
