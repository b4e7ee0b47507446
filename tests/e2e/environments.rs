//! Environments end to end: `ephem.toml` → one set of containers per shard
//! → variables in the tests → everything removed. Real daemon, real images
//! (the busybox stand-in from scripts/provision-test-env.sh).

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn every_shard_gets_its_own_environment_and_nothing_is_left() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let out = run(ephem_test()
        .arg("--config")
        .arg(config("env-busybox.toml"))
        .args(["--shards", "3", "env_"])
        .env("FIXTURE_OUT", dir.path()));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _cleanup = Cleanup(run_id_of(&stderr));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let run_id = run_id_of(&stderr).expect("the run id is printed");
    for shard in 1..=3 {
        assert!(
            stderr.contains(&format!("environment of shard {shard}/3")),
            "no READY line for shard {shard}: {stderr}"
        );
    }

    let files = [
        "tests__env_unit.env",
        "env_integration.env",
        "tests__env_other.env",
    ];
    let envs: Vec<_> = files
        .iter()
        .map(|f| read_env_file(&dir.path().join(f)))
        .collect();
    let mut urls = HashSet::new();
    let mut secrets = HashSet::new();
    for env in &envs {
        let shard = &env["EPHEM_SHARD"];
        assert_eq!(env["SHARD_TAG"], format!("shard-{shard}-of-run-{run_id}"));
        let secret = &env["FIXTURE_SECRET"];
        assert_eq!(secret.len(), 24, "${{random}} is 24 characters: {secret:?}");
        assert!(secret
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert!(
            env["WEB_URL"].starts_with("http://127.0.0.1:"),
            "{}",
            env["WEB_URL"]
        );
        urls.insert(env["WEB_URL"].clone());
        secrets.insert(secret.clone());
    }
    for env in &envs[..2] {
        assert_eq!(
            env["WEB_BODY"], "ok",
            "the shard's service answered during its test"
        );
    }
    assert_eq!(urls.len(), 3, "each shard has its own service: {urls:?}");
    assert_eq!(secrets.len(), 3, "each shard has its own secret");
    assert_nothing_left(&run_id);
}

#[test]
fn generated_secrets_are_masked_in_output_and_junit() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = run(ephem_test()
        .arg("--config")
        .arg(config("env-busybox.toml"))
        .args(["fail_prints_secret", "--junit"])
        .arg(&junit)
        .env("FIXTURE_OUT", dir.path()));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _cleanup = Cleanup(run_id_of(&stderr));
    assert_eq!(out.status.code(), Some(100), "{}", describe(&out));
    let secret = std::fs::read_to_string(dir.path().join("secret.txt")).unwrap();
    assert_eq!(secret.len(), 24);
    assert!(
        !stderr.contains(&secret),
        "the secret is shown on the terminal"
    );
    assert!(stderr.contains("connecting with password ***"), "{stderr}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(!xml.contains(&secret), "the secret is in the JUnit report");
    assert!(xml.contains("could not connect with password ***"));
    let shard_report = std::fs::read_to_string(dir.path().join("junit-shard-1.xml")).unwrap();
    assert!(
        !shard_report.contains(&secret),
        "the secret is in the shard's report"
    );
}

#[test]
fn a_service_that_exits_fails_the_run_with_its_logs_and_leaves_nothing() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = run(ephem_test()
        .arg("--config")
        .arg(config("env-never-ready.toml"))
        .args(["--shards", "2", "--no-fail-fast", "pass_", "--junit"])
        .arg(&junit));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _cleanup = Cleanup(run_id_of(&stderr));
    assert_eq!(out.status.code(), Some(102), "{}", describe(&out));
    let run_id = run_id_of(&stderr).unwrap();
    // One error per shard, e.g. `error: shard 1: service broken not ready
    // (log "listening" within 20s): the container exited with code 3 [...]`.
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    for error in &errors {
        assert!(error.contains(": service broken not ready ("), "{error}");
        assert_eq!(
            container_exit_code_in(error),
            Some(3),
            "the exit code is named: {error}"
        );
    }
    let mut failed_shards: Vec<Option<u32>> = errors.iter().map(|e| shard_of_error(e)).collect();
    failed_shards.sort();
    assert_eq!(failed_shards, [Some(1), Some(2)], "{stderr}");
    // The log line on a line of its own, not inside the echoed command.
    assert!(
        stderr
            .lines()
            .any(|l| l.trim() == "fatal: cannot open config file"),
        "the container's logs are shown: {stderr}"
    );
    // The report is still written: the shards' tests are reported as not run.
    let report = read_junit(&junit);
    let skipped = cases(&report).iter().filter(|(_, c)| is_skipped(c)).count();
    assert!(
        skipped > 0,
        "tests of failed shards are reported as not run"
    );
    assert_nothing_left(&run_id);
}

/// N in an `error: shard N: ...` line.
fn shard_of_error(error: &str) -> Option<u32> {
    error
        .strip_prefix("error: shard ")?
        .split_once(':')?
        .0
        .parse()
        .ok()
}

/// N in "... the container exited with code N ...", the whole number.
fn container_exit_code_in(line: &str) -> Option<i64> {
    let rest = line.split_once("the container exited with code ")?.1;
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[test]
fn an_unreachable_daemon_exits_102_within_seconds() {
    let _daemon = shared_daemon();
    let started = Instant::now();
    let out = run(ephem_test()
        .arg("--config")
        .arg(config("env-busybox.toml"))
        .arg("pass_add")
        .env("DOCKER_HOST", "tcp://127.0.0.1:1"));
    assert_eq!(out.status.code(), Some(102), "{}", describe(&out));
    // 5 s is the budget; the slack covers cargo metadata on a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("127.0.0.1:1"), "{}", errors[0]);
}

#[test]
fn a_bad_config_exits_2_naming_file_line_and_key() {
    let _daemon = shared_daemon();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[services.web]\nimage = \"busybox:1.36\"\nports = [8080]\nexport = { URL = \"http://${host}:${port.9090}\" }\n",
    )
    .unwrap();
    let out = run(ephem_test().arg("--config").arg(&bad).arg("pass_add"));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(error.contains("bad.toml:4"), "{error}");
    assert!(error.contains("services.web.export.URL"), "{error}");
    assert!(error.contains("9090"), "{error}");
}

#[test]
fn keep_env_keeps_the_environment_and_says_how_to_remove_it() {
    let _daemon = shared_daemon();
    let out = run(ephem_test()
        .arg("--config")
        .arg(config("env-busybox.toml"))
        .args(["--keep-env", "pass_add"]));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _cleanup = Cleanup(run_id_of(&stderr));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let run_id = run_id_of(&stderr).unwrap();
    assert!(
        !resources_of(&run_id).is_empty(),
        "--keep-env removed the environment"
    );
    assert!(stderr.contains("WEB_URL=http://127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("FIXTURE_SECRET=***"), "{stderr}");
    let remove = stderr
        .lines()
        .skip_while(|l| !l.starts_with("Remove them with"))
        .nth(1)
        .unwrap()
        .trim();
    // The printed command, with the binary under test for `cargo ephem`.
    let words = remove.strip_prefix("cargo ephem ").expect(remove);
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("\"$0\" {words}"))
        .arg(env!("CARGO_BIN_EXE_cargo-ephem"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{remove}");
    assert_nothing_left(&run_id);
}

#[test]
fn up_starts_an_environment_that_down_removes() {
    let _daemon = shared_daemon();
    let target = tempfile::tempdir().unwrap();
    let manifest = fixture_manifest();
    let mut up = ephem()
        .args(["up", "--shard", "2", "--format", "json", "--config"])
        .arg(config("env-busybox.toml"))
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let line = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line
    };
    let doc: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        let _ = up.kill();
        let mut err = String::new();
        std::io::Read::read_to_string(up.stderr.as_mut().unwrap(), &mut err).unwrap();
        panic!("up printed {line:?} ({e}); stderr: {err}")
    });
    let run_id = doc["run_id"].as_str().unwrap().to_owned();
    let _cleanup = Cleanup(Some(run_id.clone()));
    assert_eq!(doc["shard"], 2);
    let url = doc["vars"]["WEB_URL"].as_str().unwrap();
    // `up` hands the real values to the developer.
    assert_eq!(doc["vars"]["FIXTURE_SECRET"].as_str().unwrap().len(), 24);
    assert!(doc["vars"]["SHARD_TAG"]
        .as_str()
        .unwrap()
        .starts_with("shard-2-of-run-up-"));
    let body = http_body(url);
    assert_eq!(body.trim(), "ok");
    assert!(!resources_of(&run_id).is_empty());

    let down = run(ephem()
        .args(["down", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target.path()));
    assert_eq!(down.status.code(), Some(0), "{}", describe(&down));
    let status = up.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_nothing_left(&run_id);
}

fn http_body(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
