//! `cargo ephem up` and `down` against what goes wrong: a killed `up`, a
//! run left alive for longer than its TTL, forged or corrupt state files.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;

/// `up` of the basic fixture's busybox environment, with its state in
/// `target`; returns the process and the run id from its JSON line.
fn start_up(target: &Path, extra: &[&str]) -> (std::process::Child, String) {
    let mut up = ephem()
        .args(["up", "--format", "json", "--config"])
        .arg(config("env-busybox.toml"))
        .arg("--manifest-path")
        .arg(fixture_manifest())
        .args(extra)
        .env("CARGO_TARGET_DIR", target)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(up.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        let _ = up.kill();
        panic!("up printed {line:?}: {e}")
    });
    (up, doc["run_id"].as_str().unwrap().to_owned())
}

fn down(target: &Path) -> std::process::Output {
    run(ephem()
        .args(["down", "--manifest-path"])
        .arg(fixture_manifest())
        .env("CARGO_TARGET_DIR", target))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_killed_up_leaves_nothing_behind_its_reaper_removes_it() {
    let _daemon = shared_daemon();
    let target = tempfile::tempdir().unwrap();
    let (mut up, run_id) = start_up(target.path(), &[]);
    let _cleanup = Cleanup(Some(run_id.clone()));
    assert!(!resources_of(&run_id).is_empty(), "no environment was made");
    up.kill().unwrap();
    up.wait().unwrap();
    // Before `up` had a reaper, only a later `down` or sweep removed it.
    assert!(
        wait_for(15, || resources_of(&run_id).is_empty()),
        "15 s after kill -9 of `up`, run {run_id} still has {:?}",
        resources_of(&run_id)
    );
    // `down` then only tidies the state file.
    let out = down(target.path());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&run_id));
    assert!(!target.path().join("ephem/up-shard-1.json").exists());
}

#[test]
fn up_pushes_its_expiry_forward_while_it_lives() {
    let _daemon = shared_daemon();
    let target = tempfile::tempdir().unwrap();
    let (mut up, run_id) = start_up(target.path(), &["--env-ttl", "3s"]);
    let _cleanup = Cleanup(Some(run_id.clone()));
    // Renewed every second (a third of the TTL): 5 s on, the run's expiry
    // is still ahead, where a fixed expiry would have passed.
    std::thread::sleep(Duration::from_secs(5));
    let now = unix_now();
    let out = Command::new("docker")
        .args(["volume", "ls", "--format", "{{.Labels}}", "--filter"])
        .arg(format!("label=cargo-ephem.run={run_id}"))
        .args(["--filter", "label=cargo-ephem.lease"])
        .output()
        .unwrap();
    let labels = String::from_utf8_lossy(&out.stdout).into_owned();
    let expiries: Vec<u64> = labels
        .split(',')
        .filter_map(|l| l.trim().strip_prefix("cargo-ephem.expires="))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    assert!(
        expiries.iter().any(|&e| e >= now && e <= now + 4),
        "no lease of run {run_id} expires within the next 3 s (now {now}): {labels:?}"
    );
    let out = down(target.path());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(up.wait().unwrap().code(), Some(0));
    assert_nothing_left(&run_id);
}

/// A `sleep` nobody should signal, and its start time as `/proc` has it.
fn bystander() -> (std::process::Child, u64) {
    let child = Command::new("sleep").arg("120").spawn().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
    let start = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap();
    (child, start.parse().unwrap())
}

fn alive(child: &mut std::process::Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

fn write_state(dir: &Path, shard: u32, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("up-shard-{shard}.json")), text).unwrap();
}

fn state(pid: u64, pid_start: Option<u64>) -> String {
    serde_json::json!({
        "run_id": format!("up-{pid}-forged"),
        "shard": 1,
        "pid": pid,
        "pid_start": pid_start,
        "backend": "docker",
        "config": "/nonexistent/ephem.toml",
    })
    .to_string()
}

#[test]
fn down_never_signals_a_process_the_state_file_does_not_prove_is_up() {
    let _daemon = shared_daemon();
    let target = tempfile::tempdir().unwrap();
    let states = target.path().join("ephem");
    let (mut victim, start) = bystander();
    let pid = u64::from(victim.id());

    // A recycled pid: the right pid, another start time. Never signalled;
    // the (gone) `up`'s run is removed by label and the file deleted.
    write_state(&states, 1, &state(pid, Some(start + 1)));
    let out = down(target.path());
    assert!(
        alive(&mut victim),
        "down signalled a process it did not start"
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(!states.join("up-shard-1.json").exists());

    // No start time to prove anything: reported, nothing signalled, exit 2.
    write_state(&states, 2, &state(pid, None));
    let out = down(target.path());
    assert!(
        alive(&mut victim),
        "down signalled a process it did not start"
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("up-shard-2.json"), "{stderr}");
    assert!(stderr.contains("nothing was signalled"), "{stderr}");
    assert!(states.join("up-shard-2.json").exists(), "left for the user");
    victim.kill().unwrap();
    victim.wait().unwrap();
}

/// Before the fix, a state file naming pid 4294967295 became
/// `kill(-1, SIGTERM)`: every process of the user. The check runs inside
/// a pid namespace of its own, so even that bug could only reach the
/// bystander started in it.
#[test]
fn down_rejects_a_pid_out_of_range_and_a_corrupt_state_file() {
    let target = tempfile::tempdir().unwrap();
    let states = target.path().join("ephem");
    write_state(&states, 1, &state(4_294_967_295, Some(1)));
    write_state(&states, 2, "{ this is not json");
    write_state(&states, 3, &state(0, Some(1)));
    let script = format!(
        "sleep 60 & bystander=$!; \"$0\" down --manifest-path '{}'; code=$?; \
         kill -0 $bystander && echo BYSTANDER-ALIVE; kill $bystander; exit $code",
        fixture_manifest().display()
    );
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("note: skipped: `unshare --pid` is not available (needs root)");
        return;
    }
    let out = run(Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script])
        .arg(env!("CARGO_BIN_EXE_cargo-ephem"))
        .env("CARGO_TARGET_DIR", target.path())
        .env("CI", "1"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("BYSTANDER-ALIVE"), "{}", describe(&out));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 3, "{stderr}");
    assert!(errors[0].contains("up-shard-1.json") && errors[0].contains("4294967295"));
    assert!(errors[1].contains("up-shard-2.json") && errors[1].contains("not a state file"));
    assert!(errors[2].contains("up-shard-3.json") && errors[2].contains("pid 0"));
    // Untrusted files are left for the user to look at.
    for shard in 1..=3 {
        assert!(states.join(format!("up-shard-{shard}.json")).exists());
    }
}
