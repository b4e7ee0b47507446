//! `--reuse`: a run keeps its environments and the next run of the same
//! workspace and configuration takes them over, without creating a
//! container; one run at a time per environment; a changed configuration,
//! a broken environment, `down` and the TTL each remove what was kept.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::*;

mod claims;
mod refill;

/// `down` removes every environment kept for the baseline fixture's
/// workspace, another test's too: the tests that keep some there take it
/// one at a time.
static BASELINE_WORKSPACE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn baseline_workspace() -> std::sync::MutexGuard<'static, ()> {
    BASELINE_WORKSPACE.lock().unwrap_or_else(|p| p.into_inner())
}

fn baseline_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/baseline/Cargo.toml")
}

/// Postgres with a database per test; `marker` goes into the service's
/// environment, so each configuration (and each run of this test) has keys
/// of its own.
fn write_config(dir: &Path, marker: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("ephem-{marker}.toml"));
    let text = format!(
        r#"[images]
mirror = "localhost:5000"
{extra}
[services.postgres]
image = "postgres:15-bookworm"
env = {{ POSTGRES_PASSWORD = "${{random}}", POSTGRES_DB = "app", POSTGRES_INITDB_ARGS = "--no-sync", REUSE_TEST = "{marker}" }}
ports = [5432]
args = ["-c", "fsync=off"]
wait = {{ log = "database system is ready to accept connections", times = 2 }}
setup = {{ exec = ["psql", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "app", "-c", "CREATE TABLE items (id serial PRIMARY KEY, name text); INSERT INTO items (name) VALUES ('seed')"] }}
databases = "per-test"
export = {{ DATABASE_URL = "postgres://postgres:${{env.POSTGRES_PASSWORD}}@${{host}}:${{port.5432}}/${{database}}" }}
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn reuse_cmd(config: &Path, args: &[&str]) -> Command {
    let mut cmd = ephem();
    cmd.arg("test")
        .arg("--manifest-path")
        .arg(baseline_manifest())
        .arg("--config")
        .arg(config)
        .arg("--reuse")
        .args(args)
        .arg("pg_");
    cmd
}

fn reuse_run(config: &Path) -> (Output, String) {
    let out = run(&mut reuse_cmd(config, &["-j", "4"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("4 tests run: 4 passed"),
        "{}",
        describe(&out)
    );
    let run_id = run_id_of(&stderr).expect("a run id");
    (out, run_id)
}

/// Containers kept for reuse, by run: (run, container id).
fn kept_containers() -> BTreeSet<(String, String)> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            "label=cargo-ephem.reuse",
            "--format",
            "{{.Label \"cargo-ephem.run\"}} {{.ID}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(run, id)| (run.to_owned(), id.to_owned()))
        .collect()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// How many containers labelled with `run` the daemon created since `since`
/// (its event log, so one created and removed again counts too).
fn container_creates(run: &str, since: f64) -> usize {
    let out = Command::new("docker")
        .args([
            "events",
            "--format",
            "{{.ID}}",
            "--filter",
            "type=container",
        ])
        .args(["--filter", "event=create", "--filter"])
        .arg(format!("label=cargo-ephem.run={run}"))
        .arg("--since")
        .arg(format!("{since:.3}"))
        .arg("--until")
        .arg(format!("{:.3}", unix_now()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn containers_of(run: &str) -> BTreeSet<String> {
    kept_containers()
        .into_iter()
        .filter(|(r, _)| r == run)
        .map(|(_, id)| id)
        .collect()
}

fn down() -> Output {
    run(ephem()
        .arg("down")
        .arg("--manifest-path")
        .arg(baseline_manifest()))
}

/// Removes whatever the test's runs kept, even when an assertion failed.
struct RemoveKept(Vec<String>);

impl RemoveKept {
    /// `down` exits 0 and leaves nothing of any of the test's runs.
    fn down_leaves_nothing(&self) {
        let out = down();
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        for run in &self.0 {
            assert_nothing_left(run);
        }
    }
}

impl Drop for RemoveKept {
    fn drop(&mut self) {
        for run in &self.0 {
            remove_by_label(&format!("cargo-ephem.run={run}"));
        }
    }
}

#[test]
fn reuse_takes_over_kept_environments_and_replaces_changed_or_broken_ones() {
    let _daemon = shared_daemon();
    let _workspace = baseline_workspace();
    let dir = tempfile::tempdir().unwrap();
    let marker = format!(
        "{}-{}",
        std::process::id(),
        dir.path().display().to_string().len()
    );
    let config = write_config(dir.path(), &format!("a{marker}"), "");
    let mut guard = RemoveKept(Vec::new());

    // The first run creates and keeps its environment.
    let since = unix_now();
    let (out, first) = reuse_run(&config);
    guard.0.push(first.clone());
    // The count below can see creates: here is one.
    assert_eq!(container_creates(&first, since), 1, "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Kept 1 environment for the next `cargo ephem test --reuse`"),
        "{stderr}"
    );
    let kept = containers_of(&first);
    assert_eq!(kept.len(), 1, "{kept:?}");

    // The second takes it over: no container created, the same one kept.
    let since = unix_now();
    let (out, second) = reuse_run(&config);
    guard.0.push(second.clone());
    let created = container_creates(&second, since);
    assert_eq!(
        created,
        0,
        "a reusing run created containers\n{}",
        describe(&out)
    );
    assert!(resources_of(&second).is_empty(), "{}", describe(&out));
    assert_eq!(containers_of(&first), kept, "{}", describe(&out));

    // One run at a time: while X holds the kept environment, Y makes its own.
    let mut x = Background::spawn(reuse_cmd(&config, &["-j", "1"]).env("BASELINE_HOLD_MS", "2500"));
    assert!(x.wait_for_line(120, "READY"), "{}", x.stderr);
    let (_, y) = reuse_run(&config);
    guard.0.push(y.clone());
    assert_eq!(x.wait(180), Some(0), "{}", x.stderr);
    assert!(
        resources_of(&run_id_of(&x.stderr).unwrap()).is_empty(),
        "X made an environment: it should have taken the kept one\n{}",
        x.stderr
    );
    assert_eq!(containers_of(&first), kept);
    assert_eq!(containers_of(&y).len(), 1, "Y kept nothing");

    // `gc` leaves kept environments that have not expired.
    let gc = run(ephem().arg("gc"));
    assert_eq!(gc.status.code(), Some(0), "{}", describe(&gc));
    assert_eq!(containers_of(&first), kept, "gc removed a kept environment");

    // A changed configuration: a fresh environment; both old ones removed.
    let changed = write_config(dir.path(), &format!("b{marker}"), "");
    let (out, third) = reuse_run(&changed);
    guard.0.push(third.clone());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("its services or images changed"),
        "{stderr}"
    );
    assert!(containers_of(&first).is_empty(), "{stderr}");
    assert!(containers_of(&y).is_empty(), "{stderr}");
    let third_containers = containers_of(&third);
    assert_eq!(third_containers.len(), 1, "{stderr}");

    // A broken one (its Postgres killed): noted, replaced.
    let id = third_containers.iter().next().unwrap();
    let killed = Command::new("docker").args(["kill", id]).output().unwrap();
    assert!(killed.status.success(), "{killed:?}");
    let (out, fourth) = reuse_run(&changed);
    guard.0.push(fourth.clone());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "the environment kept by run {third} is not whole (postgres not running)"
        )),
        "{stderr}"
    );
    assert!(containers_of(&third).is_empty(), "{stderr}");
    assert_eq!(containers_of(&fourth).len(), 1, "{stderr}");

    // `down` removes what --reuse kept for the workspace.
    let out = down();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "removed the environment kept by --reuse (run {fourth})"
        )),
        "{}",
        describe(&out)
    );
    for run in &guard.0 {
        assert_nothing_left(run);
    }
}

/// Unused past `[reuse] ttl`, a kept environment is an expired run: the
/// next sweep (here `gc`) removes it.
#[test]
fn a_kept_environment_unused_past_its_ttl_is_swept() {
    let _daemon = shared_daemon();
    let _workspace = baseline_workspace();
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("ttl{}", std::process::id());
    let config = write_config(dir.path(), &marker, "\n[reuse]\nttl = \"2s\"\n");
    let (_, kept) = reuse_run(&config);
    let _guard = RemoveKept(vec![kept.clone()]);
    assert_eq!(containers_of(&kept).len(), 1);
    std::thread::sleep(std::time::Duration::from_secs(3));
    // The expiry is judged by the clock: on a loaded machine the first gc
    // may still see it a moment early, so it is asked a few times before
    // the test concludes the kept environment outlives its TTL.
    let mut said = Vec::new();
    for _ in 0..5 {
        let gc = run(ephem().arg("gc"));
        assert_eq!(gc.status.code(), Some(0), "{}", describe(&gc));
        said.push(describe(&gc));
        if resources_of(&kept).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    panic!(
        "gc left the kept environment {kept} 13 s past its 2 s TTL: {:?}\n{}",
        resources_of(&kept),
        said.join("\n")
    );
}

/// The ready copies of the baseline in the kept Postgres `container`
/// (`ephem_t_<n>`), by oid.
fn ready_copies(container: &str) -> BTreeSet<String> {
    let out = Command::new("docker")
        .args([
            "exec", container, "psql", "-U", "postgres", "-d", "postgres", "-Atc",
        ])
        .arg("SELECT oid FROM pg_database WHERE datname ~ '^ephem_t_[0-9]+$'")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A rerun's first test gets a copy of the baseline the kept environment
/// held ready before the rerun started (no copying while it waits), and
/// finds exactly the baseline in it; a copy handed out is never handed out
/// again by a later rerun.
#[test]
fn a_rerun_hands_out_the_copies_the_kept_environment_held_ready() {
    let _daemon = shared_daemon();
    let _workspace = baseline_workspace();
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("pool{}", std::process::id());
    let config = write_config(dir.path(), &marker, "");
    let (_, first) = reuse_run(&config);
    let mut guard = RemoveKept(vec![first.clone()]);
    let container = containers_of(&first).into_iter().next().expect("kept");

    let mut rounds = Vec::new();
    for round in 0..2 {
        // The copies the last run left ready, once its refill is done: a
        // rerun started while the refill still makes the first one finds
        // none ready (refill.rs covers that case).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        while refill::refill_running(&container) {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the refill still runs after 90 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let held = ready_copies(&container);
        assert!(!held.is_empty(), "round {round}: no copy kept ready");
        let record = tempfile::tempdir().unwrap();
        let out = run(ephem()
            .arg("test")
            .arg("--manifest-path")
            .arg(baseline_manifest())
            .arg("--config")
            .arg(&config)
            .args(["--reuse", "-j", "1", "inplace_rows_1"])
            .env("BASELINE_RECORD_DIR", record.path()));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if let Some(run_id) = run_id_of(&stderr) {
            guard.0.push(run_id);
        }
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert!(
            stderr.contains("1 tests run: 1 passed"),
            "{}",
            describe(&out)
        );
        let oid = std::fs::read_to_string(record.path().join("inplace_rows_1")).unwrap();
        assert!(
            held.contains(&oid),
            "round {round}: the test got database {oid}, not one of the ready copies {held:?}"
        );
        assert!(!rounds.contains(&oid), "database {oid} handed out twice");
        rounds.push(oid);
    }
    assert_eq!(
        containers_of(&first).len(),
        1,
        "the kept environment was replaced"
    );
    guard.down_leaves_nothing();
}
