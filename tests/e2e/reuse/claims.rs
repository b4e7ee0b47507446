//! `--reuse` under concurrency: one holder per kept environment when runs
//! start together against a killed holder's claim, `down` and `gc` beside a
//! live holder, `down` started with a run, and one workspace's environments
//! never another's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{containers_of, RemoveKept};
use crate::support::*;

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

/// The kept run whose environment the process `pid` claimed, if any.
fn claimed_by(pid: u32) -> Option<String> {
    for what in [&["ps", "-a"][..], &["volume", "ls"][..]] {
        let out = Command::new("docker")
            .args(what)
            .args(["--filter", "label=cargo-ephem.claim", "--filter"])
            .arg(format!("label=cargo-ephem.pid={pid}"))
            .args(["--format", "{{.Label \"cargo-ephem.run\"}}"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(run) = text.lines().find(|l| !l.is_empty()) {
            return Some(run.to_owned());
        }
    }
    None
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
        wait_for(120, || {
            claimed_by(pid).is_some() || keeper.child.try_wait().unwrap().is_some()
        });
        let _ = keeper.child.kill();
        let _ = keeper.child.wait();
        keeper.wait(10);
        guard.0.extend(run_id_of(&keeper.stderr));
        let Some(abandoned) = claimed_by(pid) else {
            panic!(
                "round {round}: the keeper claimed nothing\n{}",
                keeper.stderr
            );
        };

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
        assert!(
            made_by.contains(&abandoned),
            "round {round}: nobody took over the environment of run {abandoned}, whose holder was killed: {seen:?}"
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
