//! The warm image cache through the binary: `--image-cache` and
//! `EPHEM_IMAGE_CACHE` reach `test`, `up` and `images`; an unwritable
//! folder is a usage error naming it; a new folder is made 0700;
//! `images pull`, `ls`, `prune`. Several processes at once in
//! `concurrency`, faults in `faults`; the helpers they share are here.
//!
//! Images are built here (`FROM busybox:1.36` plus a file, under a random
//! repository), pushed to the registry, and removed from the daemon and
//! the registry on drop, so tests beside these never lose an image.

use std::path::{Path, PathBuf};
use std::process::Command;

mod concurrency;
mod faults;

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
    /// Other names it may have in the daemon (through a proxy).
    aliases: std::sync::Mutex<Vec<String>>,
}

/// `ephem-cache-test-<random>`, a repository of this test alone.
fn test_repository() -> String {
    let mut bytes = [0u8; 4];
    getrandom_fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("ephem-cache-test-{hex}")
}

impl TestImage {
    fn push() -> TestImage {
        TestImage::push_as(format!("127.0.0.1:5000/{}/e2e:1", test_repository()))
    }

    /// Builds `busybox:1.36` plus a file and pushes it as `name`.
    fn push_as(name: String) -> TestImage {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = TestImage {
            name,
            _dir: dir,
            aliases: Default::default(),
        };
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
        for alias in self
            .aliases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = docker(&["rmi", "-f", alias]);
        }
    }

    /// Its name with `host` (a proxy) as registry, removed on drop too.
    fn at(&self, host: &str) -> String {
        let path = self.name.split_once('/').map_or("", |(_, p)| p);
        let name = format!("{host}/{path}");
        self.aliases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        name
    }

    fn present(name: &str) -> bool {
        docker(&["image", "inspect", name]).status.success()
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        self.remove_local();
        remove_from_registry(&self.name);
    }
}

/// Deletes the manifest `name` (`127.0.0.1:5000/<repository>:<tag>`, or
/// `@<digest>`) names from the test registry, so tests leave no image there.
fn remove_from_registry(name: &str) {
    let Some(path) = name.strip_prefix("127.0.0.1:5000/") else {
        return;
    };
    let (repository, reference) = match path.rsplit_once('@') {
        Some(split) => split,
        None => path.rsplit_once(':').unwrap_or((path, "latest")),
    };
    let url = |r: &str| format!("http://127.0.0.1:5000/v2/{repository}/manifests/{r}");
    let digest = if reference.starts_with("sha256:") {
        reference.to_owned()
    } else {
        let head = Command::new("curl")
            .args(["-sSI", "-H"])
            .arg("Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json")
            .arg(url(reference))
            .output();
        let Ok(head) = head else { return };
        let headers = String::from_utf8_lossy(&head.stdout).into_owned();
        let found = headers.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.eq_ignore_ascii_case("docker-content-digest")
                .then(|| value.trim().to_owned())
        });
        match found {
            Some(digest) => digest,
            None => return,
        }
    };
    let _ = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-X", "DELETE"])
        .arg(url(&digest))
        .output();
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
    config_naming(&image.name, dir)
}

/// `env-busybox.toml` with `name` instead of busybox:1.36.
fn config_naming(name: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(config("env-busybox.toml")).expect("fixture config");
    let text = text.replace("image = \"busybox:1.36\"", &format!("image = \"{name}\""));
    assert!(text.contains(name));
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
    // A run that reaches the daemon sweeps abandoned runs first: not while
    // a test that plants one (reliability::gc_*) holds the daemon.
    let _daemon = shared_daemon();
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

#[test]
fn a_new_image_cache_folder_is_private_and_an_existing_one_keeps_its_mode() {
    // A run that reaches the daemon sweeps abandoned runs first: not while
    // a test that plants one (reliability::gc_*) holds the daemon.
    let _daemon = shared_daemon();
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let fresh = dir.path().join("new/cache");
    let out = run(&mut images_cmd(
        &["ls"],
        &config("env-busybox.toml"),
        &fresh,
    ));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let mode = |p: &Path| std::fs::metadata(p).expect("folder").permissions().mode() & 0o777;
    assert_eq!(
        mode(&fresh),
        0o700,
        "a new cache folder is its owner's alone"
    );

    // A folder the user made (and perhaps shares on purpose) keeps its mode.
    let existing = dir.path().join("shared");
    std::fs::create_dir(&existing).expect("folder");
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o775)).expect("chmod");
    let out = run(&mut images_cmd(
        &["ls"],
        &config("env-busybox.toml"),
        &existing,
    ));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(mode(&existing), 0o775);
}

/// A loopback TCP proxy to the registry on 127.0.0.1:5000, optionally
/// slowed (the registry's replies trickle in small chunks), so that a fill
/// through it is still running while another process acts. Stopped, its
/// open connections cut, on drop.
struct Proxy {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    /// `slow`: replies pass 8 KiB at a time, 50 ms apart (160 KiB/s).
    fn start(slow: bool) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("proxy address").port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stopped, tracked) = (stop.clone(), open.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let inbound = match listener.accept() {
                    Ok((inbound, _)) => inbound,
                    Err(_) => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = inbound.set_nonblocking(false);
                let Ok(outbound) = std::net::TcpStream::connect("127.0.0.1:5000") else {
                    continue;
                };
                let mut list = tracked.lock().unwrap_or_else(|p| p.into_inner());
                for s in [&inbound, &outbound] {
                    if let Ok(clone) = s.try_clone() {
                        list.push(clone);
                    }
                }
                drop(list);
                let (up_in, up_out) = (inbound.try_clone(), outbound.try_clone());
                if let (Ok(mut from), Ok(mut to)) = (up_in, up_out) {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
                let (mut from, mut to) = (outbound, inbound);
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = vec![0u8; if slow { 8 * 1024 } else { 64 * 1024 }];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if slow {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Proxy { port, stop, open }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// `sha256:<hex>` of a file, by coreutils.
fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    let text = String::from_utf8_lossy(&out.stdout);
    format!(
        "sha256:{}",
        text.split_whitespace().next().unwrap_or_default()
    )
}

/// The cache is whole: every blob hashes to its name, no temporary file
/// is left, and every index entry's manifest, config and layers are there.
/// Returns the references of the index.
fn assert_cache_whole(cache: &Path) -> Vec<String> {
    let blobs = cache.join("blobs/sha256");
    for entry in std::fs::read_dir(&blobs).expect("blobs folder").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp-"), "temporary file left: {name}");
        assert_eq!(
            sha256_of(&entry.path()),
            format!("sha256:{name}"),
            "blob {name} does not match its digest"
        );
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("index.json")).expect("index.json"))
            .expect("index.json parses");
    let mut refs = Vec::new();
    for entry in index["manifests"].as_array().expect("manifests") {
        let digest = entry["digest"].as_str().expect("digest");
        let path = blobs.join(digest.trim_start_matches("sha256:"));
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&path).unwrap_or_else(|e| panic!("manifest {digest}: {e}")),
        )
        .expect("manifest parses");
        let mut needed = vec![manifest["config"]["digest"].clone()];
        needed.extend(manifest["layers"].as_array().cloned().unwrap_or_default());
        for blob in needed {
            let d = blob
                .as_str()
                .or_else(|| blob["digest"].as_str())
                .unwrap_or("");
            assert!(
                blobs.join(d.trim_start_matches("sha256:")).exists(),
                "blob {d} of {digest} is missing"
            );
        }
        let reference = &entry["annotations"]["org.opencontainers.image.ref.name"];
        refs.push(reference.as_str().unwrap_or_default().to_owned());
    }
    refs
}

/// The `warning:` lines of an `images` command's stderr.
fn warnings(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.trim_start().starts_with("warning:"))
        .map(str::to_owned)
        .collect()
}
