//! Nothing left behind, on every exit path: the figures users ask for.
//! Each loop prints its timings (run with `--nocapture` to see them; the
//! README's reliability section quotes them).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// Starts a run whose two shards each hold a hanging test in their own
/// environment, and waits until both tests run.
fn start_hanging_run() -> (Background, String) {
    start_hanging_run_with(&[])
}

fn start_hanging_run_with(extra: &[&str]) -> (Background, String) {
    let mut runner = Background::spawn(
        ephem_test()
            .arg("--config")
            .arg(config("env-busybox.toml"))
            .args(["--shards", "2", "--ignored", "hang_"])
            .args(extra),
    );
    let run_id = runner.run_id(120);
    assert!(
        wait_for(120, || test_processes_of(&run_id).len() >= 2),
        "the hanging tests never started; stderr:\n{}",
        runner.stderr
    );
    assert!(
        !resources_of(&run_id).is_empty(),
        "no environment was created"
    );
    (runner, run_id)
}

/// Seconds until nothing of the run is left (resources and test
/// processes), or a failure after `secs`.
fn time_until_clean(run_id: &str, since: Instant, secs: u64) -> f64 {
    let clean = wait_for(secs, || {
        resources_of(run_id).is_empty() && test_processes_of(run_id).is_empty()
    });
    assert!(
        clean,
        "{secs} s after the signal, run {run_id} still has resources {:?} and test processes {:?}",
        resources_of(run_id),
        test_processes_of(run_id)
    );
    since.elapsed().as_secs_f64()
}

fn report(what: &str, times: &mut [f64]) {
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "reliability: {what}: {} of {} clean; time to clean: median {:.2} s, max {:.2} s",
        times.len(),
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[test]
fn kill_9_of_the_runner_leaves_nothing_10_times() {
    let _daemon = shared_daemon();
    let mut times = Vec::new();
    for _ in 0..10 {
        let (mut runner, run_id) = start_hanging_run();
        let _cleanup = Cleanup(Some(run_id.clone()));
        let killed = Instant::now();
        runner.signal(libc::SIGKILL);
        let _ = runner.wait(10);
        times.push(time_until_clean(&run_id, killed, 15));
    }
    report("kill -9 of the runner mid-run (2 shards)", &mut times);
}

fn signal_loop(signal: i32, expected: i32, name: &str) {
    let mut exits = Vec::new();
    for _ in 0..10 {
        let (mut runner, run_id) = start_hanging_run();
        let _cleanup = Cleanup(Some(run_id.clone()));
        let sent = Instant::now();
        runner.signal(signal);
        let code = runner.wait(30);
        let exit_after = sent.elapsed();
        assert_eq!(code, Some(expected), "{}", runner.stderr);
        assert!(
            exit_after < Duration::from_secs(10),
            "exit took {exit_after:?}"
        );
        // The runner removes its environments before it exits.
        assert_nothing_left(&run_id);
        assert!(test_processes_of(&run_id).is_empty());
        exits.push(exit_after.as_secs_f64());
    }
    report(
        &format!("{name} mid-run (2 shards), time to exit"),
        &mut exits,
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
    let (mut doomed, doomed_id) = start_hanging_run();
    let _cleanup_doomed = Cleanup(Some(doomed_id.clone()));
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
    doomed.signal(libc::SIGKILL);
    let _ = doomed.wait(10);
    time_until_clean(&doomed_id, killed, 15);
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
    let (mut runner, run_id) = start_hanging_run();
    let _cleanup = Cleanup(Some(run_id.clone()));
    runner.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(100));
    runner.signal(libc::SIGINT);
    assert_eq!(runner.wait(30), Some(130), "{}", runner.stderr);
    assert!(runner.stderr.contains("SIGINT again"), "{}", runner.stderr);
    assert_nothing_left(&run_id);
    assert!(test_processes_of(&run_id).is_empty());
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
    let (mut runner, run_id) = start_hanging_run_with(&["--env-ttl", "3s"]);
    let _cleanup = Cleanup(Some(run_id.clone()));
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
    runner.signal(libc::SIGTERM);
    assert_eq!(runner.wait(30), Some(143), "{}", runner.stderr);
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
            .env("CARGO_EPHEM_TEST_PANIC_ON_READY", "1"),
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
