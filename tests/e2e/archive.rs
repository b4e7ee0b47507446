//! Build once, run anywhere: `cargo ephem archive`, then `test` and `list`
//! from the archive in a folder that has only the sources, with no cargo on
//! PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// A copy of the fixture workspace's sources (what git tracks), no target.
fn sources_copy(dest: &Path) {
    let fixture = fixture_manifest().parent().unwrap().to_path_buf();
    let files = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&fixture)
        .output()
        .unwrap();
    assert!(files.status.success(), "{}", describe(&files));
    for name in files.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let rel = Path::new(std::str::from_utf8(name).unwrap());
        let to = dest.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(fixture.join(rel), to).unwrap();
    }
}

fn make_archive(dir: &Path) -> PathBuf {
    let archive = dir.join("tests.tar.zst");
    let out = run(ephem()
        .arg("archive")
        .args(fixture_args())
        .arg("--archive-file")
        .arg(&archive));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Archived 4 test binaries"));
    archive
}

/// The binary under test with an environment that has no cargo or rustc.
fn ephem_without_cargo() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-ephem"));
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", std::env::temp_dir())
        .env("CI", "1");
    cmd
}

fn names(report: &quick_junit::Report) -> Vec<(String, String, bool)> {
    let mut v: Vec<_> = cases(report)
        .into_iter()
        .map(|(s, c)| (s.to_owned(), c.name.to_string(), is_success(c)))
        .collect();
    v.sort();
    v
}

#[test]
fn an_archive_runs_where_there_are_only_sources_and_no_cargo() {
    let dir = tempfile::tempdir().unwrap();
    let archive = make_archive(dir.path());
    let job = dir.path().join("job");
    sources_copy(&job);

    let junit = job.join("out/junit.xml");
    let out = run(ephem_without_cargo()
        .args(["test", "--archive-file"])
        .arg(&archive)
        .arg("--workspace-remap")
        .arg(&job)
        .args(["pass_", "env_", "--no-env", "--junit"])
        .arg(&junit)
        .env("FIXTURE_OUT", dir.path()));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // CARGO_MANIFEST_DIR and the working folder are the remapped sources.
    let env = read_env_file(&dir.path().join("env_integration.env"));
    assert_eq!(
        Path::new(&env["CWD"]),
        job.join("fixture-lib").canonicalize().unwrap()
    );
    assert_eq!(
        Path::new(&env["CARGO_MANIFEST_DIR"]),
        Path::new(&env["CWD"])
    );

    // The same tests, with the same outcomes, as a run that builds.
    let built = dir.path().join("built.xml");
    let out = run(ephem_test()
        .args(["pass_", "env_", "--no-env", "--junit"])
        .arg(&built));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(names(&read_junit(&junit)), names(&read_junit(&built)));

    let out = run(ephem_without_cargo()
        .args(["list", "--archive-file"])
        .arg(&archive)
        .arg("--workspace-remap")
        .arg(&job));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("fixture-lib::integration:\n"));
}

#[test]
fn a_bad_archive_or_workspace_exits_2_saying_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let archive = make_archive(dir.path());
    let expect_2 = |args: &[&std::ffi::OsStr], needle: &str| {
        let out = run(ephem_without_cargo().arg("test").args(args));
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    };

    // Not the archived workspace: names what is missing.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    expect_2(
        &[
            "--archive-file".as_ref(),
            archive.as_ref(),
            "--workspace-remap".as_ref(),
            empty.as_ref(),
        ],
        "is not the archived workspace: it lacks",
    );

    // Corrupt: truncated.
    let bytes = std::fs::read(&archive).unwrap();
    let truncated = dir.path().join("truncated.tar.zst");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let job = dir.path().join("job");
    sources_copy(&job);
    expect_2(
        &[
            "--archive-file".as_ref(),
            truncated.as_ref(),
            "--workspace-remap".as_ref(),
            job.as_ref(),
        ],
        "corrupt",
    );

    // Not an archive at all.
    let junk = dir.path().join("junk.tar.zst");
    std::fs::write(&junk, "hello").unwrap();
    expect_2(
        &["--archive-file".as_ref(), junk.as_ref()],
        "not a cargo-ephem archive",
    );

    // Another format version: the manifest rewritten, repacked.
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let status = Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    let manifest = unpacked.join("ephem-archive.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"format\": 1", "\"format\": 99")).unwrap();
    let future = dir.path().join("future.tar.zst");
    let status = Command::new("tar")
        .args(["--zstd", "-cf"])
        .arg(&future)
        .arg("-C")
        .arg(&unpacked)
        .args(["ephem-archive.json", "target"])
        .status()
        .unwrap();
    assert!(status.success());
    expect_2(
        &[
            "--archive-file".as_ref(),
            future.as_ref(),
            "--workspace-remap".as_ref(),
            job.as_ref(),
        ],
        "archive format 99",
    );

    // Build flags do not apply to an archive.
    expect_2(
        &[
            "--archive-file".as_ref(),
            archive.as_ref(),
            "--release".as_ref(),
        ],
        "cargo's build and package selection flags do not apply",
    );
}

/// A proc-macro crate's tests link the toolchain's shared std: the archive
/// carries it, so they run where no toolchain is.
#[test]
fn an_archived_proc_macro_crate_runs_without_a_toolchain() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("macros");
    std::fs::create_dir_all(src.join("src")).unwrap();
    std::fs::write(
        src.join("Cargo.toml"),
        "[package]\nname = \"macros\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\
         [lib]\nproc-macro = true\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        src.join("src/lib.rs"),
        "#[cfg(test)]\nmod tests {\n    #[test]\n    fn expands() {}\n}\n",
    )
    .unwrap();
    let archive = dir.path().join("macros.tar.zst");
    let out = run(ephem()
        .args(["archive", "--manifest-path"])
        .arg(src.join("Cargo.toml"))
        .arg("--archive-file")
        .arg(&archive));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let job = dir.path().join("job");
    std::fs::create_dir_all(job.join("src")).unwrap();
    std::fs::copy(src.join("Cargo.toml"), job.join("Cargo.toml")).unwrap();
    std::fs::copy(src.join("src/lib.rs"), job.join("src/lib.rs")).unwrap();
    let out = run(ephem_without_cargo()
        .args(["test", "--archive-file"])
        .arg(&archive)
        .arg("--workspace-remap")
        .arg(&job));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 tests run: 1 passed"));
}
