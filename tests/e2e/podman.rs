//! The Docker backend against Podman's Docker-compatible API (`podman system
//! service`), rootful at `/run/podman/podman.sock` and rootless at
//! `/run/user/UID/podman/podman.sock` of the `ephem-podman` user: the example,
//! the reliability checks (kill -9, the sweep, SIGINT) with nothing left
//! behind, and what Podman 4.3 does differently (events, label filters,
//! healthchecks).
//!
//! `DOCKER_HOST` points the runner (and so its reaper) at Podman; Docker's
//! daemon is never asked. What is left is listed through the same socket
//! with the `docker` CLI (`-H`), which works for both services.
//!
//! Podman is optional on a developer's machine: without its socket these
//! tests print a note and return. In CI (`CI` set) or with
//! `EPHEM_TEST_PODMAN=1` a missing socket fails them instead, so CI cannot
//! pass without running them (`.ci/run` provisions Podman).

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::support::*;

/// The user whose rootless service the provision script starts.
const ROOTLESS_USER: &str = "ephem-podman";

/// Iterations of each reliability loop (Docker's run 10; Podman's run in CI
/// too, on two cores).
const RUNS: usize = 5;

/// One Podman test at a time: every run sweeps abandoned runs when it starts,
/// which would race with the sweep test, and two cores are shared.
static PODMAN: Mutex<()> = Mutex::new(());

/// A Podman service the tests talk to, held for the test's duration.
struct Podman {
    /// `rootful` or `rootless`, for messages.
    name: &'static str,
    /// `unix:///...`, as `DOCKER_HOST` takes it.
    host: String,
    _turn: MutexGuard<'static, ()>,
}

fn rootful() -> Option<Podman> {
    podman("rootful", "/run/podman/podman.sock".to_owned())
}

fn rootless() -> Option<Podman> {
    let uid = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split(':').collect();
            (fields.first() == Some(&ROOTLESS_USER)).then(|| fields[2].to_owned())
        });
    let socket = match uid {
        Some(uid) => format!("/run/user/{uid}/podman/podman.sock"),
        None => {
            format!("/run/user/<uid of {ROOTLESS_USER}, who does not exist>/podman/podman.sock")
        }
    };
    podman("rootless", socket)
}

/// The service at `socket` when it answers as Podman; else `None` after a
/// note, or a failure when Podman is required here.
fn podman(name: &'static str, socket: String) -> Option<Podman> {
    let turn = PODMAN.lock().unwrap_or_else(|p| p.into_inner());
    let why = match version_of_service(&socket) {
        Ok(version) if version.contains("Podman Engine") => {
            return Some(Podman {
                name,
                host: format!("unix://{socket}"),
                _turn: turn,
            })
        }
        Ok(_) => format!("{socket} answers, but not as Podman"),
        Err(e) => format!("no Podman service at {socket} ({e})"),
    };
    let required = std::env::var_os("CI").is_some_and(|v| !v.is_empty())
        || std::env::var("EPHEM_TEST_PODMAN").as_deref() == Ok("1");
    assert!(
        !required,
        "{why}; provision it with `EPHEM_TEST_PODMAN=1 bash scripts/provision-test-env.sh` \
         (required because CI or EPHEM_TEST_PODMAN=1 is set)"
    );
    eprintln!(
        "note: skipped: {why}; `EPHEM_TEST_PODMAN=1 bash scripts/provision-test-env.sh` starts one"
    );
    None
}

/// `GET /version` on the socket, by hand: a plain HTTP/1.0 request needs no client.
fn version_of_service(socket: &str) -> std::io::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /version HTTP/1.0\r\nHost: podman\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

impl Podman {
    /// The binary, talking to this service only.
    fn ephem(&self, mut cmd: Command) -> Command {
        cmd.env("DOCKER_HOST", &self.host);
        cmd
    }

    /// `docker -H SERVICE ARGS`, its standard output; fails the test when it fails.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("docker")
            .args(["-H", &self.host])
            .args(args)
            .output()
            .expect("docker CLI");
        assert!(
            out.status.success(),
            "docker {args:?} on {}: {}",
            self.host,
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Containers, networks and volumes in this service carrying the run's label.
    fn resources_of(&self, run_id: &str) -> Vec<String> {
        let filter = format!("label=cargo-ephem.run={run_id}");
        let mut left = Vec::new();
        for (kind, args) in [
            ("container", vec!["ps", "-aq", "--filter", &filter]),
            ("network", vec!["network", "ls", "-q", "--filter", &filter]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &filter]),
        ] {
            left.extend(self.cli(&args).lines().map(|id| format!("{kind}:{id}")));
        }
        left
    }

    /// Force-removes whatever of the run the service still holds.
    fn remove_run(&self, run_id: &str) {
        for resource in self.resources_of(run_id) {
            let (kind, id) = resource.split_once(':').unwrap();
            let args: &[&str] = match kind {
                "container" => &["rm", "-f", "-v", id],
                "network" => &["network", "rm", id],
                _ => &["volume", "rm", "-f", id],
            };
            let _ = Command::new("docker")
                .args(["-H", &self.host])
                .args(args)
                .output();
        }
    }
}

/// Removes a run's resources from the service when dropped.
struct PodmanCleanup<'a>(&'a Podman, String);

impl Drop for PodmanCleanup<'_> {
    fn drop(&mut self) {
        self.0.remove_run(&self.1);
    }
}

/// A runner against Podman whose two shards each hold a hanging test.
/// Dropping it removes what the run left, so a failed check leaks nothing.
struct HangingRun<'a> {
    podman: &'a Podman,
    runner: Background,
    run_id: String,
}

impl Drop for HangingRun<'_> {
    fn drop(&mut self) {
        if matches!(self.runner.child.try_wait(), Ok(None)) {
            let _ = self.runner.child.kill();
            let _ = self.runner.child.wait();
        }
        if self.run_id.is_empty() {
            return;
        }
        for pid in reaper_of(&self.run_id)
            .into_iter()
            .chain(test_processes_of(&self.run_id))
        {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        self.podman.remove_run(&self.run_id);
    }
}

fn start_hanging_run(podman: &Podman) -> HangingRun<'_> {
    let mut run = HangingRun {
        podman,
        runner: Background::spawn(
            podman
                .ephem(ephem_test())
                .arg("--config")
                .arg(config("env-busybox.toml"))
                .args(["--shards", "2", "--ignored", "hang_"]),
        ),
        run_id: String::new(),
    };
    run.run_id = run.runner.run_id(120);
    assert!(
        wait_for(120, || test_processes_of(&run.run_id).len() >= 2),
        "the hanging tests never started; stderr:\n{}",
        run.runner.stderr
    );
    let in_podman = podman.resources_of(&run.run_id);
    assert!(
        in_podman
            .iter()
            .filter(|r| r.starts_with("container:"))
            .count()
            >= 2
            && in_podman.iter().any(|r| r.starts_with("network:")),
        "Podman holds no containers and networks of the run: {in_podman:?}"
    );
    assert!(
        resources_of(&run.run_id).is_empty(),
        "the run reached Docker's daemon despite DOCKER_HOST"
    );
    run
}

/// The run's reaper process (`cargo-ephem __reap --run ID`).
fn reaper_of(run_id: &str) -> Vec<u32> {
    processes_containing(&["__reap", "--run", run_id])
}

/// Waits for the runner to exit at most `secs` after `since`: its exit code
/// and when it was seen gone.
fn exit_within(runner: &mut Background, since: Instant, secs: u64) -> Option<(Option<i32>, f64)> {
    let exited = wait_for(secs, || matches!(runner.child.try_wait(), Ok(Some(_))));
    let after = since.elapsed().as_secs_f64();
    exited.then(|| (runner.wait(5), after))
}

/// Seconds from `since` until neither resources nor test processes of the
/// run remain, or what remains after `secs`.
fn wait_until_clean(
    podman: &Podman,
    run_id: &str,
    since: Instant,
    secs: u64,
) -> Result<f64, String> {
    if wait_for(secs, || {
        podman.resources_of(run_id).is_empty() && test_processes_of(run_id).is_empty()
    }) {
        Ok(since.elapsed().as_secs_f64())
    } else {
        Err(format!(
            "run {run_id}: after {secs} s Podman still holds {:?}, test processes {:?}",
            podman.resources_of(run_id),
            test_processes_of(run_id)
        ))
    }
}

/// Runs `iteration` RUNS times, each to its end, prints the clean count and
/// timings (the README quotes them), then fails naming every unclean one.
fn repeat(
    podman: &Podman,
    what: &str,
    measure: &str,
    mut iteration: impl FnMut() -> Result<f64, String>,
) {
    let mut times = Vec::new();
    let mut failures = Vec::new();
    for i in 1..=RUNS {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut iteration))
            .unwrap_or_else(|_| Err("panicked (message above)".to_owned()));
        match outcome {
            Ok(secs) => times.push(secs),
            Err(why) => failures.push(format!("iteration {i}: {why}")),
        }
    }
    times.sort_by(f64::total_cmp);
    let timing = match (times.get(times.len() / 2), times.last()) {
        (Some(median), Some(max)) => format!("{measure}: median {median:.2} s, max {max:.2} s"),
        _ => "no clean iteration to time".to_owned(),
    };
    eprintln!(
        "reliability (podman, {}): {what}: {} of {RUNS} clean; {timing}",
        podman.name,
        times.len()
    );
    assert!(
        failures.is_empty(),
        "{what} on Podman ({}): {} of {RUNS} iterations were not clean:\n{}",
        podman.name,
        failures.len(),
        failures.join("\n")
    );
}

fn the_example_passes_against_podman_and_leaves_nothing(podman: &Podman) {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let manifest =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/postgres-redis/Cargo.toml");
    let mut runner = Background::spawn(
        podman
            .ephem(ephem())
            .arg("test")
            .arg("--manifest-path")
            .arg(&manifest)
            .args(["--shards", "2", "--junit"])
            .arg(&junit),
    );
    let run_id = runner.run_id(600);
    let _cleanup = PodmanCleanup(podman, run_id.clone());
    // Until an environment is ready, or the runner gave up.
    let ready = wait_for(600, || {
        runner.wait_for_line(0, "READY") || matches!(runner.child.try_wait(), Ok(Some(_)))
    });
    assert!(
        ready && runner.stderr.contains("READY"),
        "no environment became ready:\n{}",
        runner.stderr
    );
    let in_podman = podman.resources_of(&run_id);
    let code = runner.wait(600);
    assert_eq!(code, Some(0), "{}", runner.stderr);
    assert!(
        in_podman.iter().any(|r| r.starts_with("container:")),
        "the environments were not in Podman: {in_podman:?}\n{}",
        runner.stderr
    );
    let report = read_junit(&junit);
    let passed = cases(&report).iter().filter(|(_, c)| is_success(c)).count();
    assert!(passed >= 9, "{passed} tests passed:\n{}", runner.stderr);
    assert!(
        podman.resources_of(&run_id).is_empty(),
        "left behind in Podman: {:?}",
        podman.resources_of(&run_id)
    );
}

fn kill_9_of_the_runner_on_podman_leaves_nothing(podman: &Podman) {
    repeat(
        podman,
        "kill -9 of the runner mid-run (2 shards)",
        "time to clean",
        || {
            let mut hanging = start_hanging_run(podman);
            let killed = Instant::now();
            hanging.runner.signal(libc::SIGKILL);
            if exit_within(&mut hanging.runner, killed, 10).is_none() {
                return Err("the runner was alive 10 s after SIGKILL".to_owned());
            }
            wait_until_clean(podman, &hanging.run_id, killed, 30)
        },
    );
}

fn sigint_on_podman_leaves_nothing(podman: &Podman) {
    repeat(podman, "SIGINT mid-run (2 shards)", "time to exit", || {
        let mut hanging = start_hanging_run(podman);
        let sent = Instant::now();
        hanging.runner.signal(libc::SIGINT);
        let Some((code, after)) = exit_within(&mut hanging.runner, sent, 30) else {
            return Err(format!(
                "still running 30 s after SIGINT:\n{}",
                hanging.runner.stderr
            ));
        };
        let left = podman.resources_of(&hanging.run_id);
        let tests = test_processes_of(&hanging.run_id);
        if code == Some(130) && left.is_empty() && tests.is_empty() {
            Ok(after)
        } else {
            Err(format!(
                "exit {code:?} (expected 130), left in Podman {left:?}, test processes {tests:?}:\n{}",
                hanging.runner.stderr
            ))
        }
    });
}

/// kill -9 of the runner and of its reaper: nothing removes the run until
/// the next run against Podman sweeps it, finding it by its labels
/// (containers and networks) and its dead runner's pid.
fn the_next_run_on_podman_sweeps_a_run_whose_reaper_died_too(podman: &Podman) {
    let mut dead = start_hanging_run(podman);
    let reapers = reaper_of(&dead.run_id);
    assert!(!reapers.is_empty(), "no reaper for run {}", dead.run_id);
    for pid in reapers {
        // SAFETY: kill(2) on a reaper this test's runner started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    dead.runner.signal(libc::SIGKILL);
    assert!(exit_within(&mut dead.runner, Instant::now(), 10).is_some());
    for pid in test_processes_of(&dead.run_id) {
        // SAFETY: the orphaned hanging tests of our own run.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(
        !podman.resources_of(&dead.run_id).is_empty(),
        "the run was removed without its runner and reaper"
    );
    let out = run(podman
        .ephem(ephem_test())
        .arg("--config")
        .arg(config("env-busybox.toml"))
        .arg("pass_add"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let runner_pid = dead.runner.child.id().to_string();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("SWEEP") && l.contains(&runner_pid)),
        "no sweep naming the dead runner (pid {runner_pid}) of run {}:\n{stderr}",
        dead.run_id
    );
    assert!(
        podman.resources_of(&dead.run_id).is_empty(),
        "the sweep left {:?}",
        podman.resources_of(&dead.run_id)
    );
    let new_run = run_id_of(&stderr).expect("run id");
    assert!(podman.resources_of(&new_run).is_empty());
}

/// Podman 4.3 names the event `died` in filters (`die` matches nothing) and
/// ORs label filters on events: the runner must still name the service that
/// died, and only for its own shard.
fn a_service_killed_mid_run_on_podman_is_named_in_the_failures(podman: &Podman) {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let mut runner = Background::spawn(
        podman
            .ephem(ephem_test())
            .arg("--config")
            .arg(config("env-postgres.toml"))
            .args(["-j", "1", "--no-fail-fast", "svc_", "--junit"])
            .arg(&junit)
            .env("FIXTURE_OUT", dir.path()),
    );
    let run_id = runner.run_id(120);
    let _cleanup = PodmanCleanup(podman, run_id.clone());
    assert!(
        wait_for(180, || !test_processes_of(&run_id).is_empty()),
        "{}",
        runner.stderr
    );
    let filter = format!("label=cargo-ephem.run={run_id}");
    let container = podman.cli(&["ps", "-q", "--filter", &filter]);
    let container = container.trim();
    assert!(!container.is_empty(), "no container in Podman");
    podman.cli(&["kill", container]);
    // Give the event stream a moment, then let the waiting test finish.
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(dir.path().join("killed"), "").unwrap();
    assert_eq!(runner.wait(120), Some(100), "{}", runner.stderr);
    let diagnosis = "service postgres of shard 1 exited (code 137)";
    assert!(runner.stderr.contains(diagnosis), "{}", runner.stderr);
    assert!(podman.resources_of(&run_id).is_empty());
}

/// Podman runs healthchecks from systemd timers; without systemd (containers,
/// many CI machines) a container stays `starting` for ever. The backend runs
/// the service's healthcheck itself on Podman.
fn a_healthcheck_wait_becomes_ready_on_podman(podman: &Podman) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ephem.toml");
    std::fs::write(
        &config,
        r#"
[images]
mirror = "localhost:5000"

[services.web]
image = "busybox:1.36"
cmd = ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
ports = [8080]
healthcheck = { test = ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/index.html"], interval = "1s" }
wait = { healthcheck = true }
startup-timeout = "30s"
export = { WEB_URL = "http://${host}:${port.8080}/index.html" }
"#,
    )
    .unwrap();
    let out = run(podman
        .ephem(ephem_test())
        .arg("--config")
        .arg(&config)
        .arg("pass_add"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _cleanup = run_id_of(&stderr).map(|id| PodmanCleanup(podman, id));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stderr.contains("READY"), "{stderr}");
}

/// Podman ORs label filters on volumes: a shard's teardown listing volumes
/// by run and shard would also get every other run's shard-1 volumes. A live
/// run's volume (this test process as its owner) must survive another run.
fn a_shard_teardown_on_podman_leaves_other_runs_volumes_alone(podman: &Podman) {
    let other_run = format!("podman-other-{}", std::process::id());
    let _cleanup = PodmanCleanup(podman, other_run.clone());
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let far = (std::time::SystemTime::now() + Duration::from_secs(3600))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let labels = [
        format!("cargo-ephem.run={other_run}"),
        "cargo-ephem.shard=1".to_owned(),
        format!("cargo-ephem.pid={}", std::process::id()),
        format!("cargo-ephem.host={}", hostname.trim()),
        format!("cargo-ephem.expires={far}"),
    ];
    let mut create = vec!["volume", "create"];
    for label in &labels {
        create.extend(["--label", label]);
    }
    let name = format!("ephem-{other_run}");
    create.push(&name);
    podman.cli(&create);
    let out = run(podman
        .ephem(ephem_test())
        .arg("--config")
        .arg(config("env-busybox.toml"))
        .arg("pass_add"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _cleanup_run = run_id_of(&stderr).map(|id| PodmanCleanup(podman, id));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        podman.resources_of(&other_run),
        vec![format!("volume:{name}")],
        "the other run's volume was removed:\n{stderr}"
    );
}

/// Each check, against the rootful and the rootless service.
macro_rules! on_both_services {
    ($($check:ident),* $(,)?) => {
        mod rootful {
            $(#[test]
            fn $check() {
                if let Some(podman) = super::rootful() {
                    super::$check(&podman);
                }
            })*
        }
        mod rootless {
            $(#[test]
            fn $check() {
                if let Some(podman) = super::rootless() {
                    super::$check(&podman);
                }
            })*
        }
    };
}

on_both_services!(
    the_example_passes_against_podman_and_leaves_nothing,
    kill_9_of_the_runner_on_podman_leaves_nothing,
    sigint_on_podman_leaves_nothing,
    the_next_run_on_podman_sweeps_a_run_whose_reaper_died_too,
    a_service_killed_mid_run_on_podman_is_named_in_the_failures,
    a_shard_teardown_on_podman_leaves_other_runs_volumes_alone,
    a_healthcheck_wait_becomes_ready_on_podman,
);
