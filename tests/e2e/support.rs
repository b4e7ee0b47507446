//! Helpers shared by the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quick_junit::{Report, TestCase, TestCaseStatus};

/// The binary under test.
pub fn ephem() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-ephem"));
    // Plain output, as in CI, so assertions do not depend on a terminal.
    cmd.env("CI", "1").env_remove("RUST_BACKTRACE");
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

/// Pids of live processes whose command line is exactly `argv`.
pub fn processes_with_cmdline(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if cmdline == want {
                // Zombies have an empty cmdline, so a match is a live process.
                pids.push(pid);
            }
        }
    }
    pids
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
