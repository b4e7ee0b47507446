//! The commands of `exec`, one per shard: started at once, waited for
//! under the run's signals (forwarded, then SIGKILL after a grace period),
//! and whatever they leave behind killed as each one ends.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, Instant};

use super::relay::{self, Sink};
use crate::mask::Masker;
use crate::run::executor::signal_name;
use crate::signals::Signals;

/// One shard's command, placeholders replaced.
pub(crate) struct Spec {
    /// 1-based shard number.
    pub shard: u32,
    /// Program and arguments.
    pub argv: Vec<OsString>,
    /// Variables on top of ours: the shard's exports and `EPHEM_*`.
    pub env: Vec<(String, String)>,
}

/// Where the commands' standard streams go.
#[derive(Clone)]
pub(crate) enum Streams {
    /// One command: ours, untouched. `foreground`: stdin is a terminal whose
    /// foreground process group is ours; the command then stays in it, so it
    /// can read the terminal and gets Ctrl-C (and Ctrl-Z) from it directly.
    Inherit {
        /// Whether the command shares our foreground process group.
        foreground: bool,
    },
    /// Several: stdin empty, each line relayed with `[shard M] ` and masked.
    Relay(Masker),
}

/// How one command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signalled(i32),
    /// It could not be started: exit `code` (127 not found, 126 otherwise,
    /// as shells do), and why.
    NotStarted {
        /// 127 or 126.
        code: i32,
        /// One line naming the program.
        why: String,
    },
    /// The task waiting for it failed (a bug): counted as an internal error.
    Lost,
}

impl Ending {
    /// The exit code a shell would give: 128 + the signal for a kill.
    pub(crate) fn code(&self) -> i32 {
        match self {
            Ending::Exited(code) => *code,
            Ending::Signalled(sig) => crate::exit_codes::SIGNAL_BASE + sig,
            Ending::NotStarted { code, .. } => *code,
            Ending::Lost => crate::exit_codes::INTERNAL,
        }
    }

    /// `exit 3`, `killed by SIGKILL`, `not started (...)`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Ending::Exited(code) => format!("exit {code}"),
            Ending::Signalled(sig) => format!("killed by signal {sig} ({})", signal_name(*sig)),
            Ending::NotStarted { code, .. } => format!("not started (exit {code})"),
            Ending::Lost => "lost track of it (internal error)".to_owned(),
        }
    }

    fn of(status: std::io::Result<ExitStatus>) -> Ending {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => Ending::Exited(code),
                (None, Some(sig)) => Ending::Signalled(sig),
                (None, None) => Ending::Exited(crate::exit_codes::INTERNAL),
            },
            Err(e) => Ending::NotStarted {
                code: crate::exit_codes::INTERNAL,
                why: format!("cannot wait for the command: {e}"),
            },
        }
    }
}

/// What the commands did, by shard, and the signal that stopped them.
pub(crate) struct Outcome {
    /// Every shard's ending, in shard order.
    pub endings: Vec<(u32, Ending)>,
    /// The signal that stopped the run, if one did.
    pub interrupted: Option<i32>,
}

/// A started command, as the signal forwarding sees it.
struct Started {
    pid: i32,
    /// Leads a process group of its own (signalled as a group).
    own_group: bool,
    /// Set once it was reaped: its pid may be another process's by then.
    exited: Arc<AtomicBool>,
}

impl Started {
    fn signal(&self, sig: i32) {
        // Never 0 (our own group) nor negative (a broadcast).
        if self.pid <= 0 || self.exited.load(Ordering::SeqCst) {
            return;
        }
        let target = if self.own_group { -self.pid } else { self.pid };
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is
        // our unreaped child's (> 0), or its process group.
        unsafe { libc::kill(target, sig) };
    }
}

/// Starts every command, waits for all of them, forwards `signals`.
pub(crate) async fn run_all(
    specs: Vec<Spec>,
    streams: Streams,
    run_id: &str,
    signals: &mut Signals,
    grace: Duration,
) -> Outcome {
    let Commands {
        mut started,
        mut waits,
        mut endings,
    } = start_all(specs, &streams, run_id);
    let foreground = matches!(streams, Streams::Inherit { foreground: true });
    let far = Instant::now() + Duration::from_secs(60 * 60 * 24 * 365);
    let mut kill_at = far;
    let mut interrupted = None;
    while !waits.is_empty() {
        tokio::select! {
            Some(joined) = waits.join_next() => {
                if let Ok((shard, ending)) = joined {
                    started.remove(&shard);
                    endings.push((shard, ending));
                }
            }
            sig = signals.recv() => {
                // The terminal sent Ctrl-C to the command too: it decides.
                if foreground && sig == libc::SIGINT {
                    continue;
                }
                let again = interrupted.is_some();
                interrupted.get_or_insert(sig);
                let (forward, note) = if again {
                    (libc::SIGKILL, "killing the commands now".to_owned())
                } else {
                    kill_at = Instant::now() + grace;
                    (sig, format!(
                        "sent {} to the commands; SIGKILL in {}",
                        signal_name(sig),
                        humantime::format_duration(grace)
                    ))
                };
                eprintln!("  Interrupted by {}: {note}", signal_name(sig));
                started.values().for_each(|s| s.signal(forward));
            }
            _ = sleep_until(kill_at) => {
                kill_at = far;
                started.values().for_each(|s| s.signal(libc::SIGKILL));
            }
        }
    }
    // A waiting task that panicked left its shard here: never a success.
    endings.extend(started.keys().map(|&shard| (shard, Ending::Lost)));
    endings.sort_by_key(|(shard, _)| *shard);
    Outcome {
        endings,
        interrupted,
    }
}

/// The commands once started.
struct Commands {
    /// The running ones, by shard.
    started: BTreeMap<u32, Started>,
    /// The tasks that wait for them.
    waits: JoinSet<(u32, Ending)>,
    /// Those that could not start.
    endings: Vec<(u32, Ending)>,
}

/// Starts every command.
fn start_all(specs: Vec<Spec>, streams: &Streams, run_id: &str) -> Commands {
    let (mut started, mut waits, mut endings) = (BTreeMap::new(), JoinSet::new(), Vec::new());
    for spec in specs {
        let shard = spec.shard;
        let running = match start(&spec, streams) {
            Ok(running) => running,
            Err(ending) => {
                if let Ending::NotStarted { why, .. } = &ending {
                    let place = match streams {
                        Streams::Relay(_) => format!("shard {shard}: "),
                        Streams::Inherit { .. } => String::new(),
                    };
                    eprintln!("error: {place}{why}");
                }
                endings.push((shard, ending));
                continue;
            }
        };
        // A pid is there until the child is waited for, which only the task
        // below does.
        let pid = running.child.id().and_then(|p| i32::try_from(p).ok());
        let own_group = running.own_group;
        let exited = Arc::new(AtomicBool::new(false));
        let vars = [
            format!("EPHEM_RUN_ID={run_id}"),
            format!("EPHEM_SHARD={shard}"),
        ];
        waits.spawn(wait(running, shard, exited.clone(), vars));
        let pid = pid.unwrap_or(0);
        started.insert(
            shard,
            Started {
                pid,
                own_group,
                exited,
            },
        );
    }
    Commands {
        started,
        waits,
        endings,
    }
}

/// A command just started.
struct Running {
    child: Child,
    /// It leads a process group of its own.
    own_group: bool,
    /// The tasks relaying its output, if relayed.
    relays: Vec<JoinHandle<()>>,
}

/// Starts one command with its variables and streams.
fn start(spec: &Spec, streams: &Streams) -> Result<Running, Ending> {
    let program = &spec.argv[0];
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..]).envs(spec.env.iter().cloned());
    let own_group = !matches!(streams, Streams::Inherit { foreground: true });
    if own_group {
        // Signals are forwarded to the whole group, so what the command
        // spawned stops with it; nothing runs between fork and exec.
        cmd.process_group(0);
    }
    if let Streams::Relay(_) = streams {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|e| not_started(program, &e))?;
    let mut relays = Vec::new();
    if let Streams::Relay(masker) = streams {
        let prefix = format!("[shard {}] ", spec.shard);
        if let Some(out) = child.stdout.take() {
            let relay = relay::relay(out, Sink::Stdout, prefix.clone(), masker.clone());
            relays.push(tokio::spawn(relay));
        }
        if let Some(err) = child.stderr.take() {
            relays.push(tokio::spawn(relay::relay(
                err,
                Sink::Stderr,
                prefix,
                masker.clone(),
            )));
        }
    }
    Ok(Running {
        child,
        own_group,
        relays,
    })
}

fn not_started(program: &OsString, e: &std::io::Error) -> Ending {
    let name = program.to_string_lossy();
    match e.kind() {
        std::io::ErrorKind::NotFound => Ending::NotStarted {
            code: 127,
            why: format!("cannot run {name:?}: command not found (is it installed and on PATH?)"),
        },
        std::io::ErrorKind::PermissionDenied => Ending::NotStarted {
            code: 126,
            why: format!("cannot run {name:?}: permission denied (is it executable?)"),
        },
        _ => Ending::NotStarted {
            code: 126,
            why: format!("cannot run {name:?}: {e}"),
        },
    }
}

/// How long the last of a command's output may take to arrive once it and
/// what it left are gone (a process that left both its group and its
/// variables behind can hold the pipes open forever).
const RELAY_DRAIN: Duration = Duration::from_secs(5);

/// Waits for the command, then kills what it left (its process group, and
/// any process still carrying its run and shard: one that left the group),
/// then lets its output drain.
async fn wait(
    mut running: Running,
    shard: u32,
    exited: Arc<AtomicBool>,
    vars: [String; 2],
) -> (u32, Ending) {
    let pid = running.child.id().map(|p| p as i32);
    let status = running.child.wait().await;
    exited.store(true, Ordering::SeqCst);
    if let (Some(pid), true) = (pid, running.own_group) {
        // SAFETY: kill(2) of the group our child led; ESRCH when empty.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let scan = move || crate::teardown::reaper::kill_processes_carrying(&vars);
    let _ = tokio::task::spawn_blocking(scan).await;
    for relay in running.relays {
        let abort = relay.abort_handle();
        if tokio::time::timeout(RELAY_DRAIN, relay).await.is_err() {
            abort.abort();
        }
    }
    (shard, Ending::of(status))
}
