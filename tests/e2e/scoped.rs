//! `[services.NAME] tests = "FILTERSET"` through the binary, on the scoped
//! fixture (tests/fixtures/scoped): tests outside a service's scope get
//! none of it, do not wait for it and are not serialised by its reset; a
//! shard whose tests match no service starts nothing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::*;

fn scoped_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/scoped/Cargo.toml")
}

/// `cargo-ephem test` on the scoped fixture with `config_name`, markers in
/// `dir`; checks that the run left nothing behind.
fn scoped_run(config_name: &str, dir: &Path, args: &[&str]) -> std::process::Output {
    let out = run(ephem()
        .arg("test")
        .arg("--manifest-path")
        .arg(scoped_manifest())
        .arg("--config")
        .arg(config(config_name))
        .env("SCOPED_DIR", dir)
        .args(args));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if let Some(run_id) = run_id_of(&stderr) {
        assert_nothing_left(&run_id);
    }
    out
}

/// The service variables a fixture test recorded (`<name>.env`).
fn seen(dir: &Path, name: &str) -> String {
    let path = dir.join(format!("{name}.env"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The web service is ready only once a `unit::` test, which gets no
/// service, has run: the run passes only if that test started while the
/// environment was still starting. It sees neither the service's exports
/// nor its `${env.TOKEN}`; the `svc::` test sees both.
#[test]
fn tests_outside_the_scope_run_while_the_environment_starts_and_see_none_of_it() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let out = scoped_run(
        "env-scoped-gate.toml",
        dir.path(),
        &[
            "-j",
            "3",
            "unit::opens_the_gate",
            "unit::sees_no_service_vars",
            "svc::sees_web_url",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        dir.path().join("gate-opened").exists(),
        "{}",
        describe(&out)
    );
    assert_eq!(
        seen(dir.path(), "unit"),
        "",
        "no service variable outside the scope"
    );
    assert_eq!(seen(dir.path(), "gate"), "");
    let svc = seen(dir.path(), "svc");
    assert!(svc.contains("WEB_URL=http://"), "{svc}");
    assert!(svc.contains("WEB_TOKEN="), "{svc}");
}

/// `docker events` for containers created from now on, read until `stop`.
struct CreatedContainers(Child);

impl CreatedContainers {
    fn watch() -> CreatedContainers {
        let child = Command::new("docker")
            .args([
                "events",
                "--filter",
                "type=container",
                "--filter",
                "event=create",
                "--format",
                "{{index .Actor.Attributes \"cargo-ephem.run\"}} {{index .Actor.Attributes \"cargo-ephem.shard\"}}",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker events");
        CreatedContainers(child)
    }

    /// The shards of `run_id` that got a container, one entry per container.
    fn shards_of(mut self, run_id: &str) -> Vec<String> {
        // The events of the run are out by now; stop the stream, read them.
        let _ = self.0.kill();
        let stdout = self.0.stdout.take().unwrap();
        let shards = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| {
                let (run, shard) = l.split_once(' ')?;
                (run == run_id).then(|| shard.to_owned())
            })
            .collect();
        let _ = self.0.wait();
        shards
    }
}

/// Two shards: shard 1 holds the `svc::` test, shard 2 only a `unit::`
/// test (slice order). Shard 2 starts no container, and a run whose tests
/// match no service starts none at all.
#[test]
fn a_shard_whose_tests_match_no_service_starts_no_environment() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let events = CreatedContainers::watch();
    let out = scoped_run(
        "env-scoped-reset.toml",
        dir.path(),
        &[
            "--shards",
            "2",
            "svc::sees_web_url",
            "unit::sees_no_service_vars",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let run_id = run_id_of(&stderr).expect("a run id");
    assert_eq!(events.shards_of(&run_id), ["1"], "{}", describe(&out));
    assert!(!stderr.contains("environment of shard 2"), "{stderr}");
    assert_eq!(seen(dir.path(), "unit"), "");

    let events = CreatedContainers::watch();
    let out = scoped_run(
        "env-scoped-reset.toml",
        dir.path(),
        &["-E", "test(/^unit::sees/)"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let run_id = run_id_of(&stderr).expect("a run id");
    assert_eq!(events.shards_of(&run_id), Vec::<String>::new(), "{stderr}");
    assert!(!stderr.contains("READY"), "{stderr}");
}

/// The `svc::` tests match a service that resets: one at a time (each
/// fails if it finds another running). The `unit::` tests match none: two
/// of them wait for each other and one waits to see a serial test running,
/// so they pass only beside the serial ones and each other.
#[test]
fn a_reset_serialises_only_the_tests_in_its_scope() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let out = run(ephem()
        .arg("test")
        .arg("--manifest-path")
        .arg(scoped_manifest())
        .arg("--config")
        .arg(config("env-scoped-reset.toml"))
        .env("SCOPED_DIR", dir.path())
        .env("SCOPED_EXPECT_BESIDE", "1")
        .args(["-j", "4", "--no-fail-fast", "svc::serial_", "unit::beside_"]));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if let Some(run_id) = run_id_of(&stderr) {
        assert_nothing_left(&run_id);
    }
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for name in [
        "done-1",
        "done-2",
        "done-3",
        "saw-serial",
        "meet-a",
        "meet-b",
    ] {
        assert!(dir.path().join(name).exists(), "{name}: {}", describe(&out));
    }
}

/// A scope nextest cannot parse: exit 2 before anything is built, naming
/// the service and the file, with nextest's diagnostic.
#[test]
fn a_bad_scope_exits_2_naming_the_service() {
    // A run that reaches the daemon sweeps abandoned runs first: not while
    // a test that plants one (reliability::gc_*) holds the daemon.
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("ephem.toml");
    let text = std::fs::read_to_string(config("env-scoped-reset.toml"))
        .unwrap()
        .replace("test(/^svc::/)", "tset(svc) |");
    std::fs::write(&bad, text).unwrap();
    let out = run(ephem()
        .arg("test")
        .arg("--manifest-path")
        .arg(scoped_manifest())
        .arg("--config")
        .arg(&bad)
        .env("SCOPED_DIR", dir.path()));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("services.web.tests in {}", bad.display())),
        "{stderr}"
    );
    assert!(stderr.contains("tset(svc) |"), "{stderr}");
    assert!(!stderr.contains("Compiling"), "nothing built: {stderr}");
}

/// Per-test databases go only to the tests in their service's scope: the
/// `svc::` test gets a database of its own (not the baseline `app`) and
/// nothing of the other service; the `unit::` test gets the other
/// service's export and no database.
#[test]
fn per_test_databases_go_only_to_the_tests_in_the_scope() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let out = scoped_run(
        "env-scoped-per-test.toml",
        dir.path(),
        &["svc::sees_web_url", "unit::sees_no_service_vars"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let svc = seen(dir.path(), "svc");
    assert!(svc.starts_with("WEB_URL=postgres://"), "{svc}");
    assert!(!svc.ends_with("/app"), "a database of its own: {svc}");
    assert!(!svc.contains("WEB_TOKEN"), "{svc}");
    let unit = seen(dir.path(), "unit");
    assert!(unit.starts_with("WEB_TOKEN="), "{unit}");
    assert!(
        !unit.contains("WEB_URL"),
        "no database outside the scope: {unit}"
    );
}
