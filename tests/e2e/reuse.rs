//! `--reuse`: a run keeps its environments and the next run of the same
//! workspace and configuration takes them over, without creating a
//! container; one run at a time per environment; a changed configuration,
//! a broken environment, `down` and the TTL each remove what was kept.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::*;

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
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("ttl{}", std::process::id());
    let config = write_config(dir.path(), &marker, "\n[reuse]\nttl = \"2s\"\n");
    let (_, kept) = reuse_run(&config);
    let _guard = RemoveKept(vec![kept.clone()]);
    assert_eq!(containers_of(&kept).len(), 1);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let gc = run(ephem().arg("gc"));
    assert_eq!(gc.status.code(), Some(0), "{}", describe(&gc));
    assert_nothing_left(&kept);
}

/// The basic fixture's busybox web service (tests/fixtures/env-busybox.toml)
/// with `marker` in its environment, so that a test's runs have keys of
/// their own; `extra` is appended (a `[reuse]` table).
fn write_busybox_config(dir: &Path, marker: &str, extra: &str) -> PathBuf {
    let base = std::fs::read_to_string(config("env-busybox.toml")).unwrap();
    let text = base.replace(
        r#"env = { TOKEN = "${random}" }"#,
        &format!(r#"env = {{ TOKEN = "${{random}}", REUSE_TEST = "{marker}" }}"#),
    );
    assert_ne!(text, base, "env-busybox.toml changed: update this test");
    let path = dir.join(format!("ephem-{marker}.toml"));
    std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
    path
}

/// The basic fixture's tests matching `filters`, with `--reuse`, recording
/// what they see in `out`.
fn busybox_reuse(config: &Path, out: &Path, filters: &[&str]) -> Command {
    std::fs::create_dir_all(out).unwrap();
    let mut cmd = ephem_test();
    cmd.arg("--config")
        .arg(config)
        .args(["--reuse", "-j", "2"])
        .args(filters)
        .env("FIXTURE_OUT", out);
    cmd
}

/// A run that holds its environment until [`let_go`]: one test records the
/// environment while the other waits for the marker file.
const HOLDING: [&str; 2] = ["env_integration", "svc_a_waits_for_marker"];

fn let_go(out: &Path) {
    std::fs::write(out.join("killed"), "").unwrap();
}

/// The environment a run's test used, once it has recorded it: the run
/// that made it (`SHARD_TAG` names it) and its service's address.
fn env_seen(out: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(out.join("env_integration.env")).ok()?;
    // Written at once, but read as it may be being written: the last line.
    if !text.contains("WEB_BODY=") {
        return None;
    }
    let env = read_env_file(&out.join("env_integration.env"));
    let made_by = env.get("SHARD_TAG")?.rsplit("-of-run-").next()?.to_owned();
    Some((made_by, env.get("WEB_URL")?.clone()))
}

/// Claim objects (containers or volumes labelled `cargo-ephem.claim`) that
/// also carry `label`.
fn claims_with(label: &str) -> Vec<String> {
    let mut found = Vec::new();
    for what in [&["ps", "-aq"][..], &["volume", "ls", "-q"][..]] {
        let out = Command::new("docker")
            .args(what)
            .args(["--filter", "label=cargo-ephem.claim", "--filter"])
            .arg(format!("label={label}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        found.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| format!("{}:{l}", what[0])),
        );
    }
    found
}

/// How many runs wait at the claim barrier in `dir` (`go.PID` files).
fn arrivals(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("go."))
        .count()
}

/// How many rounds the race below runs: against the unfixed claim (delete a
/// dead holder's claim by name, then create one's own), two runs held the
/// same environment in 15 of 30 rounds.
const RACE_ROUNDS: usize = 10;

/// A run killed with SIGKILL while it holds a kept environment leaves its
/// claim naming a dead process; four runs started at the same moment then
/// all go for that environment first. Exactly one may take it over: each
/// run holds its environment until all four have recorded theirs, so two
/// runs naming the same one held it at the same time.
#[test]
fn runs_started_together_never_share_a_kept_environment_whose_holder_was_killed() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let config = write_busybox_config(dir.path(), &format!("race{}", std::process::id()), "");
    let mut guard = RemoveKept(Vec::new());

    let first = run(&mut busybox_reuse(
        &config,
        &dir.path().join("first"),
        &["env_integration"],
    ));
    guard
        .0
        .extend(run_id_of(&String::from_utf8_lossy(&first.stderr)));
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));

    for round in 0..RACE_ROUNDS {
        let round_dir = dir.path().join(format!("round{round}"));
        // The keeper takes the oldest kept environment over and is killed
        // as soon as its claim exists.
        let mut keeper = Background::spawn(&mut busybox_reuse(
            &config,
            &round_dir.join("keeper"),
            &["svc_a_waits_for_marker"],
        ));
        let pid = keeper.child.id();
        let claimed = wait_for(120, || {
            !claims_with(&format!("cargo-ephem.pid={pid}")).is_empty()
                || keeper.child.try_wait().unwrap().is_some()
        });
        let _ = keeper.child.kill();
        let _ = keeper.child.wait();
        keeper.wait(10);
        guard.0.extend(run_id_of(&keeper.stderr));
        assert!(
            claimed && !claims_with(&format!("cargo-ephem.pid={pid}")).is_empty(),
            "round {round}: the keeper claimed nothing\n{}",
            keeper.stderr
        );

        let outs: Vec<PathBuf> = (0..4).map(|i| round_dir.join(format!("run{i}"))).collect();
        let barrier = round_dir.join("go");
        let mut runs: Vec<Background> = outs
            .iter()
            .map(|out| {
                Background::spawn(
                    busybox_reuse(&config, out, &HOLDING)
                        .env("CARGO_EPHEM_TEST_CLAIM_BARRIER", &barrier),
                )
            })
            .collect();
        // Released together once all four wait at the barrier (each says
        // so with a file `go.PID`).
        let arrived = wait_for(120, || arrivals(&round_dir) == runs.len());
        std::fs::write(&barrier, "").unwrap();
        let all_seen = wait_for(120, || outs.iter().all(|o| env_seen(o).is_some()));
        outs.iter().for_each(|o| let_go(o));
        for r in &mut runs {
            let code = r.wait(120);
            guard.0.extend(run_id_of(&r.stderr));
            assert_eq!(code, Some(0), "round {round}: a run failed\n{}", r.stderr);
            assert!(r.stderr.contains("2 tests run: 2 passed"), "{}", r.stderr);
        }
        assert!(
            arrived,
            "round {round}: not every run reached the claim barrier"
        );
        assert!(
            all_seen,
            "round {round}: not every run recorded its environment"
        );
        let seen: Vec<(String, String)> = outs.iter().map(|o| env_seen(o).unwrap()).collect();
        let made_by: BTreeSet<&String> = seen.iter().map(|(run, _)| run).collect();
        let urls: BTreeSet<&String> = seen.iter().map(|(_, url)| url).collect();
        assert!(
            made_by.len() == 4 && urls.len() == 4,
            "round {round}: two runs held one environment at the same time: {seen:?}"
        );
        for run in &made_by {
            let left = claims_with(&format!("cargo-ephem.run={run}"));
            assert!(
                left.is_empty(),
                "round {round}: claims left behind: {left:?}"
            );
        }
    }
    for run in &guard.0 {
        remove_by_label(&format!("cargo-ephem.run={run}"));
        assert_nothing_left(run);
    }
}

/// A workspace of one test that writes the environment it got
/// (`SHARD_TAG`, `WEB_URL`) to `$FIXTURE_OUT/seen`, and with `HOLD` set
/// keeps its shard until `$FIXTURE_OUT/go` exists; returns its manifest.
fn tiny_workspace(dir: &Path, name: &str) -> PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(root.join("tests")).unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"reuse-ws\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(root.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        root.join("tests/seen.rs"),
        r#"use std::path::PathBuf;
use std::time::{Duration, Instant};

#[test]
fn seen() {
    let out = PathBuf::from(std::env::var("FIXTURE_OUT").unwrap());
    let tag = std::env::var("SHARD_TAG").unwrap();
    let url = std::env::var("WEB_URL").unwrap();
    std::fs::write(out.join("seen.tmp"), format!("{tag}\n{url}\n")).unwrap();
    std::fs::rename(out.join("seen.tmp"), out.join("seen")).unwrap();
    if std::env::var_os("HOLD").is_some() {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !out.join("go").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
"#,
    )
    .unwrap();
    root.join("Cargo.toml")
}

/// `--reuse` in a tiny workspace, recording in `out`.
fn tiny_reuse(manifest: &Path, config: &Path, out: &Path) -> Command {
    std::fs::create_dir_all(out).unwrap();
    let mut cmd = ephem();
    cmd.arg("test")
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--config")
        .arg(config)
        .arg("--reuse")
        .env("FIXTURE_OUT", out);
    cmd
}

/// The run that made the environment a tiny workspace's test saw, once seen.
fn tiny_seen(out: &Path) -> Option<String> {
    let text = std::fs::read_to_string(out.join("seen")).ok()?;
    let tag = text.lines().next()?;
    Some(tag.rsplit("-of-run-").next()?.to_owned())
}

fn tiny_down(manifest: &Path) -> Output {
    run(ephem().arg("down").arg("--manifest-path").arg(manifest))
}

/// A tiny workspace's plain `--reuse` run: passes, returns its run id and
/// the run whose environment it used.
fn tiny_run(
    manifest: &Path,
    config: &Path,
    out: &Path,
    guard: &mut RemoveKept,
) -> (String, String) {
    let done = run(&mut tiny_reuse(manifest, config, out));
    let stderr = String::from_utf8_lossy(&done.stderr).into_owned();
    let run_id = run_id_of(&stderr).expect("a run id");
    guard.0.push(run_id.clone());
    assert_eq!(done.status.code(), Some(0), "{}", describe(&done));
    (
        run_id,
        tiny_seen(out).expect("the test saw its environment"),
    )
}

#[test]
fn another_workspace_with_the_same_configuration_gets_its_own_environments() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let config = write_busybox_config(dir.path(), &format!("ws{}", std::process::id()), "");
    let a = tiny_workspace(dir.path(), "a");
    let b = tiny_workspace(dir.path(), "b");
    let mut guard = RemoveKept(Vec::new());

    let (kept_a, made_a) = tiny_run(&a, &config, &dir.path().join("a1"), &mut guard);
    assert_eq!(made_a, kept_a);
    // The same ephem.toml from another workspace: a fresh environment.
    let (kept_b, made_b) = tiny_run(&b, &config, &dir.path().join("b1"), &mut guard);
    assert_eq!(
        made_b, kept_b,
        "workspace b took over the environment workspace a kept"
    );
    // Each workspace takes its own over.
    let (_, again_a) = tiny_run(&a, &config, &dir.path().join("a2"), &mut guard);
    assert_eq!(again_a, kept_a);
    let (_, again_b) = tiny_run(&b, &config, &dir.path().join("b2"), &mut guard);
    assert_eq!(again_b, kept_b);

    // `down` removes its own workspace's only.
    let out = tiny_down(&b);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_nothing_left(&kept_b);
    assert_eq!(containers_of(&kept_a).len(), 1, "{}", describe(&out));
    let out = tiny_down(&a);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for run in &guard.0 {
        assert_nothing_left(run);
    }
}

/// While a run holds a kept environment, neither `gc` (even past the
/// environment's TTL) nor `down` removes it; `down` says so and exits 2.
/// Once the run has ended, `down` removes it, claims included.
#[test]
fn down_and_gc_leave_a_kept_environment_a_live_run_holds() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let config = write_busybox_config(
        dir.path(),
        &format!("held{}", std::process::id()),
        "[reuse]\nttl = \"8s\"\n",
    );
    let ws = tiny_workspace(dir.path(), "ws");
    let mut guard = RemoveKept(Vec::new());
    let (kept, _) = tiny_run(&ws, &config, &dir.path().join("first"), &mut guard);
    let kept_at = std::time::Instant::now();

    let held_out = dir.path().join("held");
    let mut holder = Background::spawn(tiny_reuse(&ws, &config, &held_out).env("HOLD", "1"));
    assert!(
        wait_for(120, || tiny_seen(&held_out).is_some()),
        "{}",
        holder.stderr
    );
    assert_eq!(
        tiny_seen(&held_out).unwrap(),
        kept,
        "the kept one was not taken over"
    );
    let pid = holder.child.id();
    assert_eq!(claims_with(&format!("cargo-ephem.pid={pid}")).len(), 1);

    // Past the TTL of its lease, a held environment is still live to `gc`.
    std::thread::sleep(std::time::Duration::from_secs(10).saturating_sub(kept_at.elapsed()));
    let gc = run(ephem().arg("gc"));
    assert_eq!(gc.status.code(), Some(0), "{}", describe(&gc));
    assert_eq!(
        containers_of(&kept).len(),
        1,
        "gc removed a held environment\n{}",
        describe(&gc)
    );

    let out = tiny_down(&ws);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr.contains(&format!("run {kept}")) && stderr.contains(&format!("pid {pid}")),
        "{}",
        describe(&out)
    );
    assert_eq!(
        containers_of(&kept).len(),
        1,
        "down removed a held environment"
    );

    std::fs::write(held_out.join("go"), "").unwrap();
    assert_eq!(holder.wait(120), Some(0), "{}", holder.stderr);
    guard.0.extend(run_id_of(&holder.stderr));
    assert!(claims_with(&format!("cargo-ephem.run={kept}")).is_empty());

    let out = tiny_down(&ws);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "removed the environment kept by --reuse (run {kept}"
        )),
        "{}",
        describe(&out)
    );
    for run in &guard.0 {
        assert_nothing_left(run);
    }
}

/// `down` started at the same moment as a run: whatever the run took over
/// is still there when `down` has finished (down claims before it removes,
/// and leaves what a run holds), and the run passes.
#[test]
fn down_never_removes_what_a_run_took_over_meanwhile() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let config = write_busybox_config(dir.path(), &format!("down{}", std::process::id()), "");
    let ws = tiny_workspace(dir.path(), "ws");
    let mut guard = RemoveKept(Vec::new());
    for round in 0..2 {
        let round_dir = dir.path().join(format!("round{round}"));
        // Three environments kept at once: three runs holding together.
        let outs: Vec<PathBuf> = (0..3).map(|i| round_dir.join(format!("keep{i}"))).collect();
        let mut keepers: Vec<Background> = outs
            .iter()
            .map(|out| Background::spawn(tiny_reuse(&ws, &config, out).env("HOLD", "1")))
            .collect();
        let all = wait_for(120, || outs.iter().all(|o| tiny_seen(o).is_some()));
        outs.iter()
            .for_each(|o| std::fs::write(o.join("go"), "").unwrap());
        for k in &mut keepers {
            assert_eq!(k.wait(120), Some(0), "{}", k.stderr);
            guard.0.extend(run_id_of(&k.stderr));
        }
        assert!(all, "round {round}: the keepers did not all start");

        let out = round_dir.join("run");
        let mut taker = Background::spawn(tiny_reuse(&ws, &config, &out).env("HOLD", "1"));
        let down = tiny_down(&ws);
        assert!(
            wait_for(120, || tiny_seen(&out).is_some()),
            "{}",
            taker.stderr
        );
        let used = tiny_seen(&out).unwrap();
        let still_there = containers_of(&used).len();
        std::fs::write(out.join("go"), "").unwrap();
        assert_eq!(taker.wait(120), Some(0), "{}", taker.stderr);
        let taker_run = run_id_of(&taker.stderr).unwrap();
        guard.0.push(taker_run.clone());
        assert_eq!(
            still_there,
            1,
            "round {round}: down removed the environment of run {used} while run {taker_run} used it\n{}",
            describe(&down)
        );
        // Whatever `down` left (in use, or kept since) goes now.
        let out = tiny_down(&ws);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        for run in &guard.0 {
            assert_nothing_left(run);
        }
    }
}
