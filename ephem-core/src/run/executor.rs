//! Runs one attempt of one test as a child process.
//!
//! An attempt is a small state machine: *running* until the process exits,
//! its timeout passes or the run is stopped; then *terminating* (SIGTERM to
//! the whole process group, SIGKILL after a grace period); then *done*.
//! Each test gets its own process group so that whatever it spawned dies
//! with it. Nothing runs between fork and exec, so the standard library
//! starts tests with `posix_spawn` (a `pre_exec` hook such as
//! `PR_SET_PDEATHSIG` would force a full `fork()` of the runner for every
//! test, which measured 26% slower on 2,000 tiny tests). If the runner
//! dies, its reaper process kills the run's tests instead.

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::sleep_until;

use crate::test_list::TestBinary;

/// How hard the dispatcher asks running tests to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopLevel {
    /// Keep running.
    Run,
    /// SIGTERM now, SIGKILL after the grace period.
    Terminate,
    /// SIGKILL now.
    Kill,
}

/// Where tests' standard output and error go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Capture {
    /// Captured; a passing attempt's output is dropped, as nothing shows it.
    #[default]
    Failures,
    /// Captured, a passing attempt's too (`--success-output`).
    All,
    /// Not captured: the runner's own stdout and stderr (`--no-capture`).
    /// Tests then run one at a time, so that their output does not mix.
    None,
}

/// Everything needed to start one attempt.
#[derive(Clone, Debug)]
pub struct AttemptSpec {
    /// The binary holding the test.
    pub binary: Arc<TestBinary>,
    /// Test name, passed with `--exact`.
    pub name: Arc<str>,
    /// Pass `--ignored` (the test is `#[ignore]`d and selected to run).
    pub ignored: bool,
    /// Variables on top of the binary's own: the shard's environment and
    /// `EPHEM_*`.
    pub env: Vec<(String, String)>,
    /// Kill the test after this long.
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Where its output goes.
    pub capture: Capture,
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptStatus {
    /// Exit code 0.
    Passed,
    /// Exited non-zero or died of a signal; the text says which.
    Failed(String),
    /// Killed after `--test-timeout`.
    TimedOut,
    /// Killed because the run was stopped (Ctrl-C, SIGTERM).
    Cancelled,
    /// The process could not be started.
    SpawnFailed(String),
}

impl AttemptStatus {
    /// True for [`AttemptStatus::Passed`].
    pub fn is_pass(&self) -> bool {
        matches!(self, AttemptStatus::Passed)
    }
}

/// The record of one finished attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// How it ended.
    pub status: AttemptStatus,
    /// Wall-clock start, for reports.
    pub started_at: SystemTime,
    /// How long it ran.
    pub duration: Duration,
    /// Captured standard output (lossy UTF-8).
    pub stdout: String,
    /// Captured standard error (lossy UTF-8).
    pub stderr: String,
}

/// Starts the test, waits for it under its timeout and the dispatcher's stop
/// requests, and returns what happened. Never panics on a test's behaviour.
pub async fn run_attempt(spec: AttemptSpec, mut stop: watch::Receiver<StopLevel>) -> Attempt {
    let started_at = SystemTime::now();
    let start = Instant::now();
    let mut cmd = Command::new(&spec.binary.path);
    cmd.arg("--exact").arg(&*spec.name).arg("--nocapture");
    if spec.ignored {
        cmd.arg("--ignored");
    }
    let output = || match spec.capture {
        Capture::None => Stdio::inherit(),
        Capture::Failures | Capture::All => Stdio::piped(),
    };
    cmd.current_dir(&spec.binary.cwd)
        .envs(spec.binary.env.iter().map(|(k, v)| (k, v)))
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(output())
        .stderr(output())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Attempt {
                status: AttemptStatus::SpawnFailed(format!(
                    "cannot start {}: {e}",
                    spec.binary.path
                )),
                started_at,
                duration: start.elapsed(),
                stdout: String::new(),
                stderr: String::new(),
            }
        }
    };
    let pgid = child.id().map(|id| id as i32);
    let stdout = tokio::spawn(read_all(child.stdout.take()));
    let stderr = tokio::spawn(read_all(child.stderr.take()));

    let far = tokio::time::Instant::now() + Duration::from_secs(60 * 60 * 24 * 365);
    let deadline = spec
        .timeout
        .map(|t| tokio::time::Instant::from_std(start + t))
        .unwrap_or(far);
    let mut kill_at = far;
    // Why we are terminating, once we are.
    let mut ending: Option<AttemptStatus> = None;
    let exit: std::io::Result<ExitStatus> = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = sleep_until(deadline), if ending.is_none() => {
                ending = Some(AttemptStatus::TimedOut);
                signal_group(pgid, libc::SIGTERM);
                kill_at = tokio::time::Instant::now() + spec.grace;
            }
            _ = sleep_until(kill_at), if ending.is_some() => {
                signal_group(pgid, libc::SIGKILL);
                kill_at = far;
            }
            changed = stop.changed() => {
                let level = if changed.is_ok() { *stop.borrow_and_update() } else { StopLevel::Kill };
                match level {
                    StopLevel::Run => {}
                    StopLevel::Terminate if ending.is_none() => {
                        ending = Some(AttemptStatus::Cancelled);
                        signal_group(pgid, libc::SIGTERM);
                        kill_at = tokio::time::Instant::now() + spec.grace;
                    }
                    StopLevel::Terminate => {}
                    StopLevel::Kill => {
                        ending.get_or_insert(AttemptStatus::Cancelled);
                        signal_group(pgid, libc::SIGKILL);
                    }
                }
            }
        }
    };
    let duration = start.elapsed();
    // The test is gone; anything it left in its group (a server it started,
    // a grandchild holding our pipes) goes too, so no orphan keeps a port or
    // a connection open and the pipes below reach end-of-file.
    signal_group(pgid, libc::SIGKILL);
    let stdout = stdout.await.unwrap_or_default();
    let stderr = stderr.await.unwrap_or_default();
    let status = match (ending, exit) {
        (Some(why), _) => why,
        (None, Ok(s)) if s.success() => AttemptStatus::Passed,
        (None, Ok(s)) => AttemptStatus::Failed(describe_exit(s)),
        (None, Err(e)) => AttemptStatus::Failed(format!("could not wait for the test: {e}")),
    };
    Attempt {
        status,
        started_at,
        duration,
        stdout,
        stderr,
    }
}

/// Most bytes of one stream kept in memory: a test that prints gigabytes
/// must not take the runner down. Beyond it, the middle is dropped (the
/// start and the end of a log say the most).
const MAX_CAPTURE: usize = 4 << 20;

async fn read_all<R: AsyncRead + Unpin>(reader: Option<R>) -> String {
    let Some(mut r) = reader else {
        return String::new();
    };
    let mut head = Vec::new();
    let mut tail: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
    let mut dropped = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut bytes = &chunk[..n];
        if head.len() < MAX_CAPTURE / 2 {
            let take = bytes.len().min(MAX_CAPTURE / 2 - head.len());
            head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        tail.extend(bytes.iter().copied());
        if tail.len() > MAX_CAPTURE / 2 {
            let excess = tail.len() - MAX_CAPTURE / 2;
            tail.drain(..excess);
            dropped += excess;
        }
    }
    if dropped > 0 {
        head.extend_from_slice(
            format!("\n[... {dropped} bytes of output dropped by cargo-ephem ...]\n").as_bytes(),
        );
    }
    head.extend(tail);
    String::from_utf8(head).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn signal_group(pgid: Option<i32>, signal: i32) {
    if let Some(pgid) = pgid {
        // SAFETY: kill(2) with a negative pid signals a process group; it has
        // no memory-safety preconditions. ESRCH (group gone) is expected.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(sig) = status.signal() {
        format!("killed by signal {sig} ({})", signal_name(sig))
    } else {
        status.to_string()
    }
}

/// Short name of a signal for messages.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGHUP => "SIGHUP",
        libc::SIGILL => "SIGILL",
        libc::SIGINT => "SIGINT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn huge_output_keeps_head_and_tail() {
        let mut data = b"HEAD".to_vec();
        data.resize(MAX_CAPTURE * 3, b'x');
        data.extend_from_slice(b"TAIL");
        let out = read_all(Some(&data[..])).await;
        assert!(out.len() < MAX_CAPTURE + 200, "{}", out.len());
        assert!(out.starts_with("HEAD") && out.ends_with("TAIL"));
        assert!(out.contains("bytes of output dropped by cargo-ephem"));
    }

    #[tokio::test]
    async fn small_output_is_kept_whole() {
        assert_eq!(read_all(Some(&b"hello\n"[..])).await, "hello\n");
    }
}
