//! The out-of-process reaper: the safety net for the day the runner cannot
//! clean up itself (SIGKILL, OOM, a panic, a machine agent pulling the plug).
//!
//! Every run (and every `cargo ephem up`) starts `cargo-ephem __reap --run ID`
//! before it starts a test or creates an environment, in a session of its own
//! so that signals meant for the runner's terminal or process group do not
//! reach it, with its stdin the read end of a pipe whose only write end the
//! runner holds (close-on-exec, so test processes do not inherit it). When
//! the runner ends normally it writes `done` (remove stragglers of a
//! teardown that failed, then exit), `keep` (`--keep-env`: touch nothing) or `reap` (the runner hit an internal error: act as if it
//! had died). When the runner dies, the kernel closes the pipe: the reaper
//! kills every process carrying the run's `EPHEM_RUN_ID` (tests and whatever
//! they spawned) and removes every resource of the run through the backend's
//! [`Cleanup`](ephem_fixtures::Cleanup). It needs no image and no access
//! beyond what the runner had, unlike a reaper container.

use std::io::{BufRead, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, SystemTime};

use camino::{Utf8Path, Utf8PathBuf};
use ephem_fixtures::{BackendKind, EphemConfig};

use crate::error::{exit_codes, Result};
use crate::options::{ReapOptions, ReaperLaunch};

/// The runner's handle on its reaper.
pub struct Reaper {
    /// None when the run has no reaper ([`ReaperLaunch::Disabled`]).
    pipe: Option<ChildStdin>,
}

/// How a run ended, as the runner tells its reaper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// Everything was torn down: remove stragglers, if any.
    Done,
    /// Environments were kept on purpose: touch nothing.
    Kept,
    /// The runner failed inside (a panic in a task): kill the run's
    /// processes and remove its resources, as if the runner had died.
    Reap,
}

impl Reaper {
    /// Starts the reaper of `run_id`, as `launch` says, which removes the
    /// run's resources of `backend` (if any) should the runner die. It
    /// writes to `log` only if it has to act.
    pub fn spawn(
        launch: &ReaperLaunch,
        run_id: &str,
        backend: Option<BackendKind>,
        config: Option<&Utf8Path>,
        log: &Utf8Path,
    ) -> std::io::Result<Reaper> {
        use std::os::unix::process::CommandExt;
        let program = match launch {
            ReaperLaunch::ThisExecutable => std::env::current_exe()?,
            ReaperLaunch::Program(path) => path.clone().into_std_path_buf(),
            ReaperLaunch::Disabled => return Ok(Reaper { pipe: None }),
        };
        let mut cmd = Command::new(program);
        cmd.args(["__reap", "--run", run_id, "--log", log.as_str()]);
        if let Some(backend) = backend {
            cmd.args(["--backend", backend.name()]);
        }
        if let Some(config) = config {
            cmd.args(["--config", config.as_str()]);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; the child is not a process
        // group leader right after fork, so it cannot fail with EPERM.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        Ok(Reaper {
            pipe: child.stdin.take(),
        })
        // The child is not waited for: it outlives us on purpose, and init
        // reaps it once we exit.
    }

    /// Tells the reaper how the run ended.
    pub fn finish(mut self, end: RunEnd) {
        if let Some(mut pipe) = self.pipe.take() {
            let word: &[u8] = match end {
                RunEnd::Done => b"done\n",
                RunEnd::Kept => b"keep\n",
                RunEnd::Reap => b"reap\n",
            };
            let _ = pipe.write_all(word);
        }
    }
}

/// Where the reaper of a run writes, if it has to act.
pub fn log_path(target_dir: &Utf8Path, run_id: &str) -> Utf8PathBuf {
    let short: String = run_id.chars().take(8).collect();
    target_dir.join("ephem").join(format!("reaper-{short}.log"))
}

/// `cargo-ephem __reap`: waits for the runner's word or death, then acts.
pub fn serve(options: &ReapOptions) -> Result<i32> {
    let mut line = String::new();
    let word = match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_owned()),
    };
    let run_id = options.run_id.as_str();
    let mut notes = Vec::new();
    match word.as_deref() {
        Some("keep") => return Ok(exit_codes::OK),
        // A normal end: only stragglers of a teardown that failed are left.
        Some("done") => {}
        other => {
            notes.push(match other {
                Some("reap") => format!("runner of run {run_id} failed inside"),
                _ => format!("runner of run {run_id} died"),
            });
            // Twice: a test may have been forking when the runner died.
            let mut killed = kill_test_processes(run_id);
            std::thread::sleep(Duration::from_millis(100));
            killed += kill_test_processes(run_id);
            notes.push(format!("killed {killed} test processes"));
        }
    }
    if let Some(backend) = options.backend {
        match remove_run(backend, options.config.as_deref(), run_id) {
            Ok(0) => {}
            Ok(n) => notes.push(format!("removed {n} resources of run {run_id}")),
            Err(e) => notes.push(format!("error: {e}")),
        }
    }
    if !notes.is_empty() {
        write_log(&options.log, &notes);
    }
    Ok(exit_codes::OK)
}

fn remove_run(backend: BackendKind, config: Option<&Utf8Path>, run_id: &str) -> Result<usize> {
    // A configuration that no longer loads must not stop the cleanup: the
    // backend is reached without it then.
    let config = config.and_then(|path| EphemConfig::load(path).ok());
    let runtime = crate::runtime()?;
    runtime.block_on(async {
        let cleanup = backend.connect_cleanup(config.as_ref()).await?;
        Ok(cleanup.remove_run(run_id).await?)
    })
}

fn write_log(path: &Utf8Path, notes: &[String]) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let now = humantime::format_rfc3339_seconds(SystemTime::now());
        for note in notes {
            let _ = writeln!(f, "{now} {note}");
        }
    }
}

/// Kills the processes that carry this run's id in their environment, by
/// process group where they lead one (each test does), so that children
/// that cleared their environment go too. Returns how many it found.
fn kill_test_processes(run_id: &str) -> usize {
    kill_processes_carrying(&[format!("EPHEM_RUN_ID={run_id}")])
}

/// Kills the processes whose environment holds every one of `vars`
/// (`NAME=value`), as [`kill_test_processes`] does; returns how many.
pub(crate) fn kill_processes_carrying(vars: &[String]) -> usize {
    let mut killed = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let me = std::process::id() as i32;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid <= 1 || pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let carries = |needle: &String| {
            environ
                .split(|&b| b == 0)
                .any(|var| var == needle.as_bytes())
        };
        if !vars.is_empty() && vars.iter().all(carries) {
            // SAFETY: plain syscalls on a pid we just read (> 1, so never a
            // broadcast); ESRCH is fine.
            unsafe {
                if libc::getpgid(pid) == pid {
                    libc::kill(-pid, libc::SIGKILL);
                } else {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            killed += 1;
        }
    }
    killed
}
