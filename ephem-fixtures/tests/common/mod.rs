//! Shared by the integration tests: a unique run per test, and teardown plus a
//! leftover check that run whether the test body passed or panicked.
#![allow(dead_code)]

pub mod runs;

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions};
use bollard::Docker;
use ephem_fixtures::{
    Backend, DockerBackend, EnvError, EnvEvent, Environment, EphemConfig, RunContext, ShardContext,
};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;

/// Mirror holding the stand-in images on this machine.
pub const MIRROR: &str = "localhost:5000";

/// A test's backend, run and received events.
pub struct Scenario {
    pub backend: Arc<DockerBackend>,
    pub run: RunContext,
    pub events: mpsc::UnboundedReceiver<EnvEvent>,
}

impl Scenario {
    /// The context of 1-based shard `n`.
    pub fn shard(&self, n: u32) -> ShardContext {
        ShardContext {
            run: self.run.clone(),
            shard: n,
        }
    }

    /// `prepare` then `provision` for shard `n`.
    pub async fn up(&self, n: u32) -> Result<Environment, EnvError> {
        self.backend.prepare(&self.run).await?;
        self.backend.provision(&self.shard(n)).await
    }

    /// Drains the events received so far.
    pub fn drain_events(&mut self) -> Vec<EnvEvent> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            out.push(event);
        }
        out
    }

    pub fn docker(&self) -> &Docker {
        self.backend.client()
    }
}

/// A run id whose first 8 characters are random, so that container names
/// (`ephem-<run8>-s<shard>-<service>`) never collide between tests.
pub fn unique_run_id(test: &str) -> String {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("random source");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}-{test}")
}

/// Loads `toml` (with `[images] mirror` prepended unless present), connects,
/// runs `body`, then always tears down `shards` shards and checks that nothing
/// labelled with the run is left, before re-raising a panic of `body`.
pub async fn scenario<F, Fut>(test: &str, toml: &str, shards: u32, body: F)
where
    F: FnOnce(Scenario) -> Fut,
    Fut: Future<Output = Scenario>,
{
    let text = if toml.contains("[images]") {
        toml.to_owned()
    } else {
        format!("[images]\nmirror = \"{MIRROR}\"\n\n{toml}")
    };
    let config =
        EphemConfig::parse(&text, format!("{test}.toml")).unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = Arc::new(
        DockerBackend::connect(config, tx)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let run = RunContext {
        run_id: unique_run_id(test),
        shard_count: shards,
        expires_at: SystemTime::now() + Duration::from_secs(3600),
    };
    let scenario = Scenario {
        backend: backend.clone(),
        run: run.clone(),
        events: rx,
    };
    let outcome = AssertUnwindSafe(body(scenario)).catch_unwind().await;

    let mut cleanup_errors = Vec::new();
    for n in 1..=shards {
        let shard = ShardContext {
            run: run.clone(),
            shard: n,
        };
        if let Err(e) = backend.teardown(&shard).await {
            cleanup_errors.push(e.to_string());
        }
    }
    let leftovers = leftovers(backend.client(), &run.run_id).await;
    match outcome {
        Err(panic) => std::panic::resume_unwind(panic),
        Ok(_) => {
            assert!(
                cleanup_errors.is_empty(),
                "teardown failed: {cleanup_errors:?}"
            );
            assert!(
                leftovers.is_empty(),
                "left behind after teardown: {leftovers:?}"
            );
        }
    }
}

/// Names of containers and networks still labelled with `run_id`.
pub async fn leftovers(docker: &Docker, run_id: &str) -> Vec<String> {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("cargo-ephem.run={run_id}")],
    )]);
    let mut names = Vec::new();
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .expect("list containers");
    names.extend(
        containers
            .into_iter()
            .flat_map(|c| c.names.unwrap_or_default()),
    );
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .expect("list networks");
    names.extend(networks.into_iter().filter_map(|n| n.name));
    names
}

/// Runs `cmd` in `container`; returns its exit code and output.
pub async fn exec(docker: &Docker, container: &str, cmd: &[&str]) -> (i64, String) {
    let exec = docker
        .create_exec(
            container,
            ExecConfig {
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("create exec");
    let mut output = String::new();
    if let StartExecResults::Attached {
        output: mut stream, ..
    } = docker
        .start_exec(&exec.id, None::<StartExecOptions>)
        .await
        .expect("start exec")
    {
        while let Some(Ok(chunk)) = stream.next().await {
            output.push_str(&chunk.to_string());
        }
    }
    let code = docker
        .inspect_exec(&exec.id)
        .await
        .expect("inspect exec")
        .exit_code
        .unwrap_or(-1);
    (code, output)
}

/// The value of exported variable `name`.
pub fn var<'a>(env: &'a Environment, name: &str) -> &'a str {
    env.vars
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.value.as_str())
        .unwrap_or_else(|| panic!("{name} not exported: {:?}", env.vars))
}

/// The container name of `service` in `shard`, as the backend names it.
pub fn container_name(run: &RunContext, shard: u32, service: &str) -> String {
    let short: String = run
        .run_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    format!("ephem-{}-s{shard}-{service}", short.to_ascii_lowercase())
}

/// The `NotReady` fields of `result`, or a panic saying what came instead.
pub fn not_ready(result: Result<Environment, EnvError>) -> (String, String, Vec<String>) {
    match result {
        Err(EnvError::NotReady {
            service,
            reason,
            logs,
            ..
        }) => (service, reason, logs),
        Err(other) => panic!("expected NotReady, got: {other}"),
        Ok(env) => panic!("expected NotReady, got a ready environment: {:?}", env.vars),
    }
}
