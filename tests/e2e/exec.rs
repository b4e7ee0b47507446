//! `cargo ephem exec`: any command in each shard's environment, through the
//! built binary against the real daemon (busybox services, so each run
//! takes a second or two). Cleanup is checked by each run's label.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::*;

/// `cargo-ephem exec --config <fixture config> ARGS... -- sh -c SCRIPT`.
fn exec_sh(config_name: &str, args: &[&str], script: &str) -> Command {
    let mut cmd = ephem();
    cmd.arg("exec").arg("--config").arg(config(config_name));
    cmd.args(args).args(["--", "sh", "-c", script]);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The run id from the `Starting ...` line, and a guard that removes the
/// run's resources should an assertion fail first.
fn run_of(out: &Output) -> (String, Cleanup) {
    let id = run_id_of(&text(&out.stderr))
        .unwrap_or_else(|| panic!("no run id printed\n{}", describe(out)));
    (id.clone(), Cleanup(Some(id)))
}

/// Runs `cmd` with `input` on its stdin.
fn run_with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Nothing of the run left: no container, network or volume, and no
/// process carrying its id.
fn assert_clean(run_id: &str) {
    assert_nothing_left(run_id);
    assert!(
        wait_for(10, || test_processes_of(run_id).is_empty()),
        "processes of run {run_id} still alive: {:?}",
        test_processes_of(run_id)
    );
}

#[test]
fn the_shards_exports_and_variables_reach_the_command_and_secrets_stay_out_of_our_output() {
    let _daemon = shared_daemon();
    let script = r#"printf 'SHARD=%s\nCOUNT=%s\nRUN=%s\nTAG=%s\nSECRET=%s\nBODY=%s\n' \
        "$EPHEM_SHARD" "$EPHEM_SHARD_COUNT" "$EPHEM_RUN_ID" "$SHARD_TAG" "$FIXTURE_SECRET" \
        "$(wget -qO- "$WEB_URL")""#;
    let out = run(&mut exec_sh("env-busybox.toml", &[], script));
    let (run_id, _cleanup) = run_of(&out);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let vars: HashMap<String, String> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(vars["SHARD"], "1", "{}", describe(&out));
    assert_eq!(vars["COUNT"], "1");
    assert_eq!(vars["RUN"], run_id);
    assert_eq!(vars["TAG"], format!("shard-1-of-run-{run_id}"));
    assert_eq!(
        vars["BODY"], "ok",
        "the shard's service answers the command"
    );
    // The real secret reaches the command (that is the point) ...
    let secret = &vars["SECRET"];
    assert!(
        secret.len() == 24 && secret.chars().all(|c| c.is_ascii_alphanumeric()),
        "{secret:?}"
    );
    // ... and never cargo-ephem's own output.
    assert!(
        !text(&out.stderr).contains(secret.as_str()),
        "{}",
        describe(&out)
    );
    assert_clean(&run_id);
}

#[test]
fn three_shards_replace_placeholders_and_each_command_sees_only_its_own_environment() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    // Each command writes what it saw, and which published port its shard's
    // container has according to the daemon, to a file of its own.
    let script = r#"{
        echo "ARG={shard}/{shards}"
        echo "SHARD=$EPHEM_SHARD"
        echo "COUNT=$EPHEM_SHARD_COUNT"
        echo "URL=$WEB_URL"
        echo "SECRET=$FIXTURE_SECRET"
        echo "TAG=$SHARD_TAG"
        echo "BODY=$(wget -qO- "$WEB_URL")"
        echo "PORTS=$(docker ps --filter label=cargo-ephem.run=$EPHEM_RUN_ID \
            --filter label=cargo-ephem.shard=$EPHEM_SHARD --format '{{.Ports}}')"
    } > "$OUT/shard-{shard}.env"
    echo "hello from {shard} of {shards} secret=$FIXTURE_SECRET"
    echo "to stderr from {shard}" >&2"#;
    let out = run(exec_sh("env-busybox.toml", &["--shards", "3"], script).env("OUT", dir.path()));
    let (run_id, _cleanup) = run_of(&out);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let mut urls = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for m in 1..=3 {
        let seen = read_env_file(&dir.path().join(format!("shard-{m}.env")));
        assert_eq!(seen["ARG"], format!("{m}/3"), "shard {m}: {seen:?}");
        assert_eq!(seen["SHARD"], m.to_string());
        assert_eq!(seen["COUNT"], "3");
        assert_eq!(seen["TAG"], format!("shard-{m}-of-run-{run_id}"));
        assert_eq!(seen["BODY"], "ok", "shard {m}'s service answers");
        // The port in WEB_URL is the one the daemon published for this
        // shard's container, not another shard's.
        let port = seen["URL"]
            .rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        assert!(
            seen["PORTS"].contains(&format!(":{port}->8080")),
            "shard {m}: {seen:?}"
        );
        urls.insert(seen["URL"].clone());
        secrets.insert(seen["SECRET"].clone());
        // Relayed, prefixed, masked.
        let line = format!("[shard {m}] hello from {m} of 3 secret=***");
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?}\n{}",
            describe(&out)
        );
        let line = format!("[shard {m}] to stderr from {m}");
        assert!(
            stderr.lines().any(|l| l == line),
            "{line:?}\n{}",
            describe(&out)
        );
    }
    assert_eq!(urls.len(), 3, "shards share an address: {urls:?}");
    assert_eq!(secrets.len(), 3, "shards share a secret");
    for secret in &secrets {
        assert_eq!(secret.len(), 24);
        assert!(!stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()));
    }
    assert_clean(&run_id);
}

#[test]
fn the_commands_exit_code_passes_through() {
    let _daemon = shared_daemon();
    for (args, script, expected) in [
        (&[][..], "exit 0", 0),
        (&[][..], "exit 3", 3),
        // Killed by a signal: 128 + the signal, as shells report it.
        (&[][..], "kill -KILL $$", 137),
        // Several: the lowest-numbered failing shard's code.
        (
            &["--shards", "3"][..],
            "exit $(( {shard} == 1 ? 0 : {shard} + 3 ))",
            5,
        ),
    ] {
        let out = run(&mut exec_sh("env-busybox.toml", args, script));
        let (run_id, _cleanup) = run_of(&out);
        assert_eq!(
            out.status.code(),
            Some(expected),
            "{script}: {}",
            describe(&out)
        );
        assert_clean(&run_id);
        if expected == 5 {
            let stderr = text(&out.stderr);
            assert!(stderr.contains("Finished [shard 1] exit 0"), "{stderr}");
            assert!(stderr.contains("Finished [shard 3] exit 6"), "{stderr}");
        }
    }
}

/// Kills the processes of a run when dropped, so a failed check leaves none.
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in test_processes_of(&self.0) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

#[test]
fn a_database_per_test_gives_the_command_its_own_copy_of_the_baseline() {
    let _daemon = shared_daemon();
    // The command is one test to the environment's hooks: it gets a
    // database cloned from the baseline `setup` left (its seed row).
    let script = r#"db="${DATABASE_URL##*/}"
        echo "db=$db"
        container=$(docker ps -q --filter "label=cargo-ephem.run=$EPHEM_RUN_ID" \
            --filter label=cargo-ephem.service=postgres)
        echo "rows=$(docker exec "$container" psql -U postgres -d "$db" -tAc 'SELECT name FROM items')""#;
    let out = run(&mut exec_sh("env-baseline-per-test.toml", &[], script));
    let (run_id, _cleanup) = run_of(&out);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = text(&out.stdout);
    let db = stdout
        .lines()
        .find_map(|l| l.strip_prefix("db="))
        .unwrap_or_else(|| panic!("{}", describe(&out)));
    assert!(
        !db.is_empty() && db != "app",
        "not a database of its own: {db:?}"
    );
    assert!(stdout.contains("rows=seed"), "{}", describe(&out));
    assert_clean(&run_id);
}

/// A runner in the background; dropping it kills what is left of its run.
struct ExecRun {
    runner: Background,
    run_id: String,
}

impl ExecRun {
    fn start(cmd: &mut Command) -> ExecRun {
        let mut runner = Background::spawn(cmd);
        let run_id = runner.run_id(120);
        ExecRun { runner, run_id }
    }
}

impl Drop for ExecRun {
    fn drop(&mut self) {
        if matches!(self.runner.child.try_wait(), Ok(None)) {
            let _ = self.runner.child.kill();
            let _ = self.runner.child.wait();
        }
        drop(KillOnDrop(self.run_id.clone()));
        remove_by_label(&format!("cargo-ephem.run={}", self.run_id));
    }
}

#[test]
fn kill_9_of_cargo_ephem_leaves_no_container_and_no_command_process() {
    let _daemon = shared_daemon();
    // Each command leaves a child of its own behind the shell.
    let mut run = ExecRun::start(&mut exec_sh(
        "env-busybox.toml",
        &["--shards", "2"],
        "sleep 900 & wait",
    ));
    let run_id = run.run_id.clone();
    assert!(
        wait_for(120, || test_processes_of(&run_id).len() >= 4),
        "the commands never started: {:?}\n{}",
        test_processes_of(&run_id),
        run.runner.stderr
    );
    assert!(!resources_of(&run_id).is_empty(), "no environment was made");
    run.runner.signal(libc::SIGKILL);
    assert!(run.runner.wait(10).is_none(), "killed by a signal: no code");
    assert!(
        wait_for(15, || resources_of(&run_id).is_empty()
            && test_processes_of(&run_id).is_empty()),
        "15 s after kill -9, run {run_id} still has resources {:?} and processes {:?}",
        resources_of(&run_id),
        test_processes_of(&run_id)
    );
}

#[test]
fn sigterm_and_sigint_are_forwarded_to_the_commands_then_everything_is_removed() {
    let _daemon = shared_daemon();
    // One command: its stderr is ours, untouched. (Markers are split in
    // the script so that the `Exec` line that shows it does not match.)
    let script = r#"trap 'echo got-"TERM" >&2; exit 7' TERM
        echo is-"running" >&2
        while :; do sleep 0.1; done"#;
    let mut run = ExecRun::start(&mut exec_sh("env-busybox.toml", &[], script));
    assert!(
        run.runner.wait_for_line(60, "is-running"),
        "{}",
        run.runner.stderr
    );
    run.runner.signal(libc::SIGTERM);
    let code = run.runner.wait(60);
    assert_eq!(code, Some(143), "{}", run.runner.stderr);
    assert!(
        run.runner.stderr.contains("got-TERM"),
        "{}",
        run.runner.stderr
    );
    assert_clean(&run.run_id);

    // Two commands, each in a process group of its own: Ctrl-C reaches them
    // only through cargo-ephem.
    let script = r#"trap 'echo got-"INT"-{shard} >&2; exit 0' INT
        echo is-"running" >&2
        while :; do sleep 0.1; done"#;
    let mut run = ExecRun::start(&mut exec_sh("env-busybox.toml", &["--shards", "2"], script));
    for m in 1..=2 {
        let line = format!("[shard {m}] is-running");
        assert!(run.runner.wait_for_line(60, &line), "{}", run.runner.stderr);
    }
    run.runner.signal(libc::SIGINT);
    assert_eq!(run.runner.wait(60), Some(130), "{}", run.runner.stderr);
    for m in 1..=2 {
        let line = format!("[shard {m}] got-INT-{m}");
        assert!(
            run.runner.stderr.contains(&line),
            "{line}\n{}",
            run.runner.stderr
        );
    }
    assert_clean(&run.run_id);
}

#[test]
fn a_signal_while_the_environments_start_removes_them_and_runs_no_command() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let mut run = ExecRun::start(
        exec_sh(
            "env-slow-start.toml",
            &["--shards", "2"],
            "touch \"$OUT/ran-{shard}\"",
        )
        .env("OUT", dir.path()),
    );
    let run_id = run.run_id.clone();
    assert!(
        wait_for(60, || resources_of(&run_id).len() >= 4),
        "the environments never started: {}",
        run.runner.stderr
    );
    run.runner.signal(libc::SIGTERM);
    assert_eq!(run.runner.wait(60), Some(143), "{}", run.runner.stderr);
    assert!(
        run.runner
            .stderr
            .contains("Interrupted by SIGTERM while the environments started"),
        "{}",
        run.runner.stderr
    );
    let ran: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert!(ran.is_empty(), "a command ran: {ran:?}");
    assert_clean(&run_id);
}

#[test]
fn a_command_that_ignores_sigterm_is_killed_after_the_grace_period_or_a_second_signal() {
    let _daemon = shared_daemon();
    let script = r#"trap '' TERM INT
        sleep 900 &
        echo is-"running" >&2
        while :; do sleep 0.1; done"#;
    for second in [None, Some(libc::SIGINT)] {
        let mut run = ExecRun::start(&mut exec_sh("env-busybox.toml", &[], script));
        assert!(
            run.runner.wait_for_line(60, "is-running"),
            "{}",
            run.runner.stderr
        );
        run.runner.signal(libc::SIGTERM);
        if let Some(sig) = second {
            assert!(run.runner.wait_for_line(10, "Interrupted by SIGTERM"));
            run.runner.signal(sig);
        }
        // The grace period is 10 s; a second signal kills at once.
        assert_eq!(run.runner.wait(60), Some(143), "{}", run.runner.stderr);
        assert_clean(&run.run_id);
    }
}

#[test]
fn what_a_command_leaves_running_is_killed_when_it_ends() {
    let _daemon = shared_daemon();
    // One child stays in the command's process group; the other leaves it
    // (setsid) but still carries the run's variables. Their output goes
    // elsewhere, so that a regression fails here instead of hanging.
    let script = "sleep 900 >/dev/null 2>&1 & setsid sleep 901 >/dev/null 2>&1 & echo done-{shard}";
    for args in [&[][..], &["--shards", "2"][..]] {
        let out = run(&mut exec_sh("env-busybox.toml", args, script));
        let (run_id, _cleanup) = run_of(&out);
        let _leftovers = KillOnDrop(run_id.clone());
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert!(text(&out.stdout).contains("done-1"), "{}", describe(&out));
        assert!(
            test_processes_of(&run_id).is_empty(),
            "{args:?}: processes of run {run_id} outlived it: {:?}",
            test_processes_of(&run_id)
        );
        assert_nothing_left(&run_id);
    }
}

#[test]
fn a_command_that_cannot_be_started_exits_127_or_126_naming_it() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\necho hi\n").unwrap();
    for (program, code, why) in [
        ("no-such-command-for-ephem-exec", 127, "command not found"),
        (not_executable.to_str().unwrap(), 126, "permission denied"),
    ] {
        let out = run(ephem()
            .args(["exec", "--config"])
            .arg(config("env-busybox.toml"))
            .args(["--", program, "--flag"]));
        let (run_id, _cleanup) = run_of(&out);
        assert_eq!(out.status.code(), Some(code), "{}", describe(&out));
        let stderr = text(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(
            errors[0].contains(program) && errors[0].contains(why),
            "{stderr}"
        );
        assert_clean(&run_id);
    }
}

#[test]
fn an_environment_that_fails_runs_no_command_and_leaves_nothing() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let out = run(exec_sh(
        "env-shard3-broken.toml",
        &["--shards", "4"],
        "touch \"$OUT/ran-{shard}\"",
    )
    .env("OUT", dir.path()));
    let (run_id, _cleanup) = run_of(&out);
    assert_eq!(out.status.code(), Some(102), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("shard 3"), "{stderr}");
    assert!(
        stderr.contains("broken on purpose"),
        "the service's logs: {stderr}"
    );
    let ran: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert!(ran.is_empty(), "a command ran: {ran:?}");
    assert_clean(&run_id);
}

#[test]
fn stdin_reaches_a_single_command_and_several_get_none() {
    let _daemon = shared_daemon();
    let out = run_with_stdin(
        ephem()
            .args(["exec", "--config"])
            .arg(config("env-busybox.toml"))
            .args(["--", "cat"]),
        "typed-in\n",
    );
    let (run_id, _cleanup) = run_of(&out);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(text(&out.stdout), "typed-in\n", "raw, unprefixed");
    assert_clean(&run_id);

    let out = run_with_stdin(
        &mut exec_sh(
            "env-busybox.toml",
            &["--shards", "2"],
            "cat; echo end-{shard}",
        ),
        "typed-in\n",
    );
    let (run_id, _cleanup) = run_of(&out);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("typed-in"), "{stdout}");
    assert!(stdout.contains("[shard 1] end-1") && stdout.contains("[shard 2] end-2"));
    assert_clean(&run_id);
}

/// Run in a pseudo-terminal (`script`), the single command must be able to
/// read it: in a process group of its own it would be stopped by SIGTTIN.
#[test]
fn a_single_command_can_read_the_terminal() {
    let _daemon = shared_daemon();
    let inner = format!(
        "'{}' exec --config '{}' -- sh -c 'read line; echo \"got:$line\"; echo \"run:$EPHEM_RUN_ID\"'",
        env!("CARGO_BIN_EXE_cargo-ephem"),
        config("env-busybox.toml").display()
    );
    let out = run_with_stdin(
        Command::new("timeout")
            .args(["60", "script", "-qec", &inner, "/dev/null"])
            .env("CI", "1"),
        "from-the-terminal\n",
    );
    let stdout = text(&out.stdout);
    let run_id = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("run:"))
        .map(str::to_owned);
    let _cleanup = Cleanup(run_id.clone());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stdout.contains("got:from-the-terminal"),
        "{}",
        describe(&out)
    );
    assert_clean(&run_id.expect("the command printed its run id"));
}

#[test]
fn keep_env_keeps_the_environment_and_prints_how_to_remove_it() {
    let _daemon = shared_daemon();
    let out = run(&mut exec_sh(
        "env-busybox.toml",
        &["--keep-env"],
        "echo \"$FIXTURE_SECRET\"",
    ));
    let (run_id, _cleanup) = run_of(&out);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(!resources_of(&run_id).is_empty(), "nothing was kept");
    let stderr = text(&out.stderr);
    let secret = text(&out.stdout).trim().to_owned();
    assert_eq!(secret.len(), 24, "{}", describe(&out));
    assert!(stderr.contains("FIXTURE_SECRET=***"), "{stderr}");
    assert!(stderr.contains("WEB_URL=http://127.0.0.1:"), "{stderr}");
    assert!(!stderr.contains(&secret), "{stderr}");
    // The printed command removes it.
    let remove = stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo ephem gc ") && l.contains(&run_id))
        .unwrap_or_else(|| panic!("no removal command: {stderr}"));
    let words: Vec<&str> = remove.split_whitespace().skip(2).collect();
    let gc = run(ephem().args(words.iter().map(|w| w.trim_matches('\''))));
    assert_eq!(gc.status.code(), Some(0), "{remove}: {}", describe(&gc));
    assert_clean(&run_id);
}

#[test]
fn partition_runs_shard_m_of_n_and_takes_no_kind() {
    let _daemon = shared_daemon();
    let out = run(&mut exec_sh(
        "env-busybox.toml",
        &["--partition", "2/4"],
        "echo \"{shard}/{shards} $EPHEM_SHARD $EPHEM_SHARD_COUNT $SHARD_TAG\"",
    ));
    let (run_id, _cleanup) = run_of(&out);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        text(&out.stdout),
        format!("2/4 2 4 shard-2-of-run-{run_id}\n"),
        "{}",
        describe(&out)
    );
    assert_clean(&run_id);
    for (partition, says) in [
        ("hash:2/4", "--partition hash:{shard}/{shards}"),
        ("5/4", "shard number 5 is out of range (allowed: 1 to 4)"),
        (
            "1/2000",
            "shard count 2000 is out of range (allowed: 1 to 1024)",
        ),
    ] {
        let out = run(&mut exec_sh(
            "env-busybox.toml",
            &["--partition", partition],
            "true",
        ));
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{partition}: {stderr}");
    }
}

#[test]
fn a_folder_without_cargo_finds_its_ephem_toml_upwards() {
    let _daemon = shared_daemon();
    let project = tempfile::tempdir().unwrap();
    std::fs::copy(
        config("env-busybox.toml"),
        project.path().join("ephem.toml"),
    )
    .unwrap();
    let sub = project.path().join("tests/integration");
    std::fs::create_dir_all(&sub).unwrap();
    assert!(!Path::new("/usr/bin/cargo").exists() && !Path::new("/bin/cargo").exists());
    // No cargo on PATH, no Cargo.toml anywhere: a Python suite's folder.
    let out = run(ephem()
        .args(["exec", "--", "sh", "-c"])
        .arg("wget -qO- \"$WEB_URL\"; command -v cargo || echo no-cargo")
        .current_dir(&sub)
        .env("PATH", "/usr/bin:/bin"));
    let (run_id, _cleanup) = run_of(&out);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(text(&out.stdout), "ok\nno-cargo\n", "{}", describe(&out));
    assert!(text(&out.stderr).contains(&project.path().join("ephem.toml").display().to_string()));
    assert_clean(&run_id);

    // Nothing to find: a usage error naming where it looked.
    let empty = tempfile::tempdir().unwrap();
    let out = run(ephem()
        .args(["exec", "--", "true"])
        .current_dir(empty.path()));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no ephem.toml in") && stderr.contains("--config"),
        "{stderr}"
    );
}

/// The README's recipe, with the real `cargo nextest`: two partitions of the
/// fixture workspace's tests, each in its own environment.
#[test]
fn the_nextest_recipe_runs_each_partition_in_its_own_environment() {
    let installed = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("note: skipped: `cargo nextest` is not installed (cargo install cargo-nextest)");
        return;
    }
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let out = run(ephem()
        .args(["exec", "--config"])
        .arg(config("env-busybox.toml"))
        .args([
            "--shards",
            "2",
            "--",
            "cargo",
            "nextest",
            "run",
            "--manifest-path",
        ])
        .arg(fixture_manifest())
        .args(["--workspace", "--partition", "hash:{shard}/{shards}"])
        .args(["--no-tests", "warn", "env_integration", "env_other"])
        .env("FIXTURE_OUT", dir.path()));
    let (run_id, _cleanup) = run_of(&out);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = text(&out.stderr);
    // Each test ran once, in the shard whose environment it recorded.
    for (test, file) in [
        ("env_integration", "env_integration.env"),
        ("tests::env_other", "tests__env_other.env"),
    ] {
        let passed: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("PASS") && l.ends_with(test))
            .collect();
        assert_eq!(passed.len(), 1, "{test}: {passed:?}\n{stderr}");
        let seen = read_env_file(&dir.path().join(file));
        let shard = &seen["EPHEM_SHARD"];
        assert!(
            passed[0].starts_with(&format!("[shard {shard}]")),
            "{passed:?} {seen:?}"
        );
        if let Some(count) = seen.get("EPHEM_SHARD_COUNT") {
            assert_eq!(count, "2");
        }
        assert_eq!(seen["EPHEM_RUN_ID"], run_id);
        assert_eq!(seen["SHARD_TAG"], format!("shard-{shard}-of-run-{run_id}"));
        assert!(seen["WEB_URL"].starts_with("http://127.0.0.1:"), "{seen:?}");
        if let Some(body) = seen.get("WEB_BODY") {
            assert_eq!(body, "ok", "the shard's service answered the test");
        }
    }
    assert_clean(&run_id);
}
