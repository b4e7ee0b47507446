//! Environments from the CLI's side: finding and loading `ephem.toml`,
//! connecting the backend, `--keep-env`, and `cargo ephem up` / `down`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use camino::{Utf8Path, Utf8PathBuf};
use ephem_core::discover::{CargoOptions, Workspace};
use ephem_core::mask::Masker;
use ephem_core::report::summary::shell_quote;
use ephem_core::{exit_codes, EphemError, Result};
use ephem_fixtures::{
    Backend, DockerBackend, EnvEvent, Environment, EphemConfig, RunContext, ShardContext,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::cli::{DownArgs, EnvArgs, EnvFormat, UpArgs};

/// A loaded configuration and where it came from.
pub struct LoadedConfig {
    pub path: Utf8PathBuf,
    pub config: EphemConfig,
}

/// A connected backend and the events it reports.
pub struct Connected {
    pub backend: Arc<DockerBackend>,
    pub events: UnboundedReceiver<EnvEvent>,
    pub config_path: Utf8PathBuf,
}

/// `--config`, else `ephem.toml` at the workspace root when present; none
/// with `--no-env`. Errors name file, line and key (exit 2).
pub fn load_config(root: &Utf8Path, args: &EnvArgs) -> Result<Option<LoadedConfig>> {
    if args.no_env {
        return Ok(None);
    }
    let path = match &args.config {
        Some(p) => p.clone(),
        None => {
            let default = root.join("ephem.toml");
            if !default.exists() {
                return Ok(None);
            }
            default
        }
    };
    let config = EphemConfig::load(&path)?;
    Ok(Some(LoadedConfig { path, config }))
}

/// Connects to the Docker daemon (within 5 s) for this configuration.
pub async fn connect(loaded: LoadedConfig) -> Result<Connected> {
    let (tx, events) = unbounded_channel();
    let backend = DockerBackend::connect(loaded.config, tx).await?;
    Ok(Connected {
        backend: Arc::new(backend),
        events,
        config_path: loaded.path,
    })
}

/// Prints how to reach and remove environments kept with `--keep-env`.
/// Generated secrets stay masked here: the variables of a kept environment
/// can be read with `docker inspect` by whoever needs them.
pub fn print_kept(kept: &[(u32, Environment)], run_id: &str) {
    if kept.is_empty() {
        return;
    }
    eprintln!("Kept {} environment(s) of run {run_id}:", kept.len());
    for (shard, env) in kept {
        let masker = Masker::new(env.secrets.clone());
        eprintln!("  shard {shard}:");
        for var in &env.vars {
            eprintln!("    {}={}", var.name, masker.mask(&var.value));
        }
        for hint in &env.connect_hints {
            eprintln!("    {}", masker.mask(hint));
        }
    }
    eprintln!("Remove them with:");
    let filter = format!("--filter label=cargo-ephem.run={run_id}");
    eprintln!(
        "  docker rm -f -v $(docker ps -aq {filter}); \
         docker network rm $(docker network ls -q {filter}); \
         docker volume rm $(docker volume ls -q {filter})"
    );
    eprintln!(
        "(until then, sweeps and `cargo ephem gc` leave them alone for --env-ttl after the run)"
    );
}

/// What `up` leaves for `down`: enough to stop it, or to clean up after it
/// if it was killed.
#[derive(Serialize, Deserialize)]
struct UpState {
    run_id: String,
    shard: u32,
    pid: u32,
    config: Utf8PathBuf,
}

fn state_dir(ws: &Workspace) -> Utf8PathBuf {
    ws.target_dir.join("ephem")
}

fn state_file(ws: &Workspace, shard: u32) -> Utf8PathBuf {
    state_dir(ws).join(format!("up-shard-{shard}.json"))
}

fn workspace_of(manifest_path: &Option<Utf8PathBuf>) -> Result<Workspace> {
    Workspace::load(&CargoOptions {
        manifest_path: manifest_path.clone(),
        ..Default::default()
    })
}

pub fn up(args: UpArgs) -> Result<i32> {
    let ws = workspace_of(&args.manifest_path)?;
    let env_args = EnvArgs {
        config: args.config.clone(),
        ..Default::default()
    };
    let Some(loaded) = load_config(&ws.root, &env_args)? else {
        return Err(EphemError::Usage(format!(
            "no environment configuration: {} does not exist; create it or pass --config PATH",
            ws.root.join("ephem.toml")
        )));
    };
    let state_path = state_file(&ws, args.shard);
    if let Ok(text) = std::fs::read_to_string(&state_path) {
        if let Ok(old) = serde_json::from_str::<UpState>(&text) {
            if pid_alive(old.pid) {
                return Err(EphemError::Usage(format!(
                    "the environment of shard {} is already up (process {}, run {}); \
                     use it, or remove it with `cargo ephem down --shard {}`",
                    old.shard, old.pid, old.run_id, old.shard
                )));
            }
        }
    }
    let config_path = loaded
        .path
        .canonicalize_utf8()
        .unwrap_or(loaded.path.clone());
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let connected = connect(loaded).await?;
        let mut events = connected.events;
        let backend = connected.backend;
        // Pull progress, on stderr while we wait.
        let printer = tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    EnvEvent::ImageReady { image, pulled: true } => eprintln!("    PULLED {image}"),
                    EnvEvent::ServiceExited { shard, service, exit_code, .. } => eprintln!(
                        "warning: service {service} of shard {shard} exited (code {})",
                        exit_code.map(|c| c.to_string()).unwrap_or_else(|| "?".into())
                    ),
                    _ => {}
                }
            }
        });
        let run_id = format!("up-{}", uuid::Uuid::new_v4());
        let ctx = ShardContext {
            run: RunContext {
                run_id: run_id.clone(),
                shard_count: args.shard,
                // A development environment lives as long as its `up`
                // process; the deadline only matters once it is gone.
                expires_at: SystemTime::now() + Duration::from_secs(12 * 3600),
            },
            shard: args.shard,
        };
        let state = UpState {
            run_id: run_id.clone(),
            shard: args.shard,
            pid: std::process::id(),
            config: config_path,
        };
        // Written before anything is created, so `down` can clean up even
        // if this process is killed half-way.
        write_state(&state_path, &state)?;
        let mut signals = Signals::new();
        let provisioned = tokio::select! {
            r = async {
                backend.prepare(&ctx.run).await?;
                backend.provision(&ctx).await
            } => Some(r),
            _ = signals.recv() => None,
        };
        let code = match provisioned {
            Some(Ok(env)) => {
                print_env(&env, &ctx, args.format);
                eprintln!(
                    "environment of shard {} is up (run {run_id}); Ctrl-C here or `cargo ephem down` removes it",
                    args.shard
                );
                signals.recv().await;
                eprintln!("removing the environment of shard {} ...", args.shard);
                exit_codes::OK
            }
            Some(Err(e)) => {
                eprintln!("error: {e}");
                exit_codes::ENVIRONMENT_FAILED
            }
            None => {
                eprintln!("interrupted; removing what was created ...");
                exit_codes::SIGNAL_BASE + libc::SIGINT
            }
        };
        let torn = backend.teardown(&ctx).await;
        let _ = std::fs::remove_file(&state_path);
        printer.abort();
        torn?;
        Ok(code)
    })
}

fn write_state(path: &Utf8Path, state: &UpState) -> Result<()> {
    let io = |source| EphemError::Io {
        action: "cannot write the state of `up`",
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let json = serde_json::to_string(state).expect("state serializes");
    std::fs::write(path, json).map_err(io)
}

fn print_env(env: &Environment, ctx: &ShardContext, format: EnvFormat) {
    // `up` exists to hand a developer the real connection details, so
    // nothing is masked here (unlike test output and reports).
    match format {
        EnvFormat::Env => {
            for var in &env.vars {
                println!("{}={}", var.name, shell_quote(&var.value));
            }
        }
        EnvFormat::Json => {
            let vars: serde_json::Map<String, serde_json::Value> = env
                .vars
                .iter()
                .map(|v| (v.name.clone(), serde_json::Value::String(v.value.clone())))
                .collect();
            let doc = serde_json::json!({
                "run_id": ctx.run.run_id,
                "shard": ctx.shard,
                "vars": vars,
                "connect": env.connect_hints,
            });
            println!("{doc}");
        }
    }
}

pub fn down(args: DownArgs) -> Result<i32> {
    let ws = workspace_of(&args.manifest_path)?;
    let mut states = Vec::new();
    if let Ok(entries) = std::fs::read_dir(state_dir(&ws)) {
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !(name.starts_with("up-shard-") && name.ends_with(".json")) {
                continue;
            }
            if let Ok(state) = std::fs::read_to_string(&path)
                .map_err(|_| ())
                .and_then(|t| serde_json::from_str::<UpState>(&t).map_err(|_| ()))
            {
                if args.shard.is_none_or(|s| s == state.shard) {
                    states.push((path, state));
                }
            }
        }
    }
    if states.is_empty() {
        eprintln!("no environment started by `cargo ephem up` in {}", ws.root);
        return Ok(exit_codes::OK);
    }
    let runtime = super::runtime()?;
    for (path, state) in states {
        if pid_alive(state.pid) {
            // The `up` process removes its own environment on SIGTERM.
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(state.pid as i32, libc::SIGTERM) };
            // `up` removes its state file once its environment is gone.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while path.exists() && pid_alive(state.pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if path.exists() {
            // `up` was killed before it could clean up: remove by label.
            let config = EphemConfig::load(&state.config)?;
            runtime.block_on(async {
                let connected = connect(LoadedConfig {
                    path: state.config.clone(),
                    config,
                })
                .await?;
                let ctx = ShardContext {
                    run: RunContext {
                        run_id: state.run_id.clone(),
                        shard_count: state.shard,
                        expires_at: SystemTime::now(),
                    },
                    shard: state.shard,
                };
                connected.backend.teardown(&ctx).await?;
                Ok::<_, EphemError>(())
            })?;
            let _ = std::fs::remove_file(&path);
        }
        eprintln!(
            "removed the environment of shard {} (run {})",
            state.shard, state.run_id
        );
    }
    Ok(exit_codes::OK)
}

/// True when the process exists and is not a zombie (an exited process
/// whose parent has not reaped it yet).
fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if pid == 0 || unsafe { libc::kill(pid as i32, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z"),
        Err(_) => true,
    }
}

/// SIGINT, SIGTERM or SIGHUP: what ends `cargo ephem up`.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            int: signal(SignalKind::interrupt()).expect("installing a SIGINT handler"),
            term: signal(SignalKind::terminate()).expect("installing a SIGTERM handler"),
            hup: signal(SignalKind::hangup()).expect("installing a SIGHUP handler"),
        }
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {},
            _ = self.term.recv() => {},
            _ = self.hup.recv() => {},
        }
    }
}
