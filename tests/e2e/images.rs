//! The warm image cache through the binary: `--image-cache` and
//! `EPHEM_IMAGE_CACHE` reach `test`, `up` and `images`; an unwritable
//! folder is a usage error naming it; `images pull`, `ls`, `prune`.
//!
//! Images are built here (`FROM busybox:1.36` plus a file, under a random
//! repository), pushed to the registry, and removed from the daemon on
//! drop, so tests beside these never lose an image.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{
    config, describe, ephem, ephem_test, fixture_manifest, run, run_id_of, shared_daemon, Cleanup,
};

const BASE: &str = "localhost:5000/library/busybox:1.36";

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI runs")
}

/// One image of this test in the registry, absent from the daemon; every
/// name of it is removed from the daemon on drop.
struct TestImage {
    name: String,
    _dir: tempfile::TempDir,
}

impl TestImage {
    fn push() -> TestImage {
        let mut bytes = [0u8; 4];
        getrandom_fill(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("127.0.0.1:5000/ephem-cache-test-{hex}/e2e:1");
        let dir = tempfile::tempdir().expect("temp dir");
        let image = TestImage { name, _dir: dir };
        let context = image._dir.path();
        std::fs::write(context.join("marker"), &image.name).expect("marker");
        std::fs::write(
            context.join("Dockerfile"),
            format!("FROM {BASE}\nCOPY marker /marker\n"),
        )
        .expect("Dockerfile");
        let pulled = docker(&["pull", "-q", BASE]);
        assert!(
            pulled.status.success(),
            "cannot pull {BASE}; run scripts/provision-test-env.sh"
        );
        let built = docker(&["build", "-q", "-t", &image.name, &context.to_string_lossy()]);
        assert!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let pushed = docker(&["push", "-q", &image.name]);
        assert!(
            pushed.status.success(),
            "{}",
            String::from_utf8_lossy(&pushed.stderr)
        );
        image.remove_local();
        image
    }

    fn remove_local(&self) {
        let _ = docker(&["rmi", "-f", &self.name]);
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        self.remove_local();
    }
}

/// Random bytes without another dependency: the kernel's.
fn getrandom_fill(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("/dev/urandom");
}

/// `env-busybox.toml` with the test's image instead of busybox:1.36.
fn config_with(image: &TestImage, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(config("env-busybox.toml")).expect("fixture config");
    let text = text.replace(
        "image = \"busybox:1.36\"",
        &format!("image = \"{}\"", image.name),
    );
    assert!(text.contains(&image.name));
    let path = dir.join("ephem.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn images_cmd(sub: &[&str], config: &Path, cache: &Path) -> Command {
    let mut cmd = ephem();
    cmd.arg("images")
        .args(sub)
        .arg("--manifest-path")
        .arg(fixture_manifest())
        .arg("--config")
        .arg(config)
        .arg("--image-cache")
        .arg(cache)
        .env_remove("EPHEM_IMAGE_CACHE");
    cmd
}

#[test]
fn an_unwritable_image_cache_exits_2_naming_the_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A folder under a regular file cannot be created, even by root.
    std::fs::write(dir.path().join("blocker"), b"").expect("file");
    let cache = dir.path().join("blocker/cache");
    let shown = cache.display().to_string();

    let out = run(&mut images_cmd(
        &["ls"],
        &config("env-busybox.toml"),
        &cache,
    ));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("image cache {shown}: cannot write there")),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    let out = run(ephem_test()
        .arg("--config")
        .arg(config("env-busybox.toml"))
        .arg("--image-cache")
        .arg(&cache));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&shown),
        "{}",
        describe(&out)
    );

    // The variable reaches `up` the same way.
    let out = run(ephem()
        .arg("up")
        .arg("--manifest-path")
        .arg(fixture_manifest())
        .arg("--config")
        .arg(config("env-busybox.toml"))
        .env("EPHEM_IMAGE_CACHE", &cache));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&shown),
        "{}",
        describe(&out)
    );
}

#[test]
fn images_pull_ls_and_prune_through_the_cache() {
    let _daemon = shared_daemon();
    let image = TestImage::push();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config_with(&image, dir.path());
    let cache = dir.path().join("cache");

    let out = run(&mut images_cmd(&["pull"], &cfg, &cache));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!("registry {}", image.name),
        "{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(served)"),
        "{}",
        describe(&out)
    );

    let out = run(&mut images_cmd(&["pull"], &cfg, &cache));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("daemon   {}", image.name)
    );

    image.remove_local();
    let out = run(&mut images_cmd(&["pull"], &cfg, &cache));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("cache    {}", image.name),
        "{}",
        describe(&out)
    );

    let out = run(&mut images_cmd(&["ls"], &cfg, &cache));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let header = lines.next().unwrap_or_default();
    for column in ["REFERENCE", "DIGEST", "SIZE", "LAST USED"] {
        assert!(header.contains(column), "{stdout}");
    }
    let row = lines.next().unwrap_or_default();
    assert!(row.starts_with(&image.name), "{stdout}");
    assert!(
        row.contains("sha256:") && row.contains(" MB") && row.contains(" ago)"),
        "{stdout}"
    );

    // Referenced by the configuration: kept unless --all.
    let out = run(&mut images_cmd(&["prune"], &cfg, &cache));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pruned 0 image(s)"),
        "{}",
        describe(&out)
    );
    let out = run(&mut images_cmd(&["prune", "--all"], &cfg, &cache));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("removed {}", image.name)),
        "{}",
        describe(&out)
    );
    let blobs = std::fs::read_dir(cache.join("blobs/sha256"))
        .expect("blobs")
        .count();
    assert_eq!(blobs, 0);
}

#[test]
fn cargo_ephem_test_restores_through_the_image_cache() {
    let _daemon = shared_daemon();
    let image = TestImage::push();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config_with(&image, dir.path());
    let cache = dir.path().join("cache");
    let out_dir = tempfile::tempdir().expect("temp dir");
    let test = |cmd: &mut Command| {
        let out = run(cmd
            .arg("--config")
            .arg(&cfg)
            .arg("env_")
            .env("FIXTURE_OUT", out_dir.path())
            .env("EPHEM_IMAGE_CACHE", &cache));
        let _cleanup = Cleanup(run_id_of(&String::from_utf8_lossy(&out.stderr)));
        out
    };
    let out = test(&mut ephem_test());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("into the image cache"),
        "{}",
        describe(&out)
    );

    image.remove_local();
    let out = test(&mut ephem_test());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("restored from the image cache"),
        "{}",
        describe(&out)
    );
}
