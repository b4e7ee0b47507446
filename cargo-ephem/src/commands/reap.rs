//! The out-of-process reaper: the safety net for the day the runner cannot
//! clean up itself (SIGKILL, OOM, a panic, a machine agent pulling the plug).
//!
//! The runner starts `cargo-ephem __reap --run ID` before it creates
//! anything, in a session of its own so that signals meant for the runner's
//! terminal or process group do not reach it, with its stdin the read end of
//! a pipe whose only write end the runner holds (close-on-exec, so test
//! processes do not inherit it). When the runner ends normally it writes
//! `done` (sweep stragglers, then exit) or `keep` (`--keep-env`: touch
//! nothing). When the runner dies, the kernel closes the pipe: the reaper
//! kills the run's test processes and removes every resource labelled with
//! the run, then exits. It needs no image and no socket access beyond what
//! the runner had, unlike a reaper container.

use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};

use camino::Utf8Path;
use ephem_core::{exit_codes, Result};

/// The runner's handle on its reaper.
pub struct Reaper {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Reaper {
    /// Starts the reaper for `run_id`, logging to `log`.
    pub fn spawn(run_id: &str, log: &Utf8Path) -> std::io::Result<Reaper> {
        use std::os::unix::process::CommandExt;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log_file = std::fs::File::create(log)?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["__reap", "--run", run_id])
            .stdin(Stdio::piped())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file));
        // SAFETY: setsid is async-signal-safe; the child is not a process
        // group leader right after fork, so it cannot fail with EPERM.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let pipe = child.stdin.take();
        Ok(Reaper { child, pipe })
    }

    /// The run ended normally: `keep` when environments were kept on purpose.
    pub fn finish(mut self, keep: bool) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(if keep { b"keep\n" } else { b"done\n" });
        }
        // Not waited for: the reaper finishes on its own and the runner
        // should not be slowed by it; init reaps it once we exit.
        let _ = self.child.id();
    }
}

/// `cargo-ephem __reap --run ID`: waits for the runner's word or death.
pub fn reap(run_id: &str) -> Result<i32> {
    let mut line = String::new();
    let got = std::io::stdin().lock().read_line(&mut line);
    let word = match got {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_owned()),
    };
    let now = || humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    match word.as_deref() {
        Some("keep") => {
            eprintln!(
                "{} run {run_id} ended keeping its environments; nothing to do",
                now()
            );
            return Ok(exit_codes::OK);
        }
        Some(_) => eprintln!("{} run {run_id} ended; removing stragglers", now()),
        None => {
            eprintln!(
                "{} runner of run {run_id} died; killing its tests, removing its resources",
                now()
            );
            let killed = kill_test_processes(run_id);
            eprintln!("killed {killed} test process groups");
        }
    }
    let runtime = super::runtime()?;
    let removed = runtime.block_on(async {
        let conn = ephem_fixtures::docker::connect_daemon().await?;
        Ok::<_, ephem_core::EphemError>(
            ephem_fixtures::docker::inventory::reap_run(&conn.docker, run_id).await?,
        )
    })?;
    eprintln!("{} removed {removed} resources of run {run_id}", now());
    Ok(exit_codes::OK)
}

/// Kills the process groups of test processes that carry this run's id. The
/// tests already die with the runner (PR_SET_PDEATHSIG); this is the second
/// net, for processes that escaped it.
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
            // SAFETY: plain syscalls on pids we just read; ESRCH is fine.
            unsafe {
                let pgid = libc::getpgid(pid);
                if pgid > 1 && pgid == pid {
                    libc::kill(-pgid, libc::SIGKILL);
                } else {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            killed += 1;
        }
    }
    killed
}
