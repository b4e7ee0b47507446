//! Secrets never leave unmasked: services whose setup, readiness and reset
//! fail while printing (and naming) their generated password, and a value
//! marked secret with `${secret.NAME}`; every file the run writes and both
//! of its streams are searched for them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::support::*;

/// A runner whose stdout and stderr go to files (`stdout.txt`,
/// `stderr.txt` in its folder), so both can be searched.
struct Logged {
    child: Child,
    stderr: PathBuf,
}

impl Logged {
    fn spawn(cmd: &mut Command, dir: &Path) -> Logged {
        let stdout = dir.join("stdout.txt");
        let stderr = dir.join("stderr.txt");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("cargo-ephem starts");
        Logged { child, stderr }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let containers = docker(&[
                    "ps",
                    "-a",
                    "--filter",
                    "label=cargo-ephem.run",
                    "--format",
                    "{{.Names}} {{.Status}}",
                ]);
                panic!(
                    "still running after {secs} s; stderr:\n{}\ncontainers:\n{containers}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads each container's generated `PASSWORD` from its configuration
/// while the run waits for it, then lets the container's failing step go
/// on (it waits for `/tmp/go`). Returns container name to password.
fn read_passwords(run_id: &str, count: usize, runner: &mut Logged) -> BTreeMap<String, String> {
    let mut passwords = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(400);
    let filter = format!("label=cargo-ephem.run={run_id}");
    while passwords.len() < count {
        assert!(
            Instant::now() < deadline && runner.child.try_wait().unwrap().is_none(),
            "read {} of {count} passwords; stderr:\n{}",
            passwords.len(),
            runner.stderr()
        );
        for name in docker(&["ps", "--filter", &filter, "--format", "{{.Names}}"]).lines() {
            if passwords.contains_key(name) {
                continue;
            }
            let env = docker(&[
                "inspect",
                "-f",
                "{{range .Config.Env}}{{println .}}{{end}}",
                name,
            ]);
            let Some(password) = env.lines().find_map(|l| l.strip_prefix("PASSWORD=")) else {
                continue;
            };
            assert_eq!(password.len(), 24, "a generated password: {password:?}");
            passwords.insert(name.to_owned(), password.to_owned());
            docker(&["exec", name, "touch", "/tmp/go"]);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    passwords
}

/// Every file under `dir` written since `since` (reports, records, pages,
/// reaper logs, captured streams), with its text.
fn files_written(dir: &Path, since: SystemTime) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            out.extend(files_written(&path, since));
        } else if meta.modified().is_ok_and(|m| m >= since) && meta.len() < 64 << 20 {
            out.push((path.clone(), std::fs::read(&path).unwrap_or_default()));
        }
    }
    out
}

/// Fails naming every file (and line) that holds one of `secrets`.
fn assert_nowhere(files: &[(PathBuf, Vec<u8>)], secrets: &[&str]) {
    let mut leaks = Vec::new();
    for (path, bytes) in files {
        let text = String::from_utf8_lossy(bytes);
        for secret in secrets {
            for line in text.lines().filter(|l| l.contains(secret)) {
                leaks.push(format!(
                    "{}: {}",
                    path.display(),
                    line.chars().take(300).collect::<String>()
                ));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "{} lines hold a secret:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}

fn fixture_target() -> PathBuf {
    fixture_manifest().parent().unwrap().join("target/ephem")
}

#[test]
fn passwords_that_setup_readiness_and_reset_print_are_masked_everywhere() {
    let _daemon = shared_daemon();
    let since = SystemTime::now() - Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut runner = Logged::spawn(
        ephem_test()
            .arg("--config")
            .arg(config("env-secrets-fail.toml"))
            .args(["--shards", "3", "--no-fail-fast", "pass_", "--junit"])
            .arg(out.join("junit.xml"))
            .arg("--html")
            .arg(out.join("run.html")),
        dir.path(),
    );
    let run_id = loop {
        if let Some(id) = run_id_of(&runner.stderr()) {
            break id;
        }
        assert!(
            runner.child.try_wait().unwrap().is_none(),
            "no run id; stderr:\n{}",
            runner.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _cleanup = Cleanup(Some(run_id.clone()));
    let passwords = read_passwords(&run_id, 3, &mut runner);
    let code = runner.wait(400);
    let stderr = runner.stderr();
    assert_eq!(code, Some(102), "stderr:\n{stderr}");

    let mut files = files_written(dir.path(), since);
    files.extend(files_written(&fixture_target(), since));
    let secrets: Vec<&str> = passwords.values().map(String::as_str).collect();
    assert_nowhere(&files, &secrets);

    // Each failure was reported, its password masked in place.
    assert!(stderr.contains("setup: login failed for ***"), "{stderr}");
    assert!(stderr.contains("fatal: password *** rejected"), "{stderr}");
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("reset: login failed for ***"), "{junit}");
    for name in [
        "junit-shard-1.xml",
        "junit-shard-2.xml",
        "junit-shard-3.xml",
        "junit.record.json",
        "run.html",
    ] {
        assert!(out.join(name).exists(), "{name} was not written");
    }
    assert_nothing_left(&run_id);
}

#[test]
fn the_errors_of_up_are_masked() {
    let _daemon = shared_daemon();
    let since = SystemTime::now() - Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    let mut up = Logged::spawn(
        ephem()
            .args(["up", "--shard", "1", "--config"])
            .arg(config("env-secrets-fail.toml"))
            .arg("--manifest-path")
            .arg(fixture_manifest())
            .env("CARGO_TARGET_DIR", &target),
        dir.path(),
    );
    // `up` writes its state, naming its run, before it creates anything.
    let state = target.join("ephem/up-shard-1.json");
    assert!(
        wait_for(120, || std::fs::read_to_string(&state)
            .is_ok_and(|t| t.contains("run_id"))),
        "no state file; stderr:\n{}",
        up.stderr()
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let run_id = doc["run_id"].as_str().unwrap().to_owned();
    let _cleanup = Cleanup(Some(run_id.clone()));
    let passwords = read_passwords(&run_id, 1, &mut up);
    let code = up.wait(300);
    let stderr = up.stderr();
    assert_eq!(code, Some(102), "stderr:\n{stderr}");
    assert!(stderr.contains("setup: login failed for ***"), "{stderr}");
    let files = files_written(dir.path(), since);
    let secrets: Vec<&str> = passwords.values().map(String::as_str).collect();
    assert_nowhere(&files, &secrets);
    assert_nothing_left(&run_id);
}

#[test]
fn a_value_marked_secret_is_masked_in_every_encoding() {
    let _daemon = shared_daemon();
    let since = SystemTime::now() - Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Characters that JSON, XML and HTML each escape their own way.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let token = format!("t0k&n<\"'>{nanos:x}{}", std::process::id());
    let mut runner = Logged::spawn(
        ephem_test()
            .arg("--config")
            .arg(config("env-secret-token.toml"))
            // Attempt 1 fails in its reset, attempt 2 in the test.
            .args(["fail_prints_secret", "--retries", "1", "--junit"])
            .arg(out.join("junit.xml"))
            .arg("--html")
            .arg(out.join("run.html"))
            .env("EPHEM_E2E_TOKEN", &token)
            .env("FIXTURE_OUT", dir.path()),
        dir.path(),
    );
    let code = runner.wait(400);
    let stderr = runner.stderr();
    let _cleanup = Cleanup(run_id_of(&stderr));
    assert_eq!(code, Some(100), "stderr:\n{stderr}");
    // The test received the real value (and wrote it where only we look).
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secret.txt")).unwrap(),
        token
    );
    std::fs::remove_file(dir.path().join("secret.txt")).unwrap();
    assert!(
        stderr.contains("could not connect with password ***"),
        "{stderr}"
    );
    let mut files = files_written(dir.path(), since);
    files.extend(files_written(&fixture_target(), since));
    let json = serde_json::to_string(&token).unwrap();
    let xml = token
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    let forms = [
        token.clone(),
        json[1..json.len() - 1].to_owned(),
        xml.replace('\'', "&apos;"),
        xml.replace('\'', "&#39;"),
        // What is left once every escape is undone: the random part.
        token[9..].to_owned(),
    ];
    let forms: Vec<&str> = forms.iter().map(String::as_str).collect();
    assert_nowhere(&files, &forms);
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("reset refused ***"), "{junit}");
    assert!(
        junit.contains("could not connect with password ***"),
        "{junit}"
    );
}

#[test]
fn a_secret_missing_from_the_runners_environment_stops_before_the_build() {
    // A run that reaches the daemon sweeps abandoned runs first: not while
    // a test that plants one (reliability::gc_*) holds the daemon.
    let _daemon = shared_daemon();
    let out = run(ephem_test()
        .arg("--config")
        .arg(config("env-secret-token.toml"))
        .env_remove("EPHEM_E2E_TOKEN"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr.contains("env-secret-token.toml:13:17: services.web.env.TOKEN: ${secret.EPHEM_E2E_TOKEN}: the runner's environment has no EPHEM_E2E_TOKEN"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Compiling") && !stderr.contains("Finished"),
        "{stderr}"
    );
}
