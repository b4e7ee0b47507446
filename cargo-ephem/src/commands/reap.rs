//! The out-of-process reaper: the safety net for the day the runner cannot
//! clean up itself (SIGKILL, OOM, a panic, a machine agent pulling the plug).
//!
//! Every run starts `cargo-ephem __reap --run ID` before it starts a test or
//! creates a container, in a session of its own so that signals meant for
//! the runner's terminal or process group do not reach it, with its stdin the
//! read end of a pipe whose only write end the runner holds (close-on-exec,
//! so test processes do not inherit it). When the runner ends normally it
//! writes `done` (sweep stragglers, then exit) or `keep` (`--keep-env`: touch
//! nothing). When the runner dies, the kernel closes the pipe: the reaper
//! kills every process carrying the run's `EPHEM_RUN_ID` (tests and whatever
//! they spawned) and, for runs with environments, removes every resource
//! labelled with the run. It needs no image and no socket access beyond what
//! the runner had, unlike a reaper container.

use std::io::{BufRead, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, SystemTime};

use camino::{Utf8Path, Utf8PathBuf};
use ephem_core::{exit_codes, Result};

/// The runner's handle on its reaper.
pub struct Reaper {
    pipe: Option<ChildStdin>,
}

impl Reaper {
    /// Starts the reaper for `run_id`; `docker` when the run has
    /// environments. It writes to `log` only if it has to act.
    pub fn spawn(run_id: &str, docker: bool, log: &Utf8Path) -> std::io::Result<Reaper> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["__reap", "--run", run_id, "--log", log.as_str()]);
        if docker {
            cmd.arg("--docker");
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

    /// The run ended normally: `keep` when environments were kept on purpose.
    pub fn finish(mut self, keep: bool) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(if keep { b"keep\n" } else { b"done\n" });
        }
    }
}

/// Where the reaper of a run writes, if it has to act.
pub fn log_path(target_dir: &Utf8Path, run_id: &str) -> Utf8PathBuf {
    let short: String = run_id.chars().take(8).collect();
    target_dir.join("ephem").join(format!("reaper-{short}.log"))
}

/// `cargo-ephem __reap`: waits for the runner's word or death.
pub fn reap(run_id: &str, docker: bool, log: &Utf8Path) -> Result<i32> {
    let mut line = String::new();
    let word = match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_owned()),
    };
    let mut notes = Vec::new();
    match word.as_deref() {
        Some("keep") => return Ok(exit_codes::OK),
        Some(_) => {}
        None => {
            notes.push(format!("runner of run {run_id} died"));
            // Twice: a test may have been forking when the runner died.
            let mut killed = kill_test_processes(run_id);
            std::thread::sleep(Duration::from_millis(100));
            killed += kill_test_processes(run_id);
            notes.push(format!("killed {killed} test processes"));
        }
    }
    if docker {
        let runtime = super::runtime()?;
        let removed = runtime.block_on(async {
            let conn = ephem_fixtures::docker::connect_daemon().await?;
            ephem_fixtures::docker::inventory::reap_run(&conn.docker, run_id).await
        });
        match removed {
            Ok(0) => {}
            Ok(n) => notes.push(format!("removed {n} resources of run {run_id}")),
            Err(e) => notes.push(format!("error: {e}")),
        }
    }
    if !notes.is_empty() {
        write_log(log, &notes);
    }
    Ok(exit_codes::OK)
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
/// that cleared their environment go too.
fn kill_test_processes(run_id: &str) -> usize {
    let needle = format!("EPHEM_RUN_ID={run_id}");
    let mut killed = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|&b| b == 0)
            .any(|var| var == needle.as_bytes())
        {
            // SAFETY: plain syscalls on a pid we just read; ESRCH is fine.
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
