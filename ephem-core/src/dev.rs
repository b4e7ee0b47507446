//! `cargo ephem up` and `down`: one shard's environment for local
//! development, kept until Ctrl-C or `down`, and covered by the same safety
//! nets as a test run (a reaper, a renewed expiry).

use std::time::{Duration, SystemTime};

use camino::{Utf8Path, Utf8PathBuf};
use ephem_fixtures::sweep::{local_process_state, ProcessState};
use ephem_fixtures::{BackendKind, EnvEvent, Environment, RunContext, ShardContext};
use serde::{Deserialize, Serialize};

use crate::discover::{CargoOptions, Workspace};
use crate::environments::{Connected, EnvSetup};
use crate::error::{exit_codes, EphemError, Result};
use crate::hold::{self, Renewal};
use crate::mask;
use crate::options::{DownOptions, UpOptions, VarsFormat};
use crate::report::summary::shell_quote;
use crate::signals::Signals;
use crate::teardown::reaper::{self, Reaper, RunEnd};

/// What `up` leaves for `down`: enough to stop it, or to clean up after it
/// if it was killed. `down` trusts none of it blindly: the process is only
/// signalled if it still is the one that wrote the file.
#[derive(Serialize, Deserialize)]
struct UpState {
    run_id: String,
    shard: u32,
    /// The `up` process.
    pid: u32,
    /// Its start time in clock ticks since boot, so a recycled pid is not
    /// taken for it.
    pid_start: Option<u64>,
    backend: String,
    config: Utf8PathBuf,
}

impl UpState {
    /// Reads and checks a state file; the error says what is wrong with it.
    fn read(path: &Utf8Path) -> std::result::Result<UpState, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        let state: UpState = serde_json::from_str(&text)
            .map_err(|e| format!("not a state file of `cargo ephem up` ({e})"))?;
        if state.pid == 0 || state.pid > i32::MAX as u32 {
            return Err(format!(
                "it names pid {}, which no process can have (allowed: 1 to {})",
                state.pid,
                i32::MAX
            ));
        }
        let run_ok = state.run_id.starts_with("up-")
            && state.run_id[3..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && state.run_id.len() > 3;
        if !run_ok {
            return Err(format!(
                "it names run {:?}, which `cargo ephem up` never makes",
                state.run_id
            ));
        }
        state.backend.parse::<BackendKind>()?;
        Ok(state)
    }

    fn backend(&self) -> BackendKind {
        self.backend.parse().unwrap_or_default()
    }
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

/// Whether the process a state file names is still the `up` that wrote it.
fn up_process(state: &UpState) -> ProcessState {
    match state.pid_start {
        Some(start) => local_process_state(state.pid, Some(start)),
        // Without a start time nothing proves the pid is still ours.
        None => match local_process_state(state.pid, None) {
            ProcessState::Gone => ProcessState::Gone,
            _ => ProcessState::Reused,
        },
    }
}

/// `cargo ephem up`: starts one shard's environment, prints its variables,
/// and keeps it (renewing its expiry) until a signal.
pub fn up(options: &UpOptions) -> Result<i32> {
    let ws = workspace_of(&options.manifest_path)?;
    let setup = EnvSetup::require(&ws.root, &options.env)?;
    let state_path = state_file(&ws, options.shard);
    refuse_if_up(&state_path)?;
    let config_path = setup
        .path
        .canonicalize_utf8()
        .unwrap_or_else(|_| setup.path.clone());
    let run_id = format!("up-{}", uuid::Uuid::new_v4());
    let backend = setup.backend;
    let runtime = crate::runtime()?;
    let connected = runtime.block_on(setup.connect())?;
    let reaper = Reaper::spawn(
        &options.reaper,
        &run_id,
        Some(backend),
        Some(&config_path),
        &reaper::log_path(&ws.target_dir, &run_id),
    )
    .map_err(|e| EphemError::Internal(format!("cannot start the reaper process: {e}")))?;
    let me = std::process::id();
    let state = UpState {
        run_id: run_id.clone(),
        shard: options.shard,
        pid: me,
        pid_start: ephem_fixtures::process::start_time(me),
        backend: backend.name().to_owned(),
        config: config_path,
    };
    // Written before anything is created, so `down` can clean up even if
    // this process is killed half-way.
    write_state(&state_path, &state)?;
    let ctx = ShardContext {
        run: RunContext {
            run_id,
            shard_count: options.shard,
            expires_at: SystemTime::now() + options.env.env_ttl,
        },
        shard: options.shard,
    };
    let result = runtime.block_on(keep_up(connected, ctx, options));
    reaper.finish(RunEnd::Done);
    let _ = std::fs::remove_file(&state_path);
    result
}

fn refuse_if_up(state_path: &Utf8Path) -> Result<()> {
    if !state_path.exists() {
        return Ok(());
    }
    match UpState::read(state_path) {
        Ok(old) if up_process(&old) == ProcessState::Alive => Err(EphemError::Usage(format!(
            "the environment of shard {} is already up (process {}, run {}); \
             use it, or remove it with `cargo ephem down --shard {}`",
            old.shard, old.pid, old.run_id, old.shard
        ))),
        // Its `up` is gone (its reaper removed the environment): start anew.
        Ok(_) => Ok(()),
        Err(why) => Err(EphemError::Input {
            path: state_path.to_owned(),
            message: format!("{why}; delete it if no `cargo ephem up` runs, then retry"),
        }),
    }
}

/// Provisions, prints, waits for a signal while renewing, tears down.
async fn keep_up(connected: Connected, ctx: ShardContext, options: &UpOptions) -> Result<i32> {
    let Connected {
        backend,
        cleanup,
        mut events,
        ..
    } = connected;
    // Pull progress and service deaths, on stderr while we wait.
    let printer = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                EnvEvent::ImageReady {
                    image,
                    pulled: true,
                } => eprintln!("    PULLED {image}"),
                EnvEvent::ServiceExited {
                    shard,
                    service,
                    exit_code,
                    ..
                } => eprintln!(
                    "warning: service {service} of shard {shard} exited (code {})",
                    exit_code.map_or("?".to_owned(), |c| c.to_string())
                ),
                EnvEvent::Warning { message, .. } => {
                    eprintln!("warning: {}", mask::error_text(&message))
                }
                EnvEvent::Note { message } => eprintln!("note: {}", mask::error_text(&message)),
                EnvEvent::Waiting {
                    service,
                    message,
                    warning: true,
                    ..
                } => eprintln!("   WAITING {service}: {}", mask::error_text(&message)),
                _ => {}
            }
        }
    });
    let mut signals = Signals::new();
    let provisioned = tokio::select! {
        r = async {
            backend.prepare(&ctx.run).await?;
            backend.provision(&ctx).await
        } => Some(r),
        _ = signals.recv() => None,
    };
    let ttl = options.env.env_ttl;
    let code = match provisioned {
        Some(Ok(env)) => {
            for secret in &env.secrets {
                ephem_fixtures::secret::register(secret);
            }
            print_env(&env, &ctx, options.format);
            eprintln!(
                "environment of shard {} is up (run {}); Ctrl-C here or `cargo ephem down` removes it",
                ctx.shard, ctx.run.run_id
            );
            let renewal = Renewal::start(cleanup.clone(), ctx.run.run_id.clone(), ttl);
            signals.recv().await;
            renewal.stop().await;
            eprintln!("removing the environment of shard {} ...", ctx.shard);
            exit_codes::OK
        }
        Some(Err(e)) => {
            // `up` prints real values on stdout on purpose; its errors and
            // notes are masked like everything else.
            eprintln!("error: {}", mask::error_text(&e.to_string()));
            exit_codes::ENVIRONMENT_FAILED
        }
        None => {
            eprintln!("interrupted; removing what was created ...");
            exit_codes::SIGNAL_BASE + libc::SIGINT
        }
    };
    let removed = hold::remove(&backend, cleanup.as_ref(), &ctx.run, &[ctx.shard]).await;
    printer.abort();
    removed?;
    Ok(code)
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
    let json = serde_json::to_string(state)
        .map_err(|e| EphemError::Internal(format!("serializing the state of `up`: {e}")))?;
    std::fs::write(path, json).map_err(io)
}

fn print_env(env: &Environment, ctx: &ShardContext, format: VarsFormat) {
    // `up` exists to hand a developer the real connection details, so
    // nothing is masked here (unlike test output and reports).
    match format {
        VarsFormat::Env => {
            for var in &env.vars {
                println!("{}={}", var.name, shell_quote(&var.value));
            }
        }
        VarsFormat::Json => {
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

/// `cargo ephem down`: stops this workspace's `up` processes, or removes
/// their environments by label when they are gone, and removes what
/// `--reuse` kept. Exit 2 when a state file cannot be trusted (nothing is
/// signalled for it) or a kept environment is in use (it is left alone).
pub fn down(options: &DownOptions) -> Result<i32> {
    let ws = workspace_of(&options.manifest_path)?;
    let files = state_files(&ws, options.shard);
    let mut code = exit_codes::OK;
    // `--shard` names an `up`; what `--reuse` kept goes with a plain `down`.
    let kept = match options.shard {
        None => remove_kept_for_reuse(&ws)?,
        Some(_) => KeptDown::default(),
    };
    if kept.in_use > 0 {
        code = exit_codes::USAGE;
    }
    if files.is_empty() {
        if kept.removed + kept.in_use == 0 {
            eprintln!(
                "no environment started by `cargo ephem up` or kept by `--reuse` in {}",
                ws.root
            );
        }
        return Ok(code);
    }
    for path in files {
        let state = match UpState::read(&path) {
            Ok(state) => state,
            Err(why) => {
                eprintln!(
                    "error: {path}: {why}; nothing was signalled or removed; \
                     delete the file if no `cargo ephem up` uses it"
                );
                code = exit_codes::USAGE;
                continue;
            }
        };
        if !bring_down(&path, &state, options.backend)? {
            code = exit_codes::USAGE;
        }
    }
    Ok(code)
}

/// How many kept shards `down` removed, and how many it left to the live
/// process using them.
#[derive(Default)]
struct KeptDown {
    removed: usize,
    in_use: usize,
}

/// Removes the environments `cargo ephem test --reuse` kept for this
/// workspace, each claimed first as a run would, so that one a run takes
/// over meanwhile is never removed under it; those a live run uses are left
/// alone, each with an `error:` line. A daemon that cannot be reached holds
/// none worth a failure here.
fn remove_kept_for_reuse(ws: &Workspace) -> Result<KeptDown> {
    use ephem_fixtures::docker::reuse::{self, DownOutcome};
    let workspace = reuse::workspace_id(ws.root.as_str());
    let runtime = crate::runtime()?;
    let outcomes = runtime.block_on(async {
        let Ok(cleanup) = ephem_fixtures::docker::DockerCleanup::connect().await else {
            return Ok(Vec::new());
        };
        reuse::down(cleanup.client(), &workspace).await
    })?;
    let mut removed: std::collections::BTreeMap<&str, Vec<u32>> = Default::default();
    let mut in_use: Vec<&str> = Vec::new();
    for outcome in &outcomes {
        match outcome {
            DownOutcome::Removed { run, shard } => removed.entry(run).or_default().push(*shard),
            DownOutcome::InUse { run, shard, holder } => {
                in_use.push(run);
                eprintln!(
                    "error: left the environment kept by --reuse (run {run}, shard {shard}) alone: \
                     a running `cargo ephem test` ({holder}) uses it; run `cargo ephem down` \
                     again once it has ended"
                );
            }
        }
    }
    for (run, shards) in &removed {
        if in_use.contains(run) {
            let list: Vec<String> = shards.iter().map(u32::to_string).collect();
            eprintln!(
                "removed shard(s) {} of the environment kept by --reuse (run {run})",
                list.join(", ")
            );
        } else {
            eprintln!("removed the environment kept by --reuse (run {run})");
        }
    }
    Ok(KeptDown {
        removed: removed.values().map(Vec::len).sum(),
        in_use: in_use.len(),
    })
}

/// The state files of `up`, by shard number in their name.
fn state_files(ws: &Workspace, shard: Option<u32>) -> Vec<Utf8PathBuf> {
    let Ok(entries) = state_dir(ws).read_dir_utf8() else {
        return Vec::new();
    };
    let mut files: Vec<Utf8PathBuf> = entries
        .flatten()
        .filter(|e| {
            let number = e
                .file_name()
                .strip_prefix("up-shard-")
                .and_then(|rest| rest.strip_suffix(".json"))
                .and_then(|n| n.parse::<u32>().ok());
            number.is_some_and(|n| shard.is_none_or(|s| s == n))
        })
        .map(|e| e.path().to_owned())
        .collect();
    files.sort();
    files
}

/// Stops one `up` (SIGTERM to a verified process), then removes whatever
/// is left of its run by label. False when the process could not be
/// verified and was left alone.
fn bring_down(path: &Utf8Path, state: &UpState, backend: Option<BackendKind>) -> Result<bool> {
    match up_process(state) {
        ProcessState::Alive => {
            // Verified: the same pid and start time. It removes its own
            // environment and state file on SIGTERM.
            // SAFETY: kill(2) has no memory-safety preconditions; the pid was
            // checked to be in 1..=i32::MAX, so it never addresses a group.
            unsafe { libc::kill(state.pid as libc::pid_t, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while path.exists()
                && up_process(state) == ProcessState::Alive
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        ProcessState::Reused if state.pid_start.is_none() => {
            eprintln!(
                "error: {path}: process {} runs, but the file has no start time to prove it is \
                 the `cargo ephem up` that wrote it; nothing was signalled; stop that `up` with \
                 Ctrl-C, or delete the file",
                state.pid
            );
            return Ok(false);
        }
        // Gone, or its pid now belongs to another process: never signal it.
        ProcessState::Gone | ProcessState::Reused => {}
    }
    if path.exists() {
        let kind = backend.unwrap_or(state.backend());
        // Only where the backend lives matters here; a configuration that
        // no longer loads does not stop the cleanup.
        let config = ephem_fixtures::EphemConfig::load(&state.config).ok();
        let runtime = crate::runtime()?;
        runtime.block_on(async {
            let cleanup = kind.connect_cleanup(config.as_ref()).await?;
            cleanup.remove_run(&state.run_id).await?;
            Ok::<_, EphemError>(())
        })?;
        let _ = std::fs::remove_file(path);
    }
    eprintln!(
        "removed the environment of shard {} (run {})",
        state.shard, state.run_id
    );
    Ok(true)
}
