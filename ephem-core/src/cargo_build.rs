//! `cargo test --no-run`: the build, run in a process group of its own so
//! that it can be stopped (with rustc and build scripts) from another thread.

use std::collections::HashMap;
use std::io::BufReader;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use camino::Utf8PathBuf;
use cargo_metadata::{Artifact, Message};

use crate::discover::{cargo_path, CargoOptions};
use crate::error::{EphemError, Result};

/// What the build produced, before listing.
pub(crate) struct BuildOutput {
    pub(crate) artifacts: Vec<Artifact>,
    /// Package id to the `-L` paths its build script asked for.
    pub(crate) linked_paths: HashMap<String, Vec<Utf8PathBuf>>,
    /// Package id to its build script's `OUT_DIR`.
    pub(crate) out_dirs: HashMap<String, Utf8PathBuf>,
}

/// Lets another thread stop the cargo build this crate started: cargo runs
/// in a process group of its own (so rustc and build scripts stop with it),
/// and is reaped under the same lock that guards a signal, so a signal can
/// never reach a recycled pid or a group that is not ours.
#[derive(Clone, Default)]
pub struct BuildControl {
    inner: Arc<Mutex<BuildState>>,
}

#[derive(Default)]
struct BuildState {
    /// The running cargo, until it has been reaped.
    child: Option<std::process::Child>,
    /// The signal sent to it, if any; the build then ends as interrupted.
    sent: Option<i32>,
}

impl BuildControl {
    /// Sends `signal` to the cargo build (its whole process group) if it
    /// still runs: it stops, and the build ends as interrupted by that
    /// signal; later builds are refused.
    pub fn stop(&self, signal: i32) {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state.sent.get_or_insert(signal);
        if let Some(child) = state.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                signal_group(child, signal);
            }
        }
    }

    fn stopped(&self) -> Option<i32> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).sent
    }

    /// Waits for the child handed over with `adopt`, reaping it under the lock.
    fn wait(&self) -> std::io::Result<std::process::ExitStatus> {
        loop {
            {
                let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                let child = state.child.as_mut().expect("a child was adopted");
                if let Some(status) = child.try_wait()? {
                    state.child = None;
                    return Ok(status);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn adopt(&self, child: std::process::Child) {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state.child = Some(child);
        if let Some(signal) = state.sent {
            // Stopped before cargo even started.
            if let Some(child) = state.child.as_mut() {
                signal_group(child, signal);
            }
        }
    }
}

/// Signals the process group our cargo leads.
fn signal_group(child: &std::process::Child, signal: i32) {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        if pgid > 1 {
            // SAFETY: kill(2) on the group of our own child, not yet reaped
            // (the caller holds the lock it is reaped under), so the group
            // is still ours; pgid > 1 never addresses every process.
            unsafe { libc::kill(-pgid, signal) };
        }
    }
}

pub(crate) fn build(opts: &CargoOptions, control: &BuildControl) -> Result<BuildOutput> {
    if let Some(signal) = control.stopped() {
        return Err(EphemError::Interrupted { signal });
    }
    let cargo = cargo_path();
    let mut args = vec![
        "test".to_owned(),
        "--no-run".to_owned(),
        "--message-format".to_owned(),
        "json-render-diagnostics".to_owned(),
    ];
    args.extend(opts.build_args());
    let command = format!("cargo {}", args.join(" "));
    // Diagnostics go to our stderr as cargo renders them; stdout is the JSON stream.
    // A process group of its own: stopping the build stops rustc and build
    // scripts too (the runner forwards Ctrl-C, which no longer reaches it).
    let mut child = Command::new(&cargo)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|e| EphemError::Usage(format!("cannot run `{cargo}`: {e}; is cargo on PATH?")))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    control.adopt(child);
    let mut out = BuildOutput {
        artifacts: Vec::new(),
        linked_paths: HashMap::new(),
        out_dirs: HashMap::new(),
    };
    for message in Message::parse_stream(BufReader::new(stdout)) {
        let Ok(message) = message else { continue };
        match message {
            Message::CompilerArtifact(a) if a.profile.test && a.executable.is_some() => {
                out.artifacts.push(a)
            }
            Message::BuildScriptExecuted(s) => {
                let id = s.package_id.repr.clone();
                out.linked_paths.insert(id.clone(), s.linked_paths);
                out.out_dirs.insert(id, s.out_dir);
            }
            _ => {}
        }
    }
    let status = control
        .wait()
        .map_err(|e| EphemError::Internal(format!("waiting for cargo: {e}")))?;
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
        return Err(EphemError::Interrupted { signal });
    }
    // Stopped on purpose: cargo may catch the signal and exit with a code.
    if let Some(signal) = control.stopped() {
        return Err(EphemError::Interrupted { signal });
    }
    if !status.success() {
        return Err(EphemError::BuildFailed {
            command,
            status: status.to_string(),
        });
    }
    Ok(out)
}
