//! `cargo ephem exec`: any command (nextest, `cargo test`, a Python suite, a
//! benchmark) run in each shard's environment, with the same safety nets as
//! a test run: a reaper, a sweep, a renewed expiry, signals forwarded and
//! everything removed on every way out.

mod command;
mod relay;

use std::ffi::OsString;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use camino::{Utf8Path, Utf8PathBuf};
use ephem_fixtures::{AttemptEnv, EnvEvent, Environment, RunContext};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::environments::{Connected, EnvSetup};
use crate::error::{exit_codes, EphemError, Result};
use crate::hold::{self, Renewal};
use crate::mask::Masker;
use crate::options::{ConfigSource, EnvOptions, ExecOptions, ExecShards};
use crate::report::summary::shell_quote;
use crate::signals::Signals;
use crate::teardown::{self, reaper, Reaper, RunEnd};
use command::{Spec, Streams};

/// Runs `cargo ephem exec`; returns the exit code: the commands' (the
/// lowest failing shard's), 128 + a signal that stopped them, 102 when an
/// environment failed and no command ran.
pub fn exec(options: &ExecOptions) -> Result<i32> {
    options.check()?;
    let found = find_config(&options.env.config)?;
    let dir = found.parent().unwrap_or(Utf8Path::new("."));
    let env = EnvOptions {
        config: ConfigSource::File(found.clone()),
        ..options.env.clone()
    };
    let setup = EnvSetup::load(dir, &env)?
        .ok_or_else(|| EphemError::Internal(format!("{found} was found but not loaded")))?;
    let config = setup.path.canonicalize_utf8().unwrap_or(found);
    let runtime = crate::runtime()?;
    // Reach the backend first: a dead daemon costs seconds, not a command.
    let services = setup.has_services();
    let backend = setup.backend;
    let connected = match services {
        true => Some(runtime.block_on(setup.connect())?),
        false => None,
    };
    let run_id = uuid::Uuid::new_v4().to_string();
    let reaper = Reaper::spawn(
        &options.reaper,
        &run_id,
        services.then_some(backend),
        Some(&config),
        &reaper::log_path(&log_dir(&config), &run_id),
    )
    .map_err(|e| EphemError::Internal(format!("cannot start the reaper process: {e}")))?;
    if let Some(c) = &connected {
        runtime.block_on(teardown::sweep_at_start(c.cleanup.as_ref(), &run_id))?;
    }
    // From here on a signal stops the run instead of killing the runner.
    let signals = runtime.block_on(async { Signals::new() });
    let session = Session {
        options,
        run: RunContext {
            run_id,
            shard_count: options.shards.count(),
            expires_at: SystemTime::now() + options.env.env_ttl,
        },
        config,
        signals,
    };
    let (code, end) = runtime.block_on(session.run(connected));
    reaper.finish(end);
    Ok(code)
}

/// `--config`, else the nearest `ephem.toml` from the current directory up:
/// no cargo needed, so a Python suite's folder works as well as a workspace.
fn find_config(source: &ConfigSource) -> Result<Utf8PathBuf> {
    if let ConfigSource::File(path) = source {
        return Ok(path.clone());
    }
    let cwd = std::env::current_dir()
        .ok()
        .and_then(|d| Utf8PathBuf::from_path_buf(d).ok())
        .ok_or_else(|| {
            EphemError::Usage(
                "the current directory cannot be read as UTF-8; pass --config PATH".into(),
            )
        })?;
    let name = ephem_fixtures::config::DEFAULT_CONFIG_FILE;
    cwd.ancestors()
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            EphemError::Usage(format!(
                "no {name} in {cwd} or any folder above it; create one, or pass --config PATH"
            ))
        })
}

/// Where the reaper writes should it have to act: `$CARGO_TARGET_DIR`, else
/// `target/` beside the configuration (a workspace's target folder when the
/// configuration sits at its root).
fn log_dir(config: &Utf8Path) -> Utf8PathBuf {
    match std::env::var("CARGO_TARGET_DIR") {
        Ok(dir) if !dir.is_empty() => Utf8PathBuf::from(dir),
        _ => config.parent().unwrap_or(Utf8Path::new(".")).join("target"),
    }
}

/// One `exec` from its first environment to its last removal.
struct Session<'a> {
    options: &'a ExecOptions,
    run: RunContext,
    /// The configuration, absolute.
    config: Utf8PathBuf,
    signals: Signals,
}

/// A shard's environment and the variables its command gets.
struct Prepared {
    shard: u32,
    env: Environment,
    /// What the environment's hooks handed this command (a database of its
    /// own, a reset), given back after it.
    attempt: Option<AttemptEnv>,
}

impl Prepared {
    /// A shard without services: its command gets the `EPHEM_*` variables.
    fn bare(shard: u32) -> Prepared {
        Prepared {
            shard,
            env: Environment::default(),
            attempt: None,
        }
    }
}

impl Session<'_> {
    /// The exit code, and what the reaper is told.
    async fn run(mut self, connected: Option<Connected>) -> (i32, RunEnd) {
        let shards = self.options.shards.here();
        self.headline(connected.is_some());
        let Some(Connected {
            backend,
            cleanup,
            events,
            ..
        }) = connected
        else {
            let bare: Vec<Prepared> = shards.iter().map(|&s| Prepared::bare(s)).collect();
            let outcome = self.run_commands(&bare, Masker::default()).await;
            return (exit_code(&outcome), RunEnd::Done);
        };
        let masker = Arc::new(RwLock::new(Masker::default()));
        let printer = tokio::spawn(print_events(events, masker.clone()));
        let (code, end) = match self.start_environments(&backend, &shards).await {
            Err(code) => (code, RunEnd::Done),
            Ok(prepared) => {
                let secrets = prepared.iter().flat_map(|p| p.env.secrets.clone());
                let now = Masker::new(secrets.collect());
                *masker.write().unwrap_or_else(|p| p.into_inner()) = now.clone();
                self.run_held(cleanup.clone(), prepared, now).await
            }
        };
        let code = match end {
            RunEnd::Kept => code,
            _ => {
                let plural = if shards.len() == 1 { "" } else { "s" };
                eprintln!("  Removing the environment{plural}");
                let removed = hold::remove(&backend, cleanup.as_ref(), &self.run, &shards).await;
                removal_code(code, removed)
            }
        };
        printer.abort();
        (code, end)
    }

    /// Provisions every shard and prepares its command's variables; on a
    /// failure or a signal, the exit code (the caller removes everything).
    async fn start_environments(
        &mut self,
        backend: &Arc<dyn ephem_fixtures::Backend>,
        shards: &[u32],
    ) -> std::result::Result<Vec<Prepared>, i32> {
        let provisioned = tokio::select! {
            r = hold::provision(backend, &self.run, shards) => r,
            sig = self.signals.recv() => {
                eprintln!("  Interrupted by {} while the environments started; no command runs", signal_name(sig));
                return Err(exit_codes::SIGNAL_BASE + sig);
            }
        };
        let prepared = match provisioned {
            Ok(envs) => prepare(envs).await,
            Err(errors) => Err(errors),
        };
        prepared.map_err(|errors| {
            report_env_errors(&errors);
            exit_codes::ENVIRONMENT_FAILED
        })
    }

    /// Runs the commands while the expiry is renewed, then keeps the
    /// environments (`--keep-env`) or gives back what the hooks handed out.
    async fn run_held(
        &mut self,
        cleanup: Arc<dyn ephem_fixtures::Cleanup>,
        prepared: Vec<Prepared>,
        masker: Masker,
    ) -> (i32, RunEnd) {
        let renewal = Renewal::start(cleanup.clone(), self.run.run_id.clone(), self.ttl());
        let outcome = self.run_commands(&prepared, masker).await;
        renewal.stop().await;
        let code = exit_code(&outcome);
        if self.options.keep_env {
            self.keep(cleanup.as_ref(), prepared).await;
            (code, RunEnd::Kept)
        } else {
            give_back(prepared).await;
            (code, RunEnd::Done)
        }
    }

    fn ttl(&self) -> std::time::Duration {
        self.options.env.env_ttl
    }

    /// The line that says what starts, with the run id.
    fn headline(&self, services: bool) {
        let run_id = &self.run.run_id;
        let what = match (self.options.shards, services) {
            (ExecShards::All { count: 1 }, true) => "the environment".to_owned(),
            (ExecShards::All { count }, true) => format!("the environments of {count} shards"),
            (ExecShards::One { shard, count }, true) => {
                format!("the environment of shard {shard} of {count}")
            }
            (shards, false) => format!(
                "{} without environments (no services)",
                match shards.here().len() {
                    1 => "the command".to_owned(),
                    n => format!("{n} commands"),
                }
            ),
        };
        eprintln!("  Starting {what} from {}, run {run_id}", self.config);
    }

    /// Starts every shard's command in its environment and waits for all.
    async fn run_commands(&mut self, prepared: &[Prepared], masker: Masker) -> command::Outcome {
        let count = self.options.shards.count();
        let relayed = prepared.len() > 1;
        let specs: Vec<Spec> = prepared
            .iter()
            .map(|p| Spec {
                shard: p.shard,
                argv: placeholders(&self.options.command, p.shard, count),
                env: command_env(p, &self.run.run_id, count),
            })
            .collect();
        for spec in &specs {
            let words: Vec<String> = spec
                .argv
                .iter()
                .map(|w| shell_quote(&w.to_string_lossy()))
                .collect();
            let place = match relayed {
                true => format!("[shard {}] ", spec.shard),
                false => String::new(),
            };
            eprintln!("      Exec {place}{}", masker.mask(&words.join(" ")));
        }
        let streams = match relayed {
            true => Streams::Relay(masker),
            false => Streams::Inherit {
                foreground: stdin_is_our_terminal(),
            },
        };
        let grace = self.options.grace;
        let outcome =
            command::run_all(specs, streams, &self.run.run_id, &mut self.signals, grace).await;
        if relayed {
            for (shard, ending) in &outcome.endings {
                eprintln!("  Finished [shard {shard}] {}", ending.describe());
            }
        }
        outcome
    }

    /// `--keep-env`: the environments stay, spared by sweeps for the TTL,
    /// and how to reach and remove them is printed.
    async fn keep(&self, cleanup: &dyn ephem_fixtures::Cleanup, prepared: Vec<Prepared>) {
        let until = SystemTime::now() + self.ttl();
        if let Err(e) = cleanup.renew(&self.run.run_id, until, true).await {
            eprintln!("warning: the kept environments may be swept before --env-ttl: {e}");
        }
        // What the commands were given, per-command databases included.
        let kept: Vec<(u32, Environment)> = prepared
            .into_iter()
            .map(|p| {
                let mut env = p.env;
                env.vars = merged_vars(&env, p.attempt.as_ref());
                (p.shard, env)
            })
            .collect();
        let mut gc_flags = vec!["--config".to_owned(), shell_quote(self.config.as_str())];
        if let Some(backend) = self.options.env.backend {
            gc_flags.extend(["--backend".to_owned(), backend.name().to_owned()]);
        }
        hold::print_kept(&kept, &self.run.run_id, &gc_flags, self.ttl());
    }
}

/// Each shard's command is one attempt for the environment's hooks: a
/// service with `reset` is reset, `databases = "per-test"` hands it a
/// database of its own.
async fn prepare(
    envs: Vec<(u32, Environment)>,
) -> std::result::Result<Vec<Prepared>, Vec<(u32, ephem_fixtures::EnvError)>> {
    let mut prepared = Vec::new();
    let mut errors = Vec::new();
    for (shard, env) in envs {
        let attempt = match &env.test_hooks {
            Some(hooks) => match hooks.before_attempt(None).await {
                Ok(attempt) => Some(attempt),
                Err(e) => {
                    errors.push((shard, e));
                    continue;
                }
            },
            None => None,
        };
        prepared.push(Prepared {
            shard,
            env,
            attempt,
        });
    }
    match errors.is_empty() {
        true => Ok(prepared),
        false => {
            give_back(prepared).await;
            Err(errors)
        }
    }
}

/// Gives back what the hooks handed out (a per-command database is dropped).
async fn give_back(prepared: Vec<Prepared>) {
    for p in prepared {
        if let (Some(hooks), Some(attempt)) = (&p.env.test_hooks, p.attempt) {
            hooks.after_attempt(attempt).await;
        }
    }
}

/// The shard's exports, the hooks' variables over them.
fn merged_vars(
    env: &Environment,
    attempt: Option<&AttemptEnv>,
) -> Vec<ephem_fixtures::ExportedVar> {
    let mut vars = env.vars.clone();
    for extra in attempt.map(|a| a.vars.as_slice()).unwrap_or_default() {
        match vars.iter_mut().find(|v| v.name == extra.name) {
            Some(v) => v.value = extra.value.clone(),
            None => vars.push(extra.clone()),
        }
    }
    vars
}

/// The command's variables on top of ours: exports, then `EPHEM_*`.
fn command_env(p: &Prepared, run_id: &str, count: u32) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = merged_vars(&p.env, p.attempt.as_ref())
        .into_iter()
        .map(|v| (v.name, v.value))
        .collect();
    env.extend([
        ("EPHEM_RUN_ID".to_owned(), run_id.to_owned()),
        ("EPHEM_SHARD".to_owned(), p.shard.to_string()),
        ("EPHEM_SHARD_COUNT".to_owned(), count.to_string()),
    ]);
    env
}

/// The command with `{shard}` and `{shards}` replaced in every word.
fn placeholders(command: &[OsString], shard: u32, count: u32) -> Vec<OsString> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let (shard, count) = (shard.to_string(), count.to_string());
    command
        .iter()
        .map(|word| {
            let bytes = word.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut rest = bytes;
            while let Some(at) = memchr::memchr(b'{', rest) {
                out.extend_from_slice(&rest[..at]);
                rest = &rest[at..];
                let (value, len) = if rest.starts_with(b"{shard}") {
                    (shard.as_bytes(), "{shard}".len())
                } else if rest.starts_with(b"{shards}") {
                    (count.as_bytes(), "{shards}".len())
                } else {
                    (&b"{"[..], 1)
                };
                out.extend_from_slice(value);
                rest = &rest[len..];
            }
            out.extend_from_slice(rest);
            OsString::from_vec(out)
        })
        .collect()
}

/// Whether stdin is a terminal whose foreground process group is ours: a
/// single command then stays in that group, to read the terminal.
fn stdin_is_our_terminal() -> bool {
    // SAFETY: plain queries on fd 0 and our own process group.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// 0 when every command succeeded; else the lowest failing shard's code;
/// 128 + the signal when one stopped the run.
fn exit_code(outcome: &command::Outcome) -> i32 {
    if let Some(sig) = outcome.interrupted {
        return exit_codes::SIGNAL_BASE + sig;
    }
    outcome
        .endings
        .iter()
        .map(|(_, ending)| ending.code())
        .find(|&code| code != exit_codes::OK)
        .unwrap_or(exit_codes::OK)
}

/// A removal that failed is reported; it turns success into 102 (the
/// reaper removes what is left), never hides the command's failure.
fn removal_code(code: i32, removed: std::result::Result<(), ephem_fixtures::EnvError>) -> i32 {
    match removed {
        Ok(()) => code,
        Err(e) => {
            eprintln!("error: removing the environments: {e}");
            match code {
                exit_codes::OK => exit_codes::ENVIRONMENT_FAILED,
                code => code,
            }
        }
    }
}

fn report_env_errors(errors: &[(u32, ephem_fixtures::EnvError)]) {
    for (shard, error) in errors {
        let text = error.to_string();
        let place = match *shard == 0 || text.starts_with(&format!("shard {shard}")) {
            true => String::new(),
            false => format!("shard {shard}: "),
        };
        eprintln!("error: {place}{text}");
    }
    eprintln!("note: no command was run");
}

fn signal_name(sig: i32) -> &'static str {
    crate::run::executor::signal_name(sig)
}

/// Pulls, service deaths, warnings and notes, as they come, on stderr.
async fn print_events(mut events: UnboundedReceiver<EnvEvent>, masker: Arc<RwLock<Masker>>) {
    while let Some(event) = events.recv().await {
        let line = match event {
            EnvEvent::ImageReady {
                image,
                pulled: true,
            } => format!("    PULLED {image}"),
            EnvEvent::ServiceExited {
                shard,
                service,
                exit_code,
                ..
            } => format!(
                "  ENV DIED service {service} of shard {shard} exited (code {})",
                exit_code.map_or("?".to_owned(), |c| c.to_string())
            ),
            EnvEvent::Warning { shard, message } => {
                let place = shard.map(|s| format!("shard {s}: ")).unwrap_or_default();
                format!("   WARNING {place}{message}")
            }
            EnvEvent::Note { message } => format!("      NOTE {message}"),
            _ => continue,
        };
        let masker = masker.read().unwrap_or_else(|p| p.into_inner());
        eprintln!("{}", masker.mask(&line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use command::Ending;

    fn words(text: &[&str]) -> Vec<OsString> {
        text.iter().map(OsString::from).collect()
    }

    #[test]
    fn placeholders_are_replaced_in_every_word() {
        let command = words(&["run{shard}", "--partition", "hash:{shard}/{shards}", "{x}{"]);
        assert_eq!(
            placeholders(&command, 2, 4),
            words(&["run2", "--partition", "hash:2/4", "{x}{"])
        );
    }

    #[test]
    fn the_lowest_failing_shard_gives_the_code() {
        let outcome = |endings| command::Outcome {
            endings,
            interrupted: None,
        };
        let code = exit_code(&outcome(vec![
            (1, Ending::Exited(0)),
            (2, Ending::Signalled(9)),
            (3, Ending::Exited(3)),
        ]));
        assert_eq!(code, 137);
        assert_eq!(exit_code(&outcome(vec![(1, Ending::Exited(0))])), 0);
        let mut stopped = outcome(vec![(1, Ending::Exited(0))]);
        stopped.interrupted = Some(libc::SIGTERM);
        assert_eq!(exit_code(&stopped), 143);
    }
}
