//! Nothing left behind, on every exit path: the figures users ask for.
//! Each loop prints how many of its iterations were clean and their timings
//! (run with `--nocapture` to see them; the README's reliability section
//! quotes them).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// Iterations of each loop below.
const RUNS: usize = 10;

/// A runner whose two shards each hold a hanging test in their own
/// environment. Dropping it removes whatever the run left (the runner, its
/// test processes, its containers, networks and volumes), so a failed check
/// leaks nothing into the next iteration or test.
struct HangingRun {
    runner: Background,
    /// Empty until the runner prints it.
    run_id: String,
}

impl Drop for HangingRun {
    fn drop(&mut self) {
        if matches!(self.runner.child.try_wait(), Ok(None)) {
            let _ = self.runner.child.kill();
            let _ = self.runner.child.wait();
        }
        if self.run_id.is_empty() {
            return;
        }
        for pid in test_processes_of(&self.run_id) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        remove_by_label(&format!("cargo-ephem.run={}", self.run_id));
    }
}

/// Starts a hanging run and waits until both tests run.
fn start_hanging_run() -> HangingRun {
    start_hanging_run_with(&[])
}

fn start_hanging_run_with(extra: &[&str]) -> HangingRun {
    let mut run = HangingRun {
        runner: Background::spawn(
            ephem_test()
                .arg("--config")
                .arg(config("env-busybox.toml"))
                .args(["--shards", "2", "--ignored", "hang_"])
                .args(extra),
        ),
        run_id: String::new(),
    };
    run.run_id = run.runner.run_id(120);
    assert!(
        wait_for(120, || test_processes_of(&run.run_id).len() >= 2),
        "the hanging tests never started; stderr:\n{}",
        run.runner.stderr
    );
    assert!(
        !resources_of(&run.run_id).is_empty(),
        "no environment was created"
    );
    run
}

/// Waits at most `secs` after `since` for the runner to exit; returns its
/// exit code and when it was seen gone (polled every 10 ms), or None.
fn exit_within(
    runner: &mut Background,
    since: Instant,
    secs: u64,
) -> Option<(Option<i32>, Duration)> {
    let deadline = since + Duration::from_secs(secs);
    loop {
        if let Ok(Some(_)) = runner.child.try_wait() {
            let after = since.elapsed();
            // Returns at once, with the rest of its stderr collected.
            return Some((runner.wait(5), after));
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What one iteration of a loop found: when clean, the seconds it measured;
/// otherwise what went wrong or was left behind.
type Iteration = Result<f64, String>;

/// Seconds from `since` until nothing of the run is left (resources and
/// test processes), or what is still there after `secs`.
fn wait_until_clean(run_id: &str, since: Instant, secs: u64) -> Iteration {
    let clean = wait_for(secs, || {
        resources_of(run_id).is_empty() && test_processes_of(run_id).is_empty()
    });
    if clean {
        Ok(since.elapsed().as_secs_f64())
    } else {
        Err(format!(
            "run {run_id} still has resources {:?} and test processes {:?} {secs} s on",
            resources_of(run_id),
            test_processes_of(run_id)
        ))
    }
}

fn time_until_clean(run_id: &str, since: Instant, secs: u64) -> f64 {
    wait_until_clean(run_id, since, secs).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `iteration` RUNS times, each to the end even when an earlier one
/// failed (a panic counts as a failure), prints the counts, and then fails
/// naming every iteration that was not clean.
fn repeat(what: &str, measure: &str, mut iteration: impl FnMut() -> Iteration) {
    let mut times = Vec::new();
    let mut failures = Vec::new();
    for i in 1..=RUNS {
        let outcome = catch_unwind(AssertUnwindSafe(&mut iteration))
            .unwrap_or_else(|panic| Err(format!("panicked: {}", panic_text(&*panic))));
        match outcome {
            Ok(secs) => times.push(secs),
            Err(why) => failures.push(format!("iteration {i}: {why}")),
        }
    }
    eprintln!("{}", reliability_line(what, measure, &mut times, RUNS));
    assert!(
        failures.is_empty(),
        "{what}: {} of {RUNS} iterations were not clean:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `reliability: WHAT: CLEAN of TOTAL clean; MEASURE: median .., max ..`,
/// the timings over the clean iterations only.
fn reliability_line(what: &str, measure: &str, times: &mut [f64], total: usize) -> String {
    times.sort_by(f64::total_cmp);
    let timing = match times.last() {
        None => "no clean iteration to time".to_owned(),
        Some(max) => format!("{measure}: median {:.2} s, max {max:.2} s", median(times)),
    };
    format!(
        "reliability: {what}: {} of {total} clean; {timing}",
        times.len()
    )
}

/// Median of sorted, non-empty values.
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// kill -9 of the runner: its reaper must remove everything; the time is
/// from the kill until nothing is left.
fn kill_9_iteration() -> Iteration {
    let mut hanging = start_hanging_run();
    let killed = Instant::now();
    hanging.runner.signal(libc::SIGKILL);
    if exit_within(&mut hanging.runner, killed, 10).is_none() {
        return Err("the runner was alive 10 s after SIGKILL".to_owned());
    }
    wait_until_clean(&hanging.run_id, killed, 15)
}

#[test]
fn kill_9_of_the_runner_leaves_nothing_10_times() {
    let _daemon = shared_daemon();
    repeat(
        "kill -9 of the runner mid-run (2 shards)",
        "time to clean",
        kill_9_iteration,
    );
}

/// SIGINT or SIGTERM: the runner must exit with 128 + the signal within
/// 10 s, having removed its environments and its tests; the time is from
/// the signal to the exit.
fn signal_iteration(signal: i32, expected: i32, name: &str) -> Iteration {
    let mut hanging = start_hanging_run();
    let sent = Instant::now();
    hanging.runner.signal(signal);
    let Some((code, exit_after)) = exit_within(&mut hanging.runner, sent, 30) else {
        return Err(format!(
            "run {}: still running 30 s after {name}; its stderr so far:\n{}",
            hanging.run_id,
            last_lines(&hanging.runner.stderr, 15)
        ));
    };
    let mut problems = Vec::new();
    if code != Some(expected) {
        problems.push(format!("exit code {code:?}, expected {expected}"));
    }
    if exit_after >= Duration::from_secs(10) {
        problems.push(format!(
            "exit took {:.2} s, over 10 s",
            exit_after.as_secs_f64()
        ));
    }
    // The runner removes its environments before it exits.
    let left = resources_of(&hanging.run_id);
    if !left.is_empty() {
        problems.push(format!("left behind {left:?}"));
    }
    let tests = test_processes_of(&hanging.run_id);
    if !tests.is_empty() {
        problems.push(format!("test processes alive {tests:?}"));
    }
    if problems.is_empty() {
        Ok(exit_after.as_secs_f64())
    } else {
        Err(format!(
            "run {}: {}; end of its stderr:\n{}",
            hanging.run_id,
            problems.join("; "),
            last_lines(&hanging.runner.stderr, 15)
        ))
    }
}

fn signal_loop(signal: i32, expected: i32, name: &str) {
    repeat(
        &format!("{name} mid-run (2 shards)"),
        "time to exit",
        || signal_iteration(signal, expected, name),
    );
}

#[test]
fn sigint_mid_run_leaves_nothing_10_times() {
    let _daemon = shared_daemon();
    signal_loop(libc::SIGINT, 130, "SIGINT");
}

#[test]
fn sigterm_mid_run_leaves_nothing_10_times() {
    let _daemon = shared_daemon();
    signal_loop(libc::SIGTERM, 143, "SIGTERM");
}

#[test]
fn readiness_failure_in_one_of_four_shards_removes_all_four() {
    let _daemon = shared_daemon();
    let out = run(ephem_test()
        .arg("--config")
        .arg(config("env-shard3-broken.toml"))
        .args(["--shards", "4", "pass_"]));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let run_id = run_id_of(&stderr).expect("run id");
    let _cleanup = Cleanup(Some(run_id.clone()));
    assert_eq!(out.status.code(), Some(102), "{}", describe(&out));
    assert!(stderr.contains("shard 3 is broken on purpose"), "{stderr}");
    assert_nothing_left(&run_id);
}

#[test]
fn two_concurrent_runs_one_killed_the_other_untouched() {
    let _daemon = exclusive_daemon();
    let mut doomed = start_hanging_run();
    // The second run sweeps at start (the first is alive: untouched), then
    // runs while the first is killed and reaped.
    let mut survivor = Background::spawn(
        ephem_test()
            .arg("--config")
            .arg(config("env-busybox.toml"))
            .args(["--shards", "2", "pass_", "slow_", "env_"]),
    );
    let survivor_id = survivor.run_id(120);
    let _cleanup_survivor = Cleanup(Some(survivor_id.clone()));
    assert!(
        wait_for(120, || !test_processes_of(&survivor_id).is_empty()),
        "{}",
        survivor.stderr
    );
    let killed = Instant::now();
    doomed.runner.signal(libc::SIGKILL);
    let _ = doomed.runner.wait(10);
    time_until_clean(&doomed.run_id, killed, 15);
    let code = survivor.wait(120);
    assert_eq!(
        code,
        Some(0),
        "the surviving run was disturbed:\n{}",
        survivor.stderr
    );
    assert!(!survivor.stderr.contains("SWEEP"), "{}", survivor.stderr);
    assert_nothing_left(&survivor_id);
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// Puts busybox:1.36 in the local image store (the fake runs below use it
/// directly), by running one test with an environment that pulls it.
fn pull_busybox() {
    let out = run(ephem_test()
        .arg("--config")
        .arg(config("env-busybox.toml"))
        .arg("pass_add"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

/// Starts a labelled container like a run of cargo-ephem would have left.
fn fake_run_container(run: &str, pid: u32, extra: &[&str]) -> String {
    let out = Command::new("docker")
        .args(["run", "-d", "--label", &format!("cargo-ephem.run={run}")])
        .args(["--label", &format!("cargo-ephem.host={}", hostname())])
        .args(["--label", &format!("cargo-ephem.pid={pid}")])
        .args(["--label", "cargo-ephem.shard=1"])
        .args(["--label", "cargo-ephem.expires=4102444800"])
        .args(extra)
        .args(["busybox:1.36", "sleep", "300"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn container_exists(id: &str) -> bool {
    Command::new("docker")
        .args(["inspect", id])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn gc_removes_only_abandoned_runs() {
    let _daemon = exclusive_daemon();
    pull_busybox();

    let tag = uuid_like();
    let dead_run = format!("gc-dead-{tag}");
    let live_run = format!("gc-live-{tag}");
    let _c1 = Cleanup(Some(dead_run.clone()));
    let _c2 = Cleanup(Some(live_run.clone()));
    let unlabelled_label = format!("gc-test-unlabelled={tag}");
    let dead = fake_run_container(&dead_run, 999_999, &[]);
    // This test process is alive: its "run" must be left alone.
    let live = fake_run_container(&live_run, std::process::id(), &[]);
    let plain = {
        let out = Command::new("docker")
            .args([
                "run",
                "-d",
                "--label",
                &unlabelled_label,
                "busybox:1.36",
                "sleep",
                "300",
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    struct RemovePlain(String);
    impl Drop for RemovePlain {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let _c3 = RemovePlain(plain.clone());

    let dry = run(ephem().args(["gc", "--dry-run"]));
    assert_eq!(dry.status.code(), Some(0), "{}", describe(&dry));
    let listing = String::from_utf8_lossy(&dry.stdout);
    let dead_line = listing
        .lines()
        .find(|l| l.contains(&dead_run))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(
        dead_line.contains("999999"),
        "the reason names the dead pid: {dead_line}"
    );
    assert!(!listing.contains(&live_run), "{listing}");
    assert!(
        container_exists(&dead) && container_exists(&live) && container_exists(&plain),
        "--dry-run removed something"
    );

    let gc = run(ephem().arg("gc"));
    assert_eq!(gc.status.code(), Some(0), "{}", describe(&gc));
    assert!(!container_exists(&dead), "gc left the abandoned run");
    assert!(container_exists(&live), "gc removed a live run's container");
    assert!(
        container_exists(&plain),
        "gc removed a container without cargo-ephem labels"
    );
}

/// A tag unique to this test run, for names and labels.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}-{nanos:x}", std::process::id())
}

#[test]
fn a_service_killed_mid_run_is_named_in_the_failures() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let mut runner = Background::spawn(
        ephem_test()
            .arg("--config")
            .arg(config("env-postgres.toml"))
            .args(["-j", "1", "--no-fail-fast", "svc_", "--junit"])
            .arg(&junit)
            .env("FIXTURE_OUT", dir.path()),
    );
    let run_id = runner.run_id(120);
    let _cleanup = Cleanup(Some(run_id.clone()));
    assert!(
        wait_for(180, || !test_processes_of(&run_id).is_empty()),
        "{}",
        runner.stderr
    );
    let filter = format!("label=cargo-ephem.run={run_id}");
    let out = Command::new("docker")
        .args(["ps", "-q", "--filter", &filter])
        .output()
        .unwrap();
    let container = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(!container.is_empty());
    assert!(Command::new("docker")
        .args(["kill", &container])
        .output()
        .unwrap()
        .status
        .success());
    // Give the event stream a moment, then let the waiting test finish.
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(dir.path().join("killed"), "").unwrap();
    assert_eq!(runner.wait(120), Some(100), "{}", runner.stderr);
    let diagnosis = "service postgres of shard 1 exited (code 137)";
    assert!(runner.stderr.contains(diagnosis), "{}", runner.stderr);
    let report = read_junit(&junit);
    match &find(&report, "tests::svc_b_connects").status {
        quick_junit::TestCaseStatus::NonSuccess { message, .. } => {
            let message = message.as_ref().unwrap().as_str();
            assert!(message.contains(diagnosis), "{message}");
        }
        other => panic!("svc_b_connects should fail: {other:?}"),
    }
    assert_nothing_left(&run_id);
}

#[test]
fn kill_9_without_environments_leaves_no_test_process() {
    let _daemon = shared_daemon();
    let mut runner =
        Background::spawn(ephem_test().args(["--no-env", "--ignored", "hang_with_child"]));
    let run_id = runner.run_id(120);
    // The test and its `sleep 987` child.
    assert!(
        wait_for(60, || test_processes_of(&run_id).len() >= 2),
        "{}",
        runner.stderr
    );
    let killed = Instant::now();
    runner.signal(libc::SIGKILL);
    let _ = runner.wait(10);
    assert!(
        wait_for(10, || test_processes_of(&run_id).is_empty()),
        "test processes outlived the runner: {:?}",
        test_processes_of(&run_id)
    );
    eprintln!(
        "reliability: kill -9 without environments: test processes gone after {:.2} s",
        killed.elapsed().as_secs_f64()
    );
}

#[test]
fn a_second_ctrl_c_kills_at_once_and_still_removes_everything() {
    let _daemon = shared_daemon();
    let mut hanging = start_hanging_run();
    hanging.runner.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(100));
    hanging.runner.signal(libc::SIGINT);
    assert_eq!(
        hanging.runner.wait(30),
        Some(130),
        "{}",
        hanging.runner.stderr
    );
    assert!(
        hanging.runner.stderr.contains("SIGINT again"),
        "{}",
        hanging.runner.stderr
    );
    assert_nothing_left(&hanging.run_id);
    assert!(test_processes_of(&hanging.run_id).is_empty());
}

#[test]
fn a_new_run_sweeps_abandoned_runs_first() {
    let _daemon = exclusive_daemon();
    pull_busybox();
    let dead_run = format!("sweep-dead-{}", uuid_like());
    let _c = Cleanup(Some(dead_run.clone()));
    let dead = fake_run_container(&dead_run, 999_998, &[]);
    let out = run(ephem_test()
        .arg("--config")
        .arg(config("env-busybox.toml"))
        .arg("pass_add"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let sweep = stderr
        .lines()
        .find(|l| l.contains("SWEEP"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(sweep.contains("999998"), "the sweep line says why: {sweep}");
    assert!(
        !container_exists(&dead),
        "the abandoned run's container survived the sweep"
    );
}

#[test]
fn a_live_run_keeps_pushing_its_expiry_forward() {
    let _daemon = exclusive_daemon();
    let mut hanging = start_hanging_run_with(&["--env-ttl", "3s"]);
    let run_id = hanging.run_id.clone();
    // Past the first expiry: the renewals (every second) must have moved it.
    std::thread::sleep(Duration::from_secs(5));
    let out = Command::new("docker")
        .args([
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=cargo-ephem.run={run_id}"),
        ])
        .args(["--filter", "label=cargo-ephem.lease"])
        .output()
        .unwrap();
    let leases: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(!leases.is_empty(), "no lease volume for a live run");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let latest = leases
        .iter()
        .map(|v| {
            let out = Command::new("docker")
                .args([
                    "volume",
                    "inspect",
                    "-f",
                    "{{index .Labels \"cargo-ephem.expires\"}}",
                    v,
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .max()
        .unwrap();
    assert!(
        latest > now,
        "the run's expiry {latest} is not after now {now}"
    );
    // A gc from elsewhere leaves the live run alone.
    let gc = run(ephem().arg("gc"));
    assert_eq!(gc.status.code(), Some(0), "{}", describe(&gc));
    assert!(!String::from_utf8_lossy(&gc.stdout).contains(&run_id));
    hanging.runner.signal(libc::SIGTERM);
    assert_eq!(
        hanging.runner.wait(30),
        Some(143),
        "{}",
        hanging.runner.stderr
    );
    assert_nothing_left(&run_id);
}

#[test]
fn a_panic_in_the_runner_exits_1_and_leaves_nothing() {
    let _daemon = shared_daemon();
    let mut runner = Background::spawn(
        ephem_test()
            .arg("--config")
            .arg(config("env-busybox.toml"))
            .args(["--shards", "2", "--ignored", "hang_"])
            .env("CARGO_EPHEM_TEST_PANIC", "ready"),
    );
    let run_id = runner.run_id(120);
    let _cleanup = Cleanup(Some(run_id.clone()));
    assert_eq!(runner.wait(60), Some(1), "{}", runner.stderr);
    assert!(
        runner.stderr.contains("internal error"),
        "{}",
        runner.stderr
    );
    let exited = Instant::now();
    let secs = time_until_clean(&run_id, exited, 15);
    eprintln!("reliability: panic in the runner: clean {secs:.2} s after exit");
}

/// A panic inside a task the runner spawned (a bug) must end the run, not
/// hang it: exit 1 with one "internal error" line, every environment and
/// test process of the run gone. `CARGO_EPHEM_TEST_PANIC` makes the task
/// panic on purpose; `filter` picks tests that reach that task.
fn a_task_panic_ends_the_run(point: &str, filter: &[&str]) {
    let _daemon = shared_daemon();
    let mut runner = Background::spawn(
        ephem_test()
            .arg("--config")
            .arg(config("env-busybox.toml"))
            .args(["--shards", "2"])
            .args(filter)
            .env("CARGO_EPHEM_TEST_PANIC", point),
    );
    let run_id = runner.run_id(120);
    let _cleanup = Cleanup(Some(run_id.clone()));
    // Before the fix the dispatcher waited forever for the panicked task.
    assert_eq!(runner.wait(90), Some(1), "{}", runner.stderr);
    let errors: Vec<&str> = runner
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: internal error"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", runner.stderr);
    assert!(
        errors[0].contains("panicked") && errors[0].contains("panicking on purpose"),
        "{}",
        errors[0]
    );
    let exited = Instant::now();
    let secs = time_until_clean(&run_id, exited, 15);
    eprintln!("reliability: panic in {point}: exit 1, clean {secs:.2} s after exit");
}

#[test]
fn a_panic_while_provisioning_ends_the_run_with_exit_1_and_nothing_left() {
    a_task_panic_ends_the_run("provision", &["--ignored", "hang_"]);
}

#[test]
fn a_panic_in_a_test_attempt_ends_the_run_and_its_test_processes() {
    // The attempt panics while its (hanging) test runs: the test and its
    // child are orphans only the reaper can find.
    a_task_panic_ends_the_run("attempt", &["--ignored", "hang_"]);
}

#[test]
fn a_panic_in_a_teardown_ends_the_run_and_the_reaper_removes_the_rest() {
    a_task_panic_ends_the_run("teardown", &["pass_"]);
}

#[test]
fn gc_run_refuses_a_live_run() {
    let _daemon = shared_daemon();
    let mut run = start_hanging_run();
    let out = crate::support::run(ephem().args(["gc", "--run", &run.run_id]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is alive"), "{stderr}");
    assert!(
        !resources_of(&run.run_id).is_empty(),
        "gc removed a live run"
    );
    run.runner.signal(libc::SIGTERM);
    assert_eq!(run.runner.wait(30), Some(143), "{}", run.runner.stderr);
    assert_nothing_left(&run.run_id);
}
