//! Ctrl-C and SIGTERM: running tests are killed, the report so far is
//! written, exit is prompt.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::*;

fn interrupt_mid_run(signal: i32, expected_code: i32) {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    // A unique filter so that concurrent tests do not see each other's processes.
    let mut child = ephem_test()
        .args([
            "--include-ignored",
            "-j",
            "2",
            "hang_forever",
            "pass_add",
            "--junit",
        ])
        .arg(&junit)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let test_running = || {
        processes_containing(&["--exact", "tests::hang_forever"])
            .iter()
            .any(|&p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    // The test's parent is our runner.
                    s.rsplit_once(')')
                        .and_then(|(_, r)| r.split_whitespace().nth(1))
                        .map(|pp| pp == pid.to_string())
                        .unwrap_or(false)
                })
            })
    };
    assert!(wait_for(60, test_running), "the hanging test never started");
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, signal) };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "runner still alive 30 s after the signal"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(expected_code), "{stderr}");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "exit took {:?}",
        sent.elapsed()
    );
    // By run id, not by parent: a test the runner left behind belongs to
    // init once the runner is gone, so it would not count as "running".
    let run_id = run_id_of(&stderr).expect("the run id is printed");
    assert!(
        test_processes_of(&run_id).is_empty(),
        "test processes outlived the runner: {:?}",
        test_processes_of(&run_id)
    );
    let report = read_junit(&junit);
    assert!(
        is_skipped(find(&report, "tests::hang_forever")),
        "the interrupted test is reported as not finished"
    );
    assert!(stderr.contains("CANCEL"), "{stderr}");
}

#[test]
fn sigint_stops_the_run_and_writes_the_report() {
    interrupt_mid_run(libc::SIGINT, 130);
}

#[test]
fn sigterm_stops_the_run_and_writes_the_report() {
    interrupt_mid_run(libc::SIGTERM, 143);
}
