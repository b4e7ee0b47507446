//! Helpers shared by the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quick_junit::{Report, TestCase, TestCaseStatus};

/// The binary under test.
pub fn ephem() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-ephem"));
    // Plain output, as in CI, so assertions do not depend on a terminal.
    cmd.env("CI", "1").env_remove("RUST_BACKTRACE");
    // Set by nextest when it runs this suite; it would select a profile.
    cmd.env_remove("NEXTEST_PROFILE");
    cmd
}

/// `cargo-ephem test` on the basic fixture workspace.
pub fn ephem_test() -> Command {
    let mut cmd = ephem();
    cmd.arg("test");
    cmd.args(fixture_args());
    cmd
}

/// The cargo flags that select the fixture workspace.
pub fn fixture_args() -> Vec<String> {
    vec![
        "--manifest-path".into(),
        fixture_manifest().display().to_string(),
        "--workspace".into(),
    ]
}

pub fn fixture_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/basic/Cargo.toml")
}

/// Runs the command and returns its output; the text of both streams is
/// printed on failure of a later assertion through `describe`.
///
/// A run that takes over five minutes fails the test instead of hanging the
/// suite (a regression in process cleanup shows up as a hang).
pub fn run(cmd: &mut Command) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cargo-ephem runs");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("cargo-ephem still running after 300 s: {cmd:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn read_junit(path: &Path) -> Report {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    Report::deserialize(&bytes[..]).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Every test case of a report with its suite name.
pub fn cases(report: &Report) -> Vec<(&str, &TestCase)> {
    report
        .test_suites
        .iter()
        .flat_map(|s| s.test_cases.iter().map(move |c| (s.name.as_str(), c)))
        .collect()
}

pub fn find<'a>(report: &'a Report, name: &str) -> &'a TestCase {
    cases(report)
        .into_iter()
        .map(|(_, c)| c)
        .find(|c| c.name.as_str() == name)
        .unwrap_or_else(|| panic!("no test case {name} in the report"))
}

pub fn is_success(c: &TestCase) -> bool {
    matches!(c.status, TestCaseStatus::Success { .. })
}

pub fn is_skipped(c: &TestCase) -> bool {
    matches!(c.status, TestCaseStatus::Skipped { .. })
}

/// Validates a report against the Jenkins xunit schema with xmllint. The
/// root's `skipped` attribute, which quick-junit always writes and the
/// schema does not list, is removed first: the schema check is about suites
/// and test cases.
pub fn validate_xsd(path: &Path) {
    let xml = std::fs::read_to_string(path).unwrap();
    let root_end = xml.find("<testsuite ").unwrap_or(xml.len());
    let (head, rest) = xml.split_at(root_end);
    let head = strip_attr(head, "skipped");
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), format!("{head}{rest}")).unwrap();
    let xsd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/junit-10.xsd");
    let out = Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(&xsd)
        .arg(tmp.path())
        .output()
        .expect("xmllint is installed (scripts/provision-test-env.sh installs libxml2-utils)");
    assert!(
        out.status.success(),
        "{} does not validate against junit-10.xsd:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strip_attr(s: &str, attr: &str) -> String {
    let pat = format!(" {attr}=\"");
    match s.find(&pat) {
        Some(start) => {
            let after = start + pat.len();
            let end = after + s[after..].find('"').unwrap() + 1;
            format!("{}{}", &s[..start], &s[end..])
        }
        None => s.to_owned(),
    }
}

/// Pids of live processes whose command line contains every one of `parts`.
pub fn processes_containing(parts: &[&str]) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if parts.iter().all(|p| text.contains(p)) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Polls until `f` returns true or `secs` pass.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    f()
}

/// Pids of live (non-zombie) processes whose environment holds
/// `EPHEM_RUN_ID=<run_id>`: the test processes of a run.
pub fn test_processes_of(run_id: &str) -> Vec<u32> {
    let needle = format!("EPHEM_RUN_ID={run_id}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
            let zombie = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            if !zombie {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Container, network and volume ids carrying this run's label.
pub fn resources_of(run_id: &str) -> Vec<String> {
    let filter = format!("label=cargo-ephem.run={run_id}");
    let mut ids = Vec::new();
    for args in [
        vec!["ps", "-aq", "--filter", &filter],
        vec!["network", "ls", "-q", "--filter", &filter],
        vec!["volume", "ls", "-q", "--filter", &filter],
    ] {
        let out = Command::new("docker")
            .args(&args)
            .output()
            .expect("docker CLI");
        assert!(out.status.success(), "docker {args:?}: {}", describe(&out));
        ids.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| format!("{}:{l}", args[0])),
        );
    }
    ids
}

/// Fails the test if any container, network or volume of the run remains.
pub fn assert_nothing_left(run_id: &str) {
    let left = resources_of(run_id);
    assert!(left.is_empty(), "run {run_id} left behind: {left:?}");
}

/// Removes a run's resources when dropped, so a failing test leaks nothing.
pub struct Cleanup(pub Option<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(run) = &self.0 {
            remove_by_label(&format!("cargo-ephem.run={run}"));
        }
    }
}

/// Force-removes every container, network and volume with this label.
pub fn remove_by_label(label: &str) {
    let filter = format!("label={label}");
    let ids = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let containers = ids(&["ps", "-aq", "--filter", &filter]);
    if !containers.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&containers)
            .output();
    }
    let networks = ids(&["network", "ls", "-q", "--filter", &filter]);
    if !networks.is_empty() {
        let _ = Command::new("docker")
            .args(["network", "rm"])
            .args(&networks)
            .output();
    }
    let volumes = ids(&["volume", "ls", "-q", "--filter", &filter]);
    if !volumes.is_empty() {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f"])
            .args(&volumes)
            .output();
    }
}

/// The run id from the runner's "Starting ... run <id>" line.
pub fn run_id_of(stderr: &str) -> Option<String> {
    let line = stderr.lines().find(|l| l.contains("Starting "))?;
    Some(line.rsplit("run ").next()?.trim().to_owned())
}

pub fn config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// A runner started in the background, its stderr collected line by line.
pub struct Background {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub stderr: String,
}

impl Background {
    pub fn spawn(cmd: &mut Command) -> Background {
        use std::io::BufRead;
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cargo-ephem starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Background {
            child,
            lines,
            stderr: String::new(),
        }
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.stderr.push_str(&line);
            self.stderr.push('\n');
        }
    }

    /// Waits at most `secs` for a line of stderr containing `needle`.
    pub fn wait_for_line(&mut self, secs: u64, needle: &str) -> bool {
        wait_for(secs, || {
            self.drain();
            self.stderr.contains(needle)
        })
    }

    /// Waits for the run id line.
    pub fn run_id(&mut self, secs: u64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            self.drain();
            if let Some(id) = run_id_of(&self.stderr) {
                return id;
            }
            if std::time::Instant::now() > deadline || self.child.try_wait().unwrap().is_some() {
                std::thread::sleep(std::time::Duration::from_millis(100));
                self.drain();
                panic!("no run id printed; stderr so far:\n{}", self.stderr);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit, at most `secs`; returns its exit code.
    pub fn wait(&mut self, secs: u64) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(std::time::Duration::from_millis(50));
                self.drain();
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                self.drain();
                panic!("still running after {secs} s; stderr:\n{}", self.stderr);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

/// Reads a `KEY=value` file written by a fixture test (`record_env`).
pub fn read_env_file(path: &Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Every run with environments sweeps abandoned runs when it starts, so
/// tests that plant abandoned resources, or assert what a sweep did, must not
/// overlap with other runs: they take the daemon exclusively, the others
/// shared.
static DAEMON: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub fn shared_daemon() -> std::sync::RwLockReadGuard<'static, ()> {
    DAEMON.read().unwrap_or_else(|p| p.into_inner())
}

pub fn exclusive_daemon() -> std::sync::RwLockWriteGuard<'static, ()> {
    DAEMON.write().unwrap_or_else(|p| p.into_inner())
}
