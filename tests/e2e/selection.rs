//! What a run selects, as the command line says it: cargo's target flags,
//! a shard that turns out empty, suites that need their shard to
//! themselves. (ephem-core's `tests/pipeline.rs` covers the rest of the
//! selection without the CLI.)

use std::path::Path;

use crate::support::*;

/// The flags reach cargo (ephem-core's pipeline tests check which binaries
/// run): an unknown target is cargo's error, before anything runs.
#[test]
fn cargo_target_flags_reach_cargo() {
    let out = run(ephem_test().args(["--test", "no_such_target"]));
    assert_eq!(out.status.code(), Some(101), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no test target named `no_such_target`"),
        "{stderr}"
    );
}

/// `--partition slice:M/N` for the shards past the last test: exit 0, a
/// report, and a line that says so.
#[test]
fn a_shard_with_no_test_exits_0_and_still_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("job.xml");
    // `pass_add` matches one test, so shards 2 to 4 of 4 are empty.
    let out = run(ephem_test()
        .args(["pass_add", "--partition", "slice:4/4", "--no-tests", "fail"])
        .arg("--junit")
        .arg(&junit));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shard 4 of 4 is empty: the other shards hold all 1 tests to run"),
        "{stderr}"
    );
    for file in [junit.clone(), dir.path().join("job-shard-4.xml")] {
        let report = read_junit(&file);
        assert_eq!(report.tests, 0, "{}", file.display());
        validate_xsd(&file);
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The `excl_` tests fail when another test of their shard runs at the
/// same time (they hold a lock file per shard). With -j 3 in one shard they
/// overlap; `[shards] test-threads = 1` makes the shard run them one at a
/// time while -j stays 3.
#[test]
fn shards_test_threads_runs_a_shards_tests_one_at_a_time() {
    // A run that reaches the daemon sweeps abandoned runs first: not while
    // a test that plants one (reliability::gc_*) holds the daemon.
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let out = run(ephem_test()
        .args(["-j", "3", "--no-fail-fast", "--no-env", "excl_"])
        .env("FIXTURE_OUT", dir.path()));
    assert_eq!(
        out.status.code(),
        Some(100),
        "without the key the tests overlap and fail: {}",
        describe(&out)
    );

    let serial = write(dir.path(), "serial.toml", "[shards]\ntest-threads = 1\n");
    let out = run(ephem_test()
        .args(["-j", "3", "excl_", "--config"])
        .arg(&serial)
        .env("FIXTURE_OUT", dir.path()));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 tests run: 3 passed"));
}

/// A crate whose build takes `secs` (its build script sleeps), with one
/// test, and the busybox environment of the basic fixture.
fn slow_building_crate(dir: &Path, secs: u32) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"slowbuild\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("build.rs"),
        format!("fn main() {{ std::thread::sleep(std::time::Duration::from_secs({secs})); }}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("src/lib.rs"),
        "#[test]\nfn reaches_the_service() {\n    assert!(std::env::var(\"WEB_URL\").unwrap().starts_with(\"http://\"));\n}\n",
    )
    .unwrap();
    std::fs::copy(config("env-busybox.toml"), dir.join("ephem.toml")).unwrap();
    dir.join("Cargo.toml")
}

/// The environments are provisioned while cargo builds: the shard is ready
/// before the build has finished.
#[test]
fn environments_are_ready_before_a_slow_build_ends() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let manifest = slow_building_crate(dir.path(), 8);
    let out = run(ephem().arg("test").arg("--manifest-path").arg(&manifest));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _cleanup = Cleanup(run_id_of(&stderr));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let ready = stderr.find("READY").expect("a READY line");
    let built = stderr
        .find("Finished `test` profile")
        .expect("cargo's Finished line");
    assert!(
        ready < built,
        "the environment waited for the build:\n{stderr}"
    );
    assert_nothing_left(&run_id_of(&stderr).unwrap());
}

/// SIGTERM while cargo builds and environments start: the runner stops the
/// cargo it started, removes the environments and exits 143 at once.
#[test]
fn sigterm_during_the_build_stops_cargo_and_leaves_nothing() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let manifest = slow_building_crate(dir.path(), 120);
    let mut runner = Background::spawn(
        ephem()
            .arg("test")
            .arg("--manifest-path")
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", dir.path().join("target")),
    );
    let run_id = runner.run_id(60);
    let _cleanup = Cleanup(Some(run_id.clone()));
    // Wait until the environment is ready (the build script sleeps on).
    assert!(runner.wait_for_line(120, "READY"), "{}", runner.stderr);
    let target = dir.path().join("target");
    let build_scripts = || processes_containing(&[target.to_str().unwrap(), "build-script-build"]);
    // On a loaded machine cargo may still be compiling the build script
    // when the environment is ready: wait for it to run.
    assert!(
        wait_for(120, || !build_scripts().is_empty()),
        "the build script never ran: {}",
        runner.stderr
    );
    let sent = std::time::Instant::now();
    runner.signal(libc::SIGTERM);
    assert_eq!(runner.wait(30), Some(143), "{}", runner.stderr);
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        sent.elapsed()
    );
    assert!(
        wait_for(10, || build_scripts().is_empty()),
        "cargo's build went on"
    );
    assert_nothing_left(&run_id);
    assert!(runner.stderr.contains("interrupted"), "{}", runner.stderr);
}
